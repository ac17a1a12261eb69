//! `notify` and `http`: a templated HTTP request. 5xx, 429 and network errors are retryable;
//! other 4xx are not. The output is the status, the headers and the body (JSON when it is).

use std::time::{Duration, SystemTime};

use serde_json::{Map, Value, json};

use super::ActionError;
use crate::recrubo::error::parse_retry_after;

/// The most of an answer's body that is read (DESIGN 3: response bodies are capped).
pub const MAX_RESPONSE_BYTES: usize = 1024 * 1024;

/// Sends the request described by a rendered `notify`/`http` input.
pub async fn request(
    client: &reqwest::Client,
    method: &str,
    input: &Value,
) -> Result<Value, ActionError> {
    let url = input["url"]
        .as_str()
        .filter(|u| u.starts_with("http://") || u.starts_with("https://"))
        .ok_or_else(|| ActionError::fatal(format!("`{}` is not an http(s) URL", input["url"])))?;
    let method = reqwest::Method::from_bytes(method.as_bytes())
        .map_err(|_| ActionError::fatal(format!("invalid method `{method}`")))?;
    let mut request = client
        .request(method.clone(), url)
        .timeout(Duration::from_secs(30));
    if let Some(headers) = input["headers"].as_object() {
        for (name, value) in headers {
            request = request.header(name.as_str(), value.as_str().unwrap_or_default());
        }
    }
    if !input["body"].is_null() {
        request = request.json(&input["body"]);
    }
    let response = request.send().await.map_err(|err| ActionError {
        message: format!("{method} {url}: {err}"),
        retryable: true,
        retry_after: None,
        outcome_unknown: !err.is_connect(),
    })?;
    let status = response.status();
    let retry_after = response
        .headers()
        .get(reqwest::header::RETRY_AFTER)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| parse_retry_after(v, SystemTime::now()));
    let mut headers = Map::new();
    for (name, value) in response.headers() {
        headers.insert(
            name.to_string(),
            Value::String(value.to_str().unwrap_or_default().to_owned()),
        );
    }
    // At most MAX_RESPONSE_BYTES of the answer are read; the rest is cut and the output says so.
    let mut response = response;
    let mut bytes: Vec<u8> = Vec::new();
    let mut truncated = false;
    loop {
        let chunk = response.chunk().await.map_err(|err| ActionError {
            message: format!("{method} {url}: the answer broke off: {err}"),
            retryable: true,
            retry_after: None,
            outcome_unknown: true,
        })?;
        let Some(chunk) = chunk else { break };
        let room = MAX_RESPONSE_BYTES - bytes.len();
        if chunk.len() > room {
            bytes.extend_from_slice(&chunk[..room]);
            truncated = true;
            break;
        }
        bytes.extend_from_slice(&chunk);
    }
    let body = serde_json::from_slice::<Value>(&bytes).unwrap_or_else(|_| {
        Value::String(
            String::from_utf8_lossy(&bytes)
                .chars()
                .take(10_000)
                .collect(),
        )
    });
    if status.is_success() {
        let mut output = json!({ "status": status.as_u16(), "headers": headers, "body": body });
        if truncated {
            output["truncated"] = json!(format!("the body was cut at {MAX_RESPONSE_BYTES} bytes"));
        }
        return Ok(output);
    }
    let short: String = body.to_string().chars().take(300).collect();
    let message = format!("{method} {url} answered {status}: {short}");
    if status.is_server_error() || status.as_u16() == 429 {
        Err(ActionError {
            message,
            retryable: true,
            retry_after,
            outcome_unknown: false,
        })
    } else {
        Err(ActionError::fatal(message))
    }
}
