//! The fidelity walk: every leaf of the record is mapped, ignored, or handled by `on_unmapped`,
//! and the report says which.

use super::*;

/// One token of an `ignore` pattern, compiled once.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) enum IgnoreTok {
    /// A token written as is.
    Exact(String),
    /// `*`: any one token (an array index, a key).
    Any,
    /// `**`: zero or more tokens.
    Deep,
    /// A token with `*` among other characters (`*_url`): the literal pieces between the `*`s,
    /// in order.
    Glob(Vec<String>),
}

impl IgnoreTok {
    pub(super) fn compile(tok: &str) -> Self {
        match tok {
            "*" => IgnoreTok::Any,
            "**" => IgnoreTok::Deep,
            t if t.contains('*') => IgnoreTok::Glob(t.split('*').map(str::to_owned).collect()),
            t => IgnoreTok::Exact(t.to_owned()),
        }
    }

    /// Whether the pattern token can be checked against a schema as written (`Exact` and
    /// `Any`, which schemas read as "any array item").
    pub(super) fn plain(&self) -> bool {
        matches!(self, IgnoreTok::Exact(_) | IgnoreTok::Any)
    }

    fn matches(&self, tok: &str) -> bool {
        match self {
            IgnoreTok::Exact(t) => t == tok,
            IgnoreTok::Any | IgnoreTok::Deep => true,
            IgnoreTok::Glob(parts) => glob(parts, tok),
        }
    }
}

/// `parts` are the pieces of a glob between its `*`s (at least two): the first is a prefix,
/// the last a suffix, the ones between appear in order without overlapping.
fn glob(parts: &[String], tok: &str) -> bool {
    let (Some((first, rest)), Some(last)) = (parts.split_first(), parts.last()) else { return false };
    let Some(mut left) = tok.strip_prefix(first.as_str()) else { return false };
    let middle = &rest[..rest.len().saturating_sub(1)];
    for m in middle {
        match left.find(m.as_str()) {
            Some(i) => left = &left[i + m.len()..],
            None => return false,
        }
    }
    left.ends_with(last.as_str())
}

/// Whether `pattern` matches `leaf` or an object or array above it (ignoring an object
/// ignores everything in it). `**` matches zero or more tokens; its alternatives are tried
/// in turn, so the cost grows with the number of `**` in a pattern, which is small.
pub(super) fn matches_ignore(leaf: &[String], pattern: &[IgnoreTok]) -> bool {
    let Some((p, rest)) = pattern.split_first() else { return true };
    match p {
        IgnoreTok::Deep => (0..=leaf.len()).any(|k| matches_ignore(&leaf[k..], rest)),
        p => leaf.split_first().is_some_and(|(l, tail)| p.matches(l) && matches_ignore(tail, rest)),
    }
}

/// Sorts every leaf of a record into mapped (a rule read it, or an object or array above it),
/// ignored (by the mapping's `ignore` list) or unmapped, in one pass over the record.
pub(super) struct Walk<'a> {
    consumed: &'a HashSet<String>,
    ignore: &'a [Vec<IgnoreTok>],
    fidelity: &'a mut Fidelity,
    unmapped: &'a mut Vec<String>,
}

impl Mapping {
    /// Translates `record` (the record as layer 2 stored it) faithfully, or says why not.
    pub fn apply(&self, record: &Value) -> Result<(Value, Fidelity), Rejection> {
        let mut trail = Trail::default();
        let mut body = eval_fields(&self.fields, record, "", "", &mut trail)?;
        let mut fidelity = Fidelity { defaulted: trail.defaulted, lossy: trail.lossy, ..Default::default() };
        let mut unmapped = Vec::new();
        let mut walk = Walk {
            consumed: &trail.consumed,
            ignore: &self.ignore,
            fidelity: &mut fidelity,
            unmapped: &mut unmapped,
        };
        walk.visit(record, &mut String::new(), &mut Vec::new(), false);
        if !unmapped.is_empty() {
            match self.spec.on_unmapped {
                OnUnmapped::Reject => {
                    let shown: Vec<&str> = unmapped.iter().take(5).map(String::as_str).collect();
                    return Err(reject(
                        &unmapped[0],
                        "unmapped",
                        format!(
                            "{} record field(s) neither mapped nor ignored by mapping {}@{} ({}): map them, \
                             list them in `ignore`, or choose `on_unmapped`",
                            unmapped.len(),
                            self.spec.name,
                            self.spec.version,
                            shown.join(", ")
                        ),
                    ));
                }
                OnUnmapped::KeepInExtras => {
                    let mut extras = Map::new();
                    for p in &unmapped {
                        if let Some(v) = record.pointer(p) {
                            extras.insert(p.clone(), v.clone());
                        }
                    }
                    let at = tokens(&self.spec.extras_at).unwrap_or_default();
                    insert_at(&mut body, &at, Value::Object(extras));
                    fidelity.extras = unmapped;
                }
                OnUnmapped::Ignore => fidelity.ignored.extend(unmapped),
            }
        }
        Ok((Value::Object(body), fidelity))
    }
}

impl Walk<'_> {
    pub(super) fn visit(&mut self, v: &Value, at: &mut String, toks: &mut Vec<String>, taken: bool) {
        let taken = taken || self.consumed.contains(at.as_str());
        let mut child = |this: &mut Self, key: String, x: &Value| {
            let len = at.len();
            at.push('/');
            at.push_str(&escape_token(&key));
            toks.push(key);
            this.visit(x, at, toks, taken);
            toks.pop();
            at.truncate(len);
        };
        match v {
            Value::Object(m) if !m.is_empty() => m.iter().for_each(|(k, x)| child(self, k.clone(), x)),
            Value::Array(a) if !a.is_empty() => {
                a.iter().enumerate().for_each(|(i, x)| child(self, i.to_string(), x))
            }
            _ if taken => self.fidelity.mapped.push(at.clone()),
            _ if self.ignore.iter().any(|p| matches_ignore(toks, p)) => {
                self.fidelity.ignored.push(at.clone())
            }
            _ => self.unmapped.push(at.clone()),
        }
    }
}
