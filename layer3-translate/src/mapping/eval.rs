//! Evaluating a mapping's fields on one record: sources, defaults and the exact conversions
//! (numbers as written, timestamps with every fractional digit unless a loss is named).

use super::*;

/// What a running translation collects for the fidelity report.
#[derive(Default)]
pub(super) struct Trail {
    pub(super) consumed: HashSet<String>,
    pub(super) defaulted: Vec<String>,
    pub(super) lossy: Vec<String>,
}

pub(super) fn reject(pointer: &str, rule: &str, message: impl Into<String>) -> Rejection {
    if pointer.is_empty() {
        Rejection::whole(rule, message)
    } else {
        Rejection::field(pointer, rule, message)
    }
}

/// TOML values that have no faithful JSON form: datetimes (serde turns them into a private
/// object) and non-finite floats (null).
pub(super) fn toml_artifact(v: &Value) -> bool {
    match v {
        Value::Object(m) => m.contains_key("$__toml_private_datetime") || m.values().any(toml_artifact),
        Value::Array(a) => a.iter().any(toml_artifact),
        _ => false,
    }
}

/// Scalar text, booleans included (`true`), for joining, tables and conversions.
pub(super) fn text_of(v: &Value) -> Option<String> {
    match v {
        Value::Bool(b) => Some(b.to_string()),
        other => scalar_text(other),
    }
}

pub(super) fn eval_fields(
    fields: &[Field],
    record: &Value,
    rec_at: &str,
    out_at: &str,
    trail: &mut Trail,
) -> Result<Map, Rejection> {
    let mut obj = Map::new();
    for f in fields {
        let out_ptr = format!("{out_at}{}", f.out);
        if let Some(v) = eval_field(f, record, rec_at, &out_ptr, trail)? {
            insert_at(&mut obj, &f.out_tokens, v);
        }
    }
    Ok(obj)
}

pub(super) fn eval_field(
    f: &Field,
    record: &Value,
    rec_at: &str,
    out_ptr: &str,
    trail: &mut Trail,
) -> Result<Option<Value>, Rejection> {
    let got: Got = match &f.source {
        Source::Const(v) => return Ok(Some(v.clone())),
        Source::From(p) => eval_from(f, p, record, rec_at, out_ptr, trail)?,
        Source::Concat(parts, sep) => {
            // Null and absent parts are skipped (a `null` object on the way is a null part).
            let mut texts = Vec::new();
            for p in parts {
                let whole = format!("{rec_at}{p}");
                match follow(record, rec_at, p.tokens(), &whole, "concat")? {
                    Found::Absent(_) => {}
                    Found::Null(at) => {
                        trail.consumed.insert(at);
                    }
                    Found::Value(v) => {
                        trail.consumed.insert(whole.clone());
                        texts.push(text_of(v).ok_or_else(|| {
                            reject(&whole, "type", "concat joins strings, numbers and booleans only")
                        })?);
                    }
                }
            }
            if texts.is_empty() { Got::Absent } else { Got::Value(Value::String(texts.join(sep))) }
        }
        // A `null` result is a null source (`default`, then `on_null`), as for `from`.
        Source::Expr(e) => match e.eval(record, rec_at, out_ptr, &mut trail.consumed)? {
            Some(Value::Null) => Got::Null,
            Some(v) => Got::Value(v),
            None => Got::Absent,
        },
        Source::Each(p, inner) => {
            let at = format!("{rec_at}{p}");
            match follow(record, rec_at, p.tokens(), &at, "each")? {
                Found::Absent(_) => Got::Absent,
                Found::Null(null_at) => {
                    trail.consumed.insert(null_at);
                    Got::Null
                }
                Found::Value(Value::Array(items)) => {
                    if items.is_empty() {
                        trail.consumed.insert(at.clone());
                    }
                    let mut out = Vec::with_capacity(items.len());
                    for (i, item) in items.iter().enumerate() {
                        let el =
                            eval_fields(inner, item, &format!("{at}/{i}"), &format!("{out_ptr}/{i}"), trail)?;
                        out.push(Value::Object(el));
                    }
                    Got::Value(Value::Array(out))
                }
                Found::Value(v) => {
                    return Err(reject(
                        &at,
                        "type",
                        format!("`each` needs an array; `{at}` is {}", v.kind_name()),
                    ));
                }
            }
        }
    };
    Ok(match (got, &f.default) {
        (Got::Value(v), _) => Some(v),
        (Got::Null | Got::Absent, Some(d)) => {
            trail.defaulted.push(out_ptr.to_owned());
            Some(d.clone())
        }
        // A null source (the value, or an object on the way to it) follows `on_null`; an
        // absent one stays absent.
        (Got::Null, None) => match f.on_null {
            OnNull::Keep => Some(Value::Null),
            OnNull::Omit => None,
        },
        (Got::Absent, None) => None,
    })
}

/// Converts the value `v` found at `at`; `beside` is the record or `each` element it is in and
/// that one's place, for what a rule reads next to the value (a `money` rule's currency).
pub(super) fn convert(
    v: &Value,
    t: &Transforms,
    beside: (&Value, &str),
    at: &str,
    out_ptr: &str,
    trail: &mut Trail,
) -> Result<Value, Rejection> {
    let mut v = v.clone();
    if let Some(table) = &t.table {
        let key = text_of(&v)
            .ok_or_else(|| reject(at, "enum_table", "only text, numbers and booleans can be looked up"))?;
        v = table.get(&key).cloned().ok_or_else(|| {
            let known: Vec<&str> = table.keys().map(String::as_str).take(12).collect();
            reject(at, "enum_table", format!("`{key}` is not in the mapping's table ({})", known.join(", ")))
        })?;
    }
    if let Some(c) = t.convert {
        v = convert_exact(&v, c, at)?;
    }
    if let Some((format, precision)) = &t.timestamp {
        let (s, dropped_offset) = timestamp(&v, format, *precision, t.offset, at)?;
        if precision.is_some() {
            trail.lossy.push(format!("{out_ptr}: truncate-timestamp"));
        }
        if dropped_offset {
            trail.lossy.push(format!("{out_ptr}: drop-offset"));
        }
        v = s;
    }
    if let Some(m) = &t.money {
        v = money::money(m, &v, beside.0, beside.1, at)?;
    }
    if let Some(c) = t.case {
        let Value::String(s) = &v else {
            return Err(reject(at, "type", "`case` folds text; this value is not a string"));
        };
        let folded = match c {
            Case::Upper => s.to_uppercase(),
            Case::Lower => s.to_lowercase(),
        };
        if folded != *s {
            trail.lossy.push(format!("{out_ptr}: case-fold"));
        }
        v = Value::String(folded);
    }
    if let Some(n) = t.max_length
        && let Value::String(s) = &v
        && s.chars().count() > n
    {
        trail.lossy.push(format!("{out_ptr}: truncate-text"));
        v = Value::String(s.chars().take(n).collect());
    }
    Ok(v)
}

pub(super) fn exact_number(text: &str) -> Option<Number> {
    if text.len() > 1024 {
        return None;
    }
    Number::parse(text)
}

pub(super) fn convert_exact(v: &Value, c: Convert, at: &str) -> Result<Value, Rejection> {
    match (c, v) {
        (Convert::String, Value::String(_)) => Ok(v.clone()),
        (Convert::String, Value::Number(n)) => Ok(Value::String(n.to_string())),
        (Convert::String, Value::Bool(b)) => Ok(Value::String(b.to_string())),
        (Convert::Number, Value::Number(_)) => Ok(v.clone()),
        (Convert::Number, Value::String(s)) => exact_number(s).map(Value::Number).ok_or_else(|| {
            reject(at, "number", format!("`{s}` is not a number written like 12.50 or 1e400"))
        }),
        (Convert::Integer, Value::String(_) | Value::Number(_)) => {
            let text = text_of(v).unwrap_or_default();
            let digits = text.strip_prefix('-').unwrap_or(&text);
            if !digits.is_empty() && digits.bytes().all(|b| b.is_ascii_digit()) {
                exact_number(&text).map(Value::Number).ok_or_else(|| reject(at, "integer", "not an integer"))
            } else {
                Err(reject(
                    at,
                    "integer",
                    format!("`{text}` is not an integer; converting it would lose its fraction"),
                ))
            }
        }
        _ => Err(reject(at, "type", format!("cannot convert this value to a {c:?}").to_lowercase())),
    }
}

/// The longest run of digits after a `.` in `s` (a fraction of a second, wherever it is).
pub(super) fn fraction_digits(s: &str) -> usize {
    s.split('.').skip(1).map(|f| f.bytes().take_while(u8::is_ascii_digit).count()).max().unwrap_or(0)
}

/// A timestamp as the rule writes it (RFC 3339 text, or `{"instant", "offset"}` under
/// `offset = "split"`), and whether an offset other than zero was dropped (`offset = "utc"`).
pub(super) fn timestamp(
    v: &Value,
    format: &TimeFormat,
    precision: Option<Precision>,
    offset: OffsetOut,
    at: &str,
) -> Result<(Value, bool), Rejection> {
    let bad = |why: String| reject(at, "timestamp", why);
    let text = text_of(v).ok_or_else(|| bad("a timestamp must be text or a number".into()))?;
    // chrono keeps nanoseconds; more digits than that would be dropped without a word.
    if fraction_digits(&text) > 9 {
        return Err(bad(format!("`{text}` is more precise than nanoseconds")));
    }
    // The instant in the offset the source gives it (epoch numbers have none: UTC), and for
    // RFC 3339 the offset as written (`Z`, `-07:00`, even `-00:00`).
    let (t, written): (DateTime<FixedOffset>, Option<&str>) = match format {
        TimeFormat::Rfc3339 => {
            let t = DateTime::parse_from_rfc3339(&text)
                .map_err(|e| bad(format!("`{text}` is not RFC 3339: {e}")))?;
            // Parsed, so the text ends in `Z`/`z` or `±hh:mm`.
            let suffix =
                if text.ends_with(['Z', 'z']) { Some("Z") } else { text.get(text.len().saturating_sub(6)..) };
            (t, suffix)
        }
        TimeFormat::Unix => {
            let (secs, frac) = text.split_once('.').unwrap_or((&text, ""));
            let s: i64 = secs.parse().map_err(|_| bad(format!("`{text}` is not seconds since 1970")))?;
            if !frac.bytes().all(|b| b.is_ascii_digit()) {
                return Err(bad(format!("`{text}` is not seconds since 1970")));
            }
            let nanos: u32 = if frac.is_empty() {
                0
            } else {
                format!("{frac:0<9}")
                    .parse()
                    .map_err(|_| bad(format!("`{text}` is not seconds since 1970")))?
            };
            // `-0.5` parses its seconds as 0: the sign is read from the text.
            if secs.starts_with('-') && nanos > 0 {
                return Err(bad("negative fractional epoch timestamps are not supported".into()));
            }
            let t =
                DateTime::from_timestamp(s, nanos).ok_or_else(|| bad(format!("`{text}` is out of range")))?;
            (t.fixed_offset(), None)
        }
        TimeFormat::UnixMillis => {
            let ms: i64 =
                text.parse().map_err(|_| bad(format!("`{text}` is not whole milliseconds since 1970")))?;
            let t = DateTime::from_timestamp_millis(ms)
                .ok_or_else(|| bad(format!("`{text}` is out of range")))?;
            (t.fixed_offset(), None)
        }
        TimeFormat::Pattern { pattern, offset } => match offset {
            None => (
                DateTime::parse_from_str(&text, pattern)
                    .map_err(|e| bad(format!("`{text}` does not match `{pattern}`: {e}")))?,
                None,
            ),
            Some(o) => {
                let naive = NaiveDateTime::parse_from_str(&text, pattern)
                    .map_err(|e| bad(format!("`{text}` does not match `{pattern}`: {e}")))?;
                let t = o
                    .from_local_datetime(&naive)
                    .single()
                    .ok_or_else(|| bad(format!("`{text}` is not a single instant")))?;
                (t, None)
            }
        },
    };
    // RFC 3339 (and JSON Schema's `date-time`) writes four-digit years; chrono would write
    // `+55840-11-08T...` for milliseconds read as seconds.
    let year = t.with_timezone(&Utc).year();
    if !(0..=9999).contains(&year) || !(0..=9999).contains(&t.year()) {
        return Err(bad(format!("`{text}` is outside the years 0000 to 9999 that RFC 3339 can write")));
    }
    // chrono takes `:60` anywhere as a leap second; one is only ever inserted at 23:59:60 UTC.
    if t.nanosecond() >= 1_000_000_000 {
        let u = t.with_timezone(&Utc);
        if (u.hour(), u.minute(), u.second()) != (23, 59, 59) {
            return Err(bad(format!("`{text}` has a second 60 that is not a leap second (23:59:60 UTC)")));
        }
    }
    let digits = match precision {
        None => SecondsFormat::AutoSi,
        Some(Precision::Seconds) => SecondsFormat::Secs,
        Some(Precision::Millis) => SecondsFormat::Millis,
        Some(Precision::Micros) => SecondsFormat::Micros,
    };
    let utc = || t.with_timezone(&Utc).to_rfc3339_opts(digits, true);
    let nonzero = t.offset().local_minus_utc() != 0;
    Ok(match offset {
        OffsetOut::Utc => (Value::String(utc()), nonzero),
        OffsetOut::Split => {
            let off = match written {
                Some("Z") | None => t.format("%:z").to_string(),
                Some(w) => w.to_owned(),
            };
            let mut m = Map::new();
            m.insert("instant".into(), Value::String(utc()));
            m.insert("offset".into(), Value::String(off));
            (Value::Object(m), false)
        }
        // Validated RFC 3339 is carried as written (its digits, its offset), only with the
        // separator and `Z` that RFC 3339 reads case-insensitively, and also as a space,
        // written the standard way, as JSON Schema's `date-time` wants them.
        OffsetOut::Keep if precision.is_none() && written.is_some() => {
            let mut out = text.into_bytes();
            if let Some(sep) = out.get_mut(10) {
                *sep = b'T';
            }
            if let Some(z @ b'z') = out.last_mut() {
                *z = b'Z';
            }
            (Value::String(String::from_utf8_lossy(&out).into_owned()), false)
        }
        OffsetOut::Keep => {
            let local = t.to_rfc3339_opts(digits, true);
            let out = match written {
                // chrono writes a zero offset as `Z`: put back what the source wrote.
                Some(w) => {
                    let theirs = if local.ends_with('Z') { 1 } else { 6 };
                    format!("{}{w}", local.get(..local.len().saturating_sub(theirs)).unwrap_or(&local))
                }
                None => local,
            };
            (Value::String(out), false)
        }
    })
}
