//! Layer 4 of the post office: routing core messages to destination queues (the outbox),
//! publishing with broker confirms, recording receipts, and the core app's [`Receiver`].
//! The [`transport::Transport`] trait hides the broker; `in-process` is always built, RabbitMQ
//! and SQS plug in behind the same trait with the cargo features `rabbitmq` and `sqs`.

pub mod delivery_receipts;
pub mod entity;
pub mod intake;
mod ordered;
mod outage;
pub mod publish;
pub mod receipts;
pub mod receiver;
pub mod route;
pub mod route_stage;
pub mod transport;
pub mod wire;

pub use intake::{IntakeConsumer, IntakeOutcome, store_inbound};
pub use publish::{PublishSettings, PublishStage};
pub use receipts::{ReceiptConsumer, ReceiptOutcome, apply_receipts};
pub use receiver::{Handled, Handler, InboundMessage, Receiver, ReceiverStats};
pub use route::{NO_ROUTE, Route, RouteTable, Router, Routers, Target};
pub use route_stage::{RouteStage, dispatch_rows};
pub use transport::in_process::{InProcessConfig, InProcessTransport};
pub use transport::{Delivery, Headers, OutgoingMessage, Subscription, Transport, TransportError};
pub use transport::{NameRule, QueueNames};
#[cfg(feature = "rabbitmq")]
pub use transport::{RabbitMqConfig, RabbitMqTransport};
#[cfg(feature = "sqs")]
pub use transport::{SqsConfig, SqsTransport};
