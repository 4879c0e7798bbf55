//! `examples/embed.rs` runs in the test suite: the same file, compiled in here as a module,
//! so the test does not depend on cargo having built the example binary first (it does for
//! `cargo test --workspace`, not for `cargo test --test embed`).

#[path = "../examples/embed.rs"]
mod embed;

/// What the README's "Embedded" section promises, end to end: the example ends with every
/// message acknowledged, or fails.
#[test]
fn the_embedding_example_ends_with_every_message_acknowledged() {
    if let Err(e) = embed::main() {
        panic!("examples/embed.rs failed: {e}");
    }
}

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use hub_worker::{Hub, HubBuilder, IngestMeta};
use layer1_ingest::{Failure, Layer, Status};
use layer2_normalize::{Normalizer, RawInput, Record};
use layer3_translate::{RecordInput, Translation, Translator};
use layer4_dispatch::{
    Handled, Handler, InProcessTransport, InboundMessage, Receiver, Route, RouteTable, Target,
};

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

/// A copy of `examples/integrations` in a fresh directory, to break.
fn examples_copy() -> PathBuf {
    let from = repo().join("examples/integrations");
    let dir = std::env::temp_dir().join(format!("po-embed-ints-{}", uuid::Uuid::now_v7().simple()));
    for sub in ["", "core", "schemas"] {
        std::fs::create_dir_all(dir.join(sub)).expect("dir");
        for e in std::fs::read_dir(from.join(sub)).expect("read").flatten() {
            if e.path().is_file() {
                std::fs::copy(e.path(), dir.join(sub).join(e.file_name())).expect("copy");
            }
        }
    }
    dir
}

#[derive(Default)]
struct Collect(Mutex<Vec<InboundMessage>>);

#[async_trait]
impl Handler for Collect {
    async fn handle(&self, msg: &InboundMessage) -> Handled {
        self.0.lock().expect("lock").push(msg.clone());
        Handled::Accepted
    }
}

/// A hub wired from `examples/integrations` alone (normalizers, mappings and the files' own
/// routes; no router given) takes a payment from ingest to the core app's queue. No webhook
/// secret is set: embedding has no front door. The pulled source's API token is (the hub polls
/// it, so its secret is read when it registers): a file in the copy.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hub_from_an_integrations_dir_runs_a_payment_end_to_end() {
    let dir = examples_copy();
    let token = dir.join("shop.token");
    std::fs::write(&token, "shop-api-token-0123456789").expect("token");
    let shop = dir.join("shop.toml");
    let text = std::fs::read_to_string(&shop).expect("shop.toml");
    let with_file = text
        .replace("{ env = \"SHOP_API_TOKEN\" }", &format!("{{ file = {:?} }}", token.display().to_string()));
    assert_ne!(with_file, text, "shop.toml reads SHOP_API_TOKEN");
    std::fs::write(&shop, with_file).expect("write");
    let transport = Arc::new(InProcessTransport::default());
    let hub = Hub::builder("sqlite::memory:")
        .transport(transport.clone())
        .integrations_dir(&dir)
        .build()
        .await
        .expect("the examples build a hub");
    hub.start();
    let (payments, ledger) = (Arc::new(Collect::default()), Arc::new(Collect::default()));
    let cancel = tokio_util::sync::CancellationToken::new();
    for (q, core) in [("core.payments", &payments), ("core.ledger", &ledger)] {
        tokio::spawn(Receiver::new(transport.clone(), q, core.clone()).run(cancel.clone()));
    }
    let body = std::fs::read(repo().join("hub-worker/samples/payment-succeeded.json")).expect("sample");
    let got = hub.ingest("payments", &body, IngestMeta::default()).await.expect("ingest");
    assert!(hub.wait_settled(Duration::from_secs(30)).await.expect("settle"), "did not settle");
    let counts = hub.counts().await.expect("counts");
    let l4: Vec<_> = counts.iter().filter(|c| c.layer == Layer::Dispatch).collect();
    assert_eq!(l4.iter().map(|c| c.count).sum::<i64>(), 1, "{counts:?}");
    assert!(l4.iter().all(|c| c.status == Status::Acknowledged), "{counts:?}");
    // The file's `payment.*` route to core.payments; its ledger route is for live mode only
    // and the sample is a test-mode payment.
    let msgs = payments.0.lock().expect("lock").clone();
    assert_eq!(msgs.len(), 1, "{msgs:?}");
    assert_eq!(msgs[0].headers.message_type, "payment.recorded");
    assert!(ledger.0.lock().expect("lock").is_empty());
    let lineage = hub.lineage(got.id).await.expect("lineage");
    assert_eq!(lineage.entries.len(), 4, "one row per layer: {lineage:?}");
    cancel.cancel();
    hub.shutdown().await;
    let _ = std::fs::remove_dir_all(&dir);
}

/// A directory with broken files does not build, and the error names every problem with its
/// file and line: nothing is left out silently.
#[tokio::test]
async fn a_broken_integrations_dir_fails_the_build_naming_file_and_line() {
    let dir = examples_copy();
    let p = dir.join("payments.toml");
    let text = std::fs::read_to_string(&p).expect("payments.toml");
    std::fs::write(&p, format!("{text}\n[[routes]]\ntype = \"payment.*\"\ndestination = \"core.nowhere\"\n"))
        .expect("write");
    let line = text.lines().count() + 4;
    let iot = dir.join("iot-sensors.toml");
    std::fs::write(&iot, format!("colour = \"blue\"\n{}", std::fs::read_to_string(&iot).expect("iot")))
        .expect("write");
    let err = Hub::builder("sqlite::memory:").integrations_dir(&dir).build().await.err().expect("refused");
    let text = err.to_string();
    let want = format!("{}:{line}: error: destination `core.nowhere` is not declared", p.display());
    assert!(text.contains(&want), "{text}");
    assert!(text.contains(&format!("{}:1: error: unknown field `colour`", iot.display())), "{text}");
    let _ = std::fs::remove_dir_all(&dir);
}

/// Normalizes nothing: the checks run before any payload.
struct Norm(&'static str);
#[async_trait]
impl Normalizer for Norm {
    fn source(&self) -> &str {
        self.0
    }
    async fn normalize(&self, _: &RawInput<'_>) -> Result<Vec<Record>, Failure> {
        Ok(Vec::new())
    }
}

/// Translates nothing; says which type it would emit, or not.
struct Trans(&'static str, &'static str, Option<&'static str>);
#[async_trait]
impl Translator for Trans {
    fn source(&self) -> &str {
        self.0
    }
    fn record_kind(&self) -> &str {
        self.1
    }
    fn message_type(&self) -> Option<&str> {
        self.2
    }
    async fn translate(&self, _: &RecordInput<'_>) -> Result<Translation, Failure> {
        Err(Failure::Rejected(layer1_ingest::Rejection::whole("test", "not used")))
    }
}

/// A router in code: routes everything to `q`, and cannot say which types it carries.
struct Everything;
impl layer4_dispatch::Router for Everything {
    fn route(
        &self,
        _: &str,
        _: &str,
        _: &layer1_ingest::json::Value,
    ) -> Result<Vec<Target>, layer1_ingest::Rejection> {
        Ok(vec![Target { destination: "q".into(), ordering_key: None }])
    }
    fn destinations(&self) -> Vec<String> {
        vec!["q".into()]
    }
}

fn table(ty: &str) -> Arc<RouteTable> {
    Arc::new(RouteTable::new(vec![Route {
        message_type: ty.into(),
        destination: "q".into(),
        ..Route::default()
    }]))
}

async fn refusal(b: HubBuilder) -> String {
    match b.build().await {
        Ok(_) => panic!("an inconsistent setup built"),
        Err(e) => {
            assert_eq!(e.kind(), "configuration", "{e}");
            e.to_string()
        }
    }
}

/// Each inconsistent setup is refused with its own message, every problem listed; partial
/// setups that can work still build.
#[tokio::test]
async fn inconsistent_setups_are_refused() {
    let b = || Hub::builder("sqlite::memory:");
    let t = |s, k, ty| Arc::new(Trans(s, k, ty));

    // No routes at all; with a translator of no normalizer, both listed.
    let e = refusal(b().normalizer(Arc::new(Norm("a")))).await;
    assert!(e.contains("no routes"), "{e}");
    let e = refusal(b().translator(t("b", "z", None))).await;
    assert!(e.contains("2 problems") && e.contains("no routes") && e.contains("source `b`"), "{e}");

    // No normalizer at all while translators exist: every source named, kinds listed.
    let e = refusal(
        b().translator(t("a", "x", None))
            .translator(t("a", "y", None))
            .translator(t("b", "z", None))
            .router(table("*")),
    )
    .await;
    assert!(e.contains("2 problems"), "{e}");
    assert!(e.contains("source `a` has translators (record kinds `x`, `y`) but no normalizer"), "{e}");
    assert!(e.contains("source `b` has translators (record kinds `z`) but no normalizer"), "{e}");

    // A translator whose source has no normalizer, beside one that has.
    let e = refusal(
        b().normalizer(Arc::new(Norm("a")))
            .translator(t("a", "x", None))
            .translator(t("b", "z", None))
            .router(table("*")),
    )
    .await;
    assert!(e.contains("1 problem)"), "{e}");
    assert!(e.contains("source `b` has translators"), "{e}");

    // An empty route table while translators exist.
    let e = refusal(
        b().normalizer(Arc::new(Norm("a")))
            .translator(t("a", "x", None))
            .router(Arc::new(RouteTable::default())),
    )
    .await;
    assert!(e.contains("the route table is empty"), "{e}");

    // A declared message type no route carries (routes of another type, or scoped to another
    // source).
    let other_source = Route {
        message_type: "order.*".into(),
        destination: "q".into(),
        source: Some("b".into()),
        ..Route::default()
    };
    let e = refusal(
        b().normalizer(Arc::new(Norm("a")))
            .translator(t("a", "x", Some("order.placed")))
            .router(table("member.*"))
            .routes([other_source]),
    )
    .await;
    assert!(
        e.contains("no route carries core message type `order.placed` from source `a` (record kind `x`)"),
        "{e}"
    );

    // What can work builds: a normalizer alone (a stage test), a declared type a route
    // carries, a type declared under a router in code (which cannot tell), a translator that
    // declares none.
    let ok = [
        b().normalizer(Arc::new(Norm("a"))).router(Arc::new(RouteTable::default())),
        b().normalizer(Arc::new(Norm("a")))
            .translator(t("a", "x", Some("order.placed")))
            .router(table("order.*")),
        b().normalizer(Arc::new(Norm("a")))
            .translator(t("a", "x", Some("order.placed")))
            .router(Arc::new(Everything)),
        b().normalizer(Arc::new(Norm("a"))).translator(t("a", "x", None)).router(table("member.*")),
    ];
    for (i, builder) in ok.into_iter().enumerate() {
        let hub = builder.build().await.unwrap_or_else(|e| panic!("setup {i}: {e}"));
        hub.shutdown().await;
    }
}
