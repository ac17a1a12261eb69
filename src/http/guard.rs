//! The admin listener's guard (DESIGN 4.3): the admin API must not be reachable from a browser
//! tab by accident. A request, in this order,
//!
//! 1. names this listener in `Host` (and in the URI's authority, for HTTP/2 and absolute-form
//!    requests): the listener's own address, `localhost` or a loopback IP on any port, or one of
//!    `admin.hosts`; 421 otherwise. A page of `evil.example` whose name was rebound to 127.0.0.1
//!    still sends `Host: evil.example`, so DNS rebinding ends here.
//! 2. when it changes state (any method but `GET`, `HEAD`, `OPTIONS`), comes from no other site
//!    (`Sec-Fetch-Site` is not `cross-site`/`same-site`, an `Origin` names this listener; 403) and
//!    carries `Content-Type: application/json` (415), which a cross-site form cannot send and a
//!    cross-site `fetch` can only send after a CORS preflight this listener never answers.
//! 3. carries the admin token when one is set: `Authorization: Bearer` (scheme in any case), or the
//!    session cookie that `POST /login` sets (401 otherwise; `GET /` shows the login form instead).
//!
//! Every answer carries `Content-Security-Policy: default-src 'self'; frame-ancestors 'none'`,
//! `nosniff` and `Cache-Control: no-store` ([`security_headers`]).
//!
//! A request without any `Host` is refused too (421). Browsers always send one, so it could not
//! be a rebinding attack, but every HTTP/1.1 client must send one (RFC 9112 3.2) and the HTTP/1.0
//! tools in use (curl -0, Prometheus, load balancer probes) do as well; one rule without an
//! exception is easier to trust, and the answer says what to send.
//!
//! Main types: [`AdminAccess`] (what the daemon passes in), [`Guard`] (the state of the
//! middleware and of the login routes), [`Authenticated`] (how a request got in).

use std::collections::HashMap;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::Json;
use axum::extract::{Request, State};
use axum::http::{HeaderMap, HeaderValue, Method, StatusCode, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use serde_json::json;
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;
use tracing::{info, warn};

use crate::settings::Secret;
// The intake's parser: one reading of `Authorization: Bearer` for both listeners.
use crate::triggers::http::bearer_token;

/// The session cookie's name.
pub const SESSION_COOKIE: &str = "flowd_admin_session";

/// How long a login lasts.
const SESSION_LIFETIME: Duration = Duration::from_secs(12 * 60 * 60);

/// Logins kept at most; the oldest goes first when a new one would exceed this.
const MAX_SESSIONS: usize = 1024;

/// The `Content-Security-Policy` of every admin answer (DESIGN 4.3).
pub const CONTENT_SECURITY_POLICY: &str = "default-src 'self'; frame-ancestors 'none'";

/// Where the admin listener is and which other names it answers to.
#[derive(Debug, Clone, Default)]
pub struct AdminAccess {
    /// The listener's address as bound; `None` when unknown (a router built in a unit test):
    /// then only `localhost` and loopback addresses are accepted (and `hosts`).
    listen: Option<SocketAddr>,
    /// `admin.hosts`, parsed.
    hosts: Vec<Authority>,
}

impl AdminAccess {
    /// The listener bound at `listen`, also answering to the names in `hosts` (`admin.hosts`:
    /// `name`, `name:port`, `1.2.3.4:8081`, `[2001:db8::1]`; an entry without a port matches any
    /// port). An entry that is not a host name or address is an error naming it.
    pub fn new(listen: Option<SocketAddr>, hosts: &[String]) -> Result<AdminAccess, String> {
        let mut parsed = Vec::with_capacity(hosts.len());
        for entry in hosts {
            match Authority::parse(entry) {
                Some(authority) => parsed.push(authority),
                None => {
                    return Err(format!(
                        "admin.hosts: `{entry}` is not a host name or address with an optional port (like `flowd.internal` or `flowd.internal:8081`)"
                    ));
                }
            }
        }
        Ok(AdminAccess {
            listen,
            hosts: parsed,
        })
    }

    /// Whether a `Host` (or `Origin`) authority names this listener.
    fn allows(&self, authority: &Authority) -> bool {
        authority.is_loopback() || self.is_listed(authority)
    }

    /// Whether an authority is the listener's own address or one of `admin.hosts` (not merely a
    /// loopback name).
    fn is_listed(&self, authority: &Authority) -> bool {
        let own = self.listen.is_some_and(|listen| {
            authority.port == Some(listen.port()) && authority.host == host_text(listen.ip())
        });
        own || self.hosts.iter().any(|entry| {
            entry.host == authority.host && (entry.port.is_none() || entry.port == authority.port)
        })
    }

    /// How the listener can be named, for error messages.
    fn describe(&self) -> String {
        let mut names = Vec::new();
        if let Some(listen) = self.listen {
            names.push(format!("{}:{}", host_text(listen.ip()), listen.port()));
        }
        names.push("localhost".to_owned());
        names.push("127.0.0.1".to_owned());
        names.push("[::1]".to_owned());
        names.extend(self.hosts.iter().map(Authority::to_string));
        names.join(", ")
    }
}

/// An IP address as it is written in a `Host` header.
fn host_text(ip: IpAddr) -> String {
    match ip {
        IpAddr::V4(v4) => v4.to_string(),
        IpAddr::V6(v6) => format!("[{v6}]"),
    }
}

/// `host[:port]` of a `Host` header, an `Origin` or an `admin.hosts` entry: the host in lower
/// case without a trailing dot, IPv6 addresses in brackets.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Authority {
    host: String,
    port: Option<u16>,
}

impl Authority {
    /// Parses `host`, `host:port`, `[v6]` or `[v6]:port`; `None` for anything else (user info,
    /// paths, spaces, an IPv6 address without brackets, a bad port).
    fn parse(text: &str) -> Option<Authority> {
        let text = text.trim();
        let (host, port) = if let Some(rest) = text.strip_prefix('[') {
            let (inside, after) = rest.split_once(']')?;
            inside.parse::<Ipv6Addr>().ok()?;
            let port = match after {
                "" => None,
                _ => Some(after.strip_prefix(':')?),
            };
            (format!("[{}]", inside.to_ascii_lowercase()), port)
        } else {
            let (host, port) = match text.split_once(':') {
                Some((host, port)) => (host, Some(port)),
                None => (text, None),
            };
            let host = host.strip_suffix('.').unwrap_or(host);
            let valid = !host.is_empty()
                && host.len() <= 253
                && host
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'.' || b == b'-' || b == b'_');
            if !valid {
                return None;
            }
            (host.to_ascii_lowercase(), port)
        };
        let port = match port {
            // `host:` has an empty port, which means the default (RFC 3986 3.2.3).
            None | Some("") => None,
            Some(digits) if digits.bytes().all(|b| b.is_ascii_digit()) => {
                Some(digits.parse::<u16>().ok()?)
            }
            Some(_) => return None,
        };
        Some(Authority { host, port })
    }

    /// `localhost` or a loopback address: a name no other site can make a browser send.
    fn is_loopback(&self) -> bool {
        if self.host == "localhost" {
            return true;
        }
        if let Ok(v4) = self.host.parse::<Ipv4Addr>() {
            return v4.is_loopback();
        }
        self.host
            .strip_prefix('[')
            .and_then(|rest| rest.strip_suffix(']'))
            .and_then(|inside| inside.parse::<Ipv6Addr>().ok())
            .is_some_and(|v6| v6.is_loopback())
    }
}

impl std::fmt::Display for Authority {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self.port {
            Some(port) => write!(f, "{}:{port}", self.host),
            None => f.write_str(&self.host),
        }
    }
}

/// How a request got past the token check; handlers read it as an extension (the status page
/// shows a logout button for a session).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Authenticated {
    /// No `admin.token` is set.
    Open,
    /// With `Authorization: Bearer`.
    Bearer,
    /// With the session cookie of `POST /login`.
    Session,
}

/// The state of the guard middleware and of the login routes.
pub struct Guard {
    /// The admin token, when one is set.
    token: Option<Secret<String>>,
    /// Where the listener is.
    access: AdminAccess,
    /// Logins.
    sessions: Sessions,
}

impl Guard {
    /// A guard for `token` and `access`.
    pub fn new(token: Option<Secret<String>>, access: AdminAccess) -> Arc<Guard> {
        Arc::new(Guard {
            token,
            access,
            sessions: Sessions::default(),
        })
    }

    /// Whether `given` is the admin token. Both sides are hashed first, so the comparison is
    /// constant-time and does not reveal the token's length either.
    fn is_token(&self, given: &str) -> bool {
        let Some(token) = &self.token else {
            return false;
        };
        let given = Sha256::digest(given.as_bytes());
        let expected = Sha256::digest(token.expose().as_bytes());
        given.as_slice().ct_eq(expected.as_slice()).into()
    }

    /// How the request proves it may use the API, `None` when it does not.
    fn authenticate(&self, request: &Request) -> Option<Authenticated> {
        if self.token.is_none() {
            return Some(Authenticated::Open);
        }
        let headers = request.headers();
        if let Some(given) = bearer_token(headers)
            && self.is_token(given)
        {
            return Some(Authenticated::Bearer);
        }
        let session = session_cookie(headers)?;
        if !self.sessions.is_valid(session) {
            return None;
        }
        // A browser sends the cookie by itself, so a state-changing request must also show it
        // comes from this origin: an `Origin` (checked against the listener already) or
        // `Sec-Fetch-Site: same-origin`. Every browser with SameSite cookies sends one of them.
        if !is_safe(request.method()) {
            let same_origin = headers.contains_key(header::ORIGIN)
                || header_text(headers, "sec-fetch-site") == Some("same-origin");
            if !same_origin {
                return None;
            }
        }
        Some(Authenticated::Session)
    }
}

/// Logins, kept in memory by the SHA-256 of their id.
///
/// The cookie holds a random session id rather than the token or a MAC of it: a cookie that
/// leaks (a copied browser profile, a proxy log) does not hand out the token the CLI and scripts
/// use, it ends at logout, at its expiry and at a restart, and changing `admin.token` needs no
/// key derivation to invalidate anything. Looking ids up by their hash keeps the lookup's timing
/// unrelated to any stored id.
#[derive(Default)]
struct Sessions {
    by_hash: Mutex<HashMap<[u8; 32], Instant>>,
}

impl Sessions {
    /// A new session id (64 hex digits, 244 random bits: two v4 UUIDs, drawn from `rand`'s
    /// OS-seeded CSPRNG through uuid's `fast-rng`).
    fn create(&self) -> String {
        let mut id = [0u8; 32];
        id[..16].copy_from_slice(uuid::Uuid::new_v4().as_bytes());
        id[16..].copy_from_slice(uuid::Uuid::new_v4().as_bytes());
        let text = hex::encode(id);
        let now = Instant::now();
        let mut sessions = self.lock();
        sessions.retain(|_, expires| *expires > now);
        while sessions.len() >= MAX_SESSIONS {
            let Some(oldest) = sessions
                .iter()
                .min_by_key(|(_, expires)| **expires)
                .map(|(hash, _)| *hash)
            else {
                break;
            };
            sessions.remove(&oldest);
        }
        sessions.insert(session_hash(&text), now + SESSION_LIFETIME);
        text
    }

    fn is_valid(&self, id: &str) -> bool {
        let hash = session_hash(id);
        self.lock()
            .get(&hash)
            .is_some_and(|expires| *expires > Instant::now())
    }

    fn remove(&self, id: &str) {
        self.lock().remove(&session_hash(id));
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<[u8; 32], Instant>> {
        // A panic while holding this lock leaves a map that is still consistent.
        self.by_hash
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}

fn session_hash(id: &str) -> [u8; 32] {
    Sha256::digest(id.as_bytes()).into()
}

/// `GET`, `HEAD` and `OPTIONS` change nothing; everything else goes through the CSRF checks.
fn is_safe(method: &Method) -> bool {
    matches!(*method, Method::GET | Method::HEAD | Method::OPTIONS)
}

fn header_text<'a>(headers: &'a HeaderMap, name: &str) -> Option<&'a str> {
    headers.get(name).and_then(|value| value.to_str().ok())
}

/// The value of the session cookie, if the request has one.
fn session_cookie(headers: &HeaderMap) -> Option<&str> {
    headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|value| value.to_str().ok())
        .flat_map(|value| value.split(';'))
        .filter_map(|pair| pair.trim().split_once('='))
        .find(|(name, _)| *name == SESSION_COOKIE)
        .map(|(_, value)| value.trim())
        .filter(|value| !value.is_empty())
}

/// A JSON error answer.
fn refusal(status: StatusCode, message: String) -> Response {
    (status, Json(json!({ "error": message }))).into_response()
}

/// Header text for an error message: printable ASCII, at most 100 characters.
fn shown(text: &str) -> String {
    let mut shown: String = text
        .chars()
        .map(|c| {
            if c.is_ascii_graphic() || c == ' ' {
                c
            } else {
                '?'
            }
        })
        .take(100)
        .collect();
    if text.chars().count() > 100 {
        shown.push('…');
    }
    shown
}

/// The authority the request is addressed to, after checking every form of it the request
/// carries names this listener; the 421 answer otherwise.
fn addressed_authority(guard: &Guard, request: &Request) -> Result<Authority, Response> {
    let misdirected = |what: String| {
        refusal(
            StatusCode::MISDIRECTED_REQUEST,
            format!(
                "misdirected request: {what}; this admin listener answers to {} (DNS rebinding protection). If clients reach it by another name, add that name to admin.hosts (FLOWD_ADMIN_HOSTS)",
                guard.access.describe()
            ),
        )
    };
    let hosts: Vec<&HeaderValue> = request.headers().get_all(header::HOST).iter().collect();
    if hosts.len() > 1 {
        return Err(misdirected(
            "the request has more than one Host header".to_owned(),
        ));
    }
    let mut named = Vec::with_capacity(2);
    if let Some(authority) = request.uri().authority() {
        named.push(authority.as_str().to_owned());
    }
    if let Some(host) = hosts.first() {
        match host.to_str() {
            Ok(text) => named.push(text.to_owned()),
            Err(_) => return Err(misdirected("the Host header is not text".to_owned())),
        }
    }
    if named.is_empty() {
        return Err(misdirected(
            "the request has no Host header (send `Host: <the admin listener's address>`)"
                .to_owned(),
        ));
    }
    let mut first = None;
    for text in &named {
        match Authority::parse(text).filter(|authority| guard.access.allows(authority)) {
            Some(authority) => {
                first.get_or_insert(authority);
            }
            None => {
                return Err(misdirected(format!(
                    "Host `{}` is not this listener",
                    shown(text)
                )));
            }
        }
    }
    first.ok_or_else(|| misdirected("the request names no host".to_owned()))
}

/// The CSRF checks of a state-changing request: 403 for another site, 415 for a body that is
/// not JSON.
fn check_same_origin_json(
    guard: &Guard,
    headers: &HeaderMap,
    addressed: &Authority,
) -> Result<(), Response> {
    let forbidden = |what: String| {
        refusal(
            StatusCode::FORBIDDEN,
            format!(
                "cross-site request refused: {what}; the admin API takes state-changing requests only from its own pages or from clients that are not browsers"
            ),
        )
    };
    if let Some(site @ ("cross-site" | "same-site")) = header_text(headers, "sec-fetch-site") {
        return Err(forbidden(format!("Sec-Fetch-Site is `{site}`")));
    }
    if let Some(origin) = headers.get(header::ORIGIN) {
        let origin = origin.to_str().unwrap_or("");
        let authority = origin
            .split_once("://")
            .filter(|(scheme, _)| matches!(*scheme, "http" | "https"))
            .and_then(|(_, rest)| Authority::parse(rest));
        // The origin must be the very authority the request is addressed to (same origin), or
        // the listener's own address or an `admin.hosts` name (a proxy that rewrites `Host`).
        // Merely being on localhost is not enough: a page on another local port is another site.
        let same = authority
            .as_ref()
            .is_some_and(|authority| authority == addressed || guard.access.is_listed(authority));
        if !same {
            return Err(forbidden(format!(
                "Origin `{}` is not this listener",
                shown(origin)
            )));
        }
    }
    let media_type = header_text(headers, header::CONTENT_TYPE.as_str())
        .map(|value| value.split(';').next().unwrap_or("").trim());
    if !media_type.is_some_and(|media_type| media_type.eq_ignore_ascii_case("application/json")) {
        return Err(refusal(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            format!(
                "state-changing admin requests need `Content-Type: application/json` (got {}); send a JSON body, `{{}}` when there is nothing to say",
                media_type
                    .map(|media_type| format!("`{}`", shown(media_type)))
                    .unwrap_or_else(|| "none".to_owned())
            ),
        ));
    }
    Ok(())
}

/// Middleware of every admin route: steps 1 and 2 of the module doc (Host, then CSRF).
pub async fn refuse_misdirected_and_cross_site(
    State(guard): State<Arc<Guard>>,
    request: Request,
    next: Next,
) -> Response {
    let addressed = match addressed_authority(&guard, &request) {
        Ok(authority) => authority,
        Err(response) => return response,
    };
    if !is_safe(request.method())
        && let Err(response) = check_same_origin_json(&guard, request.headers(), &addressed)
    {
        return response;
    }
    next.run(request).await
}

/// Middleware of the API routes: step 3 of the module doc (the token).
pub async fn require_token(
    State(guard): State<Arc<Guard>>,
    mut request: Request,
    next: Next,
) -> Response {
    match guard.authenticate(&request) {
        Some(authenticated) => {
            request.extensions_mut().insert(authenticated);
            next.run(request).await
        }
        None => unauthorized(),
    }
}

/// Middleware of the status page: without the token it shows the login form.
pub async fn token_or_login_form(
    State(guard): State<Arc<Guard>>,
    mut request: Request,
    next: Next,
) -> Response {
    match guard.authenticate(&request) {
        Some(authenticated) => {
            request.extensions_mut().insert(authenticated);
            next.run(request).await
        }
        None => (
            StatusCode::UNAUTHORIZED,
            [(header::WWW_AUTHENTICATE, "Bearer")],
            super::page::login_page(),
        )
            .into_response(),
    }
}

fn unauthorized() -> Response {
    (
        StatusCode::UNAUTHORIZED,
        [(header::WWW_AUTHENTICATE, "Bearer")],
        Json(json!({"error": "a valid admin token is required: `Authorization: Bearer <admin.token>`, or log in on the status page"})),
    )
        .into_response()
}

/// The `Set-Cookie` value of a session (or of its removal, with `None`). No `Secure`: the admin
/// listener speaks plain HTTP on loopback, where a `Secure` cookie would not come back.
fn session_cookie_header(session: Option<&str>) -> String {
    match session {
        Some(id) => format!(
            "{SESSION_COOKIE}={id}; HttpOnly; SameSite=Strict; Path=/; Max-Age={}",
            SESSION_LIFETIME.as_secs()
        ),
        None => format!("{SESSION_COOKIE}=; HttpOnly; SameSite=Strict; Path=/; Max-Age=0"),
    }
}

/// `POST /login` with `{"token": "..."}`: sets the session cookie.
pub async fn login(State(guard): State<Arc<Guard>>, body: axum::body::Bytes) -> Response {
    if guard.token.is_none() {
        return refusal(
            StatusCode::NOT_FOUND,
            "no admin.token is set, so the admin API needs no login".to_owned(),
        );
    }
    #[derive(serde::Deserialize)]
    struct Login {
        token: String,
    }
    // The parser's message could quote the body, which holds a token: answer a fixed text.
    let Ok(login) = serde_json::from_slice::<Login>(&body) else {
        return refusal(
            StatusCode::BAD_REQUEST,
            "the body must be {\"token\": \"<admin.token>\"}".to_owned(),
        );
    };
    if !guard.is_token(&login.token) {
        warn!("Admin login with a wrong token");
        return unauthorized();
    }
    let session = guard.sessions.create();
    info!("Admin login");
    (
        [(header::SET_COOKIE, session_cookie_header(Some(&session)))],
        Json(json!({"status": "logged in"})),
    )
        .into_response()
}

/// `POST /logout`: ends the session and removes the cookie.
pub async fn logout(State(guard): State<Arc<Guard>>, headers: HeaderMap) -> Response {
    if let Some(session) = session_cookie(&headers) {
        guard.sessions.remove(session);
    }
    (
        [(header::SET_COOKIE, session_cookie_header(None))],
        Json(json!({"status": "logged out"})),
    )
        .into_response()
}

/// Outermost middleware of the admin listener: CSP, `nosniff`, no framing, no referrer, and
/// `no-store` (answers hold rule names, errors and run data) except for the static files.
pub async fn security_headers(request: Request, next: Next) -> Response {
    let is_static = request.uri().path().starts_with("/static/");
    let mut response = next.run(request).await;
    let headers = response.headers_mut();
    headers.insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static(CONTENT_SECURITY_POLICY),
    );
    headers.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    headers.insert(header::X_FRAME_OPTIONS, HeaderValue::from_static("DENY"));
    headers.insert(
        header::REFERRER_POLICY,
        HeaderValue::from_static("no-referrer"),
    );
    headers.insert(
        header::CACHE_CONTROL,
        HeaderValue::from_static(if is_static { "no-cache" } else { "no-store" }),
    );
    response
}

#[cfg(test)]
mod tests {
    use super::*;

    fn authority(text: &str) -> Option<(String, Option<u16>)> {
        Authority::parse(text).map(|a| (a.host, a.port))
    }

    #[test]
    fn authorities_parse_like_host_headers() {
        type Parsed = Option<(&'static str, Option<u16>)>;
        let cases: &[(&str, Parsed)] = &[
            ("localhost", Some(("localhost", None))),
            ("LocalHost:8081", Some(("localhost", Some(8081)))),
            ("localhost.:80", Some(("localhost", Some(80)))),
            ("localhost:", Some(("localhost", None))),
            ("127.0.0.1:8081", Some(("127.0.0.1", Some(8081)))),
            ("[::1]:8081", Some(("[::1]", Some(8081)))),
            ("[::1]", Some(("[::1]", None))),
            ("::1", None),
            ("[nope]:1", None),
            ("user@localhost", None),
            ("localhost/x", None),
            ("local host", None),
            ("localhost:99999", None),
            ("localhost:8o", None),
            ("", None),
        ];
        for (text, expected) in cases {
            let expected = expected.map(|(host, port)| (host.to_owned(), port));
            assert_eq!(authority(text), expected, "{text}");
        }
    }

    #[test]
    fn loopback_names_the_listener_and_admin_hosts_are_listed() {
        let access = AdminAccess::new(
            Some("10.0.0.5:8081".parse().unwrap()),
            &["flowd.internal".to_owned(), "proxy.example:443".to_owned()],
        )
        .unwrap();
        let allows = |text: &str| access.allows(&Authority::parse(text).unwrap());
        for allowed in [
            "localhost",
            "localhost:1234",
            "127.0.0.1:8081",
            "127.0.0.2",
            "[::1]:8081",
            "10.0.0.5:8081",
            "flowd.internal",
            "FLOWD.internal:9999",
            "proxy.example:443",
        ] {
            assert!(allows(allowed), "{allowed}");
        }
        for refused in [
            "evil.example",
            "evil.example:8081",
            "10.0.0.5",
            "10.0.0.5:8082",
            "proxy.example",
            "proxy.example:8443",
            "localhost.evil.example",
            "[::2]:8081",
        ] {
            assert!(!allows(refused), "{refused}");
        }
        assert!(AdminAccess::new(None, &["a b".to_owned()]).is_err());
    }

    #[test]
    fn the_bearer_scheme_is_case_insensitive() {
        for (value, expected) in [
            ("Bearer x", Some("x")),
            ("bearer x", Some("x")),
            ("BEARER   x", Some("x")),
            ("Basic x", None),
            ("Bearer", None),
            ("Bearer ", None),
            ("Bearerx", None),
        ] {
            let mut headers = HeaderMap::new();
            headers.insert(header::AUTHORIZATION, HeaderValue::from_str(value).unwrap());
            assert_eq!(bearer_token(&headers), expected, "{value}");
        }
    }

    #[test]
    fn the_session_cookie_is_found_among_others() {
        let mut headers = HeaderMap::new();
        headers.insert(
            header::COOKIE,
            HeaderValue::from_static("a=1; flowd_admin_session=abc ; b=2"),
        );
        assert_eq!(session_cookie(&headers), Some("abc"));
        headers.insert(
            header::COOKIE,
            HeaderValue::from_static("flowd_admin_sessionx=1"),
        );
        assert_eq!(session_cookie(&headers), None);
    }

    #[test]
    fn sessions_are_random_valid_and_end_at_logout() {
        let sessions = Sessions::default();
        let first = sessions.create();
        let second = sessions.create();
        assert_eq!(first.len(), 64);
        assert_ne!(first, second);
        assert!(sessions.is_valid(&first) && sessions.is_valid(&second));
        assert!(!sessions.is_valid("0000"));
        sessions.remove(&first);
        assert!(!sessions.is_valid(&first) && sessions.is_valid(&second));
    }

    #[test]
    fn the_session_cookie_is_http_only_and_strict() {
        let cookie = session_cookie_header(Some("abc"));
        assert!(cookie.starts_with("flowd_admin_session=abc;"));
        assert!(cookie.contains("HttpOnly") && cookie.contains("SameSite=Strict"));
        assert!(cookie.contains("Path=/"));
        assert!(session_cookie_header(None).contains("Max-Age=0"));
    }
}
