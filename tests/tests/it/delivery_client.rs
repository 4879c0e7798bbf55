//! The downstream HTTP delivery client (`layer1_ingest::deliver`) against the scripted server:
//! verdicts, kept answers, authentication, the circuit breaker and the limits. No database.

use std::time::Duration;

use base64::Engine;
use base64::engine::general_purpose::STANDARD as BASE64;
use hmac::{Hmac, Mac};
use sha2::Sha256;
use tokio::time::Instant;
use uuid::Uuid;

use layer1_ingest::deliver::{Attempt, Auth, Deliverer, OutgoingRequest, TargetSettings, Verdict};

use crate::scripted_http::{Reply, ScriptedServer};

/// A target on the scripted server with short timeouts (the tests stay fast).
fn target(name: &str, base_url: String) -> TargetSettings {
    let mut t = TargetSettings::new(name, base_url);
    t.connect_timeout = Duration::from_secs(1);
    t.timeout = Duration::from_secs(2);
    t
}

fn deliverer(targets: Vec<TargetSettings>) -> Deliverer {
    Deliverer::new(targets).expect("valid targets")
}

fn post(path: &str, body: &str) -> OutgoingRequest {
    OutgoingRequest {
        delivery_id: Uuid::now_v7(),
        method: "POST".to_owned(),
        path_and_query: path.to_owned(),
        headers: vec![("X-Trace".to_owned(), "trace-1".to_owned())],
        content_type: Some("application/json".to_owned()),
        body: body.as_bytes().to_vec(),
    }
}

fn soon() -> Instant {
    Instant::now() + Duration::from_secs(5)
}

fn reason(attempt: &Attempt) -> &str {
    match &attempt.verdict {
        Verdict::Rejected { reason } | Verdict::Retry { reason, .. } | Verdict::NotSent { reason, .. } => {
            reason
        }
        other => panic!("no reason in {other:?}"),
    }
}

fn sent_header<'a>(attempt: &'a Attempt, name: &str) -> Option<&'a str> {
    attempt.request_headers.iter().find(|(n, _)| n == name).map(|(_, v)| v.as_str())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn delivery_client_2xx_is_delivered_with_the_kept_headers() {
    let server = ScriptedServer::start().await;
    server.script(
        "/v2/contacts",
        vec![
            Reply::json(201, r#"{"id":"c-7"}"#)
                .header("Location", "/v2/contacts/c-7")
                .header("X-Request-Id", "req-1")
                .header("Set-Cookie", "session=abc"),
        ],
    );
    let d = deliverer(vec![target("crm", format!("{}/v2/", server.url()))]);
    let req = post("/contacts?source=hub", r#"{"name":"Ada"}"#);
    let attempt = d.deliver("crm", &req, soon()).await;

    assert_eq!(attempt.verdict, Verdict::Delivered);
    assert_eq!(attempt.error, None);
    let answer = attempt.answer.as_ref().expect("an answer");
    assert_eq!(answer.status, 201);
    assert_eq!(answer.body, br#"{"id":"c-7"}"#);
    assert!(!answer.truncated);
    assert_eq!(answer.header("location"), Some("/v2/contacts/c-7"));
    assert_eq!(answer.header("x-request-id"), Some("req-1"));
    assert_eq!(answer.header("content-type"), Some("application/json"));
    assert_eq!(answer.header("set-cookie"), None, "only listed headers are kept");
    assert!(attempt.elapsed < Duration::from_secs(2));

    let seen = server.requests("/v2/contacts");
    assert_eq!(seen.len(), 1);
    let got = &seen[0];
    assert_eq!((got.method.as_str(), got.path.as_str()), ("POST", "/v2/contacts?source=hub"));
    assert_eq!(got.body_text(), r#"{"name":"Ada"}"#);
    assert_eq!(got.header("content-type"), Some("application/json"));
    assert_eq!(got.header("x-trace"), Some("trace-1"));
    assert!(got.header("user-agent").is_some_and(|ua| ua.starts_with("post-office/")));
    assert_eq!(got.header("authorization"), None);
    assert_eq!(sent_header(&attempt, "x-trace"), Some("trace-1"));
    assert_eq!(sent_header(&attempt, "idempotency-key"), Some(req.delivery_id.to_string().as_str()));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn delivery_client_4xx_is_rejected_and_the_error_body_kept() {
    let server = ScriptedServer::start().await;
    server.script("/bad", vec![Reply::json(400, r#"{"error":"email is required"}"#)]);
    server.script("/unprocessable", vec![Reply::json(422, r#"{"error":"unknown country"}"#)]);
    server.script("/gone", vec![Reply::status(404)]);
    let d = deliverer(vec![target("crm", server.url())]);

    let attempt = d.deliver("crm", &post("/bad", "{}"), soon()).await;
    assert!(matches!(attempt.verdict, Verdict::Rejected { .. }), "{:?}", attempt.verdict);
    assert!(
        reason(&attempt).contains("400") && reason(&attempt).contains("email is required"),
        "{}",
        reason(&attempt)
    );
    let answer = attempt.answer.as_ref().expect("an answer");
    assert_eq!(
        (answer.status, answer.body.as_slice()),
        (400, br#"{"error":"email is required"}"#.as_slice())
    );

    let attempt = d.deliver("crm", &post("/unprocessable", "{}"), soon()).await;
    assert!(matches!(attempt.verdict, Verdict::Rejected { .. }), "{:?}", attempt.verdict);
    assert_eq!(attempt.answer.as_ref().map(|a| a.status), Some(422));

    let attempt = d.deliver("crm", &post("/gone", "{}"), soon()).await;
    assert!(matches!(attempt.verdict, Verdict::Rejected { .. }), "{:?}", attempt.verdict);
    // Rejections are answers: they never open the circuit.
    assert!(d.open_circuits().is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn delivery_client_5xx_408_409_are_retried() {
    let server = ScriptedServer::start().await;
    server.script("/500", vec![Reply::json(500, r#"{"error":"boom"}"#)]);
    server.script("/408", vec![Reply::status(408)]);
    server.script("/409", vec![Reply::status(409)]);
    let d = deliverer(vec![target("crm", server.url())]);
    for path in ["/500", "/408", "/409"] {
        let attempt = d.deliver("crm", &post(path, "{}"), soon()).await;
        match &attempt.verdict {
            Verdict::Retry { after, reason } => {
                assert_eq!(*after, None, "{path}");
                assert!(reason.contains(&path[1..]), "{reason}");
            }
            other => panic!("{path}: {other:?}"),
        }
        assert!(attempt.answer.is_some() && attempt.error.is_none());
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn delivery_client_429_and_503_carry_retry_after() {
    let server = ScriptedServer::start().await;
    server.script("/throttled", vec![Reply::status(429).header("Retry-After", "7")]);
    let in_30s =
        (chrono::Utc::now() + chrono::Duration::seconds(30)).format("%a, %d %b %Y %H:%M:%S GMT").to_string();
    server.script("/down", vec![Reply::status(503).header("Retry-After", &in_30s)]);
    server.script("/ages", vec![Reply::status(429).header("Retry-After", "864000")]);
    let d = deliverer(vec![target("crm", server.url())]);

    let attempt = d.deliver("crm", &post("/throttled", "{}"), soon()).await;
    assert!(
        matches!(attempt.verdict, Verdict::Retry { after: Some(d), .. } if d == Duration::from_secs(7)),
        "{:?}",
        attempt.verdict
    );
    assert_eq!(attempt.answer.as_ref().and_then(|a| a.header("retry-after")), Some("7"));

    let attempt = d.deliver("crm", &post("/down", "{}"), soon()).await;
    match attempt.verdict {
        Verdict::Retry { after: Some(after), .. } => {
            assert!(after > Duration::from_secs(25) && after <= Duration::from_secs(30), "{after:?}")
        }
        other => panic!("{other:?}"),
    }

    let attempt = d.deliver("crm", &post("/ages", "{}"), soon()).await;
    assert!(
        matches!(attempt.verdict, Verdict::Retry { after: Some(d), .. } if d == Duration::from_secs(3600)),
        "capped at an hour: {:?}",
        attempt.verdict
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn delivery_client_slow_answer_past_the_timeout_is_retried() {
    let server = ScriptedServer::start().await;
    server.script("/slow", vec![Reply::slow(Duration::from_secs(3), Reply::status(200))]);
    let mut t = target("crm", server.url());
    t.timeout = Duration::from_millis(300);
    let d = deliverer(vec![t]);
    let started = Instant::now();
    let attempt = d.deliver("crm", &post("/slow", "{}"), soon()).await;
    assert!(started.elapsed() < Duration::from_millis(1500), "{:?}", started.elapsed());
    assert!(matches!(attempt.verdict, Verdict::Retry { after: None, .. }), "{:?}", attempt.verdict);
    assert!(reason(&attempt).contains("timed out"), "{}", reason(&attempt));
    assert!(attempt.answer.is_none());
    assert!(
        attempt.error.as_deref().is_some_and(|e| e.contains("timed out") && !e.contains("127.0.0.1")),
        "{:?}",
        attempt.error
    );
    assert_eq!(server.requests("/slow").len(), 1);

    // The caller's deadline shortens the request's own timeout.
    let mut t = target("patient", server.url());
    t.timeout = Duration::from_secs(30);
    let d = deliverer(vec![t]);
    let started = Instant::now();
    let attempt =
        d.deliver("patient", &post("/slow", "{}"), Instant::now() + Duration::from_millis(300)).await;
    assert!(started.elapsed() < Duration::from_millis(1500), "{:?}", started.elapsed());
    assert!(matches!(attempt.verdict, Verdict::Retry { .. }), "{:?}", attempt.verdict);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn delivery_client_reset_and_refused_connections_are_retried() {
    let server = ScriptedServer::start().await;
    server.script("/reset", vec![Reply::Reset]);
    let d = deliverer(vec![target("crm", server.url())]);
    let attempt = d.deliver("crm", &post("/reset", "{}"), soon()).await;
    assert!(matches!(attempt.verdict, Verdict::Retry { .. }), "{:?}", attempt.verdict);
    assert!(attempt.answer.is_none() && attempt.error.is_some());
    assert_eq!(server.requests("/reset").len(), 1, "no silent resend");

    // A port nobody listens on.
    let port = {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        listener.local_addr().expect("addr").port()
    };
    let d = deliverer(vec![target("nobody", format!("http://127.0.0.1:{port}"))]);
    let attempt = d.deliver("nobody", &post("/x?api_key=sekrit", "{}"), soon()).await;
    assert!(matches!(attempt.verdict, Verdict::Retry { .. }), "{:?}", attempt.verdict);
    let error = attempt.error.expect("a transport error");
    assert!(error.contains("connection failed") && !error.contains("sekrit"), "{error}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn delivery_client_oversize_answer_is_truncated_not_failed() {
    let server = ScriptedServer::start().await;
    server.script("/big", vec![Reply::bytes(200, vec![b'a'; 300_000])]);
    server.script("/big-error", vec![Reply::bytes(500, vec![b'e'; 300_000])]);
    server.script("/exact", vec![Reply::bytes(200, vec![b'x'; 1000])]);
    let mut t = target("crm", server.url());
    t.max_response_bytes = 1000;
    let d = deliverer(vec![t]);

    let attempt = d.deliver("crm", &post("/big", "{}"), soon()).await;
    assert_eq!(attempt.verdict, Verdict::Delivered);
    let answer = attempt.answer.expect("an answer");
    assert!(answer.truncated);
    assert_eq!(answer.body, vec![b'a'; 1000]);

    let attempt = d.deliver("crm", &post("/big-error", "{}"), soon()).await;
    assert!(matches!(attempt.verdict, Verdict::Retry { .. }), "{:?}", attempt.verdict);
    let answer = attempt.answer.expect("an answer");
    assert!(answer.truncated && answer.body.len() == 1000 && answer.status == 500);

    let attempt = d.deliver("crm", &post("/exact", "{}"), soon()).await;
    let answer = attempt.answer.expect("an answer");
    assert!(!answer.truncated && answer.body.len() == 1000, "a body of exactly the limit is whole");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn delivery_client_idempotency_key_is_the_delivery_id_on_every_send() {
    let server = ScriptedServer::start().await;
    server.script("/orders", vec![Reply::status(500), Reply::status(200)]);
    let mut custom = target("custom", server.url());
    custom.idempotency_header = Some("X-Delivery-Id".to_owned());
    let mut none = target("none", server.url());
    none.idempotency_header = None;
    let d = deliverer(vec![target("crm", server.url()), custom, none]);
    let req = post("/orders", r#"{"total":3}"#);

    let first = d.deliver("crm", &req, soon()).await;
    let second = d.deliver("crm", &req, soon()).await;
    assert!(matches!(first.verdict, Verdict::Retry { .. }));
    assert_eq!(second.verdict, Verdict::Delivered);
    let seen = server.requests("/orders");
    assert_eq!(seen.len(), 2);
    let id = req.delivery_id.hyphenated().to_string();
    for got in &seen {
        assert_eq!(got.header("idempotency-key"), Some(id.as_str()));
    }

    d.deliver("custom", &req, soon()).await;
    d.deliver("none", &req, soon()).await;
    let seen = server.requests("/orders");
    assert_eq!(seen[2].header("x-delivery-id"), Some(id.as_str()));
    assert_eq!(seen[2].header("idempotency-key"), None);
    assert_eq!(seen[3].header("idempotency-key"), None);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn delivery_client_bearer_api_key_and_basic_headers() {
    let server = ScriptedServer::start().await;
    for path in ["/bearer/x", "/key/x", "/basic/x"] {
        server.script(path, vec![Reply::status(204)]);
    }
    let mut bearer = target("bearer", format!("{}/bearer", server.url()));
    bearer.auth = Auth::Bearer { token: "tok-123".into() };
    let mut key = target("key", format!("{}/key", server.url()));
    key.auth = Auth::ApiKey { header: "X-Api-Key".to_owned(), key: "key-456".into() };
    let mut basic = target("basic", format!("{}/basic", server.url()));
    basic.auth = Auth::Basic { username: "Aladdin".to_owned(), password: "open sesame".into() };
    let d = deliverer(vec![bearer, key, basic]);

    let attempts = [
        d.deliver("bearer", &post("/x", "{}"), soon()).await,
        d.deliver("key", &post("/x", "{}"), soon()).await,
        d.deliver("basic", &post("/x", "{}"), soon()).await,
    ];
    for attempt in &attempts {
        assert_eq!(attempt.verdict, Verdict::Delivered, "{attempt:?}");
        let printed = format!("{attempt:?}");
        assert!(
            !["tok-123", "key-456", "QWxhZGRpbjpvcGVuIHNlc2FtZQ"].iter().any(|s| printed.contains(s)),
            "{printed}"
        );
    }
    assert_eq!(server.requests("/bearer/x")[0].header("authorization"), Some("Bearer tok-123"));
    assert_eq!(server.requests("/key/x")[0].header("x-api-key"), Some("key-456"));
    assert_eq!(
        server.requests("/basic/x")[0].header("authorization"),
        Some("Basic QWxhZGRpbjpvcGVuIHNlc2FtZQ==")
    );
    assert_eq!(sent_header(&attempts[0], "authorization"), Some("[redacted]"));
    assert_eq!(sent_header(&attempts[1], "x-api-key"), Some("[redacted]"));
    assert_eq!(sent_header(&attempts[2], "authorization"), Some("[redacted]"));
}

fn oauth_target(server: &ScriptedServer, concurrency: usize) -> TargetSettings {
    let mut t = target("crm", format!("{}/api", server.url()));
    t.concurrency = concurrency;
    t.auth = Auth::OAuth2 {
        token_url: format!("{}/oauth/token", server.url()),
        client_id: "hub-client".to_owned(),
        client_secret: "client-s3cret".into(),
        scope: Some("contacts:write".to_owned()),
        audience: Some("https://api.crm.example".to_owned()),
    };
    t
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn delivery_client_oauth2_token_is_fetched_once_for_concurrent_deliveries() {
    let server = ScriptedServer::start().await;
    server.script(
        "/oauth/token",
        vec![
            Reply::slow(Duration::from_millis(200), Reply::token("tok-1", 3600)),
            Reply::token("tok-2", 3600),
        ],
    );
    server.script("/api/contacts", vec![Reply::status(201)]);
    let d = deliverer(vec![oauth_target(&server, 16)]);

    let mut deliveries = tokio::task::JoinSet::new();
    for _ in 0..16 {
        let d = d.clone();
        deliveries.spawn(async move { d.deliver("crm", &post("/contacts", "{}"), soon()).await });
    }
    while let Some(attempt) = deliveries.join_next().await {
        let attempt = attempt.expect("no panic");
        assert_eq!(attempt.verdict, Verdict::Delivered, "{attempt:?}");
        assert_eq!(sent_header(&attempt, "authorization"), Some("[redacted]"));
    }
    let tokens = server.requests("/oauth/token");
    assert_eq!(tokens.len(), 1, "one token fetch for all");
    let calls = server.requests("/api/contacts");
    assert_eq!(calls.len(), 16);
    assert!(calls.iter().all(|c| c.header("authorization") == Some("Bearer tok-1")));

    // The token request: RFC 6749 4.4 with HTTP Basic client authentication.
    let token = &tokens[0];
    assert_eq!(token.method, "POST");
    assert_eq!(token.header("content-type"), Some("application/x-www-form-urlencoded"));
    let form = token.body_text();
    for part in
        ["grant_type=client_credentials", "scope=contacts%3Awrite", "audience=https%3A%2F%2Fapi.crm.example"]
    {
        assert!(form.split('&').any(|p| p == part), "{part} in {form}");
    }
    let basic = format!("Basic {}", BASE64.encode("hub-client:client-s3cret"));
    assert_eq!(token.header("authorization"), Some(basic.as_str()));

    // Later deliveries use the cached token.
    let attempt = d.deliver("crm", &post("/contacts", "{}"), soon()).await;
    assert_eq!(attempt.verdict, Verdict::Delivered);
    assert_eq!(server.requests("/oauth/token").len(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn delivery_client_oauth2_401_refreshes_the_token_once_and_resends_once() {
    let server = ScriptedServer::start().await;
    server.script(
        "/oauth/token",
        vec![Reply::token("tok-1", 3600), Reply::token("tok-2", 3600), Reply::token("tok-3", 3600)],
    );
    server.script("/api/contacts", vec![Reply::status(401), Reply::status(201)]);
    let d = deliverer(vec![oauth_target(&server, 4)]);

    let attempt = d.deliver("crm", &post("/contacts", "{}"), soon()).await;
    assert_eq!(attempt.verdict, Verdict::Delivered, "{attempt:?}");
    assert_eq!(server.requests("/oauth/token").len(), 2);
    let calls = server.requests("/api/contacts");
    assert_eq!(calls.len(), 2);
    assert_eq!(calls[0].header("authorization"), Some("Bearer tok-1"));
    assert_eq!(calls[1].header("authorization"), Some("Bearer tok-2"));
    assert_eq!(calls[0].header("idempotency-key"), calls[1].header("idempotency-key"));

    // A target that refuses the new token too: its 401 stands, after exactly one resend.
    server.script("/api/contacts", vec![Reply::json(401, r#"{"error":"revoked"}"#)]);
    let attempt = d.deliver("crm", &post("/contacts", "{}"), soon()).await;
    assert!(matches!(attempt.verdict, Verdict::Rejected { .. }), "{:?}", attempt.verdict);
    assert_eq!(attempt.answer.as_ref().map(|a| a.status), Some(401));
    assert_eq!(server.requests("/oauth/token").len(), 3);
    assert_eq!(server.requests("/api/contacts").len(), 4);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn delivery_client_oauth2_token_endpoint_failures_are_transient() {
    let server = ScriptedServer::start().await;
    server.script(
        "/oauth/token",
        vec![
            Reply::json(401, r#"{"error":"invalid_client"}"#),
            Reply::status(503),
            Reply::json(200, r#"{"token_type":"Bearer"}"#),
            Reply::token("tok-1", 3600),
        ],
    );
    server.script("/api/contacts", vec![Reply::status(201)]);
    let mut t = oauth_target(&server, 4);
    t.circuit_failures = 0;
    let d = deliverer(vec![t]);

    let attempt = d.deliver("crm", &post("/contacts", "{}"), soon()).await;
    assert!(matches!(attempt.verdict, Verdict::Retry { .. }), "{:?}", attempt.verdict);
    let why = reason(&attempt);
    assert!(why.contains("OAuth2 token endpoint answered 401") && why.contains("invalid_client"), "{why}");
    assert!(!format!("{attempt:?}").contains("client-s3cret"));
    let attempt = d.deliver("crm", &post("/contacts", "{}"), soon()).await;
    assert!(reason(&attempt).contains("503"), "{}", reason(&attempt));
    let attempt = d.deliver("crm", &post("/contacts", "{}"), soon()).await;
    assert!(reason(&attempt).contains("access_token"), "{}", reason(&attempt));
    assert!(server.requests("/api/contacts").is_empty(), "nothing sent without a token");

    let attempt = d.deliver("crm", &post("/contacts", "{}"), soon()).await;
    assert_eq!(attempt.verdict, Verdict::Delivered);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn delivery_client_standard_webhooks_signature_verifies() {
    let server = ScriptedServer::start().await;
    server.script("/hooks", vec![Reply::status(204)]);
    // A key of our own, in the standard's secret format.
    let key: Vec<u8> = (0u8..24).map(|b| b.wrapping_mul(37).wrapping_add(11)).collect();
    let secret = format!("whsec_{}", BASE64.encode(&key));
    let mut t = target("hooks", server.url());
    t.auth = Auth::StandardWebhooks { secret: secret.clone().into() };
    let d = deliverer(vec![t]);
    let req = post("/hooks", r#"{"type":"contact.created","data":{"id":7}}"#);
    let attempt = d.deliver("hooks", &req, soon()).await;
    assert_eq!(attempt.verdict, Verdict::Delivered);

    let got = &server.requests("/hooks")[0];
    let id = got.header("webhook-id").expect("webhook-id");
    assert_eq!(id, req.delivery_id.hyphenated().to_string());
    let timestamp: i64 =
        got.header("webhook-timestamp").expect("webhook-timestamp").parse().expect("seconds");
    assert!((chrono::Utc::now().timestamp() - timestamp).abs() <= 5);
    // Verified as a receiver would, from the spec: HMAC-SHA256 of "id.timestamp.body" with
    // the base64-decoded part of the secret after "whsec_", base64, after "v1,".
    let decoded = BASE64.decode(secret.strip_prefix("whsec_").expect("prefix")).expect("base64");
    let mut mac = Hmac::<Sha256>::new_from_slice(&decoded).expect("any key length");
    mac.update(format!("{id}.{timestamp}.").as_bytes());
    mac.update(&got.body);
    let expected = BASE64.encode(mac.finalize().into_bytes());
    let signatures = got.header("webhook-signature").expect("webhook-signature");
    assert!(
        signatures.split(' ').any(|s| s.strip_prefix("v1,") == Some(expected.as_str())),
        "{signatures} does not verify"
    );
    assert_eq!(sent_header(&attempt, "webhook-signature"), Some("[redacted]"));
    assert_eq!(sent_header(&attempt, "webhook-id"), Some(id));
    assert_eq!(sent_header(&attempt, "webhook-timestamp"), Some(timestamp.to_string().as_str()));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn delivery_client_circuit_opens_then_one_probe_closes_it() {
    let server = ScriptedServer::start().await;
    server.script("/a/x", vec![Reply::status(500)]);
    server.script("/b/x", vec![Reply::status(200)]);
    let mut a = target("a", format!("{}/a", server.url()));
    a.circuit_failures = 3;
    a.circuit_open = Duration::from_millis(400);
    let d = deliverer(vec![a, target("b", format!("{}/b", server.url()))]);

    for _ in 0..3 {
        let attempt = d.deliver("a", &post("/x", "{}"), soon()).await;
        assert!(matches!(attempt.verdict, Verdict::Retry { .. }), "{:?}", attempt.verdict);
    }
    assert_eq!(d.open_circuits(), vec!["a".to_owned()]);
    for _ in 0..5 {
        let attempt = d.deliver("a", &post("/x", "{}"), soon()).await;
        match &attempt.verdict {
            Verdict::NotSent { until: Some(until), .. } => assert!(*until <= Duration::from_millis(400)),
            other => panic!("{other:?}"),
        }
        assert!(!attempt.verdict.is_attempt());
        assert!(attempt.answer.is_none() && attempt.request_headers.is_empty());
    }
    assert_eq!(server.requests("/a/x").len(), 3, "nothing reached the server while open");
    // The other target is not affected.
    let attempt = d.deliver("b", &post("/x", "{}"), soon()).await;
    assert_eq!(attempt.verdict, Verdict::Delivered);

    tokio::time::sleep(Duration::from_millis(450)).await;
    assert!(d.open_circuits().is_empty(), "due for a probe");
    // Half-open: of three concurrent deliveries only one goes (the probe, answered slowly).
    server.script("/a/x", vec![Reply::slow(Duration::from_millis(300), Reply::status(200))]);
    let mut deliveries = tokio::task::JoinSet::new();
    for _ in 0..3 {
        let d = d.clone();
        deliveries.spawn(async move { d.deliver("a", &post("/x", "{}"), soon()).await.verdict });
    }
    let mut verdicts = Vec::new();
    while let Some(verdict) = deliveries.join_next().await {
        verdicts.push(verdict.expect("no panic"));
    }
    assert_eq!(verdicts.iter().filter(|v| **v == Verdict::Delivered).count(), 1, "{verdicts:?}");
    assert_eq!(
        verdicts.iter().filter(|v| matches!(v, Verdict::NotSent { until: None, .. })).count(),
        2,
        "{verdicts:?}"
    );
    assert_eq!(server.requests("/a/x").len(), 4);
    // The probe succeeded: closed again.
    let attempt = d.deliver("a", &post("/x", "{}"), soon()).await;
    assert_eq!(attempt.verdict, Verdict::Delivered);
    assert_eq!(server.requests("/a/x").len(), 5);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn delivery_client_failed_probe_reopens_the_circuit() {
    let server = ScriptedServer::start().await;
    server.script("/x", vec![Reply::status(502)]);
    let mut a = target("a", server.url());
    a.circuit_failures = 1;
    a.circuit_open = Duration::from_millis(200);
    let d = deliverer(vec![a]);
    assert!(matches!(d.deliver("a", &post("/x", "{}"), soon()).await.verdict, Verdict::Retry { .. }));
    assert!(matches!(d.deliver("a", &post("/x", "{}"), soon()).await.verdict, Verdict::NotSent { .. }));
    tokio::time::sleep(Duration::from_millis(250)).await;
    assert!(
        matches!(d.deliver("a", &post("/x", "{}"), soon()).await.verdict, Verdict::Retry { .. }),
        "the probe"
    );
    assert_eq!(d.open_circuits(), vec!["a".to_owned()]);
    assert!(matches!(d.deliver("a", &post("/x", "{}"), soon()).await.verdict, Verdict::NotSent { .. }));
    assert_eq!(server.requests("/x").len(), 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn delivery_client_concurrency_limit_is_respected() {
    let server = ScriptedServer::start().await;
    server.script("/x", vec![Reply::slow(Duration::from_millis(150), Reply::status(200))]);
    let mut t = target("crm", server.url());
    t.concurrency = 3;
    let d = deliverer(vec![t]);
    let mut deliveries = tokio::task::JoinSet::new();
    for _ in 0..10 {
        let d = d.clone();
        deliveries.spawn(async move { d.deliver("crm", &post("/x", "{}"), soon()).await.verdict });
    }
    while let Some(verdict) = deliveries.join_next().await {
        assert_eq!(verdict.expect("no panic"), Verdict::Delivered);
    }
    assert_eq!(server.requests("/x").len(), 10);
    assert_eq!(server.max_in_flight(), 3, "at most 3 at once, and the limit was reached");

    // A delivery that cannot get a slot before its deadline is not sent.
    server.script("/x", vec![Reply::slow(Duration::from_millis(400), Reply::status(200))]);
    let mut blockers = tokio::task::JoinSet::new();
    for _ in 0..3 {
        let d = d.clone();
        blockers.spawn(async move { d.deliver("crm", &post("/x", "{}"), soon()).await.verdict });
    }
    let waited = Instant::now();
    while server.requests("/x").len() < 13 {
        assert!(waited.elapsed() < Duration::from_secs(2), "the three blockers never arrived");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let attempt = d.deliver("crm", &post("/x", "{}"), Instant::now() + Duration::from_millis(50)).await;
    assert!(matches!(attempt.verdict, Verdict::NotSent { until: None, .. }), "{:?}", attempt.verdict);
    assert!(reason(&attempt).contains("connection slots"), "{}", reason(&attempt));
    while let Some(verdict) = blockers.join_next().await {
        assert_eq!(verdict.expect("no panic"), Verdict::Delivered);
    }
    assert_eq!(server.requests("/x").len(), 13);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn delivery_client_rate_limit_spaces_requests() {
    let server = ScriptedServer::start().await;
    server.script("/x", vec![Reply::status(200)]);
    let mut t = target("crm", server.url());
    t.rate_per_sec = Some(20.0);
    t.concurrency = 30;
    let d = deliverer(vec![t]);
    let started = Instant::now();
    let mut deliveries = tokio::task::JoinSet::new();
    for _ in 0..30 {
        let d = d.clone();
        deliveries.spawn(async move { d.deliver("crm", &post("/x", "{}"), soon()).await.verdict });
    }
    while let Some(verdict) = deliveries.join_next().await {
        assert_eq!(verdict.expect("no panic"), Verdict::Delivered);
    }
    // A burst of 20 (the bucket holds max(1, rate) tokens), then 10 more at 20 a second.
    let elapsed = started.elapsed();
    assert!(elapsed >= Duration::from_millis(450), "30 requests at 20/s with a burst of 20 took {elapsed:?}");
    let seen = server.requests("/x");
    assert_eq!(seen.len(), 30);
    let span = seen[29].at.duration_since(seen[0].at);
    assert!(span >= Duration::from_millis(400), "arrivals spread over {span:?}");

    // A delivery whose rate slot would come after its deadline is not sent.
    let mut slow = target("slow", server.url());
    slow.rate_per_sec = Some(1.0);
    let d = deliverer(vec![slow]);
    assert_eq!(d.deliver("slow", &post("/x", "{}"), soon()).await.verdict, Verdict::Delivered);
    let attempt = d.deliver("slow", &post("/x", "{}"), Instant::now() + Duration::from_millis(200)).await;
    assert!(matches!(attempt.verdict, Verdict::NotSent { .. }), "{:?}", attempt.verdict);
    assert!(reason(&attempt).contains("rate limit"));
    assert_eq!(server.requests("/x").len(), 31);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn delivery_client_redirects_and_unbuildable_requests_are_rejected() {
    let server = ScriptedServer::start().await;
    server.script("/moved", vec![Reply::status(301).header("Location", "https://elsewhere.example/new")]);
    server.script("/new", vec![Reply::status(200)]);
    let d = deliverer(vec![target("crm", server.url())]);

    let attempt = d.deliver("crm", &post("/moved", "{}"), soon()).await;
    assert!(matches!(attempt.verdict, Verdict::Rejected { .. }), "{:?}", attempt.verdict);
    assert!(reason(&attempt).contains("https://elsewhere.example/new"), "{}", reason(&attempt));

    let attempt = d.deliver("erp", &post("/x", "{}"), soon()).await;
    assert!(matches!(attempt.verdict, Verdict::Rejected { .. }) && reason(&attempt).contains("erp"));

    let mut bad = post("/x", "{}");
    bad.headers.push(("X-Evil".to_owned(), "a\r\nInjected: yes".to_owned()));
    let attempt = d.deliver("crm", &bad, soon()).await;
    assert!(matches!(attempt.verdict, Verdict::Rejected { .. }), "{:?}", attempt.verdict);
    let mut bad = post("no-slash", "{}");
    bad.method = "GET".to_owned();
    assert!(matches!(d.deliver("crm", &bad, soon()).await.verdict, Verdict::Rejected { .. }));
    let mut bad = post("/x", "{}");
    bad.method = "CONNECT".to_owned();
    assert!(matches!(d.deliver("crm", &bad, soon()).await.verdict, Verdict::Rejected { .. }));

    assert_eq!(server.all_requests().len(), 1, "only the redirecting request was sent");
    assert!(server.requests("/new").is_empty(), "the redirect was not followed");
}
