//! `flowd webhooks ...`: set up Recrubo to deliver webhooks to flowd. Explicit commands, never
//! done implicitly by the daemon: the subscription body is undocumented (recrubo-api.md §9.3),
//! so it is a template in settings (`recrubo.subscription_body`) with this default.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::{Context as _, anyhow};
use clap::{Args, Subcommand};
use serde_json::{Map, Value, json};

use crate::recrubo::{ClientSettings, ListQuery, RecruboClient};
use crate::rules::template::TemplateValue;
use crate::settings::{Settings, layer};

/// The default subscription attributes.
pub fn default_subscription_body() -> Value {
    json!({
        "resource": "{{resource}}",
        "event": "{{event}}",
        "fields": "{{fields}}",
        "webhookUrl": "{{url}}",
    })
}

/// Subcommands of `flowd webhooks`.
#[derive(Debug, Subcommand)]
pub enum WebhooksCommand {
    /// `POST /webhooks`: subscribe to a resource's events.
    Subscribe(SubscribeArgs),
    /// `PATCH /organizations/{id}`: set the organization's webhookUrl and webhookSecret.
    SetDestination(DestinationArgs),
}

/// Where the settings come from.
#[derive(Debug, Args)]
pub struct ConfigArgs {
    /// A settings file (the token may also come from RECRUBO_API_TOKEN or FLOWD_RECRUBO_TOKEN).
    #[arg(long)]
    pub config: Option<PathBuf>,
}

/// Arguments of `flowd webhooks subscribe`.
#[derive(Debug, Args)]
pub struct SubscribeArgs {
    /// JSON:API resource type, e.g. flowRuns.
    #[arg(long)]
    pub resource: String,
    /// create, update or delete.
    #[arg(long, default_value = "update")]
    pub event: String,
    /// Fields whose updates trigger the webhook (comma-separated).
    #[arg(long, value_delimiter = ',')]
    pub fields: Vec<String>,
    /// A destination for this subscription only.
    #[arg(long)]
    pub url: Option<String>,
    /// Settings.
    #[command(flatten)]
    pub config: ConfigArgs,
}

/// Arguments of `flowd webhooks set-destination`.
#[derive(Debug, Args)]
pub struct DestinationArgs {
    /// flowd's public webhook URL, e.g. https://flowd.example.com/webhooks/recrubo.
    #[arg(long)]
    pub url: String,
    /// The organization id (default: the first organization the token sees).
    #[arg(long)]
    pub organization: Option<String>,
    /// Settings.
    #[command(flatten)]
    pub config: ConfigArgs,
}

fn client(config: &ConfigArgs) -> anyhow::Result<(Settings, RecruboClient)> {
    let env: BTreeMap<String, String> = std::env::vars().collect();
    let settings = layer(config.config.as_deref(), &env, &[])?;
    let token = settings.recrubo.token.clone().ok_or_else(|| {
        anyhow!("no Recrubo token: set RECRUBO_API_TOKEN, FLOWD_RECRUBO_TOKEN or recrubo.token")
    })?;
    let mut client_settings = ClientSettings::new(settings.recrubo.base_url.clone(), token);
    client_settings.rate_limit = settings.recrubo.rate_limit;
    let client = RecruboClient::new(&client_settings)?;
    Ok((settings, client))
}

/// Renders the subscription attributes from the template.
pub fn subscription_attributes(
    template: &Value,
    resource: &str,
    event: &str,
    fields: &[String],
    url: Option<&str>,
) -> anyhow::Result<Map<String, Value>> {
    let compiled = TemplateValue::from_json(template)
        .map_err(|err| anyhow!("recrubo.subscription_body: {err}"))?;
    let context = json!({ "resource": resource, "event": event, "fields": fields, "url": url });
    let rendered = compiled
        .render(&context)
        .map_err(|err| anyhow!("recrubo.subscription_body: {err}"))?;
    let Value::Object(mut attributes) = rendered else {
        return Err(anyhow!("recrubo.subscription_body must be a mapping"));
    };
    attributes.retain(|_, value| !value.is_null() && *value != json!([]));
    Ok(attributes)
}

/// Runs a webhooks subcommand.
pub fn run(command: WebhooksCommand) -> anyhow::Result<ExitCode> {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("cannot start the async runtime")?;
    runtime.block_on(async move {
        match command {
            WebhooksCommand::Subscribe(args) => {
                let (settings, client) = client(&args.config)?;
                let template = settings
                    .recrubo
                    .subscription_body
                    .clone()
                    .unwrap_or_else(default_subscription_body);
                let attributes = subscription_attributes(&template, &args.resource, &args.event, &args.fields, args.url.as_deref())?;
                let created = client.create_webhook(attributes).await?;
                println!("subscribed: webhook {} ({} {})", created.id, args.resource, args.event);
            }
            WebhooksCommand::SetDestination(args) => {
                let (settings, client) = client(&args.config)?;
                let secret = settings
                    .recrubo
                    .webhook_secret
                    .first()
                    .cloned()
                    .ok_or_else(|| anyhow!("no webhook secret: set RECRUBO_WEBHOOK_SECRET or recrubo.webhook_secret"))?;
                let organization = match args.organization {
                    Some(id) => id,
                    None => client
                        .list("organizations", &ListQuery::new().page_size(1))
                        .await?
                        .items
                        .into_iter()
                        .next()
                        .map(|org| org.id)
                        .ok_or_else(|| anyhow!("the token sees no organization; pass --organization"))?,
                };
                client.set_organization_webhook(&organization, &args.url, &secret).await?;
                println!("organization {organization}: webhookUrl set to {} (secret ***)", args.url);
            }
        }
        anyhow::Ok(())
    })?;
    Ok(ExitCode::SUCCESS)
}
