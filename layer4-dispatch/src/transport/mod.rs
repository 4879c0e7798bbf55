//! The [`Transport`] trait: a queue abstraction with confirmed publishes and explicitly
//! acknowledged deliveries, which the publisher, the receipt consumer, the core-app
//! [`Receiver`](crate::Receiver) and downstream intake ([`IntakeConsumer`](crate::IntakeConsumer)) all use. One module per backend;
//! each exports its config and one public type. `in_process` is always built; `rabbitmq` and
//! `sqs` only with the cargo features of the same names (their clients are large).

use std::collections::BTreeMap;

use async_trait::async_trait;

pub mod in_process;
pub mod names;
#[cfg(feature = "rabbitmq")]
pub mod rabbitmq;
#[cfg(feature = "sqs")]
pub mod sqs;

pub use names::{NameRule, QueueNames};

#[cfg(feature = "rabbitmq")]
pub use rabbitmq::{RabbitMqConfig, RabbitMqTransport};
#[cfg(feature = "sqs")]
pub use sqs::{SqsConfig, SqsTransport};

/// Message headers (AMQP headers / SQS message attributes), string-valued.
pub type Headers = BTreeMap<String, String>;

/// A message to publish.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OutgoingMessage {
    /// The destination queue.
    pub queue: String,
    /// A stable id for broker-side deduplication (SQS FIFO) and logs: the `hub-message-id`.
    pub dedup_id: String,
    /// Messages with the same key are delivered in order (SQS FIFO group, ...).
    pub ordering_key: Option<String>,
    /// Headers.
    pub headers: Headers,
    /// The body.
    pub body: Vec<u8>,
}

/// Why a publish or a subscription failed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum TransportError {
    /// The broker refused the message (negative confirm). Retrying may help.
    #[error("broker refused the message: {0}")]
    Refused(String),
    /// No queue for the destination: the broker returned the message.
    #[error("no queue `{0}`: message unroutable")]
    Unroutable(String),
    /// The broker says the message itself is wrong (an SQS sender fault); retrying cannot help.
    #[error("broker refused the message as invalid: {0}")]
    Invalid(String),
    /// Larger than the transport carries; retrying cannot help.
    #[error("message of {size} bytes exceeds the transport's limit of {limit} bytes")]
    TooLarge {
        /// Its size.
        size: usize,
        /// The limit.
        limit: usize,
    },
    /// The connection is down or was lost mid-publish: whether the broker got it is unknown,
    /// so the message is retried (the receiver drops a duplicate).
    #[error("transport connection problem: {0}")]
    Connection(String),
    /// The queue holds as many waiting messages as it may (the in-process transport's
    /// `max_queued`): back-pressure, not the message's fault. Nothing was queued; publish
    /// again once a consumer has taken some.
    #[error("queue `{queue}` is full ({limit} messages waiting)")]
    QueueFull {
        /// The queue.
        queue: String,
        /// How many messages it holds.
        limit: usize,
    },
    /// The transport was shut down.
    #[error("transport closed")]
    Closed,
}

impl TransportError {
    /// Whether a retry can help.
    pub fn is_transient(&self) -> bool {
        !matches!(self, TransportError::TooLarge { .. } | TransportError::Invalid(_))
    }
}

/// Settles one delivery with the broker. Consumed by value, so a delivery cannot be settled
/// twice. Dropping it unsettled hands the message back to the queue.
#[async_trait]
pub trait Acker: Send {
    /// Done with it: the broker forgets the message.
    async fn ack(self: Box<Self>) -> Result<(), TransportError>;
    /// Not done: back to the queue (`requeue`) or discarded / dead-lettered.
    async fn nack(self: Box<Self>, requeue: bool) -> Result<(), TransportError>;

    /// For brokers where one ack can settle every earlier delivery of the same channel
    /// (AMQP `multiple`): an identity of that channel. `None`: every delivery is acked alone.
    fn cumulative_scope(&self) -> Option<u64> {
        None
    }

    /// Acks this delivery and every earlier unsettled one of its channel.
    async fn ack_cumulative(self: Box<Self>) -> Result<(), TransportError> {
        self.ack().await
    }

    /// Settled by a later cumulative ack: forget it without touching the broker.
    fn settled_by_later_ack(self: Box<Self>) {}
}

/// Acks `deliveries`, which must be in delivery order and include every still-unsettled
/// delivery before the last of each channel (true of a consumer that settles one batch
/// before taking the next). Where the broker allows it, each run of one channel costs a
/// single cumulative ack instead of one per delivery.
pub async fn ack_all(deliveries: Vec<Delivery>) -> Result<(), TransportError> {
    let mut first_err = None;
    let mut pending: Vec<Box<dyn Acker>> = Vec::new();
    for d in deliveries {
        let a = d.acker;
        let same_run = match (pending.last().and_then(|p| p.cumulative_scope()), a.cumulative_scope()) {
            (Some(x), Some(y)) => x == y,
            _ => false,
        };
        if !same_run && let Err(e) = flush(&mut pending).await {
            first_err.get_or_insert(e);
        }
        pending.push(a);
    }
    if let Err(e) = flush(&mut pending).await {
        first_err.get_or_insert(e);
    }
    first_err.map_or(Ok(()), Err)
}

/// Acks each delivery on its own.
pub async fn ack_each(deliveries: Vec<Delivery>) -> Result<(), TransportError> {
    let mut result = Ok(());
    for d in deliveries {
        if let Err(e) = d.ack().await {
            result = Err(e);
        }
    }
    result
}

async fn flush(run: &mut Vec<Box<dyn Acker>>) -> Result<(), TransportError> {
    let Some(last) = run.pop() else { return Ok(()) };
    if last.cumulative_scope().is_some() {
        for earlier in run.drain(..) {
            earlier.settled_by_later_ack();
        }
        return last.ack_cumulative().await;
    }
    let mut result = Ok(());
    for a in run.drain(..).chain(std::iter::once(last)) {
        if let Err(e) = a.ack().await {
            result = Err(e);
        }
    }
    result
}

/// A received message. Settle it with [`Delivery::ack`] or [`Delivery::nack`]; one dropped
/// unsettled is redelivered (never counted as done by default).
pub struct Delivery {
    /// Headers.
    pub headers: Headers,
    /// Body.
    pub body: Vec<u8>,
    /// The broker delivered it before (a consumer died or gave it back).
    pub redelivered: bool,
    acker: Box<dyn Acker>,
}

impl std::fmt::Debug for Delivery {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Delivery")
            .field("headers", &self.headers)
            .field("body_len", &self.body.len())
            .field("redelivered", &self.redelivered)
            .finish()
    }
}

impl Delivery {
    /// For backends: a delivery settled through `acker`.
    pub fn new(headers: Headers, body: Vec<u8>, redelivered: bool, acker: Box<dyn Acker>) -> Self {
        Self { headers, body, redelivered, acker }
    }

    /// Acknowledges it.
    pub async fn ack(self) -> Result<(), TransportError> {
        self.acker.ack().await
    }

    /// Gives it back (`requeue`) or discards it.
    pub async fn nack(self, requeue: bool) -> Result<(), TransportError> {
        self.acker.nack(requeue).await
    }
}

/// A stream of deliveries from one queue.
#[async_trait]
pub trait Subscription: Send {
    /// The next delivery; waits until there is one. An error means the subscription is
    /// broken and should be made again.
    async fn next(&mut self) -> Result<Delivery, TransportError>;
}

/// A message broker as the post office uses it.
#[async_trait]
pub trait Transport: Send + Sync + 'static {
    /// The backend's name (`in-process`, `rabbitmq`, `sqs`).
    fn kind(&self) -> &'static str;

    /// The largest body (plus headers) the backend carries.
    fn max_message_bytes(&self) -> usize;

    /// The physical queue behind the logical name `queue` ([`names`]), as a client outside
    /// the hub addresses it: the queue name, or on SQS the name or the URL `[transport.queues]`
    /// gives. What `hub-receipt-to` carries. Every other method takes logical names (and
    /// physical ones, which map to themselves).
    fn address(&self, queue: &str) -> Result<String, TransportError> {
        Ok(queue.to_owned())
    }

    /// Makes sure `queue` exists (declares it durable, ...). Idempotent.
    async fn ensure_queue(&self, queue: &str) -> Result<(), TransportError>;

    /// Publishes a batch. Element `i` of the answer is `Ok` only once the broker has confirmed
    /// message `i` (publisher confirm, successful send); confirms are awaited together, not
    /// one by one.
    async fn publish(&self, batch: &[OutgoingMessage]) -> Vec<Result<(), TransportError>>;

    /// Consumes `queue`, with at most `prefetch` unsettled deliveries at a time.
    async fn subscribe(&self, queue: &str, prefetch: u16) -> Result<Box<dyn Subscription>, TransportError>;

    /// How many messages wait in `queue` undelivered (not counting deliveries a consumer holds),
    /// where the backend can tell (`None`: it cannot). The publisher asks before it publishes a
    /// message again for want of a receipt: while earlier copies still wait, the receiver is
    /// behind or away, and another copy would only lengthen the queue it is waiting on.
    async fn queue_depth(&self, queue: &str) -> Result<Option<u64>, TransportError> {
        let _ = queue;
        Ok(None)
    }
}

/// What a batch consumer does with each batch (and must settle every delivery of).
#[async_trait]
pub trait BatchHandler: Send {
    /// Handles and settles `batch`.
    async fn handle(&mut self, batch: Vec<Delivery>);
}

/// Consumes `queue` in batches until `cancel` fires: waits for one delivery, takes what is
/// already waiting (up to `max`, without waiting for more) and hands the batch to `handle`,
/// which settles it. A broken subscription is made again after a pause. The receipt consumer,
/// downstream intake and the core app's `Receiver` all consume this way.
pub async fn consume_batches(
    transport: &dyn Transport,
    queue: &str,
    max: usize,
    prefetch: u16,
    cancel: &tokio_util::sync::CancellationToken,
    handler: &mut dyn BatchHandler,
) {
    use std::time::Duration;
    // Logged when it starts, summarised while it lasts, and when it ends: not once a second.
    let away = crate::outage::Outage::new("cannot consume");
    while !cancel.is_cancelled() {
        let mut sub = match transport.subscribe(queue, prefetch).await {
            Ok(s) => {
                away.cleared();
                s
            }
            Err(e) => {
                away.occurred(1, &format_args!("queue `{queue}`: {e}"));
                tokio::select! { _ = tokio::time::sleep(Duration::from_secs(1)) => continue, _ = cancel.cancelled() => return }
            }
        };
        loop {
            let first = tokio::select! { d = sub.next() => d, _ = cancel.cancelled() => return };
            let first = match first {
                Ok(d) => d,
                Err(e) => {
                    tracing::warn!(queue, error = %e, "subscription broke; resubscribing");
                    break;
                }
            };
            let mut batch = vec![first];
            while batch.len() < max.max(1) {
                // Subscriptions are cancel-safe: a delivery is never lost to this timeout.
                match tokio::time::timeout(Duration::from_millis(2), sub.next()).await {
                    Ok(Ok(d)) => batch.push(d),
                    _ => break,
                }
            }
            handler.handle(batch).await;
        }
    }
}

/// The size of a message as the transport limits count it: body plus header names and values.
pub fn message_size(m: &OutgoingMessage) -> usize {
    m.body.len() + m.headers.iter().map(|(k, v)| k.len() + v.len()).sum::<usize>()
}
