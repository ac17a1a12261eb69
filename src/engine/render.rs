//! Rendering a step against a context: every template of the step becomes a value, and the
//! result is one JSON object per step kind (`{"flow": ..., "message_thread": ..., "state": ...}`).
//! The executor performs that object; the history stores it (secrets redacted); `flowd test`
//! and `flowd simulate` compare or show it. Pure: no I/O.

use serde_json::{Map, Value, json};

use crate::rules::StepKind;
use crate::rules::ruleset::{HttpMethod, NotifyPreset};
use crate::rules::template::{Escape, Template, TemplateRenderError, TemplateValue};

fn method_name(method: HttpMethod) -> &'static str {
    match method {
        HttpMethod::Get => "GET",
        HttpMethod::Post => "POST",
        HttpMethod::Put => "PUT",
        HttpMethod::Patch => "PATCH",
        HttpMethod::Delete => "DELETE",
    }
}

fn text(template: &Template, context: &Value) -> Result<Value, TemplateRenderError> {
    template.render_string(context).map(Value::String)
}

fn optional(value: &Option<TemplateValue>, context: &Value) -> Result<Value, TemplateRenderError> {
    match value {
        Some(value) => value.render(context),
        None => Ok(Value::Null),
    }
}

fn headers(headers: &[(String, Template)], context: &Value) -> Result<Value, TemplateRenderError> {
    let mut map = Map::new();
    for (name, template) in headers {
        map.insert(name.clone(), text(template, context)?);
    }
    Ok(Value::Object(map))
}

/// Renders a step's fields.
pub fn render_step(kind: &StepKind, context: &Value) -> Result<Value, TemplateRenderError> {
    Ok(match kind {
        StepKind::StartFlowRun {
            flow,
            message_thread,
            state,
            initial_message,
        } => json!({
            "flow": text(flow, context)?,
            "message_thread": text(message_thread, context)?,
            "state": optional(state, context)?,
            "initial_message": optional(initial_message, context)?,
        }),
        StepKind::GenerateFlow {
            flow_type,
            parameters,
            context: generation_context,
            vacancy_id,
            from_analysis,
        } => json!({
            "flow_type": text(flow_type, context)?,
            "parameters": optional(parameters, context)?,
            "context": optional(generation_context, context)?,
            "vacancy_id": match vacancy_id { Some(t) => text(t, context)?, None => Value::Null },
            "from_analysis": from_analysis,
        }),
        StepKind::AnalyzeVacancy { text: vacancy_text } => {
            json!({ "text": text(vacancy_text, context)? })
        }
        StepKind::MessageThread {
            channel,
            identifier,
            chatbot_paused,
        } => json!({
            "channel": text(channel, context)?,
            "identifier": text(identifier, context)?,
            "chatbot_paused": optional(chatbot_paused, context)?,
        }),
        StepKind::UpdateFlowRun { id, state, status } => json!({
            "id": text(id, context)?,
            "state": optional(state, context)?,
            "status": match status { Some(t) => text(t, context)?, None => Value::Null },
        }),
        StepKind::Recrubo { method, path, body } => json!({
            "method": method_name(*method),
            "path": Value::String(path.render_escaped(context, Escape::PathSegment)?),
            "body": optional(body, context)?,
        }),
        StepKind::Notify {
            url,
            headers: notify_headers,
            body,
            preset,
        } => {
            let rendered = body.render(context)?;
            json!({
                "url": text(url, context)?,
                "headers": headers(notify_headers, context)?,
                "body": shape_notify_body(rendered, *preset),
                "preset": preset,
            })
        }
        StepKind::Email {
            to,
            subject,
            body,
            html,
        } => json!({
            "to": to.iter().map(|t| text(t, context)).collect::<Result<Vec<_>, _>>()?,
            "subject": text(subject, context)?,
            "body": text(body, context)?,
            "html": match html { Some(t) => Value::String(t.render_escaped(context, Escape::Html)?), None => Value::Null },
        }),
        StepKind::Http {
            method,
            url,
            headers: http_headers,
            body,
        } => json!({
            "method": method_name(*method),
            "url": text(url, context)?,
            "headers": headers(http_headers, context)?,
            "body": optional(body, context)?,
        }),
        StepKind::Emit { event_type, data } => json!({
            "type": text(event_type, context)?,
            "data": optional(data, context)?,
        }),
        StepKind::Log { text: line } => json!({ "text": text(line, context)? }),
    })
}

/// Presets shape a string body: Slack wants `{"text": ...}`, Teams a MessageCard. Objects are
/// sent as written.
pub fn shape_notify_body(body: Value, preset: Option<NotifyPreset>) -> Value {
    match (preset, body) {
        (Some(NotifyPreset::Slack), Value::String(text)) => json!({ "text": text }),
        (Some(NotifyPreset::Teams), Value::String(text)) => json!({
            "@type": "MessageCard",
            "@context": "https://schema.org/extensions",
            "summary": text.chars().take(80).collect::<String>(),
            "text": text,
        }),
        (_, body) => body,
    }
}

/// Replaces every secret value inside a rendered value with `***` (for the history and logs).
pub fn redact(value: &Value, secrets: &[String]) -> Value {
    match value {
        Value::String(text) => {
            let mut redacted = text.clone();
            for secret in secrets.iter().filter(|s| !s.is_empty()) {
                if redacted.contains(secret.as_str()) {
                    redacted = redacted.replace(secret.as_str(), "***");
                }
            }
            Value::String(redacted)
        }
        Value::Array(items) => Value::Array(items.iter().map(|v| redact(v, secrets)).collect()),
        Value::Object(map) => Value::Object(
            map.iter()
                .map(|(k, v)| (k.clone(), redact(v, secrets)))
                .collect(),
        ),
        other => other.clone(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn presets_shape_string_bodies_and_secrets_are_redacted() {
        assert_eq!(
            shape_notify_body(json!("hi"), Some(NotifyPreset::Slack)),
            json!({"text": "hi"})
        );
        assert_eq!(
            shape_notify_body(json!({"a": 1}), Some(NotifyPreset::Slack)),
            json!({"a": 1})
        );
        assert_eq!(
            shape_notify_body(json!("hi"), Some(NotifyPreset::Teams))["@type"],
            "MessageCard"
        );
        let value = json!({"url": "https://hooks/T0K3N/x", "n": 1});
        assert_eq!(
            redact(&value, &["T0K3N".to_owned()]),
            json!({"url": "https://hooks/***/x", "n": 1})
        );
    }

    #[test]
    fn recrubo_path_values_are_one_segment_and_email_html_is_escaped() {
        let context = json!({"event": {"data": {"id": "x/../../y?z#w", "name": "<script>alert(1)</script>&"}}});
        let path = Template::compile("/flow-runs/{{event.data.id}}/x").expect("compiles");
        assert_eq!(
            path.render_escaped(&context, Escape::PathSegment)
                .expect("renders"),
            "/flow-runs/x%2F..%2F..%2Fy%3Fz%23w/x"
        );
        let encoded =
            Template::compile("/flow-runs/{{urlencode event.data.id}}").expect("compiles");
        assert_eq!(
            encoded
                .render_escaped(&context, Escape::PathSegment)
                .expect("renders"),
            "/flow-runs/x%2F..%2F..%2Fy%3Fz%23w",
            "urlencode is not encoded twice"
        );
        let html = Template::compile("<p>Hello {{event.data.name}}</p>").expect("compiles");
        let rendered = html
            .render_escaped(&context, Escape::Html)
            .expect("renders");
        assert!(
            rendered.starts_with("<p>Hello &lt;script&gt;"),
            "{rendered}"
        );
        assert!(!rendered.contains("<script>"), "{rendered}");
        let whole = Template::compile("{{event.data.name}}").expect("compiles");
        assert!(
            !whole
                .render_escaped(&context, Escape::Html)
                .expect("renders")
                .contains('<')
        );
    }
}
