//! Message statuses, directions and layers, with the legal transitions enforced in code.
//!
//! Every status change in the post office goes through [`Status::check_transition`] (one row)
//! or filters on [`Status::sources_of`] (a batch update), so a row can never silently move
//! along an edge that is not in [`TRANSITIONS`].

use std::fmt;
use std::str::FromStr;

use sea_orm::entity::prelude::*;
use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};

/// Where a message is in its life. Stored as its snake_case name.
#[derive(
    Debug,
    Clone,
    Copy,
    PartialEq,
    Eq,
    Hash,
    PartialOrd,
    Ord,
    EnumIter,
    DeriveActiveEnum,
    Serialize,
    Deserialize,
)]
#[sea_orm(rs_type = "String", db_type = "String(StringLen::N(16))")]
#[serde(rename_all = "snake_case")]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub enum Status {
    /// Stored, waiting for its layer's stage (or, in layer 4, for the publisher).
    #[sea_orm(string_value = "just_in")]
    JustIn,
    /// Handed to the next layer, whose rows now carry the message.
    #[sea_orm(string_value = "forwarded")]
    Forwarded,
    /// Confirmed by the broker; waiting for the receiving system's receipt.
    #[sea_orm(string_value = "queued")]
    Queued,
    /// The receiving system's receipt arrived. Final.
    #[sea_orm(string_value = "acknowledged")]
    Acknowledged,
    /// Bad input or refused by the receiver. Final; replayable after a fix.
    #[sea_orm(string_value = "rejected")]
    Rejected,
    /// A transient failure; retried once `next_attempt_at` has passed.
    #[sea_orm(string_value = "failed")]
    Failed,
    /// Retries exhausted. Final; replayable.
    #[sea_orm(string_value = "dead")]
    Dead,
    /// Accepted and dropped on purpose by a declared rule (an integration file's `[[drop]]`,
    /// named in `last_error`): good input the hub does not want. Final, no children;
    /// replayable (after the rule changed).
    #[sea_orm(string_value = "dropped")]
    Dropped,
}

use Status::*;

/// Every legal `(from, to)` edge. Anything else is an [`Error::IllegalTransition`].
///
/// Why each edge exists:
/// - `just_in|failed -> forwarded|rejected|failed|dead`: a stage processed the row (or failed to).
/// - `just_in|failed|queued -> queued`: the broker confirmed a publish; `queued -> queued` is a
///   re-publish after the ack timeout (same `hub-message-id`).
/// - `queued -> failed|dead`: a re-publish after the ack timeout failed, or attempts ran out.
/// - `just_in|failed|queued -> acknowledged|rejected`: a receipt arrived. It may overtake the
///   publisher's own `queued` update (the receiver can be faster than our confirm bookkeeping),
///   so a receipt is legal on a row the publisher still holds.
/// - `just_in|failed -> dropped`: a stage read the row and a declared drop rule matched it (an
///   event type the integration does not want). Like `rejected`, but the input was fine: it is
///   counted apart so that rejections stay what operators act on. From `failed` because the
///   rule may only be reached on a retry (a row that failed transiently the first time).
/// - `dead -> acknowledged|rejected`: a late receipt. A message that ran out of publish
///   attempts may still have reached the receiver; its verdict is the truth about the message
///   and is recorded (with when it came), never dropped.
pub const TRANSITIONS: &[(Status, Status)] = &[
    (JustIn, Forwarded),
    (JustIn, Rejected),
    (JustIn, Failed),
    (JustIn, Dead),
    (JustIn, Queued),
    (JustIn, Acknowledged),
    (Failed, Forwarded),
    (Failed, Rejected),
    (Failed, Failed),
    (Failed, Dead),
    (Failed, Queued),
    (Failed, Acknowledged),
    (JustIn, Dropped),
    (Failed, Dropped),
    (Queued, Queued),
    (Queued, Failed),
    (Queued, Dead),
    (Queued, Acknowledged),
    (Queued, Rejected),
    (Dead, Acknowledged),
    (Dead, Rejected),
];

impl Status {
    /// All statuses, in life order.
    pub const ALL: [Status; 8] = [JustIn, Forwarded, Queued, Acknowledged, Rejected, Failed, Dead, Dropped];

    /// The stored name (`just_in`, ...).
    pub fn as_str(self) -> &'static str {
        match self {
            JustIn => "just_in",
            Forwarded => "forwarded",
            Queued => "queued",
            Acknowledged => "acknowledged",
            Rejected => "rejected",
            Failed => "failed",
            Dead => "dead",
            Dropped => "dropped",
        }
    }

    /// Whether `self -> to` is a legal edge.
    pub fn can_become(self, to: Status) -> bool {
        TRANSITIONS.contains(&(self, to))
    }

    /// `Ok` for a legal edge, [`Error::IllegalTransition`] otherwise.
    pub fn check_transition(self, to: Status, id: Uuid) -> Result<()> {
        if self.can_become(to) { Ok(()) } else { Err(Error::IllegalTransition { id, from: self, to }) }
    }

    /// The statuses from which `to` may be reached: a batch update filters on these, so a row
    /// in any other status is left untouched (and reported by the caller).
    pub fn sources_of(to: Status) -> Vec<Status> {
        TRANSITIONS.iter().filter(|(_, t)| *t == to).map(|(f, _)| *f).collect()
    }

    /// A final status: no stage touches the row again (replay makes new rows). Only a late
    /// receipt may still move a `dead` layer 4 row.
    pub fn is_final(self) -> bool {
        matches!(self, Forwarded | Acknowledged | Rejected | Dead | Dropped)
    }

    /// A status the hub gives a message up in: `rejected` (bad input, refused) or `dead`
    /// (retries exhausted). Logged at WARN whenever a row takes it
    /// ([`crate::table::log_given_up`]).
    pub fn is_given_up(self) -> bool {
        matches!(self, Rejected | Dead)
    }
}

impl fmt::Display for Status {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for Status {
    type Err = Error;
    fn from_str(s: &str) -> Result<Self> {
        Status::ALL
            .into_iter()
            .find(|st| st.as_str() == s)
            .ok_or_else(|| Error::InvalidInput(format!("unknown status `{s}`")))
    }
}

/// Which way a message flows.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, EnumIter, DeriveActiveEnum, Serialize, Deserialize)]
#[sea_orm(rs_type = "String", db_type = "String(StringLen::N(16))")]
#[serde(rename_all = "snake_case")]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub enum Direction {
    /// Third party -> core app.
    #[sea_orm(string_value = "upstream")]
    Upstream,
    /// Core app -> third party.
    #[sea_orm(string_value = "downstream")]
    Downstream,
}

impl fmt::Display for Direction {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Direction::Upstream => "upstream",
            Direction::Downstream => "downstream",
        })
    }
}

/// The four layers, numbered as in the design.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub enum Layer {
    /// `layer1_raw`
    Raw = 1,
    /// `layer2_normalized`
    Normalized = 2,
    /// `layer3_translated`
    Translated = 3,
    /// `layer4_dispatch`
    Dispatch = 4,
}

impl Layer {
    /// All layers in order.
    pub const ALL: [Layer; 4] = [Layer::Raw, Layer::Normalized, Layer::Translated, Layer::Dispatch];

    /// The layer's number, 1 to 4.
    pub fn number(self) -> u8 {
        self as u8
    }

    /// The layer's table name.
    pub fn table(self) -> &'static str {
        match self {
            Layer::Raw => "layer1_raw",
            Layer::Normalized => "layer2_normalized",
            Layer::Translated => "layer3_translated",
            Layer::Dispatch => "layer4_dispatch",
        }
    }
}

impl fmt::Display for Layer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} ({})", self.number(), self.table())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_status_round_trips_through_its_name() {
        for s in Status::ALL {
            assert_eq!(s.as_str().parse::<Status>().ok(), Some(s));
        }
        assert!("delivered".parse::<Status>().is_err());
    }

    #[test]
    fn final_statuses_have_no_outgoing_edges_but_late_receipts() {
        for s in Status::ALL.into_iter().filter(|s| s.is_final()) {
            for to in Status::ALL {
                let late_receipt = s == Dead && matches!(to, Acknowledged | Rejected);
                assert_eq!(s.can_become(to), late_receipt, "{s} -> {to}");
            }
        }
    }

    #[test]
    fn sources_match_the_table() {
        let mut ack = Status::sources_of(Acknowledged);
        ack.sort();
        assert_eq!(ack, vec![JustIn, Queued, Failed, Dead]);
        assert!(Status::sources_of(JustIn).is_empty());
        let mut dropped = Status::sources_of(Dropped);
        dropped.sort();
        assert_eq!(dropped, vec![JustIn, Failed]);
        assert!(Dropped.is_final());
    }
}
