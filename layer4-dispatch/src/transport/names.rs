//! Queue names. A destination (and the receipts and inbound queues) is a *logical* name: routes,
//! layer 4 rows, stats and logs all use it. Each transport maps it to a *physical* queue of its
//! own, by an entry of `[transport.queues]` (a name, or on SQS a full queue URL) or, without
//! one, by its default rule:
//!
//! - SQS: every character outside `[A-Za-z0-9_-]` becomes `-`, a `.fifo` suffix is kept
//!   (`core.payments` -> `core-payments`, `core.ledger.fifo` -> `core-ledger.fifo`); at most 80
//!   characters, suffix included.
//! - RabbitMQ: the name as is; 1 to 255 bytes, not starting with `amq.` (reserved by the broker).
//! - in-process: the name as is, not empty.
//!
//! The mapping must be one to one over the names in use: two logical names on one physical
//! queue would mix their messages, so [`QueueNames::check`] reports it. A physical name is a
//! fixed point of the mapping (a receiver hands the `hub-receipt-to` address back to its
//! transport), which is why a name may not be both an entry's physical queue and a logical
//! name mapped elsewhere.

use std::collections::{BTreeMap, BTreeSet};

use serde::{Deserialize, Deserializer};

/// Longest SQS queue name, `.fifo` included (SQS CreateQueue).
pub const SQS_MAX_NAME: usize = 80;
/// Longest RabbitMQ queue name in bytes (AMQP 0-9-1 short string).
pub const RABBITMQ_MAX_NAME: usize = 255;

/// Which transport's naming rules apply.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
#[non_exhaustive]
pub enum NameRule {
    /// Any non-empty name.
    #[default]
    InProcess,
    /// 1 to 255 bytes, not `amq.*`.
    RabbitMq,
    /// `[A-Za-z0-9_-]`, optional `.fifo`, 80 characters; or a queue URL.
    Sqs,
}

impl NameRule {
    /// The transport's name as messages say it.
    pub fn transport(self) -> &'static str {
        match self {
            NameRule::InProcess => "in-process",
            NameRule::RabbitMq => "RabbitMQ",
            NameRule::Sqs => "SQS",
        }
    }

    /// Whether `physical` is usable as it is (a `[transport.queues]` value); why not otherwise.
    fn check_physical(self, physical: &str) -> Result<(), String> {
        if physical.is_empty() {
            return Err("an empty queue name".into());
        }
        match self {
            NameRule::InProcess => Ok(()),
            NameRule::RabbitMq => {
                if is_url(physical) {
                    Err(format!("`{physical}` is a URL; RabbitMQ queues are named, not addressed by URL"))
                } else if physical.len() > RABBITMQ_MAX_NAME {
                    Err(format!(
                        "RabbitMQ queue `{physical}` is {} bytes; RabbitMQ allows {RABBITMQ_MAX_NAME}",
                        physical.len()
                    ))
                } else if physical.starts_with("amq.") {
                    Err(format!("RabbitMQ reserves queue names starting with `amq.` (`{physical}`)"))
                } else {
                    Ok(())
                }
            }
            NameRule::Sqs => {
                if is_url(physical) {
                    // The queue is named by the URL's last segment (…/<account>/<name>).
                    let name = physical.trim_end_matches('/').rsplit('/').next().unwrap_or_default();
                    let path_segments = physical.splitn(4, '/').nth(3).map_or(0, |p| p.split('/').count());
                    if path_segments < 2 || sqs_name_problem(name).is_some() {
                        return Err(format!(
                            "`{physical}` is not an SQS queue URL (https://sqs.<region>.amazonaws.com/<account>/<queue name>)"
                        ));
                    }
                    return Ok(());
                }
                match sqs_name_problem(physical) {
                    None => Ok(()),
                    Some(why) => Err(format!("SQS queue `{physical}` {why}")),
                }
            }
        }
    }

    /// The default rule: the physical name of `logical` without a `[transport.queues]` entry.
    fn default_physical(self, logical: &str) -> Result<String, String> {
        if logical.is_empty() {
            return Err("an empty queue name".into());
        }
        match self {
            NameRule::InProcess => Ok(logical.to_owned()),
            NameRule::RabbitMq => {
                self.check_physical(logical)?;
                Ok(logical.to_owned())
            }
            NameRule::Sqs => {
                let (stem, suffix) = match logical.strip_suffix(".fifo") {
                    Some(s) => (s, ".fifo"),
                    None => (logical, ""),
                };
                if stem.is_empty() {
                    return Err(format!("`{logical}` has no name before `.fifo`"));
                }
                let mapped: String = stem
                    .chars()
                    .map(|c| if c.is_ascii_alphanumeric() || c == '-' || c == '_' { c } else { '-' })
                    .chain(suffix.chars())
                    .collect();
                let len = mapped.chars().count();
                if len > SQS_MAX_NAME {
                    return Err(format!(
                        "`{logical}` becomes SQS queue `{mapped}`, {len} characters; SQS allows {SQS_MAX_NAME}: \
                         name its queue in [transport.queues]"
                    ));
                }
                Ok(mapped)
            }
        }
    }
}

/// Why `name` is not a valid SQS queue name, if it is not.
fn sqs_name_problem(name: &str) -> Option<String> {
    let stem = name.strip_suffix(".fifo").unwrap_or(name);
    if stem.is_empty() {
        return Some("has no name".into());
    }
    if let Some(c) = stem.chars().find(|c| !(c.is_ascii_alphanumeric() || *c == '-' || *c == '_')) {
        return Some(format!(
            "contains `{c}`: SQS allows only letters, digits, `-` and `_` (and a `.fifo` suffix)"
        ));
    }
    let len = name.chars().count();
    if len > SQS_MAX_NAME {
        return Some(format!("is {len} characters; SQS allows {SQS_MAX_NAME}"));
    }
    None
}

/// Whether `s` is a queue URL rather than a name.
pub fn is_url(s: &str) -> bool {
    s.starts_with("https://") || s.starts_with("http://")
}

/// The physical queue of the logical `queue` under a transport's names (which may have failed
/// their check at start), as the transport reports it: a name it cannot use is `Invalid`.
pub fn physical(names: &Result<QueueNames, String>, queue: &str) -> Result<String, super::TransportError> {
    use super::TransportError;
    let names = names.as_ref().map_err(|e| TransportError::Invalid(e.clone()))?;
    names.resolve(queue).map_err(|why| TransportError::Invalid(format!("queue `{queue}`: {why}")))
}

/// Logical -> physical queue names for one transport.
#[derive(Debug, Clone, Default)]
pub struct QueueNames {
    rule: NameRule,
    map: BTreeMap<String, String>,
    /// The physical side of `map`: already physical, used as is.
    targets: BTreeSet<String>,
}

impl QueueNames {
    /// The names under `rule` with the explicit entries of `map` (logical -> physical name or,
    /// on SQS, queue URL). Fails naming the first entry that cannot work.
    pub fn new(rule: NameRule, map: &BTreeMap<String, String>) -> Result<Self, String> {
        let mut by_target: BTreeMap<&str, &str> = BTreeMap::new();
        for (logical, physical) in map {
            if logical.is_empty() {
                return Err("transport.queues: an entry has an empty logical name".into());
            }
            rule.check_physical(physical).map_err(|why| format!("transport.queues.\"{logical}\": {why}"))?;
            if let Some(first) = by_target.insert(physical, logical) {
                return Err(format!(
                    "transport.queues: `{first}` and `{logical}` are both mapped to `{physical}`; one \
                     queue per destination"
                ));
            }
        }
        for (logical, physical) in map {
            if let Some(other) = map.get(physical.as_str())
                && other != physical
            {
                return Err(format!(
                    "transport.queues: `{physical}` is the queue of `{logical}` and also a name mapped to \
                     `{other}`; a receiver answering to `{physical}` would reach the wrong queue"
                ));
            }
        }
        Ok(Self { rule, map: map.clone(), targets: map.values().cloned().collect() })
    }

    /// Names under `rule` with no explicit entries.
    pub fn by_rule(rule: NameRule) -> Self {
        Self { rule, ..Self::default() }
    }

    /// The rule in force.
    pub fn rule(&self) -> NameRule {
        self.rule
    }

    /// The physical queue (name, or SQS URL) of `name`: its explicit entry, itself when it is
    /// already physical (an entry's queue, an SQS URL), else the default rule. Why not, when
    /// the name cannot be used on this transport.
    pub fn resolve(&self, name: &str) -> Result<String, String> {
        if let Some(p) = self.map.get(name) {
            return Ok(p.clone());
        }
        if self.targets.contains(name) || (self.rule == NameRule::Sqs && is_url(name)) {
            return Ok(name.to_owned());
        }
        self.rule.default_physical(name)
    }

    /// Checks every name in use: each must map to a usable queue, and no two to the same one.
    /// Returns `(index into names, problem)`; a collision is reported at the later name.
    pub fn check(&self, names: &[&str]) -> Vec<(usize, String)> {
        let mut out = Vec::new();
        let mut seen: BTreeMap<String, &str> = BTreeMap::new();
        for (i, name) in names.iter().enumerate() {
            match self.resolve(name) {
                Err(why) => out.push((i, why)),
                Ok(p) => match seen.get(&p) {
                    Some(first) if first != name => out.push((
                        i,
                        format!(
                            "`{first}` and `{name}` are both {} queue `{p}`: give one of them its own queue in \
                             [transport.queues]",
                            self.rule.transport()
                        ),
                    )),
                    _ => {
                        seen.insert(p, name);
                    }
                },
            }
        }
        out
    }
}

/// Deserializes `[transport.queues]`. A logical name with dots may be written quoted
/// (`"core.payments" = "..."`) or bare, which TOML reads as nested tables
/// (`core.payments = "..."`): both mean the same entry.
pub fn deserialize_queues<'de, D: Deserializer<'de>>(d: D) -> Result<BTreeMap<String, String>, D::Error> {
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum Entry {
        Queue(String),
        Nested(BTreeMap<String, Entry>),
    }
    fn flatten(
        prefix: &str,
        entries: BTreeMap<String, Entry>,
        out: &mut BTreeMap<String, String>,
    ) -> Result<(), String> {
        for (k, v) in entries {
            let key = if prefix.is_empty() { k } else { format!("{prefix}.{k}") };
            match v {
                Entry::Queue(q) => {
                    if out.insert(key.clone(), q).is_some() {
                        return Err(format!("transport.queues: `{key}` is given twice"));
                    }
                }
                Entry::Nested(inner) => flatten(&key, inner, out)?,
            }
        }
        Ok(())
    }
    let top = BTreeMap::<String, Entry>::deserialize(d).map_err(|_| {
        serde::de::Error::custom(
            "transport.queues: each entry is `\"<destination>\" = \"<queue name or URL>\"`",
        )
    })?;
    let mut out = BTreeMap::new();
    flatten("", top, &mut out).map_err(serde::de::Error::custom)?;
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn map(entries: &[(&str, &str)]) -> BTreeMap<String, String> {
        entries.iter().map(|(k, v)| ((*k).to_owned(), (*v).to_owned())).collect()
    }

    #[test]
    fn sqs_default_rule_maps_dots_and_keeps_fifo() {
        let n = QueueNames::by_rule(NameRule::Sqs);
        assert_eq!(n.resolve("core.payments").as_deref(), Ok("core-payments"));
        assert_eq!(n.resolve("hub.receipts").as_deref(), Ok("hub-receipts"));
        assert_eq!(n.resolve("core.ledger.fifo").as_deref(), Ok("core-ledger.fifo"));
        assert_eq!(n.resolve("a b/c:d").as_deref(), Ok("a-b-c-d"));
        // Physical names are fixed points: a receiver resolving `hub-receipt-to` gets it back.
        assert_eq!(n.resolve("core-ledger.fifo").as_deref(), Ok("core-ledger.fifo"));
        let long = "x".repeat(81);
        assert!(n.resolve(&long).is_err_and(|e| e.contains("80")), "too long");
        assert!(n.resolve("").is_err());
        assert!(n.resolve(".fifo").is_err());
    }

    #[test]
    fn rabbitmq_rule_takes_names_as_they_are() {
        let n = QueueNames::by_rule(NameRule::RabbitMq);
        assert_eq!(n.resolve("core.payments").as_deref(), Ok("core.payments"));
        assert!(n.resolve(&"q".repeat(256)).is_err_and(|e| e.contains("255")));
        assert!(n.resolve("amq.gen-1").is_err_and(|e| e.contains("amq.")));
        assert!(QueueNames::new(NameRule::RabbitMq, &map(&[("a", "https://sqs/1/q")])).is_err());
    }

    #[test]
    fn explicit_entries_win_and_urls_are_used_as_they_are() {
        let url = "https://sqs.eu-west-1.amazonaws.com/210987654321/ledger-prod";
        let n =
            QueueNames::new(NameRule::Sqs, &map(&[("core.ledger", url), ("hub.receipts", "receipts-prod")]))
                .expect("valid");
        assert_eq!(n.resolve("core.ledger").as_deref(), Ok(url));
        assert_eq!(n.resolve(url).as_deref(), Ok(url));
        assert_eq!(n.resolve("hub.receipts").as_deref(), Ok("receipts-prod"));
        assert_eq!(n.resolve("receipts-prod").as_deref(), Ok("receipts-prod"));
        assert!(QueueNames::new(NameRule::Sqs, &map(&[("a", "has.dots")])).is_err());
        assert!(QueueNames::new(NameRule::Sqs, &map(&[("a", "https://sqs.example/")])).is_err());
    }

    #[test]
    fn two_names_on_one_queue_are_refused() {
        let n = QueueNames::by_rule(NameRule::Sqs);
        let got = n.check(&["core.payments", "core-payments", "core.payments"]);
        assert_eq!(got.len(), 1, "{got:?}");
        assert_eq!(got[0].0, 1);
        assert!(got[0].1.contains("both SQS queue `core-payments`"), "{}", got[0].1);
        // An explicit entry onto another name's default queue collides too.
        let n = QueueNames::new(NameRule::Sqs, &map(&[("core.ledger", "core-payments")])).expect("valid");
        assert_eq!(n.check(&["core.payments", "core.ledger"]).len(), 1);
        // Two entries onto one queue, and a queue that is also a name mapped elsewhere.
        assert!(QueueNames::new(NameRule::Sqs, &map(&[("a", "q"), ("b", "q")])).is_err());
        assert!(QueueNames::new(NameRule::Sqs, &map(&[("a", "b"), ("b", "c")])).is_err());
    }
}
