//! Routes: core message type -> destination queues (fan-out), with an optional ordering key and
//! an optional filter.

use std::sync::Arc;

use serde::Deserialize;

use layer1_ingest::Rejection;
use layer1_ingest::json::{Condition, scalar_text};

/// Where one core message goes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Target {
    /// The destination queue.
    pub destination: String,
    /// The ordering key's value, when the route asks for per-key ordering.
    pub ordering_key: Option<String>,
}

/// Decides the destinations of a core message.
pub trait Router: Send + Sync + 'static {
    /// The destinations of a message of `message_type` with `body` from `source`. An empty
    /// answer means no route: the message is rejected with that reason (fix the routes, then
    /// replay).
    fn route(
        &self,
        source: &str,
        message_type: &str,
        body: &layer1_ingest::json::Value,
    ) -> Result<Vec<Target>, Rejection>;

    /// Every destination the router can name, declared on the transport at start.
    fn destinations(&self) -> Vec<String>;

    /// Whether some route can take messages of `message_type` from `source` (whatever their
    /// body): `Some(false)` when certainly none can, `None` when the router cannot tell (the
    /// default: a router in code decides per message). A hub refuses to build when a
    /// translator declares a type its router says `Some(false)` to.
    fn carries(&self, source: &str, message_type: &str) -> Option<bool> {
        let _ = (source, message_type);
        None
    }

    /// Whether the router certainly routes nothing (an empty [`RouteTable`]): a hub with
    /// translators refuses it, as every message would be rejected at layer 4. The default,
    /// `false`, suits a router in code, which may route what it does not list.
    fn is_empty(&self) -> bool {
        false
    }
}

/// One routing rule.
#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Route {
    /// The core message type: exact (`member.upsert`), a prefix ending in `*`
    /// (`payment.*`), or `*` for everything.
    #[serde(rename = "type")]
    pub message_type: String,
    /// The destination queue.
    #[serde(default)]
    pub destination: String,
    /// More destination queues: the message goes to each (fan-out).
    #[serde(default)]
    pub destinations: Vec<String>,
    /// A JSON pointer into the core message whose value orders messages per key.
    #[serde(default)]
    pub ordering_key: Option<String>,
    /// Only messages passing this test take the route.
    #[serde(default)]
    pub filter: Option<Condition>,
    /// Only messages from this source take the route (routes declared in an integration file
    /// apply to that integration's messages).
    #[serde(default)]
    pub source: Option<String>,
}

/// The rejection for a core message no route carries.
fn no_route(message_type: &str) -> Rejection {
    Rejection::whole(NO_ROUTE, format!("no route for core message type `{message_type}`"))
}

impl Route {
    /// Whether the route's type pattern takes `message_type`.
    pub fn matches_type(&self, message_type: &str) -> bool {
        match self.message_type.strip_suffix('*') {
            Some(prefix) => message_type.starts_with(prefix),
            None => self.message_type == message_type,
        }
    }

    fn matches(&self, source: &str, message_type: &str, body: &layer1_ingest::json::Value) -> bool {
        self.matches_type(message_type)
            && self.source.as_deref().is_none_or(|s| s == source)
            && self.filter.as_ref().is_none_or(|f| f.holds(body))
    }

    /// Every destination the route names.
    pub fn targets(&self) -> impl Iterator<Item = &String> {
        std::iter::once(&self.destination).filter(|d| !d.is_empty()).chain(self.destinations.iter())
    }
}

/// A list of routes; every matching route is a destination (fan-out).
#[derive(Debug, Clone, Default)]
pub struct RouteTable {
    routes: Vec<Route>,
}

impl RouteTable {
    /// A table of these routes.
    pub fn new(routes: Vec<Route>) -> Self {
        Self { routes }
    }
}

impl Router for RouteTable {
    fn route(
        &self,
        source: &str,
        message_type: &str,
        body: &layer1_ingest::json::Value,
    ) -> Result<Vec<Target>, Rejection> {
        let mut out: Vec<Target> = Vec::new();
        for r in self.routes.iter().filter(|r| r.matches(source, message_type, body)) {
            let ordering_key = match &r.ordering_key {
                None => None,
                Some(p) => Some(match body.pointer(p).and_then(scalar_text) {
                    Some(k) => k,
                    None => {
                        return Err(Rejection::field(
                            p.clone(),
                            "ordering_key",
                            format!(
                                "route for `{}` orders by `{p}`, which is not a string or number in the message",
                                r.message_type
                            ),
                        ));
                    }
                }),
            };
            if let Some(k) = &ordering_key
                && (k.is_empty() || k.len() > 255 || k.chars().any(char::is_control))
            {
                return Err(Rejection::field(
                    r.ordering_key.clone().unwrap_or_default(),
                    "ordering_key",
                    "an ordering key must be 1 to 255 bytes without control characters",
                ));
            }
            for d in r.targets() {
                if !out.iter().any(|t| t.destination == *d) {
                    out.push(Target { destination: d.clone(), ordering_key: ordering_key.clone() });
                }
            }
        }
        if out.is_empty() {
            return Err(no_route(message_type));
        }
        Ok(out)
    }

    fn destinations(&self) -> Vec<String> {
        let mut d: Vec<String> = self.routes.iter().flat_map(|r| r.targets().cloned()).collect();
        d.sort();
        d.dedup();
        d
    }

    /// A route's filter is not held against it: it may let some messages of the type through.
    fn carries(&self, source: &str, message_type: &str) -> Option<bool> {
        Some(
            self.routes
                .iter()
                .any(|r| r.matches_type(message_type) && r.source.as_deref().is_none_or(|s| s == source)),
        )
    }

    fn is_empty(&self) -> bool {
        self.routes.is_empty()
    }
}

/// The rule of the rejection a [`RouteTable`] gives a message no route takes.
pub const NO_ROUTE: &str = "route";

/// Several routers as one: a message goes to every destination any of them names (the first
/// router's ordering key wins for a destination named twice). It is rejected when none routes
/// it, or when one that had a route for it refuses it for another reason (an ordering key
/// missing from the message, say): a route that applies is never skipped silently. A router
/// says "no route" with an empty answer or a rejection under the rule [`NO_ROUTE`].
pub struct Routers(Vec<Arc<dyn Router>>);

impl Routers {
    /// These routers, asked in this order.
    pub fn new(routers: Vec<Arc<dyn Router>>) -> Self {
        Self(routers)
    }
}

impl Router for Routers {
    fn route(
        &self,
        source: &str,
        message_type: &str,
        body: &layer1_ingest::json::Value,
    ) -> Result<Vec<Target>, Rejection> {
        let mut out: Vec<Target> = Vec::new();
        for r in &self.0 {
            match r.route(source, message_type, body) {
                Ok(targets) => {
                    for t in targets {
                        if !out.iter().any(|o| o.destination == t.destination) {
                            out.push(t);
                        }
                    }
                }
                Err(e) if e.rule == NO_ROUTE => {}
                Err(e) => return Err(e),
            }
        }
        if out.is_empty() {
            return Err(no_route(message_type));
        }
        Ok(out)
    }

    fn destinations(&self) -> Vec<String> {
        let mut d: Vec<String> = self.0.iter().flat_map(|r| r.destinations()).collect();
        d.sort();
        d.dedup();
        d
    }

    fn carries(&self, source: &str, message_type: &str) -> Option<bool> {
        let answers: Vec<Option<bool>> = self.0.iter().map(|r| r.carries(source, message_type)).collect();
        if answers.contains(&Some(true)) {
            Some(true)
        } else if answers.iter().all(|a| *a == Some(false)) {
            Some(false)
        } else {
            None
        }
    }

    fn is_empty(&self) -> bool {
        self.0.iter().all(|r| r.is_empty())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// serde_json's `json!`, as the hub's document.
    macro_rules! json {
        ($($t:tt)+) => { layer1_ingest::json::Value::from(serde_json::json!($($t)+)) };
    }

    fn table() -> RouteTable {
        RouteTable::new(vec![
            Route {
                message_type: "payment.*".into(),
                destination: "core.payments".into(),
                ordering_key: Some("/account_id".into()),
                ..Default::default()
            },
            Route {
                message_type: "payment.recorded".into(),
                destination: "core.ledger".into(),
                ..Default::default()
            },
            Route {
                message_type: "member.upsert".into(),
                destination: "core.members".into(),
                ..Default::default()
            },
        ])
    }

    #[test]
    fn fan_out_and_ordering_key() {
        let t = table().route("s", "payment.recorded", &json!({"account_id": "acct_9"})).expect("routes");
        assert_eq!(t.len(), 2);
        assert_eq!(t[0].ordering_key.as_deref(), Some("acct_9"));
        assert_eq!(t[1].destination, "core.ledger");
    }

    #[test]
    fn no_route_and_missing_key_are_rejections() {
        assert_eq!(table().route("s", "order.created", &json!({})).expect_err("no route").rule, "route");
        let r = table().route("s", "payment.recorded", &json!({})).expect_err("no key");
        assert_eq!(r.field.as_deref(), Some("/account_id"));
    }

    #[test]
    fn filters_sources_and_multiple_destinations() {
        let t = RouteTable::new(vec![Route {
            message_type: "sensor.*".into(),
            destinations: vec!["core.telemetry".into(), "core.archive".into()],
            ordering_key: Some("/device_id".into()),
            filter: serde_json::from_value(serde_json::json!({"pointer": "/test", "exists": false})).ok(),
            source: Some("iot".into()),
            ..Default::default()
        }]);
        let live = json!({"device_id": "d1"});
        let got = t.route("iot", "sensor.reading", &live).expect("routes");
        assert_eq!(
            got.iter().map(|g| g.destination.as_str()).collect::<Vec<_>>(),
            ["core.telemetry", "core.archive"]
        );
        assert!(got.iter().all(|g| g.ordering_key.as_deref() == Some("d1")));
        assert!(t.route("other", "sensor.reading", &live).is_err());
        assert!(t.route("iot", "sensor.reading", &json!({"device_id": "d1", "test": true})).is_err());
        assert_eq!(t.destinations(), ["core.archive", "core.telemetry"]);
    }

    /// Routers together: every destination any names, "no route" only when none routes, and
    /// any other refusal by a router that had a route is the answer.
    #[test]
    fn routers_together_fan_out_and_refuse_what_one_refuses() {
        let extra = RouteTable::new(vec![Route {
            message_type: "payment.recorded".into(),
            destination: "core.audit".into(),
            source: Some("s".into()),
            ..Default::default()
        }]);
        let both = Routers::new(vec![Arc::new(extra), Arc::new(table())]);
        let got = both.route("s", "payment.recorded", &json!({"account_id": "a"})).expect("routes");
        let dests: Vec<_> = got.iter().map(|t| t.destination.as_str()).collect();
        assert_eq!(dests, ["core.audit", "core.payments", "core.ledger"]);
        // Only the second routes it: fine.
        assert_eq!(both.route("t", "member.upsert", &json!({})).expect("routes").len(), 1);
        // Neither: no route.
        assert_eq!(both.route("s", "order.created", &json!({})).expect_err("none").rule, NO_ROUTE);
        // The second has a route but the message lacks its ordering key: refused, not skipped.
        let e = both.route("s", "payment.recorded", &json!({})).expect_err("no key");
        assert_eq!(e.rule, "ordering_key");
        assert_eq!(both.carries("s", "payment.x"), Some(true));
        assert_eq!(both.carries("s", "order.created"), Some(false));
        assert!(!both.is_empty() && Routers::new(vec![Arc::new(RouteTable::default())]).is_empty());
        assert_eq!(both.destinations(), ["core.audit", "core.ledger", "core.members", "core.payments"]);
    }
}
