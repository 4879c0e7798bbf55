//! Shared helpers: a fresh database per test on either backend, and a hub wired for tests.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use sea_orm::{ConnectionTrait, Database, DatabaseConnection, EntityTrait, PaginatorTrait, Statement};
use uuid::Uuid;

use hub_worker::{Hub, HubBuilder, HubSettings, integrations};
use layer4_dispatch::{Handled, Handler, InProcessTransport, InboundMessage};

/// Which database a test runs on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Backend {
    Sqlite,
    Postgres,
}

/// The PostgreSQL server the suite uses (a database on it is created per test).
pub fn pg_admin_url() -> String {
    std::env::var("HUB_TEST_PG").unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/test".to_owned())
}

/// A database made for one test; `cleanup` drops it (PostgreSQL) or deletes it (SQLite).
pub struct TestDb {
    pub url: String,
    pub backend: Backend,
    name: String,
}

impl TestDb {
    pub async fn new(backend: Backend) -> TestDb {
        let name = format!("po_test_{}", Uuid::now_v7().simple());
        match backend {
            Backend::Sqlite => {
                let path = std::env::temp_dir().join(format!("{name}.sqlite"));
                TestDb {
                    url: format!("sqlite://{}?mode=rwc", path.display()),
                    backend,
                    name: path.display().to_string(),
                }
            }
            Backend::Postgres => {
                let admin = Database::connect(pg_admin_url())
                    .await
                    .expect("PostgreSQL reachable (see scripts/test.sh)");
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
                TestDb { url: format!("{server}/{name}"), backend, name }
            }
        }
    }

    /// The database's name (PostgreSQL) or file (SQLite).
    pub fn name(&self) -> &str {
        &self.name
    }

    /// A connection as the hub makes it.
    pub async fn connect(&self) -> DatabaseConnection {
        let db = layer1_ingest::db::connect(&self.url).await.expect("connect");
        use migrations::MigratorTrait;
        migrations::Migrator::up(&db, None).await.expect("migrate");
        db
    }

    pub async fn cleanup(self) {
        match self.backend {
            Backend::Sqlite => {
                for suffix in ["", "-wal", "-shm"] {
                    let _ = std::fs::remove_file(format!("{}{suffix}", self.name));
                }
            }
            Backend::Postgres => {
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
    }
}

/// Settings for tests: small batches, a long poll interval (so passing tests prove the
/// in-process wake-ups), short backoffs.
pub fn test_settings() -> HubSettings {
    let mut s = HubSettings::default();
    s.stage.batch_size = 50;
    s.stage.poll_interval = Duration::from_secs(2);
    s.stage.base_backoff = Duration::from_millis(50);
    s.stage.max_backoff = Duration::from_millis(500);
    s
}

/// A hub builder with both built-in integrations and the demo routes.
pub fn builder(url: &str, transport: Arc<InProcessTransport>) -> HubBuilder {
    let mut b = Hub::builder(url)
        .settings(test_settings())
        .transport(transport)
        .router(Arc::new(integrations::demo_routes()));
    for name in integrations::BUILT_IN {
        b = integrations::register(b, name).expect("built in");
    }
    b
}

/// The core app's stand-in: accepts everything, keeps what it got.
#[derive(Default)]
pub struct Collect {
    pub got: Mutex<Vec<InboundMessage>>,
}

#[async_trait]
impl Handler for Collect {
    async fn handle(&self, msg: &InboundMessage) -> Handled {
        self.got.lock().expect("lock").push(msg.clone());
        Handled::Accepted
    }
}

/// Rows in a table.
pub async fn rows<E: EntityTrait>(db: &DatabaseConnection) -> u64
where
    E::Model: Sync,
{
    E::find().count(db).await.expect("count")
}

/// A payment event with this id, amount and customer.
pub fn payment(id: &str, amount: &str, customer: &str) -> Vec<u8> {
    format!(
        r#"{{"id":"{id}","object":"event","type":"payment.succeeded","created":"2026-11-20T13:05:42Z","livemode":false,
"data":{{"payment":{{"id":"pay_{id}","amount":"{amount}","currency":"eur","customer":"{customer}","description":null,
"captured_at":"2026-11-20T14:05:41.873+01:00","metadata":{{"n":"{id}"}}}}}}}}"#
    )
    .into_bytes()
}

/// Generates `sqlite` and `postgres` tests for each named `async fn(Backend)`.
#[macro_export]
macro_rules! on_both {
    ($($name:ident),* $(,)?) => {
        $(
            mod $name {
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn sqlite() {
                    super::$name($crate::util::Backend::Sqlite).await
                }
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn postgres() {
                    super::$name($crate::util::Backend::Postgres).await
                }
            }
        )*
    };
}

/// The RabbitMQ the suite uses.
pub fn amqp_url() -> String {
    std::env::var("HUB_TEST_AMQP").unwrap_or_else(|_| "amqp://guest:guest@127.0.0.1:5672/%2f".to_owned())
}

/// The SQS-compatible endpoint the suite uses (moto).
pub fn sqs_url() -> String {
    std::env::var("HUB_TEST_SQS").unwrap_or_else(|_| "http://127.0.0.1:4566".to_owned())
}

/// Queue names of one test, so tests sharing a broker never see each other's messages.
#[derive(Debug, Clone)]
pub struct Queues {
    pub members: String,
    pub payments: String,
    pub receipts: String,
    pub inbound: String,
}

impl Queues {
    pub fn new(fifo: bool) -> Self {
        let tag = Uuid::now_v7().simple().to_string();
        let suffix = if fifo { ".fifo" } else { "" };
        Queues {
            members: format!("t-{tag}-members{suffix}"),
            payments: format!("t-{tag}-payments{suffix}"),
            receipts: format!("t-{tag}-receipts"),
            inbound: format!("t-{tag}-inbound"),
        }
    }

    /// The demo's routes onto these queues.
    pub fn routes(&self) -> layer4_dispatch::RouteTable {
        use layer4_dispatch::Route;
        layer4_dispatch::RouteTable::new(vec![
            Route {
                message_type: "member.upsert".into(),
                destination: self.members.clone(),
                ordering_key: Some("/member_id".into()),
                ..Default::default()
            },
            Route {
                message_type: "payment.*".into(),
                destination: self.payments.clone(),
                ordering_key: Some("/customer_ref".into()),
                ..Default::default()
            },
        ])
    }
}

/// A hub builder on any transport with both integrations and routes onto `q`.
pub fn broker_builder(url: &str, transport: Arc<dyn layer4_dispatch::Transport>, q: &Queues) -> HubBuilder {
    let mut settings = test_settings();
    settings.publish.receipts_queue = q.receipts.clone();
    settings.publish.inbound_queue = Some(q.inbound.clone());
    let mut b = Hub::builder(url).settings(settings).transport(transport).router(Arc::new(q.routes()));
    for name in integrations::BUILT_IN {
        b = integrations::register(b, name).expect("built in");
    }
    b
}

/// RabbitMQ settings for tests: test queues go away a minute after their test stops using them.
pub fn rabbit_config() -> layer4_dispatch::RabbitMqConfig {
    let mut c = layer4_dispatch::RabbitMqConfig::new(amqp_url());
    c.queue_expires_ms = Some(60_000);
    c
}

/// A RabbitMQ transport for tests.
pub fn rabbit() -> Arc<dyn layer4_dispatch::Transport> {
    Arc::new(layer4_dispatch::RabbitMqTransport::new(rabbit_config()))
}

/// A RabbitMQ transport whose connection carries `name`, so a test can close its own
/// connections without touching those of tests running beside it.
pub fn rabbit_named(name: &str) -> Arc<dyn layer4_dispatch::Transport> {
    let mut c = rabbit_config();
    c.connection_name = name.to_owned();
    Arc::new(layer4_dispatch::RabbitMqTransport::new(c))
}

/// Closes every broker connection named `name` (as the broker's operator would); how many.
pub fn close_rabbit_connections(name: &str) -> usize {
    // The table output, whose pids `close_connection` takes (the JSON formatter's do not parse).
    let out = std::process::Command::new("rabbitmqctl")
        .args(["list_connections", "pid", "client_properties", "-q"])
        .output()
        .expect("rabbitmqctl runs (scripts/test.sh installs RabbitMQ)");
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let listing = String::from_utf8_lossy(&out.stdout).into_owned();
    let marker = format!("{{\"connection_name\",\"{name}\"}}");
    let mut closed = 0;
    for line in listing.lines().filter(|l| l.contains(&marker)) {
        let Some(pid) = line.split('\t').next() else { continue };
        let out = std::process::Command::new("rabbitmqctl")
            .args(["close_connection", pid, "post-office test: connection closed on purpose"])
            .output()
            .expect("rabbitmqctl runs");
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
        closed += 1;
    }
    closed
}

/// A layer 4 row to insert, `just_in`-shaped but in `status`.
pub fn l4_row(
    status: layer1_ingest::Status,
    source: &str,
    destination: &str,
    ordering_key: Option<&str>,
) -> layer4_dispatch::entity::ActiveModel {
    let id = Uuid::now_v7();
    let now = chrono::Utc::now();
    layer4_dispatch::entity::ActiveModel {
        id: sea_orm::ActiveValue::Set(id),
        direction: sea_orm::ActiveValue::Set(layer1_ingest::Direction::Upstream),
        status: sea_orm::ActiveValue::Set(status),
        attempts: sea_orm::ActiveValue::Set(0),
        last_error: sea_orm::ActiveValue::Set(None),
        next_attempt_at: sea_orm::ActiveValue::Set(Some(now)),
        parent_id: sea_orm::ActiveValue::Set(None),
        origin_id: sea_orm::ActiveValue::Set(id),
        source: sea_orm::ActiveValue::Set(source.into()),
        source_ref: sea_orm::ActiveValue::Set(None),
        destination: sea_orm::ActiveValue::Set(destination.into()),
        message_type: sea_orm::ActiveValue::Set("payment.recorded".into()),
        type_version: sea_orm::ActiveValue::Set("1".into()),
        body: sea_orm::ActiveValue::Set("{}".into()),
        ordering_key: sea_orm::ActiveValue::Set(ordering_key.map(Into::into)),
        queued_at: sea_orm::ActiveValue::Set(None),
        acknowledged_at: sea_orm::ActiveValue::Set(None),
        intake_key: sea_orm::ActiveValue::Set(None),
        created_at: sea_orm::ActiveValue::Set(now),
        updated_at: sea_orm::ActiveValue::Set(now),
    }
}

/// A started hub running the integration files in `dir` over an in-process transport, and a
/// core app collecting what reaches `queues`; cancel the token to stop the receivers.
pub async fn hub_on_files(
    url: &str,
    dir: &std::path::Path,
    queues: &[&str],
) -> (Hub, Arc<Collect>, tokio_util::sync::CancellationToken) {
    let transport = Arc::new(InProcessTransport::default());
    let hub = Hub::builder(url)
        .settings(test_settings())
        .transport(transport.clone())
        .integrations_dir(dir)
        .build()
        .await
        .expect("the integrations build");
    hub.start();
    let core = Arc::new(Collect::default());
    let cancel = tokio_util::sync::CancellationToken::new();
    for &q in queues {
        let r = layer4_dispatch::Receiver::new(transport.clone(), q, core.clone());
        tokio::spawn(r.run(cancel.clone()));
    }
    (hub, core, cancel)
}

/// The examples' pulled source (`shop.toml`) reads its API token from `SHOP_API_TOKEN` when it
/// registers (the hub polls it): a test that builds a hub from a copy of the examples points it
/// at a file of the copy instead, as the tests cannot set environment variables.
pub fn shop_token_as_file(dir: &std::path::Path) {
    let token = dir.join("shop-api-token.secret");
    std::fs::write(&token, "shop-api-token-0123456789").expect("token file");
    let shop = dir.join("shop.toml");
    let text = std::fs::read_to_string(&shop).expect("shop.toml");
    let with_file = text
        .replace("{ env = \"SHOP_API_TOKEN\" }", &format!("{{ file = {:?} }}", token.display().to_string()));
    assert_ne!(with_file, text, "shop.toml reads SHOP_API_TOKEN");
    std::fs::write(&shop, with_file).expect("write shop.toml");
}

/// A copy of `examples/integrations` a hub builds from (see [`shop_token_as_file`]), removed
/// on drop: the integrations read nothing from it once built.
pub struct Examples(std::path::PathBuf);

impl Examples {
    pub fn new() -> Examples {
        let src = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../examples/integrations");
        let dst = std::env::temp_dir().join(format!("po-examples-{}", Uuid::now_v7().simple()));
        copy_tree(&src, &dst);
        shop_token_as_file(&dst);
        Examples(dst)
    }
}

impl std::ops::Deref for Examples {
    type Target = std::path::Path;
    fn deref(&self) -> &std::path::Path {
        &self.0
    }
}

impl Drop for Examples {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// Copies the directory `from` (files and subdirectories) to `to`.
pub fn copy_tree(from: &std::path::Path, to: &std::path::Path) {
    std::fs::create_dir_all(to).expect("mkdir");
    for entry in std::fs::read_dir(from).expect("read dir") {
        let entry = entry.expect("entry");
        let target = to.join(entry.file_name());
        if entry.file_type().expect("type").is_dir() {
            copy_tree(&entry.path(), &target);
        } else {
            std::fs::copy(entry.path(), &target).expect("copy");
        }
    }
}
