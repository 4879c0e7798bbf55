//! Downstream delivery (issue 11): sending a core-app message, already built into an HTTP
//! request by layer 2, to a third party's HTTP API, and saying what came of it.
//!
//! One [`Deliverer`] per process holds one HTTP client per target ([`TargetSettings`]) with the
//! target's timeouts, connection limit, rate limit, circuit breaker and authentication.
//! [`Deliverer::deliver`] sends one [`OutgoingRequest`] and returns an [`Attempt`]: the answer
//! (bounded), the headers sent (secrets redacted) and a [`Verdict`] the delivery stage turns
//! into a status: delivered, rejected for good, retry later, or not sent at all.
//!
//! This module does no database work and keeps no delivery state beyond the process: retries,
//! their count and their schedule ([`backoff`]) belong to the stage that calls it.

mod auth;
mod client;
mod policy;
mod target;

use std::time::Duration;

pub use auth::{Auth, Secret, sign_standard_webhook};
pub use client::Deliverer;
pub use policy::{backoff, parse_retry_after};

/// The response headers an [`Answer`] keeps unless a target says otherwise: enough to follow
/// a delivery up with the third party (request ids, the created resource's location) and to
/// see its throttling, without storing cookies or anything else a response may carry.
pub const DEFAULT_KEPT_HEADERS: &[&str] = &[
    "content-type",
    "content-length",
    "location",
    "retry-after",
    "x-request-id",
    "request-id",
    "idempotency-key",
    "ratelimit-remaining",
    "ratelimit-reset",
    "x-ratelimit-remaining",
];

/// One third-party API the hub delivers to, and how to treat it.
#[derive(Debug, Clone)]
pub struct TargetSettings {
    /// The target's name, as integration files and delivery rows refer to it.
    pub name: String,
    /// Where its API lives, e.g. `https://api.crm.example/v2`; request paths are appended. A
    /// trailing slash is ignored. http or https only; no user info, query or fragment.
    pub base_url: String,
    /// The longest to wait for a TCP (and TLS) connection. Default 5 s.
    pub connect_timeout: Duration,
    /// The longest one request may take, from sending to the last byte of the answer read.
    /// Default 30 s.
    pub timeout: Duration,
    /// The most of an answer's body that is read and kept; the rest is not read. Default 1 MiB.
    pub max_response_bytes: usize,
    /// The most requests in flight to this target from this process (at least 1). Default 8.
    pub concurrency: usize,
    /// Requests per second (a token bucket with a burst of max(1, rate)); None: unlimited.
    pub rate_per_sec: Option<f64>,
    /// Transient failures in a row that open the circuit; 0 never opens it. Default 5.
    pub circuit_failures: u32,
    /// How long an open circuit sends nothing before one probe may try. Default 30 s.
    pub circuit_open: Duration,
    /// The header that carries the delivery id, so that a target that supports idempotency
    /// keys applies a retried request once. Default `Idempotency-Key`; None sends none.
    pub idempotency_header: Option<String>,
    /// How requests are authenticated.
    pub auth: Auth,
    /// Response headers recorded in the [`Answer`] (any case; compared lowercase). Default
    /// [`DEFAULT_KEPT_HEADERS`].
    pub keep_response_headers: Vec<String>,
}

impl TargetSettings {
    /// A target with the defaults documented on each field and no authentication.
    pub fn new(name: impl Into<String>, base_url: impl Into<String>) -> Self {
        TargetSettings {
            name: name.into(),
            base_url: base_url.into(),
            connect_timeout: Duration::from_secs(5),
            timeout: Duration::from_secs(30),
            max_response_bytes: 1024 * 1024,
            concurrency: 8,
            rate_per_sec: None,
            circuit_failures: 5,
            circuit_open: Duration::from_secs(30),
            idempotency_header: Some("Idempotency-Key".to_owned()),
            auth: Auth::None,
            keep_response_headers: DEFAULT_KEPT_HEADERS.iter().map(|h| (*h).to_owned()).collect(),
        }
    }
}

/// One request to send, as layer 2 built it.
#[derive(Debug, Clone)]
pub struct OutgoingRequest {
    /// Stable across retries and restarts: the idempotency key's value and the Standard
    /// Webhooks `webhook-id`, so that the target can recognise a retry.
    pub delivery_id: uuid::Uuid,
    /// GET, POST, PUT, PATCH or DELETE (any case).
    pub method: String,
    /// Already percent-encoded, starting with '/'; appended to the target's base URL.
    pub path_and_query: String,
    /// Headers layer 2 built (never secrets: those come from the target's [`Auth`]). The
    /// connection headers (Host, Content-Length, Transfer-Encoding, Connection...) are the
    /// client's and refused here; the target's authentication, idempotency and signature
    /// headers replace any of the same name.
    pub headers: Vec<(String, String)>,
    /// The body's Content-Type, if any; it replaces a Content-Type in `headers`.
    pub content_type: Option<String>,
    /// The body, sent as is.
    pub body: Vec<u8>,
}

/// What the target answered.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Answer {
    /// The HTTP status.
    pub status: u16,
    /// The kept headers (see [`TargetSettings::keep_response_headers`]), names lowercase, in
    /// the order received.
    pub headers: Vec<(String, String)>,
    /// The body, at most `max_response_bytes` of it.
    pub body: Vec<u8>,
    /// Whether the body was longer and cut at `max_response_bytes`.
    pub truncated: bool,
}

impl Answer {
    /// The first kept header of that name (any case).
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.iter().find(|(n, _)| n.eq_ignore_ascii_case(name)).map(|(_, v)| v.as_str())
    }
}

/// What a delivery attempt means for the message.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum Verdict {
    /// 2xx: the target has it.
    Delivered,
    /// Given up for good: a 4xx other than 408, 409, 425 and 429, a 3xx (redirects are not
    /// followed), or a request that cannot be built (bad URL, bad header, unknown target).
    Rejected {
        /// What the target said (status and the start of its body), or what was wrong.
        reason: String,
    },
    /// Try again later: 5xx, 408, 409, 425, 429, timeouts, connection and body read errors,
    /// OAuth2 token endpoint failures.
    Retry {
        /// What happened.
        reason: String,
        /// The target's Retry-After (on 429 and 503), at most one hour.
        after: Option<Duration>,
    },
    /// Nothing went on the wire: the circuit is open, or the caller's deadline would pass
    /// before a connection slot or a rate token is free. Not an attempt: the message's attempt
    /// count should not grow.
    NotSent {
        /// Why.
        reason: String,
        /// When sending may work again, if known: the time left of an open circuit, or the
        /// wait for the next rate token.
        until: Option<Duration>,
    },
}

impl Verdict {
    /// A short, stable name for logs and metrics.
    pub fn kind(&self) -> &'static str {
        match self {
            Verdict::Delivered => "delivered",
            Verdict::Rejected { .. } => "rejected",
            Verdict::Retry { .. } => "retry",
            Verdict::NotSent { .. } => "not-sent",
        }
    }

    /// Whether this counts as an attempt (everything but [`Verdict::NotSent`]).
    pub fn is_attempt(&self) -> bool {
        !matches!(self, Verdict::NotSent { .. })
    }
}

/// The record of one call to [`Deliverer::deliver`], for the audit trail.
#[derive(Debug, Clone)]
pub struct Attempt {
    /// When the request started: after the waits for a connection slot and a rate token,
    /// before the OAuth2 token (if any) and the request. For a request that was not sent, when
    /// the call began.
    pub started_at: chrono::DateTime<chrono::Utc>,
    /// From `started_at` to the verdict (for one not sent: the time spent before giving up).
    pub elapsed: Duration,
    /// None when no HTTP answer came (timeout, connection error, not sent).
    pub answer: Option<Answer>,
    /// What it means.
    pub verdict: Verdict,
    /// The transport error, if any (no secrets, no URL).
    pub error: Option<String>,
    /// The headers the deliverer set (layer 2's, authentication, idempotency key, Standard
    /// Webhooks, content-type, user-agent), names lowercase, with authentication and
    /// signature values replaced by `"[redacted]"`. The HTTP library adds host and
    /// content-length. Empty when nothing was sent.
    pub request_headers: Vec<(String, String)>,
}
