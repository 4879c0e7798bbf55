//! The core app's side of the wire contract, for core apps written in Rust: consume a
//! destination queue, drop duplicates by `hub-message-id`, run the app's handler, send the
//! receipt, and only then ack the broker.

use std::collections::{HashSet, VecDeque};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use async_trait::async_trait;
use chrono::Utc;
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

use crate::transport::{Delivery, OutgoingMessage, Transport, TransportError};
use crate::wire::{HubHeaders, Receipt, ReceiptStatus};

/// A message as the core app's handler sees it.
#[derive(Debug, Clone)]
pub struct InboundMessage {
    /// The contract's headers.
    pub headers: HubHeaders,
    /// The core message.
    pub body: serde_json::Value,
    /// Delivered before (the hub or the broker is retrying).
    pub redelivered: bool,
}

/// The handler's verdict.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Handled {
    /// Processed: receipt `acknowledged`.
    Accepted,
    /// Refused for good: receipt `rejected` with the reason.
    Rejected(String),
    /// Not now (a dependency is down): no receipt, the delivery goes back to the queue.
    Retry(String),
}

/// The core app's code for one queue.
#[async_trait]
pub trait Handler: Send + Sync + 'static {
    /// Processes one message. Must be idempotent across process restarts: the duplicate filter
    /// here remembers only what this process saw.
    async fn handle(&self, msg: &InboundMessage) -> Handled;
}

/// Counters a caller can read while the receiver runs.
#[derive(Debug, Default)]
pub struct ReceiverStats {
    /// Messages handed to the handler and accepted.
    pub accepted: AtomicU64,
    /// Messages the handler rejected.
    pub rejected: AtomicU64,
    /// Duplicates dropped (receipt sent again, handler not called).
    pub duplicates: AtomicU64,
    /// Deliveries without the contract's headers or a JSON body, discarded.
    pub malformed: AtomicU64,
}

/// Remembers the last `capacity` message ids.
struct RecentIds {
    set: HashSet<Uuid>,
    order: VecDeque<Uuid>,
    capacity: usize,
}

impl RecentIds {
    fn contains(&self, id: &Uuid) -> bool {
        self.set.contains(id)
    }

    fn insert(&mut self, id: Uuid) {
        if self.set.insert(id) {
            self.order.push_back(id);
            if self.order.len() > self.capacity
                && let Some(old) = self.order.pop_front()
            {
                self.set.remove(&old);
            }
        }
    }
}

/// Consumes one queue for the core app.
pub struct Receiver {
    transport: Arc<dyn Transport>,
    queue: String,
    handler: Arc<dyn Handler>,
    prefetch: u16,
    seen: RecentIds,
    stats: Arc<ReceiverStats>,
}

impl Receiver {
    /// A receiver of `queue` running `handler`. Remembers the last 100,000 ids for duplicate
    /// dropping.
    pub fn new(transport: Arc<dyn Transport>, queue: impl Into<String>, handler: Arc<dyn Handler>) -> Self {
        Self {
            transport,
            queue: queue.into(),
            handler,
            prefetch: 64,
            seen: RecentIds { set: HashSet::new(), order: VecDeque::new(), capacity: 100_000 },
            stats: Arc::default(),
        }
    }

    /// Unsettled deliveries at a time.
    pub fn prefetch(mut self, prefetch: u16) -> Self {
        self.prefetch = prefetch.max(1);
        self
    }

    /// How many ids the duplicate filter remembers.
    pub fn remember(mut self, capacity: usize) -> Self {
        self.seen.capacity = capacity.max(1);
        self
    }

    /// The counters, to read while it runs.
    pub fn stats(&self) -> Arc<ReceiverStats> {
        self.stats.clone()
    }

    /// Consumes until `cancel` fires; resubscribes with a pause when the subscription breaks.
    pub async fn run(mut self, cancel: CancellationToken) {
        while !cancel.is_cancelled() {
            let mut sub = match self.transport.subscribe(&self.queue, self.prefetch).await {
                Ok(s) => s,
                Err(e) => {
                    tracing::warn!(queue = %self.queue, error = %e, "cannot consume; retrying");
                    tokio::select! { _ = tokio::time::sleep(Duration::from_secs(1)) => continue, _ = cancel.cancelled() => return }
                }
            };
            loop {
                let next = tokio::select! { d = sub.next() => d, _ = cancel.cancelled() => return };
                match next {
                    Ok(d) => self.one(d).await,
                    Err(e) => {
                        tracing::warn!(queue = %self.queue, error = %e, "subscription broke; resubscribing");
                        break;
                    }
                }
            }
        }
    }

    async fn one(&mut self, d: Delivery) {
        let headers = match HubHeaders::parse(&d.headers) {
            Ok(h) => h,
            Err(why) => return self.discard(d, &why).await,
        };
        let body: serde_json::Value = match serde_json::from_slice(&d.body) {
            Ok(b) => b,
            Err(e) => return self.discard(d, &format!("body is not JSON: {e}")).await,
        };
        let id = headers.message_id;
        if self.seen.contains(&id) {
            // Seen: the hub did not get our receipt in time. Send it again, skip the handler.
            self.stats.duplicates.fetch_add(1, Ordering::Relaxed);
            self.settle(d, &headers, ReceiptStatus::Acknowledged, None).await;
            return;
        }
        let msg = InboundMessage { headers, body, redelivered: d.redelivered };
        match self.handler.handle(&msg).await {
            Handled::Accepted => {
                if self.settle(d, &msg.headers, ReceiptStatus::Acknowledged, None).await {
                    self.seen.insert(id);
                    self.stats.accepted.fetch_add(1, Ordering::Relaxed);
                }
            }
            Handled::Rejected(reason) => {
                if self.settle(d, &msg.headers, ReceiptStatus::Rejected, Some(reason)).await {
                    self.seen.insert(id);
                    self.stats.rejected.fetch_add(1, Ordering::Relaxed);
                }
            }
            Handled::Retry(why) => {
                tracing::info!(message_id = %id, why, "handler asked for a retry");
                tokio::time::sleep(Duration::from_millis(200)).await;
                let _ = d.nack(true).await;
            }
        }
    }

    /// Sends the receipt, then acks. If the receipt cannot be sent the delivery goes back to
    /// the queue (the message will come again and be dropped as a duplicate, with a receipt).
    async fn settle(
        &self,
        d: Delivery,
        h: &HubHeaders,
        status: ReceiptStatus,
        reason: Option<String>,
    ) -> bool {
        let receipt = Receipt { message_id: h.message_id, status, reason, at: Utc::now() };
        let sent = match serde_json::to_vec(&receipt) {
            Ok(body) => {
                let msg = OutgoingMessage {
                    queue: h.receipt_to.clone(),
                    dedup_id: format!("receipt-{}", h.message_id),
                    ordering_key: None,
                    headers: Default::default(),
                    body,
                };
                self.transport
                    .publish(std::slice::from_ref(&msg))
                    .await
                    .pop()
                    .unwrap_or(Err(TransportError::Closed))
            }
            Err(e) => Err(TransportError::Refused(e.to_string())),
        };
        match sent {
            Ok(()) => {
                if let Err(e) = d.ack().await {
                    tracing::warn!(message_id = %h.message_id, error = %e, "ack failed after the receipt was sent");
                }
                true
            }
            Err(e) => {
                tracing::warn!(message_id = %h.message_id, error = %e, "receipt not sent; message handed back");
                let _ = d.nack(true).await;
                false
            }
        }
    }

    async fn discard(&self, d: Delivery, why: &str) {
        self.stats.malformed.fetch_add(1, Ordering::Relaxed);
        tracing::warn!(queue = %self.queue, why, "malformed delivery discarded");
        let _ = d.nack(false).await;
    }
}
