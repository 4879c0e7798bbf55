//! `hub-worker demo`: the whole post office in one process on a SQLite file and the in-process
//! transport, with a core-app receiver that acknowledges. Ingests the sample payloads (valid
//! ones, a duplicate and an invalid one), waits until all are settled, and reports.

use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use tokio_util::sync::CancellationToken;

use layer1_ingest::{Layer, Status};
use layer4_dispatch::{Handled, Handler, InProcessTransport, InboundMessage, Receiver};

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
    let mut builder = Hub::builder(url)
        .settings(settings)
        .transport(transport.clone())
        .router(Arc::new(integrations::demo_routes()));
    for name in integrations::BUILT_IN {
        builder = integrations::register(builder, name).unwrap_or_else(|| unreachable!("built-in"));
    }
    let hub = builder.build().await?;
    hub.start();

    let core = Arc::new(CoreApp::default());
    let cancel = CancellationToken::new();
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

    let dispatch_total: i64 = counts.iter().filter(|c| c.layer == Layer::Dispatch).map(|c| c.count).sum();
    let acknowledged: i64 = counts
        .iter()
        .filter(|c| c.layer == Layer::Dispatch && c.status == Status::Acknowledged)
        .map(|c| c.count)
        .sum();
    let raw_rows: i64 = counts.iter().filter(|c| c.layer == Layer::Raw).map(|c| c.count).sum();
    let rejected_ok = rejected.entries.iter().any(|e| e.status == Status::Rejected && e.last_error.is_some());
    let ok = settled
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
