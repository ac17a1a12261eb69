//! Fault injection: what the simulator does wrong on purpose, set in the settings or at run time
//! with `POST /_sim/faults`. Shares are between 0 and 1 and drawn per request or delivery.

use std::time::Duration;

use serde::{Deserialize, Serialize};

/// Every fault knob.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Faults {
    /// Added to every API answer, in milliseconds.
    pub latency_ms: u64,
    /// A random extra latency up to this many milliseconds.
    pub latency_jitter_ms: u64,
    /// Share of API requests answered 503.
    pub error_rate: f64,
    /// Share of API requests answered 429 with `Retry-After`.
    pub throttle_rate: f64,
    /// The `Retry-After` of those answers, in seconds.
    pub retry_after_seconds: u64,
    /// Share of API requests whose connection is cut before the answer is complete; the
    /// request is not carried out.
    pub reset_rate: f64,
    /// Share of API requests carried out whose answer is then lost (the connection is cut):
    /// the client cannot tell whether a create went through.
    pub lose_answer_rate: f64,
    /// Share of webhook deliveries never sent.
    pub drop_rate: f64,
    /// Share of webhook deliveries sent twice (same WebhookLog id).
    pub duplicate_rate: f64,
    /// Every delivery waits this long first, in milliseconds.
    pub delivery_delay_ms: u64,
    /// Share of deliveries held back (50–250 ms) so that later ones overtake them.
    pub reorder_rate: f64,
}

impl Faults {
    /// Checks that every share is between 0 and 1.
    pub fn validate(&self) -> Result<(), String> {
        for (name, value) in [
            ("error_rate", self.error_rate),
            ("throttle_rate", self.throttle_rate),
            ("reset_rate", self.reset_rate),
            ("lose_answer_rate", self.lose_answer_rate),
            ("drop_rate", self.drop_rate),
            ("duplicate_rate", self.duplicate_rate),
            ("reorder_rate", self.reorder_rate),
        ] {
            if !(0.0..=1.0).contains(&value) {
                return Err(format!("`{name}` must be between 0 and 1, not {value}"));
            }
        }
        Ok(())
    }

    /// The latency to add to one answer.
    pub fn latency(&self) -> Duration {
        let jitter = if self.latency_jitter_ms > 0 {
            fastrand::u64(0..=self.latency_jitter_ms)
        } else {
            0
        };
        Duration::from_millis(self.latency_ms + jitter)
    }

    /// Draws the fault for one API request, if any.
    pub fn draw_api_fault(&self) -> Option<ApiFault> {
        let roll = fastrand::f64();
        if roll < self.error_rate {
            Some(ApiFault::ServerError)
        } else if roll < self.error_rate + self.throttle_rate {
            Some(ApiFault::Throttle(self.retry_after_seconds))
        } else if roll < self.error_rate + self.throttle_rate + self.reset_rate {
            Some(ApiFault::Reset)
        } else if roll
            < self.error_rate + self.throttle_rate + self.reset_rate + self.lose_answer_rate
        {
            Some(ApiFault::LoseAnswer)
        } else {
            None
        }
    }
}

/// A fault applied to one API request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ApiFault {
    /// 503.
    ServerError,
    /// 429 with `Retry-After` seconds.
    Throttle(u64),
    /// The connection is cut mid-answer, the request not carried out.
    Reset,
    /// The request is carried out, then the connection is cut before the answer.
    LoseAnswer,
}

/// Whether an event with this share happens now.
pub fn happens(share: f64) -> bool {
    share > 0.0 && fastrand::f64() < share
}
