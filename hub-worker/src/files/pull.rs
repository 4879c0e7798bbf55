//! An integration file's `[pull]`: a source the hub polls itself, checked before anything runs.
//! Its pages are stored whole in layer 1 and split into records at layer 2 by the source's
//! normalizer, as a batch webhook is, so the pull must agree with `[payload]` (where the records
//! are, how many a page may hold, the page's schema) and with the record kinds (where the cursor
//! and the primary key are).

use std::path::Path;

use layer2_normalize::JsonSchema;

use super::target::check_auth;
use super::{Diagnostic, FileDiags, Locator, is_pointer, read_text};
use crate::outbound::AuthSpec;
use crate::pull::{PaginationConfig, PullConfig};

/// Defaults of [`PullConfig`] (as `layer1_ingest::pull::run::PullSettings::new` sets them), for
/// the check that compares two settings.
const DEFAULT_RETRY_BASE_MS: u64 = 500;
const DEFAULT_RETRY_MAX_MS: u64 = 60_000;

/// What `[payload]` says that a pull must agree with.
pub(super) struct PagePayload<'a> {
    /// `[payload] records`.
    pub records: Option<&'a str>,
    /// `[payload] max_records`, or its default.
    pub max_records: usize,
    /// `[payload] schema`, compiled: the whole page's.
    pub schema: Option<&'a JsonSchema>,
}

/// One record kind, for the cursor and primary key checks.
pub(super) struct KindSchema<'a> {
    /// The kind's name.
    pub name: &'a str,
    /// The schema file as the integration file names it.
    pub file: &'a Path,
    /// The compiled schema.
    pub schema: &'a JsonSchema,
}

/// The key path (below the file's root) a `"key: message"` problem of [`PullConfig::spec`],
/// [`PullConfig::schedule`] or [`PullConfig::settings`] names: `pagination.next: ...` is
/// `["pull", "pagination", "next"]`; a query parameter or header name is one key even with a
/// dot in it. A message without a key is the whole `[pull]`'s.
pub(super) fn key_path(message: &str) -> Vec<String> {
    let mut path = vec!["pull".to_owned()];
    let Some((key, _)) = message.split_once(": ") else { return path };
    let is_key = !key.is_empty()
        && key.bytes().all(|b| b.is_ascii_alphanumeric() || b"._-".contains(&b))
        && !key.starts_with('.')
        && !key.ends_with('.');
    if !is_key {
        return path;
    }
    match key.split_once('.') {
        Some((head @ ("query" | "headers"), name)) => path.extend([head.to_owned(), name.to_owned()]),
        _ => path.extend(key.split('.').map(str::to_owned)),
    }
    path
}

/// `pull.<message>` at its key's line: the diagnostic names the key as the file writes it.
fn report(d: &mut FileDiags<'_>, message: &str) {
    d.at_path(&key_path(message), format!("pull.{message}"));
}

/// `[pull]`: its request and paging rules and its schedule as [`PullConfig`] checks them, its
/// agreement with `[payload]` and with the record kinds' schemas, its limits, its authentication
/// and, when `check_secrets`, that its secrets are there and the settings build.
pub(super) fn check_pull(
    d: &mut FileDiags<'_>,
    source: &str,
    pull: &PullConfig,
    payload: &PagePayload<'_>,
    kinds: &[KindSchema<'_>],
    check_secrets: bool,
) {
    let before = d.out.len();
    check_records(d, pull, payload);
    // The spec as it will run: records from `[payload]`, which splits the pages at layer 2.
    let mut as_run = pull.clone();
    as_run.records = payload.records.filter(|r| is_pointer(r)).map(str::to_owned);
    if let Err(problems) = as_run.spec() {
        for p in problems {
            report(d, &p);
        }
    }
    if let Err(p) = pull.schedule() {
        report(d, &p);
    }
    if let Some(page) = payload.schema {
        check_next(d, &pull.pagination, page);
    }
    for (key, pointer) in [("cursor_field", &pull.cursor_field), ("primary_key", &pull.primary_key)] {
        if let Some(p) = pointer.as_deref().filter(|p| is_pointer(p)) {
            check_in_records(d, key, p, kinds);
        }
    }
    check_limits(d, pull, payload);
    check_url_and_headers(d, pull);
    if matches!(pull.auth, AuthSpec::StandardWebhooks { .. }) {
        d.at(
            &["pull", "auth", "kind"],
            "pull.auth: `standard-webhooks` signs deliveries the hub sends; a pulled source authenticates \
             with none, bearer, api-key, basic or oauth2",
        );
    }
    let auth_at = d.out.len();
    check_auth(d, &["pull", "auth"], &pull.auth, check_secrets);
    for problem in &mut d.out[auth_at..] {
        problem.message = format!("pull.auth: {}", problem.message);
    }
    // What the runner will be given: with secrets checked, it must build.
    if check_secrets
        && d.out.len() == before
        && let Err(problems) = as_run.settings(source)
    {
        for p in problems {
            report(d, &p);
        }
    }
}

/// `[pull] records`, when given, must be `[payload] records`: layer 2 splits each stored page
/// at `[payload] records`, the runner picks records (cursor, keys) at `[pull] records`, and
/// the two must see the same records. A pulled source needs `[payload] records` at all.
fn check_records(d: &mut FileDiags<'_>, pull: &PullConfig, payload: &PagePayload<'_>) {
    match (pull.records.as_deref(), payload.records) {
        (_, None) => d.at(
            &["pull", "records"],
            "pull.records: a pulled source needs [payload] records (the pointer to the records array in \
             a page, or \"\" when the page is the array): layer 2 splits each page into records at it",
        ),
        (Some(r), Some(p)) if r != p => d.at(
            &["pull", "records"],
            format!(
                "pull.records: `{r}` differs from [payload] records `{p}`: layer 2 splits each page at \
                 [payload] records, so leave [pull] records out (it defaults to [payload] records)"
            ),
        ),
        _ => {}
    }
}

/// Whether `types` (from [`JsonSchema::types_can_be`]) has one of `wanted`.
fn any_of(types: &[&str], wanted: &[&str]) -> bool {
    types.iter().any(|t| wanted.contains(t))
}

/// `a string or a number`, `an integer`, ... for messages.
fn describe(types: &[&str]) -> String {
    if types.is_empty() {
        return "never present".into();
    }
    let named: Vec<String> = types
        .iter()
        .map(|t| match *t {
            "integer" | "array" | "object" => format!("an {t}"),
            "null" => "null".into(),
            other => format!("a {other}"),
        })
        .collect();
    format!("only ever {}", named.join(" or "))
}

/// A next cursor or link read from the page must be able to be there, with a usable type: a
/// cursor a string or a number (null or absent ends the listing), a link a string.
fn check_next(d: &mut FileDiags<'_>, pagination: &PaginationConfig, page: &JsonSchema) {
    let (next, wanted, what): (&str, &[&str], &str) = match pagination {
        PaginationConfig::Cursor { next, .. } => {
            (next, &["string", "number", "integer"], "a next cursor is read as a string or a number")
        }
        PaginationConfig::NextLink { next } => (next, &["string"], "a next link is read as a string"),
        _ => return,
    };
    if !is_pointer(next) {
        return; // `spec()` said so
    }
    if !page.can_exist(next) {
        d.at(
            &["pull", "pagination", "next"],
            format!(
                "pull.pagination.next: `{next}` cannot exist in a page: the [payload] schema does not allow it"
            ),
        );
    } else if let Some(types) = page.types_can_be(next)
        && !any_of(&types, wanted)
    {
        d.at(
            &["pull", "pagination", "next"],
            format!("pull.pagination.next: `{next}` is {} in the [payload] schema; {what}", describe(&types)),
        );
    }
}

/// The cursor field or primary key must be able to be in a record of every kind, as a string
/// or a number.
fn check_in_records(d: &mut FileDiags<'_>, key: &str, pointer: &str, kinds: &[KindSchema<'_>]) {
    for k in kinds {
        let file = k.file.display();
        if !k.schema.can_exist(pointer) {
            d.at(
                &["pull", key],
                format!(
                    "pull.{key}: `{pointer}` cannot exist in a record of kind `{}`: its schema {file} does not \
                     allow it",
                    k.name
                ),
            );
        } else if let Some(types) = k.schema.types_can_be(pointer)
            && !any_of(&types, &["string", "number", "integer"])
        {
            d.at(
                &["pull", key],
                format!(
                    "pull.{key}: `{pointer}` is {} in a record of kind `{}` (schema {file}); it is read as a \
                     string or a number",
                    describe(&types),
                    k.name
                ),
            );
        }
    }
}

/// Bounds and timeouts that would make every run fail, and a page size layer 2 would refuse.
fn check_limits(d: &mut FileDiags<'_>, pull: &PullConfig, payload: &PagePayload<'_>) {
    if let Some(n) = pull.page_size
        && n as usize > payload.max_records
    {
        d.at(
            &["pull", "page_size"],
            format!(
                "pull.page_size: {n} records per page is above [payload] max_records ({}): layer 2 would \
                 reject a full page",
                payload.max_records
            ),
        );
    }
    for (key, v) in [
        ("timeout_ms", pull.timeout_ms),
        ("connect_timeout_ms", pull.connect_timeout_ms),
        ("retry_base_ms", pull.retry_base_ms),
        ("retry_max_ms", pull.retry_max_ms),
    ] {
        if v == Some(0) {
            d.at(&["pull", key], format!("pull.{key}: must be at least 1"));
        }
    }
    if let Some(r) = pull.rate_per_sec
        && !(r.is_finite() && r > 0.0)
    {
        d.at(
            &["pull", "rate_per_sec"],
            "pull.rate_per_sec: must be a number above 0 (leave it out for no limit)",
        );
    }
    if let Some(ms) = pull.lease_ms
        && ms < 1000
    {
        d.at(
            &["pull", "lease_ms"],
            format!("pull.lease_ms: {ms} ms is too short: a run renews its lease every third of it (at least 1000)"),
        );
    }
    let base = pull.retry_base_ms.unwrap_or(DEFAULT_RETRY_BASE_MS);
    let max = pull.retry_max_ms.unwrap_or(DEFAULT_RETRY_MAX_MS);
    if base > max {
        let key = if pull.retry_base_ms.is_some() { "retry_base_ms" } else { "retry_max_ms" };
        d.at(
            &["pull", key],
            format!("pull.{key}: the first retry's delay ({base} ms) is longer than the longest ({max} ms)"),
        );
    }
}

/// No credentials in the fixed headers: they go in `[pull.auth]`, by reference (the URL's
/// own are refused by [`PullConfig::spec`]).
fn check_url_and_headers(d: &mut FileDiags<'_>, pull: &PullConfig) {
    let api_key = match &pull.auth {
        AuthSpec::ApiKey { header, .. } => Some(header.as_str()),
        _ => None,
    };
    for name in pull.headers.keys() {
        if name.eq_ignore_ascii_case("authorization") {
            d.at(
                &["pull", "headers", name],
                format!("pull.headers.{name}: authentication goes in [pull.auth], by reference to a secret"),
            );
        } else if api_key.is_some_and(|h| h.eq_ignore_ascii_case(name)) {
            d.at(
                &["pull", "headers", name],
                format!("pull.headers.{name}: the API key of [pull.auth] goes in this header"),
            );
        }
    }
}

/// The problems of a `[pull]` that cannot run after all (its settings do not build, usually a
/// secret missing at start), each `file:line: error: pull.<key>: ...` as `check` prints them.
pub(super) fn problems(file: &Path, source: &str, messages: &[String]) -> Vec<String> {
    let loc = Locator::new(&read_text(file).unwrap_or_default());
    messages
        .iter()
        .map(|m| {
            Diagnostic {
                file: file.to_owned(),
                line: loc.line_of(&key_path(m)),
                message: format!("pull.{m} (source `{source}` cannot be polled)"),
            }
            .to_string()
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::key_path;

    #[test]
    fn messages_name_their_keys() {
        let p = |m: &str| key_path(m).join(".");
        assert_eq!(p("pagination.next: `x` is not a JSON pointer"), "pull.pagination.next");
        assert_eq!(p("schedule: `* *` is not a cron expression: bad"), "pull.schedule");
        assert_eq!(p("query.page.size: not a number"), "pull.query.page.size");
        assert_eq!(key_path("headers.X-Api.Version: bad")[2], "X-Api.Version");
        assert_eq!(p("auth.token: environment variable T is not set"), "pull.auth.token");
        assert_eq!(p("invalid pull settings"), "pull");
        assert_eq!(p("`url` is odd: x"), "pull");
    }
}
