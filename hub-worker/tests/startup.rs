//! `hub-worker run` started while PostgreSQL or RabbitMQ is down: it keeps running, says so
//! once, answers `/healthz` and a 503 `/readyz` naming what is missing, and carries on when
//! they answer. The dependencies are reached through forwarders the tests open late, so the
//! worker first meets refused connections and then the real servers (see scripts/test.sh for
//! PostgreSQL and RabbitMQ; HUB_TEST_PG and HUB_TEST_AMQP point elsewhere).

use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex, mpsc};
use std::time::{Duration, Instant};

use sea_orm::{ConnectionTrait, Database, Statement};

const ADMIN: &str = "admin-token-0123456789";
const GATEWAY_KEY: &str = "gateway-key-0123456789";

fn hub_worker() -> Command {
    Command::new(env!("CARGO_BIN_EXE_hub-worker"))
}

fn pg_admin_url() -> String {
    std::env::var("HUB_TEST_PG")
        .unwrap_or_else(|_| "postgres://postgres:postgres@127.0.0.1:5432/test".to_owned())
}

fn amqp_url() -> String {
    std::env::var("HUB_TEST_AMQP").unwrap_or_else(|_| "amqp://guest:guest@127.0.0.1:5672/%2f".to_owned())
}

/// `host:port` of a URL, and the URL with that part replaced by `with`.
fn split_authority(url: &str, with: &str) -> (String, String) {
    let scheme_end = url.find("://").expect("a URL with a scheme") + 3;
    let rest = &url[scheme_end..];
    let auth_end = rest.find('/').unwrap_or(rest.len());
    let host_start = rest[..auth_end].rfind('@').map_or(0, |i| i + 1);
    let host = rest[host_start..auth_end].to_owned();
    let rewritten = format!("{}{}{with}{}", &url[..scheme_end], &rest[..host_start], &rest[auth_end..]);
    (host, rewritten)
}

/// A TCP port that refuses connections until [`Forwarder::open`], then forwards each one to
/// `target`: a dependency that is down at first and comes up later.
struct Forwarder {
    port: u16,
    target: String,
    task: Option<tokio::task::JoinHandle<()>>,
}

impl Forwarder {
    fn closed(target: String) -> Self {
        // A free port, released: closed (connections refused) until opened again. Not one the
        // system hands out for port 0: those come from the ephemeral range, which also supplies
        // the local ports of outgoing connections, and a client given this port as its own
        // would connect to itself (TCP self-connect) and find the "down" dependency answering.
        // Below that range (Linux: 32768-60999) nothing is handed out on its own.
        // And never one another test of this process holds: two tests given one port would
        // share a "database" (one opens it while the other expects it down).
        static TAKEN: Mutex<Vec<u16>> = Mutex::new(Vec::new());
        let mut taken = TAKEN.lock().unwrap_or_else(|p| p.into_inner());
        let start = 20_000 + (uuid::Uuid::now_v7().as_u128() % 10_000) as u16;
        let port = (start..30_000)
            .chain(20_000..start)
            .find(|p| !taken.contains(p) && std::net::TcpListener::bind(("127.0.0.1", *p)).is_ok())
            .expect("a free port below the ephemeral range");
        taken.push(port);
        Self { port, target, task: None }
    }

    fn addr(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    async fn open(&mut self) {
        let listener =
            tokio::net::TcpListener::bind(("127.0.0.1", self.port)).await.expect("the port is still free");
        let target = self.target.clone();
        self.task = Some(tokio::spawn(async move {
            while let Ok((mut inbound, _)) = listener.accept().await {
                let target = target.clone();
                tokio::spawn(async move {
                    if let Ok(mut outbound) = tokio::net::TcpStream::connect(&target).await {
                        let _ = tokio::io::copy_bidirectional(&mut inbound, &mut outbound).await;
                    }
                });
            }
        }));
    }
}

impl Drop for Forwarder {
    fn drop(&mut self) {
        if let Some(t) = self.task.take() {
            t.abort();
        }
    }
}

/// A PostgreSQL database of the test's own.
struct TestDb {
    name: String,
    url: String,
}

impl TestDb {
    async fn new() -> Self {
        let name = format!("po_test_{}", uuid::Uuid::now_v7().simple());
        let admin =
            Database::connect(pg_admin_url()).await.expect("PostgreSQL reachable (see scripts/test.sh)");
        admin
            .execute_raw(Statement::from_string(
                admin.get_database_backend(),
                format!("CREATE DATABASE {name}"),
            ))
            .await
            .expect("create test database");
        admin.close().await.ok();
        let base = pg_admin_url();
        let server = base.rsplit_once('/').map(|(s, _)| s.to_owned()).unwrap_or(base);
        Self { url: format!("{server}/{name}"), name }
    }

    async fn drop_db(self) {
        if let Ok(admin) = Database::connect(pg_admin_url()).await {
            let _ = admin
                .execute_raw(Statement::from_string(
                    admin.get_database_backend(),
                    format!("DROP DATABASE IF EXISTS {} WITH (FORCE)", self.name),
                ))
                .await;
        }
    }
}

/// The worker process, killed if the test fails before stopping it; its stderr collected.
struct Worker {
    child: Child,
    lines: Arc<Mutex<Vec<String>>>,
    started: Instant,
}

impl Worker {
    fn spawn(cfg: &std::path::Path) -> (Self, mpsc::Receiver<String>) {
        let mut child = hub_worker()
            .args(["run", "--config"])
            .arg(cfg)
            .env("HUB_ADMIN_TOKEN", ADMIN)
            .env("CRM_WEBHOOK_SECRET", "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw")
            .env("PAYMENTS_WEBHOOK_SECRET", "whsec_test_0123456789abcdef")
            .env("IOT_GATEWAY_KEYS", GATEWAY_KEY)
            .env("CRM_API_TOKEN", "crm-api-token-0123456789")
            .env("PAYMENTS_API_KEY", "sk_test_0123456789abcdef")
            .env("PARTNER_WEBHOOK_SECRET", "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw")
            .env("GITHUB_WEBHOOK_SECRET", "gh-hook-secret-0123456789")
            .env("STRIPE_WEBHOOK_SECRET", "whsec_stripe_test_0123456789abcdef")
            .env("SHOP_API_TOKEN", "shop-api-token-0123456789")
            .env_remove("HUB_LOG")
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawns");
        let stderr = child.stderr.take().expect("stderr");
        let lines = Arc::new(Mutex::new(Vec::new()));
        let (tx, rx) = mpsc::channel();
        let sink = lines.clone();
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                // Said when the server listens, before the hub is up.
                if let Some(addr) =
                    line.strip_prefix("listening on ").and_then(|r| r.split_whitespace().next())
                {
                    let _ = tx.send(addr.to_owned());
                }
                sink.lock().unwrap_or_else(|p| p.into_inner()).push(line);
            }
        });
        (Self { child, lines, started: Instant::now() }, rx)
    }

    fn log(&self) -> String {
        self.lines.lock().unwrap_or_else(|p| p.into_inner()).join("\n")
    }

    fn count(&self, needle: &str) -> usize {
        self.lines.lock().unwrap_or_else(|p| p.into_inner()).iter().filter(|l| l.contains(needle)).count()
    }

    fn alive(&mut self) -> bool {
        self.child.try_wait().expect("wait").is_none()
    }

    /// Ctrl-C, then the exit status and everything it wrote.
    fn interrupt(mut self) -> (std::process::ExitStatus, String) {
        let kill = Command::new("kill").args(["-INT", &self.child.id().to_string()]).status().expect("kill");
        assert!(kill.success());
        let status = self.child.wait().expect("exits");
        // Let the reader thread take the last lines.
        std::thread::sleep(Duration::from_millis(200));
        (status, self.log())
    }
}

impl Drop for Worker {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The example integrations in a directory of the test's own, with destinations of the test's
/// own (`po-<id>.telemetry`, ...), so that the shared broker's queues are not touched.
fn integrations_copy(dir: &std::path::Path, prefix: &str) -> std::path::PathBuf {
    let src = std::path::Path::new(concat!(env!("CARGO_MANIFEST_DIR"), "/../examples/integrations"));
    let dst = dir.join("integrations");
    fn copy(src: &std::path::Path, dst: &std::path::Path, prefix: &str) {
        std::fs::create_dir_all(dst).expect("mkdir");
        for e in std::fs::read_dir(src).expect("read dir") {
            let e = e.expect("entry");
            let to = dst.join(e.file_name());
            if e.file_type().expect("type").is_dir() {
                copy(&e.path(), &to, prefix);
            } else if e.path().extension().is_some_and(|x| x == "toml") {
                let text = std::fs::read_to_string(e.path()).expect("read");
                std::fs::write(&to, text.replace("\"core.", &format!("\"{prefix}."))).expect("write");
            } else {
                std::fs::copy(e.path(), &to).expect("copy");
            }
        }
    }
    copy(src, &dst, prefix);
    dst
}

/// A config on PostgreSQL and RabbitMQ at the given URLs, with the HTTP server on.
fn write_config(dir: &std::path::Path, db_url: &str, amqp: &str) -> std::path::PathBuf {
    let prefix = format!("po-{}", uuid::Uuid::now_v7().simple());
    let ints = integrations_copy(dir, &prefix);
    let cfg = dir.join("hub.toml");
    std::fs::write(
        &cfg,
        format!(
            "integrations_dir = {ints:?}\n\
             [database]\nurl = {db_url:?}\n\
             [publish]\nreceipts_queue = \"{prefix}.receipts\"\n\
             [transport]\nkind = \"rabbitmq\"\nurl = {amqp:?}\nqueue_expires_ms = 60000\nconnect_timeout_secs = 2\n\
             [http]\nlisten = \"127.0.0.1:0\"\n"
        ),
    )
    .expect("write config");
    cfg
}

async fn get(http: &reqwest::Client, url: String) -> (u16, String) {
    match http.get(url).send().await {
        Ok(r) => (r.status().as_u16(), r.text().await.unwrap_or_default()),
        Err(e) => (0, e.to_string()),
    }
}

/// Polls `/readyz` until it answers `status` (or 30 s pass); the last answer.
async fn readyz_until(http: &reqwest::Client, base: &str, pred: impl Fn(u16, &str) -> bool) -> (u16, String) {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let (code, body) = get(http, format!("{base}/readyz")).await;
        if pred(code, &body) || Instant::now() > deadline {
            return (code, body);
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Ingests the example IoT batch and waits until its three readings are queued on the broker.
async fn ingest_and_publish(http: &reqwest::Client, base: &str) {
    let body = std::fs::read(concat!(env!("CARGO_MANIFEST_DIR"), "/../examples/payloads/iot-readings.json"))
        .expect("payload");
    let r = http
        .post(format!("{base}/v1/ingest/iot-sensors"))
        .header("content-type", "application/json")
        .header("x-gateway-key", GATEWAY_KEY)
        .body(body)
        .send()
        .await
        .expect("post");
    assert_eq!(r.status().as_u16(), 202, "{}", r.text().await.unwrap_or_default());
    let mut page = serde_json::Value::Null;
    for _ in 0..150 {
        page = http
            .get(format!("{base}/v1/messages?layer=4&source=iot-sensors&status=queued"))
            .bearer_auth(ADMIN)
            .send()
            .await
            .expect("list")
            .json()
            .await
            .expect("json");
        if page["items"].as_array().map_or(0, Vec::len) == 3 {
            return;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!("three readings were not queued on the broker: {page}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn run_waits_for_a_database_that_is_down_at_start() {
    let db = TestDb::new().await;
    let (pg_host, _) = split_authority(&db.url, "");
    let mut pg = Forwarder::closed(pg_host);
    let (_, db_url) = split_authority(&db.url, &pg.addr());
    let dir = std::env::temp_dir().join(format!("po-wait-db-{}", uuid::Uuid::now_v7().simple()));
    std::fs::create_dir_all(&dir).expect("temp dir");
    let cfg = write_config(&dir, &db_url, &amqp_url());

    let (mut worker, addr) = Worker::spawn(&cfg);
    let base =
        addr.recv_timeout(Duration::from_secs(30)).expect("the server listens before the database answers");
    let http = reqwest::Client::new();
    assert_eq!(get(&http, format!("{base}/healthz")).await.0, 200, "alive while waiting");
    let (code, body) = get(&http, format!("{base}/readyz")).await;
    assert_eq!(code, 503, "{body}");
    assert!(body.contains("database"), "/readyz names what is missing: {body}");
    let (code, _) = get(&http, format!("{base}/v1/stats")).await;
    assert_eq!(code, 503, "the rest waits too");

    // Past the pool's 5 s acquire timeout, the point where a worker used to exit with "pool
    // timed out": still running, one warning so far (per state change, not per attempt).
    while worker.started.elapsed() < Duration::from_secs(8) {
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(worker.alive(), "the worker exited while the database was down:\n{}", worker.log());
    assert_eq!(worker.count("database unreachable, retrying (attempt 1"), 1, "{}", worker.log());
    assert_eq!(worker.count("unreachable, retrying"), 1, "{}", worker.log());

    pg.open().await;
    let (code, body) = readyz_until(&http, &base, |c, _| c == 200).await;
    assert_eq!(code, 200, "ready once the database answers: {body}\n{}", worker.log());
    assert_eq!(worker.count("database reachable after"), 1, "{}", worker.log());
    ingest_and_publish(&http, &base).await;

    let (status, log) = worker.interrupt();
    assert!(status.success(), "{log}");
    assert_eq!(log.matches("unreachable, retrying").count(), 1, "{log}");
    let _ = std::fs::remove_dir_all(&dir);
    db.drop_db().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn run_waits_for_a_broker_that_is_down_at_start() {
    let db = TestDb::new().await;
    let (amqp_host, _) = split_authority(&amqp_url(), "");
    let mut broker = Forwarder::closed(amqp_host);
    let (_, amqp) = split_authority(&amqp_url(), &broker.addr());
    let dir = std::env::temp_dir().join(format!("po-wait-mq-{}", uuid::Uuid::now_v7().simple()));
    std::fs::create_dir_all(&dir).expect("temp dir");
    let cfg = write_config(&dir, &db.url, &amqp);

    let (mut worker, addr) = Worker::spawn(&cfg);
    let base = addr.recv_timeout(Duration::from_secs(30)).expect("server address");
    let http = reqwest::Client::new();
    // The database answers at once; the transport is what /readyz names.
    let (code, body) = readyz_until(&http, &base, |_, b| !b.contains("database")).await;
    assert_eq!(code, 503, "{body}");
    assert!(body.contains("transport"), "{body}");

    // Refused connections fail at once: several attempts by now (0.5, 1, 2 s apart), one line.
    while worker.started.elapsed() < Duration::from_secs(4) {
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(worker.alive(), "the worker exited while the broker was down:\n{}", worker.log());
    assert_eq!(worker.count("transport unreachable, retrying (attempt 1"), 1, "{}", worker.log());
    assert_eq!(worker.count("unreachable, retrying"), 1, "{}", worker.log());
    assert_eq!(get(&http, format!("{base}/healthz")).await.0, 200);

    broker.open().await;
    let (code, body) = readyz_until(&http, &base, |c, _| c == 200).await;
    assert_eq!(code, 200, "ready once the broker answers: {body}\n{}", worker.log());
    ingest_and_publish(&http, &base).await;

    let (status, log) = worker.interrupt();
    assert!(status.success(), "{log}");
    let _ = std::fs::remove_dir_all(&dir);
    db.drop_db().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ctrl_c_while_waiting_exits_cleanly_and_refusals_are_not_waited_for() {
    let dir = std::env::temp_dir().join(format!("po-wait-stop-{}", uuid::Uuid::now_v7().simple()));
    std::fs::create_dir_all(&dir).expect("temp dir");
    let closed = Forwarder::closed(String::new());
    let (_, db_url) = split_authority(&pg_admin_url(), &closed.addr());
    let cfg = write_config(&dir, &db_url, &amqp_url());
    let (mut worker, addr) = Worker::spawn(&cfg);
    addr.recv_timeout(Duration::from_secs(30)).expect("server address");
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert!(worker.alive(), "{}", worker.log());
    let asked = Instant::now();
    let (status, log) = worker.interrupt();
    assert!(status.success(), "Ctrl-C while waiting is a clean stop: {log}");
    assert!(asked.elapsed() < Duration::from_secs(5), "it did not wait out the attempt: {log}");
    assert!(log.contains("stopped while waiting for the database"), "{log}");

    // A server that answers "no" is not waited for: a database that does not exist.
    let base = pg_admin_url();
    let missing = format!("{}/po_no_such_database", base.rsplit_once('/').map_or(base.as_str(), |(s, _)| s));
    let cfg = write_config(&dir, &missing, &amqp_url());
    let started = Instant::now();
    let out = hub_worker()
        .args(["run", "--config"])
        .arg(&cfg)
        .env("HUB_ADMIN_TOKEN", ADMIN)
        .env("CRM_WEBHOOK_SECRET", "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw")
        .env("PAYMENTS_WEBHOOK_SECRET", "whsec_test_0123456789abcdef")
        .env("IOT_GATEWAY_KEYS", GATEWAY_KEY)
        .env("CRM_API_TOKEN", "crm-api-token-0123456789")
        .env("PAYMENTS_API_KEY", "sk_test_0123456789abcdef")
        .env("PARTNER_WEBHOOK_SECRET", "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw")
        .env("GITHUB_WEBHOOK_SECRET", "gh-hook-secret-0123456789")
        .env("STRIPE_WEBHOOK_SECRET", "whsec_stripe_test_0123456789abcdef")
        .env("SHOP_API_TOKEN", "shop-api-token-0123456789")
        .output()
        .expect("runs");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "{err}");
    assert!(err.contains("po_no_such_database"), "the error names the database: {err}");
    assert!(started.elapsed() < Duration::from_secs(15), "{err}");
    let _ = std::fs::remove_dir_all(&dir);
}

/// For embedders, `build` fails fast on an unreachable database, as `run` used to; with
/// `wait_for_dependencies` it waits, reports progress, and succeeds once the database answers.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn build_fails_fast_unless_asked_to_wait() {
    use hub_worker::startup::{Dependency, State, Wait};
    let db = TestDb::new().await;
    let (pg_host, _) = split_authority(&db.url, "");
    let mut pg = Forwarder::closed(pg_host);
    let (_, db_url) = split_authority(&db.url, &pg.addr());
    let builder =
        || hub_worker::Hub::builder(db_url.clone()).router(Arc::new(hub_worker::integrations::demo_routes()));

    let err = builder().build().await.err().expect("no database: build fails");
    assert!(hub_worker::startup::is_unreachable(&err), "{err}");

    let cancel = tokio_util::sync::CancellationToken::new();
    let mut wait = Wait::new(cancel.clone());
    wait.first_delay = Duration::from_millis(100);
    let progress = wait.progress.clone();
    let waiting = tokio::spawn(builder().wait_for_dependencies(wait).build());
    let deadline = Instant::now() + Duration::from_secs(15);
    while progress.state(Dependency::Database) != State::Unreachable && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(progress.state(Dependency::Database), State::Unreachable);
    assert_eq!(progress.state(Dependency::Transport), State::Up, "the in-process transport is there");
    assert_eq!(progress.missing(), vec![Dependency::Database]);
    assert!(!waiting.is_finished(), "still waiting");
    pg.open().await;
    let hub = tokio::time::timeout(Duration::from_secs(30), waiting)
        .await
        .expect("built once the database answers")
        .expect("task")
        .expect("hub");
    assert!(progress.missing().is_empty());
    hub.shutdown().await;
    drop(hub);
    db.drop_db().await;
}
