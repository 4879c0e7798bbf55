//! `in-process`: tokio-backed queues inside one process, for embedding the hub in the core app
//! and for the demo. Same contract as a broker: a publish to an undeclared queue is
//! unroutable, a delivery dropped unsettled goes back to the head of its queue.

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex};

use async_trait::async_trait;
use serde::Deserialize;
use tokio::sync::Notify;

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
}

fn default_max() -> usize {
    4 * 1024 * 1024
}

impl Default for InProcessConfig {
    fn default() -> Self {
        Self { max_message_bytes: default_max() }
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
    fn push_back(&self, e: Envelope) {
        lock(&self.items).push_back(e);
        self.notify.notify_one();
    }

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
                q.push_back(Envelope {
                    headers: m.headers.clone(),
                    body: m.body.clone(),
                    redelivered: false,
                });
                Ok(())
            })
            .collect()
    }

    async fn subscribe(&self, queue: &str, _prefetch: u16) -> Result<Box<dyn Subscription>, TransportError> {
        let q = self.queue(queue).ok_or_else(|| TransportError::Unroutable(queue.to_owned()))?;
        Ok(Box::new(InProcessSubscription { queue: q }))
    }

    async fn queue_depth(&self, queue: &str) -> Result<Option<u64>, TransportError> {
        Ok(Some(self.depth(queue) as u64))
    }
}

struct InProcessSubscription {
    queue: Arc<Queue>,
}

#[async_trait]
impl Subscription for InProcessSubscription {
    async fn next(&mut self) -> Result<Delivery, TransportError> {
        loop {
            // Check before waiting: `notify_one` leaves a permit when nobody waits, so a push
            // between this check and the wait still wakes us.
            let popped = lock(&self.queue.items).pop_front();
            if let Some(e) = popped {
                let acker = InProcessAcker { queue: self.queue.clone(), envelope: Some(e.clone()) };
                return Ok(Delivery::new(e.headers, e.body, e.redelivered, Box::new(acker)));
            }
            self.queue.notify.notified().await;
        }
    }
}

struct InProcessAcker {
    queue: Arc<Queue>,
    envelope: Option<Envelope>,
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
