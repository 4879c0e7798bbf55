//! `rabbitmq` (lapin): durable queues declared per destination (quorum queues as an option),
//! persistent messages, mandatory publishing with publisher confirms pipelined across a batch,
//! manual acks with prefetch, and reconnection when the broker goes away. Logical queue names
//! map to RabbitMQ queue names by [`super::names`] (as they are, unless `[transport.queues]`
//! names another).

use std::collections::BTreeSet;
use std::sync::Arc;
use std::sync::Mutex as StdMutex;
use std::time::Duration;

use async_trait::async_trait;
use futures::StreamExt;
use lapin::options::{
    BasicAckOptions, BasicConsumeOptions, BasicNackOptions, BasicPublishOptions, BasicQosOptions,
    ConfirmSelectOptions, QueueDeclareOptions,
};

use lapin::types::{AMQPValue, FieldTable, LongString, ShortString};
use lapin::{BasicProperties, Channel, Confirmation, Connection, ConnectionProperties, Consumer};
use serde::Deserialize;
use tokio::sync::Mutex;

use super::names::{self, NameRule, QueueNames};
use super::{
    Acker, Delivery, Headers, OutgoingMessage, Subscription, Transport, TransportError, message_size,
};

/// Settings of the RabbitMQ transport.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RabbitMqConfig {
    /// AMQP URL, `amqp://user:password@host:5672/%2f`. Never logged.
    pub url: String,
    /// Declare queues as quorum queues (replicated, Raft) instead of classic durable queues.
    /// A queue's type cannot change once declared: the broker refuses a mismatch.
    #[serde(default)]
    pub quorum_queues: bool,
    /// Largest message carried, in bytes. RabbitMQ's own limit is `max_message_size`
    /// (128 MiB by default); large messages hurt every consumer of the queue, so stay far below.
    #[serde(default = "default_max")]
    pub max_message_bytes: usize,
    /// Seconds to wait for a batch's confirms before treating the connection as broken.
    #[serde(default = "default_confirm_timeout")]
    pub confirm_timeout_secs: u64,
    /// Seconds to wait for a connection to open.
    #[serde(default = "default_connect_timeout")]
    pub connect_timeout_secs: u64,
    /// Delete a queue after it has been unused (no consumer, no declaration) this long, in
    /// milliseconds (`x-expires`). For short-lived destinations (tests, benchmarks); leave it out
    /// for real ones.
    #[serde(default)]
    pub queue_expires_ms: Option<u32>,
    /// Logical queue name -> RabbitMQ queue name. Names without an entry are used as they are.
    #[serde(default, deserialize_with = "names::deserialize_queues")]
    pub queues: std::collections::BTreeMap<String, String>,
    /// The connection's name as the broker shows it (management UI, `rabbitmqctl
    /// list_connections`): name each worker to tell them apart.
    #[serde(default = "default_connection_name")]
    pub connection_name: String,
}

fn default_connection_name() -> String {
    "post-office hub".to_owned()
}

fn default_max() -> usize {
    16 * 1024 * 1024
}
fn default_confirm_timeout() -> u64 {
    30
}
fn default_connect_timeout() -> u64 {
    10
}

impl RabbitMqConfig {
    /// A config for `url` with defaults.
    pub fn new(url: impl Into<String>) -> Self {
        Self {
            url: url.into(),
            quorum_queues: false,
            max_message_bytes: default_max(),
            confirm_timeout_secs: default_confirm_timeout(),
            connect_timeout_secs: default_connect_timeout(),
            queue_expires_ms: None,
            queues: Default::default(),
            connection_name: default_connection_name(),
        }
    }

    /// The queue names this config gives, checked: why not, naming the entry.
    pub fn queue_names(&self) -> Result<QueueNames, String> {
        QueueNames::new(NameRule::RabbitMq, &self.queues)
    }
}

struct Link {
    conn: Arc<Connection>,
    publish: Channel,
}

/// RabbitMQ through one connection: a confirm-mode channel for publishing and a channel per
/// subscription. A broken connection is replaced on the next call.
pub struct RabbitMqTransport {
    config: RabbitMqConfig,
    /// The config's names, or why they are unusable (reported on every use of a queue).
    names: Result<QueueNames, String>,
    link: Mutex<Option<Link>>,
    declared: StdMutex<BTreeSet<String>>,
}

fn conn_err(e: impl std::fmt::Display) -> TransportError {
    TransportError::Connection(e.to_string())
}

impl RabbitMqTransport {
    /// A transport that connects on first use.
    pub fn new(config: RabbitMqConfig) -> Self {
        let names = config.queue_names();
        Self { config, names, link: Mutex::new(None), declared: StdMutex::new(BTreeSet::new()) }
    }

    /// The physical queue of `queue`, or why it cannot be one (retrying cannot mend it).
    fn physical(&self, queue: &str) -> Result<String, TransportError> {
        names::physical(&self.names, queue)
    }

    fn queue_args(&self) -> FieldTable {
        let mut args = FieldTable::default();
        if let Some(ms) = self.config.queue_expires_ms {
            // x-expires (RabbitMQ "Time-To-Live and Expiration"): the queue goes when unused.
            args.insert("x-expires".into(), AMQPValue::LongUInt(ms));
        }
        if self.config.quorum_queues {
            // x-queue-type=quorum: replicated queue (RabbitMQ docs, "Quorum Queues").
            args.insert("x-queue-type".into(), AMQPValue::LongString("quorum".into()));
        }
        args
    }

    async fn declare(&self, ch: &Channel, queue: &str) -> Result<(), TransportError> {
        // durable: the queue survives a broker restart (messages are persistent too).
        let opts = QueueDeclareOptions { durable: true, ..QueueDeclareOptions::default() };
        ch.queue_declare(queue.into(), opts, self.queue_args())
            .await
            .map(|_| ())
            .map_err(|e| TransportError::Refused(format!("declaring queue `{queue}`: {e}")))
    }

    /// The live link, (re)connecting if there is none or it broke. Queues declared before are
    /// declared again on a new connection.
    async fn connected(&self) -> Result<(Arc<Connection>, Channel), TransportError> {
        let mut guard = self.link.lock().await;
        if let Some(l) = guard.as_ref() {
            if l.conn.status().connected() && l.publish.status().connected() {
                return Ok((l.conn.clone(), l.publish.clone()));
            }
            tracing::warn!("rabbitmq connection lost; reconnecting");
        }
        if let Some(old) = guard.take() {
            // A live connection whose publish channel broke is closed, not leaked.
            let _ = old.conn.close(200, "replaced".into()).await;
        }
        let props =
            ConnectionProperties::default().with_connection_name(self.config.connection_name.as_str().into());
        let conn = Arc::new(
            tokio::time::timeout(
                Duration::from_secs(self.config.connect_timeout_secs),
                Connection::connect(&self.config.url, props),
            )
            .await
            .map_err(|_| TransportError::Connection("timed out connecting to RabbitMQ".into()))?
            .map_err(conn_err)?,
        );
        let publish = conn.create_channel().await.map_err(conn_err)?;
        // Publisher confirms (RabbitMQ "Consumer Acknowledgements and Publisher Confirms"): the
        // broker acks a persistent message once it is written to disk (or to a quorum).
        publish.confirm_select(ConfirmSelectOptions::default()).await.map_err(conn_err)?;
        let queues: Vec<String> =
            self.declared.lock().unwrap_or_else(|p| p.into_inner()).iter().cloned().collect();
        for q in queues {
            // Not the message's fault: reported as a connection problem, so rows are not
            // pushed towards `dead` while the broker refuses a declaration.
            self.declare(&publish, &q).await.map_err(|e| TransportError::Connection(e.to_string()))?;
        }
        *guard = Some(Link { conn: conn.clone(), publish: publish.clone() });
        tracing::info!("connected to rabbitmq");
        Ok((conn, publish))
    }

    async fn broken(&self) {
        *self.link.lock().await = None;
    }
}

fn to_table(headers: &Headers) -> FieldTable {
    let mut t = FieldTable::default();
    for (k, v) in headers {
        t.insert(
            ShortString::from(k.as_str()),
            AMQPValue::LongString(LongString::from(v.as_bytes().to_vec())),
        );
    }
    t
}

fn from_table(t: Option<&FieldTable>) -> Headers {
    let mut h = Headers::new();
    for (k, v) in t.map(|t| t.inner().iter()).into_iter().flatten() {
        let value = match v {
            AMQPValue::LongString(s) => String::from_utf8_lossy(s.as_bytes()).into_owned(),
            AMQPValue::ShortString(s) => s.as_str().to_owned(),
            _ => continue,
        };
        h.insert(k.as_str().to_owned(), value);
    }
    h
}

#[async_trait]
impl Transport for RabbitMqTransport {
    fn kind(&self) -> &'static str {
        "rabbitmq"
    }

    fn max_message_bytes(&self) -> usize {
        self.config.max_message_bytes
    }

    fn address(&self, queue: &str) -> Result<String, TransportError> {
        self.physical(queue)
    }

    async fn ensure_queue(&self, logical: &str) -> Result<(), TransportError> {
        // A name the broker would refuse is refused now, naming it.
        let queue = self.physical(logical).map_err(|e| match e {
            TransportError::Invalid(why) => TransportError::Refused(why),
            other => other,
        })?;
        let (_, ch) = self.connected().await?;
        self.declare(&ch, &queue).await?;
        self.declared.lock().unwrap_or_else(|p| p.into_inner()).insert(queue);
        Ok(())
    }

    async fn queue_depth(&self, logical: &str) -> Result<Option<u64>, TransportError> {
        let queue = &self.physical(logical)?;
        let (conn, _) = self.connected().await?;
        // A channel of its own: a passive declare of a missing queue closes its channel, and
        // the publish channel must not pay for that.
        let ch = conn.create_channel().await.map_err(conn_err)?;
        let opts = QueueDeclareOptions { passive: true, ..QueueDeclareOptions::default() };
        let res = ch.queue_declare(queue.as_str().into(), opts, FieldTable::default()).await;
        let _ = ch.close(200, "depth read".into()).await;
        match res {
            // message_count counts ready messages only: deliveries a consumer holds are not in it.
            Ok(q) => Ok(Some(u64::from(q.message_count()))),
            // A lost connection is the broker's state; anything else (a missing queue) is ours.
            Err(e) if !conn.status().connected() => Err(conn_err(e)),
            Err(e) => Err(TransportError::Refused(format!("reading the depth of queue `{queue}`: {e}"))),
        }
    }

    async fn publish(&self, batch: &[OutgoingMessage]) -> Vec<Result<(), TransportError>> {
        let mut results: Vec<Option<Result<(), TransportError>>> = vec![None; batch.len()];
        let ch = match self.connected().await {
            Ok((_, ch)) => ch,
            Err(e) => return batch.iter().map(|_| Err(e.clone())).collect(),
        };
        // Pipelined: every message is written before any confirm is awaited, so a batch costs
        // about one round trip, not one per message.
        let mut pending = Vec::with_capacity(batch.len());
        let mut broken: Option<TransportError> = None;
        let mut resolved: Option<(&str, String)> = None;
        for (i, m) in batch.iter().enumerate() {
            let size = message_size(m);
            if size > self.config.max_message_bytes {
                results[i] =
                    Some(Err(TransportError::TooLarge { size, limit: self.config.max_message_bytes }));
                continue;
            }
            // A batch mostly goes to one queue: its name is mapped once, not per message.
            let queue = match &resolved {
                Some((logical, q)) if *logical == m.queue.as_str() => q.clone(),
                _ => match self.physical(&m.queue) {
                    Ok(q) => {
                        resolved = Some((m.queue.as_str(), q.clone()));
                        q
                    }
                    Err(e) => {
                        results[i] = Some(Err(e));
                        continue;
                    }
                },
            };
            if let Some(e) = &broken {
                results[i] = Some(Err(e.clone()));
                continue;
            }
            let props = BasicProperties::default()
                .with_delivery_mode(2) // persistent
                .with_content_type("application/json".into())
                .with_message_id(m.dedup_id.as_str().into())
                .with_headers(to_table(&m.headers));
            // mandatory: an unroutable message comes back (basic.return) instead of vanishing.
            let opts = BasicPublishOptions { mandatory: true, ..BasicPublishOptions::default() };
            match ch.basic_publish("".into(), queue.as_str().into(), opts, &m.body, props).await {
                Ok(confirm) => pending.push((i, confirm)),
                Err(e) => {
                    let err = conn_err(e);
                    results[i] = Some(Err(err.clone()));
                    broken = Some(err);
                }
            }
        }
        let wait = Duration::from_secs(self.config.confirm_timeout_secs);
        let (idx, confirms): (Vec<usize>, Vec<_>) = pending.into_iter().unzip();
        match tokio::time::timeout(wait, futures::future::join_all(confirms)).await {
            Ok(outcomes) => {
                for (i, outcome) in idx.into_iter().zip(outcomes) {
                    results[i] = Some(match outcome {
                        Ok(Confirmation::Ack(None)) => Ok(()),
                        Ok(Confirmation::Ack(Some(_))) | Ok(Confirmation::Nack(Some(_))) => {
                            Err(TransportError::Unroutable(batch[i].queue.clone()))
                        }
                        Ok(Confirmation::Nack(None)) => {
                            Err(TransportError::Refused("broker nacked the message".into()))
                        }
                        Ok(Confirmation::NotRequested) => {
                            Err(TransportError::Refused("confirms not enabled".into()))
                        }
                        Err(e) => {
                            broken.get_or_insert_with(|| conn_err(&e));
                            Err(conn_err(e))
                        }
                    });
                }
            }
            Err(_) => {
                let err = TransportError::Connection(format!("no confirm within {}s", wait.as_secs()));
                for i in idx {
                    results[i] = Some(Err(err.clone()));
                }
                broken = Some(err);
            }
        }
        if broken.is_some() {
            self.broken().await;
        }
        results.into_iter().map(|r| r.unwrap_or(Err(TransportError::Closed))).collect()
    }

    async fn subscribe(&self, logical: &str, prefetch: u16) -> Result<Box<dyn Subscription>, TransportError> {
        let queue = &self.physical(logical)?;
        let (conn, _) = self.connected().await?;
        let ch = conn.create_channel().await.map_err(conn_err)?;
        // Prefetch bounds unacked deliveries per consumer (basic.qos, per-consumer in RabbitMQ).
        ch.basic_qos(prefetch.max(1), BasicQosOptions::default()).await.map_err(conn_err)?;
        let consumer = ch
            .basic_consume(
                queue.as_str().into(),
                "".into(),
                BasicConsumeOptions::default(),
                FieldTable::default(),
            )
            .await
            .map_err(|e| TransportError::Refused(format!("consuming `{queue}`: {e}")))?;
        Ok(Box::new(RabbitMqSubscription { _channel: ch, consumer }))
    }
}

struct RabbitMqSubscription {
    _channel: Channel,
    consumer: Consumer,
}

impl Drop for RabbitMqSubscription {
    /// Closing the channel hands every delivery it still holds (prefetched, not yet taken, or
    /// taken and unsettled) back to the queue at once (AMQP 0-9-1: unacked messages are
    /// requeued when their channel closes); otherwise they would wait for the connection.
    fn drop(&mut self) {
        let ch = self._channel.clone();
        if let Ok(rt) = tokio::runtime::Handle::try_current() {
            rt.spawn(async move {
                let _ = ch.close(200, "subscription dropped".into()).await;
            });
        }
    }
}

#[async_trait]
impl Subscription for RabbitMqSubscription {
    async fn next(&mut self) -> Result<Delivery, TransportError> {
        match self.consumer.next().await {
            Some(Ok(d)) => {
                let headers = from_table(d.properties.headers().as_ref());
                let acker = RabbitMqAcker { acker: Some(d.acker), channel: u64::from(self._channel.id()) };
                Ok(Delivery::new(headers, d.data, d.redelivered, Box::new(acker)))
            }
            Some(Err(e)) => Err(conn_err(e)),
            None => Err(TransportError::Closed),
        }
    }
}

struct RabbitMqAcker {
    acker: Option<lapin::Acker>,
    channel: u64,
}

#[async_trait]
impl Acker for RabbitMqAcker {
    async fn ack(mut self: Box<Self>) -> Result<(), TransportError> {
        match self.acker.take() {
            Some(a) => a.ack(BasicAckOptions::default()).await.map(|_| ()).map_err(conn_err),
            None => Ok(()),
        }
    }

    async fn nack(mut self: Box<Self>, requeue: bool) -> Result<(), TransportError> {
        match self.acker.take() {
            Some(a) => a
                .nack(BasicNackOptions { requeue, ..BasicNackOptions::default() })
                .await
                .map(|_| ())
                .map_err(conn_err),
            None => Ok(()),
        }
    }

    fn cumulative_scope(&self) -> Option<u64> {
        Some(self.channel)
    }

    /// basic.ack with `multiple` (AMQP 0-9-1 §1.8.3.13): this delivery and every earlier
    /// unacked one on the channel, in one frame.
    async fn ack_cumulative(mut self: Box<Self>) -> Result<(), TransportError> {
        match self.acker.take() {
            Some(a) => a.ack(BasicAckOptions { multiple: true }).await.map(|_| ()).map_err(conn_err),
            None => Ok(()),
        }
    }

    fn settled_by_later_ack(mut self: Box<Self>) {
        self.acker = None;
    }
}

impl Drop for RabbitMqAcker {
    /// Unsettled at drop: give it back now rather than when the channel closes.
    fn drop(&mut self) {
        if let (Some(a), Ok(rt)) = (self.acker.take(), tokio::runtime::Handle::try_current()) {
            rt.spawn(async move {
                let _ = a.nack(BasicNackOptions { requeue: true, ..BasicNackOptions::default() }).await;
            });
        }
    }
}
