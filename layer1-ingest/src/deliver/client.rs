//! The [`Deliverer`]: one HTTP client per target, and the path of one request through the
//! target's limits, authentication and the wire.

use std::collections::HashMap;
use std::fmt;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::time::Instant;

use super::policy::{Admission, Circuit};
use super::target::{Target, lock};
use super::{Attempt, OutgoingRequest, TargetSettings, Verdict};
use crate::error::{Error, Result};

/// One per process; cheap to share (an `Arc` inside: clones share the targets, their
/// connection pools, limits, circuits and token caches).
#[derive(Clone)]
pub struct Deliverer {
    targets: Arc<HashMap<String, Target>>,
}

impl fmt::Debug for Deliverer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut names: Vec<&String> = self.targets.keys().collect();
        names.sort();
        f.debug_struct("Deliverer").field("targets", &names).finish()
    }
}

impl Deliverer {
    /// Checks the targets and builds one HTTP client per target: its timeouts, a keep-alive
    /// pool, no redirects followed (a 3xx is Rejected with the Location in the reason), user
    /// agent `post-office/<version>`, TLS by rustls with the webpki roots.
    pub fn new(targets: Vec<TargetSettings>) -> Result<Self> {
        let mut map = HashMap::with_capacity(targets.len());
        for settings in targets {
            let name = settings.name.clone();
            let target = Target::build(settings)?;
            if map.insert(name.clone(), target).is_some() {
                return Err(Error::InvalidInput(format!("target `{name}` is defined twice")));
            }
        }
        Ok(Deliverer { targets: Arc::new(map) })
    }

    /// Whether a target of that name is configured.
    pub fn has_target(&self, name: &str) -> bool {
        self.targets.contains_key(name)
    }

    /// The longest whole-request timeout of the targets (zero without targets): how long a
    /// request may be in flight, which a claim's lease must outlast.
    pub fn longest_timeout(&self) -> std::time::Duration {
        self.targets.values().map(|t| t.settings.timeout).max().unwrap_or_default()
    }

    /// Targets whose circuit is open right now and not yet due for a half-open probe: callers
    /// skip claiming their rows.
    pub fn open_circuits(&self) -> Vec<String> {
        let now = Instant::now();
        let mut open: Vec<String> = self
            .targets
            .iter()
            .filter(|(_, t)| t.circuit().open_for_now(now).is_some())
            .map(|(name, _)| name.clone())
            .collect();
        open.sort();
        open
    }

    /// Sends one delivery: waits for a concurrency permit and a rate token (but gives up with
    /// NotSent when `deadline` would pass first), checks the circuit (open => NotSent with
    /// `until` = time left; half-open => exactly one probe in flight at a time, others
    /// NotSent), adds auth, the idempotency header, Standard Webhooks headers and the
    /// content-type, sends, reads the body up to `max_response_bytes`, classifies, and updates
    /// the circuit (Delivered or Rejected count as success; Retry counts a failure; NotSent
    /// counts nothing). The request's timeout is the target's, shortened to end by `deadline`.
    /// Never panics on any answer.
    ///
    /// Cancel-safe in the sense that matters: dropping the future frees its permit and, if it
    /// was the half-open probe, the probe slot.
    #[tracing::instrument(skip_all, fields(target = %target, delivery_id = %req.delivery_id))]
    pub async fn deliver(&self, target: &str, req: &OutgoingRequest, deadline: Instant) -> Attempt {
        let called = (chrono::Utc::now(), Instant::now());
        let Some(t) = self.targets.get(target) else {
            return unsent(
                called,
                Verdict::Rejected { reason: format!("no target named `{target}` is configured") },
            );
        };
        let prepared = match t.prepare(req) {
            Ok(prepared) => prepared,
            Err(reason) => {
                tracing::warn!(%reason, "request cannot be built");
                return unsent(called, Verdict::Rejected { reason });
            }
        };
        // Before any wait: an open circuit refuses at once.
        if let Some(Admission::Refuse { until }) = t.circuit().peek(Instant::now()) {
            return unsent(called, not_sent_by_circuit(until));
        }
        let Ok(Ok(_permit)) = tokio::time::timeout_at(deadline, t.permits.acquire()).await else {
            let reason = format!(
                "all {} connection slots of the target stayed busy until the deadline",
                t.settings.concurrency
            );
            return unsent(called, Verdict::NotSent { reason, until: None });
        };
        if let Some(bucket) = &t.bucket {
            let wait = lock(bucket).take(Instant::now(), deadline);
            match wait {
                Ok(wait) if wait.is_zero() => {}
                Ok(wait) => tokio::time::sleep(wait).await,
                Err(wait) => {
                    let reason = format!(
                        "the target's rate limit leaves no slot before the deadline (next in {} ms)",
                        wait.as_millis()
                    );
                    return unsent(called, Verdict::NotSent { reason, until: Some(wait) });
                }
            }
        }
        let mut ticket = match t.circuit().admit(Instant::now()) {
            Admission::Refuse { until } => return unsent(called, not_sent_by_circuit(until)),
            Admission::Pass => CircuitTicket { circuit: &t.circuit, probe: false, done: false },
            Admission::Probe => {
                tracing::info!("circuit half-open: sending a probe");
                CircuitTicket { circuit: &t.circuit, probe: true, done: false }
            }
        };
        let start = Instant::now();
        let budget = t.settings.timeout.min(deadline.saturating_duration_since(start));
        if budget.is_zero() {
            // Dropping the ticket frees the probe slot.
            let reason = "the deadline passed before the request could be sent".to_owned();
            return unsent(called, Verdict::NotSent { reason, until: None });
        }
        let started_at = chrono::Utc::now();
        let (exchanged, request_headers) = t.send(&prepared, req, start + budget).await;
        let opened = ticket.record(&exchanged.verdict);
        if opened {
            tracing::warn!(
                failures = t.settings.circuit_failures,
                open_s = t.settings.circuit_open.as_secs(),
                "circuit opened"
            );
        }
        let elapsed = start.elapsed();
        tracing::debug!(
            verdict = exchanged.verdict.kind(),
            status = exchanged.answer.as_ref().map(|a| a.status),
            elapsed_ms = elapsed.as_millis() as u64,
            "delivery attempt"
        );
        Attempt {
            started_at,
            elapsed,
            answer: exchanged.answer,
            verdict: exchanged.verdict,
            error: exchanged.error,
            request_headers,
        }
    }
}

/// An attempt that put nothing on the wire.
fn unsent(called: (chrono::DateTime<chrono::Utc>, Instant), verdict: Verdict) -> Attempt {
    Attempt {
        started_at: called.0,
        elapsed: called.1.elapsed(),
        answer: None,
        error: None,
        verdict,
        request_headers: Vec::new(),
    }
}

fn not_sent_by_circuit(until: Option<Duration>) -> Verdict {
    let reason = match until {
        Some(left) => format!("circuit open after repeated failures; next probe in {} ms", left.as_millis()),
        None => "circuit half-open: a probe is in flight".to_owned(),
    };
    Verdict::NotSent { reason, until }
}

/// A request's standing with the circuit: reports the outcome once, and frees the probe slot
/// if the request ends without one (including when the caller drops the future).
struct CircuitTicket<'a> {
    circuit: &'a Mutex<Circuit>,
    probe: bool,
    done: bool,
}

impl CircuitTicket<'_> {
    /// Returns true when this outcome opened the circuit.
    fn record(&mut self, verdict: &Verdict) -> bool {
        self.done = true;
        let mut circuit = lock(self.circuit);
        match verdict {
            Verdict::Delivered | Verdict::Rejected { .. } => {
                circuit.succeeded();
                false
            }
            Verdict::Retry { .. } => circuit.failed(Instant::now()),
            Verdict::NotSent { .. } => {
                if self.probe {
                    circuit.probe_abandoned();
                }
                false
            }
        }
    }
}

impl Drop for CircuitTicket<'_> {
    fn drop(&mut self) {
        if !self.done && self.probe {
            lock(self.circuit).probe_abandoned();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::deliver::Auth;

    #[test]
    fn https_targets_build_without_a_process_tls_provider() {
        // rustls panics when a config is built with no provider chosen and two compiled in
        // (ring and aws-lc-rs are both in this workspace); reqwest must pick one itself.
        let mut target = TargetSettings::new("crm", "https://api.crm.example/v2/");
        target.auth = Auth::Bearer { token: "t".into() };
        let deliverer = Deliverer::new(vec![target]).expect("https target builds");
        assert!(deliverer.has_target("crm"));
        assert!(!deliverer.has_target("erp"));
        assert!(deliverer.open_circuits().is_empty());
        let t = &deliverer.targets["crm"];
        let request = t.client.post(format!("{}/contacts", t.base)).build().expect("an https request builds");
        assert_eq!(request.url().as_str(), "https://api.crm.example/v2/contacts");
    }

    #[test]
    fn bad_target_settings_are_refused() {
        let refused = |change: &dyn Fn(&mut TargetSettings)| {
            let mut target = TargetSettings::new("crm", "https://api.crm.example");
            change(&mut target);
            match Deliverer::new(vec![target]) {
                Err(Error::InvalidInput(text)) => text,
                other => panic!("{other:?}"),
            }
        };
        refused(&|t| t.base_url = "ftp://files.example".to_owned());
        refused(&|t| t.base_url = "not a url".to_owned());
        refused(&|t| t.base_url = "https://api.example/v1?key=1".to_owned());
        let text = refused(&|t| t.base_url = "https://user:hunter2@api.example".to_owned());
        assert!(!text.contains("hunter2"), "{text}");
        refused(&|t| t.concurrency = 0);
        refused(&|t| t.timeout = Duration::ZERO);
        refused(&|t| t.rate_per_sec = Some(0.0));
        refused(&|t| t.rate_per_sec = Some(f64::NAN));
        refused(&|t| t.idempotency_header = Some("bad header".to_owned()));
        refused(&|t| t.circuit_open = Duration::from_secs(10 * 86_400));
        let twice = Deliverer::new(vec![
            TargetSettings::new("a", "http://x.example"),
            TargetSettings::new("a", "http://y.example"),
        ]);
        assert!(matches!(twice, Err(Error::InvalidInput(_))));
    }
}
