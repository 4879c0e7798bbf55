//! `hub-worker run` serving HTTPS from `[http] tls_cert` and `tls_key`, with a certificate made
//! in the test; the plain-HTTP port is no more; bad TLS settings are configuration errors.

#![cfg(feature = "tls")]

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::Duration;

fn hub_worker() -> Command {
    Command::new(env!("CARGO_BIN_EXE_hub-worker"))
}

/// A config on SQLite with the example integrations and the HTTP server on; `tls` is appended
/// to `[http]`.
fn config(dir: &std::path::Path, tls: &str) -> std::path::PathBuf {
    let ints = concat!(env!("CARGO_MANIFEST_DIR"), "/../examples/integrations");
    let cfg = dir.join("hub.toml");
    std::fs::write(
        &cfg,
        format!(
            "integrations_dir = {ints:?}\n[database]\nurl = \"sqlite://{}?mode=rwc\"\n\
             [transport]\nkind = \"in-process\"\naccept_without_consumer = true\n\
             [http]\nlisten = \"127.0.0.1:0\"\n{tls}",
            dir.join("tls.sqlite").display()
        ),
    )
    .expect("write config");
    cfg
}

/// The worker, killed if the test fails before stopping it.
struct Killed(std::process::Child);

impl Drop for Killed {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn with_secrets(c: &mut Command) -> &mut Command {
    c.env("HUB_ADMIN_TOKEN", "admin-token-0123456789")
        .env("CRM_WEBHOOK_SECRET", "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw")
        .env("PAYMENTS_WEBHOOK_SECRET", "whsec_test_0123456789abcdef")
        .env("IOT_GATEWAY_KEYS", "gateway-key-0123456789")
        .env("CRM_API_TOKEN", "crm-api-token-0123456789")
        .env("PAYMENTS_API_KEY", "sk_test_0123456789abcdef")
        .env("PARTNER_WEBHOOK_SECRET", "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw")
        .env("GITHUB_WEBHOOK_SECRET", "gh-hook-secret-0123456789")
        .env("STRIPE_WEBHOOK_SECRET", "whsec_stripe_test_0123456789abcdef")
        .env("SHOP_API_TOKEN", "shop-api-token-0123456789")
        .env("RUST_BACKTRACE", "0")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn run_serves_https_with_the_configured_certificate() {
    let dir = std::env::temp_dir().join(format!("po-tls-{}", uuid::Uuid::now_v7().simple()));
    std::fs::create_dir_all(&dir).expect("temp dir");
    let made = rcgen::generate_simple_self_signed(vec!["localhost".to_owned()]).expect("certificate");
    // Relative names: resolved against the config file's directory.
    std::fs::write(dir.join("cert.pem"), made.cert.pem()).expect("write cert");
    std::fs::write(dir.join("key.pem"), made.signing_key.serialize_pem()).expect("write key");
    let cfg = config(&dir, "tls_cert = \"cert.pem\"\ntls_key = \"key.pem\"\n");

    let mut child = Killed(
        with_secrets(hub_worker().args(["run", "--config"]).arg(&cfg))
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawns"),
    );
    let stderr = child.0.stderr.take().expect("stderr");
    let (tx, rx) = std::sync::mpsc::channel();
    let reader = std::thread::spawn(move || {
        let mut all = String::new();
        for line in BufReader::new(stderr).lines().map_while(Result::ok) {
            if let Some(addr) = line.strip_prefix("webhook intake on ") {
                let _ = tx.send(addr.to_owned());
            }
            all.push_str(&line);
            all.push('\n');
        }
        all
    });
    let base = rx.recv_timeout(Duration::from_secs(30)).expect("server address");
    let addr: SocketAddr =
        base.strip_prefix("https://").expect("announced as https").parse().expect("address");

    // A client that trusts exactly this certificate, on aws-lc-rs like the server.
    let mut roots = rustls::RootCertStore::empty();
    roots.add(made.cert.der().clone()).expect("root");
    let tls =
        rustls::ClientConfig::builder_with_provider(Arc::new(rustls::crypto::aws_lc_rs::default_provider()))
            .with_safe_default_protocol_versions()
            .expect("protocols")
            .with_root_certificates(roots)
            .with_no_client_auth();
    let https = reqwest::Client::builder()
        .use_preconfigured_tls(tls)
        .resolve("localhost", addr)
        .build()
        .expect("client");
    let url = format!("https://localhost:{}", addr.port());
    let mut ok = None;
    for _ in 0..100 {
        match https.get(format!("{url}/healthz")).send().await {
            Ok(r) => {
                ok = Some(r);
                break;
            }
            Err(_) => tokio::time::sleep(Duration::from_millis(100)).await,
        }
    }
    let r = ok.expect("healthz over https");
    assert_eq!(r.status().as_u16(), 200);
    assert_eq!(r.text().await.expect("body"), "ok");
    // Ready once the database is migrated (the server answers before that, with 503).
    let mut ready = 0;
    for _ in 0..100 {
        ready = https.get(format!("{url}/readyz")).send().await.expect("readyz").status().as_u16();
        if ready == 200 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(ready, 200);
    // The audit desk over the same connection kind, token and all.
    let stats = https
        .get(format!("{url}/v1/stats"))
        .bearer_auth("admin-token-0123456789")
        .send()
        .await
        .expect("stats");
    assert_eq!(stats.status().as_u16(), 200);

    // Plain HTTP on the same port gets no answer: the handshake fails and the connection closes.
    let plain = reqwest::Client::builder().timeout(Duration::from_secs(5)).build().expect("client");
    assert!(plain.get(format!("http://{addr}/healthz")).send().await.is_err(), "plain http must be refused");
    // And a client that does not trust the certificate refuses the server.
    let untrusting = reqwest::Client::builder()
        .use_preconfigured_tls(
            rustls::ClientConfig::builder_with_provider(Arc::new(
                rustls::crypto::aws_lc_rs::default_provider(),
            ))
            .with_safe_default_protocol_versions()
            .expect("protocols")
            .with_root_certificates(rustls::RootCertStore::empty())
            .with_no_client_auth(),
        )
        .resolve("localhost", addr)
        .build()
        .expect("client");
    assert!(untrusting.get(format!("{url}/healthz")).send().await.is_err());

    // Graceful shutdown still works over TLS.
    let kill = Command::new("kill").args(["-INT", &child.0.id().to_string()]).status().expect("kill");
    assert!(kill.success());
    let status = child.0.wait().expect("exits");
    let log = reader.join().expect("reader");
    assert!(status.success(), "{log}");
    assert!(log.contains("claimed batches"), "{log}");
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn bad_tls_settings_are_configuration_errors_naming_the_key() {
    let dir = std::env::temp_dir().join(format!("po-tls-bad-{}", uuid::Uuid::now_v7().simple()));
    std::fs::create_dir_all(&dir).expect("temp dir");
    let made = rcgen::generate_simple_self_signed(vec!["localhost".to_owned()]).expect("certificate");
    let other = rcgen::generate_simple_self_signed(vec!["localhost".to_owned()]).expect("certificate");
    std::fs::write(dir.join("cert.pem"), made.cert.pem()).expect("write");
    std::fs::write(dir.join("other-key.pem"), other.signing_key.serialize_pem()).expect("write");
    std::fs::write(dir.join("not-pem.txt"), "hello").expect("write");
    let cases = [
        ("tls_cert = \"cert.pem\"\n", "http.tls_key: missing"),
        ("tls_key = \"other-key.pem\"\n", "http.tls_cert: missing"),
        ("tls_cert = \"nowhere.pem\"\ntls_key = \"other-key.pem\"\n", "nowhere.pem"),
        ("tls_cert = \"not-pem.txt\"\ntls_key = \"other-key.pem\"\n", "no certificate in the file"),
        ("tls_cert = \"cert.pem\"\ntls_key = \"not-pem.txt\"\n", "http.tls_key"),
        // The key of another certificate.
        ("tls_cert = \"cert.pem\"\ntls_key = \"other-key.pem\"\n", "http.tls_cert"),
    ];
    for (i, (tls, says)) in cases.iter().enumerate() {
        let cfg = config(&dir, tls);
        for cmd in ["check", "run"] {
            let out = with_secrets(hub_worker().args([cmd, "--config"]).arg(&cfg)).output().expect("runs");
            let err = String::from_utf8_lossy(&out.stderr);
            assert!(!out.status.success(), "case {i} ({cmd}) must fail: {err}");
            assert!(err.contains(says), "case {i} ({cmd}): expected `{says}` in {err}");
        }
    }
    let _ = std::fs::remove_dir_all(&dir);
}
