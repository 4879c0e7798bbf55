//! Following a rule's pointer through one record: what it finds (a value, a `null` on the
//! way, nothing), projection over arrays with `*`, and a rejection (never silence) when the
//! path meets a value of the wrong kind.

use super::*;

/// Where a pointer led in one record.
pub(super) enum Found<'a> {
    /// A value that is not `null`.
    Value(&'a Value),
    /// A `null`, at this record pointer: the source itself, or an object on the way to it.
    Null(String),
    /// A key an object does not have (or an index past an array's end), at this pointer.
    Absent(String),
}

/// What one rule's source gave, before `default` and `on_null` are applied.
pub(super) enum Got {
    Value(Value),
    Null,
    Absent,
}

/// An array position as RFC 6901 writes it: digits, no leading zero.
fn array_index(tok: &str) -> Option<usize> {
    if tok.is_empty() || tok.len() > 1 && tok.starts_with('0') || !tok.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    tok.parse().ok()
}

fn joined(toks: &[String]) -> String {
    toks.iter().map(|t| format!("/{}", escape_token(t))).collect()
}

/// Follows `toks` (no `*` among them) from `v`, which sits at record pointer `at`. `whole` is
/// the rule's pointer as written, for messages. A token into a string, number or boolean, or
/// a token that is not an index into an array, is an error (rule `path`): the rule could
/// never read anything there, and saying nothing would drop the value silently.
pub(super) fn follow<'a>(
    v: &'a Value,
    at: &str,
    toks: &[String],
    whole: &str,
    key: &str,
) -> Result<Found<'a>, Rejection> {
    let mut cur = v;
    let mut here = at.to_owned();
    for (i, tok) in toks.iter().enumerate() {
        let next = match cur {
            Value::Null => return Ok(Found::Null(here)),
            Value::Object(m) => m.get(tok),
            Value::Array(a) => match array_index(tok) {
                Some(n) => a.get(n),
                None => {
                    let rest = joined(&toks[i..]);
                    let name = rest.trim_start_matches('/');
                    return Err(reject(
                        &here,
                        "path",
                        format!(
                            "`{key}` pointer `{whole}`: `{here}` is an array: use `{here}/*{rest}` to take \
                             every element's `{name}`, or an index"
                        ),
                    ));
                }
            },
            other => {
                return Err(reject(
                    &here,
                    "path",
                    format!(
                        "`{key}` pointer `{whole}`: `{here}` is {}, which has no `{}`",
                        other.kind_name(),
                        joined(&toks[i..]).trim_start_matches('/')
                    ),
                ));
            }
        };
        here.push('/');
        here.push_str(&escape_token(tok));
        match next {
            Some(n) => cur = n,
            None => return Ok(Found::Absent(here)),
        }
    }
    Ok(match cur {
        Value::Null => Found::Null(here),
        v => Found::Value(v),
    })
}

/// A pointer's tokens split at each `*`: `/a/*/b` is `[[a], [b]]`.
pub(super) fn segments(p: &str) -> Option<Vec<Vec<String>>> {
    let mut segs = vec![Vec::new()];
    for t in tokens(p)? {
        if t == "*" {
            segs.push(Vec::new());
        } else if let Some(last) = segs.last_mut() {
            last.push(t);
        }
    }
    Some(segs)
}

/// Whether a pointer projects (has a token that is exactly `*`).
pub(super) fn projects(p: &str) -> bool {
    tokens(p).is_some_and(|t| t.iter().any(|t| t == "*"))
}

/// A rule's `from` on one record: the value (every projected leaf converted), a `null`
/// source, or nothing. Every leaf read (and every `null` met) is marked consumed.
pub(super) fn eval_from(
    f: &Field,
    p: &Pointer,
    record: &Value,
    rec_at: &str,
    out_ptr: &str,
    trail: &mut Trail,
) -> Result<Got, Rejection> {
    let whole = format!("{rec_at}{p}");
    let (first, rest): (&[String], &[Vec<String>]) = p.segs.split_first().map_or((&[], &[]), |(a, b)| (a, b));
    let found = follow(record, rec_at, first, &whole, "from")?;
    let (v, at) = match found {
        Found::Absent(_) => return Ok(Got::Absent),
        Found::Null(at) => {
            trail.consumed.insert(at);
            return Ok(Got::Null);
        }
        Found::Value(v) => (v, format!("{rec_at}{}", joined(first))),
    };
    if rest.is_empty() {
        trail.consumed.insert(at.clone());
        return Ok(Got::Value(convert(v, &f.transforms, (record, rec_at), &at, out_ptr, trail)?));
    }
    Ok(Got::Value(project(f, (record, rec_at), v, &at, rest, &whole, out_ptr, trail)?))
}

/// `*` over the array `v` at `at`: each element followed by `segs` (the tokens after this `*`,
/// split at further `*`s), giving an array with one entry per element (nested arrays for
/// several `*`s: nothing is flattened). `scope` is the record (or `each` element) the rule
/// reads, where a `money` rule's currency pointer is looked up.
#[allow(clippy::too_many_arguments)] // recursive; a struct would only rename them
fn project(
    f: &Field,
    scope: (&Value, &str),
    v: &Value,
    at: &str,
    segs: &[Vec<String>],
    whole: &str,
    out_ptr: &str,
    trail: &mut Trail,
) -> Result<Value, Rejection> {
    let Value::Array(items) = v else {
        return Err(reject(
            at,
            "type",
            format!("`from` pointer `{whole}`: `{at}` is {} where `*` needs an array", v.kind_name()),
        ));
    };
    if items.is_empty() {
        // The empty array is the whole information: it is carried as `[]`.
        trail.consumed.insert(at.to_owned());
        return Ok(Value::Array(Vec::new()));
    }
    let (seg, rest): (&[String], &[Vec<String>]) = segs.split_first().map_or((&[], &[]), |(a, b)| (a, b));
    let mut out = Vec::with_capacity(items.len());
    for (i, item) in items.iter().enumerate() {
        let el_at = format!("{at}/{i}");
        let el_out = format!("{out_ptr}/{}", out.len());
        let got = match follow(item, &el_at, seg, whole, "from")? {
            Found::Value(x) => {
                let x_at = format!("{el_at}{}", joined(seg));
                if rest.is_empty() {
                    trail.consumed.insert(x_at.clone());
                    Some(convert(x, &f.transforms, scope, &x_at, &el_out, trail)?)
                } else {
                    Some(project(f, scope, x, &x_at, rest, whole, &el_out, trail)?)
                }
            }
            Found::Null(null_at) => {
                trail.consumed.insert(null_at);
                match (&f.default, f.on_null) {
                    (Some(d), _) => {
                        trail.defaulted.push(el_out);
                        Some(d.clone())
                    }
                    (None, OnNull::Keep) => Some(Value::Null),
                    (None, OnNull::Omit) => None,
                }
            }
            Found::Absent(missing) => match &f.default {
                Some(d) => {
                    trail.defaulted.push(el_out);
                    Some(d.clone())
                }
                None => {
                    return Err(reject(
                        &missing,
                        "projection",
                        format!(
                            "`from` pointer `{whole}`: element `{el_at}` has no `{}`; give the rule a \
                             `default` for elements without it",
                            missing.strip_prefix(&el_at).unwrap_or(&missing).trim_start_matches('/')
                        ),
                    ));
                }
            },
        };
        out.extend(got);
    }
    Ok(Value::Array(out))
}

/// For a pointer a schema rules out, the `*` form that it allows, when the pointer steps
/// into an array by name (`/issue/labels/name` -> `/issue/labels/*/name`): the prefix where
/// the pointer first fails, with a `*` before the failing token.
pub(super) fn star_hint(input: &dyn Fn(&str) -> bool, p: &str) -> Option<String> {
    let toks = tokens(p)?;
    let k = (1..=toks.len()).find(|k| !input(&joined(&toks[..*k])))?;
    let (before, after) = toks.split_at(k - 1);
    if after.first().is_some_and(|t| t == "*" || array_index(t).is_some()) {
        return None;
    }
    let fixed = format!("{}/*{}", joined(before), joined(after));
    input(&fixed).then(|| {
        format!(
            " (`{}` is an array: use `{fixed}` to take every element's `{}`, or an index)",
            joined(before),
            joined(after).trim_start_matches('/')
        )
    })
}
