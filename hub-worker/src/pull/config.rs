//! `[pull]` of an integration file: a source the hub polls itself, as declared. Checked by
//! `crate::files` (each problem `file:line: error`) and built into a
//! [`layer1_ingest::pull::run::PullSettings`] by [`PullConfig::settings`].

use std::collections::BTreeMap;
use std::time::Duration;

use serde::Deserialize;

use layer1_ingest::pull::{Method, Pagination, PullSpec, QueryValue, SyncMode};

use crate::outbound::AuthSpec;

/// `[pull]`.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PullConfig {
    /// The listing's absolute URL (`https://shop.example/api/orders`), may carry a query.
    pub url: String,
    /// `GET` (default) or `POST`.
    #[serde(default)]
    pub method: Option<Method>,
    /// When to run: a cron expression, 5 fields or 6 with seconds first
    /// (`*/30 * * * * *`: every 30 seconds). None: only by hand (CLI, API).
    #[serde(default)]
    pub schedule: Option<String>,
    /// The schedule's IANA time zone (`Europe/Paris`); default UTC.
    #[serde(default)]
    pub timezone: Option<String>,
    /// JSON pointer to the records array in a page (none: the page is the array).
    #[serde(default)]
    pub records: Option<String>,
    /// `full_refresh` (default), `incremental` or `incremental_dedup`.
    #[serde(default)]
    pub mode: SyncMode,
    /// JSON pointer (inside a record) to its cursor field, e.g. `/updated_at`; required by
    /// the incremental modes.
    #[serde(default)]
    pub cursor_field: Option<String>,
    /// Query parameter that sends the saved cursor (e.g. `updated_since`); none: the API is
    /// not asked to filter and the hub filters what it reads.
    #[serde(default)]
    pub cursor_param: Option<String>,
    /// JSON pointer (inside a record) to its id; required by `incremental_dedup`.
    #[serde(default)]
    pub primary_key: Option<String>,
    /// Records per page (sent by the page-number and offset styles).
    #[serde(default)]
    pub page_size: Option<u32>,
    /// Pages per run (default 1000); a run that reaches it stops and the next continues.
    #[serde(default)]
    pub max_pages: Option<u32>,
    /// Largest page accepted, bytes (default 16 MiB).
    #[serde(default)]
    pub max_page_bytes: Option<usize>,
    /// Requests per second to this API per worker (default unlimited).
    #[serde(default)]
    pub rate_per_sec: Option<f64>,
    /// Whole-request timeout, milliseconds (default 30000).
    #[serde(default)]
    pub timeout_ms: Option<u64>,
    /// Connect timeout, milliseconds (default 5000).
    #[serde(default)]
    pub connect_timeout_ms: Option<u64>,
    /// Transient failures (5xx, 408, 429, timeouts) retried per request within a run before
    /// the run fails (default 5).
    #[serde(default)]
    pub max_retries: Option<u32>,
    /// First retry's delay, milliseconds (default 500), doubling with jitter.
    #[serde(default)]
    pub retry_base_ms: Option<u64>,
    /// Longest delay between retries, and the longest `Retry-After` waited for within a run,
    /// milliseconds (default 60000). A longer `Retry-After` fails the run; the next run
    /// resumes.
    #[serde(default)]
    pub retry_max_ms: Option<u64>,
    /// How long a run holds the source without renewing it, milliseconds (default 60000):
    /// after a worker dies mid-run, another takes the source over once this has passed. A run
    /// renews it every third of it and with every page.
    #[serde(default)]
    pub lease_ms: Option<u64>,
    /// Fixed query parameters.
    #[serde(default)]
    pub query: BTreeMap<String, toml::Value>,
    /// Fixed request headers (no secrets: authentication goes in `auth`).
    #[serde(default)]
    pub headers: BTreeMap<String, String>,
    /// How pages follow each other.
    #[serde(default)]
    pub pagination: PaginationConfig,
    /// Authentication, as for a `[target]`.
    #[serde(default)]
    pub auth: AuthSpec,
}

/// `[pull.pagination]`.
#[derive(Debug, Clone, PartialEq, Eq, Default, Deserialize)]
#[serde(tag = "style", rename_all = "snake_case", deny_unknown_fields)]
pub enum PaginationConfig {
    /// One request per run.
    #[default]
    None,
    /// `next` points at the next page's cursor in the body, sent back in query `param`.
    Cursor {
        /// Pointer to the cursor.
        next: String,
        /// Query parameter.
        param: String,
    },
    /// `next` points at the next page's URL in the body.
    NextLink {
        /// Pointer to the URL.
        next: String,
    },
    /// The `Link: <...>; rel="next"` header.
    LinkHeader,
    /// Numbered pages in query `param`, from `start` (default 1); the page size in
    /// `size_param` when given.
    PageNumber {
        /// Query parameter of the page number.
        param: String,
        /// First page's number.
        #[serde(default)]
        start: Option<u64>,
        /// Query parameter of the page size.
        #[serde(default)]
        size_param: Option<String>,
    },
    /// Offset and limit query parameters.
    OffsetLimit {
        /// Query parameter of the offset.
        offset_param: String,
        /// Query parameter of the limit (the page size).
        limit_param: String,
    },
}

impl PullConfig {
    /// The request and paging rules. Errors name the key (`query.limit: ...`).
    pub fn spec(&self) -> Result<PullSpec, Vec<String>> {
        let mut spec = PullSpec::new(self.url.clone());
        let mut out = Vec::new();
        spec.method = self.method.unwrap_or(Method::Get);
        for (k, v) in &self.query {
            let value = match v {
                toml::Value::String(s) => QueryValue::Text(s.clone()),
                toml::Value::Integer(i) => match layer1_ingest::json::Number::parse(&i.to_string()) {
                    Some(n) => QueryValue::Number(n),
                    None => {
                        out.push(format!("query.{k}: not a number"));
                        continue;
                    }
                },
                toml::Value::Boolean(b) => QueryValue::Bool(*b),
                other => {
                    out.push(format!(
                        "query.{k}: a {} is not a query value (text, integer or boolean)",
                        other.type_str()
                    ));
                    continue;
                }
            };
            spec.query.push((k.clone(), value));
        }
        spec.headers = self.headers.iter().map(|(k, v)| (k.clone(), v.clone())).collect();
        spec.records = self.records.clone();
        spec.pagination = match &self.pagination {
            PaginationConfig::None => Pagination::None,
            PaginationConfig::Cursor { next, param } => {
                Pagination::CursorInBody { next: next.clone(), param: param.clone() }
            }
            PaginationConfig::NextLink { next } => Pagination::NextLinkInBody { next: next.clone() },
            PaginationConfig::LinkHeader => Pagination::LinkHeader,
            PaginationConfig::PageNumber { param, start, size_param } => Pagination::PageNumber {
                param: param.clone(),
                start: start.unwrap_or(1),
                size_param: size_param.clone(),
            },
            PaginationConfig::OffsetLimit { offset_param, limit_param } => Pagination::OffsetLimit {
                offset_param: offset_param.clone(),
                limit_param: limit_param.clone(),
            },
        };
        spec.page_size = self.page_size;
        if let Some(n) = self.max_pages {
            spec.max_pages = n;
        }
        if let Some(n) = self.max_page_bytes {
            spec.max_page_bytes = n;
        }
        spec.cursor_field = self.cursor_field.clone();
        spec.cursor_param = self.cursor_param.clone();
        if let Err(mut e) = spec.validate() {
            out.append(&mut e);
        }
        if let Err(mut e) = self.mode.check(&spec, self.primary_key.as_deref()) {
            out.append(&mut e);
        }
        if out.is_empty() { Ok(spec) } else { Err(out) }
    }

    /// The parsed schedule, if any: `Err` names what is wrong with the expression or zone.
    pub fn schedule(&self) -> Result<Option<super::Schedule>, String> {
        match &self.schedule {
            None => {
                if self.timezone.is_some() {
                    return Err("timezone: given without a schedule".into());
                }
                Ok(None)
            }
            Some(expr) => super::Schedule::parse(expr, self.timezone.as_deref()).map(Some),
        }
    }

    /// Everything a run needs, secrets read now (errors name the key, never a value).
    pub fn settings(&self, source: &str) -> Result<layer1_ingest::pull::run::PullSettings, Vec<String>> {
        let spec = self.spec()?;
        let auth = self.auth.resolve().map_err(|e| vec![e])?;
        let mut s = layer1_ingest::pull::run::PullSettings::new(source, spec, auth);
        s.mode = self.mode;
        s.primary_key = self.primary_key.clone();
        s.rate_per_sec = self.rate_per_sec;
        if let Some(ms) = self.timeout_ms {
            s.timeout = Duration::from_millis(ms);
        }
        if let Some(ms) = self.connect_timeout_ms {
            s.connect_timeout = Duration::from_millis(ms);
        }
        if let Some(n) = self.max_retries {
            s.max_retries = n;
        }
        if let Some(ms) = self.retry_base_ms {
            s.retry_base = Duration::from_millis(ms);
        }
        if let Some(ms) = self.retry_max_ms {
            s.retry_max = Duration::from_millis(ms);
        }
        if let Some(ms) = self.lease_ms {
            s.lease = Duration::from_millis(ms);
        }
        Ok(s)
    }
}
