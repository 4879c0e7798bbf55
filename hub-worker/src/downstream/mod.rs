//! The downstream direction, composed: core messages (layer 4, `just_in`) translated into a
//! third party's terms (layer 3), built into its HTTP request (layer 2), delivered with the
//! answer kept (layer 1), and a delivery receipt sent back to the core app.
//!
//! Two stages and the receipt sender (`layer4_dispatch::delivery_receipts::ReceiptSender`):
//! - [`OutboundStage`]: claims core messages under a lease, runs translation and request
//!   building outside any transaction, and writes the layer 3 and layer 2 rows (`forwarded`)
//!   and the layer 1 delivery (`just_in`) in the transaction that moves the core message to
//!   `forwarded`. A message that cannot be translated or cannot make a valid request ends
//!   `rejected` at the layer that refused it, with the reason, and its receipt is written in
//!   the same transaction.
//! - [`DeliverStage`]: claims due deliveries (per-key order kept; targets whose circuit is
//!   open skipped), sends them over HTTP outside any transaction, and writes each attempt,
//!   the delivery's new status and, for a final one, the receipt, in one transaction.
//!
//! They live here, not in a layer crate, because each writes rows of several layers in one
//! transaction (as the fused upstream fast path does).

mod deliver;
mod prepare;

pub use deliver::DeliverStage;
pub use prepare::OutboundStage;

use std::sync::Arc;

use crate::outbound::Outbound;

/// The default queue for delivery receipts when a target names none.
pub const DEFAULT_RECEIPTS_QUEUE: &str = "hub.delivery-receipts";

/// What both stages share: the declarations and where receipts go.
#[derive(Debug, Clone)]
pub struct Downstream {
    /// Targets and routes.
    pub outbound: Arc<Outbound>,
    /// The queue for receipts of targets that name none.
    pub receipts_queue: String,
}

impl Downstream {
    /// The queue `target`'s receipts go to.
    pub fn receipt_to(&self, target: &str) -> String {
        self.outbound
            .target(target)
            .and_then(|t| t.spec.receipts_to.clone())
            .unwrap_or_else(|| self.receipts_queue.clone())
    }

    /// Every queue receipts may go to (declared on start).
    pub fn receipt_queues(&self) -> Vec<String> {
        let mut q: Vec<String> =
            self.outbound.targets.iter().filter_map(|t| t.spec.receipts_to.clone()).collect();
        q.push(self.receipts_queue.clone());
        q.sort();
        q.dedup();
        q
    }
}
