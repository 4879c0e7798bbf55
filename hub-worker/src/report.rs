//! Plain-text reports for the CLI: counts per layer and status, and a lineage.

use std::fmt::Write;

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
/// per line, indented by layer, with reasons for rejections and failures.
pub fn lineage_text(lineage: &Lineage) -> String {
    let mut s = String::new();
    let _ = writeln!(s, "lineage of {} (origin {})", lineage.focus, lineage.origin_id);
    for e in lineage.chain(lineage.focus) {
        let indent = "  ".repeat(usize::from(e.layer.number()) - 1);
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
    }
    s
}
