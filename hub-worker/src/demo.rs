//! `hub-worker demo`: the whole post office in one process on a SQLite file and the in-process
//! transport, with a core-app receiver that acknowledges. Ingests the sample payloads (valid
//! ones, a duplicate and an invalid one), waits until all are settled, and reports. Then the
//! other way: the core app sends one `member.updated`, the hub delivers it to a CRM endpoint
//! the demo starts on localhost, and the core app gets its delivery receipt.

use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use tokio_util::sync::CancellationToken;

use layer1_ingest::{Direction, Failure, Layer, Status};
use layer2_normalize::request::{BodyEncoding, RequestSpec};
use layer3_translate::{CoreMessage, Fidelity, RecordInput, Translation, Translator};
use layer4_dispatch::{
    Handled, Handler, Headers, InProcessTransport, InboundMessage, OutgoingMessage, Receiver, Transport,
    intake, wire,
};

use crate::outbound::{Outbound, OutboundRoute, Target, TargetSpec};

use crate::error::Result;
use crate::hub::{Hub, HubSettings, IngestMeta};
use crate::{integrations, report};

/// The sample payloads: (source, file name, bytes).
pub const SAMPLES: &[(&str, &str, &[u8])] = &[
    ("crm-contacts", "crm-contacts.json", include_bytes!("../samples/crm-contacts.json")),
    ("payments", "payment-succeeded.json", include_bytes!("../samples/payment-succeeded.json")),
    ("payments", "payment-refunded.json", include_bytes!("../samples/payment-refunded.json")),
    ("payments", "payment-succeeded.json (sent again)", include_bytes!("../samples/payment-succeeded.json")),
    ("payments", "payment-invalid.json", include_bytes!("../samples/payment-invalid.json")),
];

/// The core app's stand-in: accepts everything and keeps what it got.
#[derive(Default)]
struct CoreApp {
    got: Mutex<Vec<InboundMessage>>,
}

#[async_trait]
impl Handler for CoreApp {
    async fn handle(&self, msg: &InboundMessage) -> Handled {
        self.got.lock().unwrap_or_else(|p| p.into_inner()).push(msg.clone());
        Handled::Accepted
    }
}

/// What the demo saw; `ok` says whether everything ended as it should.
#[derive(Debug)]
pub struct DemoReport {
    /// The printable report.
    pub text: String,
    /// Every valid message acknowledged, the duplicate stored once, the invalid one rejected.
    pub ok: bool,
}

/// Runs the demo on a fresh SQLite database at `db_path`.
pub async fn run(db_path: &Path) -> Result<DemoReport> {
    for suffix in ["", "-wal", "-shm"] {
        let p = format!("{}{suffix}", db_path.display());
        let _ = std::fs::remove_file(p);
    }
    let url = format!("sqlite://{}?mode=rwc", db_path.display());
    let transport = Arc::new(InProcessTransport::default());
    let mut settings = HubSettings::default();
    settings.stage.poll_interval = Duration::from_millis(200);
    settings.publish.inbound_queue = Some(INBOUND.into());
    let cancel = CancellationToken::new();
    let crm = crm_endpoint(cancel.clone()).await?;
    let mut builder = Hub::builder(url)
        .settings(settings)
        .transport(transport.clone())
        .router(Arc::new(integrations::demo_routes()))
        .outbound(crm_outbound(crm)?);
    for name in integrations::BUILT_IN {
        builder = integrations::register(builder, name).unwrap_or_else(|| unreachable!("built-in"));
    }
    let hub = builder.build().await?;
    hub.start();

    let core = Arc::new(CoreApp::default());
    let mut receivers = Vec::new();
    for queue in ["core.members", "core.payments"] {
        let r = Receiver::new(transport.clone(), queue, core.clone());
        receivers.push(tokio::spawn(r.run(cancel.clone())));
    }

    let mut text = format!("post office demo on {}\n\ningest:\n", db_path.display());
    let mut ids = Vec::new();
    for (source, name, body) in SAMPLES {
        let got = hub.ingest(source, body, IngestMeta::default()).await?;
        text.push_str(&format!(
            "  {:<13} {:<36} -> layer 1 id {}{}\n",
            source,
            name,
            got.id,
            if got.is_duplicate() { " (duplicate: already on record)" } else { "" }
        ));
        ids.push(got);
    }
    let settled = hub.wait_settled(Duration::from_secs(60)).await?;
    let counts = hub.counts().await?;
    text.push_str(&format!(
        "\nmessages per layer and status{}:\n",
        if settled { "" } else { " (NOT SETTLED)" }
    ));
    text.push_str(&report::counts_table(&counts));

    let received = core.got.lock().unwrap_or_else(|p| p.into_inner()).clone();
    text.push_str(&format!("\nthe core app received {} messages, for example:\n", received.len()));
    // The first payment's message (the one whose lineage follows), whatever order the
    // messages of different customers arrived in.
    if let Some(m) = received
        .iter()
        .find(|m| m.headers.message_type == "payment.recorded" && m.headers.origin_id == ids[1].id)
    {
        text.push_str(&format!(
            "  {} v{} hub-message-id {} amount {}\n",
            m.headers.message_type, m.headers.type_version, m.headers.message_id, m.body["amount"]
        ));
    }

    // One message's whole life, asked for by its layer 4 id: raw bytes to Acknowledged.
    let payment = ids[1].id.uuid();
    let lineage = hub.lineage(payment).await?;
    let l4 = lineage.entries.iter().find(|e| e.layer == Layer::Dispatch).map(|e| e.id).unwrap_or(payment);
    let lineage = hub.lineage(l4).await?;
    text.push('\n');
    text.push_str(&report::lineage_text(&lineage));

    let rejected = hub.lineage(ids[4].id).await?;
    text.push_str("\nthe invalid payment:\n");
    text.push_str(&report::lineage_text(&rejected));

    let up = |c: &&crate::hub::StatusCount| c.direction == Direction::Upstream;
    let dispatch_total: i64 =
        counts.iter().filter(up).filter(|c| c.layer == Layer::Dispatch).map(|c| c.count).sum();
    let acknowledged: i64 = counts
        .iter()
        .filter(up)
        .filter(|c| c.layer == Layer::Dispatch && c.status == Status::Acknowledged)
        .map(|c| c.count)
        .sum();
    let raw_rows: i64 = counts.iter().filter(up).filter(|c| c.layer == Layer::Raw).map(|c| c.count).sum();
    let rejected_ok = rejected.entries.iter().any(|e| e.status == Status::Rejected && e.last_error.is_some());
    let (down_text, down_ok) = downstream(&hub, transport.as_ref()).await?;
    text.push_str(&down_text);
    let ok = down_ok
        && settled
        && dispatch_total == 5
        && acknowledged == dispatch_total
        && raw_rows == 4
        && ids[3].is_duplicate()
        && ids[3].id == ids[1].id
        && rejected_ok;
    text.push_str(&format!(
        "\n{}: {acknowledged} of {dispatch_total} core messages acknowledged; {raw_rows} payloads stored for 5 sent (one duplicate); invalid one rejected: {rejected_ok}\n",
        if ok { "OK" } else { "FAILED" }
    ));

    cancel.cancel();
    for r in receivers {
        let _ = r.await;
    }
    hub.shutdown().await;
    Ok(DemoReport { text, ok })
}

/// The hub's inbound queue in the demo: where the core app sends downstream messages.
const INBOUND: &str = "hub.inbound";

/// A stand-in CRM on localhost: `PATCH /contacts/{id}` answers 200 with the CRM's own id.
async fn crm_endpoint(cancel: CancellationToken) -> Result<std::net::SocketAddr> {
    use axum::extract::Path as UrlPath;
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .map_err(|e| crate::error::Error::Config(format!("demo CRM endpoint: {e}")))?;
    let addr =
        listener.local_addr().map_err(|e| crate::error::Error::Config(format!("demo CRM endpoint: {e}")))?;
    let app = axum::Router::new().route(
        "/contacts/{id}",
        axum::routing::patch(|UrlPath(id): UrlPath<String>| async move {
            let body = serde_json::json!({"id": 8812, "external_id": id, "updated": true});
            (axum::http::StatusCode::OK, axum::Json(body))
        }),
    );
    tokio::spawn(async move {
        let _ = axum::serve(listener, app).with_graceful_shutdown(cancel.cancelled_owned()).await;
    });
    Ok(addr)
}

/// `member.updated` in the CRM's terms: its field names, the member id as the contact's
/// external id.
struct MemberToContact;

#[async_trait]
impl Translator for MemberToContact {
    fn source(&self) -> &str {
        "crm"
    }
    fn record_kind(&self) -> &str {
        "member.updated"
    }
    async fn translate(&self, r: &RecordInput<'_>) -> std::result::Result<Translation, Failure> {
        let mut fidelity = Fidelity::default();
        let mut map = layer1_ingest::json::Map::new();
        for (from, to) in [("/member_id", "external_id"), ("/email", "email"), ("/display_name", "name")] {
            match r.data.pointer(from) {
                Some(v) => {
                    map.insert(to.to_owned(), v.clone());
                    fidelity.mapped.push(from.to_owned());
                }
                None => {
                    return Err(layer1_ingest::Rejection::field(from, "required", "the CRM needs it").into());
                }
            }
        }
        Ok(Translation {
            message: CoreMessage {
                message_type: "crm.contact.patch".into(),
                type_version: "1".into(),
                body: layer1_ingest::json::Value::Object(map),
            },
            mapping_name: "demo-member-to-contact".into(),
            mapping_version: "1".into(),
            fidelity,
        })
    }
}

fn crm_outbound(addr: std::net::SocketAddr) -> Result<Outbound> {
    let request = RequestSpec::compile(
        "PATCH",
        "/contacts/{/external_id}",
        Vec::new(),
        Vec::new(),
        None,
        BodyEncoding::Json,
        None,
    )
    .map_err(crate::error::Error::Config)?;
    let spec = TargetSpec { timeout_ms: Some(5_000), ..TargetSpec::new(format!("http://{addr}")) };
    Ok(Outbound {
        targets: vec![Target { name: "crm".into(), spec }],
        routes: vec![OutboundRoute {
            target: "crm".into(),
            message_type: "member.updated".into(),
            translator: Arc::new(MemberToContact),
            request: Arc::new(request),
            ordering_key: Some("/member_id".into()),
            response_fields: vec![("crm_id".into(), "/id".into())],
        }],
    })
}

/// The downstream half: one `member.updated` from the core app, delivered, with its receipt.
async fn downstream(hub: &Hub, transport: &dyn Transport) -> Result<(String, bool)> {
    let receipts = crate::downstream::DEFAULT_RECEIPTS_QUEUE;
    let mut sub = transport.subscribe(receipts, 10).await?;
    let mut headers = Headers::new();
    headers.insert(intake::CORE_MESSAGE_ID.into(), "core-msg-0001".into());
    headers.insert(intake::TARGET.into(), "crm".into());
    headers.insert(wire::TYPE.into(), "member.updated".into());
    let body = br#"{"member_id":"m-42","email":"ada@example.com","display_name":"Ada Lovelace"}"#.to_vec();
    let sent = OutgoingMessage {
        queue: INBOUND.into(),
        dedup_id: "core-msg-0001".into(),
        ordering_key: None,
        headers,
        body,
    };
    for r in transport.publish(&[sent]).await {
        r?;
    }
    let mut text =
        String::from("\ndownstream: the core app sent member.updated core-msg-0001 to target crm\n");
    let receipt = match tokio::time::timeout(Duration::from_secs(30), sub.next()).await {
        Ok(Ok(d)) => {
            let v: serde_json::Value = serde_json::from_slice(&d.body).unwrap_or_default();
            let _ = d.ack().await;
            v
        }
        _ => serde_json::Value::Null,
    };
    text.push_str(&format!("the core app's delivery receipt:\n  {receipt}\n"));
    let ok = receipt["status"] == "acknowledged" && receipt["response"]["crm_id"] == 8812;
    if let Some(id) = receipt["hub_message_id"].as_str().and_then(|s| s.parse::<uuid::Uuid>().ok()) {
        let view = crate::audit::message(hub.db(), id, crate::audit::RawAccess::Withheld).await?;
        text.push('\n');
        text.push_str(&report::message_text(&view));
    }
    Ok((text, ok))
}
