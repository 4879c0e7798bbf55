//! The core app's side of the wire contract, for core apps written in Rust: consume a
//! destination queue, drop duplicates by `hub-message-id`, run the app's handler, send the
//! receipt, and only then ack the broker.

use std::collections::{HashMap, VecDeque};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use async_trait::async_trait;
use chrono::Utc;
use layer1_ingest::DispatchId;
use tokio_util::sync::CancellationToken;

use crate::transport::{Delivery, OutgoingMessage, Transport, TransportError};
use crate::wire::{HubHeaders, Receipt, ReceiptStatus};

/// A message as the core app's handler sees it.
#[derive(Debug, Clone)]
pub struct InboundMessage {
    /// The contract's headers.
    pub headers: HubHeaders,
    /// The core message, numbers exactly as the hub sent them. Read it into the app's own types
    /// with [`Value::to_typed`](layer1_ingest::json::Value::to_typed).
    pub body: layer1_ingest::json::Value,
    /// Delivered before (the hub or the broker is retrying).
    pub redelivered: bool,
}

/// The handler's verdict.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
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
/// Remembers the last `capacity` message ids with the verdict given, so a redelivery is
/// answered with the same receipt.
struct RecentIds {
    verdicts: HashMap<DispatchId, (ReceiptStatus, Option<String>)>,
    order: VecDeque<DispatchId>,
    capacity: usize,
}

impl RecentIds {
    fn get(&self, id: &DispatchId) -> Option<&(ReceiptStatus, Option<String>)> {
        self.verdicts.get(id)
    }

    fn insert(&mut self, id: DispatchId, verdict: (ReceiptStatus, Option<String>)) {
        if self.verdicts.insert(id, verdict).is_none() {
            self.order.push_back(id);
            if self.order.len() > self.capacity
                && let Some(old) = self.order.pop_front()
            {
                self.verdicts.remove(&old);
            }
        }
    }
}

#[derive(Clone, Copy)]
enum Outcome {
    Accepted = 0,
    Rejected = 1,
    Duplicate = 2,
}

fn receipt_message(
    h: &HubHeaders,
    status: ReceiptStatus,
    reason: Option<String>,
) -> Result<OutgoingMessage, serde_json::Error> {
    let receipt = Receipt { message_id: h.message_id.uuid(), status, reason, at: Utc::now() };
    Ok(OutgoingMessage {
        queue: h.receipt_to.clone(),
        dedup_id: format!("receipt-{}", h.message_id),
        ordering_key: None,
        headers: Default::default(),
        body: serde_json::to_vec(&receipt)?,
    })
}

#[async_trait]
impl crate::transport::BatchHandler for Receiver {
    async fn handle(&mut self, batch: Vec<Delivery>) {
        self.settle_batch(batch).await;
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
    ///
    /// ```
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() {
    /// use std::sync::Arc;
    /// use layer4_dispatch::{Handled, Handler, InProcessTransport, InboundMessage, Receiver};
    ///
    /// struct Orders;
    /// #[async_trait::async_trait]
    /// impl Handler for Orders {
    ///     async fn handle(&self, msg: &InboundMessage) -> Handled {
    ///         match msg.body.get("order_id") {
    ///             Some(_) => Handled::Accepted, // receipt `acknowledged`
    ///             None => Handled::Rejected("no order_id".into()), // receipt `rejected`
    ///         }
    ///     }
    /// }
    ///
    /// // The hub's transport (`Hub::transport`, or the one given to its builder).
    /// let transport = Arc::new(InProcessTransport::default());
    /// let cancel = tokio_util::sync::CancellationToken::new();
    /// let receiver = Receiver::new(transport, "core.orders", Arc::new(Orders));
    /// let running = tokio::spawn(receiver.run(cancel.clone()));
    /// // ... until the app stops:
    /// cancel.cancel();
    /// running.await.expect("receiver task");
    /// # }
    /// ```
    pub fn new(transport: Arc<dyn Transport>, queue: impl Into<String>, handler: Arc<dyn Handler>) -> Self {
        Self {
            transport,
            queue: queue.into(),
            handler,
            prefetch: 64,
            seen: RecentIds { verdicts: HashMap::new(), order: VecDeque::new(), capacity: 100_000 },
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
    /// Deliveries already waiting are taken together (up to the prefetch): handled one by one,
    /// then their receipts go out in one confirmed publish, then each is acked.
    pub async fn run(mut self, cancel: CancellationToken) {
        let (transport, queue) = (self.transport.clone(), self.queue.clone());
        let prefetch = self.prefetch;
        crate::transport::consume_batches(
            transport.as_ref(),
            &queue,
            usize::from(prefetch),
            prefetch,
            &cancel,
            &mut self,
        )
        .await;
    }

    async fn settle_batch(&mut self, batch: Vec<Delivery>) {
        let mut to_settle: Vec<(Delivery, OutgoingMessage, Outcome)> = Vec::with_capacity(batch.len());
        let mut retry = Vec::new();
        for d in batch {
            // After a retry, the rest of the batch waits too: handling a later message of the
            // same key first would break its order.
            if !retry.is_empty() {
                retry.push(d);
                continue;
            }
            let headers = match HubHeaders::parse(&d.headers) {
                Ok(h) => h,
                Err(why) => {
                    self.discard(d, &why).await;
                    continue;
                }
            };
            // Exact parsing: the core app sees every number as the hub sent it (`1E400` too).
            let body = match layer1_ingest::json::Value::parse(&d.body) {
                Ok(b) => b,
                Err(e) => {
                    self.discard(d, &format!("body is not JSON: {e}")).await;
                    continue;
                }
            };
            let id = headers.message_id;
            let (status, reason, outcome) = if let Some((status, reason)) = self.seen.get(&id) {
                // Seen: the hub did not get our receipt in time. The same receipt again, no handler.
                (*status, reason.clone(), Outcome::Duplicate)
            } else {
                let msg = InboundMessage { headers: headers.clone(), body, redelivered: d.redelivered };
                match self.handler.handle(&msg).await {
                    Handled::Accepted => (ReceiptStatus::Acknowledged, None, Outcome::Accepted),
                    Handled::Rejected(r) => (ReceiptStatus::Rejected, Some(r), Outcome::Rejected),
                    Handled::Retry(why) => {
                        tracing::info!(message_id = %id, why, "handler asked for a retry");
                        retry.push(d);
                        continue;
                    }
                }
            };
            // The handler ran: remember it now, so a redelivery (receipt lost) is not handled twice.
            self.seen.insert(id, (status, reason.clone()));
            match receipt_message(&headers, status, reason) {
                Ok(m) => to_settle.push((d, m, outcome)),
                Err(e) => {
                    tracing::warn!(message_id = %id, error = %e, "receipt not serialisable; message handed back");
                    retry.push(d);
                }
            }
        }
        let mut nack_failed = false;
        if !retry.is_empty() {
            tokio::time::sleep(Duration::from_millis(200)).await;
            // Last first: a broker that requeues at the head keeps the original order.
            for d in retry.into_iter().rev() {
                nack_failed |= d.nack(true).await.is_err();
            }
        }
        if to_settle.is_empty() {
            return;
        }
        let receipts: Vec<OutgoingMessage> = to_settle.iter().map(|(_, m, _)| m.clone()).collect();
        let sent = self.transport.publish(&receipts).await;
        let mut sent = sent.into_iter();
        let mut acked = Vec::with_capacity(to_settle.len());
        let mut counts = [0u64; 3];
        for (d, m, outcome) in to_settle {
            match sent.next().unwrap_or(Err(TransportError::Closed)) {
                Ok(()) => {
                    acked.push(d);
                    counts[outcome as usize] += 1;
                }
                Err(e) => {
                    // It comes again and is answered from `seen`, with a receipt. Given back
                    // before the acks below, so a cumulative ack does not cover it.
                    tracing::warn!(receipt = %m.dedup_id, error = %e, "receipt not sent; message handed back");
                    nack_failed |= d.nack(true).await.is_err();
                }
            }
        }
        // A cumulative ack would also settle a delivery whose nack did not reach the broker.
        let acks = if nack_failed {
            crate::transport::ack_each(acked).await
        } else {
            crate::transport::ack_all(acked).await
        };
        if let Err(e) = acks {
            tracing::warn!(queue = %self.queue, error = %e, "ack failed after the receipts were sent");
        }
        self.stats.accepted.fetch_add(counts[Outcome::Accepted as usize], Ordering::Relaxed);
        self.stats.rejected.fetch_add(counts[Outcome::Rejected as usize], Ordering::Relaxed);
        self.stats.duplicates.fetch_add(counts[Outcome::Duplicate as usize], Ordering::Relaxed);
    }

    async fn discard(&self, d: Delivery, why: &str) {
        self.stats.malformed.fetch_add(1, Ordering::Relaxed);
        tracing::warn!(queue = %self.queue, why, "malformed delivery discarded");
        let _ = d.nack(false).await;
    }
}
