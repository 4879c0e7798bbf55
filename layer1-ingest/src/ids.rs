//! Typed message ids: which layer's row an id names is part of its type, so that an API asking
//! for a layer 1 id cannot be handed a layer 4 one. Each is a UUIDv7 underneath; converting to
//! and from [`Uuid`] is explicit (`id.uuid()`, `RawId::from(uuid)`), and each converts to a
//! database value, so a typed id goes straight into a query filter.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};
use uuid::Uuid;

macro_rules! typed_id {
    ($(#[$doc:meta])* $name:ident) => {
        $(#[$doc])*
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
        #[serde(transparent)]
        pub struct $name(Uuid);

        impl $name {
            /// The UUID underneath.
            pub fn uuid(self) -> Uuid {
                self.0
            }
        }

        impl From<Uuid> for $name {
            fn from(id: Uuid) -> Self {
                Self(id)
            }
        }

        impl From<$name> for Uuid {
            fn from(id: $name) -> Uuid {
                id.0
            }
        }

        impl From<$name> for sea_orm::Value {
            fn from(id: $name) -> sea_orm::Value {
                id.0.into()
            }
        }

        impl PartialEq<Uuid> for $name {
            fn eq(&self, other: &Uuid) -> bool {
                self.0 == *other
            }
        }

        impl PartialEq<$name> for Uuid {
            fn eq(&self, other: &$name) -> bool {
                *self == other.0
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                self.0.fmt(f)
            }
        }

        impl FromStr for $name {
            type Err = uuid::Error;
            fn from_str(s: &str) -> Result<Self, Self::Err> {
                Uuid::from_str(s).map(Self)
            }
        }
    };
}

typed_id!(
    /// A layer 1 row: bytes as they arrived (upstream), or as the core app sent them
    /// (downstream intake is layer 4; see [`DispatchId`]).
    RawId
);
typed_id!(
    /// A layer 2 row: one validated record.
    RecordId
);
typed_id!(
    /// A layer 3 row: one core message.
    CoreMessageId
);
typed_id!(
    /// A layer 4 row: one delivery to one destination (its `hub-message-id` on the wire).
    DispatchId
);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn typed_ids_round_trip_and_compare_with_their_uuid() {
        let u = Uuid::now_v7();
        let raw = RawId::from(u);
        assert_eq!(raw, u);
        assert_eq!(u, raw);
        assert_eq!(raw.uuid(), u);
        assert_eq!(raw.to_string().parse::<RawId>().expect("parses"), raw);
        assert_eq!(serde_json::to_string(&raw).expect("json"), format!("\"{u}\""));
        assert!("not-a-uuid".parse::<DispatchId>().is_err());
    }
}
