//! The fidelity walk: every leaf of the record is mapped, ignored, or handled by `on_unmapped`,
//! and the report says which.

use super::*;

pub(super) fn matches_ignore(leaf: &[String], pattern: &[String]) -> bool {
    leaf.len() >= pattern.len() && pattern.iter().zip(leaf).all(|(p, l)| p == "*" || p == l)
}

/// Sorts every leaf of a record into mapped (a rule read it, or an object or array above it),
/// ignored (by the mapping's `ignore` list) or unmapped, in one pass over the record.
pub(super) struct Walk<'a> {
    consumed: &'a HashSet<String>,
    ignore: &'a [Vec<String>],
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
