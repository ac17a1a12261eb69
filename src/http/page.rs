//! The status page at `/` on the admin listener: rules (next fire time, reload state and
//! errors), recent executions with a timeline of their steps, followed runs, and dead letters with
//! a retry button. Plain server-rendered HTML that refreshes itself; a few lines of JavaScript
//! for the retry button only.

use std::fmt::Write as _;

use axum::extract::State;
use axum::response::{Html, IntoResponse, Response};

use super::AppState;

/// Escapes text for HTML.
fn escape(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            other => out.push(other),
        }
    }
    out
}

const STYLE: &str = "body{font:14px system-ui,sans-serif;margin:24px;color:#222}h1{font-size:20px}h2{font-size:16px;margin-top:28px}\
table{border-collapse:collapse;width:100%}td,th{border-bottom:1px solid #ddd;padding:4px 8px;text-align:left;vertical-align:top}\
th{background:#f4f4f4}.ok{color:#17803d}.bad{color:#b42318}.muted{color:#777}.step{display:inline-block;padding:1px 6px;margin:1px;border-radius:4px;font-size:12px}\
.s-succeeded{background:#d1fadf}.s-failed{background:#fee4e2}.s-retrying{background:#fef0c7}.s-skipped{background:#eee}.s-running{background:#d1e9ff}\
code{font-size:12px}button{font-size:12px}";

/// `GET /`.
pub async fn status_page(State(state): State<AppState>) -> Response {
    let set = state.reloader.current();
    let reload = state.reloader.status();
    let now = chrono::Utc::now();
    let mut html = String::new();
    let _ = write!(
        html,
        "<!doctype html><html><head><meta charset=utf-8><meta http-equiv=refresh content=5><title>flowd</title><style>{STYLE}</style></head><body>"
    );
    let _ = write!(
        html,
        "<h1>flowd <span class=muted>{}</span></h1>",
        escape(env!("CARGO_PKG_VERSION"))
    );
    let reload_class = if reload.last_success { "ok" } else { "bad" };
    let _ = write!(
        html,
        "<p>{} rule(s) from {} file(s) · hash <code>{}</code> · last reload <span class={reload_class}>{}</span> at {} ({:?})</p>",
        set.len(),
        set.files.len(),
        escape(&set.hash.chars().take(12).collect::<String>()),
        if reload.last_success {
            "succeeded"
        } else {
            "FAILED — the previous rules stay in force"
        },
        reload.last_attempt_at.format("%Y-%m-%d %H:%M:%S UTC"),
        reload.last_trigger
    );
    if !reload.diagnostics.is_empty() {
        html.push_str("<ul class=bad>");
        for diagnostic in &reload.diagnostics {
            let _ = write!(
                html,
                "<li><code>{}</code></li>",
                escape(&diagnostic.one_line())
            );
        }
        html.push_str("</ul>");
    }

    html.push_str("<h2>Rules</h2><table><tr><th>rule</th><th>trigger</th><th>next fire</th><th>file</th></tr>");
    for rule in set.rules().iter().take(500) {
        let next = crate::triggers::schedule::Timing::of(rule)
            .and_then(|timing| timing.next_after(now))
            .map(|t| t.format("%Y-%m-%d %H:%M:%S UTC").to_string())
            .unwrap_or_default();
        let _ = write!(
            html,
            "<tr><td>{}</td><td><code>{}</code></td><td>{}</td><td class=muted>{}:{}</td></tr>",
            escape(&rule.name),
            escape(&rule.trigger.summary()),
            escape(&next),
            escape(&rule.file.display().to_string()),
            rule.at.line
        );
    }
    html.push_str("</table>");

    if let Some(store) = &state.store {
        html.push_str("<h2>Recent executions</h2><table><tr><th>when</th><th>rule</th><th>status</th><th>steps</th></tr>");
        let recent = crate::store::ExecutionFilter {
            limit: 25,
            ..Default::default()
        };
        let executions = store.executions(&recent).await.unwrap_or_default();
        for execution in &executions {
            let steps = store.step_records(&execution.id).await.unwrap_or_default();
            let mut timeline = String::new();
            for step in &steps {
                let _ = write!(
                    timeline,
                    "<span class=\"step s-{}\" title=\"{}\">{} {}</span>",
                    escape(&step.status),
                    escape(step.error.as_deref().unwrap_or("")),
                    escape(&step.kind),
                    escape(&step.status)
                );
            }
            let handler = execution
                .handler_status
                .as_ref()
                .map(|s| format!(" <span class=muted>on_status.{}</span>", escape(s)))
                .unwrap_or_default();
            let class = match execution.status.as_str() {
                "succeeded" => "ok",
                "failed" | "orphaned" => "bad",
                _ => "muted",
            };
            let _ = write!(
                html,
                "<tr><td class=muted>{}</td><td>{}{handler}</td><td class={class}>{}{}</td><td>{timeline}</td></tr>",
                execution.created_at.format("%H:%M:%S"),
                escape(&execution.rule),
                escape(&execution.status),
                execution
                    .last_error
                    .as_ref()
                    .map(|e| format!("<br><small>{}</small>", escape(e)))
                    .unwrap_or_default()
            );
        }
        html.push_str("</table>");

        html.push_str("<h2>Followed runs</h2><table><tr><th>run</th><th>rule / step</th><th>status</th><th>changed</th></tr>");
        for run in store.followed_runs(25).await.unwrap_or_default() {
            let _ = write!(
                html,
                "<tr><td><code>{}</code> <span class=muted>{}</span></td><td>{} / {}</td><td>{}</td><td class=muted>{}</td></tr>",
                escape(&run.resource_id),
                escape(&run.resource_type),
                escape(&run.rule),
                escape(run.step_id.as_deref().unwrap_or("")),
                escape(&run.status),
                run.changed_at.format("%H:%M:%S")
            );
        }
        html.push_str("</table>");

        html.push_str("<h2>Dead letters</h2><table><tr><th>id</th><th>rule</th><th>step</th><th>error</th><th></th></tr>");
        for letter in store.dead_letters(25).await.unwrap_or_default() {
            let action = if letter.retried_at.is_some() {
                "<span class=muted>retried</span>".to_owned()
            } else {
                format!("<button onclick=\"retry({})\">retry</button>", letter.id)
            };
            let _ = write!(
                html,
                "<tr><td>{}</td><td>{}</td><td>{}</td><td class=bad>{}</td><td>{action}</td></tr>",
                letter.id,
                escape(&letter.rule),
                escape(&letter.kind),
                escape(&letter.error)
            );
        }
        html.push_str("</table>");
    }
    html.push_str(
        "<script>function retry(id){fetch('/api/v1/dead-letters/'+id+'/retry',{method:'POST'}).then(function(r){return r.json()}).then(function(b){alert(b.status||b.error);location.reload()})}</script>",
    );
    html.push_str("</body></html>");
    Html(html).into_response()
}

#[cfg(test)]
mod tests {
    use super::escape;

    #[test]
    fn escapes_markup() {
        assert_eq!(
            escape("<b>\"x\" & 'y'</b>"),
            "&lt;b&gt;&quot;x&quot; &amp; &#39;y&#39;&lt;/b&gt;"
        );
    }
}
