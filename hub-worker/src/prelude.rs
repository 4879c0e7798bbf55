//! What a core app embedding the hub needs, in one import: `use hub_worker::prelude::*;`.
//!
//! The hub itself ([`Hub`], its builder, ingest), the three places the app's own code plugs in
//! (a [`Normalizer`] per source, a [`Translator`] per record kind, a [`Router`] or a
//! [`RouteTable`]), the transports, the core app's side of the wire ([`Receiver`] and its
//! [`Handler`]), the outcome types integration code returns, and [`Value`], the JSON document
//! with exact numbers that records and core messages are made of.

pub use async_trait::async_trait;
pub use tokio_util::sync::CancellationToken;

pub use crate::{Error, Hub, HubBuilder, HubSettings, IngestMeta, Lineage, StatusCount};
pub use layer1_ingest::json::{Map, Number, Value};
pub use layer1_ingest::{
    CoreMessageId, DispatchId, Failure, IngestOutcome, Ingested, Layer, RawId, RecordId, Rejection, Status,
};
pub use layer2_normalize::{Normalizer, RawInput, Record, event_ref_at, parse_json};
pub use layer3_translate::{CoreMessage, Fidelity, RecordInput, Translation, Translator};
pub use layer4_dispatch::{
    Handled, Handler, InProcessConfig, InProcessTransport, InboundMessage, Receiver, Route, RouteTable,
    Router, Target, Transport,
};
#[cfg(feature = "rabbitmq")]
pub use layer4_dispatch::{RabbitMqConfig, RabbitMqTransport};
#[cfg(feature = "sqs")]
pub use layer4_dispatch::{SqsConfig, SqsTransport};
