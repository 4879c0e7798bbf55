//! The downstream direction's declarations: the third parties the hub delivers to (targets)
//! and, per target and core message type, how a core message becomes the third party's request
//! (layer 3 translation, layer 2 request template) and what of the answer goes back to the core
//! app in the delivery receipt. Integration files declare them (`[target]`,
//! `[outbound."<core type>"]`); an embedding core app may build them in Rust.

use std::path::PathBuf;
use std::sync::Arc;

use layer2_normalize::request::RequestSpec;
use layer3_translate::Translator;

/// Where a secret comes from: an environment variable or a file (first line, trimmed). Never
/// the config itself, the database or the logs.
#[derive(Debug, Clone, PartialEq, Eq, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SecretRef {
    /// Environment variable holding the secret.
    #[serde(default)]
    pub env: Option<String>,
    /// File holding the secret.
    #[serde(default)]
    pub file: Option<PathBuf>,
}

/// How the hub authenticates to a target, as declared.
#[derive(Debug, Clone, PartialEq, Eq, Default, serde::Deserialize)]
#[serde(tag = "kind", rename_all = "kebab-case", deny_unknown_fields)]
#[non_exhaustive]
pub enum AuthSpec {
    /// No authentication.
    #[default]
    None,
    /// `Authorization: Bearer <token>`.
    Bearer {
        /// The token.
        token: SecretRef,
    },
    /// `<header>: <key>`.
    ApiKey {
        /// The header's name.
        header: String,
        /// The key.
        key: SecretRef,
    },
    /// HTTP basic.
    Basic {
        /// The user name (not a secret).
        username: String,
        /// The password.
        password: SecretRef,
    },
    /// OAuth2 client credentials: a token fetched from `token_url`, cached until it expires,
    /// fetched again once on a 401.
    Oauth2 {
        /// The token endpoint.
        token_url: String,
        /// The client id (not a secret).
        client_id: String,
        /// The client secret.
        client_secret: SecretRef,
        /// Scopes asked for, space-separated.
        #[serde(default)]
        scope: Option<String>,
        /// The audience some providers require.
        #[serde(default)]
        audience: Option<String>,
    },
    /// Requests signed with Standard Webhooks (`webhook-id`, `webhook-timestamp`,
    /// `webhook-signature`), for webhooks the hub sends to partners.
    StandardWebhooks {
        /// The signing secret, `whsec_<base64>`.
        secret: SecretRef,
    },
}

/// A third party the hub delivers to, as declared (secrets by reference only).
#[derive(Debug, Clone, PartialEq, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TargetSpec {
    /// Scheme, host and base path of the API (`https://api.crm.example/v2`).
    pub base_url: String,
    /// Connect timeout, milliseconds (default 5000).
    #[serde(default)]
    pub connect_timeout_ms: Option<u64>,
    /// Whole-request timeout, milliseconds (default 30000).
    #[serde(default)]
    pub timeout_ms: Option<u64>,
    /// The largest response body kept (default 1 MiB); the rest is not read.
    #[serde(default)]
    pub max_response_bytes: Option<usize>,
    /// Requests in flight to this target per worker (default 8).
    #[serde(default)]
    pub concurrency: Option<usize>,
    /// Requests per second per worker (default unlimited).
    #[serde(default)]
    pub rate_per_sec: Option<f64>,
    /// Consecutive transient failures that open the circuit (default 5).
    #[serde(default)]
    pub circuit_failures: Option<u32>,
    /// Seconds the circuit stays open before one probe (default 30).
    #[serde(default)]
    pub circuit_open_secs: Option<u64>,
    /// The idempotency key's header (default `Idempotency-Key`; `""` sends none).
    #[serde(default)]
    pub idempotency_header: Option<String>,
    /// Deliveries tried at most this many times before `dead` (default 8).
    #[serde(default)]
    pub max_attempts: Option<u32>,
    /// The first retry's delay, milliseconds (default 1000), doubling with jitter.
    #[serde(default)]
    pub retry_base_ms: Option<u64>,
    /// The longest delay between retries, milliseconds (default 300000).
    #[serde(default)]
    pub retry_max_ms: Option<u64>,
    /// The queue delivery receipts for this target go to (default: `publish.delivery_receipts`).
    #[serde(default)]
    pub receipts_to: Option<String>,
    /// Authentication.
    #[serde(default)]
    pub auth: AuthSpec,
}

impl TargetSpec {
    /// A target at `base_url` with every other setting at its default (no authentication).
    pub fn new(base_url: impl Into<String>) -> Self {
        Self {
            base_url: base_url.into(),
            connect_timeout_ms: None,
            timeout_ms: None,
            max_response_bytes: None,
            concurrency: None,
            rate_per_sec: None,
            circuit_failures: None,
            circuit_open_secs: None,
            idempotency_header: None,
            max_attempts: None,
            retry_base_ms: None,
            retry_max_ms: None,
            receipts_to: None,
            auth: AuthSpec::None,
        }
    }
}

impl TargetSpec {
    /// Deliveries tried at most this many times (`max_attempts`, default 8).
    pub fn attempts_allowed(&self) -> i32 {
        i32::try_from(self.max_attempts.unwrap_or(8).max(1)).unwrap_or(i32::MAX)
    }

    /// The first retry's delay and the longest (`retry_base_ms`, default 1 s; `retry_max_ms`,
    /// default 5 minutes).
    pub fn retry_delays(&self) -> (std::time::Duration, std::time::Duration) {
        (
            std::time::Duration::from_millis(self.retry_base_ms.unwrap_or(1000)),
            std::time::Duration::from_millis(self.retry_max_ms.unwrap_or(300_000)),
        )
    }
}

/// A target by name.
#[derive(Debug, Clone)]
pub struct Target {
    /// The target's name (the integration file's `source`): rows' `source` downstream.
    pub name: String,
    /// Its declaration.
    pub spec: TargetSpec,
}

/// How one core message type reaches one target.
#[derive(Clone)]
pub struct OutboundRoute {
    /// The target's name.
    pub target: String,
    /// The core message type it takes.
    pub message_type: String,
    /// Layer 3: the core message in the third party's terms (a mapping, or Rust code).
    pub translator: Arc<dyn Translator>,
    /// Layer 2: the request.
    pub request: Arc<RequestSpec>,
    /// Deliveries with the same value at this pointer of the core message reach the target in
    /// the order the core app sent them.
    pub ordering_key: Option<String>,
    /// Receipt field name -> JSON pointer into the third party's JSON answer (`crm_id` = `/id`).
    pub response_fields: Vec<(String, String)>,
}

impl std::fmt::Debug for OutboundRoute {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("OutboundRoute")
            .field("target", &self.target)
            .field("message_type", &self.message_type)
            .field("request", &self.request)
            .field("ordering_key", &self.ordering_key)
            .field("response_fields", &self.response_fields)
            .finish_non_exhaustive()
    }
}

/// Every target and outbound route a hub knows.
#[derive(Debug, Clone, Default)]
pub struct Outbound {
    /// The targets.
    pub targets: Vec<Target>,
    /// The routes.
    pub routes: Vec<OutboundRoute>,
}

impl Outbound {
    /// The route for `message_type` to `target`.
    pub fn route(&self, target: &str, message_type: &str) -> Option<&OutboundRoute> {
        self.routes.iter().find(|r| r.target == target && r.message_type == message_type)
    }

    /// The target named `name`.
    pub fn target(&self, name: &str) -> Option<&Target> {
        self.targets.iter().find(|t| t.name == name)
    }

    /// Adds `other`'s targets and routes.
    pub fn extend(&mut self, other: Outbound) {
        self.targets.extend(other.targets);
        self.routes.extend(other.routes);
    }
}

impl SecretRef {
    /// Reads the secret now: the environment variable, or the file's first line (trimmed).
    /// The error names the variable or file, never a value.
    pub fn read(&self) -> Result<layer1_ingest::deliver::Secret, String> {
        let value = match (&self.env, &self.file) {
            (Some(var), None) => {
                std::env::var(var).map_err(|_| format!("environment variable {var} is not set"))?
            }
            (None, Some(path)) => {
                let text = std::fs::read_to_string(path)
                    .map_err(|e| format!("cannot read secret file {}: {e}", path.display()))?;
                text.lines().next().unwrap_or("").trim().to_owned()
            }
            _ => return Err("give exactly one of `env` and `file`".into()),
        };
        if value.is_empty() {
            return Err(match &self.env {
                Some(var) => format!("environment variable {var} is empty"),
                None => "the secret file is empty".into(),
            });
        }
        Ok(layer1_ingest::deliver::Secret::new(value))
    }
}

impl AuthSpec {
    /// The authentication with its secrets read.
    pub fn resolve(&self) -> Result<layer1_ingest::deliver::Auth, String> {
        use layer1_ingest::deliver::Auth;
        Ok(match self {
            AuthSpec::None => Auth::None,
            AuthSpec::Bearer { token } => {
                Auth::Bearer { token: token.read().map_err(|e| format!("auth.token: {e}"))? }
            }
            AuthSpec::ApiKey { header, key } => Auth::ApiKey {
                header: header.clone(),
                key: key.read().map_err(|e| format!("auth.key: {e}"))?,
            },
            AuthSpec::Basic { username, password } => Auth::Basic {
                username: username.clone(),
                password: password.read().map_err(|e| format!("auth.password: {e}"))?,
            },
            AuthSpec::Oauth2 { token_url, client_id, client_secret, scope, audience } => Auth::OAuth2 {
                token_url: token_url.clone(),
                client_id: client_id.clone(),
                client_secret: client_secret.read().map_err(|e| format!("auth.client_secret: {e}"))?,
                scope: scope.clone(),
                audience: audience.clone(),
            },
            AuthSpec::StandardWebhooks { secret } => {
                Auth::StandardWebhooks { secret: secret.read().map_err(|e| format!("auth.secret: {e}"))? }
            }
        })
    }
}

impl Target {
    /// The delivery settings, secrets read now (from the environment or files).
    pub fn settings(&self) -> Result<layer1_ingest::deliver::TargetSettings, String> {
        use std::time::Duration;
        let s = &self.spec;
        let mut t = layer1_ingest::deliver::TargetSettings::new(self.name.clone(), s.base_url.clone());
        if let Some(ms) = s.connect_timeout_ms {
            t.connect_timeout = Duration::from_millis(ms);
        }
        if let Some(ms) = s.timeout_ms {
            t.timeout = Duration::from_millis(ms);
        }
        if let Some(n) = s.max_response_bytes {
            t.max_response_bytes = n;
        }
        if let Some(n) = s.concurrency {
            t.concurrency = n.max(1);
        }
        t.rate_per_sec = s.rate_per_sec;
        if let Some(n) = s.circuit_failures {
            t.circuit_failures = n.max(1);
        }
        if let Some(secs) = s.circuit_open_secs {
            t.circuit_open = Duration::from_secs(secs);
        }
        if let Some(h) = &s.idempotency_header {
            t.idempotency_header = (!h.is_empty()).then(|| h.clone());
        }
        t.auth = s.auth.resolve()?;
        Ok(t)
    }
}
