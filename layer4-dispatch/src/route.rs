//! Routes: core message type -> destination queues (fan-out), with an optional ordering key.

use serde::Deserialize;

use layer1_ingest::Rejection;

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
    /// The destinations of a message of `message_type` with `body`. An empty answer means no
    /// route: the message is rejected with that reason (fix the routes, then replay).
    fn route(&self, message_type: &str, body: &serde_json::Value) -> Result<Vec<Target>, Rejection>;

    /// Every destination the router can name, declared on the transport at start.
    fn destinations(&self) -> Vec<String>;
}

/// One routing rule.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Route {
    /// The core message type: exact (`member.upsert`), a prefix ending in `*`
    /// (`payment.*`), or `*` for everything.
    #[serde(rename = "type")]
    pub message_type: String,
    /// The destination queue.
    pub destination: String,
    /// A JSON pointer into the core message whose value orders messages per key.
    #[serde(default)]
    pub ordering_key: Option<String>,
}

impl Route {
    fn matches(&self, message_type: &str) -> bool {
        match self.message_type.strip_suffix('*') {
            Some(prefix) => message_type.starts_with(prefix),
            None => self.message_type == message_type,
        }
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
    fn route(&self, message_type: &str, body: &serde_json::Value) -> Result<Vec<Target>, Rejection> {
        let mut out: Vec<Target> = Vec::new();
        for r in self.routes.iter().filter(|r| r.matches(message_type)) {
            if out.iter().any(|t| t.destination == r.destination) {
                continue;
            }
            let ordering_key = match &r.ordering_key {
                None => None,
                Some(p) => Some(match body.pointer(p) {
                    Some(serde_json::Value::String(s)) => s.clone(),
                    Some(v @ serde_json::Value::Number(_)) => v.to_string(),
                    _ => {
                        return Err(Rejection::field(
                            p.clone(),
                            "ordering_key",
                            format!(
                                "route to `{}` orders by `{p}`, which is not a string or number in the message",
                                r.destination
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
            out.push(Target { destination: r.destination.clone(), ordering_key });
        }
        if out.is_empty() {
            return Err(Rejection::whole(
                "route",
                format!("no route for core message type `{message_type}`"),
            ));
        }
        Ok(out)
    }

    fn destinations(&self) -> Vec<String> {
        let mut d: Vec<String> = self.routes.iter().map(|r| r.destination.clone()).collect();
        d.sort();
        d.dedup();
        d
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn table() -> RouteTable {
        RouteTable::new(vec![
            Route {
                message_type: "payment.*".into(),
                destination: "core.payments".into(),
                ordering_key: Some("/account_id".into()),
            },
            Route {
                message_type: "payment.recorded".into(),
                destination: "core.ledger".into(),
                ordering_key: None,
            },
            Route {
                message_type: "member.upsert".into(),
                destination: "core.members".into(),
                ordering_key: None,
            },
        ])
    }

    #[test]
    fn fan_out_and_ordering_key() {
        let t = table().route("payment.recorded", &json!({"account_id": "acct_9"})).expect("routes");
        assert_eq!(t.len(), 2);
        assert_eq!(t[0].ordering_key.as_deref(), Some("acct_9"));
        assert_eq!(t[1].destination, "core.ledger");
    }

    #[test]
    fn no_route_and_missing_key_are_rejections() {
        assert_eq!(table().route("order.created", &json!({})).expect_err("no route").rule, "route");
        let r = table().route("payment.recorded", &json!({})).expect_err("no key");
        assert_eq!(r.field.as_deref(), Some("/account_id"));
    }
}
