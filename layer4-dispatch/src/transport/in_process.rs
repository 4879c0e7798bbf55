//! `in-process`: tokio-backed queues inside one process, for embedding the hub in the core app
//! and for the demo. Same contract as a broker: a publish to an undeclared queue is
//! unroutable, a delivery dropped unsettled goes back to the head of its queue, a subscription
//! holds at most `prefetch` unsettled deliveries, and a queue holds at most `max_queued`
//! waiting messages (a publish to a full one is refused with [`TransportError::QueueFull`], as
//! a broker's `max-length` with `reject-publish` does): memory stays bounded when nobody
//! consumes, and the publisher treats the refusal as back-pressure.

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex};

use async_trait::async_trait;
use serde::Deserialize;
use tokio::sync::{Notify, OwnedSemaphorePermit, Semaphore};

use super::{
    Acker, Delivery, Headers, OutgoingMessage, Subscription, Transport, TransportError, message_size,
};

/// Settings of the in-process transport.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct InProcessConfig {
    /// Largest message carried, in bytes.
    #[serde(default = "default_max")]
    pub max_message_bytes: usize,
    /// Messages one queue holds waiting for a consumer (deliveries a consumer holds unsettled
    /// not counted). A publish to a full queue is refused with [`TransportError::QueueFull`];
    /// a message handed back by a consumer always goes back, full or not (it was counted once).
    #[serde(default = "default_max_queued")]
    pub max_queued: usize,
}

fn default_max() -> usize {
    4 * 1024 * 1024
}

/// Enough for bursts between a publisher and a receiver in one process; small enough that a
/// queue nobody consumes stays a few tens of megabytes at most.
pub const DEFAULT_MAX_QUEUED: usize = 10_000;

fn default_max_queued() -> usize {
    DEFAULT_MAX_QUEUED
}

impl Default for InProcessConfig {
    fn default() -> Self {
        Self { max_message_bytes: default_max(), max_queued: default_max_queued() }
    }
}

#[derive(Debug, Clone)]
struct Envelope {
    headers: Headers,
    body: Vec<u8>,
    redelivered: bool,
}

#[derive(Default)]
struct Queue {
    items: Mutex<VecDeque<Envelope>>,
    notify: Notify,
}

impl Queue {
    fn push_front(&self, e: Envelope) {
        lock(&self.items).push_front(e);
        self.notify.notify_one();
    }
}

/// A poisoned lock only means another thread panicked while holding it; the queue itself is
/// still consistent (every critical section is a single push or pop).
fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// Queues in this process.
#[derive(Default)]
pub struct InProcessTransport {
    queues: Mutex<HashMap<String, Arc<Queue>>>,
    config: InProcessConfig,
}

impl InProcessTransport {
    /// A transport with these settings.
    pub fn new(config: InProcessConfig) -> Self {
        Self { queues: Mutex::default(), config }
    }

    fn queue(&self, name: &str) -> Option<Arc<Queue>> {
        lock(&self.queues).get(name).cloned()
    }

    /// How many messages wait in `queue` (unsettled deliveries not counted).
    pub fn depth(&self, queue: &str) -> usize {
        self.queue(queue).map(|q| lock(&q.items).len()).unwrap_or(0)
    }
}

#[async_trait]
impl Transport for InProcessTransport {
    fn kind(&self) -> &'static str {
        "in-process"
    }

    fn max_message_bytes(&self) -> usize {
        self.config.max_message_bytes
    }

    async fn ensure_queue(&self, queue: &str) -> Result<(), TransportError> {
        lock(&self.queues).entry(queue.to_owned()).or_default();
        Ok(())
    }

    async fn publish(&self, batch: &[OutgoingMessage]) -> Vec<Result<(), TransportError>> {
        batch
            .iter()
            .map(|m| {
                let size = message_size(m);
                if size > self.config.max_message_bytes {
                    return Err(TransportError::TooLarge { size, limit: self.config.max_message_bytes });
                }
                let q = self.queue(&m.queue).ok_or_else(|| TransportError::Unroutable(m.queue.clone()))?;
                let limit = self.config.max_queued;
                let envelope =
                    Envelope { headers: m.headers.clone(), body: m.body.clone(), redelivered: false };
                // Checked and pushed under one lock: concurrent publishers cannot overfill it.
                let mut items = lock(&q.items);
                if items.len() >= limit {
                    return Err(TransportError::QueueFull { queue: m.queue.clone(), limit });
                }
                items.push_back(envelope);
                drop(items);
                q.notify.notify_one();
                Ok(())
            })
            .collect()
    }

    async fn subscribe(&self, queue: &str, prefetch: u16) -> Result<Box<dyn Subscription>, TransportError> {
        let q = self.queue(queue).ok_or_else(|| TransportError::Unroutable(queue.to_owned()))?;
        // As the RabbitMQ backend does (`basic.qos` with at least 1): 0 is not "unlimited".
        let window = Arc::new(Semaphore::new(usize::from(prefetch.max(1))));
        Ok(Box::new(InProcessSubscription { queue: q, window }))
    }

    async fn queue_depth(&self, queue: &str) -> Result<Option<u64>, TransportError> {
        Ok(Some(self.depth(queue) as u64))
    }
}

struct InProcessSubscription {
    queue: Arc<Queue>,
    /// One permit per delivery the consumer may hold unsettled (`prefetch`); each delivery's
    /// acker holds one until it is settled or dropped.
    window: Arc<Semaphore>,
}

#[async_trait]
impl Subscription for InProcessSubscription {
    async fn next(&mut self) -> Result<Delivery, TransportError> {
        // A free place in the window first, then a message. Cancel-safe: a permit dropped
        // before a message was taken only frees the place again, and once a message is
        // popped nothing is awaited before it is returned.
        let slot = self.window.clone().acquire_owned().await.map_err(|_| TransportError::Closed)?;
        loop {
            // Check before waiting: `notify_one` leaves a permit when nobody waits, so a push
            // between this check and the wait still wakes us.
            let popped = lock(&self.queue.items).pop_front();
            if let Some(e) = popped {
                let acker =
                    InProcessAcker { queue: self.queue.clone(), envelope: Some(e.clone()), _slot: slot };
                return Ok(Delivery::new(e.headers, e.body, e.redelivered, Box::new(acker)));
            }
            self.queue.notify.notified().await;
        }
    }
}

struct InProcessAcker {
    queue: Arc<Queue>,
    envelope: Option<Envelope>,
    /// The delivery's place in its subscription's prefetch window, freed when the acker goes
    /// (after `Drop` has put an unsettled message back, so the freed place can take it again).
    _slot: OwnedSemaphorePermit,
}

#[async_trait]
impl Acker for InProcessAcker {
    async fn ack(mut self: Box<Self>) -> Result<(), TransportError> {
        self.envelope = None;
        Ok(())
    }

    async fn nack(mut self: Box<Self>, requeue: bool) -> Result<(), TransportError> {
        if let Some(mut e) = self.envelope.take().filter(|_| requeue) {
            // Back at the head, where it was: as a broker requeues.
            e.redelivered = true;
            self.queue.push_front(e);
        }
        Ok(())
    }
}

impl Drop for InProcessAcker {
    /// Unsettled at drop (the consumer died): back to the head of the queue, as a broker does
    /// when a channel closes with unacked deliveries.
    fn drop(&mut self) {
        if let Some(mut e) = self.envelope.take() {
            e.redelivered = true;
            self.queue.push_front(e);
        }
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    fn msg(queue: &str, n: usize) -> OutgoingMessage {
        OutgoingMessage {
            queue: queue.into(),
            dedup_id: format!("m{n}"),
            ordering_key: None,
            headers: Headers::new(),
            body: format!("{n}").into_bytes(),
        }
    }

    async fn publish_one(t: &InProcessTransport, m: OutgoingMessage) -> Result<(), TransportError> {
        t.publish(&[m]).await.pop().unwrap_or(Err(TransportError::Closed))
    }

    /// Whether `next` delivers within a short while.
    async fn delivers(sub: &mut Box<dyn Subscription>) -> Option<Delivery> {
        tokio::time::timeout(Duration::from_millis(100), sub.next()).await.ok().and_then(Result::ok)
    }

    #[tokio::test]
    async fn a_full_queue_refuses_publishes_until_a_consumer_takes_some() {
        let t = InProcessTransport::new(InProcessConfig { max_queued: 3, ..Default::default() });
        t.ensure_queue("q").await.expect("queue");
        let batch: Vec<_> = (0..5).map(|n| msg("q", n)).collect();
        let results = t.publish(&batch).await;
        assert!(results[..3].iter().all(Result::is_ok), "{results:?}");
        for r in &results[3..] {
            assert_eq!(r, &Err(TransportError::QueueFull { queue: "q".into(), limit: 3 }));
            assert!(r.as_ref().err().is_some_and(TransportError::is_transient), "back-pressure is retried");
        }
        assert_eq!(t.depth("q"), 3);

        // A delivery taken makes room; one handed back goes back even though the queue is full
        // again (it was counted once, and must not be lost).
        let mut sub = t.subscribe("q", 10).await.expect("subscribe");
        let first = delivers(&mut sub).await.expect("a delivery");
        assert_eq!(first.body, b"0");
        publish_one(&t, msg("q", 5)).await.expect("room for one");
        assert!(matches!(publish_one(&t, msg("q", 6)).await, Err(TransportError::QueueFull { .. })));
        first.nack(true).await.expect("nack");
        assert_eq!(t.depth("q"), 4, "a requeue is never refused");
        let again = delivers(&mut sub).await.expect("the requeued delivery");
        assert!(again.redelivered);
        assert_eq!(again.body, b"0", "back at the head");
    }

    #[tokio::test]
    async fn a_subscription_holds_at_most_prefetch_unsettled_deliveries() {
        let t = InProcessTransport::default();
        t.ensure_queue("q").await.expect("queue");
        let batch: Vec<_> = (0..5).map(|n| msg("q", n)).collect();
        assert!(t.publish(&batch).await.iter().all(Result::is_ok));
        let mut sub = t.subscribe("q", 2).await.expect("subscribe");
        let a = delivers(&mut sub).await.expect("first");
        let b = delivers(&mut sub).await.expect("second");
        assert!(delivers(&mut sub).await.is_none(), "a third while two are unsettled");
        assert_eq!(t.depth("q"), 3, "the waiting next() took nothing");
        a.ack().await.expect("ack");
        let c = delivers(&mut sub).await.expect("a place was freed by the ack");
        assert_eq!(c.body, b"2");
        assert!(delivers(&mut sub).await.is_none());
        b.nack(false).await.expect("nack");
        let d = delivers(&mut sub).await.expect("a place was freed by the nack");
        assert!(delivers(&mut sub).await.is_none());
        // Dropped unsettled: back to the queue, and its place is free for it.
        drop(d);
        let d = delivers(&mut sub).await.expect("the dropped delivery again");
        assert!(d.redelivered);
        assert_eq!(d.body, b"3");
        drop((c, d));
        // Another subscription has a window of its own.
        let mut other = t.subscribe("q", 1).await.expect("subscribe");
        assert!(delivers(&mut other).await.is_some());
    }
}
