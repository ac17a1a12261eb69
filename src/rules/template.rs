//! Templates: handlebars in strict mode, with flowd's helpers and the typed single-expression rule.
//!
//! A rule string is one of three things:
//! - plain text without `{{` — kept as is, no handlebars involved;
//! - exactly one `{{expression}}` — rendered to a JSON *value*, so `"{{event.data.count}}"` stays a
//!   number and `"{{run.state}}"` stays an object;
//! - anything else — rendered to a string.
//!
//! Templates are compiled once, when a rule set is validated; [`Template::references`] lists the
//! context paths a template reads so the validator can refuse `steps.<id>` of a step that does not
//! exist, `run` outside a run handler, and so on. Rendering never touches the network.

use std::sync::{Arc, LazyLock, OnceLock};

use chrono::{DateTime, TimeDelta, Utc};
use handlebars::{
    Context, Handlebars, Helper, HelperDef, JsonRender, Output, RenderContext, RenderError,
    RenderErrorReason, Renderable, ScopedJson, StringOutput,
    template::{Parameter, TemplateElement},
};
use serde_json::Value;

/// Helpers flowd registers, beside handlebars' own.
pub const FLOWD_HELPERS: &[&str] = &[
    "json",
    "default",
    "upper",
    "lower",
    "trim",
    "truncate",
    "date",
    "now_minus",
    "now_plus",
    "urlencode",
];

/// Handlebars' built-in helpers that flowd keeps.
pub const BUILTIN_HELPERS: &[&str] = &[
    "if", "unless", "each", "with", "lookup", "log", "eq", "ne", "gt", "gte", "lt", "lte", "and",
    "or", "not", "len",
];

/// Block helpers that change the context (`this`) inside their block.
const SCOPE_CHANGING_BLOCKS: &[&str] = &["each", "with"];

/// Every helper name a template may call.
pub fn helper_names() -> impl Iterator<Item = &'static str> {
    FLOWD_HELPERS.iter().chain(BUILTIN_HELPERS).copied()
}

/// How the values a text template interpolates are escaped.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Escape {
    /// Not at all: output is JSON and plain text.
    None,
    /// Percent-encoded as one URL path segment (a `recrubo` step's `path`), so run-time data
    /// cannot add segments, dot segments or a query.
    PathSegment,
    /// HTML-escaped (an `email` step's `html`).
    Html,
}

fn path_segment_escape(text: &str) -> String {
    percent_encode(text)
}

/// The shared handlebars registries, one per [`Escape`]: strict, with flowd's helpers.
fn registry_for(escape: Escape) -> &'static Handlebars<'static> {
    static PLAIN: LazyLock<Handlebars<'static>> = LazyLock::new(|| build_registry(Escape::None));
    static PATH: LazyLock<Handlebars<'static>> =
        LazyLock::new(|| build_registry(Escape::PathSegment));
    static HTML: LazyLock<Handlebars<'static>> = LazyLock::new(|| build_registry(Escape::Html));
    match escape {
        Escape::None => &PLAIN,
        Escape::PathSegment => &PATH,
        Escape::Html => &HTML,
    }
}

fn registry() -> &'static Handlebars<'static> {
    registry_for(Escape::None)
}

fn build_registry(escape: Escape) -> Handlebars<'static> {
    {
        let mut registry = Handlebars::new();
        registry.set_strict_mode(true);
        match escape {
            Escape::None => registry.register_escape_fn(handlebars::no_escape),
            Escape::PathSegment => registry.register_escape_fn(path_segment_escape),
            Escape::Html => registry.register_escape_fn(handlebars::html_escape),
        }
        registry.register_helper("json", Box::new(JsonHelper));
        registry.register_helper("default", Box::new(DefaultHelper));
        registry.register_helper("upper", Box::new(upper));
        registry.register_helper("lower", Box::new(lower));
        registry.register_helper("trim", Box::new(trim));
        registry.register_helper("truncate", Box::new(truncate));
        registry.register_helper("urlencode", Box::new(UrlEncodeHelper));
        registry.register_helper("date", Box::new(DateHelper));
        registry.register_helper("now_minus", Box::new(RelativeTimeHelper { sign: -1 }));
        registry.register_helper("now_plus", Box::new(RelativeTimeHelper { sign: 1 }));
        registry
    }
}

/// A compiled template.
#[derive(Debug, Clone)]
pub struct Template {
    source: String,
    kind: TemplateKind,
}

#[derive(Debug, Clone)]
enum TemplateKind {
    /// No `{{` at all.
    Literal,
    /// Exactly `{{a.b.c}}`: the most common template by far, looked up without handlebars
    /// (its pest parser dominated the time to load 10,000 rules).
    Path(Vec<String>),
    /// Exactly one expression, rendered as `{{json ...}}` and parsed back to a value. The
    /// wrapped form is compiled on first render, not at load.
    Single {
        original: Arc<handlebars::Template>,
        wrapped_source: String,
        wrapped: Arc<OnceLock<Result<Arc<handlebars::Template>, String>>>,
    },
    /// Text with expressions.
    Text(Arc<handlebars::Template>),
}

/// The segments of a template that is exactly one plain path (`{{event.data.name}}`), if it is.
fn plain_path(source: &str) -> Option<Vec<String>> {
    let inner = source.strip_prefix("{{")?.strip_suffix("}}")?.trim();
    let first = inner.chars().next()?;
    if !(first.is_ascii_alphabetic() || first == '_')
        || !inner
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '.' || c == '-')
        || helper_names().any(|helper| helper == inner)
        || matches!(inner, "this" | "else" | "true" | "false" | "null")
    {
        return None;
    }
    let segments: Vec<String> = inner.split('.').map(str::to_owned).collect();
    if segments.iter().any(String::is_empty) || segments[0] == "this" {
        return None;
    }
    Some(segments)
}

/// Looks a path up in a JSON context, the way handlebars does (objects by key, lists by index).
fn lookup_path<'a>(context: &'a Value, segments: &[String]) -> Option<&'a Value> {
    segments
        .iter()
        .try_fold(context, |node, segment| match node {
            Value::Object(map) => map.get(segment),
            Value::Array(items) => segment.parse::<usize>().ok().and_then(|i| items.get(i)),
            _ => None,
        })
}

/// A context path a template or condition reads, split into segments
/// (`steps.screening.id` → `["steps", "screening", "id"]`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Reference {
    /// The segments.
    pub segments: Vec<String>,
}

impl Reference {
    /// The first segment (`event`, `run`, `steps`, ...).
    pub fn root(&self) -> &str {
        self.segments.first().map(String::as_str).unwrap_or("")
    }

    /// The second segment, when there is one.
    pub fn second(&self) -> Option<&str> {
        self.segments.get(1).map(String::as_str)
    }
}

/// Why a template did not compile.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[error("{message}")]
pub struct TemplateCompileError {
    /// What is wrong.
    pub message: String,
    /// A hint, when there is one.
    pub hint: Option<String>,
}

/// Why a template did not render.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[error("template `{source_text}`: {message}")]
pub struct TemplateRenderError {
    /// The template source.
    pub source_text: String,
    /// What went wrong (e.g. a missing variable).
    pub message: String,
}

impl Template {
    /// Compiles a template and checks that every helper it calls exists.
    pub fn compile(source: &str) -> Result<Template, TemplateCompileError> {
        if !source.contains("{{") {
            return Ok(Template {
                source: source.to_owned(),
                kind: TemplateKind::Literal,
            });
        }
        if let Some(segments) = plain_path(source) {
            return Ok(Template {
                source: source.to_owned(),
                kind: TemplateKind::Path(segments),
            });
        }
        check_size(source)?;
        let compiled = handlebars::Template::compile(source).map_err(|err| {
            let reason = err.reason().to_string();
            let message = match err.pos() {
                Some((line, column)) => {
                    format!("template does not compile at {line}:{column} of the template: {reason}")
                }
                None => format!("template does not compile: {reason}"),
            };
            TemplateCompileError {
                message,
                hint: Some("templates are handlebars: `{{event.data.name}}`, `{{default run.state.score 0}}`".to_owned()),
            }
        })?;
        check_helpers(&compiled.elements)?;
        refuse_partial_secrets(source)?;
        let single = match compiled.elements.as_slice() {
            [TemplateElement::Expression(helper)] if !helper.block => Some(helper),
            _ => None,
        };
        let kind = match single {
            Some(helper) => {
                let inner = source
                    .trim_start_matches("{{")
                    .trim_end_matches("}}")
                    .trim()
                    .trim_start_matches('~')
                    .trim_end_matches('~')
                    .trim();
                let is_plain_value = helper.params.is_empty()
                    && helper.hash.is_empty()
                    && !matches!(&helper.name, Parameter::Name(n) if helper_names().any(|h| h == n));
                let wrapped = if is_plain_value {
                    format!("{{{{json {inner}}}}}")
                } else {
                    format!("{{{{json ({inner})}}}}")
                };
                TemplateKind::Single {
                    original: Arc::new(compiled.clone()),
                    wrapped_source: wrapped,
                    wrapped: Arc::new(OnceLock::new()),
                }
            }
            None => TemplateKind::Text(Arc::new(compiled.clone())),
        };
        let template = Template {
            source: source.to_owned(),
            kind,
        };
        Ok(template)
    }

    /// The source text.
    pub fn source(&self) -> &str {
        &self.source
    }

    /// Whether the template is plain text with no expressions.
    pub fn is_literal(&self) -> bool {
        matches!(self.kind, TemplateKind::Literal)
    }

    /// Whether the template is exactly one expression (and so keeps its JSON type).
    pub fn is_single_expression(&self) -> bool {
        matches!(
            self.kind,
            TemplateKind::Single { .. } | TemplateKind::Path(_)
        )
    }

    /// The context paths the template reads (outside `#each`/`#with` blocks, where paths are
    /// relative to the block's item).
    pub fn references(&self) -> Vec<Reference> {
        let mut references = Vec::new();
        match &self.kind {
            TemplateKind::Literal => {}
            TemplateKind::Path(segments) => references.push(Reference {
                segments: segments.clone(),
            }),
            TemplateKind::Single { original, .. } | TemplateKind::Text(original) => {
                collect_references(&original.elements, false, &mut references);
            }
        }
        references
    }

    /// Renders the template against a context. A single expression yields its JSON value; text
    /// yields a string.
    pub fn render(&self, context: &Value) -> Result<Value, TemplateRenderError> {
        match &self.kind {
            TemplateKind::Literal => Ok(Value::String(self.source.clone())),
            TemplateKind::Path(segments) => {
                lookup_path(context, segments)
                    .cloned()
                    .ok_or_else(|| TemplateRenderError {
                        source_text: self.source.clone(),
                        message: format!("`{}` is missing from the context", segments.join(".")),
                    })
            }
            TemplateKind::Single {
                wrapped_source,
                wrapped,
                ..
            } => {
                let template = wrapped
                    .get_or_init(|| {
                        handlebars::Template::compile(wrapped_source)
                            .map(Arc::new)
                            .map_err(|err| err.to_string())
                    })
                    .clone()
                    .map_err(|message| TemplateRenderError {
                        source_text: self.source.clone(),
                        message,
                    })?;
                let text = self.render_with(&template, context)?;
                serde_json::from_str(&text).map_err(|err| TemplateRenderError {
                    source_text: self.source.clone(),
                    message: format!("the expression did not yield a value: {err}"),
                })
            }
            TemplateKind::Text(template) => self.render_with(template, context).map(Value::String),
        }
    }

    /// Renders the template to a string whose interpolated values are escaped: for a text
    /// template each `{{...}}` output is escaped (the literal text around it is not); a template
    /// that is one expression is the whole value, escaped when `Escape::Html` (a whole path
    /// from one expression is kept: the caller checks it).
    pub fn render_escaped(
        &self,
        context: &Value,
        escape: Escape,
    ) -> Result<String, TemplateRenderError> {
        match (&self.kind, escape) {
            (_, Escape::None) | (TemplateKind::Literal, _) => self.render_string(context),
            (TemplateKind::Text(template), _) => {
                self.render_in(registry_for(escape), template, context)
            }
            (_, Escape::Html) => Ok(handlebars::html_escape(&self.render_string(context)?)),
            (_, Escape::PathSegment) => self.render_string(context),
        }
    }

    /// Renders the template to a string (a single expression's value is rendered as text: a
    /// string as itself, anything else as JSON).
    pub fn render_string(&self, context: &Value) -> Result<String, TemplateRenderError> {
        match self.render(context)? {
            Value::String(text) => Ok(text),
            other => Ok(other.to_string()),
        }
    }

    fn render_with(
        &self,
        template: &handlebars::Template,
        context: &Value,
    ) -> Result<String, TemplateRenderError> {
        self.render_in(registry(), template, context)
    }

    fn render_in(
        &self,
        registry: &Handlebars<'static>,
        template: &handlebars::Template,
        context: &Value,
    ) -> Result<String, TemplateRenderError> {
        let context = Context::from(context.clone());
        let mut render_context = RenderContext::new(None);
        let mut output = StringOutput::new();
        template
            .render(registry, &context, &mut render_context, &mut output)
            .map_err(|err| TemplateRenderError {
                source_text: self.source.clone(),
                message: describe_render_error(&err),
            })?;
        output.into_string().map_err(|err| TemplateRenderError {
            source_text: self.source.clone(),
            message: err.to_string(),
        })
    }
}

fn describe_render_error(err: &RenderError) -> String {
    match err.reason() {
        RenderErrorReason::MissingVariable(Some(path)) => {
            format!("`{path}` is missing from the context")
        }
        other => other.to_string(),
    }
}

fn check_helpers(elements: &[TemplateElement]) -> Result<(), TemplateCompileError> {
    for element in elements {
        let helper = match element {
            TemplateElement::Expression(helper)
            | TemplateElement::HtmlExpression(helper)
            | TemplateElement::HelperBlock(helper) => helper,
            TemplateElement::PartialExpression(_) | TemplateElement::PartialBlock(_) => {
                return Err(TemplateCompileError {
                    message: "partials (`{{> name}}`) are not supported in rule templates"
                        .to_owned(),
                    hint: None,
                });
            }
            TemplateElement::DecoratorExpression(_) | TemplateElement::DecoratorBlock(_) => {
                return Err(TemplateCompileError {
                    message: "decorators (`{{* name}}`) are not supported in rule templates"
                        .to_owned(),
                    hint: None,
                });
            }
            _ => continue,
        };
        let calls_helper = helper.block || !helper.params.is_empty() || !helper.hash.is_empty();
        if calls_helper && let Parameter::Name(name) = &helper.name {
            check_helper_name(name)?;
        }
        for parameter in helper.params.iter().chain(helper.hash.values()) {
            check_parameter(parameter)?;
        }
        if let Some(inner) = &helper.template {
            check_helpers(&inner.elements)?;
        }
        if let Some(inverse) = &helper.inverse {
            check_helpers(&inverse.elements)?;
        }
    }
    Ok(())
}

/// `truncate` of a secret would print its first characters, which redaction cannot know to
/// hide (DESIGN 5): refused when the template is compiled.
fn refuse_partial_secrets(source: &str) -> Result<(), TemplateCompileError> {
    for expression in expressions(source) {
        let words: Vec<&str> = expression
            .split(|c: char| c.is_whitespace() || c == '(' || c == ')')
            .filter(|w| !w.is_empty())
            .collect();
        if words.contains(&"truncate") && words.iter().any(|w| w.starts_with("secrets.")) {
            return Err(TemplateCompileError {
                message:
                    "`truncate` of a secret would show its first characters in logs and the history"
                        .to_owned(),
                hint: Some(
                    "use the whole secret (`{{secrets.NAME}}`), which is redacted everywhere"
                        .to_owned(),
                ),
            });
        }
    }
    Ok(())
}

/// The most `{{...}}` expressions in one template: handlebars' compile time grows with the
/// square of their number (10,000 took 30 s, found by fuzzing), and no real template has more.
pub const MAX_EXPRESSIONS: usize = 1000;
/// The deepest nesting of subexpressions `(...)` or blocks `{{#...}}`: handlebars compiles
/// them recursively, and ~1,000 levels overflowed a 2 MiB stack (found by fuzzing).
pub const MAX_NESTING: usize = 32;

/// The name of a block from the text after `#` or `/` (`if`, `each`).
fn block_name(text: &str) -> &str {
    text.split(|c: char| c.is_whitespace() || c == '~' || c == '}')
        .next()
        .unwrap_or_default()
}

/// Refuses templates too large or too deep to compile safely, before handlebars sees them.
fn check_size(source: &str) -> Result<(), TemplateCompileError> {
    let count = expressions(source).count();
    if count > MAX_EXPRESSIONS {
        return Err(TemplateCompileError {
            message: format!(
                "the template has {count} `{{{{...}}}}` expressions; at most {MAX_EXPRESSIONS} are allowed"
            ),
            hint: Some("split it over several fields or steps".to_owned()),
        });
    }
    // Open blocks, innermost last: handlebars' own message for an unclosed or mismatched one
    // lists grammar rules ("expected escape, expression, html_expression, ..."), this one
    // names the block.
    let mut open: Vec<&str> = Vec::new();
    for expression in expressions(source) {
        let trimmed = expression.trim_start_matches('~').trim_start();
        if let Some(name) = trimmed.strip_prefix('#') {
            open.push(block_name(name.trim_start_matches(['>', '*'])));
        } else if let Some(name) = trimmed.strip_prefix('/') {
            let name = block_name(name);
            match open.pop() {
                Some(opened) if opened == name => {}
                Some(opened) => {
                    return Err(TemplateCompileError {
                        message: format!(
                            "`{{{{/{name}}}}}` closes a block opened by `{{{{#{opened}}}}}`"
                        ),
                        hint: Some(format!(
                            "close `{{{{#{opened} ...}}}}` with `{{{{/{opened}}}}}` first"
                        )),
                    });
                }
                None => {
                    return Err(TemplateCompileError {
                        message: format!("`{{{{/{name}}}}}` closes a block that was never opened"),
                        hint: Some(format!("open it with `{{{{#{name} ...}}}}`, or remove it")),
                    });
                }
            }
        }
        let blocks = open.len();
        let mut depth = 0usize;
        let mut deepest = 0usize;
        for c in expression.chars() {
            match c {
                '(' => {
                    depth += 1;
                    deepest = deepest.max(depth);
                }
                ')' => depth = depth.saturating_sub(1),
                _ => {}
            }
        }
        if deepest > MAX_NESTING || blocks > MAX_NESTING {
            return Err(TemplateCompileError {
                message: format!(
                    "the template nests subexpressions or blocks deeper than {MAX_NESTING} levels"
                ),
                hint: Some("flatten it, or compute the value in an earlier step".to_owned()),
            });
        }
    }
    if let Some(unclosed) = open.last() {
        return Err(TemplateCompileError {
            message: format!("`{{{{#{unclosed} ...}}}}` is never closed"),
            hint: Some(format!("add `{{{{/{unclosed}}}}}` where the block ends")),
        });
    }
    Ok(())
}

/// The insides of the `{{...}}` expressions of a template's text, in order (an unclosed one
/// runs to the end). A textual scan for checks made on the source, before handlebars parses it.
///
/// What handlebars does not treat as an expression is skipped: an escaped `\{{`, a comment
/// `{{!-- ... --}}` (which may hold `}}`), and a raw block `{{{{raw}}}} ... {{{{/raw}}}}`.
pub fn expressions(text: &str) -> impl Iterator<Item = &str> {
    let mut rest = text;
    std::iter::from_fn(move || {
        loop {
            let open = rest.find("{{")?;
            if rest[..open].ends_with('\\') {
                rest = &rest[open + 2..];
                continue;
            }
            let after = &rest[open + 2..];
            if let Some(comment) = after.strip_prefix("!--") {
                rest = comment
                    .find("--}}")
                    .and_then(|end| comment.get(end + 4..))
                    .unwrap_or("");
                continue;
            }
            if let Some(raw) = after.strip_prefix("{{") {
                // `{{{{name}}}}`: everything up to `{{{{/name}}}}` is text.
                let name_end = raw.find("}}}}").unwrap_or(raw.len());
                let name = raw[..name_end].trim();
                let closing = format!("{{{{{{{{/{name}}}}}}}}}");
                rest = raw
                    .find(&closing)
                    .and_then(|end| raw.get(end + closing.len()..))
                    .unwrap_or("");
                continue;
            }
            let close = after.find("}}").unwrap_or(after.len());
            rest = after.get(close + 2..).unwrap_or("");
            return Some(&after[..close]);
        }
    })
}

fn check_parameter(parameter: &Parameter) -> Result<(), TemplateCompileError> {
    if let Parameter::Subexpression(sub) = parameter
        && let TemplateElement::Expression(helper) = sub.element.as_ref()
    {
        {
            if let Parameter::Name(name) = &helper.name
                && (!helper.params.is_empty() || !helper.hash.is_empty())
            {
                check_helper_name(name)?;
            }
            for inner in helper.params.iter().chain(helper.hash.values()) {
                check_parameter(inner)?;
            }
        }
    }
    Ok(())
}

fn check_helper_name(name: &str) -> Result<(), TemplateCompileError> {
    if helper_names().any(|known| known == name) {
        return Ok(());
    }
    let hint = super::diagnostic::did_you_mean(name, helper_names()).or_else(|| {
        Some(format!(
            "the helpers are {}",
            helper_names().collect::<Vec<_>>().join(", ")
        ))
    });
    Err(TemplateCompileError {
        message: format!("unknown helper `{name}`"),
        hint,
    })
}

fn collect_references(elements: &[TemplateElement], scoped: bool, out: &mut Vec<Reference>) {
    for element in elements {
        let helper = match element {
            TemplateElement::Expression(helper)
            | TemplateElement::HtmlExpression(helper)
            | TemplateElement::HelperBlock(helper) => helper,
            _ => continue,
        };
        let is_value = !helper.block && helper.params.is_empty() && helper.hash.is_empty();
        if is_value {
            parameter_references(&helper.name, scoped, out);
        }
        for parameter in helper.params.iter().chain(helper.hash.values()) {
            parameter_references(parameter, scoped, out);
        }
        let inner_scoped = scoped
            || matches!(&helper.name, Parameter::Name(name) if SCOPE_CHANGING_BLOCKS.contains(&name.as_str()));
        if let Some(inner) = &helper.template {
            collect_references(&inner.elements, inner_scoped, out);
        }
        if let Some(inverse) = &helper.inverse {
            collect_references(&inverse.elements, scoped, out);
        }
    }
}

fn parameter_references(parameter: &Parameter, scoped: bool, out: &mut Vec<Reference>) {
    let raw = match parameter {
        Parameter::Name(name) => name.as_str(),
        Parameter::Path(handlebars::Path::Relative((_, raw))) => raw.as_str(),
        Parameter::Path(handlebars::Path::Local(_)) | Parameter::Literal(_) => return,
        Parameter::Subexpression(sub) => {
            if let TemplateElement::Expression(helper) = sub.element.as_ref() {
                if helper.params.is_empty() && helper.hash.is_empty() {
                    parameter_references(&helper.name, scoped, out);
                }
                for inner in helper.params.iter().chain(helper.hash.values()) {
                    parameter_references(inner, scoped, out);
                }
            }
            return;
        }
        _ => return,
    };
    if helper_names().any(|helper| helper == raw) {
        return;
    }
    let (raw, from_root) = match raw.strip_prefix("@root.").or(raw.strip_prefix("@root/")) {
        Some(rest) => (rest, true),
        None => (raw, false),
    };
    if (scoped && !from_root)
        || raw.starts_with("this")
        || raw.starts_with("..")
        || raw.starts_with('@')
    {
        return;
    }
    let segments: Vec<String> = raw
        .split(['.', '/'])
        .map(|segment| {
            segment
                .trim_start_matches('[')
                .trim_end_matches(']')
                .to_owned()
        })
        .filter(|segment| !segment.is_empty())
        .collect();
    if !segments.is_empty() {
        out.push(Reference { segments });
    }
}

/// A compiled value tree: a `state:` or `body:` whose string leaves are templates.
#[derive(Debug, Clone)]
pub enum TemplateValue {
    /// `null`.
    Null,
    /// A boolean.
    Bool(bool),
    /// A number.
    Number(serde_json::Number),
    /// A string leaf: a template.
    Template(Template),
    /// A list.
    Array(Vec<TemplateValue>),
    /// A mapping, in file order.
    Object(Vec<(String, TemplateValue)>),
}

impl TemplateValue {
    /// Renders every template leaf; single expressions keep their JSON type.
    pub fn render(&self, context: &Value) -> Result<Value, TemplateRenderError> {
        Ok(match self {
            TemplateValue::Null => Value::Null,
            TemplateValue::Bool(value) => Value::Bool(*value),
            TemplateValue::Number(value) => Value::Number(value.clone()),
            TemplateValue::Template(template) => template.render(context)?,
            TemplateValue::Array(items) => Value::Array(
                items
                    .iter()
                    .map(|item| item.render(context))
                    .collect::<Result<_, _>>()?,
            ),
            TemplateValue::Object(entries) => Value::Object(
                entries
                    .iter()
                    .map(|(key, value)| Ok((key.clone(), value.render(context)?)))
                    .collect::<Result<_, TemplateRenderError>>()?,
            ),
        })
    }

    /// Compiles every string of a plain JSON value as a template (for settings that are
    /// templates, like the webhook subscription body).
    pub fn from_json(value: &Value) -> Result<TemplateValue, TemplateCompileError> {
        Ok(match value {
            Value::Null => TemplateValue::Null,
            Value::Bool(b) => TemplateValue::Bool(*b),
            Value::Number(n) => TemplateValue::Number(n.clone()),
            Value::String(text) => TemplateValue::Template(Template::compile(text)?),
            Value::Array(items) => TemplateValue::Array(
                items
                    .iter()
                    .map(TemplateValue::from_json)
                    .collect::<Result<_, _>>()?,
            ),
            Value::Object(map) => TemplateValue::Object(
                map.iter()
                    .map(|(k, v)| Ok((k.clone(), TemplateValue::from_json(v)?)))
                    .collect::<Result<_, TemplateCompileError>>()?,
            ),
        })
    }

    /// Every template in the tree, depth first.
    pub fn templates(&self) -> Vec<&Template> {
        let mut out = Vec::new();
        self.collect_templates(&mut out);
        out
    }

    fn collect_templates<'a>(&'a self, out: &mut Vec<&'a Template>) {
        match self {
            TemplateValue::Template(template) => out.push(template),
            TemplateValue::Array(items) => {
                items.iter().for_each(|item| item.collect_templates(out))
            }
            TemplateValue::Object(entries) => entries
                .iter()
                .for_each(|(_, value)| value.collect_templates(out)),
            TemplateValue::Null | TemplateValue::Bool(_) | TemplateValue::Number(_) => {}
        }
    }
}

// ---- helpers ---------------------------------------------------------------------------------

/// String helpers generated by handlebars' macro (strict: a missing argument is an error).
#[allow(missing_docs)]
mod string_helpers {
    use handlebars::handlebars_helper;

    handlebars_helper!(upper: |text: str| text.to_uppercase());
    handlebars_helper!(lower: |text: str| text.to_lowercase());
    handlebars_helper!(trim: |text: str| text.trim().to_owned());
    handlebars_helper!(truncate: |text: str, length: u64| {
        let length = usize::try_from(length).unwrap_or(usize::MAX);
        if text.chars().count() <= length {
            text.to_owned()
        } else {
            let mut cut: String = text.chars().take(length.saturating_sub(1)).collect();
            cut.push('…');
            cut
        }
    });
}

use string_helpers::{lower, trim, truncate, upper};

/// Percent-encodes everything but RFC 3986's unreserved characters.
pub(crate) fn percent_encode(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for byte in text.bytes() {
        if byte.is_ascii_alphanumeric() || matches!(byte, b'-' | b'_' | b'.' | b'~') {
            out.push(byte as char);
        } else {
            out.push_str(&format!("%{byte:02X}"));
        }
    }
    out
}

/// `{{json value}}`: the value as JSON text. Strict: a missing value is an error.
struct JsonHelper;

impl HelperDef for JsonHelper {
    fn call<'reg: 'rc, 'rc>(
        &self,
        helper: &Helper<'rc>,
        registry: &'reg Handlebars<'reg>,
        _: &'rc Context,
        _: &mut RenderContext<'reg, 'rc>,
        out: &mut dyn Output,
    ) -> Result<(), RenderError> {
        let param = present_param(helper, "json", 0)?;
        let text = serde_json::to_string(param.value())
            .map_err(|err| RenderErrorReason::Other(err.to_string()))?;
        // Written directly, so the registry's escaping (HTML, path segment) is applied here.
        out.write(&registry.get_escape_fn()(&text))?;
        Ok(())
    }
}

/// Parameter `index` of a helper, which must be there and must not be missing from the
/// context (strict mode's rule, which helpers that read `param().value()` must apply themselves).
fn present_param<'h, 'rc>(
    helper: &'h Helper<'rc>,
    name: &'static str,
    index: usize,
) -> Result<&'h handlebars::PathAndJson<'rc>, RenderError> {
    let param = helper
        .param(index)
        .ok_or(RenderErrorReason::ParamNotFoundForIndex(name, index))?;
    if param.is_value_missing() {
        return Err(RenderErrorReason::MissingVariable(param.relative_path().cloned()).into());
    }
    Ok(param)
}

/// `{{urlencode value}}`: RFC 3986 percent-encoding. Its output is never escaped again (it is
/// safe in a path segment and in HTML as it is); as a subexpression it yields the string.
struct UrlEncodeHelper;

impl HelperDef for UrlEncodeHelper {
    fn call_inner<'reg: 'rc, 'rc>(
        &self,
        helper: &Helper<'rc>,
        _: &'reg Handlebars<'reg>,
        _: &'rc Context,
        _: &mut RenderContext<'reg, 'rc>,
    ) -> Result<ScopedJson<'rc>, RenderError> {
        let param = present_param(helper, "urlencode", 0)?;
        let text = match param.value() {
            Value::String(text) => text.clone(),
            other => other.render(),
        };
        Ok(ScopedJson::Derived(Value::String(percent_encode(&text))))
    }

    fn call<'reg: 'rc, 'rc>(
        &self,
        helper: &Helper<'rc>,
        registry: &'reg Handlebars<'reg>,
        context: &'rc Context,
        render_context: &mut RenderContext<'reg, 'rc>,
        out: &mut dyn Output,
    ) -> Result<(), RenderError> {
        let value = self.call_inner(helper, registry, context, render_context)?;
        out.write(value.as_json().as_str().unwrap_or_default())?;
        Ok(())
    }
}

/// `{{default value fallback}}`: `value` unless it is missing or null, else `fallback`.
/// The one helper that accepts a missing value in strict mode: that is its purpose.
struct DefaultHelper;

impl HelperDef for DefaultHelper {
    fn call_inner<'reg: 'rc, 'rc>(
        &self,
        helper: &Helper<'rc>,
        _: &'reg Handlebars<'reg>,
        _: &'rc Context,
        _: &mut RenderContext<'reg, 'rc>,
    ) -> Result<ScopedJson<'rc>, RenderError> {
        let value = helper
            .param(0)
            .ok_or(RenderErrorReason::ParamNotFoundForIndex("default", 0))?;
        let fallback = helper
            .param(1)
            .ok_or(RenderErrorReason::ParamNotFoundForIndex("default", 1))?;
        if value.is_value_missing() || value.value().is_null() {
            Ok(ScopedJson::Derived(fallback.value().clone()))
        } else {
            Ok(ScopedJson::Derived(value.value().clone()))
        }
    }
}

/// `{{date value "%Y-%m-%d %H:%M" "Europe/Amsterdam"}}`: formats an RFC 3339 time (or Unix
/// seconds) in a time zone (default UTC); the default format is RFC 3339.
struct DateHelper;

impl HelperDef for DateHelper {
    fn call_inner<'reg: 'rc, 'rc>(
        &self,
        helper: &Helper<'rc>,
        _: &'reg Handlebars<'reg>,
        _: &'rc Context,
        _: &mut RenderContext<'reg, 'rc>,
    ) -> Result<ScopedJson<'rc>, RenderError> {
        let value = present_param(helper, "date", 0)?;
        let time = parse_time(value.value()).ok_or_else(|| {
            RenderErrorReason::Other(format!(
                "date: `{}` is not an RFC 3339 time or Unix seconds",
                value.value().render()
            ))
        })?;
        let format = helper.param(1).map(|p| p.value().render());
        let zone = helper.param(2).map(|p| p.value().render());
        let rendered = format_time(time, format.as_deref(), zone.as_deref())
            .map_err(RenderErrorReason::Other)?;
        Ok(ScopedJson::Derived(Value::String(rendered)))
    }
}

/// Formats a time in a zone with a strftime format; RFC 3339 when no format is given.
pub fn format_time(
    time: DateTime<Utc>,
    format: Option<&str>,
    zone: Option<&str>,
) -> Result<String, String> {
    let zone: chrono_tz::Tz = match zone {
        Some(name) => name
            .parse()
            .map_err(|_| format!("date: unknown time zone `{name}`"))?,
        None => chrono_tz::UTC,
    };
    let local = time.with_timezone(&zone);
    let mut rendered = String::new();
    use std::fmt::Write as _;
    match format {
        Some(format) => write!(rendered, "{}", local.format(format))
            .map_err(|_| format!("date: invalid format `{format}`"))?,
        None => rendered = local.to_rfc3339(),
    }
    Ok(rendered)
}

fn parse_time(value: &Value) -> Option<DateTime<Utc>> {
    match value {
        Value::String(text) => DateTime::parse_from_rfc3339(text)
            .ok()
            .map(|t| t.with_timezone(&Utc)),
        Value::Number(number) => number
            .as_i64()
            .and_then(|seconds| DateTime::from_timestamp(seconds, 0)),
        _ => None,
    }
}

/// `{{now_minus "24h"}}` / `{{now_plus "15m"}}`: RFC 3339 UTC time relative to the context's
/// `now` (so tests with a fixed `now` are deterministic), or the clock when there is none.
struct RelativeTimeHelper {
    sign: i32,
}

impl HelperDef for RelativeTimeHelper {
    fn call_inner<'reg: 'rc, 'rc>(
        &self,
        helper: &Helper<'rc>,
        _: &'reg Handlebars<'reg>,
        context: &'rc Context,
        _: &mut RenderContext<'reg, 'rc>,
    ) -> Result<ScopedJson<'rc>, RenderError> {
        let name = if self.sign < 0 {
            "now_minus"
        } else {
            "now_plus"
        };
        let text = helper
            .param(0)
            .ok_or(RenderErrorReason::ParamNotFoundForIndex(name, 0))?
            .value()
            .render();
        let duration = super::duration::parse_duration(&text)
            .map_err(|err| RenderErrorReason::Other(format!("{name}: {err}")))?;
        let now = context
            .data()
            .get("now")
            .and_then(parse_time)
            .unwrap_or_else(Utc::now);
        let delta = TimeDelta::from_std(duration)
            .map_err(|_| RenderErrorReason::Other(format!("{name}: `{text}` is too long")))?;
        let time = if self.sign < 0 {
            now - delta
        } else {
            now + delta
        };
        Ok(ScopedJson::Derived(Value::String(
            time.to_rfc3339_opts(chrono::SecondsFormat::Secs, true),
        )))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn templates_too_deep_or_too_large_are_refused_before_handlebars() {
        let deep = format!("{{{{{}x{}}}}}", "(json ".repeat(5000), ")".repeat(5000));
        let err = Template::compile(&deep).unwrap_err();
        assert!(err.message.contains("deeper than 32"), "{}", err.message);
        let blocks = format!("{}x{}", "{{#if a}}".repeat(100), "{{/if}}".repeat(100));
        let err = Template::compile(&blocks).unwrap_err();
        assert!(err.message.contains("deeper than 32"), "{}", err.message);
        let err = Template::compile("{{#if a}}yes").unwrap_err();
        assert_eq!(err.message, "`{{#if ...}}` is never closed");
        assert_eq!(
            err.hint.as_deref(),
            Some("add `{{/if}}` where the block ends")
        );
        let err = Template::compile("{{#each a}}{{#if b}}x{{/each}}{{/if}}").unwrap_err();
        assert!(
            err.message.contains("closes a block opened by `{{#if}}`"),
            "{}",
            err.message
        );
        let err = Template::compile("x{{/if}}").unwrap_err();
        assert!(err.message.contains("never opened"), "{}", err.message);
        assert!(Template::compile("{{#if a}}{{#each b}}{{this}}{{/each}}{{else}}n{{/if}}").is_ok());
        // Not blocks: a comment holding `}}`, a raw block, an escaped `{{`.
        assert!(Template::compile("{{!-- a }} {{#if x}} --}}ok").is_ok());
        // (flowd registers no raw-block helper: the refusal is about the helper, not the block)
        let err = Template::compile("{{{{raw}}}} {{#if}} {{{{/raw}}}}").unwrap_err();
        assert!(
            err.message.contains("unknown helper `raw`"),
            "{}",
            err.message
        );
        assert!(Template::compile("\\{{#if x}} literal").is_ok());
        let many = "{{a}} ".repeat(MAX_EXPRESSIONS + 1);
        let err = Template::compile(&many).unwrap_err();
        assert!(err.message.contains("at most 1000"), "{}", err.message);
        assert!(Template::compile(&"{{a}} ".repeat(MAX_EXPRESSIONS)).is_ok());
        assert!(Template::compile("{{default (json (urlencode a)) 'x'}}").is_ok());
    }
    use serde_json::json;

    fn render(source: &str, context: Value) -> Result<Value, TemplateRenderError> {
        Template::compile(source)
            .expect("compiles")
            .render(&context)
    }

    #[test]
    fn single_expression_keeps_its_type() {
        let context = json!({"event": {"data": {"count": 3, "obj": {"a": [1, 2]}, "name": "Ana"}}});
        assert_eq!(
            render("{{event.data.count}}", context.clone()),
            Ok(json!(3))
        );
        assert_eq!(
            render("{{event.data.obj}}", context.clone()),
            Ok(json!({"a": [1, 2]}))
        );
        assert_eq!(
            render("{{event.data.name}}", context.clone()),
            Ok(json!("Ana"))
        );
        assert_eq!(
            render("n={{event.data.count}}", context.clone()),
            Ok(json!("n=3"))
        );
        assert_eq!(render("plain", context), Ok(json!("plain")));
    }

    #[test]
    fn strict_mode_refuses_missing_variables() {
        let err = render("hi {{event.data.nope}}", json!({"event": {"data": {}}})).unwrap_err();
        assert!(err.message.contains("event.data.nope"), "{err}");
        let err = render("{{event.data.nope}}", json!({"event": {"data": {}}})).unwrap_err();
        assert!(err.message.contains("event.data.nope"), "{err}");
    }

    #[test]
    fn helpers_work() {
        let context = json!({"now": "2026-03-01T12:00:00Z", "x": {"s": "  Ana  ", "t": "2026-03-29T01:30:00Z"}});
        assert_eq!(
            render("{{default x.missing 5}}", context.clone()),
            Ok(json!(5))
        );
        assert_eq!(
            render("{{default x.s 5}}", context.clone()),
            Ok(json!("  Ana  "))
        );
        assert_eq!(
            render("{{upper (trim x.s)}}", context.clone()),
            Ok(json!("ANA"))
        );
        assert_eq!(
            render("{{truncate \"abcdef\" 4}}", context.clone()),
            Ok(json!("abc…"))
        );
        assert_eq!(
            render("{{urlencode \"a b&c\"}}", context.clone()),
            Ok(json!("a%20b%26c"))
        );
        assert_eq!(
            render("{{now_minus \"24h\"}}", context.clone()),
            Ok(json!("2026-02-28T12:00:00Z"))
        );
        assert_eq!(
            render(
                "{{date x.t \"%H:%M\" \"Europe/Amsterdam\"}}",
                context.clone()
            ),
            Ok(json!("03:30"))
        );
        assert_eq!(
            render("{{json x.s}}", context.clone()),
            Ok(json!("\"  Ana  \""))
        );
        assert_eq!(
            render("{{#if (eq 1 1)}}yes{{else}}no{{/if}}", context),
            Ok(json!("yes"))
        );
    }

    #[test]
    fn references_skip_block_scopes() {
        let template =
            Template::compile("{{steps.a.id}} {{#each run.state.items}}{{name}} {{@root.vars.x}}{{/each}} {{default item.y 1}}")
                .expect("compiles");
        let roots: Vec<String> = template
            .references()
            .iter()
            .map(|r| r.segments.join("."))
            .collect();
        assert_eq!(roots, ["steps.a.id", "run.state.items", "vars.x", "item.y"]);
    }

    #[test]
    fn unknown_helpers_are_refused_with_a_suggestion() {
        let err = Template::compile("{{uper event.x}}").unwrap_err();
        assert_eq!(err.message, "unknown helper `uper`");
        assert_eq!(err.hint.as_deref(), Some("did you mean `upper`?"));
        assert!(Template::compile("{{#each x}}").is_err());
    }
}
