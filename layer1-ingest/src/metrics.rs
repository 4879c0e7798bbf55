//! Process metrics the stages, the publisher and the receipt consumer record, and the audit
//! desk renders in Prometheus text format: atomic counters and one small histogram per stage.
//! Each record call looks its counter up in a registry behind a mutex (held for one map lookup);
//! the calls come once per batch or per request, not per message, so the lock is uncontended in
//! practice. Only the increments themselves are lock-free.

use std::collections::BTreeMap;
use std::fmt::Write;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Mutex, OnceLock};

/// Upper bounds (seconds) of the batch-duration histogram buckets.
pub const BUCKETS: [f64; 10] = [0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 5.0];

#[derive(Default)]
struct Histogram {
    buckets: [AtomicU64; BUCKETS.len()],
    count: AtomicU64,
    sum_micros: AtomicU64,
}

#[derive(Default)]
struct Registry {
    batches: Mutex<BTreeMap<&'static str, &'static Histogram>>,
    counters: Mutex<BTreeMap<(&'static str, &'static str), &'static AtomicU64>>,
}

fn registry() -> &'static Registry {
    static R: OnceLock<Registry> = OnceLock::new();
    R.get_or_init(Registry::default)
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// Records one batch of `stage` that took `seconds`.
pub fn batch(stage: &'static str, seconds: f64) {
    let h: &'static Histogram =
        lock(&registry().batches).entry(stage).or_insert_with(|| Box::leak(Box::default()));
    for (i, le) in BUCKETS.iter().enumerate() {
        if seconds <= *le {
            h.buckets[i].fetch_add(1, Ordering::Relaxed);
        }
    }
    h.count.fetch_add(1, Ordering::Relaxed);
    h.sum_micros.fetch_add((seconds * 1e6) as u64, Ordering::Relaxed);
}

/// Adds `n` to the counter `name{kind="..."}` (`rows`, `errors`, `published`, `receipts`...).
pub fn count(name: &'static str, kind: &'static str, n: u64) {
    let c: &'static AtomicU64 =
        lock(&registry().counters).entry((name, kind)).or_insert_with(|| Box::leak(Box::default()));
    c.fetch_add(n, Ordering::Relaxed);
}

/// Everything recorded so far, in Prometheus text format.
pub fn render() -> String {
    let mut out = String::new();
    let batches = lock(&registry().batches).clone();
    if !batches.is_empty() {
        let _ =
            writeln!(out, "# HELP post_office_stage_batch_seconds Time per stage batch (claim to commit).");
        let _ = writeln!(out, "# TYPE post_office_stage_batch_seconds histogram");
    }
    for (stage, h) in batches {
        for (i, le) in BUCKETS.iter().enumerate() {
            let _ = writeln!(
                out,
                "post_office_stage_batch_seconds_bucket{{stage=\"{stage}\",le=\"{le}\"}} {}",
                h.buckets[i].load(Ordering::Relaxed)
            );
        }
        let count = h.count.load(Ordering::Relaxed);
        let _ =
            writeln!(out, "post_office_stage_batch_seconds_bucket{{stage=\"{stage}\",le=\"+Inf\"}} {count}");
        let _ = writeln!(
            out,
            "post_office_stage_batch_seconds_sum{{stage=\"{stage}\"}} {}",
            h.sum_micros.load(Ordering::Relaxed) as f64 / 1e6
        );
        let _ = writeln!(out, "post_office_stage_batch_seconds_count{{stage=\"{stage}\"}} {count}");
    }
    let counters = lock(&registry().counters).clone();
    let mut last = "";
    for ((name, kind), c) in counters {
        if name != last {
            let _ = writeln!(out, "# TYPE post_office_{name}_total counter");
            last = name;
        }
        let _ = writeln!(out, "post_office_{name}_total{{kind=\"{kind}\"}} {}", c.load(Ordering::Relaxed));
    }
    out
}
