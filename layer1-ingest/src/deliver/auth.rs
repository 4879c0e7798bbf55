//! How a request proves who sends it: secrets, the authentication schemes of a target, the
//! OAuth2 client-credentials token cache and Standard Webhooks signatures.

use std::fmt;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use base64::Engine;
use base64::engine::general_purpose::STANDARD as BASE64;
use hmac::{Hmac, Mac};
use reqwest::header::{ACCEPT, AUTHORIZATION, HeaderName, HeaderValue};
use sha2::Sha256;
use tokio::time::Instant;

use crate::error::{Error, Result};

/// What Debug and Display print instead of a secret, and what the audit record shows in place
/// of an authentication header's value.
pub(crate) const REDACTED: &str = "[redacted]";

/// The longest a token response may be; a real one is well under a kilobyte.
const MAX_TOKEN_RESPONSE_BYTES: usize = 64 * 1024;

/// A token without `expires_in` is kept this long (RFC 6749 5.1 leaves the lifetime to other
/// means then); a 401 from the target replaces it sooner when it dies earlier.
const DEFAULT_TOKEN_LIFETIME: Duration = Duration::from_secs(300);

/// The most a cached token is refreshed before it expires (clock skew, the request's own
/// transit); never more than a tenth of its lifetime, so that short-lived tokens stay usable.
const TOKEN_REFRESH_MARGIN: Duration = Duration::from_secs(30);

/// A secret (token, key, password, signing secret): Debug/Display print `"[redacted]"`, never
/// the value.
///
/// The value is reachable only through [`Secret::expose`], so every place that uses it is a
/// deliberate, searchable call.
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(String);

impl Secret {
    /// Wraps a secret value.
    pub fn new(value: String) -> Self {
        Secret(value)
    }

    /// The value itself: only for putting it on the wire.
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl From<String> for Secret {
    fn from(value: String) -> Self {
        Secret(value)
    }
}

impl From<&str> for Secret {
    fn from(value: &str) -> Self {
        Secret(value.to_owned())
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(REDACTED)
    }
}

impl fmt::Display for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(REDACTED)
    }
}

/// How requests to a target are authenticated.
#[derive(Debug, Clone, Default)]
#[non_exhaustive]
pub enum Auth {
    /// No authentication (a target on a private network, or one that authenticates by URL).
    #[default]
    None,
    /// `Authorization: Bearer <token>` with a long-lived token.
    Bearer {
        /// The token.
        token: Secret,
    },
    /// `<header>: <key>`, the usual API-key scheme (for example `X-Api-Key`).
    ApiKey {
        /// The header's name.
        header: String,
        /// The key.
        key: Secret,
    },
    /// `Authorization: Basic base64(username:password)` (RFC 7617).
    Basic {
        /// The user; must not contain ':' (RFC 7617 2).
        username: String,
        /// The password.
        password: Secret,
    },
    /// The OAuth2 client credentials grant (RFC 6749 4.4): a token is fetched from `token_url`
    /// with HTTP Basic client authentication, cached until shortly before it expires, shared by
    /// all deliveries to the target, and replaced once when the target answers 401.
    OAuth2 {
        /// The authorization server's token endpoint (http or https).
        token_url: String,
        /// The client id.
        client_id: String,
        /// The client secret.
        client_secret: Secret,
        /// `scope`, sent when set.
        scope: Option<String>,
        /// `audience` (an extension several providers need), sent when set.
        audience: Option<String>,
    },
    /// Signs each request per <https://www.standardwebhooks.com>: `webhook-id`,
    /// `webhook-timestamp` and `webhook-signature` headers.
    StandardWebhooks {
        /// `whsec_` followed by the base64 of the key, as the standard's libraries issue it.
        secret: Secret,
    },
}

/// An [`Auth`] checked and turned into what the requests need.
pub(crate) enum PreparedAuth {
    None,
    /// A fixed header (bearer, API key, basic), its value marked sensitive.
    Static {
        name: HeaderName,
        value: HeaderValue,
    },
    OAuth2(TokenSource),
    StandardWebhooks {
        key: Vec<u8>,
    },
}

impl PreparedAuth {
    /// Checks `auth` for target `target`; the errors name the target and the problem, never
    /// the secret.
    pub(crate) fn prepare(target: &str, auth: &Auth) -> Result<PreparedAuth> {
        let invalid = |what: &str| Error::InvalidInput(format!("target `{target}`: {what}"));
        let secret_value = |text: String, what: &str| {
            let mut value = HeaderValue::from_str(&text)
                .map_err(|_| invalid(&format!("the {what} contains characters not allowed in a header")))?;
            value.set_sensitive(true);
            Ok::<_, Error>(value)
        };
        Ok(match auth {
            Auth::None => PreparedAuth::None,
            Auth::Bearer { token } => PreparedAuth::Static {
                name: AUTHORIZATION,
                value: secret_value(format!("Bearer {}", token.expose()), "bearer token")?,
            },
            Auth::ApiKey { header, key } => {
                let name =
                    HeaderName::from_bytes(header.trim().to_ascii_lowercase().as_bytes()).map_err(|_| {
                        invalid(&format!("`{header}` is not a valid header name for the API key"))
                    })?;
                PreparedAuth::Static { name, value: secret_value(key.expose().to_owned(), "API key")? }
            }
            Auth::Basic { username, password } => {
                if username.contains(':') {
                    return Err(invalid("a Basic username cannot contain ':' (RFC 7617)"));
                }
                let pair = BASE64.encode(format!("{username}:{}", password.expose()));
                PreparedAuth::Static {
                    name: AUTHORIZATION,
                    value: secret_value(format!("Basic {pair}"), "password")?,
                }
            }
            Auth::OAuth2 { token_url, client_id, client_secret, scope, audience } => {
                let url = reqwest::Url::parse(token_url)
                    .map_err(|e| invalid(&format!("OAuth2 token_url is not a URL: {e}")))?;
                if !matches!(url.scheme(), "http" | "https") || url.host_str().is_none() {
                    return Err(invalid("OAuth2 token_url must be an http or https URL with a host"));
                }
                // RFC 6749 2.3.1: the client id and secret are form-encoded, then put in Basic.
                let pair = BASE64.encode(format!(
                    "{}:{}",
                    form_encode(client_id),
                    form_encode(client_secret.expose())
                ));
                let client_auth = secret_value(format!("Basic {pair}"), "OAuth2 client id or secret")?;
                let mut form = vec![("grant_type", "client_credentials".to_owned())];
                if let Some(scope) = scope {
                    form.push(("scope", scope.clone()));
                }
                if let Some(audience) = audience {
                    form.push(("audience", audience.clone()));
                }
                PreparedAuth::OAuth2(TokenSource {
                    url,
                    client_auth,
                    form,
                    cached: tokio::sync::Mutex::new(None),
                    generation: AtomicU64::new(0),
                })
            }
            Auth::StandardWebhooks { secret } => {
                let encoded = secret.expose().strip_prefix("whsec_").ok_or_else(|| {
                    invalid("a Standard Webhooks secret must be `whsec_` followed by the base64 of the key")
                })?;
                let key = BASE64.decode(encoded.trim()).map_err(|_| {
                    invalid("the Standard Webhooks secret after `whsec_` is not valid base64")
                })?;
                if key.is_empty() {
                    return Err(invalid("the Standard Webhooks secret is empty"));
                }
                PreparedAuth::StandardWebhooks { key }
            }
        })
    }
}

/// application/x-www-form-urlencoded encoding of one value (the WHATWG URL standard's set).
fn form_encode(value: &str) -> String {
    let mut out = String::with_capacity(value.len());
    for byte in value.bytes() {
        match byte {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'*' | b'-' | b'.' | b'_' => out.push(char::from(byte)),
            b' ' => out.push('+'),
            _ => out.push_str(&format!("%{byte:02X}")),
        }
    }
    out
}

/// The Standard Webhooks signature header value for one message.
///
/// `v1,` and the base64 of HMAC-SHA256(key, "{id}.{timestamp}.{body}") (the standard's
/// "Signature scheme" section). The timestamp is signed so that a receiver can refuse replays
/// of an old message; the id, so that it can deduplicate.
pub fn sign_standard_webhook(key: &[u8], id: &str, timestamp: i64, body: &[u8]) -> String {
    let Ok(mut mac) = Hmac::<Sha256>::new_from_slice(key) else {
        // HMAC takes keys of any length (RFC 2104 2: longer ones are hashed first).
        unreachable!("HMAC-SHA256 accepts a key of any length")
    };
    mac.update(id.as_bytes());
    mac.update(b".");
    mac.update(timestamp.to_string().as_bytes());
    mac.update(b".");
    mac.update(body);
    format!("v1,{}", BASE64.encode(mac.finalize().into_bytes()))
}

/// One target's OAuth2 client-credentials tokens.
///
/// The cache sits behind an async mutex held across the fetch: when many deliveries need a
/// token at once, one fetches and the others wait for its result, so the authorization server
/// sees one request, not one per delivery.
pub(crate) struct TokenSource {
    url: reqwest::Url,
    client_auth: HeaderValue,
    form: Vec<(&'static str, String)>,
    cached: tokio::sync::Mutex<Option<CachedToken>>,
    generation: AtomicU64,
}

struct CachedToken {
    header: HeaderValue,
    refresh_at: Instant,
    generation: u64,
}

/// A token handed to one request: its `Authorization` value and which fetch it came from, so
/// that a 401 drops that token and not a newer one another request already fetched.
pub(crate) struct IssuedToken {
    pub(crate) header: HeaderValue,
    pub(crate) generation: u64,
}

impl TokenSource {
    /// The cached token, or a new one. Errors are reasons for a transient failure: fixing the
    /// client's credentials at the authorization server and trying again can work.
    pub(crate) async fn get(&self, client: &reqwest::Client) -> Result<IssuedToken, String> {
        let mut slot = self.cached.lock().await;
        if let Some(token) = slot.as_ref().filter(|t| Instant::now() < t.refresh_at) {
            return Ok(IssuedToken { header: token.header.clone(), generation: token.generation });
        }
        let token = self.fetch(client).await?;
        let issued = IssuedToken { header: token.header.clone(), generation: token.generation };
        *slot = Some(token);
        Ok(issued)
    }

    /// Drops the token of `generation` after the target refused it; a newer one stays.
    pub(crate) async fn invalidate(&self, generation: u64) {
        let mut slot = self.cached.lock().await;
        if slot.as_ref().is_some_and(|t| t.generation == generation) {
            *slot = None;
        }
    }

    async fn fetch(&self, client: &reqwest::Client) -> Result<CachedToken, String> {
        let sent_at = Instant::now();
        let mut response = client
            .post(self.url.clone())
            .header(AUTHORIZATION, self.client_auth.clone())
            .header(ACCEPT, "application/json")
            .form(&self.form)
            .send()
            .await
            .map_err(|e| format!("OAuth2 token endpoint: {}", super::target::describe_transport_error(e)))?;
        let status = response.status();
        let mut body = Vec::new();
        while let Some(chunk) = response
            .chunk()
            .await
            .map_err(|e| format!("OAuth2 token endpoint: {}", super::target::describe_transport_error(e)))?
        {
            if body.len() + chunk.len() > MAX_TOKEN_RESPONSE_BYTES {
                return Err(format!(
                    "OAuth2 token endpoint answered {status} with more than {MAX_TOKEN_RESPONSE_BYTES} bytes"
                ));
            }
            body.extend_from_slice(&chunk);
        }
        if !status.is_success() {
            // An error answer holds no token (RFC 6749 5.2), so its text is safe to report.
            let text = String::from_utf8_lossy(&body);
            let excerpt: String =
                text.chars().take(200).map(|c| if c.is_control() { ' ' } else { c }).collect();
            return Err(format!("OAuth2 token endpoint answered {}: {}", status.as_u16(), excerpt.trim()));
        }
        // From here on the body holds the token: no error quotes it.
        let parsed: serde_json::Value = serde_json::from_slice(&body).map_err(|_| {
            format!("OAuth2 token endpoint answered {} with a body that is not JSON", status.as_u16())
        })?;
        let access_token = parsed
            .get("access_token")
            .and_then(|v| v.as_str())
            .filter(|t| !t.is_empty())
            .ok_or_else(|| "OAuth2 token endpoint answered without an access_token".to_owned())?;
        if let Some(kind) = parsed.get("token_type").and_then(|v| v.as_str())
            && !kind.eq_ignore_ascii_case("bearer")
        {
            return Err(format!("OAuth2 token endpoint issued a `{kind}` token; only Bearer is supported"));
        }
        // Some servers send expires_in as a string; RFC 6749 5.1 says a number.
        let lifetime = match parsed.get("expires_in") {
            Some(serde_json::Value::Number(n)) => n.as_u64().map(Duration::from_secs),
            Some(serde_json::Value::String(s)) => s.trim().parse::<u64>().ok().map(Duration::from_secs),
            _ => None,
        }
        .unwrap_or(DEFAULT_TOKEN_LIFETIME);
        let margin = TOKEN_REFRESH_MARGIN.min(lifetime / 10);
        let refresh_at = sent_at.checked_add(lifetime - margin).unwrap_or(sent_at);
        let mut header = HeaderValue::from_str(&format!("Bearer {access_token}")).map_err(|_| {
            "OAuth2 token endpoint issued a token that is not a valid header value".to_owned()
        })?;
        header.set_sensitive(true);
        let generation = self.generation.fetch_add(1, Ordering::Relaxed) + 1;
        tracing::debug!(lifetime_s = lifetime.as_secs(), "fetched an OAuth2 token");
        Ok(CachedToken { header, refresh_at, generation })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn secrets_never_print() {
        let secret = Secret::new("hunter2".to_owned());
        assert_eq!(format!("{secret:?}"), "[redacted]");
        assert_eq!(format!("{secret}"), "[redacted]");
        assert_eq!(secret.expose(), "hunter2");
        let auth = Auth::OAuth2 {
            token_url: "https://auth.example/token".to_owned(),
            client_id: "client".to_owned(),
            client_secret: "s3cr3t-value".into(),
            scope: None,
            audience: None,
        };
        let debug = format!("{auth:?}");
        assert!(!debug.contains("s3cr3t-value") && debug.contains("[redacted]"), "{debug}");
        let basic = Auth::Basic { username: "u".to_owned(), password: "pa55word".into() };
        assert!(!format!("{basic:?}").contains("pa55word"));
    }

    #[test]
    fn signature_matches_the_published_standard_webhooks_vector() {
        // The "sign function works" vector of the Standard Webhooks reference libraries
        // (libraries/javascript/src/webhook.test.ts and the others).
        let secret = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw";
        let PreparedAuth::StandardWebhooks { key } =
            PreparedAuth::prepare("t", &Auth::StandardWebhooks { secret: secret.into() })
                .expect("valid secret")
        else {
            panic!("not prepared as Standard Webhooks");
        };
        assert_eq!(
            sign_standard_webhook(
                &key,
                "msg_p5jXN8AQM9LWM0D4loKWxJek",
                1614265330,
                br#"{"test": 2432232314}"#
            ),
            "v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE="
        );
    }

    #[test]
    fn unusable_auth_settings_are_refused_without_showing_the_secret() {
        let refused = |auth: Auth| match PreparedAuth::prepare("crm", &auth) {
            Err(Error::InvalidInput(text)) => text,
            Err(other) => panic!("{other}"),
            Ok(_) => panic!("accepted {auth:?}"),
        };
        let text = refused(Auth::StandardWebhooks { secret: "MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw".into() });
        assert!(text.contains("whsec_") && text.contains("crm") && !text.contains("MfKQ9r8"), "{text}");
        let text = refused(Auth::StandardWebhooks { secret: "whsec_not base64!".into() });
        assert!(!text.contains("not base64!"), "{text}");
        refused(Auth::StandardWebhooks { secret: "whsec_".into() });
        let text = refused(Auth::Bearer { token: "line\nbreak".into() });
        assert!(!text.contains("break"), "{text}");
        refused(Auth::ApiKey { header: "bad header".to_owned(), key: "k".into() });
        refused(Auth::Basic { username: "a:b".to_owned(), password: "p".into() });
        refused(Auth::OAuth2 {
            token_url: "ftp://auth.example/token".to_owned(),
            client_id: "c".to_owned(),
            client_secret: "s".into(),
            scope: None,
            audience: None,
        });
    }

    #[test]
    fn static_schemes_build_their_headers() {
        let header = |auth: Auth| match PreparedAuth::prepare("t", &auth).expect("valid") {
            PreparedAuth::Static { name, value } => {
                assert!(value.is_sensitive());
                (name.to_string(), value.to_str().expect("ascii").to_owned())
            }
            _ => panic!("not a static header"),
        };
        assert_eq!(
            header(Auth::Bearer { token: "tok".into() }),
            ("authorization".into(), "Bearer tok".into())
        );
        assert_eq!(
            header(Auth::ApiKey { header: "X-Api-Key".to_owned(), key: "k1".into() }),
            ("x-api-key".into(), "k1".into())
        );
        // RFC 7617's own example.
        assert_eq!(
            header(Auth::Basic { username: "Aladdin".to_owned(), password: "open sesame".into() }),
            ("authorization".into(), "Basic QWxhZGRpbjpvcGVuIHNlc2FtZQ==".into())
        );
    }

    #[test]
    fn form_encoding_follows_the_urlencoded_set() {
        assert_eq!(form_encode("abc-._*09"), "abc-._*09");
        assert_eq!(form_encode("a b:c/d+é"), "a+b%3Ac%2Fd%2B%C3%A9");
    }
}
