//! The status page at `/` on the admin listener: rules (next fire time, reload state and
//! errors, a run button for `manual` rules), recent executions with a timeline of their steps,
//! followed runs, and dead letters with a retry button; the login form when `admin.token` is set.
//! Plain server-rendered HTML that refreshes itself.
//!
//! The page has no inline script or style (the listener's CSP, `default-src 'self'`, would block
//! them): `/static/page.js` wires the buttons, which send same-origin JSON with `fetch()`, and
//! `/static/page.css` styles it. Everything shown is escaped with [`escape`].

use std::fmt::Write as _;

use axum::Extension;
use axum::extract::State;
use axum::http::header;
use axum::response::{Html, IntoResponse, Response};

use super::AppState;
use super::guard::Authenticated;

/// The page's script (`GET /static/page.js`).
const SCRIPT: &str = include_str!("static/page.js");

/// The page's style sheet (`GET /static/page.css`).
const STYLE: &str = include_str!("static/page.css");

/// The head of every page: the style sheet and the script, from this origin.
const HEAD: &str = "<!doctype html><html><head><meta charset=utf-8><title>flowd</title><link rel=stylesheet href=/static/page.css><script src=/static/page.js defer></script>";

/// `GET /static/page.js`.
pub async fn script() -> Response {
    (
        [(header::CONTENT_TYPE, "text/javascript; charset=utf-8")],
        SCRIPT,
    )
        .into_response()
}

/// `GET /static/page.css`.
pub async fn style() -> Response {
    ([(header::CONTENT_TYPE, "text/css; charset=utf-8")], STYLE).into_response()
}

/// The login form shown at `/` to a browser without the admin token; it posts
/// `{"token": ...}` to `/login` with `fetch()`. Without script the form posts a urlencoded body,
/// which `/login` refuses (415), so the token never ends up in a URL.
pub fn login_page() -> Html<String> {
    Html(format!(
        "{HEAD}</head><body><h1>flowd <span class=muted>{}</span></h1>\
<form id=login method=post action=/login><label>Admin token <input type=password name=token autocomplete=current-password required autofocus></label>\
<button type=submit>Log in</button></form><p id=flash role=status></p></body></html>",
        escape(env!("CARGO_PKG_VERSION"))
    ))
}

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

/// `GET /`.
pub async fn status_page(
    State(state): State<AppState>,
    authenticated: Option<Extension<Authenticated>>,
) -> Response {
    let set = state.reloader.current();
    let reload = state.reloader.status();
    let now = chrono::Utc::now();
    let mut html = String::new();
    let _ = write!(
        html,
        "{HEAD}<meta http-equiv=refresh content=5></head><body>"
    );
    let logout = match authenticated {
        Some(Extension(Authenticated::Session)) => " <button data-action=logout>log out</button>",
        _ => "",
    };
    let _ = write!(
        html,
        "<h1>flowd <span class=muted>{}</span></h1><p class=actions><button data-action=reload>reload rules</button>{logout}</p><p id=flash role=status></p>",
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

    html.push_str("<h2>Rules</h2><table><tr><th>rule</th><th>trigger</th><th>next fire</th><th>file</th><th></th></tr>");
    for rule in set.rules().iter().take(500) {
        let next = crate::triggers::schedule::Timing::of(rule)
            .and_then(|timing| timing.next_after(now))
            .map(|t| t.format("%Y-%m-%d %H:%M:%S UTC").to_string())
            .unwrap_or_default();
        // Only `manual` rules run by hand (the API answers 409 for others), and the button sends
        // no inputs: rules with a required input are run with `flowd trigger --input`.
        let run = match &rule.trigger {
            crate::rules::Trigger::Manual(trigger)
                if trigger
                    .inputs
                    .iter()
                    .all(|input| !input.required || input.default.is_some()) =>
            {
                format!(
                    "<button data-action=trigger data-rule=\"{}\">run</button>",
                    escape(&rule.name)
                )
            }
            _ => String::new(),
        };
        let _ = write!(
            html,
            "<tr><td>{}</td><td><code>{}</code></td><td>{}</td><td class=muted>{}:{}</td><td>{run}</td></tr>",
            escape(&rule.name),
            escape(&rule.trigger.summary()),
            escape(&next),
            escape(&rule.file.display().to_string()),
            rule.at.line
        );
    }
    html.push_str("</table>");

    if let Some(store) = &state.store {
        // What waits, whenever it was created (the recent list below shows the last 25 only).
        let waiting = crate::store::ExecutionFilter {
            status: Some("waiting".to_owned()),
            limit: 25,
            ..Default::default()
        };
        let waiting = store.executions(&waiting).await.unwrap_or_default();
        if !waiting.is_empty() {
            html.push_str("<h2>Waiting</h2><table><tr><th>since</th><th>rule</th><th>execution</th><th>why</th></tr>");
            for execution in &waiting {
                let why = execution
                    .waiting
                    .as_ref()
                    .map(waiting_text)
                    .unwrap_or_default();
                let _ = write!(
                    html,
                    "<tr><td class=muted>{}</td><td>{}</td><td class=muted>{}</td><td>{}</td></tr>",
                    execution.created_at.format("%Y-%m-%d %H:%M:%S"),
                    escape(&execution.rule),
                    escape(&execution.id),
                    escape(&why)
                );
            }
            html.push_str("</table>");
        }
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
                match &execution.waiting {
                    // Why it waits, and until when (DESIGN 2.5).
                    Some(waiting) =>
                        format!("<br><small>{}</small>", escape(&waiting_text(waiting))),
                    None => execution
                        .last_error
                        .as_ref()
                        .map(|e| format!("<br><small>{}</small>", escape(e)))
                        .unwrap_or_default(),
                }
            );
        }
        html.push_str("</table>");

        html.push_str("<h2>Followed runs</h2><table><tr><th>run</th><th>rule / step</th><th>status</th><th>changed</th></tr>");
        for run in store.followed_runs(25).await.unwrap_or_default() {
            let _ = write!(
                html,
                "<tr><td><code>{}</code> <span class=muted>{}</span></td><td>{} / {}</td><td>{}</td><td class=muted>{}</td></tr>",
                escape(&run.resource_id),
                escape(run.resource_type.json_api_type()),
                escape(&run.rule),
                escape(run.step_id.as_deref().unwrap_or("")),
                escape(&run.status),
                run.changed_at.format("%H:%M:%S")
            );
        }
        html.push_str("</table>");

        // The instances sharing the database (one: this one, on SQLite).
        let mut instances = store
            .instances(now - crate::http::INSTANCE_ALIVE)
            .await
            .unwrap_or_default();
        if instances.is_empty() {
            instances.extend(state.instance.clone());
        }
        html.push_str("<h2>Instances</h2><table><tr><th>instance</th><th>address</th><th>rules hash</th><th>heartbeat</th><th>leases</th></tr>");
        for instance in &instances {
            let same = instance.rules_hash == set.hash;
            let _ = write!(
                html,
                "<tr><td><code>{}</code></td><td>{}</td><td class={}><code>{}</code>{}</td><td class=muted>{}</td><td>{}</td></tr>",
                escape(&instance.id.chars().take(8).collect::<String>()),
                escape(&instance.address),
                if same { "ok" } else { "bad" },
                escape(&instance.rules_hash.chars().take(12).collect::<String>()),
                if same { "" } else { " (other rules)" },
                instance.heartbeat_at.format("%H:%M:%S"),
                instance.leases
            );
        }
        html.push_str("</table>");

        html.push_str("<h2>Dead letters</h2><table><tr><th>id</th><th>rule</th><th>step</th><th>error</th><th></th></tr>");
        for letter in store.dead_letters(25).await.unwrap_or_default() {
            let action = if letter.retried_at.is_some() {
                "<span class=muted>retried</span>".to_owned()
            } else {
                format!(
                    "<button data-action=retry data-id={}>retry</button>",
                    letter.id
                )
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
    html.push_str("</body></html>");
    Html(html).into_response()
}

/// A waiting execution's reason in words: `queued behind <id>`, `debounced until <time>`,
/// `throttled until <time>`, `quiet hours until <time>`.
fn waiting_text(waiting: &crate::store::Waiting) -> String {
    let until = waiting
        .until
        .map(|at| at.format("%Y-%m-%d %H:%M:%S UTC").to_string())
        .unwrap_or_default();
    match waiting.kind.as_str() {
        "queue" => match &waiting.behind {
            Some(behind) => format!("queued behind {behind}"),
            None => "queued".to_owned(),
        },
        "debounce" => format!("debounced until {until}"),
        "throttle" => format!("throttled until {until}"),
        "quiet_hours" => format!("quiet hours until {until}"),
        other => format!("{other} until {until}"),
    }
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
