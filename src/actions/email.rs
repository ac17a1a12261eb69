//! `email`: SMTP through lettre, with STARTTLS by default and plain SMTP for local relays
//! (`smtp.tls: none`) or implicit TLS (`smtp.tls: tls`).

use serde_json::{Value, json};

use lettre::message::{Mailbox, MultiPart, SinglePart, header::ContentType};
use lettre::transport::smtp::authentication::Credentials;
use lettre::{AsyncSmtpTransport, AsyncTransport, Message, Tokio1Executor};

use super::ActionError;
use crate::settings::SmtpSettings;

/// A configured SMTP sender.
#[derive(Clone)]
pub struct Mailer {
    transport: AsyncSmtpTransport<Tokio1Executor>,
    from: Mailbox,
}

impl std::fmt::Debug for Mailer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Mailer")
            .field("from", &self.from.to_string())
            .finish_non_exhaustive()
    }
}

impl Mailer {
    /// Builds a sender from settings.
    pub fn new(settings: &SmtpSettings) -> Result<Mailer, String> {
        let from: Mailbox = settings
            .from
            .parse()
            .map_err(|err| format!("smtp.from `{}` is not an address: {err}", settings.from))?;
        let builder = match settings.tls.as_deref().unwrap_or("starttls") {
            "none" => AsyncSmtpTransport::<Tokio1Executor>::builder_dangerous(&settings.host),
            "tls" => AsyncSmtpTransport::<Tokio1Executor>::relay(&settings.host)
                .map_err(|err| err.to_string())?,
            "starttls" => AsyncSmtpTransport::<Tokio1Executor>::starttls_relay(&settings.host)
                .map_err(|err| err.to_string())?,
            other => {
                return Err(format!(
                    "smtp.tls must be starttls, tls or none, not `{other}`"
                ));
            }
        };
        let mut builder = builder.port(settings.port);
        if let (Some(user), Some(password)) = (&settings.username, &settings.password) {
            builder =
                builder.credentials(Credentials::new(user.clone(), password.expose().clone()));
        }
        Ok(Mailer {
            transport: builder.build(),
            from,
        })
    }

    /// Sends a rendered `email` input; the output is the Message-ID.
    pub async fn send(&self, input: &Value) -> Result<Value, ActionError> {
        let mut builder = Message::builder().from(self.from.clone());
        for address in input["to"].as_array().into_iter().flatten() {
            let text = address.as_str().unwrap_or_default();
            let mailbox: Mailbox = text.parse().map_err(|err| {
                ActionError::fatal(format!("`{text}` is not an email address: {err}"))
            })?;
            builder = builder.to(mailbox);
        }
        let message_id = format!("<{}@flowd>", uuid::Uuid::new_v4());
        builder = builder
            .subject(input["subject"].as_str().unwrap_or_default())
            .message_id(Some(message_id.clone()));
        let text = input["body"].as_str().unwrap_or_default().to_owned();
        let message = match input["html"].as_str() {
            Some(html) => {
                builder.multipart(MultiPart::alternative_plain_html(text, html.to_owned()))
            }
            None => builder.singlepart(
                SinglePart::builder()
                    .header(ContentType::TEXT_PLAIN)
                    .body(text),
            ),
        }
        .map_err(|err| ActionError::fatal(format!("cannot build the mail: {err}")))?;
        // The server is checked first (a session to it, then NOOP): a failure here sent nothing
        // and is retried, which narrows "may have been sent" to the message's own session.
        match self.transport.test_connection().await {
            Ok(true) => {}
            Ok(false) => {
                return Err(ActionError::retryable(
                    "SMTP: the server did not answer a NOOP; nothing was sent",
                ));
            }
            Err(err) => {
                return Err(ActionError::retryable(format!(
                    "SMTP: {err}; nothing was sent"
                )));
            }
        }
        self.transport.send(message).await.map_err(smtp_failure)?;
        Ok(json!({ "message_id": message_id }))
    }
}

/// What a failed send means. A reply code is an answer: 4xx (transient) was not accepted and is
/// retried, 5xx (permanent) is refused for good. A failure before the conversation (connect,
/// TLS, building the request) sent nothing and is retried. Anything else — a timeout or a cut
/// connection once the conversation ran, above all after `DATA` — leaves it unknown whether the
/// server took the mail: it is not sent again automatically (a second copy to a candidate is
/// worse than a visible dead letter), and the error says so.
fn smtp_failure(err: lettre::transport::smtp::Error) -> ActionError {
    // lettre does not expose its "connection" kind; its Display names it (lettre 0.11).
    let before_conversation = err.is_client()
        || err.is_tls()
        || err.is_transport_shutdown()
        || err.to_string().starts_with("Connection error");
    if err.is_permanent() {
        ActionError::fatal(format!("SMTP: {err}"))
    } else if err.is_transient() || before_conversation {
        ActionError::retryable(format!("SMTP: {err}"))
    } else {
        ActionError {
            outcome_unknown: true,
            ..ActionError::fatal(format!(
                "SMTP: {err}; the server may have taken the mail before the connection failed, so it is not sent again automatically (check with the recipient, then retry the dead letter to send it again)"
            ))
        }
    }
}
