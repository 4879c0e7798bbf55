//! Plain-text reports for the CLI: counts per layer and status, a lineage, and a message's
//! whole story (downstream: with each delivery attempt and the receipts).

use std::fmt::Write;

use layer1_ingest::{Direction, Layer, Status};

use crate::audit::{DeliveryAttemptView, MessageView, ReceiptView};
use crate::hub::StatusCount;
use crate::lineage::Lineage;

/// Counts as an aligned table.
pub fn counts_table(counts: &[StatusCount]) -> String {
    let mut s = String::new();
    let _ =
        writeln!(s, "{:<22} {:<14} {:<10} {:<13} {:>7}", "layer", "source", "direction", "status", "count");
    for c in counts {
        let _ = writeln!(
            s,
            "{:<22} {:<14} {:<10} {:<13} {:>7}",
            format!("{} {}", c.layer.number(), c.layer.table()),
            c.source,
            c.direction.to_string(),
            c.status.to_string(),
            c.count
        );
    }
    s
}

/// The rows of `lineage` on the path through `lineage.focus` (ancestors and descendants), one
/// per line, indented in the flow's order (upstream layer 1 first, downstream layer 4 first),
/// with reasons for rejections and failures.
pub fn lineage_text(lineage: &Lineage) -> String {
    story(lineage, &[], &[], None)
}

/// A message's whole story ([`crate::audit::message`], [`crate::audit::trace`]) as text: the
/// rows as [`lineage_text`] shows them, each layer 2, 3 and 4 row with its content (record;
/// translated body and fidelity report; published body and headers), masked as the view is,
/// and, downstream, under each delivery (layer 1 row) every HTTP attempt with its answer, then
/// the receipts to the core app. What `hub-worker trace` prints.
pub fn message_text(view: &MessageView) -> String {
    story(&view.lineage, &view.deliveries, &view.receipts, Some(view))
}

/// The content lines of row `id` (layer 2, 3 or 4) in `view`.
fn content_lines(view: &MessageView, id: uuid::Uuid, indent: &str, s: &mut String) {
    let redacted = |r: &[String]| {
        if r.is_empty() { String::new() } else { format!(" (redacted: {})", r.join(", ")) }
    };
    if let Some(r) = view.records.iter().find(|r| r.id == id) {
        let _ = writeln!(s, "{indent}   record: {}{}", r.record, redacted(&r.redacted));
    }
    if let Some(t) = view.translations.iter().find(|t| t.id == id) {
        let _ = writeln!(s, "{indent}   body: {}{}", t.body, redacted(&t.redacted));
        let _ = writeln!(s, "{indent}   fidelity: {}", t.fidelity);
    }
    if let Some(d) = view.dispatches.iter().find(|d| d.id == id) {
        let _ = writeln!(s, "{indent}   body: {}{}", d.body, redacted(&d.redacted));
        if let Some(h) = &d.headers {
            let pairs: Vec<String> = h.iter().map(|(k, v)| format!("{k}: {v}")).collect();
            let _ = writeln!(s, "{indent}   headers: {}", pairs.join(", "));
        }
    }
}

fn story(
    lineage: &Lineage,
    deliveries: &[DeliveryAttemptView],
    receipts: &[ReceiptView],
    view: Option<&MessageView>,
) -> String {
    let mut s = String::new();
    let _ = writeln!(s, "lineage of {} (origin {})", lineage.focus, lineage.origin_id);
    for e in lineage.chain(lineage.focus) {
        let n = usize::from(e.layer.number());
        // Indented by step in the flow: downstream starts at layer 4 and ends in layer 1.
        let depth = match e.direction {
            Direction::Upstream => n - 1,
            Direction::Downstream => 4 - n,
        };
        let indent = "  ".repeat(depth);
        let _ = writeln!(
            s,
            "{indent}L{} {} {:<12} {} | ref {} | attempts {} | at {}",
            e.layer.number(),
            e.id,
            e.status.to_string(),
            e.summary,
            e.source_ref.as_deref().unwrap_or("-"),
            e.attempts,
            e.updated_at.to_rfc3339(),
        );
        if let Some(by) = &e.replayed_by {
            let _ = writeln!(s, "{indent}   replayed by: {by}");
        }
        if let Some(err) = &e.last_error {
            let _ = writeln!(s, "{indent}   reason: {err}");
        }
        if let Some(v) = view {
            content_lines(v, e.id, &indent, &mut s);
        }
        if e.layer == Layer::Raw {
            let tries: Vec<&DeliveryAttemptView> = deliveries.iter().filter(|a| a.raw_id == e.id).collect();
            for (i, a) in tries.iter().enumerate() {
                // The delivery's final status beside the attempt that settled it.
                let last = i + 1 == tries.len() && e.status.is_final();
                let _ = writeln!(s, "{indent}   {}", attempt_line(a, last.then_some(e.status)));
            }
        }
    }
    for r in receipts {
        let answer = r.http_status.map(|h| format!(" (HTTP {h})")).unwrap_or_default();
        let sent = match r.sent_at {
            Some(t) => format!("sent {}", t.to_rfc3339()),
            None => match &r.last_error {
                Some(err) => format!("not sent yet ({} attempts; last: {err})", r.attempts),
                None => format!("not sent yet ({} attempts)", r.attempts),
            },
        };
        let _ = writeln!(s, "receipt {} {}{answer} to {}, {sent}", r.id, r.status, r.receipt_to);
        if r.fields.get() != "{}" {
            let _ = writeln!(s, "   fields: {}", r.fields.get());
        }
        if let Some(why) = &r.reason {
            let _ = writeln!(s, "   reason: {why}");
        }
    }
    s
}

/// `attempt 1  PATCH https://crm.example/contacts/m-42  -> 500 in 12 ms (retry)`, with the
/// delivery's final status after the attempt that settled it (`=> acknowledged`).
fn attempt_line(a: &DeliveryAttemptView, settled: Option<Status>) -> String {
    let answer = match a.http_status {
        Some(h) => h.to_string(),
        None => "no answer".to_owned(),
    };
    let mut line = format!(
        "attempt {}  {} {}  -> {answer} in {} ms ({})",
        a.attempt, a.method, a.url, a.duration_ms, a.verdict
    );
    if a.response_truncated {
        line.push_str(" [answer truncated]");
    }
    if let Some(err) = &a.error {
        let _ = write!(line, ": {err}");
    }
    if let Some(status) = settled {
        let _ = write!(line, " => {status}");
    }
    line
}
