//! An integration file's `[target]`: the third party the hub delivers to, checked before
//! anything runs: its base URL, its limits, its authentication and, when secrets are checked,
//! that each secret is there (and, for a signing secret, that it is one).

use crate::outbound::{AuthSpec, SecretRef, TargetSpec};

use super::FileDiags;

/// The defaults [`TargetSpec`] documents, for the checks that compare two settings.
const DEFAULT_RETRY_BASE_MS: u64 = 1000;
const DEFAULT_RETRY_MAX_MS: u64 = 300_000;

/// RFC 9110 section 5.6.2: a header name is a token.
pub(super) fn is_header_name(name: &str) -> bool {
    !name.is_empty() && name.bytes().all(|b| b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b))
}

/// The headers the hub itself sends to this target besides the reserved ones (its idempotency
/// header, its API key header), lower-case: a request template may not set them too.
pub(super) fn own_headers(t: &TargetSpec) -> Vec<(String, &'static str)> {
    let mut out = Vec::new();
    if let Some(h) = t.idempotency_header.as_deref().filter(|h| !h.is_empty()) {
        out.push((
            h.to_ascii_lowercase(),
            "the target's idempotency_header: the hub sends each delivery's key in it",
        ));
    }
    if let AuthSpec::ApiKey { header, .. } = &t.auth {
        out.push((header.to_ascii_lowercase(), "the target's API key header: the hub authenticates in it"));
    }
    out
}

/// `[target]`: every setting, and the secrets when `check_secrets`.
pub(super) fn check_target(d: &mut FileDiags<'_>, t: &TargetSpec, check_secrets: bool) {
    if let Err(e) = check_url(&t.base_url, false) {
        d.at(&["target", "base_url"], format!("base_url `{}` {e}", t.base_url));
    }
    let at_least_one = [
        ("connect_timeout_ms", t.connect_timeout_ms.map(|v| v as u128)),
        ("timeout_ms", t.timeout_ms.map(|v| v as u128)),
        ("max_response_bytes", t.max_response_bytes.map(|v| v as u128)),
        ("concurrency", t.concurrency.map(|v| v as u128)),
        ("circuit_failures", t.circuit_failures.map(u128::from)),
        ("circuit_open_secs", t.circuit_open_secs.map(u128::from)),
        ("max_attempts", t.max_attempts.map(u128::from)),
        ("retry_base_ms", t.retry_base_ms.map(u128::from)),
        ("retry_max_ms", t.retry_max_ms.map(u128::from)),
    ];
    for (key, v) in at_least_one {
        if v == Some(0) {
            d.at(&["target", key], format!("{key} must be at least 1"));
        }
    }
    if let Some(r) = t.rate_per_sec
        && !(r.is_finite() && r > 0.0)
    {
        d.at(
            &["target", "rate_per_sec"],
            "rate_per_sec must be a number above 0 (leave it out for no limit)",
        );
    }
    let base = t.retry_base_ms.unwrap_or(DEFAULT_RETRY_BASE_MS);
    let max = t.retry_max_ms.unwrap_or(DEFAULT_RETRY_MAX_MS);
    if base > max {
        d.at(
            &["target", if t.retry_base_ms.is_some() { "retry_base_ms" } else { "retry_max_ms" }],
            format!("the first retry's delay ({base} ms) is longer than the longest ({max} ms)"),
        );
    }
    if let Some(h) = &t.idempotency_header
        && !h.is_empty()
        && !is_header_name(h)
    {
        d.at(
            &["target", "idempotency_header"],
            format!("`{h}` is not an HTTP header name (\"\" sends none)"),
        );
    }
    if let Some(q) = &t.receipts_to
        && (q.is_empty() || q.len() > 255 || q.chars().any(char::is_control))
    {
        d.at(&["target", "receipts_to"], format!("receipts_to `{q}` is not 1 to 255 characters"));
    }
    check_auth(d, &["target", "auth"], &t.auth, check_secrets);
}

/// An `http`/`https` URL with a host and no credentials, fragment or (for a base URL) query,
/// not ending in `/` (request paths start with one); the reason when it is not.
fn check_url(url: &str, query_allowed: bool) -> Result<(), String> {
    let lower = url.to_ascii_lowercase();
    let Some(rest) = lower.strip_prefix("https://").or_else(|| lower.strip_prefix("http://")) else {
        return Err("must start with https:// (or http://)".into());
    };
    if url.chars().any(|c| c.is_whitespace() || c.is_control()) {
        return Err("holds a space or a control character".into());
    }
    let authority = rest.split(['/', '?', '#']).next().unwrap_or_default();
    if authority.is_empty() || authority.starts_with(':') {
        return Err("has no host".into());
    }
    if authority.contains('@') {
        return Err("holds credentials: they go in [target.auth], by reference to a secret".into());
    }
    if url.contains('#') {
        return Err("has a #fragment, which HTTP never sends".into());
    }
    if !query_allowed && url.contains('?') {
        return Err("has a ?query: give fixed parameters in each request's `query`".into());
    }
    if !query_allowed && url.ends_with('/') {
        return Err("ends with `/`: request paths start with one, write it without".into());
    }
    Ok(())
}

/// An authentication table (`at`: `["target", "auth"]` or `["pull", "auth"]`): the fields each
/// kind needs, and its secret.
pub(super) fn check_auth(d: &mut FileDiags<'_>, at: &[&str], auth: &AuthSpec, check_secrets: bool) {
    let key_at = |key: &'static str| -> Vec<&str> { at.iter().copied().chain([key]).collect() };
    let secret = |d: &mut FileDiags<'_>, key: &'static str, s: &SecretRef, what: &str| {
        check_secret(d, &key_at(key), s, what, check_secrets)
    };
    match auth {
        AuthSpec::None => {}
        AuthSpec::Bearer { token } => {
            secret(d, "token", token, "the bearer token");
        }
        AuthSpec::ApiKey { header, key } => {
            if !is_header_name(header) {
                d.at(&key_at("header"), format!("`{header}` is not an HTTP header name"));
            } else if let Some((_, why)) = layer2_normalize::request::RESERVED_HEADERS
                .iter()
                .find(|(h, _)| h.eq_ignore_ascii_case(header) && *h != "authorization")
            {
                d.at(&key_at("header"), format!("the API key cannot go in `{header}`: {why}"));
            }
            secret(d, "key", key, "the API key");
        }
        AuthSpec::Basic { username, password } => {
            // RFC 7617: the user-id is everything before the first colon.
            if username.is_empty() || username.contains(':') || username.chars().any(char::is_control) {
                d.at(&key_at("username"), "username must be non-empty text without `:`");
            }
            secret(d, "password", password, "the password");
        }
        AuthSpec::Oauth2 { token_url, client_id, client_secret, scope, audience } => {
            if let Err(e) = check_url(token_url, true) {
                d.at(&key_at("token_url"), format!("token_url `{token_url}` {e}"));
            }
            if client_id.is_empty() || client_id.chars().any(char::is_control) {
                d.at(&key_at("client_id"), "client_id must be non-empty text");
            }
            for (key, v) in [("scope", scope), ("audience", audience)] {
                if v.as_ref().is_some_and(|v| v.is_empty() || v.chars().any(char::is_control)) {
                    d.at(&key_at(key), format!("{key} must be non-empty text (or left out)"));
                }
            }
            secret(d, "client_secret", client_secret, "the client secret");
        }
        AuthSpec::StandardWebhooks { secret: s } => {
            if let Some(value) = secret(d, "secret", s, "the signing secret")
                && let Err(e) = crate::http::verify::standard_webhooks_key(value.trim())
            {
                d.at(&key_at("secret"), format!("{}: {e}", describe(s)));
            }
        }
    }
}

/// Where a secret is, for messages (never its value).
fn describe(s: &SecretRef) -> String {
    match (&s.env, &s.file) {
        (Some(v), _) => format!("environment variable {v}"),
        (None, Some(f)) => format!("file {}", f.display()),
        (None, None) => "the secret".into(),
    }
}

/// A secret reference names exactly one place; when `check_secrets`, the secret is there and
/// not empty. Returns the secret when it was read, for checks of its form (never shown).
fn check_secret(
    d: &mut FileDiags<'_>,
    at: &[&str],
    s: &SecretRef,
    what: &str,
    check_secrets: bool,
) -> Option<String> {
    match (&s.env, &s.file) {
        (Some(_), Some(_)) | (None, None) => {
            d.at(at, format!("{what}: give exactly one of `env` and `file`"));
            None
        }
        (Some(var), None) if var.is_empty() || var.contains(['=', '\0']) => {
            d.at(at, format!("{what}: `{var}` is not an environment variable name"));
            None
        }
        (Some(var), None) => {
            if !check_secrets {
                return None;
            }
            match std::env::var(var) {
                Ok(v) if !v.trim().is_empty() => Some(v),
                Ok(_) => {
                    d.at(at, format!("environment variable {var} ({what}) is empty"));
                    None
                }
                Err(std::env::VarError::NotPresent) => {
                    d.at(at, format!("environment variable {var} ({what}) is not set"));
                    None
                }
                Err(std::env::VarError::NotUnicode(_)) => {
                    d.at(at, format!("environment variable {var} ({what}) is not UTF-8"));
                    None
                }
            }
        }
        (None, Some(path)) => {
            if !check_secrets {
                return None;
            }
            // The secret is the file's first line, as `SecretRef` documents; the path is taken
            // as written, like a source's `secrets_file`.
            match std::fs::read_to_string(path) {
                Ok(text) => match text.lines().next().map(str::trim).filter(|l| !l.is_empty()) {
                    Some(line) => Some(line.to_owned()),
                    None => {
                        d.at(at, format!("{what}: file {} is empty", path.display()));
                        None
                    }
                },
                Err(e) => {
                    d.at(at, format!("{what}: cannot read file {}: {e}", path.display()));
                    None
                }
            }
        }
    }
}
