//! Why a stage could not carry a message on: bad input (final) or a passing failure (retried).

use std::fmt;

use serde::{Deserialize, Serialize};

/// Bad input, precisely: which field (a JSON pointer into the record or payload), which rule,
/// and a sentence for the humans. Stored as the row's `last_error`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Rejection {
    /// JSON pointer to the offending value (`/contacts/2/email`); `None` for the whole input.
    pub field: Option<String>,
    /// The rule that failed (`email`, `required`, `json`, `decimal`...).
    pub rule: String,
    /// What was wrong, for a person.
    pub message: String,
}

impl Rejection {
    /// A rejection of `field` under `rule`.
    pub fn field(field: impl Into<String>, rule: impl Into<String>, message: impl Into<String>) -> Self {
        Self { field: Some(field.into()), rule: rule.into(), message: message.into() }
    }

    /// A rejection of the input as a whole.
    pub fn whole(rule: impl Into<String>, message: impl Into<String>) -> Self {
        Self { field: None, rule: rule.into(), message: message.into() }
    }

    /// Prefixes the field pointer, e.g. to place a record's error inside its batch.
    pub fn within(mut self, prefix: &str) -> Self {
        self.field = Some(format!("{prefix}{}", self.field.as_deref().unwrap_or("")));
        self
    }
}

impl fmt::Display for Rejection {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.field {
            Some(p) => write!(f, "field `{p}` failed rule `{}`: {}", self.rule, self.message),
            None => write!(f, "input failed rule `{}`: {}", self.rule, self.message),
        }
    }
}

/// The part of a stored rejection reason that names where and which rule, without the
/// sentence after it: `field \`/email\` failed rule \`format\``. The sentence may quote the
/// offending value (a schema error does), so it is left out of logs and of views for readers
/// who may not see payload values. A reason of another shape (a transient failure's) is
/// returned whole: it holds no payload.
pub fn reason_summary(reason: &str) -> &str {
    let shaped = reason.starts_with("field `") || reason.starts_with("input failed rule `");
    if !shaped {
        return reason;
    }
    // The rule name is the last backquoted word before the first "`: ".
    match reason.find("failed rule `").and_then(|i| reason[i..].find("`: ").map(|j| i + j + 1)) {
        Some(end) => &reason[..end],
        None => reason,
    }
}

/// Why an integration could not process a message.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum Failure {
    /// Bad input: the row becomes `rejected` with the reason. Retrying cannot help.
    Rejected(Rejection),
    /// A passing failure (a lookup service down...): the row becomes `failed` and is retried
    /// with backoff, then `dead`.
    Transient(String),
    /// Good input that a declared rule (named here) says the hub does not want: the row becomes
    /// `dropped`, final, with ``dropped by rule `name` `` as its reason, and has no children.
    ///
    /// A variant here rather than an `Ok` with no records: a stage settles every row it could
    /// not carry on through one path (the guarded, leased write of [`Failure`]s), and a drop is
    /// exactly that, with its own final status; `Ok(vec![])` already means "forwarded, and the
    /// payload held no records". Integration code keeps its one return type.
    Dropped {
        /// The rule's name.
        rule: String,
    },
}

impl From<Rejection> for Failure {
    fn from(r: Rejection) -> Self {
        Failure::Rejected(r)
    }
}

impl fmt::Display for Failure {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Failure::Rejected(r) => write!(f, "rejected: {r}"),
            Failure::Transient(t) => write!(f, "transient failure: {t}"),
            Failure::Dropped { rule } => write!(f, "dropped by rule `{rule}`"),
        }
    }
}

/// Runs an integration's future, turning a panic into a [`Failure::Transient`] so that one bad
/// integration cannot take a stage task down. The row is retried, then `dead`, with the panic
/// message on record.
pub async fn guarded<T, F>(fut: F) -> Result<T, Failure>
where
    F: std::future::Future<Output = Result<T, Failure>>,
{
    use futures::FutureExt;
    match std::panic::AssertUnwindSafe(fut).catch_unwind().await {
        Ok(r) => r,
        Err(panic) => {
            let msg = panic
                .downcast_ref::<&str>()
                .map(|s| (*s).to_owned())
                .or_else(|| panic.downcast_ref::<String>().cloned())
                .unwrap_or_else(|| "unknown panic".to_owned());
            Err(Failure::Transient(format!("integration panicked: {msg}")))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_reason_summary_keeps_where_and_which_rule_only() {
        let r = Rejection::field("/customer/email", "format", "\"ada@\" is not a \"email\"").to_string();
        assert_eq!(reason_summary(&r), "field `/customer/email` failed rule `format`");
        let w = Rejection::whole("json", "payload is not JSON: `{x` at 1:2").to_string();
        assert_eq!(reason_summary(&w), "input failed rule `json`");
        assert_eq!(
            reason_summary("broker unreachable: connection refused"),
            "broker unreachable: connection refused"
        );
        assert_eq!(reason_summary("field `/a` failed rule"), "field `/a` failed rule");
    }
}
