//! Clients of the admin API: `flowd trigger`, `flowd executions`, `flowd runs`,
//! `flowd dead-letters`, `flowd reload`. Readable tables by default, `--json` for scripts.

use std::process::ExitCode;

use anyhow::Context as _;
use clap::{Args, Subcommand};
use serde_json::Value;

/// Where the admin API is.
#[derive(Debug, Args)]
pub struct AdminConnection {
    /// The admin listener's URL.
    #[arg(
        long,
        global = true,
        env = "FLOWD_ADMIN_URL",
        default_value = "http://127.0.0.1:8081"
    )]
    pub admin_url: String,
    /// The admin bearer token, when one is set.
    #[arg(long, global = true, env = "FLOWD_ADMIN_TOKEN", hide_env_values = true)]
    pub token: Option<String>,
    /// Print the API's JSON instead of a table.
    #[arg(long, global = true)]
    pub json: bool,
}

/// `flowd trigger RULE --input k=v`.
#[derive(Debug, Args)]
pub struct TriggerArgs {
    /// The rule to run.
    pub rule: String,
    /// An input, `name=value` (the value is read as JSON when it parses, else as text).
    #[arg(long = "input", value_name = "NAME=VALUE")]
    pub inputs: Vec<String>,
    /// Connection.
    #[command(flatten)]
    pub connection: AdminConnection,
}

/// `flowd executions [show ID]`.
#[derive(Debug, Args)]
pub struct ExecutionsArgs {
    /// Show one execution.
    #[command(subcommand)]
    pub action: Option<ExecutionsAction>,
    /// Only this rule's executions.
    #[arg(long)]
    pub rule: Option<String>,
    /// Only executions with this status (pending, succeeded, failed, skipped, orphaned).
    #[arg(long)]
    pub status: Option<String>,
    /// Connection.
    #[command(flatten)]
    pub connection: AdminConnection,
}

/// Subcommands of `flowd executions`.
#[derive(Debug, Subcommand)]
pub enum ExecutionsAction {
    /// One execution with its steps.
    Show {
        /// The execution id.
        id: String,
    },
}

/// `flowd dead-letters [retry ID]`.
#[derive(Debug, Args)]
pub struct DeadLettersArgs {
    /// Retry one.
    #[command(subcommand)]
    pub action: Option<DeadLettersAction>,
    /// Connection.
    #[command(flatten)]
    pub connection: AdminConnection,
}

/// Subcommands of `flowd dead-letters`.
#[derive(Debug, Subcommand)]
pub enum DeadLettersAction {
    /// Put the failed step's execution back to work.
    Retry {
        /// The dead letter id.
        id: i64,
    },
}

/// What to ask the admin API.
#[derive(Debug)]
pub enum AdminCommand {
    /// `flowd trigger`.
    Trigger(TriggerArgs),
    /// `flowd executions`.
    Executions(ExecutionsArgs),
    /// `flowd runs`.
    Runs(AdminConnection),
    /// `flowd dead-letters`.
    DeadLetters(DeadLettersArgs),
    /// `flowd reload`.
    Reload(AdminConnection),
}

/// `NAME=VALUE`: the value as JSON when it parses, else as text.
pub(crate) fn parse_input(text: &str) -> anyhow::Result<(String, Value)> {
    let (name, value) = text
        .split_once('=')
        .with_context(|| format!("`{text}` is not NAME=VALUE"))?;
    let value = serde_json::from_str(value).unwrap_or_else(|_| Value::String(value.to_owned()));
    Ok((name.to_owned(), value))
}

async fn call(
    connection: &AdminConnection,
    method: reqwest::Method,
    path: &str,
    body: Option<Value>,
) -> anyhow::Result<(u16, Value)> {
    let url = format!("{}{path}", connection.admin_url.trim_end_matches('/'));
    let mut request = reqwest::Client::new().request(method.clone(), &url);
    if let Some(token) = &connection.token {
        request = request.bearer_auth(token);
    }
    // The admin listener takes state-changing requests only as JSON (DESIGN 4.3: a cross-site
    // form cannot send it), so a POST always carries a JSON body, `{}` when there is nothing
    // to say; `.json()` sets `Content-Type: application/json`.
    match body {
        Some(body) => request = request.json(&body),
        None if method == reqwest::Method::POST => request = request.json(&serde_json::json!({})),
        None => {}
    }
    let response = request.send().await.with_context(|| {
        format!("cannot reach the admin API at {url} (is `flowd run` running? --admin-url)")
    })?;
    let status = response.status().as_u16();
    let body = response.json::<Value>().await.unwrap_or(Value::Null);
    Ok((status, body))
}

fn table(headers: &[&str], rows: Vec<Vec<String>>) {
    let mut widths: Vec<usize> = headers.iter().map(|h| h.len()).collect();
    for row in &rows {
        for (width, cell) in widths.iter_mut().zip(row) {
            *width = (*width).max(cell.chars().count()).min(60);
        }
    }
    let line = |cells: Vec<String>| {
        cells
            .iter()
            .zip(&widths)
            .map(|(cell, width)| {
                let cell: String = cell.chars().take(*width).collect();
                format!("{cell:width$}")
            })
            .collect::<Vec<_>>()
            .join("  ")
            .trim_end()
            .to_owned()
    };
    println!(
        "{}",
        line(headers.iter().map(|h| h.to_uppercase()).collect())
    );
    for row in rows {
        println!("{}", line(row));
    }
}

fn text(value: &Value) -> String {
    match value {
        Value::Null => String::new(),
        Value::String(text) => text.clone(),
        other => other.to_string(),
    }
}

/// Runs an admin client command.
pub fn run(command: AdminCommand) -> anyhow::Result<ExitCode> {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("cannot start the async runtime")?;
    runtime.block_on(async move {
        let (connection, status, body, print): (&AdminConnection, u16, Value, fn(&Value)) =
            match &command {
                AdminCommand::Trigger(args) => {
                    let inputs = args
                        .inputs
                        .iter()
                        .map(|i| parse_input(i))
                        .collect::<anyhow::Result<serde_json::Map<_, _>>>()?;
                    let (status, body) = call(
                        &args.connection,
                        reqwest::Method::POST,
                        &format!("/api/v1/rules/{}/trigger", args.rule),
                        Some(serde_json::json!({ "inputs": inputs })),
                    )
                    .await?;
                    (&args.connection, status, body, |body| {
                        println!(
                            "triggered {} (event {})",
                            text(&body["rule"]),
                            text(&body["event_id"])
                        )
                    })
                }
                AdminCommand::Executions(args) => match &args.action {
                    Some(ExecutionsAction::Show { id }) => {
                        let (status, body) = call(
                            &args.connection,
                            reqwest::Method::GET,
                            &format!("/api/v1/executions/{id}"),
                            None,
                        )
                        .await?;
                        (&args.connection, status, body, |body| {
                            let execution = &body["execution"];
                            println!(
                                "execution {}  rule {}  status {}",
                                text(&execution["id"]),
                                text(&execution["rule"]),
                                text(&execution["status"])
                            );
                            if !execution["last_error"].is_null() {
                                println!("  error: {}", text(&execution["last_error"]));
                            }
                            for step in body["steps"].as_array().into_iter().flatten() {
                                println!(
                                    "  {} {}  {}  attempts {}",
                                    text(&step["step_index"]),
                                    text(&step["kind"]),
                                    text(&step["status"]),
                                    text(&step["attempts"])
                                );
                                if !step["input"].is_null() {
                                    println!("      input:  {}", step["input"]);
                                }
                                if !step["output"].is_null() {
                                    println!("      output: {}", step["output"]);
                                }
                                if !step["error"].is_null() {
                                    println!("      error:  {}", text(&step["error"]));
                                }
                            }
                        })
                    }
                    None => {
                        let mut path = "/api/v1/executions?limit=200".to_owned();
                        if let Some(status) = &args.status {
                            path.push_str(&format!(
                                "&status={}",
                                url::form_urlencoded::byte_serialize(status.as_bytes())
                                    .collect::<String>()
                            ));
                        }
                        if let Some(rule) = &args.rule {
                            path.push_str(&format!(
                                "&rule={}",
                                url::form_urlencoded::byte_serialize(rule.as_bytes())
                                    .collect::<String>()
                            ));
                        }
                        let (status, mut body) =
                            call(&args.connection, reqwest::Method::GET, &path, None).await?;
                        if let (Some(wanted), Some(list)) =
                            (&args.status, body["executions"].as_array_mut())
                        {
                            list.retain(|e| e["status"].as_str() == Some(wanted.as_str()));
                        }
                        (&args.connection, status, body, |body| {
                            let rows =
                                body["executions"]
                                    .as_array()
                                    .into_iter()
                                    .flatten()
                                    .map(|e| {
                                        vec![
                                            text(&e["id"]),
                                            text(&e["rule"]),
                                            text(&e["status"]),
                                            text(&e["handler_status"]),
                                            text(&e["created_at"]),
                                            text(&e["last_error"]),
                                        ]
                                    });
                            table(
                                &["id", "rule", "status", "handler", "created", "error"],
                                rows.collect(),
                            );
                        })
                    }
                },
                AdminCommand::Runs(connection) => {
                    let (status, body) =
                        call(connection, reqwest::Method::GET, "/api/v1/runs", None).await?;
                    (connection, status, body, |body| {
                        let rows = body["runs"].as_array().into_iter().flatten().map(|r| {
                            vec![
                                text(&r["resource_id"]),
                                text(&r["resource_type"]),
                                text(&r["rule"]),
                                text(&r["step_id"]),
                                text(&r["status"]),
                                text(&r["changed_at"]),
                            ]
                        });
                        table(
                            &["id", "type", "rule", "step", "status", "changed"],
                            rows.collect(),
                        );
                    })
                }
                AdminCommand::DeadLetters(args) => {
                    match &args.action {
                        Some(DeadLettersAction::Retry { id }) => {
                            let (status, body) = call(
                                &args.connection,
                                reqwest::Method::POST,
                                &format!("/api/v1/dead-letters/{id}/retry"),
                                None,
                            )
                            .await?;
                            (&args.connection, status, body, |body| {
                                println!("dead letter {} retried", text(&body["id"]))
                            })
                        }
                        None => {
                            let (status, body) = call(
                                &args.connection,
                                reqwest::Method::GET,
                                "/api/v1/dead-letters",
                                None,
                            )
                            .await?;
                            (&args.connection, status, body, |body| {
                                let rows =
                                    body["dead_letters"].as_array().into_iter().flatten().map(
                                        |d| {
                                            vec![
                                                text(&d["id"]),
                                                text(&d["rule"]),
                                                text(&d["kind"]),
                                                text(&d["execution_id"]),
                                                text(&d["created_at"]),
                                                text(&d["retried_at"]),
                                                text(&d["error"]),
                                            ]
                                        },
                                    );
                                table(
                                    &[
                                        "id",
                                        "rule",
                                        "step",
                                        "execution",
                                        "created",
                                        "retried",
                                        "error",
                                    ],
                                    rows.collect(),
                                );
                            })
                        }
                    }
                }
                AdminCommand::Reload(connection) => {
                    let (status, body) =
                        call(connection, reqwest::Method::POST, "/api/v1/reload", None).await?;
                    (connection, status, body, |body| {
                        match body["status"].as_str() {
                            Some("invalid") => {
                                for diagnostic in
                                    body["diagnostics"].as_array().into_iter().flatten()
                                {
                                    println!(
                                        "{}:{}:{}: {}",
                                        text(&diagnostic["file"]),
                                        text(&diagnostic["line"]),
                                        text(&diagnostic["column"]),
                                        text(&diagnostic["message"])
                                    );
                                }
                                println!("the rules are invalid; the previous rules stay in force");
                            }
                            Some(status) => println!(
                                "{status}: {} rules (hash {})",
                                text(&body["rules"]),
                                text(&body["hash"]).chars().take(12).collect::<String>()
                            ),
                            None => println!("{body}"),
                        }
                    })
                }
            };
        if connection.json {
            println!(
                "{}",
                serde_json::to_string_pretty(&body).unwrap_or_default()
            );
        } else if (200..300).contains(&status) {
            print(&body);
        } else {
            eprintln!(
                "error: the admin API answered {status}: {}",
                text(&body["error"]).if_empty(&body.to_string())
            );
        }
        anyhow::Ok(if (200..300).contains(&status) {
            ExitCode::SUCCESS
        } else {
            ExitCode::FAILURE
        })
    })
}

trait IfEmpty {
    fn if_empty(self, other: &str) -> String;
}

impl IfEmpty for String {
    fn if_empty(self, other: &str) -> String {
        if self.is_empty() {
            other.to_owned()
        } else {
            self
        }
    }
}
