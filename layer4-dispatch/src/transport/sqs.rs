//! `sqs` (aws-sdk-sqs): standard and FIFO queues (a physical queue whose name ends in `.fifo`),
//! hub headers as String message attributes, `SendMessageBatch` in tens with per-entry results,
//! long polling, delete after the consumer settles, an endpoint override for SQS-compatible
//! servers, credentials and region from the standard AWS chain or the config. Logical queue
//! names map to SQS names or queue URLs by [`super::names`]; a queue given by URL (another
//! account's) is used, never created.

use std::collections::{HashMap, VecDeque};
use std::sync::Mutex;

use async_trait::async_trait;
use aws_sdk_sqs::Client;
use aws_sdk_sqs::config::{BehaviorVersion, Credentials, Region};
use aws_sdk_sqs::error::DisplayErrorContext;
use aws_sdk_sqs::types::{
    MessageAttributeValue, MessageSystemAttributeName, QueueAttributeName, SendMessageBatchRequestEntry,
};
use serde::Deserialize;

use super::names::{self, NameRule, QueueNames};
use super::{Acker, Delivery, Headers, OutgoingMessage, Subscription, Transport, TransportError};

/// Settings of the SQS transport.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SqsConfig {
    /// Endpoint override for SQS-compatible servers (`http://127.0.0.1:4566`); AWS otherwise.
    #[serde(default)]
    pub endpoint_url: Option<String>,
    /// Region; the standard chain (`AWS_REGION`, profile) when absent.
    #[serde(default)]
    pub region: Option<String>,
    /// Static credentials for SQS-compatible servers. Leave both out on AWS: the standard chain
    /// (environment, profile, instance role) is the place for real credentials.
    #[serde(default)]
    pub access_key_id: Option<String>,
    /// See `access_key_id`.
    #[serde(default)]
    pub secret_access_key: Option<String>,
    /// Long-polling wait, 0 to 20 seconds.
    #[serde(default = "default_wait")]
    pub wait_time_seconds: i32,
    /// Seconds a received message stays invisible to other consumers before it is delivered
    /// again if not deleted (set on queues this transport creates).
    #[serde(default = "default_visibility")]
    pub visibility_timeout_secs: i32,
    /// Largest message carried, in bytes: SQS counts the body and every attribute's name, type
    /// and value. SQS accepts up to 1 MiB (1,048,576, since August 2025); a queue whose
    /// `MaximumMessageSize` is set lower (queues made before then kept 262,144) needs this
    /// lowered to match, or SQS refuses the larger messages one by one.
    #[serde(default = "default_max")]
    pub max_message_bytes: usize,
    /// Logical queue name -> SQS queue name or full queue URL (a queue in another account).
    /// Names without an entry follow the default rule (see [`super::names`]).
    #[serde(default, deserialize_with = "names::deserialize_queues")]
    pub queues: std::collections::BTreeMap<String, String>,
}

fn default_wait() -> i32 {
    20
}
fn default_visibility() -> i32 {
    30
}
fn default_max() -> usize {
    1_048_576
}

impl SqsConfig {
    /// A config for an SQS-compatible endpoint with static test credentials.
    pub fn local(endpoint_url: impl Into<String>) -> Self {
        Self {
            endpoint_url: Some(endpoint_url.into()),
            region: Some("us-east-1".into()),
            access_key_id: Some("test".into()),
            secret_access_key: Some("test".into()),
            wait_time_seconds: 1,
            visibility_timeout_secs: default_visibility(),
            max_message_bytes: default_max(),
            queues: Default::default(),
        }
    }

    /// The queue names this config gives, checked: why not, naming the entry.
    pub fn queue_names(&self) -> Result<QueueNames, String> {
        QueueNames::new(NameRule::Sqs, &self.queues)
    }
}

/// SQS through one client; queue URLs are looked up (created) once and cached.
pub struct SqsTransport {
    client: Client,
    config: SqsConfig,
    /// The config's names, or why they are unusable (reported on every use of a queue).
    names: Result<QueueNames, String>,
    /// Physical name -> queue URL.
    urls: Mutex<HashMap<String, String>>,
}

fn sdk_err<E: std::error::Error>(e: E) -> TransportError {
    TransportError::Connection(DisplayErrorContext(e).to_string())
}

fn is_fifo(queue: &str) -> bool {
    queue.ends_with(".fifo")
}

/// SQS's own size count: body plus each attribute's name, data type and value.
fn sqs_size(m: &OutgoingMessage) -> usize {
    m.body.len()
        + m.headers
            .iter()
            .filter(|(_, v)| !v.is_empty())
            .map(|(k, v)| k.len() + "String".len() + v.len())
            .sum::<usize>()
}

impl SqsTransport {
    /// Builds the client from the standard AWS chain, overridden by the config.
    pub async fn new(config: SqsConfig) -> Self {
        let mut loader = aws_config::defaults(BehaviorVersion::latest());
        if let Some(r) = &config.region {
            loader = loader.region(Region::new(r.clone()));
        }
        if let Some(e) = &config.endpoint_url {
            loader = loader.endpoint_url(e.clone());
        }
        if let (Some(id), Some(secret)) = (&config.access_key_id, &config.secret_access_key) {
            loader =
                loader.credentials_provider(Credentials::new(id, secret, None, None, "post-office config"));
        }
        let sdk = loader.load().await;
        let names = config.queue_names();
        Self { client: Client::new(&sdk), config, names, urls: Mutex::new(HashMap::new()) }
    }

    /// The physical queue (name or URL) of `queue`, or why it cannot be one: an error that
    /// retrying cannot mend.
    fn physical(&self, queue: &str) -> Result<String, TransportError> {
        names::physical(&self.names, queue)
    }

    fn cached_url(&self, queue: &str) -> Option<String> {
        self.urls.lock().unwrap_or_else(|p| p.into_inner()).get(queue).cloned()
    }

    /// The URL of the logical `queue`: given by the config, or looked up by its physical name.
    async fn url(&self, queue: &str) -> Result<String, TransportError> {
        let physical = self.physical(queue)?;
        if names::is_url(&physical) {
            return Ok(physical);
        }
        if let Some(u) = self.cached_url(&physical) {
            return Ok(u);
        }
        let out = self.client.get_queue_url().queue_name(&physical).send().await.map_err(|e| {
            let text = DisplayErrorContext(&e).to_string();
            if text.contains("NonExistentQueue") || text.contains("does not exist") {
                TransportError::Unroutable(if physical == queue {
                    queue.to_owned()
                } else {
                    format!("{queue}` (SQS queue `{physical}")
                })
            } else {
                TransportError::Connection(text)
            }
        })?;
        let url = out.queue_url().unwrap_or_default().to_owned();
        self.urls.lock().unwrap_or_else(|p| p.into_inner()).insert(physical, url.clone());
        Ok(url)
    }

    async fn send_chunk(
        &self,
        url: &str,
        fifo: bool,
        chunk: &[(usize, &OutgoingMessage)],
    ) -> Vec<(usize, Result<(), TransportError>)> {
        let mut entries = Vec::with_capacity(chunk.len());
        let mut out = Vec::with_capacity(chunk.len());
        for (i, m) in chunk {
            match entry(*i, m, fifo) {
                Ok(e) => entries.push(e),
                Err(e) => out.push((*i, Err(e))),
            }
        }
        if entries.is_empty() {
            return out;
        }
        let sent: Vec<usize> = entries.iter().filter_map(|e| e.id().parse().ok()).collect();
        match self.client.send_message_batch().queue_url(url).set_entries(Some(entries)).send().await {
            Ok(res) => {
                let mut failed: HashMap<usize, TransportError> = HashMap::new();
                for f in res.failed() {
                    let why = format!("{}: {}", f.code(), f.message().unwrap_or(""));
                    // A sender fault will fail the same way again; anything else may pass later.
                    let err = if f.sender_fault() {
                        TransportError::Invalid(why)
                    } else {
                        TransportError::Refused(why)
                    };
                    if let Ok(i) = f.id().parse() {
                        failed.insert(i, err);
                    }
                }
                for i in sent {
                    out.push((i, failed.remove(&i).map_or(Ok(()), Err)));
                }
            }
            Err(e) => {
                // The service answered (a bad request, a missing queue): counted and retried, so
                // it ends `dead` if it never passes. No answer: the broker is away, not counted.
                let text = DisplayErrorContext(&e).to_string();
                let err = if text.contains("NonExistentQueue") {
                    self.urls.lock().unwrap_or_else(|p| p.into_inner()).retain(|_, u| u != url);
                    TransportError::Unroutable(url.to_owned())
                } else if e.as_service_error().is_some() {
                    TransportError::Refused(text)
                } else {
                    TransportError::Connection(text)
                };
                out.extend(sent.into_iter().map(|i| (i, Err(err.clone()))));
            }
        }
        out
    }
}

fn entry(i: usize, m: &OutgoingMessage, fifo: bool) -> Result<SendMessageBatchRequestEntry, TransportError> {
    let body = String::from_utf8(m.body.clone())
        .map_err(|_| TransportError::Invalid("SQS bodies must be UTF-8 text".into()))?;
    let mut b = SendMessageBatchRequestEntry::builder().id(i.to_string()).message_body(body);
    for (k, v) in m.headers.iter().filter(|(_, v)| !v.is_empty()) {
        // SQS refuses empty attribute values; an absent header reads as empty on the other side.
        let value = MessageAttributeValue::builder()
            .data_type("String")
            .string_value(v)
            .build()
            .map_err(|e| TransportError::Invalid(e.to_string()))?;
        b = b.message_attributes(k, value);
    }
    if fifo {
        // Order holds within a message group: the route's ordering key, or one group per queue.
        b = b
            .message_group_id(m.ordering_key.clone().unwrap_or_else(|| "post-office".into()))
            .message_deduplication_id(m.dedup_id.clone());
    }
    b.build().map_err(|e| TransportError::Invalid(e.to_string()))
}

#[async_trait]
impl Transport for SqsTransport {
    fn kind(&self) -> &'static str {
        "sqs"
    }

    fn max_message_bytes(&self) -> usize {
        self.config.max_message_bytes
    }

    fn address(&self, queue: &str) -> Result<String, TransportError> {
        self.physical(queue)
    }

    async fn ensure_queue(&self, queue: &str) -> Result<(), TransportError> {
        // A queue no declaration could make: refused now, naming it, not by the SDK later.
        let physical = self.physical(queue).map_err(|e| match e {
            TransportError::Invalid(why) => TransportError::Refused(why),
            other => other,
        })?;
        if names::is_url(&physical) {
            // Given by URL: someone else's queue (often another account's). It is used, never
            // created; reading an attribute proves it exists and this identity may reach it.
            return self
                .client
                .get_queue_attributes()
                .queue_url(&physical)
                .attribute_names(QueueAttributeName::QueueArn)
                .send()
                .await
                .map(|_| ())
                .map_err(|e| {
                    let text = format!(
                        "queue `{queue}` is given by URL {physical}, which the hub does not create, and it \
                         cannot be reached: {}",
                        DisplayErrorContext(&e)
                    );
                    if e.as_service_error().is_some() {
                        TransportError::Refused(text)
                    } else {
                        TransportError::Connection(text)
                    }
                });
        }
        let mut req = self.client.create_queue().queue_name(&physical).attributes(
            QueueAttributeName::VisibilityTimeout,
            self.config.visibility_timeout_secs.to_string(),
        );
        if is_fifo(&physical) {
            req = req.attributes(QueueAttributeName::FifoQueue, "true");
        }
        let out = req.send().await.map_err(|e| {
            let text = format!("creating SQS queue `{physical}` for `{queue}`: {}", DisplayErrorContext(&e));
            // No answer (endpoint down, DNS, timeout) is the connection's fault, so a worker
            // starting meanwhile waits for it; an answer (bad name, no permission) is a refusal.
            if e.as_service_error().is_some() {
                TransportError::Refused(text)
            } else {
                TransportError::Connection(text)
            }
        })?;
        let url = out.queue_url().unwrap_or_default().to_owned();
        self.urls.lock().unwrap_or_else(|p| p.into_inner()).insert(physical, url);
        Ok(())
    }

    async fn queue_depth(&self, queue: &str) -> Result<Option<u64>, TransportError> {
        let url = self.url(queue).await?;
        let out = self
            .client
            .get_queue_attributes()
            .queue_url(&url)
            .attribute_names(QueueAttributeName::ApproximateNumberOfMessages)
            .send()
            .await
            .map_err(sdk_err)?;
        // Approximate (SQS's own word), and counts messages not in flight: enough to tell a
        // receiver that is behind or away from one that has taken everything.
        Ok(out
            .attributes()
            .and_then(|a| a.get(&QueueAttributeName::ApproximateNumberOfMessages))
            .and_then(|v| v.parse::<u64>().ok()))
    }

    async fn publish(&self, batch: &[OutgoingMessage]) -> Vec<Result<(), TransportError>> {
        let mut results: Vec<Option<Result<(), TransportError>>> = vec![None; batch.len()];
        // Per queue, in order, in tens (SendMessageBatch's limit).
        let mut by_queue: Vec<(&str, Vec<(usize, &OutgoingMessage)>)> = Vec::new();
        for (i, m) in batch.iter().enumerate() {
            let size = sqs_size(m);
            if size > self.config.max_message_bytes {
                results[i] =
                    Some(Err(TransportError::TooLarge { size, limit: self.config.max_message_bytes }));
                continue;
            }
            match by_queue.iter_mut().find(|(q, _)| *q == m.queue) {
                Some((_, v)) => v.push((i, m)),
                None => by_queue.push((m.queue.as_str(), vec![(i, m)])),
            }
        }
        let mut calls = Vec::new();
        for (queue, msgs) in &by_queue {
            let url = match self.url(queue).await {
                Ok(u) => u,
                Err(e) => {
                    for (i, _) in msgs {
                        results[*i] = Some(Err(e.clone()));
                    }
                    continue;
                }
            };
            // FIFO is a property of the physical queue (its name, or the URL's last segment).
            let fifo = is_fifo(&url);
            // At most ten entries, and at most `max_message_bytes` in all: SQS limits the
            // whole request's payload too (BatchRequestTooLong).
            let mut start = 0;
            while start < msgs.len() {
                let mut end = start;
                let mut bytes = 0;
                while end < msgs.len() && end - start < 10 {
                    let size = sqs_size(msgs[end].1);
                    if end > start && bytes + size > self.config.max_message_bytes {
                        break;
                    }
                    bytes += size;
                    end += 1;
                }
                let chunk = &msgs[start..end];
                let url = url.clone();
                calls.push(async move { self.send_chunk(&url, fifo, chunk).await });
                start = end;
            }
        }
        // Chunks go out together; within a FIFO group the publisher never has two messages of
        // one ordering key in flight, so concurrency does not reorder a key.
        for (i, r) in futures::future::join_all(calls).await.into_iter().flatten() {
            results[i] = Some(r);
        }
        results.into_iter().map(|r| r.unwrap_or(Err(TransportError::Closed))).collect()
    }

    async fn subscribe(&self, queue: &str, prefetch: u16) -> Result<Box<dyn Subscription>, TransportError> {
        let url = self.url(queue).await?;
        Ok(Box::new(SqsSubscription {
            client: self.client.clone(),
            url,
            max: i32::from(prefetch).clamp(1, 10),
            wait: self.config.wait_time_seconds.clamp(0, 20),
            buffer: VecDeque::new(),
            pending: None,
        }))
    }
}

struct SqsSubscription {
    client: Client,
    url: String,
    max: i32,
    wait: i32,
    buffer: VecDeque<Delivery>,
    /// The receive in flight. Kept across calls so that a caller who stops waiting (a timeout,
    /// a `select!`) does not drop a response: SQS has already hidden those messages for the
    /// visibility timeout, and dropping them would delay them by that much.
    pending: Option<tokio::task::JoinHandle<Result<Vec<Delivery>, TransportError>>>,
}

async fn receive(client: Client, url: String, max: i32, wait: i32) -> Result<Vec<Delivery>, TransportError> {
    let out = client
        .receive_message()
        .queue_url(&url)
        .max_number_of_messages(max)
        .wait_time_seconds(wait)
        .message_attribute_names("All")
        .message_system_attribute_names(MessageSystemAttributeName::ApproximateReceiveCount)
        .send()
        .await
        .map_err(sdk_err)?;
    let mut got = Vec::new();
    for m in out.messages() {
        let Some(handle) = m.receipt_handle() else { continue };
        let headers: Headers = m
            .message_attributes()
            .map(|attrs| {
                attrs
                    .iter()
                    .filter_map(|(k, v)| v.string_value().map(|s| (k.clone(), s.to_owned())))
                    .collect()
            })
            .unwrap_or_default();
        let redelivered = m
            .attributes()
            .and_then(|a| a.get(&MessageSystemAttributeName::ApproximateReceiveCount))
            .and_then(|n| n.parse::<u32>().ok())
            .is_some_and(|n| n > 1);
        let acker = SqsAcker { client: client.clone(), url: url.clone(), handle: handle.to_owned() };
        let body = m.body().unwrap_or_default().as_bytes().to_vec();
        got.push(Delivery::new(headers, body, redelivered, Box::new(acker)));
    }
    Ok(got)
}

#[async_trait]
impl Subscription for SqsSubscription {
    async fn next(&mut self) -> Result<Delivery, TransportError> {
        loop {
            if let Some(d) = self.buffer.pop_front() {
                return Ok(d);
            }
            let task = self.pending.get_or_insert_with(|| {
                tokio::spawn(receive(self.client.clone(), self.url.clone(), self.max, self.wait))
            });
            let res = task.await;
            self.pending = None;
            match res {
                Ok(Ok(got)) => self.buffer.extend(got),
                Ok(Err(e)) => return Err(e),
                Err(e) => return Err(TransportError::Connection(format!("receive task failed: {e}"))),
            }
        }
    }
}

impl Drop for SqsSubscription {
    /// Messages received but not handed out go back to the queue at once instead of staying
    /// hidden until their visibility timeout.
    fn drop(&mut self) {
        let pending = self.pending.take();
        let buffered: Vec<Delivery> = self.buffer.drain(..).collect();
        if pending.is_none() && buffered.is_empty() {
            return;
        }
        if let Ok(rt) = tokio::runtime::Handle::try_current() {
            rt.spawn(async move {
                let late = match pending {
                    Some(t) => t.await.ok().and_then(Result::ok).unwrap_or_default(),
                    None => Vec::new(),
                };
                for d in buffered.into_iter().chain(late) {
                    let _ = d.nack(true).await;
                }
            });
        }
    }
}

struct SqsAcker {
    client: Client,
    url: String,
    handle: String,
}

#[async_trait]
impl Acker for SqsAcker {
    async fn ack(self: Box<Self>) -> Result<(), TransportError> {
        self.client
            .delete_message()
            .queue_url(&self.url)
            .receipt_handle(&self.handle)
            .send()
            .await
            .map(|_| ())
            .map_err(sdk_err)
    }

    /// `requeue`: visible again at once. Otherwise deleted (a redrive policy on the queue is the
    /// place for dead-lettering on SQS).
    async fn nack(self: Box<Self>, requeue: bool) -> Result<(), TransportError> {
        if requeue {
            self.client
                .change_message_visibility()
                .queue_url(&self.url)
                .receipt_handle(&self.handle)
                .visibility_timeout(0)
                .send()
                .await
                .map(|_| ())
                .map_err(sdk_err)
        } else {
            self.ack().await
        }
    }
}
