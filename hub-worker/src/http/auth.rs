//! Who may call the admin API, and for what: named bearer tokens, each with scopes, checked by
//! one guard per route with the scope the route declares (the declarations are the table in
//! [`super::endpoints`]). Every refusal is an audit event (`tracing` target `audit`).
//!
//! Scopes:
//! - `read`: lineage, listings, stats; the raw bytes' SHA-256 re-check;
//! - `raw`: with `read`, the raw bytes and stored headers in the lineage answer (downstream,
//!   also the bodies of the third party's answers);
//! - `operate`: replay (and later, any state change);
//! - `metrics`: `/metrics` only, for a scraper.

use std::fmt;
use std::net::SocketAddr;
use std::sync::Arc;

use axum::extract::{ConnectInfo, Request, State};
use axum::http::{HeaderValue, StatusCode, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use serde::Deserialize;
use subtle::ConstantTimeEq;

use super::problem::Problem;

/// What a token may do.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Deserialize)]
#[serde(rename_all = "lowercase")]
#[non_exhaustive]
pub enum Scope {
    /// Lineage, listings, stats.
    Read,
    /// The raw bytes and headers a third party sent (widens `read`).
    Raw,
    /// Anything that writes: replays, sync runs started by hand, pulled sources' state resets.
    Operate,
    /// `/metrics`.
    Metrics,
}

impl Scope {
    /// Every scope: what the deprecated `admin_token_env` token holds.
    pub const ALL: [Scope; 4] = [Scope::Read, Scope::Raw, Scope::Operate, Scope::Metrics];

    /// The scope's name in configs, logs and problem documents.
    pub fn as_str(self) -> &'static str {
        match self {
            Scope::Read => "read",
            Scope::Raw => "raw",
            Scope::Operate => "operate",
            Scope::Metrics => "metrics",
        }
    }
}

impl fmt::Display for Scope {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Who may call a route.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Access {
    /// Anyone: health, readiness, the API document, and webhook intake (which authenticates
    /// each source its own way).
    Public,
    /// A token holding this scope.
    Scope(Scope),
}

/// One configured token. Only the secret's SHA-256 is kept, so the secret itself is in memory
/// no longer than configuration loading takes and cannot end up in a log or a dump of this.
pub struct Token {
    name: String,
    scopes: Vec<Scope>,
    digest: [u8; 32],
}

impl fmt::Debug for Token {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Token")
            .field("name", &self.name)
            .field("scopes", &self.scopes)
            .finish_non_exhaustive()
    }
}

impl Token {
    /// The token `name` whose secret is `secret`, holding `scopes`.
    pub fn new(name: impl Into<String>, secret: &str, scopes: &[Scope]) -> Self {
        let mut scopes = scopes.to_vec();
        scopes.sort();
        scopes.dedup();
        Self { name: name.into(), scopes, digest: super::verify::digest(secret.as_bytes()) }
    }

    /// Its name (what audit events and `replayed_by` say).
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Its scopes.
    pub fn scopes(&self) -> &[Scope] {
        &self.scopes
    }
}

/// The tokens the admin API accepts; several may hold the same scopes (a rotation).
#[derive(Clone, Debug)]
pub struct Tokens(Arc<[Token]>);

impl Tokens {
    /// Accepts `tokens`.
    pub fn new(tokens: Vec<Token>) -> Self {
        Self(tokens.into())
    }

    /// The deprecated single admin token: named `admin`, every scope.
    pub fn admin(secret: &str) -> Self {
        Self::new(vec![Token::new("admin", secret, &Scope::ALL)])
    }

    /// The token whose secret is `presented`, if any. Every token is compared, each in
    /// constant time over digests of equal length, so neither the secret's length nor how
    /// much of it matched shows in the time taken.
    pub fn identify(&self, presented: &str) -> Option<&Token> {
        let d = super::verify::digest(presented.as_bytes());
        let mut found = None;
        for t in self.0.iter() {
            if bool::from(t.digest.ct_eq(&d)) {
                found = Some(t);
            }
        }
        found
    }

    /// The configured tokens.
    pub fn iter(&self) -> impl Iterator<Item = &Token> {
        self.0.iter()
    }
}

/// The caller of an admin request as the guard identified it; handlers take it as an
/// `Extension` (to show raw bytes, to record who replayed).
#[derive(Debug, Clone)]
pub struct Caller {
    /// The token's name.
    pub name: String,
    /// Its scopes.
    pub scopes: Vec<Scope>,
    /// The peer's address, `unknown` when the server was not started with connection info.
    pub peer: String,
}

impl Caller {
    /// Whether the caller holds `scope`.
    pub fn has(&self, scope: Scope) -> bool {
        self.scopes.contains(&scope)
    }
}

/// The peer's address from the connection, as [`super::serve`] records it.
pub fn peer_of(req: &Request) -> String {
    req.extensions()
        .get::<ConnectInfo<SocketAddr>>()
        .map_or_else(|| "unknown".to_owned(), |ConnectInfo(a)| a.to_string())
}

/// An audit event for a refused admin request: who (token name, or `anonymous` when no known
/// token was presented), what (method and path), from where (peer), when (the event's time),
/// the outcome and the scope the route needs. Never the token itself.
pub fn refused(who: &str, method: &str, path: &str, peer: &str, outcome: &str, scope: Scope) {
    tracing::warn!(
        target: "audit",
        token = who,
        method,
        path,
        peer,
        outcome,
        scope = scope.as_str(),
        "admin request refused"
    );
}

/// Who replayed what, from where, and what came of it: one audit event for a replay, over HTTP
/// (`method` and `path` of the request) or from the CLI (`CLI`, `replay`, peer `local`).
pub struct ReplayEvent<'a> {
    /// The token's name (`cli` from the command line).
    pub who: &'a str,
    /// `POST`, or `CLI`.
    pub method: &'a str,
    /// The request path, or `replay`.
    pub path: &'a str,
    /// The peer's address, or `local`.
    pub peer: &'a str,
    /// `message <id>`, or `source <s> since <t>`.
    pub what: &'a str,
    /// The layer replayed from.
    pub from_layer: u8,
}

impl ReplayEvent<'_> {
    /// Logs the event with its outcome and the rows copied.
    pub fn log(&self, outcome: &str, rows: usize) {
        tracing::info!(
            target: "audit",
            token = self.who,
            method = self.method,
            path = self.path,
            peer = self.peer,
            outcome,
            scope = Scope::Operate.as_str(),
            what = self.what,
            from_layer = self.from_layer,
            rows,
            "replay"
        );
    }
}

/// The guard in front of an admin route needing `scope`: 401 without a known token, 403
/// naming the scope for a known token without it; otherwise the [`Caller`] goes to the handler.
pub async fn guard(State((tokens, scope)): State<(Tokens, Scope)>, mut req: Request, next: Next) -> Response {
    let peer = peer_of(&req);
    let method = req.method().as_str().to_owned();
    let path = req.uri().path().to_owned();
    let presented = req
        .headers()
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(super::verify::bearer_token);
    let Some(presented) = presented else {
        refused("anonymous", &method, &path, &peer, "unauthenticated: no bearer token", scope);
        return unauthorized("missing `Authorization: Bearer <token>`");
    };
    let Some(token) = tokens.identify(presented) else {
        refused("anonymous", &method, &path, &peer, "unauthenticated: unknown token", scope);
        return unauthorized("the bearer token is not accepted");
    };
    if !token.scopes.contains(&scope) {
        refused(&token.name, &method, &path, &peer, "forbidden: scope missing", scope);
        return forbidden(&token.name, scope, &method, &path);
    }
    req.extensions_mut().insert(Caller { name: token.name.clone(), scopes: token.scopes.clone(), peer });
    next.run(req).await
}

fn unauthorized(detail: &str) -> Response {
    let mut r = Problem::new(StatusCode::UNAUTHORIZED, "unauthenticated", "Not authenticated", detail)
        .into_response();
    r.headers_mut().insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
    r
}

fn forbidden(name: &str, scope: Scope, method: &str, path: &str) -> Response {
    let mut r = Problem::new(
        StatusCode::FORBIDDEN,
        "forbidden",
        "Scope missing",
        format!("token `{name}` lacks scope `{scope}`, which {method} {path} needs"),
    )
    .into_response();
    // RFC 6750 section 3: the scope that would do, for clients that read it.
    if let Ok(v) = HeaderValue::from_str(&format!("Bearer error=\"insufficient_scope\", scope=\"{scope}\"")) {
        r.headers_mut().insert(header::WWW_AUTHENTICATE, v);
    }
    r
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn identifies_by_secret_among_several() {
        let t = Tokens::new(vec![
            Token::new("old", "old-secret-0123456789", &[Scope::Read]),
            Token::new("new", "new-secret-0123456789", &[Scope::Read, Scope::Read]),
        ]);
        assert_eq!(t.identify("old-secret-0123456789").map(Token::name), Some("old"));
        assert_eq!(t.identify("new-secret-0123456789").map(|t| t.scopes().to_vec()), Some(vec![Scope::Read]));
        assert!(t.identify("new-secret-012345678").is_none());
        assert!(t.identify("").is_none());
        // The secret is not kept, so it cannot be printed.
        assert!(!format!("{t:?}").contains("secret-0123456789"));
    }
}
