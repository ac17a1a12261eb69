//! Errors of Recrubo calls, classified where they happen: retryable or fatal.

use std::time::Duration;

/// A failed Recrubo call.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum RecruboError {
    /// The connection could not be made: the request was not sent.
    #[error("cannot connect to Recrubo at {url}: {reason}")]
    Connect {
        /// The URL.
        url: String,
        /// Why.
        reason: String,
    },
    /// No answer in time, or the connection broke after sending: the outcome is unknown.
    #[error("no answer from Recrubo for {method} {url}: {reason}")]
    NoAnswer {
        /// The method.
        method: String,
        /// The URL.
        url: String,
        /// Why (timeout, reset).
        reason: String,
    },
    /// Recrubo answered with an error status.
    #[error("Recrubo answered {status} to {method} {url}: {detail}{}", request_id.as_ref().map(|id| format!(" (request id {id})")).unwrap_or_default())]
    Status {
        /// The method.
        method: String,
        /// The URL.
        url: String,
        /// The HTTP status.
        status: u16,
        /// The JSON:API error detail, or the raw body (shortened).
        detail: String,
        /// The request id header, when sent.
        request_id: Option<String>,
        /// `Retry-After`, when sent.
        retry_after: Option<Duration>,
    },
    /// The answer was not what the API promises.
    #[error("invalid answer from Recrubo to {method} {url}: {reason}")]
    InvalidBody {
        /// The method.
        method: String,
        /// The URL.
        url: String,
        /// What is wrong.
        reason: String,
    },
    /// flowd could not build the request (a bad path or body).
    #[error("invalid Recrubo request: {0}")]
    InvalidRequest(String),
}

impl RecruboError {
    /// Whether trying again may succeed: connection problems, timeouts, 5xx and 429.
    pub fn is_retryable(&self) -> bool {
        match self {
            RecruboError::Connect { .. } | RecruboError::NoAnswer { .. } => true,
            RecruboError::Status { status, .. } => *status == 429 || *status >= 500,
            RecruboError::InvalidBody { .. } | RecruboError::InvalidRequest(_) => false,
        }
    }

    /// Whether the request may have taken effect although no answer came (a create must then
    /// be checked with a list query before it is sent again).
    pub fn outcome_unknown(&self) -> bool {
        // A 502 or 504 comes from a proxy in front of Recrubo: the request may have reached
        // Recrubo and been carried out, the answer lost on the way back.
        matches!(self, RecruboError::NoAnswer { .. })
            || matches!(
                self,
                RecruboError::Status {
                    status: 502 | 504,
                    ..
                }
            )
    }

    /// The server's `Retry-After`, when it sent one.
    pub fn retry_after(&self) -> Option<Duration> {
        match self {
            RecruboError::Status { retry_after, .. } => *retry_after,
            _ => None,
        }
    }

    /// The HTTP status, when there was an answer.
    pub fn status(&self) -> Option<u16> {
        match self {
            RecruboError::Status { status, .. } => Some(*status),
            _ => None,
        }
    }
}

/// Parses `Retry-After`: delay seconds or an HTTP date (RFC 9110 §10.2.3).
pub fn parse_retry_after(value: &str, now: std::time::SystemTime) -> Option<Duration> {
    let value = value.trim();
    if let Ok(seconds) = value.parse::<u64>() {
        return Some(Duration::from_secs(seconds));
    }
    let when = httpdate::parse_http_date(value).ok()?;
    Some(when.duration_since(now).unwrap_or(Duration::ZERO))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn retry_after_takes_seconds_and_dates() {
        let now = std::time::UNIX_EPOCH + Duration::from_secs(1_700_000_000);
        assert_eq!(parse_retry_after("7", now), Some(Duration::from_secs(7)));
        let later = httpdate::fmt_http_date(now + Duration::from_secs(30));
        assert_eq!(
            parse_retry_after(&later, now),
            Some(Duration::from_secs(30))
        );
        let earlier = httpdate::fmt_http_date(now - Duration::from_secs(30));
        assert_eq!(parse_retry_after(&earlier, now), Some(Duration::ZERO));
        assert_eq!(parse_retry_after("soon", now), None);
    }

    #[test]
    fn classification() {
        let status = |status| RecruboError::Status {
            method: "GET".into(),
            url: "u".into(),
            status,
            detail: String::new(),
            request_id: None,
            retry_after: None,
        };
        assert!(status(503).is_retryable());
        assert!(status(429).is_retryable());
        assert!(!status(404).is_retryable());
        assert!(!status(422).is_retryable());
    }
}
