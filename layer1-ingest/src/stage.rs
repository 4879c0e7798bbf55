//! Running a stage: claim a batch, process it, repeat while there is work; otherwise sleep
//! until woken (work arrived in this process) or the poll interval passes (work from other
//! processes, retries coming due).

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;

use crate::error::Error;

/// How a stage runs. Shared by every stage; each may have its own values.
#[derive(Debug, Clone)]
pub struct StageSettings {
    /// Rows claimed per transaction.
    pub batch_size: u64,
    /// Longest sleep when idle: how soon work written by another process is seen.
    pub poll_interval: Duration,
    /// Attempts before a transiently failing row becomes `dead`.
    pub max_attempts: i32,
    /// First retry delay; doubled per attempt, capped at `max_backoff`.
    pub base_backoff: Duration,
    /// Longest retry delay.
    pub max_backoff: Duration,
    /// How long a claimed batch is the claiming worker's. Integration code runs outside any
    /// transaction (see `table::claim_leased`): the claim only hides the rows from other
    /// workers until then. A worker that dies mid-batch leaves its rows to be taken again
    /// when the lease ends; a batch whose integrations take longer than this may be done
    /// twice, and only the first result is written. Longer than the slowest batch, then.
    pub lease: Duration,
}

impl Default for StageSettings {
    fn default() -> Self {
        Self {
            batch_size: 200,
            poll_interval: Duration::from_millis(500),
            max_attempts: 8,
            base_backoff: Duration::from_secs(1),
            max_backoff: Duration::from_secs(300),
            lease: Duration::from_secs(60),
        }
    }
}

impl StageSettings {
    /// The delay before retry number `attempts` (1-based): exponential, capped.
    pub fn backoff(&self, attempts: i32) -> chrono::Duration {
        let shift = attempts.clamp(1, 20) - 1;
        let delay = self.base_backoff.saturating_mul(1u32 << shift).min(self.max_backoff);
        chrono::Duration::from_std(delay).unwrap_or(chrono::Duration::MAX)
    }
}

/// A wake-up signal between stages. `notify_one` stores a permit when nobody waits, so a
/// wake-up sent while the stage is busy is not lost.
#[derive(Debug, Clone, Default)]
pub struct Wakeup(Arc<Notify>);

impl Wakeup {
    /// Wakes the stage (now, or as soon as it next waits).
    pub fn wake(&self) {
        self.0.notify_one();
    }

    /// Waits for a wake-up.
    pub async fn woken(&self) {
        self.0.notified().await;
    }
}

/// One step of the post office that works on batches.
#[async_trait]
pub trait Stage: Send + Sync + 'static {
    /// A short name for logs (`normalize`, `translate`, ...).
    fn name(&self) -> &'static str;

    /// Claims and processes one batch; returns how many rows it handled. The claim stages lease
    /// their rows in one short transaction, run integration code outside any, and write the
    /// results in another: if the task is dropped mid-batch nothing is written, and the rows
    /// are taken again when the lease ([`StageSettings::lease`]) ends.
    async fn run_batch(&self) -> Result<usize, Error>;
}

/// Runs `stage` until `cancel` fires. A batch in progress finishes first; rows not yet claimed
/// stay for the next run. `wake` wakes it; `downstream` is woken after every non-empty batch.
/// It claims again at once after any non-empty batch, and sleeps only after an empty one.
pub async fn run_stage(
    stage: Arc<dyn Stage>,
    settings: StageSettings,
    wake: Wakeup,
    downstream: Vec<Wakeup>,
    cancel: CancellationToken,
) {
    let name = stage.name();
    tracing::info!(stage = name, "stage started");
    let mut error_streak: i32 = 0;
    while !cancel.is_cancelled() {
        let began = std::time::Instant::now();
        let idle = match stage.run_batch().await {
            Ok(n) => {
                error_streak = 0;
                if n > 0 {
                    let took = began.elapsed();
                    tracing::debug!(stage = name, rows = n, micros = took.as_micros() as u64, "batch");
                    crate::metrics::batch(name, took.as_secs_f64());
                    crate::metrics::count("stage_rows", name, n as u64);
                    downstream.iter().for_each(Wakeup::wake);
                }
                // Only an empty batch means no work: a short one can still leave work behind
                // (the publisher holds back later messages of a key until the earlier is
                // confirmed), and one more claim is cheap.
                n == 0
            }
            Err(e) => {
                crate::metrics::count("stage_errors", name, 1);
                error_streak += 1;
                tracing::warn!(stage = name, error = %e, "batch failed; will retry");
                let pause = settings.backoff(error_streak).to_std().unwrap_or(settings.max_backoff);
                tokio::select! {
                    _ = tokio::time::sleep(pause.min(settings.poll_interval * 4)) => {}
                    _ = cancel.cancelled() => break,
                }
                continue;
            }
        };
        if idle {
            tokio::select! {
                _ = wake.woken() => {}
                _ = tokio::time::sleep(settings.poll_interval) => {}
                _ = cancel.cancelled() => break,
            }
        }
    }
    tracing::info!(stage = name, "stage stopped");
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_and_caps() {
        let s = StageSettings {
            base_backoff: Duration::from_secs(1),
            max_backoff: Duration::from_secs(10),
            ..Default::default()
        };
        assert_eq!(s.backoff(1).num_seconds(), 1);
        assert_eq!(s.backoff(3).num_seconds(), 4);
        assert_eq!(s.backoff(30).num_seconds(), 10);
    }
}
