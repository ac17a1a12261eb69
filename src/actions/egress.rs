//! The egress rule (DESIGN 3, "Egress is deliberate"): a destination whose host is written in
//! the rule, or comes from `vars`/`secrets`, is the operator's choice; a host that comes from run
//! time data (`event`, `item`, `steps`, `run`, `generation`, or anything else a template reads at
//! run time) must match `egress.allow`, or the step fails fatally without sending.
//!
//! Whether a host is run-time data is decided from the template's source, before rendering: the
//! part of a URL template between `://` and the next `/`, `?` or `#` (or, for an address, after
//! the `@`) is scanned for `{{...}}` expressions, and any name in them other than `vars.*`,
//! `secrets.*`, helpers and literals counts as run-time data. A template whose scheme itself is
//! an expression (`{{event.data.callback}}`) has a run-time host unless that expression reads only
//! `vars`/`secrets`.

use crate::rules::template::{expressions, helper_names};

/// Roots a template may read whose values the operator wrote.
const OPERATOR_ROOTS: &[&str] = &["vars", "secrets"];

/// `egress.allow`, compiled.
#[derive(Debug, Clone, Default)]
pub struct EgressPolicy {
    patterns: Vec<HostPattern>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum HostPattern {
    /// `*`: anything.
    Any,
    /// `*.example.com`: subdomains of it.
    Suffix(String),
    /// `example.com` (any port) or `example.com:8443` (that port).
    Host(String, Option<u16>),
}

impl EgressPolicy {
    /// From `egress.allow` patterns: `host`, `host:port`, `*.suffix` or `*`.
    pub fn new(allow: &[String]) -> Result<EgressPolicy, String> {
        let mut patterns = Vec::with_capacity(allow.len());
        for raw in allow {
            let pattern = raw.trim().to_ascii_lowercase();
            if pattern == "*" {
                patterns.push(HostPattern::Any);
            } else if let Some(suffix) = pattern.strip_prefix("*.") {
                if suffix.is_empty() || suffix.contains(['*', ':', '/']) {
                    return Err(format!("egress.allow: `{raw}` is not `*.domain`"));
                }
                patterns.push(HostPattern::Suffix(suffix.to_owned()));
            } else {
                let (host, port) = split_host_port(&pattern)
                    .ok_or_else(|| format!("egress.allow: `{raw}` is not `host` or `host:port`"))?;
                if host.is_empty() || host.contains(['*', '/', '@']) {
                    return Err(format!(
                        "egress.allow: `{raw}` is not `host` or `host:port`"
                    ));
                }
                patterns.push(HostPattern::Host(host, port));
            }
        }
        Ok(EgressPolicy { patterns })
    }

    /// Whether `host` (lower-case, IPv6 without brackets) on `port` is allowed.
    pub fn allows(&self, host: &str, port: Option<u16>) -> bool {
        let host = host.trim_end_matches('.').to_ascii_lowercase();
        self.patterns.iter().any(|pattern| match pattern {
            HostPattern::Any => true,
            HostPattern::Suffix(suffix) => host
                .strip_suffix(suffix.as_str())
                .is_some_and(|rest| rest.ends_with('.') && rest.len() > 1),
            HostPattern::Host(allowed, allowed_port) => {
                *allowed == host && allowed_port.is_none_or(|p| Some(p) == port)
            }
        })
    }

    /// Checks a rendered URL whose host came from run-time data.
    pub fn check_url(&self, url: &str) -> Result<(), String> {
        let parsed = url::Url::parse(url).map_err(|err| format!("`{url}` is not a URL: {err}"))?;
        let host = match parsed.host() {
            Some(url::Host::Domain(domain)) => domain.to_owned(),
            Some(url::Host::Ipv4(ip)) => ip.to_string(),
            Some(url::Host::Ipv6(ip)) => ip.to_string(),
            None => return Err(format!("`{url}` has no host")),
        };
        if self.allows(&host, parsed.port_or_known_default()) {
            Ok(())
        } else {
            Err(format!(
                "the host `{host}` comes from run-time data and is not in egress.allow; nothing was sent (add it to egress.allow if it is meant)"
            ))
        }
    }

    /// Checks a rendered e-mail address whose domain came from run-time data.
    pub fn check_address(&self, address: &str) -> Result<(), String> {
        let domain = address
            .rsplit_once('@')
            .map(|(_, domain)| domain.trim_end_matches('>').trim())
            .unwrap_or_default();
        if !domain.is_empty() && self.allows(domain, None) {
            Ok(())
        } else {
            Err(format!(
                "the mail domain `{domain}` comes from run-time data and is not in egress.allow; nothing was sent"
            ))
        }
    }
}

fn split_host_port(text: &str) -> Option<(String, Option<u16>)> {
    if let Some(rest) = text.strip_prefix('[') {
        let (host, after) = rest.split_once(']')?;
        let port = match after.strip_prefix(':') {
            Some(port) => Some(port.parse().ok()?),
            None if after.is_empty() => None,
            None => return None,
        };
        return Some((host.to_owned(), port));
    }
    match text.rsplit_once(':') {
        Some((host, port)) if !host.contains(':') => {
            Some((host.to_owned(), Some(port.parse().ok()?)))
        }
        Some(_) => Some((text.to_owned(), None)), // a bare IPv6 address
        None => Some((text.to_owned(), None)),
    }
}

/// Whether the host of a URL template comes from run-time data.
pub fn url_host_is_runtime(source: &str) -> bool {
    if let Some(after_open) = source.strip_prefix("{{") {
        // The URL starts with an expression (`{{secrets.webhook}}`, `{{vars.base}}/x`): it holds
        // the host, unless more host text follows it before the path.
        let (end, rest) = match after_open.find("}}") {
            Some(i) => (i, &after_open[i + 2..]),
            None => (after_open.len(), ""),
        };
        if expression_reads_runtime(&after_open[..end]) {
            return true;
        }
        let rest = rest.strip_prefix("://").unwrap_or(rest);
        return !(rest.is_empty() || rest.starts_with(['/', '?', '#']))
            && authority(rest).is_some_and(reads_runtime);
    }
    let Some(scheme_end) = source.find("://") else {
        // No literal scheme and no leading expression: judge all of it.
        return reads_runtime(source);
    };
    let before = &source[..scheme_end];
    if before.contains("{{") {
        return reads_runtime(source);
    }
    let rest = &source[scheme_end + 3..];
    authority(rest).is_some_and(reads_runtime)
}

/// The `{{...}}` expressions in the path or query of a URL template that read run-time data
/// without `urlencode` (a value with `/`, `?` or `#` would change the URL's shape). For
/// `flowd check`'s warnings.
pub fn unencoded_runtime_in_path(source: &str) -> Vec<String> {
    let after_authority = match source.find("://") {
        Some(end) if !source[..end].contains("{{") => {
            let rest = &source[end + 3..];
            &rest[authority(rest).map_or(rest.len(), str::len)..]
        }
        _ => match source.strip_prefix("{{").and_then(|inner| inner.find("}}")) {
            // `{{vars.base}}/x/{{event.id}}`: the path starts after the first expression.
            Some(end) => &source[end + 4..],
            None => return Vec::new(),
        },
    };
    expressions(after_authority)
        .map(str::trim)
        .filter(|expression| {
            expression.split_whitespace().next() != Some("urlencode")
                && expression_reads_runtime(expression)
        })
        .map(|expression| format!("{{{{{expression}}}}}"))
        .collect()
}

/// Whether the domain of an address template comes from run-time data.
pub fn address_domain_is_runtime(source: &str) -> bool {
    // The last `@` outside any `{{...}}` splits the address; without one, all of it counts.
    let mut depth = 0usize;
    let mut at = None;
    let mut i = 0;
    while i < source.len() {
        let rest = &source[i..];
        if rest.starts_with("{{") {
            depth += 1;
            i += 2;
        } else if rest.starts_with("}}") && depth > 0 {
            depth -= 1;
            i += 2;
        } else {
            if depth == 0 && rest.starts_with('@') {
                at = Some(i);
            }
            i += rest.chars().next().map_or(1, char::len_utf8);
        }
    }
    match at {
        Some(at) => reads_runtime(&source[at..]),
        None => reads_runtime(source),
    }
}

/// The authority part of what follows `scheme://`, keeping whole `{{...}}` expressions (their
/// insides may contain `/`).
fn authority(rest: &str) -> Option<&str> {
    let mut depth = 0usize;
    let bytes = rest.as_bytes();
    let mut i = 0;
    while i < bytes.len() {
        if rest[i..].starts_with("{{") {
            depth += 1;
            i += 2;
            continue;
        }
        if rest[i..].starts_with("}}") && depth > 0 {
            depth -= 1;
            i += 2;
            continue;
        }
        if depth == 0 && matches!(bytes[i], b'/' | b'?' | b'#') {
            return Some(&rest[..i]);
        }
        i += rest[i..].chars().next().map_or(1, char::len_utf8);
    }
    Some(rest)
}

/// Whether any `{{...}}` expression in `text` reads something other than `vars`/`secrets`.
fn reads_runtime(text: &str) -> bool {
    expressions(text).any(expression_reads_runtime)
}

fn expression_reads_runtime(expression: &str) -> bool {
    let helpers: Vec<&str> = helper_names().collect();
    let inner =
        expression.trim_matches(|c| c == '{' || c == '}' || c == '~' || c == '#' || c == '/');
    // Words outside string literals.
    let mut words = Vec::new();
    let mut in_string = None;
    let mut current = String::new();
    for c in inner.chars() {
        match in_string {
            Some(quote) if c == quote => in_string = None,
            Some(_) => {}
            None if c == '"' || c == '\'' => in_string = Some(c),
            None if c.is_whitespace() || c == '(' || c == ')' || c == '=' => {
                if !current.is_empty() {
                    words.push(std::mem::take(&mut current));
                }
            }
            None => current.push(c),
        }
    }
    if !current.is_empty() {
        words.push(current);
    }
    words.iter().any(|word| {
        let root = word
            .trim_start_matches("@root.")
            .split(['.', '['])
            .next()
            .unwrap_or("");
        !(root.is_empty()
            || OPERATOR_ROOTS.contains(&root)
            || helpers.contains(&word.as_str())
            || word.parse::<f64>().is_ok()
            || matches!(word.as_str(), "true" | "false" | "null" | "else"))
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hosts_written_by_the_operator_are_not_runtime() {
        for literal in [
            "https://hooks.slack.com/x/{{event.data.id}}",
            "{{secrets.slack_webhook}}",
            "{{vars.notify_url}}/path/{{event.id}}",
            "https://{{vars.host}}/{{urlencode event.data.id}}",
            "https://ats.example.com/api?c={{event.data.id}}",
        ] {
            assert!(!url_host_is_runtime(literal), "{literal}");
        }
    }

    #[test]
    fn hosts_from_run_time_data_are_runtime() {
        for runtime in [
            "{{event.data.callback}}",
            "https://{{event.data.host}}/x",
            "https://{{default event.data.host \"a.example.com\"}}/x",
            "https://a.{{steps.x.body.domain}}/x",
            "{{vars.scheme}}://{{run.state.host}}",
            "http://{{item.host}}:{{item.port}}",
            "https://{{lower (trim event.data.h)}}",
        ] {
            assert!(url_host_is_runtime(runtime), "{runtime}");
        }
    }

    #[test]
    fn unencoded_run_time_path_segments_are_found() {
        assert_eq!(
            unencoded_runtime_in_path(
                "https://ats.example.com/c/{{event.id}}/x?q={{urlencode event.q}}&v={{vars.v}}"
            ),
            vec!["{{event.id}}".to_owned()]
        );
        assert_eq!(
            unencoded_runtime_in_path("{{vars.base}}/c/{{steps.a.id}}"),
            vec!["{{steps.a.id}}".to_owned()]
        );
        assert!(unencoded_runtime_in_path("https://{{event.host}}/x").is_empty());
        assert!(unencoded_runtime_in_path("{{secrets.hook}}").is_empty());
    }

    #[test]
    fn addresses() {
        assert!(!address_domain_is_runtime(
            "{{event.data.name}}@example.com"
        ));
        assert!(address_domain_is_runtime("{{event.data.email}}"));
        assert!(address_domain_is_runtime("someone@{{event.data.domain}}"));
        assert!(!address_domain_is_runtime("oncall@example.com"));
    }

    #[test]
    fn patterns() {
        let policy = EgressPolicy::new(&[
            "hooks.slack.com".into(),
            "*.ats.example.com".into(),
            "127.0.0.1:9000".into(),
        ])
        .expect("valid");
        assert!(
            policy
                .check_url("https://hooks.slack.com/services/x")
                .is_ok()
        );
        assert!(policy.check_url("https://HOOKS.slack.com./x").is_ok());
        assert!(policy.check_url("https://eu.ats.example.com/x").is_ok());
        assert!(policy.check_url("https://ats.example.com/x").is_err());
        assert!(policy.check_url("https://evilats.example.com/x").is_err());
        assert!(policy.check_url("http://127.0.0.1:9000/x").is_ok());
        assert!(
            policy
                .check_url("http://127.0.0.1:8081/api/v1/reload")
                .is_err()
        );
        assert!(policy.check_url("http://localhost:9000/").is_err());
        assert!(policy.check_url("http://[::1]:9000/").is_err());
        assert!(
            policy
                .check_url("http://hooks.slack.com@127.0.0.1:8081/")
                .is_err()
        );
        assert!(
            policy.check_url("http://2130706433:9000/").is_ok(),
            "the URL parser normalizes 127.0.0.1"
        );
        assert!(
            EgressPolicy::default()
                .check_url("https://hooks.slack.com/")
                .is_err()
        );
        assert!(
            EgressPolicy::new(&["*".into()])
                .expect("valid")
                .check_url("https://x.y/")
                .is_ok()
        );
        assert!(EgressPolicy::new(&["a/b".into()]).is_err());
        assert!(policy.check_address("Ana <ana@eu.ats.example.com>").is_ok());
        assert!(policy.check_address("ana@gmail.com").is_err());
    }
}
