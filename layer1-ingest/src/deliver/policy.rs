//! When to try again, and when not to try at all: backoff, Retry-After, the per-target circuit
//! breaker and rate limit, and the reading of an HTTP status as a verdict.
//!
//! Everything here is pure (time comes in as an argument), so the state machines are tested
//! without a clock or a network.

use std::time::{Duration, SystemTime};

use rand::Rng;
use tokio::time::Instant;

use super::Verdict;

/// Retry-After values beyond this are clamped: a target asking for a day would park a row for a
/// day without anyone noticing; after an hour the row is tried and the target can ask again.
pub(crate) const MAX_RETRY_AFTER: Duration = Duration::from_secs(3600);

/// How much of a third party's error body goes into a verdict's reason (the whole body, up to
/// `max_response_bytes`, is in the `Answer`).
const REASON_EXCERPT_CHARS: usize = 200;

/// Exponential backoff with full jitter: base * 2^(attempts-1) capped at `max`, then uniform in
/// [d/2, d].
///
/// The lower half is kept so that a retry never comes back almost at once after a failure, and
/// the random upper half spreads the retries of many rows that failed together (a target's
/// outage) instead of sending them back in one wave. `attempts` 0 is read as 1.
pub fn backoff(attempts: u32, base: Duration, max: Duration) -> Duration {
    let exponent = attempts.saturating_sub(1);
    let full = 2u32.checked_pow(exponent).and_then(|factor| base.checked_mul(factor)).unwrap_or(max).min(max);
    let hi = u64::try_from(full.as_nanos()).unwrap_or(u64::MAX);
    let lo = hi / 2;
    Duration::from_nanos(rand::rng().random_range(lo..=hi))
}

/// Retry-After: delta-seconds or an HTTP-date (RFC 9110), relative to `now`; None when
/// unparseable.
///
/// A date in the past and a negative number give zero ("now"), as RFC 9110 section 10.2.3 leaves
/// both to the client and the server clearly meant "soon". No cap is applied here; the
/// deliverer caps what it reports at one hour.
pub fn parse_retry_after(value: &str, now: SystemTime) -> Option<Duration> {
    let value = value.trim();
    let all_digits = |s: &str| !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit());
    if all_digits(value) {
        // Only overflow can fail here: a number of seconds beyond u64 means "very long".
        return Some(value.parse::<u64>().map(Duration::from_secs).unwrap_or(Duration::MAX));
    }
    if value.strip_prefix('-').is_some_and(all_digits) {
        return Some(Duration::ZERO);
    }
    let at = httpdate::parse_http_date(value).ok()?;
    Some(at.duration_since(now).unwrap_or(Duration::ZERO))
}

/// Reads a final HTTP status as a verdict.
///
/// Retried: 408 (the target timed out reading us), 409 and 425 (a conflicting or too-early
/// request that a later try can pass), 429 (throttled), every 5xx, and any status outside the
/// classes HTTP defines (a broken proxy is not a reason to give a message up). Given up: other
/// 4xx, and 3xx, because a redirect is not followed (it could send the body and the credentials
/// to another host; the target's URL is fixed in its settings instead). Retry-After is read on
/// 429 and 503 only, the two statuses RFC 9110 gives it a meaning for.
pub(crate) fn classify(
    status: u16,
    retry_after: Option<&str>,
    location: Option<&str>,
    body: &[u8],
    now: SystemTime,
) -> Verdict {
    let reason = || {
        let name = reqwest::StatusCode::from_u16(status).ok().and_then(|s| s.canonical_reason());
        let mut text = format!("HTTP {status}");
        if let Some(name) = name {
            text.push(' ');
            text.push_str(name);
        }
        let excerpt = excerpt(body);
        if !excerpt.is_empty() {
            text.push_str(": ");
            text.push_str(&excerpt);
        }
        text
    };
    let after = || retry_after.and_then(|v| parse_retry_after(v, now)).map(|d| d.min(MAX_RETRY_AFTER));
    match status {
        200..=299 => Verdict::Delivered,
        300..=399 => {
            let to = location.map(|l| format!(" to {l}")).unwrap_or_default();
            Verdict::Rejected { reason: format!("{}; redirect{to} not followed", reason()) }
        }
        429 => Verdict::Retry { reason: reason(), after: after() },
        408 | 409 | 425 => Verdict::Retry { reason: reason(), after: None },
        400..=499 => Verdict::Rejected { reason: reason() },
        503 => Verdict::Retry { reason: reason(), after: after() },
        _ => Verdict::Retry { reason: reason(), after: None },
    }
}

/// The start of a body as one line of text, for a reason string.
fn excerpt(body: &[u8]) -> String {
    let text = String::from_utf8_lossy(body);
    let mut out: String = text
        .chars()
        .take(REASON_EXCERPT_CHARS)
        .map(|c| if c.is_control() { ' ' } else { c })
        .collect::<String>()
        .trim()
        .to_owned();
    if text.chars().nth(REASON_EXCERPT_CHARS).is_some() {
        out.push_str("...");
    }
    out
}

/// Where a target's circuit breaker stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum CircuitState {
    /// Requests go through; `failures` transient failures in a row so far.
    Closed { failures: u32 },
    /// Nothing is sent until `until`.
    Open { until: Instant },
    /// One probe may go through; `probing` while it is in flight.
    HalfOpen { probing: bool },
}

/// What the breaker says to one request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Admission {
    /// Go ahead.
    Pass,
    /// Go ahead as the half-open probe: report the outcome (or `probe_abandoned`).
    Probe,
    /// Do not send; the circuit opens up for a probe in `until` (None: a probe is in flight).
    Refuse { until: Option<Duration> },
}

/// A circuit breaker: after `threshold` transient failures in a row the target is left alone
/// for `open_for`, then one probe decides. It spares a target that is down a flood of requests
/// (and our rows their attempts) and lets it recover.
#[derive(Debug)]
pub(crate) struct Circuit {
    threshold: u32,
    open_for: Duration,
    state: CircuitState,
}

impl Circuit {
    /// A closed breaker. `threshold` 0 never opens.
    pub(crate) fn new(threshold: u32, open_for: Duration) -> Circuit {
        Circuit { threshold, open_for, state: CircuitState::Closed { failures: 0 } }
    }

    /// The current state (tests and diagnostics).
    #[cfg(test)]
    pub(crate) fn state(&self) -> CircuitState {
        self.state
    }

    /// Whether a request would be refused right now, without taking the probe slot: lets a
    /// caller give up before it waits for a permit or a rate token.
    pub(crate) fn peek(&self, now: Instant) -> Option<Admission> {
        match self.state {
            CircuitState::Open { until } if now < until => {
                Some(Admission::Refuse { until: Some(until - now) })
            }
            CircuitState::HalfOpen { probing: true } => Some(Admission::Refuse { until: None }),
            _ => None,
        }
    }

    /// Time left while the circuit is open and not yet due for a probe.
    pub(crate) fn open_for_now(&self, now: Instant) -> Option<Duration> {
        match self.state {
            CircuitState::Open { until } if now < until => Some(until - now),
            _ => None,
        }
    }

    /// Asks to send one request now.
    pub(crate) fn admit(&mut self, now: Instant) -> Admission {
        match self.state {
            CircuitState::Closed { .. } => Admission::Pass,
            CircuitState::Open { until } if now < until => Admission::Refuse { until: Some(until - now) },
            CircuitState::Open { .. } | CircuitState::HalfOpen { probing: false } => {
                self.state = CircuitState::HalfOpen { probing: true };
                Admission::Probe
            }
            CircuitState::HalfOpen { probing: true } => Admission::Refuse { until: None },
        }
    }

    /// The target answered in a way that shows it works (delivered or rejected): close.
    ///
    /// Any such answer closes the circuit, also one from a request sent before it opened: the
    /// target has just shown it answers.
    pub(crate) fn succeeded(&mut self) {
        self.state = CircuitState::Closed { failures: 0 };
    }

    /// A transient failure. Returns true when this one opened the circuit.
    pub(crate) fn failed(&mut self, now: Instant) -> bool {
        let open = |c: &mut Circuit| {
            // The settings bound `open_for`; should the sum still leave the clock's range, a
            // circuit that opens for no time is better than a panic.
            let until = now.checked_add(c.open_for).unwrap_or(now);
            c.state = CircuitState::Open { until };
            true
        };
        match self.state {
            CircuitState::Closed { failures } => {
                let failures = failures.saturating_add(1);
                if self.threshold > 0 && failures >= self.threshold {
                    open(self)
                } else {
                    self.state = CircuitState::Closed { failures };
                    false
                }
            }
            // The probe (or a late request) failed: the target is still down.
            CircuitState::HalfOpen { .. } => open(self),
            // A request sent before the circuit opened: it is open already; do not extend it.
            CircuitState::Open { .. } => false,
        }
    }

    /// The probe ended without an outcome (nothing sent, or the caller dropped the future):
    /// free the slot so that the next request probes.
    pub(crate) fn probe_abandoned(&mut self) {
        if self.state == (CircuitState::HalfOpen { probing: true }) {
            self.state = CircuitState::HalfOpen { probing: false };
        }
    }
}

/// A token bucket: `rate` tokens a second, holding at most `burst` = max(1, rate).
///
/// A request takes a token, possibly on credit (the count goes negative): the deficit is the
/// queue of requests already promised a later slot, so each new one is told to wait behind
/// them, and no second lock or timer is needed.
#[derive(Debug)]
pub(crate) struct TokenBucket {
    rate: f64,
    burst: f64,
    tokens: f64,
    last: Instant,
}

impl TokenBucket {
    /// A full bucket. `rate` must be finite and positive (checked by the target's settings).
    pub(crate) fn new(rate: f64, now: Instant) -> TokenBucket {
        let burst = rate.max(1.0);
        TokenBucket { rate, burst, tokens: burst, last: now }
    }

    /// Takes one token and says how long to wait before using it; when that wait would end
    /// after `deadline`, takes nothing and says how long the wait would have been.
    pub(crate) fn take(&mut self, now: Instant, deadline: Instant) -> Result<Duration, Duration> {
        let elapsed = now.saturating_duration_since(self.last).as_secs_f64();
        self.tokens = (self.tokens + elapsed * self.rate).min(self.burst);
        self.last = self.last.max(now);
        let wait = if self.tokens >= 1.0 {
            Duration::ZERO
        } else {
            Duration::try_from_secs_f64((1.0 - self.tokens) / self.rate).unwrap_or(Duration::MAX)
        };
        if now.checked_add(wait).is_none_or(|ready| ready > deadline) {
            return Err(wait);
        }
        self.tokens -= 1.0;
        Ok(wait)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_stays_within_half_and_whole_of_the_capped_exponential() {
        let base = Duration::from_secs(1);
        let max = Duration::from_secs(60);
        for attempts in 0..=40u32 {
            let full = match attempts {
                0 | 1 => base,
                n if n <= 6 => base * 2u32.pow(n - 1),
                _ => max,
            };
            for _ in 0..50 {
                let d = backoff(attempts, base, max);
                assert!(
                    d >= full / 2 && d <= full,
                    "attempt {attempts}: {d:?} not in [{:?}, {full:?}]",
                    full / 2
                );
            }
        }
        // Huge counts and bases do not overflow.
        assert!(backoff(u32::MAX, Duration::MAX, max) <= max);
        assert_eq!(backoff(3, Duration::ZERO, max), Duration::ZERO);
    }

    #[test]
    fn backoff_is_jittered() {
        let samples: std::collections::HashSet<Duration> =
            (0..20).map(|_| backoff(5, Duration::from_secs(1), Duration::from_secs(60))).collect();
        assert!(samples.len() > 1, "twenty equal samples: no jitter");
    }

    #[test]
    fn retry_after_reads_seconds_dates_and_refuses_garbage() {
        let now = httpdate::parse_http_date("Sun, 06 Nov 1994 08:49:37 GMT").expect("valid date");
        assert_eq!(parse_retry_after("7", now), Some(Duration::from_secs(7)));
        assert_eq!(parse_retry_after(" 120 ", now), Some(Duration::from_secs(120)));
        assert_eq!(parse_retry_after("0", now), Some(Duration::ZERO));
        assert_eq!(parse_retry_after("Sun, 06 Nov 1994 08:50:37 GMT", now), Some(Duration::from_secs(60)));
        // The two obsolete formats RFC 9110 requires a recipient to accept.
        assert_eq!(parse_retry_after("Sunday, 06-Nov-94 08:49:47 GMT", now), Some(Duration::from_secs(10)));
        assert_eq!(parse_retry_after("Sun Nov  6 08:49:57 1994", now), Some(Duration::from_secs(20)));
        // In the past, or negative: now.
        assert_eq!(parse_retry_after("Sun, 06 Nov 1994 08:00:00 GMT", now), Some(Duration::ZERO));
        assert_eq!(parse_retry_after("-5", now), Some(Duration::ZERO));
        for garbage in ["", "soon", "1.5", "7s", "Sun, 32 Nov 1994 08:49:37 GMT", "-", "+3"] {
            assert_eq!(parse_retry_after(garbage, now), None, "{garbage:?}");
        }
        assert_eq!(parse_retry_after("99999999999999999999999", now), Some(Duration::MAX));
    }

    #[test]
    fn statuses_are_classified_and_retry_after_capped() {
        let now = SystemTime::now();
        let kind = |status| match classify(status, None, None, b"", now) {
            Verdict::Delivered => "delivered",
            Verdict::Rejected { .. } => "rejected",
            Verdict::Retry { .. } => "retry",
            Verdict::NotSent { .. } => "not-sent",
        };
        for (status, expected) in [
            (200, "delivered"),
            (204, "delivered"),
            (301, "rejected"),
            (400, "rejected"),
            (401, "rejected"),
            (404, "rejected"),
            (408, "retry"),
            (409, "retry"),
            (422, "rejected"),
            (425, "retry"),
            (429, "retry"),
            (500, "retry"),
            (501, "retry"),
            (503, "retry"),
            (101, "retry"),
            (799, "retry"),
        ] {
            assert_eq!(kind(status), expected, "status {status}");
        }
        let after = |status, value| match classify(status, Some(value), None, b"", now) {
            Verdict::Retry { after, .. } => after,
            other => panic!("{other:?}"),
        };
        assert_eq!(after(429, "7"), Some(Duration::from_secs(7)));
        assert_eq!(after(503, "86400"), Some(MAX_RETRY_AFTER));
        assert_eq!(after(500, "7"), None, "Retry-After is read on 429 and 503 only");
        assert_eq!(after(429, "tomorrow"), None);
        match classify(302, None, Some("https://elsewhere.example/x"), b"", now) {
            Verdict::Rejected { reason } => {
                assert!(reason.contains("https://elsewhere.example/x"), "{reason}")
            }
            other => panic!("{other:?}"),
        }
        match classify(400, None, None, b"{\"error\":\n\"bad email\"}", now) {
            Verdict::Rejected { reason } => {
                assert_eq!(reason, "HTTP 400 Bad Request: {\"error\": \"bad email\"}")
            }
            other => panic!("{other:?}"),
        }
        match classify(500, None, None, "é".repeat(500).as_bytes(), now) {
            Verdict::Retry { reason, .. } => assert!(reason.ends_with("...") && reason.len() < 500),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn circuit_opens_after_threshold_probes_once_and_closes_on_success() {
        let t0 = Instant::now();
        let open_for = Duration::from_secs(30);
        let mut c = Circuit::new(3, open_for);
        assert_eq!(c.admit(t0), Admission::Pass);
        assert!(!c.failed(t0));
        assert!(!c.failed(t0));
        // A success in between resets the count.
        c.succeeded();
        assert!(!c.failed(t0));
        assert!(!c.failed(t0));
        assert!(c.failed(t0), "the third failure in a row opens");
        assert_eq!(c.state(), CircuitState::Open { until: t0 + open_for });

        let t1 = t0 + Duration::from_secs(10);
        assert_eq!(c.admit(t1), Admission::Refuse { until: Some(Duration::from_secs(20)) });
        assert_eq!(c.peek(t1), Some(Admission::Refuse { until: Some(Duration::from_secs(20)) }));
        assert_eq!(c.open_for_now(t1), Some(Duration::from_secs(20)));
        // A late failure of a request sent before the circuit opened does not extend it.
        assert!(!c.failed(t1));
        assert_eq!(c.open_for_now(t1), Some(Duration::from_secs(20)));

        let t2 = t0 + open_for;
        assert_eq!(c.open_for_now(t2), None);
        assert_eq!(c.peek(t2), None);
        assert_eq!(c.admit(t2), Admission::Probe);
        assert_eq!(c.admit(t2), Admission::Refuse { until: None }, "one probe at a time");
        assert_eq!(c.peek(t2), Some(Admission::Refuse { until: None }));
        // A probe that fails opens the circuit again, for a whole period from now.
        assert!(c.failed(t2));
        assert_eq!(c.state(), CircuitState::Open { until: t2 + open_for });

        let t3 = t2 + open_for;
        assert_eq!(c.admit(t3), Admission::Probe);
        // An abandoned probe frees the slot for the next request.
        c.probe_abandoned();
        assert_eq!(c.state(), CircuitState::HalfOpen { probing: false });
        assert_eq!(c.admit(t3), Admission::Probe);
        c.succeeded();
        assert_eq!(c.state(), CircuitState::Closed { failures: 0 });
        assert_eq!(c.admit(t3), Admission::Pass);
        // Abandoning when no probe is out changes nothing.
        c.probe_abandoned();
        assert_eq!(c.state(), CircuitState::Closed { failures: 0 });
    }

    #[test]
    fn circuit_with_threshold_zero_never_opens() {
        let now = Instant::now();
        let mut c = Circuit::new(0, Duration::from_secs(30));
        for _ in 0..100 {
            assert!(!c.failed(now));
        }
        assert_eq!(c.admit(now), Admission::Pass);
    }

    #[test]
    fn token_bucket_allows_a_burst_then_spaces_requests() {
        let t0 = Instant::now();
        let far = t0 + Duration::from_secs(3600);
        let mut b = TokenBucket::new(4.0, t0);
        for _ in 0..4 {
            assert_eq!(b.take(t0, far), Ok(Duration::ZERO));
        }
        // Each further request waits behind the ones already promised a slot.
        assert_eq!(b.take(t0, far), Ok(Duration::from_millis(250)));
        assert_eq!(b.take(t0, far), Ok(Duration::from_millis(500)));
        // One that would have to wait past its deadline is refused and takes nothing.
        assert_eq!(b.take(t0, t0 + Duration::from_millis(700)), Err(Duration::from_millis(750)));
        assert_eq!(b.take(t0, far), Ok(Duration::from_millis(750)));
        // Time pays the debt back, and the bucket never holds more than the burst.
        let later = t0 + Duration::from_secs(100);
        for _ in 0..4 {
            assert_eq!(b.take(later, far), Ok(Duration::ZERO));
        }
        assert!(b.take(later, far).is_ok_and(|d| d > Duration::ZERO));
    }

    #[test]
    fn token_bucket_below_one_per_second_has_a_burst_of_one() {
        let t0 = Instant::now();
        let far = t0 + Duration::from_secs(3600);
        let mut b = TokenBucket::new(0.5, t0);
        assert_eq!(b.take(t0, far), Ok(Duration::ZERO));
        assert_eq!(b.take(t0, far), Ok(Duration::from_secs(2)));
        // A rate so small the wait is beyond any deadline: refused, no panic.
        let mut tiny = TokenBucket::new(1e-300, t0);
        assert_eq!(tiny.take(t0, far), Ok(Duration::ZERO));
        assert_eq!(tiny.take(t0, far), Err(Duration::MAX));
    }
}
