//! One target: its settings checked, its HTTP client, and the way of one request onto the wire
//! and back (authentication, the OAuth2 resend after a 401, the bounded read of the answer).

use std::sync::{Mutex, MutexGuard, PoisonError};
use std::time::{Duration, SystemTime};

use reqwest::header::{
    AUTHORIZATION, CONTENT_TYPE, COOKIE, HeaderMap, HeaderName, HeaderValue, LOCATION, PROXY_AUTHORIZATION,
    RETRY_AFTER, USER_AGENT,
};
use reqwest::{Method, Url};
use tokio::sync::Semaphore;
use tokio::time::Instant;

use super::auth::{IssuedToken, PreparedAuth, REDACTED, TokenSource, sign_standard_webhook};
use super::policy::{Circuit, TokenBucket, classify};
use super::{Answer, OutgoingRequest, TargetSettings, Verdict};
use crate::error::{Error, Result};

/// Sent on every request, so that a third party can tell the hub's traffic apart.
const USER_AGENT_VALUE: &str = concat!("post-office/", env!("CARGO_PKG_VERSION"));

/// Headers that describe the connection or the framing: the HTTP library sets them, and a
/// value from layer 2 could desynchronise the request (request smuggling) or the pool.
const CONNECTION_HEADERS: &[&str] = &[
    "host",
    "content-length",
    "transfer-encoding",
    "connection",
    "keep-alive",
    "proxy-connection",
    "te",
    "upgrade",
    "trailer",
];

/// The longest an open circuit may be configured for: keeps the arithmetic on instants far
/// from overflow, and a target left alone for more than a day is a configuration mistake.
const MAX_CIRCUIT_OPEN: Duration = Duration::from_secs(86_400);

/// One configured target and what this process keeps for it.
pub(super) struct Target {
    pub(super) settings: TargetSettings,
    /// `base_url` without the trailing slash; paths are appended to it.
    pub(super) base: String,
    /// The base URL's scheme, host and port.
    origin: (String, Option<String>, Option<u16>),
    pub(super) client: reqwest::Client,
    auth: PreparedAuth,
    idempotency: Option<HeaderName>,
    keep: Vec<String>,
    pub(super) permits: Semaphore,
    pub(super) bucket: Option<Mutex<TokenBucket>>,
    pub(super) circuit: Mutex<Circuit>,
}

/// The parts of a request that do not depend on the moment it is sent.
pub(super) struct Prepared {
    method: Method,
    url: Url,
    headers: HeaderMap,
}

/// What one exchange on the wire gave.
pub(super) struct Exchanged {
    pub(super) answer: Option<Answer>,
    pub(super) verdict: Verdict,
    pub(super) error: Option<String>,
}

/// A lock that survives a panic elsewhere: the guarded state (a counter, a breaker) stays
/// meaningful after any partial update, so poisoning is ignored rather than spread.
pub(super) fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(PoisonError::into_inner)
}

impl Target {
    /// Checks the settings and builds the target's HTTP client.
    pub(super) fn build(settings: TargetSettings) -> Result<Target> {
        let name = settings.name.clone();
        let invalid = |what: String| Error::InvalidInput(format!("target `{name}`: {what}"));
        if name.trim().is_empty() {
            return Err(Error::InvalidInput("a target needs a name".to_owned()));
        }
        let base = settings.base_url.trim().trim_end_matches('/').to_owned();
        let url = Url::parse(&base).map_err(|e| invalid(format!("base_url is not a URL: {e}")))?;
        if !matches!(url.scheme(), "http" | "https") || url.host_str().is_none() {
            return Err(invalid("base_url must be an http or https URL with a host".to_owned()));
        }
        if !url.username().is_empty() || url.password().is_some() {
            // A password in a URL ends up in logs; Auth::Basic keeps it a Secret.
            return Err(invalid("base_url must not hold credentials; use Auth::Basic".to_owned()));
        }
        if url.query().is_some() || url.fragment().is_some() {
            return Err(invalid(
                "base_url must not have a query or a fragment (paths are appended)".to_owned(),
            ));
        }
        if settings.concurrency == 0 {
            return Err(invalid("concurrency must be at least 1".to_owned()));
        }
        if settings.connect_timeout.is_zero() || settings.timeout.is_zero() {
            return Err(invalid("connect_timeout and timeout must be more than zero".to_owned()));
        }
        if settings.circuit_open > MAX_CIRCUIT_OPEN {
            return Err(invalid(format!("circuit_open must be at most {} s", MAX_CIRCUIT_OPEN.as_secs())));
        }
        if let Some(rate) = settings.rate_per_sec
            && !(rate.is_finite() && rate > 0.0)
        {
            return Err(invalid(format!("rate_per_sec must be a positive number, not {rate}")));
        }
        let idempotency = match &settings.idempotency_header {
            Some(header) => Some(
                HeaderName::from_bytes(header.trim().to_ascii_lowercase().as_bytes())
                    .map_err(|_| invalid(format!("`{header}` is not a valid idempotency header name")))?,
            ),
            None => None,
        };
        let auth = PreparedAuth::prepare(&name, &settings.auth)?;
        let client = reqwest::Client::builder()
            .use_rustls_tls()
            .connect_timeout(settings.connect_timeout)
            .timeout(settings.timeout)
            .redirect(reqwest::redirect::Policy::none())
            .user_agent(USER_AGENT_VALUE)
            .pool_max_idle_per_host(settings.concurrency)
            .tcp_nodelay(true)
            .build()
            .map_err(|e| {
                invalid(format!("the HTTP client cannot be built: {}", describe_transport_error(e)))
            })?;
        let keep = settings.keep_response_headers.iter().map(|h| h.trim().to_ascii_lowercase()).collect();
        let bucket = settings.rate_per_sec.map(|rate| Mutex::new(TokenBucket::new(rate, Instant::now())));
        Ok(Target {
            origin: origin(&url),
            base,
            client,
            auth,
            idempotency,
            keep,
            permits: Semaphore::new(settings.concurrency),
            bucket,
            circuit: Mutex::new(Circuit::new(settings.circuit_failures, settings.circuit_open)),
            settings,
        })
    }

    /// The circuit breaker, locked.
    pub(super) fn circuit(&self) -> MutexGuard<'_, Circuit> {
        lock(&self.circuit)
    }

    /// Everything of the request that can be checked before waiting or sending; an error here
    /// is permanent (the same request will never build).
    pub(super) fn prepare(&self, req: &OutgoingRequest) -> Result<Prepared, String> {
        let method = match req.method.to_ascii_uppercase().as_str() {
            "GET" => Method::GET,
            "POST" => Method::POST,
            "PUT" => Method::PUT,
            "PATCH" => Method::PATCH,
            "DELETE" => Method::DELETE,
            other => return Err(format!("method `{other}` is not one of GET, POST, PUT, PATCH, DELETE")),
        };
        if !req.path_and_query.starts_with('/') {
            return Err("the request path must start with '/'".to_owned());
        }
        let url = Url::parse(&format!("{}{}", self.base, req.path_and_query))
            .map_err(|e| format!("the request path does not make a valid URL: {e}"))?;
        if origin(&url) != self.origin {
            return Err("the request path leads to another host".to_owned());
        }
        let mut headers = HeaderMap::new();
        for (name, value) in &req.headers {
            let name = HeaderName::from_bytes(name.trim().as_bytes())
                .map_err(|_| format!("`{name}` is not a valid header name"))?;
            if CONNECTION_HEADERS.contains(&name.as_str()) {
                return Err(format!("header `{name}` is set by the HTTP client, not by the request"));
            }
            let mut value = HeaderValue::from_bytes(value.as_bytes())
                .map_err(|_| format!("the value of header `{name}` is not valid"))?;
            // Layer 2 should not put secrets here; if one does, keep it out of the audit.
            if [AUTHORIZATION, PROXY_AUTHORIZATION, COOKIE].contains(&name) {
                value.set_sensitive(true);
            }
            headers.append(name, value);
        }
        headers.entry(USER_AGENT).or_insert(HeaderValue::from_static(USER_AGENT_VALUE));
        if let Some(content_type) = &req.content_type {
            let value = HeaderValue::from_str(content_type)
                .map_err(|_| "the content type is not valid".to_owned())?;
            headers.insert(CONTENT_TYPE, value);
        }
        if let Some(header) = &self.idempotency {
            headers.insert(header.clone(), hyphenated(req));
        }
        Ok(Prepared { method, url, headers })
    }

    /// Authenticates and sends, with one resend after a 401 when the token came from OAuth2.
    /// Returns what came of it and the headers of the last request sent, redacted.
    pub(super) async fn send(
        &self,
        p: &Prepared,
        req: &OutgoingRequest,
        until: Instant,
    ) -> (Exchanged, Vec<(String, String)>) {
        let mut headers = p.headers.clone();
        let mut token_generation = None;
        match &self.auth {
            PreparedAuth::None => {}
            PreparedAuth::Static { name, value } => {
                headers.insert(name.clone(), value.clone());
            }
            PreparedAuth::StandardWebhooks { key } => {
                let id = req.delivery_id.hyphenated().to_string();
                let timestamp = chrono::Utc::now().timestamp();
                let mut signature =
                    HeaderValue::from_str(&sign_standard_webhook(key, &id, timestamp, &req.body))
                        .unwrap_or(HeaderValue::from_static(""));
                signature.set_sensitive(true);
                headers.insert(HeaderName::from_static("webhook-id"), hyphenated(req));
                headers.insert(HeaderName::from_static("webhook-timestamp"), HeaderValue::from(timestamp));
                headers.insert(HeaderName::from_static("webhook-signature"), signature);
            }
            PreparedAuth::OAuth2(source) => match self.token(source, until).await {
                Ok(token) => {
                    headers.insert(AUTHORIZATION, token.header);
                    token_generation = Some(token.generation);
                }
                Err(reason) => return (token_failure(reason), Vec::new()),
            },
        }
        let first = self.exchange(p, req, headers.clone(), until).await;
        let (PreparedAuth::OAuth2(source), Some(generation)) = (&self.auth, token_generation) else {
            return (first, redacted(&headers));
        };
        if first.answer.as_ref().is_none_or(|a| a.status != 401) {
            return (first, redacted(&headers));
        }
        // The token may have been revoked or expired early: one new token, one resend. A second
        // 401 is the target's real answer.
        tracing::info!("target answered 401: fetching a new OAuth2 token and sending again");
        source.invalidate(generation).await;
        match self.token(source, until).await {
            Ok(token) => {
                headers.insert(AUTHORIZATION, token.header);
                let second = self.exchange(p, req, headers.clone(), until).await;
                (second, redacted(&headers))
            }
            Err(reason) => (token_failure(format!("target answered 401; then {reason}")), redacted(&headers)),
        }
    }

    async fn token(&self, source: &TokenSource, until: Instant) -> Result<IssuedToken, String> {
        match tokio::time::timeout_at(until, source.get(&self.client)).await {
            Ok(token) => token,
            Err(_) => Err("timed out waiting for the OAuth2 token".to_owned()),
        }
    }

    /// One request on the wire and its answer, read up to `max_response_bytes`.
    async fn exchange(
        &self,
        p: &Prepared,
        req: &OutgoingRequest,
        headers: HeaderMap,
        until: Instant,
    ) -> Exchanged {
        let timeout = until.saturating_duration_since(Instant::now());
        if timeout.is_zero() {
            let reason = "timed out before the request was sent".to_owned();
            return Exchanged {
                answer: None,
                error: Some(reason.clone()),
                verdict: Verdict::Retry { reason, after: None },
            };
        }
        let sent = self
            .client
            .request(p.method.clone(), p.url.clone())
            .headers(headers)
            .body(req.body.clone())
            .timeout(timeout)
            .send()
            .await;
        let mut response = match sent {
            Ok(response) => response,
            Err(e) => {
                let error = if e.is_timeout() {
                    format!("no answer within {} ms: {}", timeout.as_millis(), describe_transport_error(e))
                } else {
                    describe_transport_error(e)
                };
                return Exchanged {
                    answer: None,
                    verdict: Verdict::Retry { reason: error.clone(), after: None },
                    error: Some(error),
                };
            }
        };
        let status = response.status().as_u16();
        let header_text = |name: &HeaderName| {
            response.headers().get(name).map(|v| String::from_utf8_lossy(v.as_bytes()).into_owned())
        };
        let retry_after = header_text(&RETRY_AFTER);
        let location = header_text(&LOCATION);
        let kept: Vec<(String, String)> = response
            .headers()
            .iter()
            .filter(|(name, _)| self.keep.iter().any(|k| k == name.as_str()))
            .map(|(name, value)| {
                (name.as_str().to_owned(), String::from_utf8_lossy(value.as_bytes()).into_owned())
            })
            .collect();
        let limit = self.settings.max_response_bytes;
        let mut body = Vec::new();
        let mut truncated = false;
        let mut body_error = None;
        loop {
            match response.chunk().await {
                Ok(Some(chunk)) => {
                    let room = limit - body.len();
                    if chunk.len() > room {
                        // Stop reading: the rest is not kept, and a huge answer should not keep
                        // the connection busy; the connection is dropped, not pooled.
                        body.extend_from_slice(&chunk[..room]);
                        truncated = true;
                        break;
                    }
                    body.extend_from_slice(&chunk);
                }
                Ok(None) => break,
                Err(e) => {
                    body_error = Some(describe_transport_error(e));
                    break;
                }
            }
        }
        let mut verdict =
            classify(status, retry_after.as_deref(), location.as_deref(), &body, SystemTime::now());
        if let Some(error) = &body_error {
            // The status alone is not enough: a cut answer may hide an error, and the
            // idempotency key makes the resend safe.
            verdict = Verdict::Retry {
                reason: format!("HTTP {status}, then reading the body failed: {error}"),
                after: None,
            };
        }
        Exchanged {
            answer: Some(Answer { status, headers: kept, body, truncated }),
            verdict,
            error: body_error,
        }
    }
}

fn token_failure(reason: String) -> Exchanged {
    tracing::warn!(%reason, "no OAuth2 token");
    Exchanged { answer: None, error: Some(reason.clone()), verdict: Verdict::Retry { reason, after: None } }
}

fn hyphenated(req: &OutgoingRequest) -> HeaderValue {
    // A hyphenated UUID is plain ASCII: always a valid header value.
    HeaderValue::from_str(&req.delivery_id.hyphenated().to_string()).unwrap_or(HeaderValue::from_static(""))
}

/// The headers for the audit record: names lowercase (the http crate stores them so), values
/// marked sensitive replaced.
fn redacted(headers: &HeaderMap) -> Vec<(String, String)> {
    headers
        .iter()
        .map(|(name, value)| {
            let value = if value.is_sensitive() {
                REDACTED.to_owned()
            } else {
                String::from_utf8_lossy(value.as_bytes()).into_owned()
            };
            (name.as_str().to_owned(), value)
        })
        .collect()
}

/// A transport error as text: its kind and causes, without the URL (a query string can hold a
/// key).
pub(crate) fn describe_transport_error(error: reqwest::Error) -> String {
    let error = error.without_url();
    let kind = if error.is_timeout() {
        "timed out"
    } else if error.is_connect() {
        "connection failed"
    } else if error.is_body() || error.is_decode() {
        "reading the answer failed"
    } else if error.is_request() {
        "sending the request failed"
    } else {
        "HTTP error"
    };
    let mut text = kind.to_owned();
    let mut last = String::new();
    let mut source = std::error::Error::source(&error);
    while let Some(cause) = source {
        let part = cause.to_string();
        if part != last {
            text.push_str(": ");
            text.push_str(&part);
        }
        last = part;
        source = cause.source();
    }
    text
}

/// Scheme, host and port: what a request path must not change.
fn origin(url: &Url) -> (String, Option<String>, Option<u16>) {
    (url.scheme().to_owned(), url.host_str().map(str::to_owned), url.port_or_known_default())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn requests_that_cannot_be_built_say_why() {
        let t = Target::build(TargetSettings::new("crm", "https://api.crm.example/v2")).expect("valid");
        let request = |method: &str, path: &str, headers: Vec<(&str, &str)>| OutgoingRequest {
            delivery_id: uuid::Uuid::nil(),
            method: method.to_owned(),
            path_and_query: path.to_owned(),
            headers: headers.into_iter().map(|(n, v)| (n.to_owned(), v.to_owned())).collect(),
            content_type: Some("application/json".to_owned()),
            body: Vec::new(),
        };
        let ok = t
            .prepare(&request("post", "/contacts?x=1", vec![("X-Trace", "a"), ("Authorization", "oops")]))
            .expect("builds");
        assert_eq!(ok.method, Method::POST);
        assert_eq!(ok.url.as_str(), "https://api.crm.example/v2/contacts?x=1");
        let audit = redacted(&ok.headers);
        assert!(audit.contains(&("idempotency-key".to_owned(), uuid::Uuid::nil().to_string())));
        assert!(audit.contains(&("authorization".to_owned(), "[redacted]".to_owned())));
        assert!(audit.contains(&("content-type".to_owned(), "application/json".to_owned())));
        assert!(audit.contains(&("user-agent".to_owned(), USER_AGENT_VALUE.to_owned())));
        for (method, path, headers) in [
            ("TRACE", "/x", vec![]),
            ("GET", "x", vec![]),
            ("GET", "/x", vec![("Content-Length", "5")]),
            ("GET", "/x", vec![("bad name", "v")]),
            ("GET", "/x", vec![("X-A", "line\r\nbreak")]),
        ] {
            assert!(t.prepare(&request(method, path, headers)).is_err(), "{method} {path}");
        }
    }
}
