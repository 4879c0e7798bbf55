//! Waiting for the database and the transport at start-up.
//!
//! A worker started while PostgreSQL or the broker is down (a host reboot, a deploy that
//! starts everything at once) should not exit: a running worker already survives both going
//! away, and starting should too. [`crate::HubBuilder::wait_for_dependencies`] makes
//! [`crate::HubBuilder::build`] retry what cannot be reached with capped exponential backoff,
//! report the state in a [`Progress`] (which `/readyz` shows while the hub starts), and give up
//! only when told to stop. Anything else (a wrong password, a database that does not exist, a
//! failed migration) still fails at once: waiting would not mend it.

use std::future::Future;
use std::sync::Arc;
use std::sync::atomic::{AtomicU8, Ordering};
use std::time::{Duration, Instant};

use sea_orm::{DbErr, RuntimeErr};
use tokio_util::sync::CancellationToken;

use crate::error::{Error, Result};

/// How [`crate::HubBuilder::build`] waits for unreachable dependencies.
#[derive(Debug, Clone)]
pub struct Wait {
    /// Pause after the first failed attempt; doubled after each further one.
    pub first_delay: Duration,
    /// Longest pause between attempts.
    pub max_delay: Duration,
    /// While a dependency stays unreachable, a reminder is logged this often.
    pub remind_every: Duration,
    /// Cancelled: stop waiting; `build` returns [`Error::Stopped`].
    pub cancel: CancellationToken,
    /// Where the state of each dependency is published.
    pub progress: Progress,
}

impl Wait {
    /// 0.5 s doubling to 30 s, a reminder a minute, stopped by `cancel`.
    pub fn new(cancel: CancellationToken) -> Self {
        Self {
            first_delay: Duration::from_millis(500),
            max_delay: Duration::from_secs(30),
            remind_every: Duration::from_secs(60),
            cancel,
            progress: Progress::default(),
        }
    }
}

/// One dependency of a starting hub.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum Dependency {
    /// The database (a connection made; migrations run after the wait).
    Database,
    /// The transport (every queue the hub uses declared).
    Transport,
}

impl Dependency {
    /// `database` or `transport`.
    pub fn name(self) -> &'static str {
        match self {
            Dependency::Database => "database",
            Dependency::Transport => "transport",
        }
    }

    fn index(self) -> usize {
        match self {
            Dependency::Database => 0,
            Dependency::Transport => 1,
        }
    }
}

/// Where a dependency stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum State {
    /// Not tried yet, or the first attempt is under way.
    Checking,
    /// The last attempt failed for want of an answer; retrying.
    Unreachable,
    /// Reached.
    Up,
}

/// The state of each dependency of a starting hub, shared with whoever reports readiness.
/// Cheap to clone; all clones are the same.
#[derive(Debug, Clone, Default)]
pub struct Progress(Arc<[AtomicU8; 2]>);

impl Progress {
    /// Where `d` stands.
    pub fn state(&self, d: Dependency) -> State {
        match self.0[d.index()].load(Ordering::Relaxed) {
            1 => State::Unreachable,
            2 => State::Up,
            _ => State::Checking,
        }
    }

    fn set(&self, d: Dependency, s: State) {
        let v = match s {
            State::Checking => 0,
            State::Unreachable => 1,
            State::Up => 2,
        };
        self.0[d.index()].store(v, Ordering::Relaxed);
    }

    /// The dependencies not reached yet, database first.
    pub fn missing(&self) -> Vec<Dependency> {
        [Dependency::Database, Dependency::Transport]
            .into_iter()
            .filter(|d| self.state(*d) != State::Up)
            .collect()
    }
}

/// Whether `e` means "nobody answered" (worth waiting for) rather than "the answer was no".
pub fn is_unreachable(e: &Error) -> bool {
    match e {
        Error::Db(e) | Error::Base(layer1_ingest::Error::Db(e)) => db_unreachable(e),
        Error::Transport(layer4_dispatch::TransportError::Connection(_)) => true,
        _ => false,
    }
}

fn db_unreachable(e: &DbErr) -> bool {
    use sea_orm::sqlx::Error as Sqlx;
    match e {
        // No connection to be had from the pool in time: the server is away.
        DbErr::ConnectionAcquire(_) => true,
        DbErr::Conn(RuntimeErr::SqlxError(s))
        | DbErr::Exec(RuntimeErr::SqlxError(s))
        | DbErr::Query(RuntimeErr::SqlxError(s)) => {
            match s.as_ref() {
                // sqlx retries a refused connection until its acquire timeout and then says
                // PoolTimedOut; other socket errors (reset, unreachable host) come as Io.
                Sqlx::Io(_) | Sqlx::PoolTimedOut => true,
                // SQLSTATE class 08 (connection exception) and 57P01-57P03 (shutting down,
                // crashed, "the database system is starting up"): the server is not there yet.
                // Wrong passwords (28P01), missing databases (3D000) and the rest are answers.
                Sqlx::Database(d) => d.code().is_some_and(|c| c.starts_with("08") || c.starts_with("57P")),
                _ => false,
            }
        }
        _ => false,
    }
}

/// The log and backoff bookkeeping of one dependency.
struct Tracker {
    dep: Dependency,
    attempts: u32,
    down_since: Option<Instant>,
    last_log: Instant,
}

impl Tracker {
    fn new(dep: Dependency) -> Self {
        Self { dep, attempts: 0, down_since: None, last_log: Instant::now() }
    }

    /// Records a failed attempt; logs when the state changes (first failure), and a reminder
    /// now and then, not once per attempt.
    fn failed(&mut self, w: &Wait, e: &Error, next: Duration) {
        let name = self.dep.name();
        let attempt = self.attempts;
        let next_secs = next.as_secs_f64();
        match self.down_since {
            None => {
                self.down_since = Some(Instant::now());
                self.last_log = Instant::now();
                tracing::warn!(error = %e, "{name} unreachable, retrying (attempt {attempt}, next in {next_secs:.1}s)");
            }
            Some(since) if self.last_log.elapsed() >= w.remind_every => {
                self.last_log = Instant::now();
                let secs = since.elapsed().as_secs();
                tracing::warn!(
                    error = %e,
                    "{name} still unreachable after {attempt} attempts over {secs}s, retrying (next in {next_secs:.1}s)"
                );
            }
            Some(_) => {}
        }
        w.progress.set(self.dep, State::Unreachable);
    }

    fn up(&mut self, w: &Wait) {
        if let Some(since) = self.down_since.take() {
            let secs = since.elapsed().as_secs();
            tracing::warn!("{} reachable after {} attempts over {secs}s", self.dep.name(), self.attempts);
        }
        w.progress.set(self.dep, State::Up);
    }
}

/// Runs `database` and `transport` until each has succeeded once, side by side, retrying the
/// ones that fail for want of an answer (see [`is_unreachable`]) with the backoff `w` sets.
/// Any other failure is returned at once; so is [`Error::Stopped`] when `w.cancel` fires.
pub async fn reach<D, DF, T, TF, X>(w: &Wait, mut database: D, mut transport: T) -> Result<X>
where
    D: FnMut() -> DF,
    DF: Future<Output = Result<X>>,
    T: FnMut() -> TF,
    TF: Future<Output = Result<()>>,
{
    let mut db: Option<X> = None;
    let mut queues = false;
    let mut trackers = [Tracker::new(Dependency::Database), Tracker::new(Dependency::Transport)];
    let mut delay = w.first_delay;
    loop {
        let db_attempt = async {
            if db.is_some() {
                return None;
            }
            Some(database().await)
        };
        let transport_attempt = async {
            if queues {
                return None;
            }
            Some(transport().await)
        };
        // An attempt can take seconds (the pool's acquire timeout): Ctrl-C must not wait for it.
        let (d, t) = tokio::select! {
            r = async { tokio::join!(db_attempt, transport_attempt) } => r,
            () = w.cancel.cancelled() => return Err(stopped(&w.progress)),
        };
        let [db_track, transport_track] = &mut trackers;
        if let Some(r) = d {
            db_track.attempts += 1;
            match r {
                Ok(x) => {
                    db_track.up(w);
                    db = Some(x);
                }
                Err(e) if is_unreachable(&e) => db_track.failed(w, &e, delay),
                // The answer was "no": waiting will not change it.
                Err(e) => return Err(e),
            }
        }
        if let Some(r) = t {
            transport_track.attempts += 1;
            match r {
                Ok(()) => {
                    transport_track.up(w);
                    queues = true;
                }
                Err(e) if is_unreachable(&e) => transport_track.failed(w, &e, delay),
                Err(e) => return Err(e),
            }
        }
        if queues && let Some(x) = db.take() {
            return Ok(x);
        }
        tokio::select! {
            () = tokio::time::sleep(delay) => {}
            () = w.cancel.cancelled() => return Err(stopped(&w.progress)),
        }
        delay = (delay * 2).min(w.max_delay);
    }
}

fn stopped(p: &Progress) -> Error {
    let missing: Vec<&str> = p.missing().into_iter().map(Dependency::name).collect();
    if missing.is_empty() {
        return Error::Stopped("stopped while starting".into());
    }
    Error::Stopped(format!("stopped while waiting for the {}", missing.join(" and the ")))
}
