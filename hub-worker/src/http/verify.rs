//! Authenticating a third party's request before anything is stored: each provider's own
//! scheme, signatures compared in constant time, timestamps checked against a tolerance.

use std::time::Duration;

use axum::http::HeaderMap;
use base64::Engine;
use base64::engine::general_purpose::STANDARD as B64;
use hmac::{Hmac, Mac};
use sha2::Sha256;

type HmacSha256 = Hmac<Sha256>;

/// Why a request was not authenticated. The text goes to the caller as the problem detail: it
/// names what was wrong, never a secret or the expected value.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Unauthenticated {
    /// A required header is absent.
    #[error("missing header `{0}`")]
    Missing(&'static str),
    /// A header is there but not in the scheme's format.
    #[error("header `{0}` is malformed: {1}")]
    Malformed(&'static str, &'static str),
    /// No signature matched any configured secret.
    #[error("signature does not match")]
    BadSignature,
    /// The signed timestamp is too old or too far in the future: a replayed request.
    #[error("timestamp is {0}s away from now, outside the tolerance of {1}s (replayed request?)")]
    Stale(i64, u64),
    /// The key or token is not one of the configured ones.
    #[error("credential not accepted")]
    BadCredential,
}

/// How a source's requests are authenticated.
#[derive(Clone)]
#[non_exhaustive]
pub enum Verifier {
    /// Standard Webhooks: `webhook-id`, `webhook-timestamp`, `webhook-signature: v1,<base64>`
    /// over `id.timestamp.body`, keys from `whsec_<base64>` secrets.
    StandardWebhooks {
        /// Decoded keys (several during a rotation).
        keys: Vec<Vec<u8>>,
        /// Allowed clock distance.
        tolerance: Duration,
    },
    /// GitHub: `X-Hub-Signature-256: sha256=<hex>` over the body; event id `X-GitHub-Delivery`.
    Github {
        /// Secrets (several during a rotation).
        secrets: Vec<Vec<u8>>,
    },
    /// Stripe: `Stripe-Signature: t=<ts>,v1=<hex>[,v1=...]` over `t.body`; event id in the body.
    Stripe {
        /// Endpoint secrets (`whsec_...`, used as the key as written).
        secrets: Vec<Vec<u8>>,
        /// Allowed clock distance.
        tolerance: Duration,
    },
    /// A static key in a header (`X-Api-Key` by default).
    ApiKey {
        /// The header, lower case.
        header: String,
        /// Accepted keys.
        keys: Vec<Vec<u8>>,
    },
    /// `Authorization: Bearer <token>`.
    Bearer {
        /// Accepted tokens.
        tokens: Vec<Vec<u8>>,
    },
}

impl std::fmt::Debug for Verifier {
    /// Names the scheme only: secrets never reach a log.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.scheme())
    }
}

/// What a verified request tells about itself.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Verified {
    /// The provider's event or delivery id, when the scheme carries one in a header.
    pub event_id: Option<String>,
}

fn header<'a>(h: &'a HeaderMap, name: &'static str) -> Result<&'a str, Unauthenticated> {
    let v = h.get(name).ok_or(Unauthenticated::Missing(name))?;
    v.to_str().map_err(|_| Unauthenticated::Malformed(name, "not visible ASCII"))
}

fn mac(key: &[u8], parts: &[&[u8]]) -> HmacSha256 {
    // HMAC accepts keys of any length; `new_from_slice` cannot fail for it.
    let mut m = <HmacSha256 as Mac>::new_from_slice(key)
        .unwrap_or_else(|_| unreachable!("HMAC takes any key length"));
    for p in parts {
        m.update(p);
    }
    m
}

/// At most this many signatures are looked at per request: a rotation needs two or three, and
/// every one costs a comparison.
const MAX_CANDIDATES: usize = 8;
/// An HMAC-SHA256 tag.
const TAG_LEN: usize = 32;

/// Each key's tag is computed once (one pass over the body per key), then compared with every
/// candidate in constant time.
fn any_key_matches(keys: &[Vec<u8>], parts: &[&[u8]], candidates: &[Vec<u8>]) -> bool {
    use subtle::ConstantTimeEq;
    keys.iter().any(|k| {
        let tag: [u8; TAG_LEN] = mac(k, parts).finalize().into_bytes().into();
        candidates.iter().fold(false, |found, c| found | bool::from(tag.as_slice().ct_eq(c)))
    })
}

/// Keeps well-formed candidates only, and not too many of them.
fn candidates(raw: impl Iterator<Item = Vec<u8>>) -> Vec<Vec<u8>> {
    raw.filter(|c| c.len() == TAG_LEN).take(MAX_CANDIDATES).collect()
}

/// Compares digests, so neither the content nor the length of an accepted value leaks through
/// timing.
fn constant_time_in(value: &[u8], accepted: &[Vec<u8>]) -> bool {
    use subtle::ConstantTimeEq;
    let v = digest(value);
    accepted.iter().fold(false, |found, a| found | bool::from(digest(a).ct_eq(&v)))
}

/// SHA-256 of `bytes`.
pub fn digest(bytes: &[u8]) -> [u8; 32] {
    use sha2::Digest;
    Sha256::digest(bytes).into()
}

fn check_time(ts: &str, name: &'static str, now: i64, tolerance: Duration) -> Result<(), Unauthenticated> {
    let t: i64 =
        ts.trim().parse().map_err(|_| Unauthenticated::Malformed(name, "timestamp is not an integer"))?;
    if now.abs_diff(t) > tolerance.as_secs() {
        return Err(Unauthenticated::Stale(now.saturating_sub(t), tolerance.as_secs()));
    }
    Ok(())
}

/// The token of an `Authorization: Bearer <token>` header (the scheme name in any case).
pub fn bearer_token(value: &str) -> Option<&str> {
    let (scheme, token) = value.split_once(' ')?;
    scheme.eq_ignore_ascii_case("bearer").then_some(token.trim())
}

impl Verifier {
    /// The scheme's name as configured.
    pub fn scheme(&self) -> &'static str {
        match self {
            Verifier::StandardWebhooks { .. } => "standard-webhooks",
            Verifier::Github { .. } => "github",
            Verifier::Stripe { .. } => "stripe",
            Verifier::ApiKey { .. } => "api-key",
            Verifier::Bearer { .. } => "bearer",
        }
    }

    /// Checks `headers` and `body` at time `now` (Unix seconds).
    pub fn verify(&self, headers: &HeaderMap, body: &[u8], now: i64) -> Result<Verified, Unauthenticated> {
        match self {
            Verifier::StandardWebhooks { keys, tolerance } => {
                let id = header(headers, "webhook-id")?;
                let ts = header(headers, "webhook-timestamp")?;
                let sigs = header(headers, "webhook-signature")?;
                check_time(ts, "webhook-timestamp", now, *tolerance)?;
                let candidates = candidates(
                    sigs.split(' ').filter_map(|s| s.strip_prefix("v1,")).filter_map(|b| B64.decode(b).ok()),
                );
                if candidates.is_empty() {
                    return Err(Unauthenticated::Malformed("webhook-signature", "no v1 signature"));
                }
                if !any_key_matches(keys, &[id.as_bytes(), b".", ts.as_bytes(), b".", body], &candidates) {
                    return Err(Unauthenticated::BadSignature);
                }
                Ok(Verified { event_id: Some(id.to_owned()) })
            }
            Verifier::Github { secrets } => {
                let sig = header(headers, "x-hub-signature-256")?;
                let hex_sig = sig
                    .strip_prefix("sha256=")
                    .ok_or(Unauthenticated::Malformed("x-hub-signature-256", "expected sha256=<hex>"))?;
                let raw = hex::decode(hex_sig)
                    .map_err(|_| Unauthenticated::Malformed("x-hub-signature-256", "not hex"))?;
                if !any_key_matches(secrets, &[body], &[raw]) {
                    return Err(Unauthenticated::BadSignature);
                }
                let delivery =
                    headers.get("x-github-delivery").and_then(|v| v.to_str().ok()).map(str::to_owned);
                Ok(Verified { event_id: delivery })
            }
            Verifier::Stripe { secrets, tolerance } => {
                let sig = header(headers, "stripe-signature")?;
                let mut ts = None;
                let mut raw = Vec::new();
                for part in sig.split(',') {
                    match part.split_once('=') {
                        Some(("t", v)) => ts = Some(v),
                        Some(("v1", v)) => {
                            if let Ok(r) = hex::decode(v) {
                                raw.push(r);
                            }
                        }
                        _ => {}
                    }
                }
                let candidates = candidates(raw.into_iter());
                let ts = ts.ok_or(Unauthenticated::Malformed("stripe-signature", "no t= timestamp"))?;
                if candidates.is_empty() {
                    return Err(Unauthenticated::Malformed("stripe-signature", "no v1= signature"));
                }
                check_time(ts, "stripe-signature", now, *tolerance)?;
                if !any_key_matches(secrets, &[ts.as_bytes(), b".", body], &candidates) {
                    return Err(Unauthenticated::BadSignature);
                }
                Ok(Verified { event_id: None })
            }
            Verifier::ApiKey { header: name, keys } => {
                let v = headers.get(name.as_str()).ok_or(Unauthenticated::Missing("api key header"))?;
                if !constant_time_in(v.as_bytes(), keys) {
                    return Err(Unauthenticated::BadCredential);
                }
                Ok(Verified::default())
            }
            Verifier::Bearer { tokens } => {
                let v = header(headers, "authorization")?;
                let token = bearer_token(v)
                    .ok_or(Unauthenticated::Malformed("authorization", "expected Bearer <token>"))?;
                if !constant_time_in(token.as_bytes(), tokens) {
                    return Err(Unauthenticated::BadCredential);
                }
                Ok(Verified::default())
            }
        }
    }
}

/// The key of a Standard Webhooks secret (`whsec_<base64>`; the prefix is optional): 24 to 64
/// bytes, as the specification asks.
pub fn standard_webhooks_key(secret: &str) -> Result<Vec<u8>, String> {
    let b64 = secret.strip_prefix("whsec_").unwrap_or(secret);
    let key =
        B64.decode(b64).map_err(|_| "a Standard Webhooks secret is whsec_ followed by base64".to_owned())?;
    if !(24..=64).contains(&key.len()) {
        return Err(format!("a Standard Webhooks key must be 24 to 64 bytes, this one is {}", key.len()));
    }
    Ok(key)
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::http::HeaderValue;

    fn headers(pairs: &[(&'static str, String)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (k, v) in pairs {
            h.insert(*k, HeaderValue::from_str(v).expect("header"));
        }
        h
    }

    #[test]
    fn github_accepts_its_signature_and_refuses_others() {
        let v = Verifier::Github { secrets: vec![b"It's a Secret to Everybody".to_vec()] };
        // GitHub's documented example (docs: "Validating webhook deliveries").
        let h = headers(&[(
            "x-hub-signature-256",
            "sha256=757107ea0eb2509fc211221cce984b8a37570b6d7586c22c46f4379c8b043e17".to_owned(),
        )]);
        assert!(v.verify(&h, b"Hello, World!", 0).is_ok());
        assert_eq!(v.verify(&h, b"Hello, World?", 0), Err(Unauthenticated::BadSignature));
        assert_eq!(v.verify(&HeaderMap::new(), b"", 0), Err(Unauthenticated::Missing("x-hub-signature-256")));
    }

    #[test]
    fn standard_webhooks_checks_time_and_any_listed_signature() {
        let key = standard_webhooks_key("whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw").expect("key");
        let v = Verifier::StandardWebhooks { keys: vec![key], tolerance: Duration::from_secs(300) };
        // The Standard Webhooks specification's test vector.
        let body = br#"{"test": 2432232314}"#;
        let h = headers(&[
            ("webhook-id", "msg_p5jXN8AQM9LWM0D4loKWxJek".to_owned()),
            ("webhook-timestamp", "1614265330".to_owned()),
            ("webhook-signature", "v1,bogus v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE=".to_owned()),
        ]);
        assert!(v.verify(&h, body, 1614265330 + 10).is_ok());
        assert!(matches!(v.verify(&h, body, 1614265330 + 301), Err(Unauthenticated::Stale(..))));
        assert_eq!(v.verify(&h, b"{}", 1614265330), Err(Unauthenticated::BadSignature));
    }
}
