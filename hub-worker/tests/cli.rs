//! The `hub-worker` binary as a user runs it: demo, migrate, trace.

use std::process::Command;

fn hub_worker() -> Command {
    Command::new(env!("CARGO_BIN_EXE_hub-worker"))
}

#[test]
fn demo_then_migrate_and_trace_on_its_database() {
    let dir = std::env::temp_dir().join(format!("po-cli-{}", uuid::Uuid::now_v7().simple()));
    std::fs::create_dir_all(&dir).expect("temp dir");
    let db = dir.join("demo.sqlite");
    let out = hub_worker().args(["demo", "--db"]).arg(&db).output().expect("runs");
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "demo failed: {text}\n{}", String::from_utf8_lossy(&out.stderr));
    assert!(text.contains("OK: 5 of 5 core messages acknowledged"), "{text}");
    assert!(text.contains("(duplicate: already on record)"), "{text}");
    assert!(text.contains("field `/data/payment/amount` failed rule `decimal`"), "{text}");
    assert!(text.contains("\"value\":\"12345678901234567.89\""), "{text}");

    let url = format!("sqlite://{}?mode=rwc", db.display());
    let out = hub_worker().args(["migrate", "--database-url", &url]).output().expect("runs");
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    // The same from the environment, with an unrelated HUB_ variable around.
    let out = hub_worker()
        .arg("migrate")
        .env("HUB_DATABASE__URL", &url)
        .env("HUB_LOG", "warn")
        .output()
        .expect("runs");
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let out = hub_worker().arg("migrate").env_remove("HUB_DATABASE__URL").output().expect("runs");
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("no database URL"));

    // Trace the layer 4 id the demo printed: four rows, raw bytes to acknowledged.
    let l4 = text
        .lines()
        .find_map(|l| l.trim_start().strip_prefix("L4 ").and_then(|r| r.split_whitespace().next()))
        .expect("a layer 4 id in the demo output")
        .to_owned();
    let out = hub_worker().args(["trace", &l4, "--database-url", &url]).output().expect("runs");
    let trace = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    for layer in ["L1 ", "L2 ", "L3 ", "L4 "] {
        assert!(trace.contains(layer), "{layer} missing in {trace}");
    }
    assert!(trace.contains("acknowledged"), "{trace}");

    // The audit commands on the same database.
    let out = hub_worker()
        .args(["messages", "list", "--layer", "1", "--status", "rejected", "--database-url", &url])
        .output()
        .expect("runs");
    let page: serde_json::Value = serde_json::from_slice(&out.stdout).expect("json page");
    assert_eq!(page["items"].as_array().map(Vec::len), Some(1), "{page}");
    let rejected = page["items"][0]["id"].as_str().expect("id").to_owned();
    let out = hub_worker().args(["stats", "--database-url", &url]).output().expect("runs");
    let stats: serde_json::Value = serde_json::from_slice(&out.stdout).expect("json stats");
    let acked: i64 =
        stats["destinations"].as_array().expect("d").iter().filter_map(|d| d["acknowledged"].as_i64()).sum();
    assert_eq!(acked, 5, "{stats}");
    let out = hub_worker()
        .args(["replay", &rejected, "--from-layer", "1", "--database-url", &url])
        .output()
        .expect("runs");
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let out = hub_worker()
        .args(["messages", "list", "--layer", "1", "--status", "just_in", "--database-url", &url])
        .output()
        .expect("runs");
    let page: serde_json::Value = serde_json::from_slice(&out.stdout).expect("json page");
    assert_eq!(
        page["items"][0]["parent_id"].as_str(),
        Some(rejected.as_str()),
        "the replay links to the old row"
    );
    let out = hub_worker()
        .args(["replay", &rejected, "--from-layer", "3", "--database-url", &url])
        .output()
        .expect("runs");
    assert!(!out.status.success(), "a payload rejected at layer 2 has no layer 3 row to replay from");

    let out = hub_worker()
        .args(["trace", "01a1fca4-0000-7000-8000-000000000000", "--database-url", &url])
        .output()
        .expect("runs");
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("no message with id"));
    // Anything that is not a UUID is a core app's id of a downstream message.
    let out = hub_worker().args(["trace", "m-none", "--database-url", &url]).output().expect("runs");
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("no downstream message with core-message-id `m-none`"), "{err}");
    // JSON: the audit desk's answer, the bytes only when asked for.
    for (raw, shown) in [(false, false), (true, true)] {
        let mut args = vec!["trace", l4.as_str(), "--json", "--database-url", &url];
        if raw {
            args.push("--raw");
        }
        let out = hub_worker().args(&args).output().expect("runs");
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
        let m: serde_json::Value = serde_json::from_slice(&out.stdout).expect("json message");
        assert_eq!(m["focus"].as_str(), Some(l4.as_str()), "{m}");
        assert_eq!(m["entries"].as_array().map(Vec::len), Some(4), "{m}");
        assert_eq!((&m["deliveries"], &m["receipts"]), (&serde_json::json!([]), &serde_json::json!([])));
        assert_eq!(m["raw"][0]["body_base64"].is_string(), shown, "{m}");
    }
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn example_config_loads_and_bad_configs_name_the_key() {
    let example = concat!(env!("CARGO_MANIFEST_DIR"), "/../config/hub-worker.example.toml");
    let cfg = hub_worker::config::Config::load(Some(std::path::Path::new(example)))
        .expect("example config is valid");
    assert!(cfg.integrations.is_empty(), "the example runs integrations from files");
    assert_eq!(cfg.integrations_path().map(|p| p.ends_with("examples/integrations")), Some(true));

    let dir = std::env::temp_dir().join(format!("po-cfg-{}", uuid::Uuid::now_v7().simple()));
    std::fs::create_dir_all(&dir).expect("temp dir");
    let cases = [
        ("[database]\nurl = \"sqlite::memory:\"\nsurprise = 1\n", "surprise"),
        (
            "integrations = [\"nope\"]\n[database]\nurl = \"sqlite::memory:\"\n[[routes]]\ntype = \"a\"\ndestination = \"b\"\n",
            "nope",
        ),
        ("[database]\nurl = \"sqlite::memory:\"\n", "no routes"),
        (
            "[database]\nurl = \"sqlite::memory:\"\n[transport]\nkind = \"carrier-pigeon\"\n[[routes]]\ntype = \"a\"\ndestination = \"b\"\n",
            "carrier-pigeon",
        ),
    ];
    for (i, (text, named)) in cases.iter().enumerate() {
        let p = dir.join(format!("{i}.toml"));
        std::fs::write(&p, text).expect("write");
        let err = hub_worker::config::Config::load(Some(&p)).expect_err("invalid config");
        assert!(err.to_string().contains(named), "case {i}: {err}");
    }
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn run_refuses_a_bad_config_with_a_clear_error() {
    let out = hub_worker().args(["run", "--config", "/nonexistent/hub.toml"]).output().expect("runs");
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("does not exist"));
}

/// The in-process transport with the opt-in for a worker without a consumer, as a config
/// section: for tests that exercise the worker without a broker.
const IN_PROCESS_TRIAL: &str = "[transport]\nkind = \"in-process\"\naccept_without_consumer = true\n";

/// Starts `run` on the example config (its database in a temp dir, its broker replaced by the
/// in-process trial transport), sends `signal` once the hub is up, and returns the exit status
/// and stderr.
fn run_example_until(signal: &str) -> (std::process::ExitStatus, String) {
    use std::io::{BufRead, BufReader};
    let dir = std::env::temp_dir().join(format!("po-run-{}", uuid::Uuid::now_v7().simple()));
    std::fs::create_dir_all(&dir).expect("temp dir");
    let example =
        std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/../config/hub-worker.example.toml"))
            .expect("example");
    let db = dir.join("run.sqlite");
    let cfg = dir.join("hub.toml");
    let ints = concat!(env!("CARGO_MANIFEST_DIR"), "/../examples/integrations");
    // The example's broker section, replaced: these tests need no broker.
    let broker = "[transport]\nkind = \"rabbitmq\"\nurl = \"amqp://guest:guest@127.0.0.1:5672/%2f\"";
    assert!(example.contains(broker), "the example's [transport] changed; update this test");
    let text = example
        .replace("post-office.sqlite", &db.display().to_string())
        .replace("\"../examples/integrations\"", &format!("{ints:?}"))
        .replace(broker, IN_PROCESS_TRIAL.trim_end());
    std::fs::write(&cfg, text).expect("write");
    // The example's pulled source (`shop.toml`) needs its API token whenever the hub runs.
    let mut child = hub_worker()
        .args(["run", "--config"])
        .arg(&cfg)
        .env("SHOP_API_TOKEN", "shop-api-token-0123456789")
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("spawns");
    let stderr = child.stderr.take().expect("stderr");
    let (tx, rx) = std::sync::mpsc::channel();
    let reader = std::thread::spawn(move || {
        let mut all = String::new();
        for line in BufReader::new(stderr).lines().map_while(Result::ok) {
            if line.starts_with("hub-worker running on ") {
                let _ = tx.send(());
            }
            all.push_str(&line);
            all.push('\n');
        }
        all
    });
    // Up: the stages run (a signal now must finish them, not interrupt the start).
    let up = rx.recv_timeout(std::time::Duration::from_secs(30));
    if up.is_err() {
        let _ = child.kill();
    }
    up.expect("run started");
    std::thread::sleep(std::time::Duration::from_millis(300));
    assert!(child.try_wait().expect("wait").is_none(), "run exited early");
    let kill = Command::new("kill").args([signal, &child.id().to_string()]).status().expect("kill");
    assert!(kill.success());
    let status = child.wait().expect("exits");
    let err = reader.join().expect("stderr reader");
    let _ = std::fs::remove_dir_all(&dir);
    (status, err)
}

#[test]
fn run_starts_on_a_config_and_stops_cleanly_on_ctrl_c() {
    let (status, err) = run_example_until("-INT");
    assert!(status.success(), "{status}: {err}");
    assert!(err.contains("SIGINT received"), "{err}");
    assert!(err.contains("stopping: finishing requests in flight and claimed batches"), "{err}");
}

/// Containers and systemd stop a service with SIGTERM: the same graceful stop as Ctrl-C, exit
/// status 0 (unhandled, SIGTERM kills the process: no status, claimed batches cut off).
#[test]
fn run_stops_gracefully_on_sigterm() {
    let (status, err) = run_example_until("-TERM");
    assert!(status.success(), "{status}: {err}");
    assert!(err.contains("SIGTERM received"), "{err}");
    assert!(err.contains("stopping: finishing requests in flight and claimed batches"), "{err}");
}

/// A standalone worker on in-process queues has no consumer (the core app is another process):
/// `check` and `run` refuse it, explicit or by default, saying what to use instead; the trial
/// opt-in passes.
#[test]
fn check_and_run_refuse_in_process_queues_without_a_consumer() {
    let dir = std::env::temp_dir().join(format!("po-inproc-{}", uuid::Uuid::now_v7().simple()));
    std::fs::create_dir_all(&dir).expect("temp dir");
    let ints = concat!(env!("CARGO_MANIFEST_DIR"), "/../examples/integrations");
    let base = format!("integrations_dir = {ints:?}\n[database]\nurl = \"sqlite::memory:\"\n");
    let cases = [
        ("default", String::new(), None),
        ("explicit", "[transport]\nkind = \"in-process\"\nmax_queued = 5\n".to_owned(), Some(5)),
        (
            "declined",
            "[transport]\nkind = \"in-process\"\naccept_without_consumer = false\n".to_owned(),
            Some(5),
        ),
    ];
    for (name, transport, line) in cases {
        let cfg = dir.join(format!("{name}.toml"));
        std::fs::write(&cfg, format!("{base}{transport}")).expect("write");
        let want = match line {
            Some(l) => format!("{}:{l}: error: transport.kind = \"in-process\": ", cfg.display()),
            None => format!("{}: error: no [transport] (in-process): ", cfg.display()),
        };
        for cmd in ["check", "run"] {
            let started = std::time::Instant::now();
            let out = hub_worker()
                .args([cmd, "--config"])
                .arg(&cfg)
                .env("RUST_BACKTRACE", "0")
                .output()
                .expect("runs");
            let err = String::from_utf8_lossy(&out.stderr);
            assert!(!out.status.success(), "{name} ({cmd}) must be refused: {err}");
            assert!(started.elapsed() < std::time::Duration::from_secs(20), "{name} ({cmd}) waited");
            let said = err.lines().find(|l| l.starts_with(&want));
            assert!(said.is_some(), "{name} ({cmd}): expected `{want}...` in:\n{err}");
            for hint in [
                "no consumer",
                "kind = \"rabbitmq\"",
                "\"sqs\"",
                "hub_worker::Hub",
                "accept_without_consumer = true",
            ] {
                assert!(said.is_some_and(|l| l.contains(hint)), "{name} ({cmd}): `{hint}` missing in {err}");
            }
        }
    }
    let cfg = dir.join("trial.toml");
    std::fs::write(&cfg, format!("{base}{IN_PROCESS_TRIAL}max_queued = 5\n")).expect("write");
    let out = hub_worker()
        .args(["check", "--config"])
        .arg(&cfg)
        .env("SHOP_API_TOKEN", "shop-api-token-0123456789")
        .output()
        .expect("runs");
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let _ = std::fs::remove_dir_all(&dir);
}

/// The 1-based line of the first line of `file` containing `marker`.
fn line_of(file: &std::path::Path, marker: &str) -> usize {
    let text = std::fs::read_to_string(file).expect("fixture");
    text.lines().position(|l| l.contains(marker)).map(|i| i + 1).expect("marker in fixture")
}

#[test]
fn check_finds_every_class_of_error_with_file_and_line() {
    let fx = std::path::Path::new(concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures/broken"));
    let out = hub_worker()
        .args(["check", "--config"])
        .arg(fx.join("hub.toml"))
        .env("PO_FIXTURE_ADMIN_TOKEN", "0123456789abcdef-admin")
        .env_remove("PO_FIXTURE_UNSET_ORDERS_TOKEN")
        .env("RUST_BACKTRACE", "0")
        .output()
        .expect("runs");
    assert!(!out.status.success(), "a broken setup must fail the check");
    let err = String::from_utf8_lossy(&out.stderr);
    let ints = fx.join("integrations");
    let orders = ints.join("orders.toml");
    let expect = [
        (ints.join("refunds.toml"), "UNKNOWN-KEY", "unknown field `recods`"),
        (ints.join("returns.toml"), "SCHEMA-DOES-NOT-COMPILE", "schema does not compile"),
        (orders.clone(), "IMPOSSIBLE-POINTER", "`/emial` cannot exist"),
        (orders.clone(), "[kinds.order.mapping.fields]", "core field `/total` is required"),
        (orders.clone(), "UNDECLARED-DESTINATION", "destination `core.order` is not declared"),
        (orders.clone(), "MISSING-SECRET", "PO_FIXTURE_UNSET_ORDERS_TOKEN"),
        (orders.clone(), "UNNAMED-LOSS", "lossy = \"truncate-timestamp\""),
        (fx.join("hub.toml"), "NO-CONSUMER", "in-process queues have no consumer"),
    ];
    for (file, marker, says) in expect {
        let want = format!("{}:{}: error: ", file.display(), line_of(&file, marker));
        assert!(
            err.lines().any(|l| l.starts_with(&want) && l.contains(says)),
            "expected `{want}...{says}` in:\n{err}"
        );
    }
    assert!(err.contains("8 problem(s) found"), "{err}");

    // `run` refuses to start on the same problems.
    let out = hub_worker()
        .args(["run", "--config"])
        .arg(fx.join("hub.toml"))
        .env("PO_FIXTURE_ADMIN_TOKEN", "0123456789abcdef-admin")
        .env("RUST_BACKTRACE", "0")
        .output()
        .expect("runs");
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("not starting: 8 problem(s)") && err.contains("`/emial` cannot exist"), "{err}");
}

#[test]
fn the_example_integrations_pass_the_check() {
    let example = concat!(env!("CARGO_MANIFEST_DIR"), "/../config/hub-worker.example.toml");
    // A pulled source's secret is needed whenever the hub runs: `check` wants it in any case.
    let out = hub_worker()
        .args(["check", "--config", example])
        .env("SHOP_API_TOKEN", "shop-api-token-0123456789")
        .output()
        .expect("runs");
    assert!(
        out.status.success(),
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(String::from_utf8_lossy(&out.stdout).contains("9 file integration(s)"));
    // With the HTTP server on, their front doors' and targets' secrets must be there: set, it
    // passes.
    let dir = std::env::temp_dir().join(format!("po-chk-{}", uuid::Uuid::now_v7().simple()));
    std::fs::create_dir_all(&dir).expect("temp dir");
    let ints = std::path::Path::new(concat!(env!("CARGO_MANIFEST_DIR"), "/../examples/integrations"));
    let cfg = dir.join("hub.toml");
    std::fs::write(
        &cfg,
        format!(
            "integrations_dir = {:?}\n[database]\nurl = \"sqlite::memory:\"\n{IN_PROCESS_TRIAL}[http]\nlisten = \"127.0.0.1:0\"\n\
             [publish]\ninbound_queue = \"hub.inbound\"\n",
            ints.display().to_string()
        ),
    )
    .expect("write");
    // The front doors' secrets are checked because the HTTP server is on, the targets' because
    // deliveries run (an inbound queue), the pulled source's always: nine in all.
    let run = |secrets: bool| {
        let mut c = hub_worker();
        c.args(["check", "--config"]).arg(&cfg).env("HUB_ADMIN_TOKEN", "0123456789abcdef-admin");
        if secrets {
            c.env("CRM_WEBHOOK_SECRET", "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw")
                .env("PAYMENTS_WEBHOOK_SECRET", "whsec_test_0123456789abcdef")
                .env("IOT_GATEWAY_KEYS", "gateway-key-0123456789")
                .env("CRM_API_TOKEN", "crm-api-token-0123456789")
                .env("PAYMENTS_API_KEY", "sk_test_0123456789abcdef")
                .env("PARTNER_WEBHOOK_SECRET", "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw")
                .env("GITHUB_WEBHOOK_SECRET", "gh-hook-secret-0123456789")
                .env("STRIPE_WEBHOOK_SECRET", "whsec_stripe_test_0123456789abcdef")
                .env("SHOP_API_TOKEN", "shop-api-token-0123456789");
        } else {
            c.env_remove("CRM_WEBHOOK_SECRET")
                .env_remove("PAYMENTS_WEBHOOK_SECRET")
                .env_remove("IOT_GATEWAY_KEYS")
                .env_remove("CRM_API_TOKEN")
                .env_remove("PAYMENTS_API_KEY")
                .env_remove("PARTNER_WEBHOOK_SECRET")
                .env_remove("GITHUB_WEBHOOK_SECRET")
                .env_remove("STRIPE_WEBHOOK_SECRET")
                .env_remove("SHOP_API_TOKEN");
        }
        c.env("RUST_BACKTRACE", "0").output().expect("runs")
    };
    let out = run(false);
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("9 problem(s)"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let out = run(true);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let _ = std::fs::remove_dir_all(&dir);
}

/// The production path for a file integration: `run` with the example files and the HTTP
/// server on, a gateway posting a batch with its API key, the audit API showing the readings.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn run_serves_file_integrations_over_http() {
    use std::io::{BufRead, BufReader};
    let dir = std::env::temp_dir().join(format!("po-http-{}", uuid::Uuid::now_v7().simple()));
    std::fs::create_dir_all(&dir).expect("temp dir");
    let ints = concat!(env!("CARGO_MANIFEST_DIR"), "/../examples/integrations");
    let cfg = dir.join("hub.toml");
    let db = dir.join("http.sqlite");
    std::fs::write(
        &cfg,
        format!(
            "integrations_dir = {ints:?}\n[database]\nurl = \"sqlite://{}?mode=rwc\"\n{IN_PROCESS_TRIAL}[http]\nlisten = \"127.0.0.1:0\"\n",
            db.display()
        ),
    )
    .expect("write");
    const ADMIN: &str = "admin-token-0123456789";
    let mut child = hub_worker()
        .args(["run", "--config"])
        .arg(&cfg)
        .env("HUB_ADMIN_TOKEN", ADMIN)
        .env("CRM_WEBHOOK_SECRET", "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw")
        .env("PAYMENTS_WEBHOOK_SECRET", "whsec_test_0123456789abcdef")
        .env("IOT_GATEWAY_KEYS", "gateway-key-0123456789")
        .env("CRM_API_TOKEN", "crm-api-token-0123456789")
        .env("PAYMENTS_API_KEY", "sk_test_0123456789abcdef")
        .env("PARTNER_WEBHOOK_SECRET", "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw")
        .env("GITHUB_WEBHOOK_SECRET", "gh-hook-secret-0123456789")
        .env("STRIPE_WEBHOOK_SECRET", "whsec_stripe_test_0123456789abcdef")
        .env("SHOP_API_TOKEN", "shop-api-token-0123456789")
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("spawns");
    let stderr = child.stderr.take().expect("stderr");
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stderr).lines().map_while(Result::ok) {
            if let Some(addr) = line.strip_prefix("webhook intake on ") {
                let _ = tx.send(addr.to_owned());
            }
        }
    });
    let base = rx.recv_timeout(std::time::Duration::from_secs(30)).expect("server address");
    let http = reqwest::Client::new();
    let body = std::fs::read(concat!(env!("CARGO_MANIFEST_DIR"), "/../examples/payloads/iot-readings.json"))
        .expect("payload");
    let post = |key: &'static str| {
        http.post(format!("{base}/v1/ingest/iot-sensors"))
            .header("content-type", "application/json")
            .header("x-gateway-key", key)
            .body(body.clone())
            .send()
    };
    assert_eq!(post("wrong-key-0123456789").await.expect("post").status().as_u16(), 401);
    assert_eq!(post("gateway-key-0123456789").await.expect("post").status().as_u16(), 202);
    // Three readings reach layer 4 (queued: no core app consumes in this process).
    let mut layer4 = 0;
    for _ in 0..100 {
        let page: serde_json::Value = http
            .get(format!("{base}/v1/messages?layer=4&source=iot-sensors"))
            .bearer_auth(ADMIN)
            .send()
            .await
            .expect("list")
            .json()
            .await
            .expect("json");
        layer4 = page["items"].as_array().map_or(0, Vec::len);
        if layer4 == 3 {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    assert_eq!(layer4, 3);
    let _ = Command::new("kill").args(["-INT", &child.id().to_string()]).status();
    let _ = child.wait();
    let _ = std::fs::remove_dir_all(&dir);
}

/// `run` with named tokens (one from the environment, one from a file) and no admin token:
/// each opens what its scopes say; refusals and replays are audit events on stderr with the
/// token's name and the peer's address, never the token; the replayed rows carry the token's
/// name, and a replay from the CLI carries `cli`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn run_with_named_tokens_audits_refusals_and_replays() {
    use std::io::{BufRead, BufReader};
    const OPS: &str = "ops-token-from-env-0123456789";
    const PROM: &str = "prometheus-token-from-file-0123";
    let dir = std::env::temp_dir().join(format!("po-tok-{}", uuid::Uuid::now_v7().simple()));
    std::fs::create_dir_all(&dir).expect("temp dir");
    let ints = concat!(env!("CARGO_MANIFEST_DIR"), "/../examples/integrations");
    let db = dir.join("tokens.sqlite");
    let prom_file = dir.join("prometheus.token");
    std::fs::write(&prom_file, format!("{PROM}\n")).expect("token file");
    let cfg = dir.join("hub.toml");
    std::fs::write(
        &cfg,
        format!(
            "integrations_dir = {ints:?}\n[database]\nurl = \"sqlite://{}?mode=rwc\"\n{IN_PROCESS_TRIAL}[http]\nlisten = \"127.0.0.1:0\"\n\
             [http.tokens.ops]\nscopes = [\"read\", \"operate\"]\nenv = \"PO_TEST_OPS_TOKEN\"\n\
             [http.tokens.prometheus]\nscopes = [\"metrics\"]\nfile = {:?}\n",
            db.display(),
            prom_file.display().to_string()
        ),
    )
    .expect("write");
    let mut child = hub_worker()
        .args(["run", "--config"])
        .arg(&cfg)
        .env_remove("HUB_ADMIN_TOKEN")
        .env_remove("HUB_LOG")
        .env("PO_TEST_OPS_TOKEN", OPS)
        .env("CRM_WEBHOOK_SECRET", "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw")
        .env("PAYMENTS_WEBHOOK_SECRET", "whsec_test_0123456789abcdef")
        .env("IOT_GATEWAY_KEYS", "gateway-key-0123456789")
        .env("CRM_API_TOKEN", "crm-api-token-0123456789")
        .env("PAYMENTS_API_KEY", "sk_test_0123456789abcdef")
        .env("PARTNER_WEBHOOK_SECRET", "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw")
        .env("GITHUB_WEBHOOK_SECRET", "gh-hook-secret-0123456789")
        .env("STRIPE_WEBHOOK_SECRET", "whsec_stripe_test_0123456789abcdef")
        .env("SHOP_API_TOKEN", "shop-api-token-0123456789")
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("spawns");
    let stderr = child.stderr.take().expect("stderr");
    let (tx, rx) = std::sync::mpsc::channel();
    let lines = std::thread::spawn(move || {
        let mut all = Vec::new();
        for line in BufReader::new(stderr).lines().map_while(Result::ok) {
            if let Some(addr) = line.strip_prefix("webhook intake on ") {
                let _ = tx.send(addr.to_owned());
            }
            all.push(line);
        }
        all
    });
    let base = rx.recv_timeout(std::time::Duration::from_secs(30)).expect("server address");
    let http = reqwest::Client::new();
    let get = |path: &str, token: &str| http.get(format!("{base}{path}")).bearer_auth(token).send();
    let body = std::fs::read(concat!(env!("CARGO_MANIFEST_DIR"), "/../examples/payloads/iot-readings.json"))
        .expect("payload");
    let accepted: serde_json::Value = http
        .post(format!("{base}/v1/ingest/iot-sensors"))
        .header("content-type", "application/json")
        .header("x-gateway-key", "gateway-key-0123456789")
        .body(body)
        .send()
        .await
        .expect("post")
        .json()
        .await
        .expect("json");
    let id = accepted["id"].as_str().expect("layer 1 id").to_owned();
    // Layer 1 done (forwarded): replayable from layer 1.
    let mut forwarded = false;
    for _ in 0..100 {
        let page: serde_json::Value = get("/v1/messages?layer=1&status=forwarded", OPS)
            .await
            .expect("list")
            .json()
            .await
            .expect("json");
        if page["items"].as_array().is_some_and(|i| i.len() == 1) {
            forwarded = true;
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    assert!(forwarded, "the payload was not normalized");
    assert_eq!(get("/v1/stats", "not-a-token-of-this-hub").await.expect("get").status().as_u16(), 401);
    assert_eq!(get("/metrics", OPS).await.expect("get").status().as_u16(), 403);
    assert_eq!(get("/metrics", PROM).await.expect("get").status().as_u16(), 200, "the token from the file");
    assert_eq!(get("/v1/stats", PROM).await.expect("get").status().as_u16(), 403);
    let replay = http
        .post(format!("{base}/v1/messages/{id}/replay?from_layer=1"))
        .bearer_auth(OPS)
        .send()
        .await
        .expect("replay");
    assert_eq!(replay.status().as_u16(), 202);
    let _ = Command::new("kill").args(["-INT", &child.id().to_string()]).status();
    let _ = child.wait();
    let log = lines.join().expect("stderr reader");
    let audit: Vec<&String> = log.iter().filter(|l| l.contains(" audit: ")).collect();
    let has = |parts: &[&str]| audit.iter().any(|l| parts.iter().all(|p| l.contains(p)));
    assert!(
        has(&[
            "token=\"anonymous\"",
            "path=\"/v1/stats\"",
            "peer=\"127.0.0.1:",
            "unauthenticated",
            "scope=\"read\""
        ]),
        "{log:#?}"
    );
    assert!(
        has(&["token=\"ops\"", "path=\"/metrics\"", "peer=\"127.0.0.1:", "forbidden", "scope=\"metrics\""]),
        "{log:#?}"
    );
    assert!(has(&["token=\"prometheus\"", "path=\"/v1/stats\"", "forbidden"]), "{log:#?}");
    assert!(
        has(&["token=\"ops\"", "method=\"POST\"", "outcome=\"replayed\"", "peer=\"127.0.0.1:", &id]),
        "{log:#?}"
    );
    assert!(!log.iter().any(|l| l.contains(OPS) || l.contains(PROM)), "a token was logged: {log:#?}");
    assert!(!log.iter().any(|l| l.contains("deprecated")), "no admin token shorthand here: {log:#?}");

    // Who replayed is on the rows: the token's name, and `cli` for the CLI's replay.
    let url = format!("sqlite://{}?mode=rwc", db.display());
    let out = hub_worker()
        .args(["replay", &id, "--from-layer", "1", "--database-url", &url])
        .env_remove("HUB_LOG")
        .output()
        .expect("runs");
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains(" audit: ") && err.contains("token=\"cli\"") && err.contains("outcome=\"replayed\""),
        "{err}"
    );
    let out = hub_worker().args(["trace", &id, "--json", "--database-url", &url]).output().expect("runs");
    // The story holds the payload's records with their numbers as written (`1e400`, which
    // serde_json refuses): read exactly.
    let lineage = layer1_ingest::json::Value::parse(&out.stdout).expect("json lineage").to_serde_json();
    let by: Vec<&str> = lineage["entries"]
        .as_array()
        .expect("entries")
        .iter()
        .filter(|e| e["layer"] == "Raw")
        .map(|e| e["replayed_by"].as_str().unwrap_or("-"))
        .collect();
    assert_eq!(by, vec!["-", "ops", "cli"], "{lineage}");
    let _ = std::fs::remove_dir_all(&dir);
}

/// `trace` reads the integrations' `[payload] redact` from `--config`: a Stripe client secret
/// is masked in every layer's content, and shown with `--raw`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn trace_masks_redacted_fields_unless_raw() {
    const SECRET: &str = "pi_3MtwBwLkdIwHu7ix28a3tqPa_secret_YrKJUKribcBjcG8HVhfZluoGH";
    let dir = std::env::temp_dir().join(format!("po-cli-redact-{}", uuid::Uuid::now_v7().simple()));
    let w = |rel: &str, text: &str| {
        let p = dir.join(rel);
        std::fs::create_dir_all(p.parent().expect("parent")).expect("dir");
        std::fs::write(p, text).expect("write");
    };
    w(
        "integrations/core.toml",
        "destinations = [\"core.payments\"]\n[[message_types]]\ntype = \"payment.intent\"\nversion = \"1\"\nschema = \"any.json\"\n",
    );
    w("integrations/any.json", "{}");
    w(
        "integrations/stripe.toml",
        "source = \"stripe\"\n[payload]\nevent_ref = \"/id\"\nredact = [\"/data/object/client_secret\"]\n\
         [kinds.intent]\nschema = \"any.json\"\nschema_version = \"2022-11-15\"\n\
         [kinds.intent.mapping]\nname = \"intent\"\nversion = \"1\"\nmessage_type = \"payment.intent\"\n\
         type_version = \"1\"\non_unmapped = \"ignore\"\n\
         fields = { \"/intent_id\" = { from = \"/data/object/id\" }, \"/secret\" = { from = \"/data/object/client_secret\" } }\n\
         [[routes]]\ntype = \"payment.intent\"\ndestination = \"core.payments\"\n",
    );
    let db = dir.join("hub.sqlite");
    let url = format!("sqlite://{}?mode=rwc", db.display());
    w("hub.toml", &format!("integrations_dir = \"integrations\"\n[database]\nurl = \"{url}\"\n"));
    let hub =
        hub_worker::Hub::builder(&url).integrations_dir(dir.join("integrations")).build().await.expect("hub");
    hub.start();
    let body = format!(
        r#"{{"id":"evt_3MtwBwLkdIwHu7ix28a3tqPa","object":"event","created":1680064028,"type":"payment_intent.succeeded",
"data":{{"object":{{"id":"pi_3MtwBwLkdIwHu7ix28a3tqPa","amount":2000,"client_secret":"{SECRET}","customer":null}}}}}}"#
    );
    let id =
        hub.ingest("stripe", body.as_bytes(), hub_worker::IngestMeta::default()).await.expect("ingest").id;
    // No core app reads the queue: the message stops at layer 4, which is all `trace` needs.
    let mut routed = false;
    for _ in 0..100 {
        let view = hub_worker::audit::message(hub.db(), id.into(), hub_worker::audit::RawAccess::Shown)
            .await
            .expect("message");
        if !view.dispatches.is_empty() {
            routed = true;
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    assert!(routed, "the payload did not reach layer 4");
    hub.shutdown().await;

    let cfg = dir.join("hub.toml");
    let trace = |extra: &[&str]| {
        let out = hub_worker()
            .args(["trace", &id.to_string(), "--config"])
            .arg(&cfg)
            .args(extra)
            .output()
            .expect("runs");
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
        String::from_utf8_lossy(&out.stdout).into_owned()
    };
    let masked: serde_json::Value = serde_json::from_str(&trace(&["--json"])).expect("json");
    assert_eq!(masked["records"][0]["record"]["data"]["object"]["client_secret"], "[redacted]", "{masked}");
    assert_eq!(masked["translations"][0]["body"]["secret"], "[redacted]", "{masked}");
    assert_eq!(masked["dispatches"][0]["body"]["secret"], "[redacted]", "{masked}");
    assert_eq!(masked["dispatches"][0]["body"]["intent_id"], "pi_3MtwBwLkdIwHu7ix28a3tqPa");
    assert!(!masked.to_string().contains(SECRET), "{masked}");
    let text = trace(&[]);
    assert!(text.contains("[redacted]") && !text.contains(SECRET), "{text}");
    let shown: serde_json::Value = serde_json::from_str(&trace(&["--json", "--raw"])).expect("json");
    assert_eq!(shown["dispatches"][0]["body"]["secret"], SECRET, "{shown}");
    let _ = std::fs::remove_dir_all(&dir);
}

/// A shop's orders API for the pulled-source commands: `GET /orders?page=N&per_page=M`
/// answers `{"data": [...]}` with five orders in all; each request first waits `delay_ms`, and
/// answers `fail_with` instead when it is set.
mod shop {
    use std::collections::HashMap;
    use std::sync::Arc;
    use std::sync::atomic::{AtomicU16, AtomicU64, AtomicUsize, Ordering};

    use axum::extract::{Query, State};
    use axum::response::IntoResponse;

    #[derive(Clone, Default)]
    pub struct Shop {
        pub delay_ms: Arc<AtomicU64>,
        pub fail_with: Arc<AtomicU16>,
        pub requests: Arc<AtomicUsize>,
    }

    async fn orders(
        State(shop): State<Shop>,
        Query(q): Query<HashMap<String, String>>,
    ) -> axum::response::Response {
        shop.requests.fetch_add(1, Ordering::SeqCst);
        let delay = shop.delay_ms.load(Ordering::SeqCst);
        if delay > 0 {
            tokio::time::sleep(std::time::Duration::from_millis(delay)).await;
        }
        let fail = shop.fail_with.load(Ordering::SeqCst);
        if fail != 0 {
            let status = axum::http::StatusCode::from_u16(fail).expect("status");
            return (status, "refused on purpose").into_response();
        }
        let page: usize = q.get("page").and_then(|p| p.parse().ok()).unwrap_or(1);
        let per: usize = q.get("per_page").and_then(|p| p.parse().ok()).unwrap_or(5);
        let items: Vec<serde_json::Value> = (1..=5usize)
            .map(|i| serde_json::json!({"id": i, "updated_at": format!("2026-11-0{i}T10:00:00Z")}))
            .skip((page - 1) * per)
            .take(per)
            .collect();
        axum::Json(serde_json::json!({ "data": items })).into_response()
    }

    /// Serves the API until the runtime ends; its base URL.
    pub async fn start() -> (String, Shop) {
        let shop = Shop::default();
        let app = axum::Router::new().route("/orders", axum::routing::get(orders)).with_state(shop.clone());
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let base = format!("http://{}", listener.local_addr().expect("addr"));
        tokio::spawn(async move { axum::serve(listener, app).await });
        (base, shop)
    }

    /// A config and an integrations directory in `dir` with the source `shop`, pulled from
    /// `pull_url` when given (and not pulled at all otherwise). Returns the config's path.
    pub fn config(dir: &std::path::Path, pull_url: Option<&str>) -> std::path::PathBuf {
        let w = |rel: &str, text: &str| {
            let p = dir.join(rel);
            std::fs::create_dir_all(p.parent().expect("parent")).expect("dir");
            std::fs::write(p, text).expect("write");
        };
        w("integrations/any.json", "{}");
        w(
            "integrations/core.toml",
            "destinations = [\"core.orders\"]\n[[message_types]]\ntype = \"order.seen\"\nversion = \"1\"\nschema = \"any.json\"\n",
        );
        let pull = match pull_url {
            Some(url) => format!(
                "[pull]\nurl = \"{url}\"\nmode = \"incremental\"\ncursor_field = \"/updated_at\"\npage_size = 2\n\
                 max_retries = 0\nlease_ms = 1500\n[pull.pagination]\nstyle = \"page_number\"\nparam = \"page\"\nsize_param = \"per_page\"\n"
            ),
            None => String::new(),
        };
        w(
            "integrations/shop.toml",
            &format!(
                "source = \"shop\"\n{pull}[payload]\nrecords = \"/data\"\n\
                 [kinds.order]\nschema = \"any.json\"\nschema_version = \"1\"\n\
                 [kinds.order.mapping]\nname = \"order\"\nversion = \"1\"\nmessage_type = \"order.seen\"\n\
                 type_version = \"1\"\non_unmapped = \"ignore\"\nfields = {{ \"/order_id\" = {{ from = \"/id\" }} }}\n\
                 [[routes]]\ntype = \"order.seen\"\ndestination = \"core.orders\"\n"
            ),
        );
        let cfg = dir.join("hub.toml");
        std::fs::write(
            &cfg,
            format!(
                "integrations_dir = \"integrations\"\n[database]\nurl = \"sqlite://{}?mode=rwc\"\n",
                dir.join("hub.sqlite").display()
            ),
        )
        .expect("write");
        cfg
    }
}

/// `sync` killed with SIGKILL mid-run (a page committed, the next one in flight): the next
/// `sync` is refused until the dead run's lease (1.5 s here) expires, then resumes from the
/// committed page; every record is taken exactly once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_sync_resumes_without_loss_or_repeat() {
    use std::sync::atomic::Ordering;
    let (base, api) = shop::start().await;
    let dir = std::env::temp_dir().join(format!("po-cli-kill-{}", uuid::Uuid::now_v7().simple()));
    let cfg = shop::config(&dir, Some(&format!("{base}/orders")));
    let run = |args: &[&str]| {
        let out =
            hub_worker().args(args).arg("--config").arg(&cfg).env_remove("HUB_LOG").output().expect("runs");
        (
            out.status.success(),
            String::from_utf8_lossy(&out.stdout).into_owned(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    };
    // Each page takes 700 ms to come: kill while the second is on its way.
    api.delay_ms.store(700, Ordering::SeqCst);
    let mut child = hub_worker()
        .args(["sync", "shop", "--config"])
        .arg(&cfg)
        .env_remove("HUB_LOG")
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .expect("spawns");
    for _ in 0..400 {
        if api.requests.load(Ordering::SeqCst) >= 2 {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(10)).await;
    }
    assert!(api.requests.load(Ordering::SeqCst) >= 2, "the second page was asked");
    child.kill().expect("SIGKILL");
    child.wait().expect("reaped");
    api.delay_ms.store(0, Ordering::SeqCst);
    let json = |text: &str| serde_json::from_str::<serde_json::Value>(text).expect("json");
    let (_, out, _) = run(&["state", "shop"]);
    let state = json(&out);
    assert_eq!((&state["pages"], &state["records"]), (&1.into(), &2.into()), "page 1 committed: {state}");
    // The dead run still holds the source until its lease ends.
    let (ok, _, err) = run(&["sync", "shop"]);
    assert!(!ok && err.contains("is being synced by"), "{err}");
    tokio::time::sleep(std::time::Duration::from_millis(1600)).await;
    let (ok, out, err) = run(&["sync", "shop", "--json"]);
    assert!(ok, "{out}\n{err}");
    let report = json(&out);
    assert_eq!((&report["resumed"], &report["records"]), (&true.into(), &3.into()), "{report}");
    let (_, out, _) = run(&["state", "shop"]);
    let state = json(&out);
    assert_eq!((&state["records"], &state["runs_failed"]), (&5.into(), &1.into()), "{state}");
    let _ = std::fs::remove_dir_all(&dir);
}

/// `sync` and `state` name a source that is not pulled (or a config that is not there) and
/// exit non-zero, touching nothing.
#[test]
fn sync_and_state_refuse_a_source_that_is_not_pulled() {
    let dir = std::env::temp_dir().join(format!("po-cli-notpulled-{}", uuid::Uuid::now_v7().simple()));
    let cfg = shop::config(&dir, None);
    for args in [
        vec!["sync", "shop"],
        vec!["state", "shop"],
        vec!["state", "shop", "--reset"],
        vec!["sync", "payments"],
    ] {
        let out = hub_worker().args(&args).arg("--config").arg(&cfg).output().expect("runs");
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "{args:?}");
        assert!(err.contains("is not a pulled source"), "{args:?}: {err}");
        assert!(out.stdout.is_empty(), "{args:?}: {}", String::from_utf8_lossy(&out.stdout));
    }
    let out =
        hub_worker().args(["sync", "shop", "--config", "/nonexistent/hub.toml"]).output().expect("runs");
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("does not exist"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let _ = std::fs::remove_dir_all(&dir);
}

/// `sync` runs a pulled source once and prints its report, storing the pages only (no stage
/// runs: they wait `just_in` for a worker); `state` prints the saved state and `--reset`
/// forgets it; a failed run, or a run while another holds the source, exits non-zero.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sync_and_state_of_a_pulled_source() {
    use std::sync::atomic::Ordering;
    let (base, api) = shop::start().await;
    let dir = std::env::temp_dir().join(format!("po-cli-pull-{}", uuid::Uuid::now_v7().simple()));
    let cfg = shop::config(&dir, Some(&format!("{base}/orders")));
    let url = format!("sqlite://{}?mode=rwc", dir.join("hub.sqlite").display());
    let run = |args: &[&str]| {
        let out =
            hub_worker().args(args).arg("--config").arg(&cfg).env_remove("HUB_LOG").output().expect("runs");
        (
            out.status.success(),
            String::from_utf8_lossy(&out.stdout).into_owned(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    };
    let json = |text: &str| serde_json::from_str::<serde_json::Value>(text).expect("json");

    let (ok, out, err) = run(&["state", "shop"]);
    assert!(ok, "{err}");
    let state = json(&out);
    assert_eq!(
        (&state["source"], &state["mode"], &state["runs"]),
        (&"shop".into(), &"incremental".into(), &0.into())
    );
    assert_eq!(state["url"], format!("{base}/orders"));

    let (ok, out, err) = run(&["sync", "shop"]);
    assert!(ok, "{out}\n{err}");
    assert!(out.contains(": succeeded"), "{out}");
    assert!(out.contains("pages 3 (3 stored), records 5, skipped 0"), "{out}");
    assert!(out.contains("requests 3, retries 0"), "{out}");
    assert!(out.contains("cursor before -, after 2026-11-05T10:00:00Z"), "{out}");
    assert!(err.contains("token=\"cli\"") && err.contains("outcome=\"succeeded\""), "the audit event: {err}");
    // Stored, not processed: no stage ran.
    let out = hub_worker()
        .args(["messages", "list", "--layer", "1", "--source", "shop", "--database-url", &url])
        .output()
        .expect("runs");
    let page = json(&String::from_utf8_lossy(&out.stdout));
    let statuses: Vec<&str> =
        page["items"].as_array().expect("items").iter().filter_map(|r| r["status"].as_str()).collect();
    assert_eq!(statuses, vec!["just_in"; 3], "{page}");

    let (ok, out, err) = run(&["sync", "shop", "--json"]);
    assert!(ok, "{err}");
    let report = json(&out);
    assert_eq!(
        (&report["outcome"], &report["records"], &report["skipped"]),
        (&"succeeded".into(), &0.into(), &5.into())
    );
    let (ok, out, _) = run(&["state", "shop"]);
    assert!(ok);
    let state = json(&out);
    assert_eq!(
        (&state["cursor"], &state["runs"], &state["records"]),
        (&"2026-11-05T10:00:00Z".into(), &2.into(), &5.into())
    );
    assert_eq!(state["last_run_id"], report["run_id"]);

    let (ok, out, err) = run(&["state", "shop", "--reset"]);
    assert!(ok, "{err}");
    assert!(err.contains("reset"), "{err}");
    let state = json(&out);
    assert_eq!((&state["cursor"], &state["runs"]), (&serde_json::Value::Null, &2.into()), "the totals stay");

    // A slow API: a second run, and a reset, are refused while the first holds the source.
    api.delay_ms.store(1000, Ordering::SeqCst);
    let before = api.requests.load(Ordering::SeqCst);
    let child = hub_worker()
        .args(["sync", "shop", "--config"])
        .arg(&cfg)
        .env_remove("HUB_LOG")
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("spawns");
    for _ in 0..200 {
        if api.requests.load(Ordering::SeqCst) > before {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(25)).await;
    }
    for args in [&["sync", "shop"][..], &["state", "shop", "--reset"][..]] {
        let (ok, _, err) = run(args);
        assert!(!ok, "{args:?}");
        assert!(err.contains("is being synced by"), "{args:?}: {err}");
    }
    let first = child.wait_with_output().expect("waits");
    assert!(first.status.success(), "{}", String::from_utf8_lossy(&first.stderr));
    assert!(
        String::from_utf8_lossy(&first.stdout).contains("records 5"),
        "after the reset, everything again"
    );
    api.delay_ms.store(0, Ordering::SeqCst);

    // A refusing API: the run fails, exit status non-zero, the report says why.
    api.fail_with.store(403, Ordering::SeqCst);
    let (ok, out, err) = run(&["sync", "shop"]);
    assert!(!ok);
    assert!(out.contains(": failed") && out.contains("error: "), "{out}");
    assert!(err.contains("the run failed"), "{err}");
    let (_, out, _) = run(&["state", "shop"]);
    let state = json(&out);
    assert_eq!(
        (&state["runs"], &state["runs_failed"], &state["last_outcome"]),
        (&4.into(), &1.into(), &"failed".into())
    );
    let _ = std::fs::remove_dir_all(&dir);
}
