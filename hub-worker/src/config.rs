//! `hub-worker`'s configuration: one TOML file plus `HUB_`-prefixed environment variables
//! (`HUB_DATABASE__URL` sets `database.url`), loaded and validated once, before anything runs.

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use figment::Figment;
use figment::providers::{Env, Format, Toml};
use serde::Deserialize;

use layer1_ingest::StageSettings;
use layer4_dispatch::{InProcessConfig, InProcessTransport, PublishSettings, Route, Transport};
#[cfg(feature = "rabbitmq")]
use layer4_dispatch::{RabbitMqConfig, RabbitMqTransport};
#[cfg(feature = "sqs")]
use layer4_dispatch::{SqsConfig, SqsTransport};

use crate::error::{Error, Result};
use crate::files::{self, Diagnostic, Integration, Locator};
use crate::http::auth::{Scope, Token, Tokens};
use crate::hub::{Hub, HubBuilder, HubSettings};
use crate::integrations;

/// What `run` serves HTTPS with (a build without the `tls` feature has none to give).
#[cfg(feature = "tls")]
pub type ServerTls = Arc<rustls::ServerConfig>;
/// What `run` serves HTTPS with (a build without the `tls` feature has none to give).
#[cfg(not(feature = "tls"))]
pub type ServerTls = std::convert::Infallible;

/// The whole configuration.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// Where the layer tables live.
    pub database: DatabaseConfig,
    /// How the claim-based stages run.
    #[serde(default)]
    pub stages: StagesConfig,
    /// How the publisher runs.
    #[serde(default)]
    pub publish: PublishConfig,
    /// Intake limits.
    #[serde(default)]
    pub ingest: IngestConfig,
    /// Which broker carries messages to the core app.
    #[serde(default)]
    pub transport: TransportConfig,
    /// Built-in integrations to enable, by name (`crm-contacts`, `payments`).
    #[serde(default)]
    pub integrations: Vec<String>,
    /// A directory of integration files (`core.toml` and one file per source), relative to
    /// this config file.
    #[serde(default)]
    pub integrations_dir: Option<PathBuf>,
    /// The directory of the config file, which relative paths start from.
    #[serde(skip)]
    pub base_dir: PathBuf,
    /// Core message type -> destination queue rules; every matching rule is a destination.
    #[serde(default)]
    pub routes: Vec<Route>,
    /// The HTTP server (webhook intake); none: no server.
    #[serde(default)]
    pub http: Option<HttpConfig>,
    /// How each source's webhooks are authenticated and bounded, by source name.
    #[serde(default)]
    pub sources: BTreeMap<String, SourceConfig>,
}

/// `[http]`
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HttpConfig {
    /// Address to listen on, `127.0.0.1:8080`.
    pub listen: String,
    /// Deprecated shorthand for a token named `admin` holding every scope, read from this
    /// environment variable. Without it and without `tokens`, `HUB_ADMIN_TOKEN` is that token.
    #[serde(default)]
    pub admin_token_env: Option<String>,
    /// The admin API's tokens by name (`[http.tokens.<name>]`): each with its scopes and its
    /// secret's place (an environment variable or a file; never the config itself).
    #[serde(default)]
    pub tokens: BTreeMap<String, TokenConfig>,
    /// Intake requests handled at once; more are answered 503 with Retry-After.
    #[serde(default = "default_in_flight")]
    pub max_in_flight: usize,
    /// PEM file with the server's certificate chain, leaf first (relative to the config file).
    /// With `tls_key` the server speaks HTTPS only; without both, plain HTTP.
    #[serde(default)]
    pub tls_cert: Option<PathBuf>,
    /// PEM file with the certificate's private key (relative to the config file).
    #[serde(default)]
    pub tls_key: Option<PathBuf>,
}

fn default_in_flight() -> usize {
    crate::http::ingest::DEFAULT_IN_FLIGHT
}

/// The variable the admin token comes from when neither `tokens` nor `admin_token_env` is set.
const DEFAULT_ADMIN_ENV: &str = "HUB_ADMIN_TOKEN";

/// Shortest accepted token: a short one can be guessed.
const MIN_TOKEN_LEN: usize = 16;

/// `[http.tokens.<name>]`: one admin API token.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TokenConfig {
    /// What it may do: `read`, `raw` (with `read`), `operate`, `metrics`.
    pub scopes: Vec<Scope>,
    /// Environment variable holding the token.
    #[serde(default)]
    pub env: Option<String>,
    /// File holding the token (one line; surrounding whitespace ignored).
    #[serde(default)]
    pub file: Option<PathBuf>,
}

impl TokenConfig {
    /// The secret, read now from its variable or file (never logged, never stored).
    fn secret(&self, name: &str) -> Result<String> {
        let key = format!("http.tokens.{name}");
        let secret = match (&self.env, &self.file) {
            (Some(var), None) => std::env::var(var)
                .map_err(|_| Error::Config(format!("{key}.env: environment variable {var} is not set")))?
                .trim()
                .to_owned(),
            (None, Some(path)) => {
                let text = std::fs::read_to_string(path)
                    .map_err(|e| Error::Config(format!("{key}.file {}: {e}", path.display())))?;
                let mut lines = text.lines().map(str::trim).filter(|l| !l.is_empty());
                let secret = lines.next().unwrap_or_default().to_owned();
                // Several lines would read as several secrets: a rotation is two named tokens,
                // so that audit events say which one was used.
                if lines.next().is_some() {
                    return Err(Error::Config(format!(
                        "{key}.file {}: one token per file (for a rotation, configure a second named token)",
                        path.display()
                    )));
                }
                secret
            }
            _ => return Err(Error::Config(format!("{key}: give exactly one of env and file"))),
        };
        if secret.chars().count() < MIN_TOKEN_LEN {
            return Err(Error::Config(format!(
                "{key}: the token must be at least {MIN_TOKEN_LEN} characters"
            )));
        }
        Ok(secret)
    }
}

impl HttpConfig {
    /// Whether the admin token comes from the deprecated `admin_token_env` shorthand (or its
    /// `HUB_ADMIN_TOKEN` default) rather than from `[http.tokens.<name>]` alone.
    pub fn uses_admin_shorthand(&self) -> bool {
        self.admin_token_env.is_some() || self.tokens.is_empty()
    }

    /// The admin API's tokens, secrets read now (never logged; only their digests are kept).
    pub fn tokens(&self) -> Result<Tokens> {
        let mut out = Vec::new();
        let mut secrets: Vec<(String, String)> = Vec::new();
        if self.uses_admin_shorthand() {
            let var = self.admin_token_env.as_deref().unwrap_or(DEFAULT_ADMIN_ENV);
            if self.tokens.contains_key("admin") {
                return Err(Error::Config(
                    "http.tokens.admin: the name `admin` is taken by http.admin_token_env (deprecated); \
                     drop admin_token_env or rename the token"
                        .into(),
                ));
            }
            // Trimmed as a named token's secret is: the same variable must give the same token.
            let secret = match std::env::var(var).map(|t| t.trim().to_owned()) {
                Ok(t) if t.chars().count() >= MIN_TOKEN_LEN => t,
                Ok(_) => {
                    return Err(Error::Config(format!(
                        "http.admin_token_env: {var} must hold at least {MIN_TOKEN_LEN} characters"
                    )));
                }
                Err(_) => {
                    return Err(Error::Config(format!(
                        "http.admin_token_env: environment variable {var} is not set (or configure \
                         [http.tokens.<name>] with scopes and env or file)"
                    )));
                }
            };
            secrets.push(("admin".into(), secret));
            out.push(("admin".to_owned(), Scope::ALL.to_vec()));
        }
        for (name, t) in &self.tokens {
            let key = format!("http.tokens.{name}");
            // The name goes into logs and the tables (`replayed_by`): plain characters only.
            if name.is_empty()
                || name.len() > 64
                || !name.chars().all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
            {
                return Err(Error::Config(format!("{key}: a token name is 1 to 64 of A-Z a-z 0-9 - _ .")));
            }
            if t.scopes.is_empty() {
                return Err(Error::Config(format!(
                    "{key}.scopes: give at least one of read, raw, operate, metrics"
                )));
            }
            // `raw` only widens what the `read` routes show; alone it would open nothing.
            if t.scopes.contains(&Scope::Raw) && !t.scopes.contains(&Scope::Read) {
                return Err(Error::Config(format!(
                    "{key}.scopes: `raw` needs `read` (it widens what read shows)"
                )));
            }
            secrets.push((name.clone(), t.secret(name)?));
            out.push((name.clone(), t.scopes.clone()));
        }
        // One secret under two names would make "who" in the audit trail a guess.
        for (i, (a, sa)) in secrets.iter().enumerate() {
            if let Some((b, _)) = secrets[i + 1..].iter().find(|(_, sb)| sb == sa) {
                return Err(Error::Config(format!(
                    "http.tokens: `{a}` and `{b}` have the same token; each name needs its own"
                )));
            }
        }
        Ok(Tokens::new(
            out.into_iter()
                .zip(&secrets)
                .map(|((name, scopes), (_, secret))| Token::new(name, secret, &scopes))
                .collect(),
        ))
    }
}

/// A source's `verify = "..."`: a typo is a parse error naming the file, the line and these
/// values.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "kebab-case")]
#[non_exhaustive]
pub enum VerifyScheme {
    /// Standard Webhooks (`webhook-id`, `webhook-timestamp`, `webhook-signature`; `whsec_` keys).
    StandardWebhooks,
    /// GitHub's `X-Hub-Signature-256`.
    Github,
    /// Stripe's `Stripe-Signature`.
    Stripe,
    /// A static key in a header (`header`, `x-api-key` by default).
    ApiKey,
    /// `Authorization: Bearer <token>`.
    Bearer,
}

/// `[sources.<name>]`
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SourceConfig {
    /// How requests prove they come from the third party.
    pub verify: VerifyScheme,
    /// Environment variable holding the secret(s); several, comma-separated, during a rotation.
    #[serde(default)]
    pub secret_env: Option<String>,
    /// File holding the secret(s), one per line (instead of `secret_env`).
    #[serde(default)]
    pub secrets_file: Option<PathBuf>,
    /// Seconds a signed timestamp may be away from now (Standard Webhooks, Stripe).
    #[serde(default = "default_tolerance")]
    pub tolerance_secs: u64,
    /// The header carrying the key (`api-key`), `x-api-key` by default.
    #[serde(default)]
    pub header: Option<String>,
    /// Largest body, bytes (default 1 MiB).
    #[serde(default = "default_source_body")]
    pub max_body_bytes: usize,
    /// Accepted content types (default `application/json`); empty accepts any.
    #[serde(default = "default_content_types")]
    pub content_types: Vec<String>,
    /// Seconds to receive a request's body (default 30).
    #[serde(default = "default_read_timeout")]
    pub read_timeout_secs: u64,
}

fn default_read_timeout() -> u64 {
    30
}

fn default_tolerance() -> u64 {
    300
}
fn default_source_body() -> usize {
    1024 * 1024
}
fn default_content_types() -> Vec<String> {
    vec!["application/json".into()]
}

/// The shortest secret accepted for a scheme that refuses short ones (Stripe, api-key,
/// bearer), and below which a GitHub secret is warned about.
pub const MIN_SECRET_CHARS: usize = 16;

impl SourceConfig {
    /// Secret lengths per scheme, as the providers issue them. A short shared secret is
    /// guessable, and a forged signature or key would be accepted, so the hub refuses one where
    /// the provider never issues one:
    /// - `github`: the repository owner types the secret and GitHub takes any length, so any
    ///   non-empty secret is accepted (refusing would leave the source unusable), with a warning
    ///   below the minimum;
    /// - `stripe`: Stripe issues long `whsec_...` secrets: refused below the minimum, warned
    ///   about without the prefix (probably the API key pasted instead);
    /// - `api-key`, `bearer`: ours to choose (the third party is given it): refused below the
    ///   minimum;
    /// - `standard-webhooks`: the key's decoding decides (`standard_webhooks_key`).
    ///
    /// Warnings name the source and the length, never the secret.
    fn check_secret_lengths(&self, name: &str, raw: &[String]) -> Result<()> {
        let scheme = match self.verify {
            VerifyScheme::StandardWebhooks => return Ok(()),
            VerifyScheme::Github => "github",
            VerifyScheme::Stripe => "stripe",
            VerifyScheme::ApiKey => "api-key",
            VerifyScheme::Bearer => "bearer",
        };
        for (i, s) in raw.iter().enumerate() {
            let chars = s.chars().count();
            let which = if raw.len() > 1 {
                format!("secret {} of {}", i + 1, raw.len())
            } else {
                "the secret".into()
            };
            if chars < MIN_SECRET_CHARS && self.verify == VerifyScheme::Github {
                tracing::warn!(
                    source = name,
                    length = chars,
                    "sources.{name}: {which} is {chars} characters: GitHub accepts it, but a webhook secret \
                     shorter than {MIN_SECRET_CHARS} is guessable; set a longer one in the repository's \
                     webhook settings"
                );
            } else if chars < MIN_SECRET_CHARS {
                return Err(Error::Config(format!(
                    "sources.{name}: {which} is {chars} characters; a {scheme} secret must be at least \
                     {MIN_SECRET_CHARS}"
                )));
            }
            if self.verify == VerifyScheme::Stripe && !s.starts_with("whsec_") {
                tracing::warn!(
                    source = name,
                    length = chars,
                    "sources.{name}: {which} does not start with `whsec_`, as Stripe's webhook signing \
                     secrets do: is it the API key instead?"
                );
            }
        }
        Ok(())
    }

    /// Reads the secrets (never logged, never stored) and builds the source's door.
    pub fn door(&self, name: &str) -> Result<crate::http::ingest::Door> {
        use crate::http::verify::{Verifier, standard_webhooks_key};
        let raw: Vec<String> = match (&self.secret_env, &self.secrets_file) {
            (Some(var), None) => std::env::var(var)
                .map_err(|_| {
                    Error::Config(format!("sources.{name}.secret_env: environment variable {var} is not set"))
                })?
                .split(',')
                .map(|s| s.trim().to_owned())
                .filter(|s| !s.is_empty())
                .collect(),
            (None, Some(path)) => std::fs::read_to_string(path)
                .map_err(|e| Error::Config(format!("sources.{name}.secrets_file {}: {e}", path.display())))?
                .lines()
                .map(|s| s.trim().to_owned())
                .filter(|s| !s.is_empty())
                .collect(),
            _ => {
                return Err(Error::Config(format!(
                    "sources.{name}: give exactly one of secret_env and secrets_file"
                )));
            }
        };
        if raw.is_empty() {
            return Err(Error::Config(format!("sources.{name}: no secret configured")));
        }
        self.check_secret_lengths(name, &raw)?;
        let bytes = || raw.iter().map(|s| s.as_bytes().to_vec()).collect::<Vec<_>>();
        let tolerance = Duration::from_secs(self.tolerance_secs);
        let verifier = match self.verify {
            VerifyScheme::StandardWebhooks => Verifier::StandardWebhooks {
                keys: raw
                    .iter()
                    .map(|s| {
                        standard_webhooks_key(s).map_err(|e| Error::Config(format!("sources.{name}: {e}")))
                    })
                    .collect::<Result<_>>()?,
                tolerance,
            },
            VerifyScheme::Github => Verifier::Github { secrets: bytes() },
            VerifyScheme::Stripe => Verifier::Stripe { secrets: bytes(), tolerance },
            VerifyScheme::ApiKey => Verifier::ApiKey {
                header: self.header.clone().unwrap_or_else(|| "x-api-key".into()).to_ascii_lowercase(),
                keys: bytes(),
            },
            VerifyScheme::Bearer => Verifier::Bearer { tokens: bytes() },
        };
        Ok(crate::http::ingest::Door {
            verifier,
            max_body_bytes: self.max_body_bytes,
            content_types: self.content_types.iter().map(|c| c.to_ascii_lowercase()).collect(),
            read_timeout: Duration::from_secs(self.read_timeout_secs.max(1)),
        })
    }
}

/// `[database]`
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DatabaseConfig {
    /// `postgres://user@host/db` or `sqlite://path.db?mode=rwc`.
    pub url: String,
}

/// `[stages]`
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct StagesConfig {
    /// Rows claimed per transaction.
    pub batch_size: u64,
    /// Longest idle sleep, in milliseconds: how soon work from other processes is seen.
    pub poll_interval_ms: u64,
    /// Attempts before a row becomes `dead`.
    pub max_attempts: i32,
    /// First retry delay in milliseconds, doubled per attempt.
    pub base_backoff_ms: u64,
    /// Longest retry delay in milliseconds.
    pub max_backoff_ms: u64,
    /// Copies of the busiest stages running side by side on PostgreSQL.
    pub tasks: usize,
    /// Seconds a claimed batch is its worker's while the integrations run (outside any
    /// transaction); a worker that dies mid-batch leaves its rows to others after this.
    pub lease_secs: u64,
}

impl Default for StagesConfig {
    fn default() -> Self {
        let d = StageSettings::default();
        Self {
            batch_size: d.batch_size,
            poll_interval_ms: d.poll_interval.as_millis() as u64,
            max_attempts: d.max_attempts,
            base_backoff_ms: d.base_backoff.as_millis() as u64,
            max_backoff_ms: d.max_backoff.as_millis() as u64,
            tasks: HubSettings::default().stage_tasks,
            lease_secs: d.lease.as_secs(),
        }
    }
}

/// `[publish]`
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct PublishConfig {
    /// Seconds a claimed row is the publisher's before another may publish it again.
    pub lease_secs: u64,
    /// Seconds a queued row waits for its receipt before it is published again.
    pub ack_timeout_secs: u64,
    /// The queue receipts come back on (`hub-receipt-to`).
    pub receipts_queue: String,
    /// The queue the core app publishes downstream messages to; none to not consume one.
    pub inbound_queue: Option<String>,
    /// The queue delivery receipts go to, for targets whose integration file names none.
    pub delivery_receipts_queue: String,
}

impl Default for PublishConfig {
    fn default() -> Self {
        let d = PublishSettings::default();
        Self {
            lease_secs: d.lease.as_secs(),
            ack_timeout_secs: d.ack_timeout.as_secs(),
            receipts_queue: d.receipts_queue,
            inbound_queue: d.inbound_queue,
            delivery_receipts_queue: d.delivery_receipts_queue,
        }
    }
}

/// `[ingest]`
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct IngestConfig {
    /// Largest body accepted, in bytes.
    pub max_body_bytes: usize,
}

impl Default for IngestConfig {
    fn default() -> Self {
        Self { max_body_bytes: HubSettings::default().max_body_bytes }
    }
}

/// `[transport]`: `kind = "in-process" | "rabbitmq" | "sqs"` and that backend's settings.
#[derive(Debug, Clone, Deserialize)]
#[serde(tag = "kind", rename_all = "kebab-case", deny_unknown_fields)]
#[non_exhaustive]
pub enum TransportConfig {
    /// Queues inside this process: for embedding and the demo. A standalone worker has no
    /// consumer for them, so `check` and `run` refuse it unless `accept_without_consumer`.
    InProcess(InProcessSettings),
    /// RabbitMQ: `url`, `quorum_queues`, `max_message_bytes`, `confirm_timeout_secs`.
    #[cfg(feature = "rabbitmq")]
    Rabbitmq(RabbitMqConfig),
    /// RabbitMQ in a build without it: the config fails to load, saying so.
    #[cfg(not(feature = "rabbitmq"))]
    Rabbitmq(NotBuilt<NoRabbitMq>),
    /// AWS SQS or a compatible server: `endpoint_url`, `region`, `wait_time_seconds`, ...
    #[cfg(feature = "sqs")]
    Sqs(SqsConfig),
    /// SQS in a build without it: the config fails to load, saying so.
    #[cfg(not(feature = "sqs"))]
    Sqs(NotBuilt<NoSqs>),
}

/// A transport this build was compiled without, named by `kind`. Its variant stays in
/// [`TransportConfig`] so the config fails with the cargo feature to turn on rather than serde's
/// "unknown variant"; no value of it can exist (it never deserializes), so the code that would
/// build the transport is unreachable and needs no stub.
#[derive(Debug, Clone)]
pub struct NotBuilt<F>(std::convert::Infallible, std::marker::PhantomData<F>);

/// Names a cargo feature for [`NotBuilt`].
pub trait MissingFeature {
    /// The `kind` and the cargo feature (they are spelled alike).
    const NAME: &'static str;
}

/// `kind = "rabbitmq"` without the `rabbitmq` feature.
#[derive(Debug, Clone)]
pub enum NoRabbitMq {}
impl MissingFeature for NoRabbitMq {
    const NAME: &'static str = "rabbitmq";
}

/// `kind = "sqs"` without the `sqs` feature.
#[derive(Debug, Clone)]
pub enum NoSqs {}
impl MissingFeature for NoSqs {
    const NAME: &'static str = "sqs";
}

impl<'de, F: MissingFeature> Deserialize<'de> for NotBuilt<F> {
    fn deserialize<D: serde::Deserializer<'de>>(_: D) -> std::result::Result<Self, D::Error> {
        Err(serde::de::Error::custom(format_args!(
            "this build has no {0} transport (cargo feature `{0}`)",
            F::NAME
        )))
    }
}

impl Default for TransportConfig {
    fn default() -> Self {
        TransportConfig::InProcess(InProcessSettings::default())
    }
}

/// `[transport] kind = "in-process"`: the transport's settings plus the standalone worker's
/// opt-in to running without a consumer.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct InProcessSettings {
    /// Largest message carried, in bytes.
    pub max_message_bytes: usize,
    /// Messages one queue holds waiting; publishing to a full queue waits (back-pressure).
    pub max_queued: usize,
    /// Run `hub-worker run` on in-process queues although nothing in the process consumes
    /// them: for trying the front door and layers 1 to 3 without a broker. Messages reach
    /// layer 4 and wait there (at most `max_queued` per queue in memory, the rest unpublished).
    pub accept_without_consumer: bool,
}

impl Default for InProcessSettings {
    fn default() -> Self {
        let t = InProcessConfig::default();
        Self {
            max_message_bytes: t.max_message_bytes,
            max_queued: t.max_queued,
            accept_without_consumer: false,
        }
    }
}

impl From<&InProcessSettings> for InProcessConfig {
    fn from(s: &InProcessSettings) -> Self {
        InProcessConfig { max_message_bytes: s.max_message_bytes, max_queued: s.max_queued }
    }
}

impl TransportConfig {
    /// The running transport (RabbitMQ connects on first use).
    pub async fn build(&self) -> Arc<dyn Transport> {
        match self {
            TransportConfig::InProcess(c) => Arc::new(InProcessTransport::new(c.into())),
            #[cfg(feature = "rabbitmq")]
            TransportConfig::Rabbitmq(c) => Arc::new(RabbitMqTransport::new(c.clone())),
            #[cfg(feature = "sqs")]
            TransportConfig::Sqs(c) => Arc::new(SqsTransport::new(c.clone()).await),
            #[cfg(not(feature = "rabbitmq"))]
            TransportConfig::Rabbitmq(n) => match n.0 {},
            #[cfg(not(feature = "sqs"))]
            TransportConfig::Sqs(n) => match n.0 {},
        }
    }

    /// How this transport names queues (its rule and `[transport.queues]`), checked.
    pub fn queue_names(&self) -> std::result::Result<layer4_dispatch::QueueNames, String> {
        match self {
            TransportConfig::InProcess(_) => {
                Ok(layer4_dispatch::QueueNames::by_rule(layer4_dispatch::NameRule::InProcess))
            }
            #[cfg(feature = "rabbitmq")]
            TransportConfig::Rabbitmq(c) => c.queue_names(),
            #[cfg(feature = "sqs")]
            TransportConfig::Sqs(c) => c.queue_names(),
            #[cfg(not(feature = "rabbitmq"))]
            TransportConfig::Rabbitmq(n) => match n.0 {},
            #[cfg(not(feature = "sqs"))]
            TransportConfig::Sqs(n) => match n.0 {},
        }
    }
}

impl Config {
    /// The queue names this config uses itself, each with the key that names it: the receipts
    /// and inbound queues and the destinations of `[[routes]]`.
    pub fn configured_queues(&self) -> Vec<(String, &str)> {
        let mut out = vec![("publish.receipts_queue".to_owned(), self.publish.receipts_queue.as_str())];
        out.extend(self.publish.inbound_queue.as_deref().map(|q| ("publish.inbound_queue".to_owned(), q)));
        out.push((
            "publish.delivery_receipts_queue".to_owned(),
            self.publish.delivery_receipts_queue.as_str(),
        ));
        for (i, r) in self.routes.iter().enumerate() {
            out.extend(r.targets().map(|d| (format!("routes[{i}] destination"), d.as_str())));
        }
        out
    }

    /// Every queue this config names must be usable on its transport, and no two may share a
    /// physical queue: checked before anything connects, so SQS never answers with a raw
    /// `InvalidParameterValue`.
    fn check_queue_names(&self) -> Result<()> {
        let names = self.transport.queue_names().map_err(Error::Config)?;
        let queues = self.configured_queues();
        let list: Vec<&str> = queues.iter().map(|(_, q)| *q).collect();
        if let Some((i, why)) = names.check(&list).into_iter().next() {
            return Err(Error::Config(format!("{}: {why}", queues[i].0)));
        }
        Ok(())
    }
}

/// The top-level keys; only `HUB_<KEY>...` variables for these are configuration (others, such
/// as `HUB_LOG` or `HUB_TEST_PG`, belong to someone else).
const SECTIONS: &[&str] = &[
    "database",
    "stages",
    "publish",
    "ingest",
    "transport",
    "integrations",
    "integrations_dir",
    "routes",
    "http",
    "sources",
];

fn figment(path: Option<&Path>) -> Result<Figment> {
    let mut fig = Figment::new();
    if let Some(p) = path {
        if !p.exists() {
            return Err(Error::Config(format!("config file {} does not exist", p.display())));
        }
        fig = fig.merge(Toml::file(p));
    }
    let env = Env::prefixed("HUB_")
        .filter(|k| {
            let k = k.as_str().to_ascii_lowercase();
            SECTIONS.iter().any(|s| k == *s || k.starts_with(&format!("{s}__")))
        })
        .split("__");
    Ok(fig.merge(env))
}

impl Config {
    /// Loads `path` (if given) and `HUB_*` variables, then validates.
    pub fn load(path: Option<&Path>) -> Result<Self> {
        let mut cfg: Config = figment(path)?.extract().map_err(|e| Error::Config(e.to_string()))?;
        cfg.base_dir = path.and_then(Path::parent).map(Path::to_owned).unwrap_or_default();
        cfg.validate()?;
        Ok(cfg)
    }

    /// The integrations directory, resolved against the config file's directory.
    pub fn integrations_path(&self) -> Option<PathBuf> {
        self.integrations_dir.as_ref().map(|d| self.base_dir.join(d))
    }

    /// Only `database.url`, from `path` and the environment: what `migrate` and `trace` need.
    pub fn database_url(path: Option<&Path>) -> Result<String> {
        figment(path)?.extract_inner::<String>("database.url").map_err(|e| {
            Error::Config(format!(
                "no database URL (--database-url, database.url in the config, or HUB_DATABASE__URL): {e}"
            ))
        })
    }

    /// Checks what the types cannot: known integrations, sane numbers, usable routes.
    pub fn validate(&self) -> Result<()> {
        if self.database.url.is_empty() {
            return Err(Error::Config("database.url is empty".into()));
        }
        if self.stages.batch_size == 0 || self.stages.batch_size > 5000 {
            return Err(Error::Config("stages.batch_size must be 1 to 5000".into()));
        }
        if self.stages.max_attempts < 1 {
            return Err(Error::Config("stages.max_attempts must be at least 1".into()));
        }
        if self.stages.lease_secs < 1 {
            return Err(Error::Config("stages.lease_secs must be at least 1".into()));
        }
        self.check_queue_names()?;
        for name in &self.integrations {
            if !integrations::BUILT_IN.contains(&name.as_str()) {
                return Err(Error::Config(format!(
                    "integrations: unknown integration `{name}` (built in: {})",
                    integrations::BUILT_IN.join(", ")
                )));
            }
        }
        for (i, r) in self.routes.iter().enumerate() {
            if r.targets().next().is_none() || r.message_type.is_empty() {
                return Err(Error::Config(format!("routes[{i}]: type and destination must not be empty")));
            }
            if let Some(k) = &r.ordering_key
                && !k.starts_with('/')
            {
                return Err(Error::Config(format!(
                    "routes[{i}].ordering_key `{k}` is not a JSON pointer (starts with /)"
                )));
            }
            if let Some(why) = r.filter.as_ref().and_then(|f| f.problem_without_headers()) {
                return Err(Error::Config(format!("routes[{i}].filter: {why}")));
            }
        }
        if let Some(h) = &self.http {
            h.tokens()?;
        }
        self.http_tls()?;
        for (name, src) in &self.sources {
            if !self.integrations.contains(name) {
                return Err(Error::Config(format!(
                    "sources.{name}: no built-in integration `{name}` is enabled (an integration file \
                     declares its front door in its own [ingress])"
                )));
            }
            src.door(name)?;
        }
        if self.routes.is_empty() && self.integrations_dir.is_none() {
            return Err(Error::Config(
                "no routes: add [[routes]] with type and destination, or integrations_dir".into(),
            ));
        }
        Ok(())
    }

    /// The HTTP server's TLS configuration, its files read and checked now; `None`: plain
    /// HTTP (no `[http]`, or neither `tls_cert` nor `tls_key`).
    pub fn http_tls(&self) -> Result<Option<ServerTls>> {
        let Some(h) = &self.http else { return Ok(None) };
        match (&h.tls_cert, &h.tls_key) {
            (None, None) => Ok(None),
            #[cfg(feature = "tls")]
            (Some(cert), Some(key)) => {
                crate::http::tls::server_config(&self.base_dir.join(cert), &self.base_dir.join(key)).map(Some)
            }
            #[cfg(not(feature = "tls"))]
            (Some(_), Some(_)) => Err(Error::Config(
                "http.tls_cert: this build has no TLS (cargo feature `tls`); serve plain HTTP behind a proxy"
                    .into(),
            )),
            (Some(_), None) => Err(Error::Config(
                "http.tls_key: missing; http.tls_cert is set (give both for HTTPS, or neither)".into(),
            )),
            (None, Some(_)) => Err(Error::Config(
                "http.tls_cert: missing; http.tls_key is set (give both for HTTPS, or neither)".into(),
            )),
        }
    }

    /// The hub settings this config describes.
    pub fn settings(&self) -> HubSettings {
        let s = &self.stages;
        HubSettings {
            stage: StageSettings {
                batch_size: s.batch_size,
                poll_interval: Duration::from_millis(s.poll_interval_ms),
                max_attempts: s.max_attempts,
                base_backoff: Duration::from_millis(s.base_backoff_ms),
                max_backoff: Duration::from_millis(s.max_backoff_ms),
                lease: Duration::from_secs(s.lease_secs),
            },
            publish: PublishSettings {
                lease: Duration::from_secs(self.publish.lease_secs),
                ack_timeout: Duration::from_secs(self.publish.ack_timeout_secs),
                receipts_queue: self.publish.receipts_queue.clone(),
                inbound_queue: self.publish.inbound_queue.clone(),
                delivery_receipts_queue: self.publish.delivery_receipts_queue.clone(),
            },
            max_body_bytes: self.ingest.max_body_bytes,
            migrate: true,
            stage_tasks: s.tasks,
        }
    }

    /// Every configured source's door (secrets read now), built-in and from files.
    pub fn doors(&self, files: &[Integration]) -> Result<HashMap<String, crate::http::ingest::Door>> {
        let declared = files.iter().filter_map(|i| i.ingress.as_ref().map(|g| (&i.source, g)));
        self.sources.iter().chain(declared).map(|(n, s)| Ok((n.clone(), s.door(n)?))).collect()
    }

    /// A hub builder with everything this config names, and the integrations loaded from files.
    pub async fn hub_builder(&self, files: Vec<Integration>) -> Result<HubBuilder> {
        // The config's routes and each file's (added by `register`) form one route table.
        let mut b = Hub::builder(self.database.url.clone())
            .settings(self.settings())
            .transport(self.transport.build().await)
            .routes(self.routes.clone());
        for name in &self.integrations {
            b = integrations::register(b, name)
                .ok_or_else(|| Error::Config(format!("unknown integration `{name}`")))?;
        }
        for i in files {
            b = i.register(b);
        }
        Ok(b)
    }

    /// What `hub-worker trace` needs to tell a message's story as the audit desk does: the
    /// integration files' redaction rules (loaded without their secrets) and the receipts
    /// queue's address on the transport. Integration files with problems are refused, listing
    /// them: a file left out would have its source's redacted fields shown.
    pub fn audit_config(&self) -> Result<crate::audit::AuditConfig> {
        let mut redactions = crate::redact::Redactions::default();
        if let Some(dir) = self.integrations_path() {
            let loaded = files::load_dir(&dir, false);
            if !loaded.diagnostics.is_empty() {
                let all: Vec<String> = loaded.diagnostics.iter().map(ToString::to_string).collect();
                return Err(Error::Config(all.join("\n")));
            }
            for i in loaded.integrations {
                if let Some(r) = i.redaction {
                    redactions.insert(i.source, r);
                }
            }
        }
        let receipts = self.settings().publish.receipts_queue;
        let receipts_to = self.transport.queue_names().ok().and_then(|n| n.resolve(&receipts).ok());
        Ok(crate::audit::AuditConfig { redactions, receipts_to })
    }
}

/// Why a standalone worker refuses in-process queues, and what to do instead.
const NO_CONSUMER: &str = "a standalone worker's in-process queues have no consumer (the core app runs \
     in another process), so messages would wait in memory unreceived. Use kind = \"rabbitmq\" or \"sqs\", \
     or embed the hub in the core app as a library (hub_worker::Hub) to use in-process queues; to try the \
     worker without a broker anyway: accept_without_consumer = true";

/// A target's `receipts_to` must be a queue the transport can name, and not a queue the hub
/// consumes itself (the receipts or the inbound queue): the hub would take the delivery receipts
/// meant for the core app, and drop them as malformed.
fn receipts_to_problems(
    cfg: &Config,
    names: &layer4_dispatch::QueueNames,
    integrations: &[Integration],
) -> Vec<Diagnostic> {
    let consumed: Vec<&str> = std::iter::once(cfg.publish.receipts_queue.as_str())
        .chain(cfg.publish.inbound_queue.as_deref())
        .collect();
    let mut out = Vec::new();
    for i in integrations {
        for q in i.outbound.iter().flat_map(|o| &o.targets).filter_map(|t| t.spec.receipts_to.as_deref()) {
            let line = std::fs::read_to_string(&i.file).ok().and_then(|text| {
                files::Locator::new(&text).line_of(&["target".into(), "receipts_to".into()])
            });
            let problem = if consumed.contains(&q) {
                Some(format!(
                    "the hub consumes `{q}` itself (publish.receipts_queue or publish.inbound_queue)"
                ))
            } else {
                names.check(&[q]).into_iter().next().map(|(_, why)| why)
            };
            if let Some(why) = problem {
                out.push(Diagnostic {
                    file: i.file.clone(),
                    line,
                    message: format!("target.receipts_to `{q}` on {}: {why}", names.rule().transport()),
                });
            }
        }
    }
    out
}

/// Loads the config at `path` and its integrations directory and checks them together: what
/// `hub-worker check` reports and what `run` refuses to start on. Problems come with file and
/// line where they have one.
pub fn prepare(path: &Path) -> std::result::Result<(Config, Vec<Integration>), Vec<Diagnostic>> {
    let diag = |line: Option<usize>, message: String| Diagnostic { file: path.to_owned(), line, message };
    let text = match std::fs::read_to_string(path) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            return Err(vec![diag(None, "config file does not exist".into())]);
        }
        Err(e) => return Err(vec![diag(None, format!("cannot read the config file: {e}"))]),
    };
    let loc = Locator::new(&text);
    let cfg = match Config::load(Some(path)) {
        Ok(c) => c,
        // figment's errors carry no line; the file parsed alone gives one when the file is
        // the culprit (and not, say, a missing value the environment would have filled).
        Err(e) => {
            return Err(vec![match toml::from_str::<Config>(&text) {
                Err(te) => diag(te.span().map(|s| loc.line_at(s.start)), te.message().to_owned()),
                Ok(_) => diag(None, e.to_string()),
            }]);
        }
    };
    let mut out = Vec::new();
    if let TransportConfig::InProcess(s) = &cfg.transport
        && !s.accept_without_consumer
    {
        // The core app lives in another process and cannot reach queues in this one: every
        // message would end `queued` in memory, never received, never acknowledged.
        let line = loc.line_of(&["transport".into(), "kind".into()]);
        let what =
            if line.is_some() { "transport.kind = \"in-process\"" } else { "no [transport] (in-process)" };
        out.push(diag(line, format!("{what}: {NO_CONSUMER}")));
    }
    let Some(dir) = cfg.integrations_path() else {
        return if out.is_empty() { Ok((cfg, Vec::new())) } else { Err(out) };
    };
    // Front doors (and their secrets) are only used with the HTTP server on; targets' secrets
    // only when deliveries run (an inbound queue to take core messages from); pulled sources'
    // always (the hub polls them, and registering one reads its secrets).
    let secrets = files::Secrets {
        ingress: cfg.http.is_some(),
        targets: cfg.publish.inbound_queue.is_some(),
        pulls: true,
    };
    let mut loaded = files::load_dir_with(&dir, secrets);
    out.append(&mut loaded.diagnostics);
    // The core app's destinations on the configured transport, beside the config's own queues
    // (which `Config::validate` checked alone).
    if let Ok(names) = cfg.transport.queue_names() {
        let configured: Vec<&str> = cfg.configured_queues().into_iter().map(|(_, q)| q).collect();
        out.extend(files::check_queue_names(&dir, &names, &configured));
        out.extend(receipts_to_problems(&cfg, &names, &loaded.integrations));
    }
    for i in &loaded.integrations {
        if cfg.integrations.contains(&i.source) {
            out.push(Diagnostic {
                file: i.file.clone(),
                line: None,
                message: format!(
                    "source `{}` is also enabled as a built-in integration in {}",
                    i.source,
                    path.display()
                ),
            });
        }
        if cfg.sources.contains_key(&i.source) {
            out.push(diag(
                loc.line_of(&["sources".into(), i.source.clone()]),
                format!("sources.{}: the source's front door belongs in its file's [ingress]", i.source),
            ));
        }
    }
    for (i, r) in cfg.routes.iter().enumerate() {
        for d in r.targets() {
            if !loaded.catalogue.destinations.contains(d) {
                let key = if *d == r.destination { "destination" } else { "destinations" };
                out.push(diag(
                    loc.line_of(&["routes".into(), i.to_string(), key.into()]),
                    format!("destination `{d}` is not declared in {}", dir.join(files::CORE_FILE).display()),
                ));
            }
        }
    }
    if out.is_empty() { Ok((cfg, loaded.integrations)) } else { Err(out) }
}

#[cfg(test)]
mod tests {
    /// A config naming a transport this build was compiled without fails to load, naming the
    /// cargo feature (seen with `cargo test -p hub-worker --no-default-features --lib`).
    #[test]
    fn a_transport_left_out_of_the_build_is_a_config_error() {
        for (kind, built) in [("rabbitmq", cfg!(feature = "rabbitmq")), ("sqs", cfg!(feature = "sqs"))] {
            if built {
                continue;
            }
            let text = format!("[database]\nurl = \"sqlite::memory:\"\n[transport]\nkind = \"{kind}\"\n");
            let err = toml::from_str::<super::Config>(&text).expect_err("a transport not built").to_string();
            let want = format!("this build has no {kind} transport (cargo feature `{kind}`)");
            assert!(err.contains(&want), "{err}");
        }
    }

    /// HTTPS asked of a build without TLS is a config error, not a plain-HTTP server.
    #[cfg(not(feature = "tls"))]
    #[test]
    fn tls_left_out_of_the_build_is_a_config_error() {
        let text = "[database]\nurl = \"sqlite::memory:\"\n[http]\nlisten = \"127.0.0.1:0\"\ntls_cert = \"c.pem\"\ntls_key = \"k.pem\"\n";
        let cfg = toml::from_str::<super::Config>(text).expect("config");
        let err = cfg.http_tls().expect_err("no TLS in this build").to_string();
        assert!(err.contains("cargo feature `tls`"), "{err}");
    }

    /// A misspelt verification scheme is refused when the file is read, at its line, with the
    /// schemes there are.
    #[test]
    fn a_misspelt_verify_scheme_names_the_line_and_the_choices() {
        let text =
            "[database]\nurl = \"sqlite::memory:\"\n[sources.crm]\nverify = \"hmac\"\nsecret_env = \"X\"\n";
        let err = toml::from_str::<super::Config>(text).expect_err("unknown scheme").to_string();
        assert!(err.contains("line 4"), "{err}");
        assert!(err.contains("`standard-webhooks`, `github`, `stripe`, `api-key`, `bearer`"), "{err}");
    }

    /// A config route's filter tests a core message, which has no request headers.
    #[test]
    fn a_route_filter_on_a_header_is_refused() {
        let text = "[database]\nurl = \"sqlite::memory:\"\n[[routes]]\ntype = \"*\"\ndestination = \"q\"\n\
                    filter = { header = \"X-GitHub-Event\", equals = \"push\" }\n";
        let cfg = toml::from_str::<super::Config>(text).expect("config");
        let err = cfg.validate().expect_err("a header filter").to_string();
        assert!(
            err.contains("routes[0].filter") && err.contains("only known for incoming webhooks"),
            "{err}"
        );
    }

    /// Secret lengths follow the providers: GitHub takes a short secret (with a warning that
    /// names the source and the length, not the secret), Stripe, api-key and bearer refuse one
    /// below 16 naming the scheme and the minimum, and a Stripe secret without `whsec_` is
    /// warned about.
    #[test]
    fn secrets_are_checked_per_scheme() {
        use std::sync::{Arc, Mutex};
        #[derive(Clone, Default)]
        struct Logs(Arc<Mutex<Vec<u8>>>);
        impl std::io::Write for Logs {
            fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
                self.0.lock().expect("lock").extend_from_slice(b);
                Ok(b.len())
            }
            fn flush(&mut self) -> std::io::Result<()> {
                Ok(())
            }
        }
        let dir = std::env::temp_dir().join(format!("po-secrets-{}", uuid::Uuid::now_v7().simple()));
        std::fs::create_dir_all(&dir).expect("dir");
        let door = |scheme: &str, secret: &str| {
            let file = dir.join(scheme);
            std::fs::write(&file, format!("{secret}\n")).expect("secret file");
            let text = format!("verify = \"{scheme}\"\nsecrets_file = {:?}\n", file.display().to_string());
            let cfg: super::SourceConfig = toml::from_str(&text).expect("source");
            let logs = Logs::default();
            let sink = logs.clone();
            let sub = tracing_subscriber::fmt().with_writer(move || sink.clone()).with_ansi(false).finish();
            let door = tracing::subscriber::with_default(sub, || cfg.door("octo").map(|_| ()));
            let logs = String::from_utf8(logs.0.lock().expect("lock").clone()).expect("utf-8");
            (door.map_err(|e| e.to_string()), logs)
        };
        let (ok, logs) = door("github", "hunter2-gh");
        assert_eq!(ok, Ok(()), "GitHub allows short secrets");
        assert!(
            logs.contains("WARN") && logs.contains("sources.octo") && logs.contains("10 characters"),
            "{logs}"
        );
        assert!(!logs.contains("hunter2"), "the secret is never logged: {logs}");
        let (ok, logs) = door("github", "a-long-github-webhook-secret");
        assert_eq!((ok, logs.as_str()), (Ok(()), ""));

        for scheme in ["stripe", "api-key", "bearer"] {
            let (err, _) = door(scheme, "whsec_short1");
            let err = err.expect_err("too short");
            assert!(err.contains(&format!("a {scheme} secret must be at least 16")), "{err}");
            assert!(!err.contains("whsec_short1"), "{err}");
        }
        let (ok, logs) = door("stripe", "sk_live_0123456789abcdefghij");
        assert_eq!(ok, Ok(()));
        assert!(logs.contains("does not start with `whsec_`") && !logs.contains("sk_live"), "{logs}");
        let (ok, logs) = door("stripe", "whsec_8d1f0b3e6a2c4b9e7f5a1d3c");
        assert_eq!((ok, logs.as_str()), (Ok(()), ""));
        let _ = std::fs::remove_dir_all(&dir);
    }

    /// A target whose receipts would go to a queue the hub consumes itself is refused, at the
    /// line of its `receipts_to`.
    #[test]
    fn receipts_to_a_queue_the_hub_consumes_is_refused_at_its_line() {
        let src = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../examples/integrations");
        let dir = std::env::temp_dir().join(format!("po-rcpt-{}", uuid::Uuid::now_v7().simple()));
        let ints = dir.join("integrations");
        for sub in ["", "core", "schemas"] {
            std::fs::create_dir_all(ints.join(sub)).expect("dir");
            for e in std::fs::read_dir(src.join(sub)).expect("examples").flatten() {
                if e.path().is_file() {
                    std::fs::copy(e.path(), ints.join(sub).join(e.file_name())).expect("copy");
                }
            }
        }
        let crm = ints.join("crm.toml");
        let text = std::fs::read_to_string(&crm).expect("crm.toml");
        let text = text.replacen("[target]\n", "[target]\nreceipts_to = \"hub.receipts\"\n", 1);
        // Its secret present (a file): only a file without errors yields its target.
        let token = dir.join("crm.token");
        std::fs::write(&token, "crm-token-0123456789").expect("token");
        let text = text.replace(
            "{ env = \"CRM_API_TOKEN\" }",
            &format!("{{ file = {:?} }}", token.display().to_string()),
        );
        let line = text.lines().position(|l| l.starts_with("receipts_to")).expect("inserted") + 1;
        std::fs::write(&crm, text).expect("write");
        let cfg = dir.join("hub.toml");
        std::fs::write(
            &cfg,
            "integrations_dir = \"integrations\"\n[database]\nurl = \"sqlite::memory:\"\n\
             [transport]\nkind = \"in-process\"\naccept_without_consumer = true\n\
             [publish]\ninbound_queue = \"hub.inbound\"\n",
        )
        .expect("write");
        let Err(problems) = super::prepare(&cfg) else { panic!("the config was accepted") };
        let found = problems
            .iter()
            .find(|d| d.message.contains("receipts_to `hub.receipts`"))
            .unwrap_or_else(|| panic!("{problems:#?}"));
        assert!(found.message.contains("consumes"), "{}", found.message);
        assert_eq!((found.file.as_path(), found.line), (crm.as_path(), Some(line)));
        let _ = std::fs::remove_dir_all(&dir);
    }
}
