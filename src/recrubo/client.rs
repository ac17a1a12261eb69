//! The Recrubo API client: JSON:API over reqwest (rustls), typed operations, classified errors,
//! retries for reads, and one rate limiter shared by every caller.
//!
//! Creates are sent once: whether to try again is the caller's decision, because the engine
//! stores attempts durably and checks a create whose outcome is unknown before repeating it.
//! Reads (GET) are retried here with exponential backoff and jitter, honouring `Retry-After`.

use std::num::NonZeroU32;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use backon::{ExponentialBuilder, Retryable};
use futures_util::Stream;
use governor::{DefaultDirectRateLimiter, Quota, RateLimiter};
use reqwest::{Method, StatusCode, Url};
use serde_json::{Map, Value};

use super::error::{RecruboError, parse_retry_after};
use super::jsonapi::{Document, ErrorDocument, Resource, request_envelope};
use super::query::ListQuery;
use super::types::{
    FlowGeneration, FlowRun, FlowRunPatch, NewFlowGeneration, NewFlowRun, VacancyAnalysis,
};
use crate::settings::Secret;

/// The JSON:API media type.
pub const JSON_API: &str = "application/vnd.api+json";

/// The largest answer read from Recrubo. The docs give no page or body limits; a JSON:API page
/// of 100 rich resources is well under this, and a larger answer is refused with a clear error
/// rather than read into memory without end (a cut JSON document is of no use).
pub const MAX_ANSWER_BYTES: usize = 8 << 20;

/// The longest a read waits in line for a retry (see `read`).
pub const MAX_INLINE_WAIT: Duration = Duration::from_secs(30);

/// Why [`read_capped`] stopped.
pub(crate) enum CappedRead {
    /// The body broke off.
    Broke(reqwest::Error),
    /// It is longer than the cap.
    TooLarge,
}

/// Reads a body chunk by chunk, stopping at `cap` bytes: a peer cannot make flowd buffer
/// without end (reqwest's `bytes()` has no limit).
pub(crate) async fn read_capped(
    mut response: reqwest::Response,
    cap: usize,
) -> Result<Vec<u8>, CappedRead> {
    if response
        .content_length()
        .is_some_and(|length| length > cap as u64)
    {
        return Err(CappedRead::TooLarge);
    }
    let mut body = Vec::new();
    while let Some(chunk) = response.chunk().await.map_err(CappedRead::Broke)? {
        if body.len() + chunk.len() > cap {
            return Err(CappedRead::TooLarge);
        }
        body.extend_from_slice(&chunk);
    }
    Ok(body)
}

/// How the client connects.
#[derive(Debug, Clone)]
pub struct ClientSettings {
    /// The API base, e.g. `https://api.recrubo.app/public/v2`.
    pub base_url: String,
    /// The organization token.
    pub token: Secret<String>,
    /// Add `?sync=true` to flow generations and vacancy analyses (sandbox only).
    pub sync: bool,
    /// Requests per second for all callers together; 0 means no limit.
    pub rate_limit: f64,
    /// Connect timeout.
    pub connect_timeout: Duration,
    /// Whole-request timeout.
    pub request_timeout: Duration,
    /// Attempts for reads, the first included.
    pub read_attempts: u32,
    /// First retry delay of reads.
    pub read_backoff: Duration,
}

impl ClientSettings {
    /// Settings with the defaults for timeouts and retries.
    pub fn new(base_url: impl Into<String>, token: Secret<String>) -> Self {
        ClientSettings {
            base_url: base_url.into(),
            token,
            sync: false,
            rate_limit: 20.0,
            connect_timeout: Duration::from_secs(5),
            request_timeout: Duration::from_secs(30),
            read_attempts: 4,
            read_backoff: Duration::from_millis(200),
        }
    }
}

/// A page of a list.
#[derive(Debug, Clone, PartialEq)]
pub struct Page {
    /// The resources.
    pub items: Vec<Resource>,
    /// The page number asked for (1-based).
    pub number: u32,
    /// Whether another page may follow.
    pub has_more: bool,
}

/// An answer to a raw call.
#[derive(Debug, Clone, PartialEq)]
pub struct RawResponse {
    /// HTTP status.
    pub status: u16,
    /// The body as JSON (`null` when empty).
    pub body: Value,
}

/// The client; cheap to clone, all clones share the connection pool and the rate limiter.
#[derive(Clone)]
pub struct RecruboClient {
    http: reqwest::Client,
    base: Url,
    token: Secret<String>,
    sync: bool,
    limiter: Option<Arc<DefaultDirectRateLimiter>>,
    read_attempts: u32,
    read_backoff: Duration,
}

impl std::fmt::Debug for RecruboClient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RecruboClient")
            .field("base", &self.base.as_str())
            .field("token", &self.token)
            .finish_non_exhaustive()
    }
}

impl RecruboClient {
    /// Builds a client.
    pub fn new(settings: &ClientSettings) -> Result<RecruboClient, RecruboError> {
        let mut base_text = settings.base_url.trim_end_matches('/').to_owned();
        base_text.push('/');
        let base = Url::parse(&base_text).map_err(|err| {
            RecruboError::InvalidRequest(format!("invalid base URL `{}`: {err}", settings.base_url))
        })?;
        let http = reqwest::Client::builder()
            .user_agent(concat!("flowd/", env!("CARGO_PKG_VERSION")))
            .connect_timeout(settings.connect_timeout)
            .timeout(settings.request_timeout)
            // The token goes to the base URL only; a redirect is an error, not a hop.
            .redirect(reqwest::redirect::Policy::none())
            .pool_max_idle_per_host(64)
            .build()
            .map_err(|err| {
                RecruboError::InvalidRequest(format!("cannot build the HTTP client: {err}"))
            })?;
        let limiter = rate_limiter(settings.rate_limit).map(Arc::new);
        Ok(RecruboClient {
            http,
            base,
            token: settings.token.clone(),
            sync: settings.sync,
            limiter,
            read_attempts: settings.read_attempts.max(1),
            read_backoff: settings.read_backoff,
        })
    }

    /// The URL of `path` under the base URL. A path can never leave the API (DESIGN 3): it is
    /// checked as text (no scheme, no backslash, no control character, no dot segment, plain or
    /// percent-encoded) and, after joining, as a URL (same origin, under the base path), so the
    /// bearer token is only ever sent to `recrubo.base_url`.
    fn url(&self, path: &str, query: &[(String, String)]) -> Result<Url, RecruboError> {
        let leaves = || RecruboError::InvalidRequest(format!("path `{path}` leaves the API"));
        let relative = path.trim_start_matches('/');
        let lower = relative.to_ascii_lowercase();
        let first_segment = relative.split('/').next().unwrap_or_default();
        if relative
            .chars()
            .any(|c| c.is_control() || c == '\\' || c.is_whitespace())
            || first_segment.contains(':')
            || lower.contains("%2e")
            || lower.contains("%2f")
            || lower.contains("%5c")
            || lower.contains("%00")
            || relative
                .split(['/', '?', '#'])
                .any(|segment| segment == "." || segment == "..")
        {
            return Err(leaves());
        }
        let mut url = self
            .base
            .join(relative)
            .map_err(|err| RecruboError::InvalidRequest(format!("invalid path `{path}`: {err}")))?;
        let same_origin = url.scheme() == self.base.scheme()
            && url.host() == self.base.host()
            && url.port_or_known_default() == self.base.port_or_known_default()
            && url.username().is_empty()
            && url.password().is_none();
        if !same_origin || !url.path().starts_with(self.base.path()) {
            return Err(leaves());
        }
        if !query.is_empty() {
            let mut pairs = url.query_pairs_mut();
            for (key, value) in query {
                pairs.append_pair(key, value);
            }
        }
        Ok(url)
    }

    /// Sends one request (waiting for the rate limiter first) and classifies the outcome.
    async fn send_once(
        &self,
        method: Method,
        url: Url,
        body: Option<&Value>,
    ) -> Result<RawResponse, RecruboError> {
        if let Some(limiter) = &self.limiter {
            limiter.until_ready().await;
        }
        let mut request = self
            .http
            .request(method.clone(), url.clone())
            .bearer_auth(self.token.expose())
            .header(reqwest::header::ACCEPT, JSON_API);
        if let Some(body) = body {
            let bytes = serde_json::to_vec(body)
                .map_err(|err| RecruboError::InvalidRequest(err.to_string()))?;
            request = request
                .header(reqwest::header::CONTENT_TYPE, JSON_API)
                .body(bytes);
        }
        let response = request.send().await.map_err(|err| {
            if err.is_connect() {
                RecruboError::Connect {
                    url: url.to_string(),
                    reason: error_chain(&err),
                }
            } else {
                RecruboError::NoAnswer {
                    method: method.to_string(),
                    url: url.to_string(),
                    reason: error_chain(&err),
                }
            }
        })?;
        let status = response.status();
        let headers = response.headers().clone();
        // A write whose answer cannot be read may still have been carried out: its outcome is
        // unknown (a create is then looked up before it is sent again), never a plain failure.
        let write = method != Method::GET;
        let unreadable = |reason: String| RecruboError::NoAnswer {
            method: method.to_string(),
            url: url.to_string(),
            reason: format!(
                "the answer could not be read ({reason}); the request may have been carried out"
            ),
        };
        let bytes = read_capped(response, MAX_ANSWER_BYTES)
            .await
            .map_err(|reason| match reason {
                CappedRead::TooLarge if write => unreadable(format!(
                    "larger than {} MiB",
                    MAX_ANSWER_BYTES >> 20
                )),
                CappedRead::Broke(err) => RecruboError::NoAnswer {
                    method: method.to_string(),
                    url: url.to_string(),
                    reason: format!("the body broke off: {}", error_chain(&err)),
                },
                CappedRead::TooLarge => RecruboError::InvalidBody {
                    method: method.to_string(),
                    url: url.to_string(),
                    reason: format!(
                        "the answer is larger than {} MiB; flowd reads no more (ask for smaller pages)",
                        MAX_ANSWER_BYTES >> 20
                    ),
                },
            })?;
        if status.is_success() {
            let body = if bytes.is_empty() || status == StatusCode::NO_CONTENT {
                Value::Null
            } else {
                serde_json::from_slice(&bytes).map_err(|err| {
                    if write {
                        unreadable(format!("not JSON: {err}"))
                    } else {
                        RecruboError::InvalidBody {
                            method: method.to_string(),
                            url: url.to_string(),
                            reason: format!("not JSON: {err}"),
                        }
                    }
                })?
            };
            return Ok(RawResponse {
                status: status.as_u16(),
                body,
            });
        }
        let detail = match serde_json::from_slice::<ErrorDocument>(&bytes) {
            Ok(document) if !document.errors.is_empty() => document
                .errors
                .iter()
                .map(|e| {
                    e.detail
                        .clone()
                        .or_else(|| e.title.clone())
                        .unwrap_or_else(|| "error".to_owned())
                })
                .collect::<Vec<_>>()
                .join("; "),
            _ => {
                let text = String::from_utf8_lossy(&bytes);
                let text: String = text.chars().take(500).collect();
                if text.trim().is_empty() {
                    status.canonical_reason().unwrap_or("error").to_owned()
                } else {
                    text
                }
            }
        };
        let request_id = ["x-request-id", "x-correlation-id", "request-id"]
            .iter()
            .find_map(|name| headers.get(*name))
            .and_then(|value| value.to_str().ok())
            .map(str::to_owned);
        let retry_after = headers
            .get(reqwest::header::RETRY_AFTER)
            .and_then(|value| value.to_str().ok())
            .and_then(|value| parse_retry_after(value, SystemTime::now()));
        Err(RecruboError::Status {
            method: method.to_string(),
            url: url.to_string(),
            status: status.as_u16(),
            detail,
            request_id,
            retry_after,
        })
    }

    /// A GET, retried with backoff and jitter while the error is retryable. A `Retry-After`
    /// longer than [`MAX_INLINE_WAIT`] ends the retries at once: the caller holds a slot while
    /// this waits, so a long wait belongs to the caller's durable retry, not to a sleep here.
    async fn read(
        &self,
        path: &str,
        query: &[(String, String)],
    ) -> Result<RawResponse, RecruboError> {
        let url = self.url(path, query)?;
        let backoff = ExponentialBuilder::default()
            .with_min_delay(self.read_backoff)
            .with_max_delay(MAX_INLINE_WAIT)
            .with_max_times(self.read_attempts.saturating_sub(1) as usize)
            .with_jitter();
        (|| self.send_once(Method::GET, url.clone(), None))
            .retry(backoff)
            .when(RecruboError::is_retryable)
            .adjust(|err, delay| {
                let delay = delay?;
                match err.retry_after() {
                    Some(after) if after > MAX_INLINE_WAIT => None,
                    Some(after) => Some(after.max(delay / 4)),
                    None => Some(delay),
                }
            })
            .notify(|err, delay| {
                tracing::debug!(error = %err, ?delay, "Retrying a Recrubo read");
            })
            .await
    }

    /// A GET sent once, never retried here: for callers that keep their own schedule per
    /// resource (reconciliation backs off per run instead of sleeping in its loop).
    async fn read_once(&self, path: &str) -> Result<RawResponse, RecruboError> {
        let url = self.url(path, &[])?;
        self.send_once(Method::GET, url, None).await
    }

    /// `GET /flow-runs/{id}` or `GET /flow-generations/{id}`, one attempt (see `read_once`).
    pub async fn poll(
        &self,
        kind: super::FollowedKind,
        id: &str,
    ) -> Result<Resource, RecruboError> {
        let collection = kind.collection();
        let response = self
            .read_once(&format!("{collection}/{}", path_segment(id)?))
            .await?;
        Self::resource(response, collection)
    }

    /// A write (POST/PATCH/DELETE), sent once.
    async fn write(
        &self,
        method: Method,
        path: &str,
        query: &[(String, String)],
        body: Option<&Value>,
    ) -> Result<RawResponse, RecruboError> {
        let url = self.url(path, query)?;
        self.send_once(method, url, body).await
    }

    fn sync_query(&self) -> Vec<(String, String)> {
        if self.sync {
            vec![("sync".to_owned(), "true".to_owned())]
        } else {
            Vec::new()
        }
    }

    /// The resource a create answered 2xx with. An answer that is not one leaves the create's
    /// outcome unknown (it succeeded, but flowd cannot tell what it made): looked up, not redone.
    fn created(response: RawResponse, what: &str) -> Result<Resource, RecruboError> {
        Self::resource(response, what).map_err(|err| RecruboError::NoAnswer {
            method: "POST".to_owned(),
            url: what.to_owned(),
            reason: format!("{err}; the create went through but its answer cannot be used"),
        })
    }

    fn resource(response: RawResponse, what: &str) -> Result<Resource, RecruboError> {
        serde_json::from_value::<Document<Resource>>(response.body)
            .map(|document| document.data)
            .map_err(|err| RecruboError::InvalidBody {
                method: String::new(),
                url: what.to_owned(),
                reason: format!("expected a JSON:API resource: {err}"),
            })
    }

    // ---- FlowRuns --------------------------------------------------------------------------------

    /// `POST /flow-runs`.
    pub async fn create_flow_run(&self, run: &NewFlowRun) -> Result<FlowRun, RecruboError> {
        let body = request_envelope("flowRuns", None, run.attributes());
        let response = self
            .write(Method::POST, "flow-runs", &[], Some(&body))
            .await?;
        Self::created(response, "flow-runs").map(|resource| FlowRun { resource })
    }

    /// `GET /flow-runs/{id}`.
    pub async fn get_flow_run(&self, id: &str) -> Result<FlowRun, RecruboError> {
        let response = self
            .read(&format!("flow-runs/{}", path_segment(id)?), &[])
            .await?;
        Self::resource(response, "flow-runs/{id}").map(|resource| FlowRun { resource })
    }

    /// `GET /flow-runs` (one page).
    pub async fn list_flow_runs(&self, query: &ListQuery) -> Result<Page, RecruboError> {
        self.list("flow-runs", query).await
    }

    /// `PATCH /flow-runs/{id}`.
    pub async fn patch_flow_run(
        &self,
        id: &str,
        patch: &FlowRunPatch,
    ) -> Result<FlowRun, RecruboError> {
        let body = request_envelope("flowRuns", Some(id), patch.attributes());
        let response = self
            .write(
                Method::PATCH,
                &format!("flow-runs/{}", path_segment(id)?),
                &[],
                Some(&body),
            )
            .await?;
        Self::resource(response, "flow-runs/{id}").map(|resource| FlowRun { resource })
    }

    // ---- FlowGenerations -----------------------------------------------------------------------

    /// `POST /flow-generations` (with `?sync=true` when configured).
    pub async fn create_flow_generation(
        &self,
        generation: &NewFlowGeneration,
    ) -> Result<FlowGeneration, RecruboError> {
        let body = request_envelope("flowGenerations", None, generation.attributes());
        let response = self
            .write(
                Method::POST,
                "flow-generations",
                &self.sync_query(),
                Some(&body),
            )
            .await?;
        Self::created(response, "flow-generations").map(|resource| FlowGeneration { resource })
    }

    /// `GET /flow-generations/{id}`.
    pub async fn get_flow_generation(&self, id: &str) -> Result<FlowGeneration, RecruboError> {
        let response = self
            .read(&format!("flow-generations/{}", path_segment(id)?), &[])
            .await?;
        Self::resource(response, "flow-generations/{id}")
            .map(|resource| FlowGeneration { resource })
    }

    /// `GET /flow-generations` (one page).
    pub async fn list_flow_generations(&self, query: &ListQuery) -> Result<Page, RecruboError> {
        self.list("flow-generations", query).await
    }

    // ---- VacancyAnalyses -------------------------------------------------------------------------

    /// `POST /vacancy-analyses` (with `?sync=true` when configured).
    pub async fn create_vacancy_analysis(
        &self,
        input_text: &str,
    ) -> Result<VacancyAnalysis, RecruboError> {
        let mut attributes = Map::new();
        attributes.insert("inputText".into(), Value::String(input_text.to_owned()));
        let body = request_envelope("vacancyAnalyses", None, attributes);
        let response = self
            .write(
                Method::POST,
                "vacancy-analyses",
                &self.sync_query(),
                Some(&body),
            )
            .await?;
        Self::created(response, "vacancy-analyses").map(|resource| VacancyAnalysis { resource })
    }

    /// `GET /vacancy-analyses/{id}`.
    pub async fn get_vacancy_analysis(&self, id: &str) -> Result<VacancyAnalysis, RecruboError> {
        let response = self
            .read(&format!("vacancy-analyses/{}", path_segment(id)?), &[])
            .await?;
        Self::resource(response, "vacancy-analyses/{id}")
            .map(|resource| VacancyAnalysis { resource })
    }

    // ---- Flows and MessageThreads ------------------------------------------------------------------

    /// `GET /flows/{id}`.
    pub async fn get_flow(&self, id: &str) -> Result<Resource, RecruboError> {
        let response = self
            .read(&format!("flows/{}", path_segment(id)?), &[])
            .await?;
        Self::resource(response, "flows/{id}")
    }

    /// `GET /flows` (one page).
    pub async fn list_flows(&self, query: &ListQuery) -> Result<Page, RecruboError> {
        self.list("flows", query).await
    }

    /// `GET /message-threads/{id}`.
    pub async fn get_message_thread(&self, id: &str) -> Result<Resource, RecruboError> {
        let response = self
            .read(&format!("message-threads/{}", path_segment(id)?), &[])
            .await?;
        Self::resource(response, "message-threads/{id}")
    }

    /// `POST /message-threads` (`channel`, `identifier`, optional `chatbotPaused`).
    pub async fn create_message_thread(
        &self,
        attributes: Map<String, Value>,
    ) -> Result<Resource, RecruboError> {
        let body = request_envelope("messageThreads", None, attributes);
        let response = self
            .write(Method::POST, "message-threads", &[], Some(&body))
            .await?;
        Self::created(response, "message-threads")
    }

    /// `GET /message-threads` (one page).
    pub async fn list_message_threads(&self, query: &ListQuery) -> Result<Page, RecruboError> {
        self.list("message-threads", query).await
    }

    // ---- generic ---------------------------------------------------------------------------------------

    /// One page of any collection.
    pub async fn list(&self, collection: &str, query: &ListQuery) -> Result<Page, RecruboError> {
        let number = query.page_number.unwrap_or(1);
        let size = query.page_size.unwrap_or(super::query::DEFAULT_PAGE_SIZE);
        let response = self.read(collection, &query.pairs()).await?;
        let document =
            serde_json::from_value::<Document<Vec<Resource>>>(response.body).map_err(|err| {
                RecruboError::InvalidBody {
                    method: "GET".to_owned(),
                    url: collection.to_owned(),
                    reason: format!("expected a list of JSON:API resources: {err}"),
                }
            })?;
        let has_more = has_more(&document, number, size);
        Ok(Page {
            items: document.data,
            number,
            has_more,
        })
    }

    /// Every item of a collection, page after page, as a stream: only one page is held at a time.
    pub fn list_all(
        &self,
        collection: &str,
        query: ListQuery,
    ) -> impl Stream<Item = Result<Resource, RecruboError>> + '_ {
        let collection = collection.to_owned();
        let size = query.page_size.unwrap_or(super::query::MAX_PAGE_SIZE);
        let start = query.page_number.unwrap_or(1);
        let state = (Some(start), Vec::<Resource>::new().into_iter());
        futures_util::stream::try_unfold(state, move |(mut next_page, mut buffered)| {
            let collection = collection.clone();
            let query = query.clone();
            async move {
                loop {
                    if let Some(item) = buffered.next() {
                        return Ok(Some((item, (next_page, buffered))));
                    }
                    let Some(number) = next_page else {
                        return Ok(None);
                    };
                    let page_query = query.clone().page_size(size).page_number(number);
                    let page = self.list(&collection, &page_query).await?;
                    next_page = (page.has_more && !page.items.is_empty()).then_some(number + 1);
                    buffered = page.items.into_iter();
                }
            }
        })
    }

    /// Any call (the `recrubo` step): `body` becomes the envelope's `data`. GETs are retried.
    pub async fn raw(
        &self,
        method: &str,
        path: &str,
        body: Option<&Value>,
    ) -> Result<RawResponse, RecruboError> {
        let method = Method::from_bytes(method.to_ascii_uppercase().as_bytes())
            .map_err(|_| RecruboError::InvalidRequest(format!("invalid method `{method}`")))?;
        let (path, query) = split_query(path);
        if method == Method::GET {
            return self.read(path, &query).await;
        }
        let envelope = body.map(|data| serde_json::json!({ "data": data }));
        self.write(method, path, &query, envelope.as_ref()).await
    }

    /// `POST /webhooks`: a subscription. Its body shape is not documented (recrubo-api.md
    /// §9.3), so the caller passes the attributes, built from a template in settings.
    pub async fn create_webhook(
        &self,
        attributes: Map<String, Value>,
    ) -> Result<Resource, RecruboError> {
        let body = request_envelope("webhooks", None, attributes);
        let response = self
            .write(Method::POST, "webhooks", &[], Some(&body))
            .await?;
        Self::resource(response, "webhooks")
    }

    /// `PATCH /organizations/{id}` with `webhookUrl` and `webhookSecret`.
    pub async fn set_organization_webhook(
        &self,
        organization_id: &str,
        url: &str,
        secret: &Secret<String>,
    ) -> Result<Resource, RecruboError> {
        let mut attributes = Map::new();
        attributes.insert("webhookUrl".into(), Value::String(url.to_owned()));
        attributes.insert(
            "webhookSecret".into(),
            Value::String(secret.expose().clone()),
        );
        let body = request_envelope("organizations", Some(organization_id), attributes);
        let response = self
            .write(
                Method::PATCH,
                &format!("organizations/{}", path_segment(organization_id)?),
                &[],
                Some(&body),
            )
            .await?;
        Self::resource(response, "organizations/{id}")
    }
}

fn rate_limiter(per_second: f64) -> Option<DefaultDirectRateLimiter> {
    if !(per_second > 0.0 && per_second.is_finite()) {
        return None;
    }
    let quota = if per_second >= 1.0 {
        // A burst of one second's worth, refilled continuously.
        let rate = NonZeroU32::new(per_second.round() as u32).unwrap_or(NonZeroU32::MIN);
        Quota::per_second(rate)
    } else {
        Quota::with_period(Duration::from_secs_f64(1.0 / per_second))?
    };
    Some(RateLimiter::direct(quota))
}

/// An id used as a path segment must be one segment.
fn path_segment(id: &str) -> Result<&str, RecruboError> {
    if id.is_empty() || id.contains(['/', '?', '#']) || id == "." || id == ".." {
        Err(RecruboError::InvalidRequest(format!(
            "`{id}` is not a valid id"
        )))
    } else {
        Ok(id)
    }
}

fn split_query(path: &str) -> (&str, Vec<(String, String)>) {
    match path.split_once('?') {
        None => (path, Vec::new()),
        Some((path, query)) => (
            path,
            url::form_urlencoded::parse(query.as_bytes())
                .map(|(k, v)| (k.into_owned(), v.into_owned()))
                .collect(),
        ),
    }
}

/// Whether another page follows. Recrubo's list `meta` is undocumented, so this reads
/// `links.next` when present, then common meta shapes, and finally falls back to "the page
/// was full".
fn has_more(document: &Document<Vec<Resource>>, number: u32, size: u32) -> bool {
    if let Some(links) = &document.links
        && let Some(next) = links.get("next")
    {
        return !next.is_null();
    }
    if let Some(meta) = &document.meta {
        let page = meta.get("page").unwrap_or(meta);
        let last = page
            .get("lastPage")
            .or_else(|| page.get("last_page"))
            .or_else(|| page.get("totalPages"))
            .and_then(Value::as_u64);
        if let Some(last) = last {
            return u64::from(number) < last;
        }
        if let Some(total) = page.get("total").and_then(Value::as_u64) {
            return u64::from(number) * u64::from(size) < total;
        }
    }
    document.data.len() as u32 >= size
}

fn error_chain(err: &dyn std::error::Error) -> String {
    let mut text = err.to_string();
    let mut source = err.source();
    while let Some(inner) = source {
        let inner_text = inner.to_string();
        if !text.contains(&inner_text) {
            text.push_str(": ");
            text.push_str(&inner_text);
        }
        source = inner.source();
    }
    text
}
