//! Conditions: compile the input's first part (up to the first NUL byte) as a CEL expression and
//! evaluate it over the JSON context in the rest (or a fixed context shaped like an execution's
//! when the rest is absent or not JSON), as a rule's or step's `if:` is.
#![no_main]

use std::sync::LazyLock;

use flowd::rules::expr::Condition;
use libfuzzer_sys::fuzz_target;
use serde_json::{Value, json};

static DEFAULT_CONTEXT: LazyLock<Value> = LazyLock::new(|| {
    json!({
        "event": {
            "type": "application.created",
            "id": "e-1",
            "data": {
                "name": "Ana",
                "phone": "31612345678",
                "count": 3,
                "score": -7.25,
                "big": 18446744073709551615u64,
                "min": -9223372036854775808i64,
                "tags": ["a", "b", "c"],
                "vacancy": { "open": true, "title": "Dev", "id": null },
                "when": "2025-01-01T08:00:00Z",
            }
        },
        "run": { "id": "r-1", "status": "finished", "state": { "passed": true, "score": 7.5 } },
        "vars": { "limit": 10, "names": ["x", "y"] },
        "item": { "id": 1 },
    })
});

fuzz_target!(|data: &[u8]| {
    let (condition_bytes, rest) = match data.iter().position(|b| *b == 0) {
        Some(at) => (&data[..at], Some(&data[at + 1..])),
        None => (data, None),
    };
    let Ok(source) = std::str::from_utf8(condition_bytes) else {
        return;
    };
    let Ok(condition) = Condition::compile(source) else {
        return;
    };
    let _ = condition.references();
    let parsed_context = rest.and_then(|rest| serde_json::from_slice::<Value>(rest).ok());
    let context = parsed_context.as_ref().unwrap_or(&DEFAULT_CONTEXT);
    let outcome = condition.evaluate(context);
    let _ = outcome.is_true();
});
