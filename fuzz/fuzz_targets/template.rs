//! Templates: compile the input's first part (up to the first NUL byte) as a template and render
//! it, plainly and with each escape, against the JSON context in the rest (or a fixed context
//! shaped like an execution's when the rest is absent or not JSON). The context is also compiled
//! as a `TemplateValue` (a step's `body:`/`state:` object with templates in its strings).
#![no_main]

use std::sync::LazyLock;

use flowd::rules::template::{Escape, Template, TemplateValue};
use libfuzzer_sys::fuzz_target;
use serde_json::{Value, json};

static DEFAULT_CONTEXT: LazyLock<Value> = LazyLock::new(|| {
    json!({
        "event": {
            "type": "application.created",
            "id": "e-1",
            "data": {
                "name": "Ana <a&b>",
                "count": 3,
                "score": -7.25,
                "big": 18446744073709551615u64,
                "tags": ["a", "b/c", "ü"],
                "vacancy": { "open": true, "title": "Dev ops", "id": null },
                "when": "2025-01-01T08:00:00Z",
                "text": "  héllo wörld  ",
            }
        },
        "run": { "id": "r-1", "status": "finished", "state": { "passed": true, "score": 7.5 } },
        "vars": { "flow": "3f1c0c3e-8d4e-4c89-9a55-1f8a3c0d2b11", "path": "a/b/../c?d" },
        "steps": { "screening": { "output": { "id": "x" } } },
        "item": { "id": 1 },
    })
});

fuzz_target!(|data: &[u8]| {
    let (template_bytes, rest) = match data.iter().position(|b| *b == 0) {
        Some(at) => (&data[..at], Some(&data[at + 1..])),
        None => (data, None),
    };
    let parsed_context = rest.and_then(|rest| serde_json::from_slice::<Value>(rest).ok());
    let context = parsed_context.as_ref().unwrap_or(&DEFAULT_CONTEXT);

    if let Ok(source) = std::str::from_utf8(template_bytes)
        && let Ok(template) = Template::compile(source)
    {
        let _ = template.references();
        let _ = template.is_literal();
        let _ = template.is_single_expression();
        let _ = template.render(context);
        let _ = template.render_string(context);
        for escape in [Escape::None, Escape::PathSegment, Escape::Html] {
            let _ = template.render_escaped(context, escape);
        }
    }

    if let Some(value) = &parsed_context
        && let Ok(compiled) = TemplateValue::from_json(value)
    {
        for template in compiled.templates() {
            let _ = template.references();
        }
        let _ = compiled.render(&DEFAULT_CONTEXT);
    }
});
