//! Money amounts between integer minor units (Stripe's `"amount": 2000`) and the exact decimal
//! text of the major unit (`"20.00"`), by the currency's ISO 4217 exponent. Digits are moved,
//! never computed through a float, so any length of amount comes out exact or is refused.

use super::*;

/// Longest amount text read: beyond this a number is not an amount but an attack on memory.
const MAX_DIGITS: usize = 1024;

/// Where a `money` rule finds its currency.
#[derive(Debug, Clone)]
pub(super) enum CurrencyOf {
    /// An ISO 4217 code written in the mapping: its code and exponent.
    Code(&'static str, u16),
    /// A pointer to the code beside the amount (in the same record or `each` element).
    Pointer(String),
}

/// A compiled `money` rule.
#[derive(Debug, Clone)]
pub(super) struct Money {
    pub(super) convert: MoneyConvert,
    pub(super) currency: CurrencyOf,
}

/// The ISO 4217 currency `code` names (any case) and its exponent: `Err` says what is wrong
/// with it (not a code, or a code without minor units such as XAU or XXX).
pub(super) fn currency_exponent(code: &str) -> Result<(&'static str, u16), String> {
    let upper = code.to_ascii_uppercase();
    let Some(c) = iso_currency::Currency::from_code(&upper) else {
        return Err(format!("`{code}` is not an ISO 4217 currency code"));
    };
    match c.exponent() {
        Some(e) => Ok((c.code(), e)),
        None => Err(format!(
            "`{code}` ({}) has no minor unit in ISO 4217, so no amount can be read in it",
            c.name()
        )),
    }
}

/// Reads the currency of a rule for one record: `record` is the record or `each` element the
/// amount is in, `rec_at` its place in the record.
fn exponent_for(cur: &CurrencyOf, record: &Value, rec_at: &str) -> Result<(&'static str, u16), Rejection> {
    match cur {
        CurrencyOf::Code(code, e) => Ok((code, *e)),
        CurrencyOf::Pointer(p) => {
            let at = format!("{rec_at}{p}");
            let code = match record.pointer(p) {
                Some(Value::String(s)) => s,
                None | Some(Value::Null) => {
                    return Err(reject(&at, "currency", format!("the amount's currency `{at}` is missing")));
                }
                Some(_) => {
                    return Err(reject(
                        &at,
                        "currency",
                        format!("the currency at `{at}` is not a code like \"usd\""),
                    ));
                }
            };
            currency_exponent(code)
                .map_err(|why| reject(&at, "currency", format!("currency at `{at}`: {why}")))
        }
    }
}

/// Applies `m` to the amount `v` found at `at`.
pub(super) fn money(
    m: &Money,
    v: &Value,
    record: &Value,
    rec_at: &str,
    at: &str,
) -> Result<Value, Rejection> {
    let (code, exp) = exponent_for(&m.currency, record, rec_at)?;
    match m.convert {
        MoneyConvert::ToDecimal => to_decimal(v, exp, at, code).map(Value::String),
        MoneyConvert::ToMinorUnits => to_minor_units(v, exp, at, code),
    }
}

/// Integer minor units (a JSON integer or a string of digits, `-` allowed) to the decimal text
/// of the major unit: `2000` in USD is `"20.00"`, in JPY `"2000"`, `1234` in KWD `"1.234"`.
fn to_decimal(v: &Value, exp: u16, at: &str, code: &str) -> Result<String, Rejection> {
    let text = match v {
        Value::Number(n) => n.as_str().to_owned(),
        Value::String(s) => s.clone(),
        _ => return Err(reject(at, "money", "an amount in minor units is an integer or a string of digits")),
    };
    let (neg, digits) = match text.strip_prefix('-') {
        Some(d) => (true, d),
        None => (false, text.as_str()),
    };
    if digits.is_empty() || digits.len() > MAX_DIGITS || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return Err(reject(
            at,
            "money",
            format!("`{text}` is not an amount in integer minor units of {code} (like 2000)"),
        ));
    }
    let digits = digits.trim_start_matches('0');
    let exp = usize::from(exp);
    // At least one digit before the point: `5` cents are `0.05`.
    let padded = format!("{digits:0>width$}", width = exp + 1);
    let (major, minor) = padded.split_at(padded.len() - exp);
    let sign = if neg && !digits.is_empty() { "-" } else { "" };
    Ok(if exp == 0 { format!("{sign}{major}") } else { format!("{sign}{major}.{minor}") })
}

/// A decimal amount (a JSON number or its text; `20.5`, `"20.50"`, `2.05e1`) to integer minor
/// units, refused when it has a non-zero digit below the currency's minor unit (`20.555` EUR)
/// or cannot be written out exactly.
fn to_minor_units(v: &Value, exp: u16, at: &str, code: &str) -> Result<Value, Rejection> {
    let text = match v {
        Value::Number(n) => n.as_str().to_owned(),
        Value::String(s) => s.clone(),
        _ => return Err(reject(at, "money", "an amount is a number or its text (20.50)")),
    };
    let not_amount = || reject(at, "money", format!("`{text}` is not an amount written like 20.50"));
    if text.len() > MAX_DIGITS || Number::parse(&text).is_none() {
        return Err(not_amount());
    }
    // JSON's grammar holds (checked above): sign, digits, optional fraction, optional exponent.
    let (neg, body) = match text.strip_prefix('-') {
        Some(b) => (true, b),
        None => (false, text.as_str()),
    };
    // Zero is zero whatever its exponent (`0e5000`, `0.0e-99999999999999999999`).
    let mantissa_only = body.split(['e', 'E']).next().unwrap_or("");
    if mantissa_only.bytes().all(|b| b == b'0' || b == b'.') {
        return Ok(Value::Number(Number::parse("0").ok_or_else(not_amount)?));
    }
    let (mantissa, e10) = match body.split_once(['e', 'E']) {
        Some((m, e)) => (m, e.strip_prefix('+').unwrap_or(e).parse::<i64>().map_err(|_| not_amount())?),
        None => (body, 0),
    };
    let (int, frac) = mantissa.split_once('.').unwrap_or((mantissa, ""));
    let mut digits = format!("{int}{frac}");
    // The value is digits × 10^shift minor units.
    let shift = e10
        .checked_sub(frac.len() as i64)
        .and_then(|s| s.checked_add(i64::from(exp)))
        .ok_or_else(not_amount)?;
    if shift >= 0 {
        let zeros = usize::try_from(shift).ok().filter(|z| digits.len() + z <= MAX_DIGITS);
        let Some(zeros) = zeros else {
            return Err(reject(at, "money", format!("`{text}` is too large to write out in minor units")));
        };
        digits.push_str(&"0".repeat(zeros));
    } else {
        let cut = shift.checked_neg().and_then(|c| usize::try_from(c).ok()).unwrap_or(usize::MAX);
        let (kept, below) =
            if cut >= digits.len() { ("", digits.as_str()) } else { digits.split_at(digits.len() - cut) };
        if below.bytes().any(|b| b != b'0') {
            return Err(reject(
                at,
                "money",
                format!(
                    "`{text}` has more fraction digits than {code} has ({exp}): it is not a whole \
                     number of minor units"
                ),
            ));
        }
        digits = kept.to_owned();
    }
    let digits = digits.trim_start_matches('0');
    let out = match (digits.is_empty(), neg) {
        (true, _) => "0".to_owned(),
        (false, true) => format!("-{digits}"),
        (false, false) => digits.to_owned(),
    };
    Number::parse(&out).map(Value::Number).ok_or_else(not_amount)
}
