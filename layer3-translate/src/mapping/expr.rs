//! `expr`: a jq-style expression computing one core field, the escape hatch for what the
//! declarative rules cannot say.
//!
//! `"/total" = { expr = "[.lines[] | .price * .qty] | add" }`: the expression's input is the
//! record (inside `each`, the element); its first output is the field's value; no output, or
//! `null`, is an absent value (`default` applies); an error rejects the record under rule
//! `expr`. The language is jq's, run by [jaq](https://github.com/01mf02/jaq) over a value type
//! of our own, so that the hub's promises hold inside an expression too:
//!
//! - Numbers are exact. A number that passes through untouched keeps its text (`1.50`,
//!   `1E400`, a 20-digit id); arithmetic is on arbitrary-precision decimals (`0.1 + 0.2` is
//!   `0.3`, `1.25 * 2` is `2.50`), never on `f64`. A division whose quotient has no exact
//!   decimal (`1 / 3`) is an error, not a rounding.
//! - Reads count in the fidelity walk. A record leaf is read when its value takes part in an
//!   operation (arithmetic, comparison, a string function, a test in `if`/`select`/`//`), is
//!   turned into text, or reaches the output (a container reaching the output whole reads all
//!   of it). A leaf only passed over (`.a` in `.a | .b`) is not read. Which leaves an
//!   expression reads is known only when it runs: the linter assumes it may read anything in
//!   its scope, and the fidelity check on every record says what it actually read.
//! - It is sandboxed. An expression is at most 2 KiB, cannot `def`ine filters (so it cannot
//!   recurse), has only the vetted filters below (no `input`, `$ENV`, `env`, `now`, `halt`,
//!   `debug`, files or modules), cannot fan out into more than 1024 outputs by its shape
//!   alone, and runs on a budget: 100 000 steps (each value built, element visited, operation
//!   done), 4 MiB of text and containers built, numbers of 10 000 digits, nesting 256 deep.
//!   Going over any of these ends the evaluation with an error naming the limit.
//!
//! Filters available besides jq's syntax (`.a`, `.[]`, `..`, `|`, `,`, `if`, `reduce`,
//! `foreach`, `try`, `//`, `as $x`, `label`, string interpolation, `?`): `empty`, `error`,
//! `not`, `select`, `map`, `map_values`, `add`, `length`, `keys`, `keys_unsorted`, `has`,
//! `type`, `to_entries`, `from_entries`, `with_entries`, `del`, `any`, `all`, `isempty`,
//! `first`, `last`, `nth`, `limit`, `skip`, `range`, `path`, `tostring`, `tonumber`,
//! `tojson`, `ascii_downcase`, `ascii_upcase`, `startswith`, `endswith`, `ltrimstr`,
//! `rtrimstr`, `split`, `join`, `sort`, `min`, `max`, `unique`, `sort_by`, `min_by`, `max_by`,
//! `group_by`, `unique_by`, `reverse`, `floor`, `ceil`,
//! `round`, `values`, `nulls`, `strings`, `numbers`, `booleans`, `arrays`, `objects`.
//!
//! When to write a Rust `Translator` instead: several core fields from one computation,
//! lookups in other data, I/O, anything needing state, or an expression longer than a few
//! lines. An expression is for one computed field: a sum, text built under conditions, an
//! element picked by a predicate.

use std::cell::RefCell;
use std::cmp::Ordering;
use std::collections::BTreeMap;
use std::fmt;
use std::rc::Rc;
use std::str::FromStr;

use bigdecimal::num_bigint::{BigInt, Sign};
use bigdecimal::{BigDecimal, RoundingMode, Signed, Zero};
use jaq_core::box_iter::box_once;
use jaq_core::data::JustLut;
use jaq_core::load::{self, Arena, File, Loader};
use jaq_core::native::{self, bome, unary};
use jaq_core::path::Opt;
use jaq_core::{Ctx, Cv, ValT, ValX, ValXs, Vars};

use super::*;

/// Longest expression accepted, in bytes.
pub(super) const MAX_LEN: usize = 2048;
/// Steps (values built, elements visited, operations) one evaluation may take.
const MAX_STEPS: u64 = 100_000;
/// Bytes of text and container slots one evaluation may build.
const MAX_BYTES: u64 = 4 << 20;
/// Digits of a number, and the largest exponent, arithmetic works with.
const MAX_DIGITS: u64 = 10_000;
/// Nesting of the values an expression builds.
const MAX_DEPTH: u32 = 256;
/// Outputs an expression may produce by its shape alone (`(.,.) | (.,.)` is 4).
const MAX_FAN: u64 = 1024;
/// Nesting of brackets in the expression's text (the parser and evaluator recurse on it).
const MAX_NESTING: usize = 32;
/// Operators and keywords in the expression's text: jaq's parser and evaluator recurse on
/// chains of them (`- - - 1`, `try try 1`, `a | b | c`), and a runtime's threads have small
/// stacks. Counted in the raw text, strings included: an overestimate, never an under one.
const MAX_OPS: usize = 100;
const KEYWORDS: [&str; 15] = [
    "and", "or", "if", "then", "elif", "else", "end", "try", "catch", "reduce", "foreach", "as", "label",
    "def", "not",
];

type D = JustLut<Val>;
/// The value type as jaq's native filters name it (the same `Val`).
type V<'a> = <D as jaq_core::DataT>::V<'a>;
type JError = jaq_core::Error<Val>;
type ValR = jaq_core::ValR<Val>;

/// A compiled expression.
#[derive(Clone)]
pub(super) struct Expr {
    code: String,
    filter: Arc<jaq_core::Filter<D>>,
}

impl fmt::Debug for Expr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Expr({:?})", self.code)
    }
}

/// The vetted prelude: jaq-core's definitions without the recursive ones (`repeat`,
/// `recurse(f)`, `while`, `until`), plus a few common ones written without recursion.
const DEFS: &str = r#"
def null: [][0];
def empty: {}[] as $x | .;
def error: error_empty as $x | .;
def error(msgs): (msgs | error_empty) as $x | .;
def true: 0 == 0;
def false: 0 != 0;
def not: if . then false else true end;
def select(f): if f then . else empty end;
def tostring: "\(.)";
def range(from; to): range(from; to; 1);
def range(to): range(0; to);
def map(f): [.[] | f];
def map_values(f): .[] |= f;
def del(f): f |= empty;
def first: .[0];
def last: .[-1];
def nth(n): .[n];
def nth(n; g): first(skip(n; g));
def to_entries: [key_values[] as [$key, $value] | { $key, $value }];
def from_entries: reduce (.[] | { (.key): .value }) as $x ({}; . + $x);
def with_entries(f): to_entries | map(f) | from_entries;
def isempty(g): first((g | false), true);
def all(g; cond): isempty(g | cond and empty);
def any(g; cond): isempty(g | cond or empty) | not;
def all(cond): all(.[]; cond);
def any(cond): any(.[]; cond);
def all: all(.[]; .);
def any: any(.[]; .);
def add(f): reduce f as $x (null; . + $x);
def add: add(.[]);
def abs: if . < 0 then - . end;
def in(xs): . as $x | xs | has($x);
def @text: "\(.)";
def @json: tojson;
def values: select(. != null);
def nulls: select(. == null);
def booleans: select(type == "boolean");
def numbers: select(type == "number");
def strings: select(type == "string");
def arrays: select(type == "array");
def objects: select(type == "object");
"#;

// ---------------------------------------------------------------------------------------------
// The budget and the reads of one evaluation. Evaluation is synchronous on one thread (jaq's
// iterators are pulled by `Expr::eval`), so a thread-local is the run's state; it is reset at
// the start of every evaluation.

#[derive(Default)]
struct Run {
    steps: u64,
    bytes: u64,
    /// The first limit broken: sticky, so that an expression cannot `try` its way past it.
    over: Option<String>,
    reads: std::collections::HashSet<Rc<str>>,
}

thread_local! {
    static RUN: RefCell<Run> = RefCell::new(Run::default());
}

/// Ends the evaluation: every fallible operation fails from now on.
fn over(why: String) -> JError {
    RUN.with(|r| {
        let mut r = r.borrow_mut();
        r.steps = u64::MAX;
        r.over.get_or_insert(why.clone());
    });
    JError::str(why)
}

/// Takes `steps` and `bytes` from the budget.
fn charge(steps: u64, bytes: u64) -> Result<(), JError> {
    let (s, b) = RUN.with(|r| {
        let mut r = r.borrow_mut();
        r.steps = r.steps.saturating_add(steps);
        r.bytes = r.bytes.saturating_add(bytes);
        (r.steps, r.bytes)
    });
    if s > MAX_STEPS {
        Err(over(format!("the expression took more than {MAX_STEPS} steps")))
    } else if b > MAX_BYTES {
        Err(over(format!("the expression built more than {} MiB", MAX_BYTES >> 20)))
    } else {
        Ok(())
    }
}

/// Notes work done where no error can be returned (comparing, marking, building text from a
/// literal); the next [`charge`] checks it, and every loop passes through one.
fn note(steps: u64, bytes: usize) {
    RUN.with(|r| {
        let mut r = r.borrow_mut();
        r.steps = r.steps.saturating_add(steps);
        r.bytes = r.bytes.saturating_add(bytes as u64);
    });
}

/// `v` was read: a record leaf (or a whole record container) taking part in an operation.
fn mark(v: &Val) {
    if let Some(at) = &v.at {
        RUN.with(|r| r.borrow_mut().reads.insert(at.clone()));
    }
}

/// `v` was read whole: every record value inside it.
fn mark_deep(v: &Val) {
    note(1, 0);
    if v.at.is_some() {
        return mark(v);
    }
    match &v.k {
        K::Arr(a) => a.iter().for_each(mark_deep),
        K::Obj(o) => o.values().for_each(mark_deep),
        _ => {}
    }
}

/// `v` was tested or used as a scalar: a container is not read by that (only its existence).
fn mark_scalar(v: &Val) {
    if !matches!(v.k, K::Arr(_) | K::Obj(_)) {
        mark(v);
    }
}

// ---------------------------------------------------------------------------------------------
// Exact numbers.

/// A number: its text as written (from the record or the expression, until arithmetic touches
/// it) or an exact decimal computed by the expression.
#[derive(Clone, Debug)]
enum Num {
    Text(Rc<str>),
    Dec(Rc<BigDecimal>),
}

fn too_big() -> JError {
    over(format!("a number beyond {MAX_DIGITS} digits or exponent {MAX_DIGITS}"))
}

/// Parses number text (JSON's or jq's grammar) into a decimal, refusing sizes arithmetic
/// would choke on before building anything.
fn parse_dec(text: &str) -> Result<BigDecimal, JError> {
    let (mantissa, exp) = match text.find(['e', 'E']) {
        Some(i) => (&text[..i], &text[i + 1..]),
        None => (text, "0"),
    };
    // Number text is valid by the time it gets here: an exponent beyond `i64` is only big.
    let exp: i64 = exp.parse().map_err(|_| too_big())?;
    let digits = mantissa.bytes().filter(u8::is_ascii_digit).count() as u64;
    if digits > MAX_DIGITS || exp.unsigned_abs() > MAX_DIGITS {
        return Err(too_big());
    }
    let d = BigDecimal::from_str(text).map_err(|_| JError::str(format!("`{text}` is not a number")))?;
    checked(d)
}

/// `d`, if within the digit and exponent limits.
fn checked(d: BigDecimal) -> Result<BigDecimal, JError> {
    let (_, scale) = d.as_bigint_and_scale();
    if d.digits() > MAX_DIGITS || scale.unsigned_abs() > MAX_DIGITS {
        return Err(too_big());
    }
    Ok(d)
}

/// A decimal as JSON number text, every digit kept: `2.50`, `0.3`, `-0.001`, `1E400`.
fn dec_text(d: &BigDecimal) -> String {
    let (int, scale) = d.as_bigint_and_scale();
    let sign = if int.sign() == Sign::Minus { "-" } else { "" };
    let digits = int.magnitude().to_string();
    if scale <= 0 {
        // Trailing zeros written out while short; as an exponent beyond that.
        let zeros = scale.unsigned_abs() as usize;
        return if zeros == 0 || int.is_zero() {
            format!("{sign}{digits}")
        } else if zeros <= 20 {
            format!("{sign}{digits}{}", "0".repeat(zeros))
        } else {
            format!("{sign}{digits}E{zeros}")
        };
    }
    let scale = scale as usize;
    if digits.len() > scale {
        let (i, f) = digits.split_at(digits.len() - scale);
        format!("{sign}{i}.{f}")
    } else {
        format!("{sign}0.{}{digits}", "0".repeat(scale - digits.len()))
    }
}

impl Num {
    fn dec(&self) -> Result<BigDecimal, JError> {
        match self {
            Num::Text(t) => parse_dec(t),
            Num::Dec(d) => Ok((**d).clone()),
        }
    }

    /// The length of its text (or of its digits), for the budget.
    fn text_len(&self) -> usize {
        match self {
            Num::Text(t) => t.len(),
            Num::Dec(d) => d.digits() as usize,
        }
    }

    fn text(&self) -> String {
        match self {
            Num::Text(t) => t.to_string(),
            Num::Dec(d) => dec_text(d),
        }
    }

    /// Compares by value (`1.0` equals `1`); a number beyond the limits ends the run.
    fn cmp(&self, other: &Num) -> Ordering {
        if let (Num::Text(a), Num::Text(b)) = (self, other)
            && a == b
        {
            return Ordering::Equal;
        }
        // Each comparison reads both numbers again: charged by their length (the next
        // fallible step ends a run that went over).
        note(1 + (self.text_len() + other.text_len()) as u64 / 16, 0);
        match (self.dec(), other.dec()) {
            (Ok(a), Ok(b)) => a.cmp(&b),
            _ => Ordering::Equal,
        }
    }
}

/// Work on big numbers costs in proportion to their digits.
/// Both operands of arithmetic, read (marked) and as decimals within the digit budget.
fn operands(l: &Val, r: &Val, a: &Num, b: &Num) -> Result<(BigDecimal, BigDecimal), JError> {
    mark(l);
    mark(r);
    let (a, b) = (a.dec()?, b.dec()?);
    charge_digits(&a, &b)?;
    Ok((a, b))
}

fn charge_digits(a: &BigDecimal, b: &BigDecimal) -> Result<(), JError> {
    charge(1 + (a.digits() + b.digits()) / 64, 0)
}

fn dec_val(d: BigDecimal) -> ValR {
    Ok(Val::new(K::Num(Num::Dec(Rc::new(checked(d)?)))))
}

/// Before adding or subtracting: aligning the scales must not build a giant.
fn aligned_ok(a: &BigDecimal, b: &BigDecimal) -> Result<(), JError> {
    let (_, sa) = a.as_bigint_and_scale();
    let (_, sb) = b.as_bigint_and_scale();
    let spread = sa.abs_diff(sb);
    if spread.saturating_add(a.digits().max(b.digits())) > MAX_DIGITS {
        return Err(too_big());
    }
    Ok(())
}

/// `a / b` exactly, or an error when the quotient has no finite decimal expansion.
fn exact_div(a: &BigDecimal, b: &BigDecimal) -> Result<BigDecimal, JError> {
    if b.is_zero() {
        return Err(JError::str("division by zero"));
    }
    let (ia, sa) = a.as_bigint_and_scale();
    let (ib, sb) = b.as_bigint_and_scale();
    // b = r * 2^x * 5^y: the quotient is a finite decimal exactly when r divides a.
    let (mut r, mut x, mut y) = (ib.abs(), 0u64, 0u64);
    let (two, five) = (BigInt::from(2), BigInt::from(5));
    if let Some(tz) = r.trailing_zeros() {
        r >>= tz;
        x = tz;
    }
    while (&r % &five).is_zero() {
        r /= &five;
        y += 1;
    }
    if !(&*ia % &r).is_zero() {
        return Err(JError::str(format!("{} / {} has no exact decimal value", dec_text(a), dec_text(b))));
    }
    let k = x.max(y);
    if k > MAX_DIGITS {
        return Err(too_big());
    }
    let mut m = &*ia / &r * two.pow((k - x) as u32) * five.pow((k - y) as u32);
    if ib.sign() == Sign::Minus {
        m = -m;
    }
    checked(BigDecimal::new(m, sa - sb + k as i64))
}

// ---------------------------------------------------------------------------------------------
// The value type.

/// A value inside an expression: JSON with exact numbers, and where it came from in the
/// record (`at`, the record pointer with the rule's prefix) while it is the record's own,
/// unchanged. Anything the expression builds has no `at`.
#[derive(Clone, Debug)]
pub(super) struct Val {
    k: K,
    at: Option<Rc<str>>,
    /// Nesting below this value (0 for a scalar).
    depth: u32,
}

#[derive(Clone, Debug)]
enum K {
    Null,
    Bool(bool),
    Num(Num),
    Str(Rc<str>),
    Arr(Rc<Vec<Val>>),
    Obj(Rc<BTreeMap<Rc<str>, Val>>),
}

impl Val {
    fn new(k: K) -> Val {
        Val { k, at: None, depth: 0 }
    }

    fn str(s: impl Into<Rc<str>>) -> ValR {
        let s: Rc<str> = s.into();
        charge(1 + s.len() as u64 / 4096, s.len() as u64)?;
        Ok(Val::new(K::Str(s)))
    }

    fn arr(items: Vec<Val>) -> ValR {
        charge(1, 8 * items.len() as u64)?;
        let depth = 1 + items.iter().map(|v| v.depth).max().unwrap_or(0);
        if depth > MAX_DEPTH {
            return Err(over(format!("values nested more than {MAX_DEPTH} deep")));
        }
        Ok(Val { k: K::Arr(Rc::new(items)), at: None, depth })
    }

    fn obj(members: BTreeMap<Rc<str>, Val>) -> ValR {
        let keys: usize = members.keys().map(|k| k.len()).sum();
        charge(1, (keys + 8 * members.len()) as u64)?;
        let depth = 1 + members.values().map(|v| v.depth).max().unwrap_or(0);
        if depth > MAX_DEPTH {
            return Err(over(format!("values nested more than {MAX_DEPTH} deep")));
        }
        Ok(Val { k: K::Obj(Rc::new(members)), at: None, depth })
    }

    /// The record (or an element of it) at record pointer `at`.
    fn from_record(v: &Value, at: &str) -> Val {
        let here = Some(Rc::from(at));
        let (k, depth) = match v {
            Value::Null => (K::Null, 0),
            Value::Bool(b) => (K::Bool(*b), 0),
            Value::Number(n) => (K::Num(Num::Text(Rc::from(n.as_str()))), 0),
            Value::String(s) => (K::Str(Rc::from(s.as_str())), 0),
            Value::Array(a) => {
                let items: Vec<Val> =
                    a.iter().enumerate().map(|(i, x)| Val::from_record(x, &format!("{at}/{i}"))).collect();
                let d = 1 + items.iter().map(|v| v.depth).max().unwrap_or(0);
                (K::Arr(Rc::new(items)), d)
            }
            Value::Object(m) => {
                let members: BTreeMap<Rc<str>, Val> = m
                    .iter()
                    .map(|(k, x)| {
                        (Rc::from(k.as_str()), Val::from_record(x, &format!("{at}/{}", escape_token(k))))
                    })
                    .collect();
                let d = 1 + members.values().map(|v| v.depth).max().unwrap_or(0);
                (K::Obj(Rc::new(members)), d)
            }
        };
        Val { k, at: here, depth }
    }

    /// The hub's document for an output value.
    fn to_value(&self) -> Result<Value, String> {
        Ok(match &self.k {
            K::Null => Value::Null,
            K::Bool(b) => Value::Bool(*b),
            K::Num(n) => {
                let text = n.text();
                Value::Number(
                    Number::parse(&text).ok_or_else(|| format!("`{text}` is not JSON number text"))?,
                )
            }
            K::Str(s) => Value::String(s.to_string()),
            K::Arr(a) => Value::Array(a.iter().map(Val::to_value).collect::<Result<_, _>>()?),
            K::Obj(o) => Value::Object(
                o.iter().map(|(k, v)| Ok((k.to_string(), v.to_value()?))).collect::<Result<_, String>>()?,
            ),
        })
    }

    fn type_name(&self) -> &'static str {
        match self.k {
            K::Null => "null",
            K::Bool(_) => "boolean",
            K::Num(_) => "number",
            K::Str(_) => "string",
            K::Arr(_) => "array",
            K::Obj(_) => "object",
        }
    }

    fn rank(&self) -> u8 {
        match self.k {
            K::Null => 0,
            K::Bool(false) => 1,
            K::Bool(true) => 2,
            K::Num(_) => 3,
            K::Str(_) => 4,
            K::Arr(_) => 5,
            K::Obj(_) => 6,
        }
    }

    /// jq's order: null < false < true < numbers < strings < arrays < objects; objects by
    /// their sorted keys, then their values.
    fn order(&self, other: &Val) -> Ordering {
        note(1, 0);
        match (&self.k, &other.k) {
            (K::Num(a), K::Num(b)) => a.cmp(b),
            (K::Str(a), K::Str(b)) => a.cmp(b),
            (K::Arr(a), K::Arr(b)) => a
                .iter()
                .zip(b.iter())
                .map(|(x, y)| x.order(y))
                .find(|o| o.is_ne())
                .unwrap_or(a.len().cmp(&b.len())),
            (K::Obj(a), K::Obj(b)) => a.keys().cmp(b.keys()).then_with(|| {
                a.values()
                    .zip(b.values())
                    .map(|(x, y)| x.order(y))
                    .find(|o| o.is_ne())
                    .unwrap_or(Ordering::Equal)
            }),
            _ => self.rank().cmp(&other.rank()),
        }
    }

    /// JSON text, numbers as written or computed.
    fn write_json(&self, out: &mut String) {
        match &self.k {
            K::Null => out.push_str("null"),
            K::Bool(b) => out.push_str(if *b { "true" } else { "false" }),
            K::Num(n) => out.push_str(&n.text()),
            K::Str(s) => out.push_str(&serde_json::to_string(&**s).unwrap_or_default()),
            K::Arr(a) => {
                out.push('[');
                for (i, v) in a.iter().enumerate() {
                    if i > 0 {
                        out.push(',');
                    }
                    v.write_json(out);
                }
                out.push(']');
            }
            K::Obj(o) => {
                out.push('{');
                for (i, (k, v)) in o.iter().enumerate() {
                    if i > 0 {
                        out.push(',');
                    }
                    out.push_str(&serde_json::to_string(&**k).unwrap_or_default());
                    out.push(':');
                    v.write_json(out);
                }
                out.push('}');
            }
        }
    }

    fn json(&self) -> Result<String, JError> {
        let mut s = String::new();
        self.write_json(&mut s);
        charge(1 + s.len() as u64 / 4096, s.len() as u64)?;
        Ok(s)
    }

    fn as_text(&self) -> Result<&Rc<str>, JError> {
        match &self.k {
            K::Str(s) => Ok(s),
            _ => Err(JError::typ(self.clone(), "string")),
        }
    }

    fn as_dec(&self) -> Result<BigDecimal, JError> {
        match &self.k {
            K::Num(n) => n.dec(),
            _ => Err(JError::typ(self.clone(), "number")),
        }
    }

    /// An integer index (`-1` counts from the end), if this is one.
    fn as_index(&self, len: usize) -> Option<usize> {
        let K::Num(n) = &self.k else { return None };
        let d = n.dec().ok()?;
        if !d.is_integer() {
            return None;
        }
        let i: i64 = dec_text(&d.with_scale(0)).parse().ok()?;
        let i = if i < 0 { i.checked_add(len as i64)? } else { i };
        usize::try_from(i).ok()
    }

    /// `[start, end)` of a slice of something `len` long (jq's `.[s:e]`).
    fn bounds(r: &jaq_core::val::Range<&Val>, len: usize) -> Result<(usize, usize), JError> {
        let bound = |b: Option<&&Val>, default: usize| -> Result<usize, JError> {
            match b {
                None => Ok(default),
                Some(v) if matches!(v.k, K::Null) => Ok(default),
                Some(v) => {
                    mark(v);
                    let d = v.as_dec()?.with_scale_round(0, RoundingMode::Floor);
                    let i: i128 = dec_text(&d).parse().map_err(|_| JError::typ((*v).clone(), "integer"))?;
                    let i = if i < 0 { i + len as i128 } else { i };
                    Ok(i.clamp(0, len as i128) as usize)
                }
            }
        };
        let s = bound(r.start.as_ref(), 0)?;
        let e = bound(r.end.as_ref(), len)?;
        Ok((s, e.max(s)))
    }
}

impl fmt::Display for Val {
    /// JSON text, cut short: this is what error messages show of a value.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut s = String::new();
        self.write_json(&mut s);
        if s.len() > 120 {
            let cut = (0..=117).rev().find(|i| s.is_char_boundary(*i)).unwrap_or(0);
            s.truncate(cut);
            s.push('…');
        }
        f.write_str(&s)
    }
}

impl PartialEq for Val {
    fn eq(&self, other: &Val) -> bool {
        mark_deep(self);
        mark_deep(other);
        self.order(other).is_eq()
    }
}

impl PartialOrd for Val {
    fn partial_cmp(&self, other: &Val) -> Option<Ordering> {
        mark_deep(self);
        mark_deep(other);
        Some(self.order(other))
    }
}

impl From<bool> for Val {
    fn from(b: bool) -> Val {
        Val::new(K::Bool(b))
    }
}

impl From<isize> for Val {
    fn from(i: isize) -> Val {
        Val::new(K::Num(Num::Text(Rc::from(i.to_string()))))
    }
}

impl From<String> for Val {
    fn from(s: String) -> Val {
        note(1, s.len());
        Val::new(K::Str(Rc::from(s)))
    }
}

impl From<jaq_core::val::Range<Val>> for Val {
    fn from(r: jaq_core::val::Range<Val>) -> Val {
        let bound = |b: Option<Val>| b.unwrap_or(Val::new(K::Null));
        let m = BTreeMap::from([(Rc::from("start"), bound(r.start)), (Rc::from("end"), bound(r.end))]);
        Val::obj(m).unwrap_or(Val::new(K::Null))
    }
}

impl FromIterator<Val> for Val {
    /// `[f]`: collects until the budget runs out (then the run has failed and the value is
    /// never seen).
    fn from_iter<I: IntoIterator<Item = Val>>(iter: I) -> Val {
        let mut items = Vec::new();
        for v in iter {
            if charge(1, 8).is_err() {
                return Val::new(K::Null);
            }
            items.push(v);
        }
        Val::arr(items).unwrap_or(Val::new(K::Null))
    }
}

fn math_err(l: Val, op: jaq_core::ops::Math, r: Val) -> JError {
    JError::math(l, op, r)
}

impl std::ops::Add for Val {
    type Output = ValR;
    fn add(self, r: Val) -> ValR {
        use jaq_core::ops::Math::Add;
        match (&self.k, &r.k) {
            (K::Null, _) => {
                mark(&self);
                Ok(r)
            }
            (_, K::Null) => {
                mark(&r);
                Ok(self)
            }
            (K::Num(a), K::Num(b)) => {
                let (a, b) = operands(&self, &r, a, b)?;
                aligned_ok(&a, &b)?;
                dec_val(a + b)
            }
            (K::Str(a), K::Str(b)) => {
                mark(&self);
                mark(&r);
                Val::str(format!("{a}{b}"))
            }
            (K::Arr(a), K::Arr(b)) => Val::arr(a.iter().chain(b.iter()).cloned().collect()),
            (K::Obj(a), K::Obj(b)) => {
                let mut m = (**a).clone();
                m.extend(b.iter().map(|(k, v)| (k.clone(), v.clone())));
                Val::obj(m)
            }
            _ => Err(math_err(self, Add, r)),
        }
    }
}

impl std::ops::Sub for Val {
    type Output = ValR;
    fn sub(self, r: Val) -> ValR {
        use jaq_core::ops::Math::Sub;
        match (&self.k, &r.k) {
            (K::Num(a), K::Num(b)) => {
                let (a, b) = operands(&self, &r, a, b)?;
                aligned_ok(&a, &b)?;
                dec_val(a - b)
            }
            (K::Arr(a), K::Arr(b)) => {
                charge(a.len() as u64 * b.len() as u64 / 64, 0)?;
                Val::arr(a.iter().filter(|x| !b.contains(x)).cloned().collect())
            }
            _ => Err(math_err(self, Sub, r)),
        }
    }
}

/// `{a} * {b}`: `b` merged into `a`, objects merged recursively.
fn deep_merge(a: &BTreeMap<Rc<str>, Val>, b: &BTreeMap<Rc<str>, Val>) -> ValR {
    let mut m = a.clone();
    for (k, v) in b {
        let merged = match (m.get(k).map(|x| &x.k), &v.k) {
            (Some(K::Obj(x)), K::Obj(y)) => deep_merge(x, y)?,
            _ => v.clone(),
        };
        m.insert(k.clone(), merged);
    }
    Val::obj(m)
}

impl std::ops::Mul for Val {
    type Output = ValR;
    fn mul(self, r: Val) -> ValR {
        use jaq_core::ops::Math::Mul;
        match (&self.k, &r.k) {
            (K::Num(a), K::Num(b)) => {
                let (a, b) = operands(&self, &r, a, b)?;
                if a.digits() + b.digits() > MAX_DIGITS {
                    return Err(too_big());
                }
                dec_val(a * b)
            }
            (K::Str(s), K::Num(_)) | (K::Num(_), K::Str(s)) => {
                mark(&self);
                mark(&r);
                let n = if matches!(self.k, K::Num(_)) { &self } else { &r };
                // jq: "ab" * 3 is "ababab"; zero or less gives null.
                let times = n.as_dec()?.with_scale_round(0, RoundingMode::Ceiling);
                if times <= BigDecimal::zero() {
                    return Ok(Val::new(K::Null));
                }
                let times: u64 = dec_text(&times).parse().map_err(|_| too_big())?;
                if times.saturating_mul(s.len() as u64) > MAX_BYTES {
                    return Err(over(format!("the expression built more than {} MiB", MAX_BYTES >> 20)));
                }
                Val::str(s.repeat(times as usize))
            }
            (K::Obj(a), K::Obj(b)) => deep_merge(a, b),
            _ => Err(math_err(self, Mul, r)),
        }
    }
}

impl std::ops::Div for Val {
    type Output = ValR;
    fn div(self, r: Val) -> ValR {
        use jaq_core::ops::Math::Div;
        match (&self.k, &r.k) {
            (K::Num(a), K::Num(b)) => {
                let (a, b) = operands(&self, &r, a, b)?;
                dec_val(exact_div(&a, &b)?)
            }
            (K::Str(a), K::Str(b)) => {
                mark(&self);
                mark(&r);
                split(a, b)
            }
            _ => Err(math_err(self, Div, r)),
        }
    }
}

impl std::ops::Rem for Val {
    type Output = ValR;
    fn rem(self, r: Val) -> ValR {
        use jaq_core::ops::Math::Rem;
        match (&self.k, &r.k) {
            (K::Num(a), K::Num(b)) => {
                let (a, b) = operands(&self, &r, a, b)?;
                if !a.is_integer() || !b.is_integer() {
                    return Err(JError::str(format!(
                        "{} % {}: `%` takes integers",
                        dec_text(&a),
                        dec_text(&b)
                    )));
                }
                if b.is_zero() {
                    return Err(JError::str("division by zero"));
                }
                aligned_ok(&a, &b)?;
                dec_val(a % b)
            }
            _ => Err(math_err(self, Rem, r)),
        }
    }
}

impl std::ops::Neg for Val {
    type Output = ValR;
    fn neg(self) -> ValR {
        mark(&self);
        match &self.k {
            K::Num(n) => {
                let d = n.dec()?;
                dec_val(-d)
            }
            _ => Err(JError::typ(self.clone(), "number")),
        }
    }
}

fn split(s: &str, sep: &str) -> ValR {
    charge(1 + s.len() as u64 / 4096, 0)?;
    let parts: Vec<Val> = if s.is_empty() {
        Vec::new()
    } else if sep.is_empty() {
        s.chars().map(|c| Val::str(c.to_string())).collect::<Result<_, _>>()?
    } else {
        s.split(sep).map(Val::str).collect::<Result<_, _>>()?
    };
    Val::arr(parts)
}

impl ValT for Val {
    fn from_num(n: &str) -> ValR {
        // A literal written like JSON keeps its text (`1.50` stays `1.50`).
        if Number::parse(n).is_some() {
            return Ok(Val::new(K::Num(Num::Text(Rc::from(n)))));
        }
        dec_val(parse_dec(n)?)
    }

    fn from_map<I: IntoIterator<Item = (Self, Self)>>(iter: I) -> ValR {
        let mut m = BTreeMap::new();
        for (k, v) in iter {
            mark(&k);
            let key =
                k.as_text().map_err(|_| JError::str(format!("object keys must be strings, not {k}")))?;
            m.insert(key.clone(), v);
        }
        Val::obj(m)
    }

    fn key_values(self) -> Box<dyn Iterator<Item = Result<(Val, Val), JError>>> {
        match &self.k {
            // Lazily: taking the first element of a long array costs one step, not its length.
            K::Arr(a) => {
                let a = a.clone();
                Box::new(
                    (0..a.len()).map(move |i| charge(1, 0).map(|()| (Val::from(i as isize), a[i].clone()))),
                )
            }
            K::Obj(o) => {
                if let Err(e) = charge(o.len() as u64, 0) {
                    return box_once(Err(e));
                }
                let items: Vec<(Val, Val)> =
                    o.iter().map(|(k, v)| (Val::new(K::Str(k.clone())), v.clone())).collect();
                Box::new(items.into_iter().map(Ok))
            }
            _ => box_once(Err(JError::typ(self, "iterable (array or object)"))),
        }
    }

    fn values(self) -> Box<dyn Iterator<Item = ValR>> {
        // Visiting nothing is a step too: `{}[]` (jq's `empty`) cannot loop for free.
        if let Err(e) = charge(1, 0) {
            return box_once(Err(e));
        }
        match &self.k {
            // Lazily: taking the first element of a long array costs one step, not its length.
            K::Arr(a) => {
                let a = a.clone();
                Box::new((0..a.len()).map(move |i| charge(1, 0).map(|()| a[i].clone())))
            }
            K::Obj(o) => {
                if let Err(e) = charge(o.len() as u64, 0) {
                    return box_once(Err(e));
                }
                let items: Vec<Val> = o.values().cloned().collect();
                Box::new(items.into_iter().map(Ok))
            }
            _ => box_once(Err(JError::typ(self, "iterable (array or object)"))),
        }
    }

    fn index(self, index: &Val) -> ValR {
        charge(1, 0)?;
        mark_scalar(index);
        match (&self.k, &index.k) {
            (K::Null, _) => Ok(Val::new(K::Null)),
            (K::Obj(o), K::Str(k)) => Ok(o.get(k).cloned().unwrap_or(Val::new(K::Null))),
            (K::Arr(a), K::Num(_)) => {
                Ok(index.as_index(a.len()).and_then(|i| a.get(i)).cloned().unwrap_or(Val::new(K::Null)))
            }
            (K::Arr(_) | K::Str(_), K::Obj(o)) => {
                let (s, e) = (o.get("start"), o.get("end"));
                self.range(s..e)
            }
            _ => Err(JError::index(self.clone(), index.clone())),
        }
    }

    fn range(self, range: jaq_core::val::Range<&Val>) -> ValR {
        charge(1, 0)?;
        match &self.k {
            K::Null => Ok(self),
            K::Arr(a) => {
                let (s, e) = Val::bounds(&range, a.len())?;
                charge((e.saturating_sub(s)) as u64 / 64, 0)?;
                Val::arr(a[s..e].to_vec())
            }
            K::Str(t) => {
                mark(&self);
                // Slicing walks the whole text: charged by its length, not as one step.
                charge(t.len() as u64 / 64, 0)?;
                let chars: Vec<char> = t.chars().collect();
                let (s, e) = Val::bounds(&range, chars.len())?;
                Val::str(chars[s..e].iter().collect::<String>())
            }
            _ => Err(JError::typ(self, "array or string")),
        }
    }

    fn map_values<'a, I: Iterator<Item = ValX<'a, Self>>>(
        self,
        opt: Opt,
        f: impl Fn(Self) -> I,
    ) -> ValX<'a, Self> {
        charge(1, 0)?;
        match &self.k {
            K::Arr(a) => {
                let mut out = Vec::with_capacity(a.len());
                for v in a.iter() {
                    for y in f(v.clone()) {
                        charge(1, 8)?;
                        out.push(y?);
                    }
                }
                Ok(Val::arr(out)?)
            }
            K::Obj(o) => {
                let mut out = BTreeMap::new();
                for (k, v) in o.iter() {
                    charge(1, 0)?;
                    if let Some(y) = f(v.clone()).next() {
                        out.insert(k.clone(), y?);
                    }
                }
                Ok(Val::obj(out)?)
            }
            _ => opt.fail(self, |v| jaq_core::Exn::from(JError::typ(v, "iterable (array or object)"))),
        }
    }

    fn map_index<'a, I: Iterator<Item = ValX<'a, Self>>>(
        self,
        index: &Self,
        opt: Opt,
        f: impl Fn(Self) -> I,
    ) -> ValX<'a, Self> {
        charge(1, 0)?;
        mark_scalar(index);
        match (&self.k, &index.k) {
            (K::Arr(_) | K::Str(_), K::Obj(o)) => {
                let (s, e) = (o.get("start"), o.get("end"));
                self.map_range(s..e, opt, f)
            }
            (K::Obj(o), K::Str(k)) => {
                let mut m = (**o).clone();
                let old = m.remove(k).unwrap_or(Val::new(K::Null));
                if let Some(y) = f(old).next() {
                    m.insert(k.clone(), y?);
                }
                Ok(Val::obj(m)?)
            }
            (K::Null, K::Str(k)) => {
                let mut m = BTreeMap::new();
                if let Some(y) = f(Val::new(K::Null)).next() {
                    m.insert(k.clone(), y?);
                }
                Ok(Val::obj(m)?)
            }
            (K::Arr(_) | K::Null, K::Num(_)) => {
                let mut v = match &self.k {
                    K::Arr(a) => (**a).clone(),
                    _ => Vec::new(),
                };
                let Some(i) = index.as_index(v.len()) else {
                    return opt.fail(self.clone(), |_| {
                        jaq_core::Exn::from(JError::str(format!("index {index} out of bounds")))
                    });
                };
                // As jq: setting past the end pads with nulls (charged before building them).
                if i >= v.len() {
                    charge(1, 8u64.saturating_mul((i - v.len()) as u64 + 1))?;
                    v.resize(i + 1, Val::new(K::Null));
                }
                match f(v[i].clone()).next() {
                    Some(y) => v[i] = y?,
                    None => {
                        v.remove(i);
                    }
                }
                Ok(Val::arr(v)?)
            }
            _ => opt.fail(self.clone(), |v| jaq_core::Exn::from(JError::index(v, index.clone()))),
        }
    }

    fn map_range<'a, I: Iterator<Item = ValX<'a, Self>>>(
        self,
        range: jaq_core::val::Range<&Self>,
        opt: Opt,
        f: impl Fn(Self) -> I,
    ) -> ValX<'a, Self> {
        charge(1, 0)?;
        match &self.k {
            K::Arr(a) => {
                let (s, e) = Val::bounds(&range, a.len())?;
                let slice = Val::arr(a[s..e].to_vec())?;
                let y = match f(slice).next() {
                    Some(y) => y?,
                    None => Val::arr(Vec::new())?,
                };
                let K::Arr(ys) = &y.k else {
                    return Err(jaq_core::Exn::from(JError::typ(y.clone(), "array")));
                };
                let mut v = (**a).clone();
                v.splice(s..e, ys.iter().cloned());
                Ok(Val::arr(v)?)
            }
            _ => opt.fail(self, |v| jaq_core::Exn::from(JError::typ(v, "array"))),
        }
    }

    fn as_bool(&self) -> bool {
        mark_scalar(self);
        !matches!(self.k, K::Null | K::Bool(false))
    }

    fn into_string(self) -> Self {
        mark_deep(&self);
        let text = match &self.k {
            K::Str(s) => s.clone(),
            _ => {
                let mut s = String::new();
                self.write_json(&mut s);
                Rc::from(s)
            }
        };
        note(1, text.len());
        Val::new(K::Str(text))
    }
}

// ---------------------------------------------------------------------------------------------
// Native filters: each reads what it uses (see the module documentation).

type Native = jaq_core::native::Fun<D>;

fn length<'a>(cv: Cv<'a, D>) -> ValXs<'a, V<'a>> {
    let v = cv.1;
    bome((|| match &v.k {
        K::Null => Ok(Val::from(0isize)),
        K::Bool(_) => Err(JError::typ(v.clone(), "something with a length")),
        K::Num(n) => {
            mark(&v);
            dec_val(n.dec()?.abs())
        }
        K::Str(s) => {
            mark(&v);
            Ok(Val::from(s.chars().count() as isize))
        }
        K::Arr(a) => Ok(Val::from(a.len() as isize)),
        K::Obj(o) => Ok(Val::from(o.len() as isize)),
    })())
}

fn keys<'a>(cv: Cv<'a, D>) -> ValXs<'a, V<'a>> {
    let v = cv.1;
    bome(match &v.k {
        K::Obj(o) => o.keys().map(|k| Val::str(k.clone())).collect::<Result<Vec<_>, _>>().and_then(Val::arr),
        K::Arr(a) => Val::arr((0..a.len()).map(|i| Val::from(i as isize)).collect()),
        _ => Err(JError::typ(v.clone(), "object or array")),
    })
}

fn has<'a>(cv: Cv<'a, D>) -> ValXs<'a, V<'a>> {
    unary(cv, |v, k| {
        mark_scalar(&k);
        match (&v.k, &k.k) {
            (K::Obj(o), K::Str(s)) => Ok(Val::from(o.contains_key(s))),
            (K::Arr(a), K::Num(n)) => {
                let non_negative = !n.dec()?.is_negative();
                Ok(Val::from(non_negative && k.as_index(a.len()).is_some_and(|i| i < a.len())))
            }
            _ => Err(JError::index(v.clone(), k.clone())),
        }
    })
}

/// The type alone carries none of the value: not a read.
fn type_of<'a>(cv: Cv<'a, D>) -> ValXs<'a, V<'a>> {
    bome(Val::str(cv.1.type_name()))
}

fn tonumber<'a>(cv: Cv<'a, D>) -> ValXs<'a, V<'a>> {
    let v = cv.1;
    mark(&v);
    bome(match &v.k {
        K::Num(_) => Ok(Val::new(v.k.clone())),
        // Text that is a JSON number becomes that number, digit for digit.
        K::Str(s) => match Number::parse(s) {
            Some(_) => Ok(Val::new(K::Num(Num::Text(s.clone())))),
            None => Err(JError::str(format!("{v} is not a number written like 12.50 or 1e400"))),
        },
        _ => Err(JError::typ(v.clone(), "string or number")),
    })
}

fn tojson<'a>(cv: Cv<'a, D>) -> ValXs<'a, V<'a>> {
    mark_deep(&cv.1);
    bome(cv.1.json().and_then(Val::str))
}

fn text_fn<'a>(cv: Cv<'a, D>, f: fn(&str) -> String) -> ValXs<'a, V<'a>> {
    let v = cv.1;
    mark(&v);
    bome(v.as_text().and_then(|s| Val::str(f(s))))
}

fn downcase<'a>(cv: Cv<'a, D>) -> ValXs<'a, V<'a>> {
    text_fn(cv, str::to_ascii_lowercase)
}

fn upcase<'a>(cv: Cv<'a, D>) -> ValXs<'a, V<'a>> {
    text_fn(cv, str::to_ascii_uppercase)
}

/// A filter of a string and one string argument.
fn text2<'a>(cv: Cv<'a, D>, f: fn(&Rc<str>, &str) -> ValR) -> ValXs<'a, V<'a>> {
    unary(cv, move |v, arg| {
        mark(&v);
        mark(&arg);
        charge(1 + v.as_text().map_or(0, |s| s.len() as u64 / 4096), 0)?;
        f(v.as_text()?, arg.as_text()?)
    })
}

fn startswith<'a>(cv: Cv<'a, D>) -> ValXs<'a, V<'a>> {
    text2(cv, |s, p| Ok(Val::from(s.starts_with(p))))
}

fn endswith<'a>(cv: Cv<'a, D>) -> ValXs<'a, V<'a>> {
    text2(cv, |s, p| Ok(Val::from(s.ends_with(p))))
}

fn ltrimstr<'a>(cv: Cv<'a, D>) -> ValXs<'a, V<'a>> {
    text2(cv, |s, p| s.strip_prefix(p).map_or(Ok(Val::new(K::Str(s.clone()))), Val::str))
}

fn rtrimstr<'a>(cv: Cv<'a, D>) -> ValXs<'a, V<'a>> {
    text2(cv, |s, p| s.strip_suffix(p).map_or(Ok(Val::new(K::Str(s.clone()))), Val::str))
}

fn split_fn<'a>(cv: Cv<'a, D>) -> ValXs<'a, V<'a>> {
    text2(cv, |s, sep| split(s, sep))
}

fn join<'a>(cv: Cv<'a, D>) -> ValXs<'a, V<'a>> {
    unary(cv, |v, sep| {
        mark(&sep);
        let sep = sep.as_text()?;
        let K::Arr(items) = &v.k else { return Err(JError::typ(v.clone(), "array")) };
        let mut out = String::new();
        for (i, x) in items.iter().enumerate() {
            charge(1, 0)?;
            if i > 0 {
                out.push_str(sep);
            }
            mark(x);
            match &x.k {
                K::Null => {}
                K::Str(s) => out.push_str(s),
                K::Num(n) => out.push_str(&n.text()),
                K::Bool(b) => out.push_str(if *b { "true" } else { "false" }),
                _ => return Err(JError::str(format!("cannot join {x}"))),
            }
            if out.len() as u64 > MAX_BYTES {
                return Err(over(format!("the expression built more than {} MiB", MAX_BYTES >> 20)));
            }
        }
        Val::str(out)
    })
}

/// The elements of an array, all read (ordering looks at every one).
fn sorted(v: &Val) -> Result<Vec<Val>, JError> {
    let K::Arr(a) = &v.k else { return Err(JError::typ(v.clone(), "array")) };
    let n = a.len() as u64;
    charge(1 + n * (64 - n.leading_zeros() as u64), 8 * n)?;
    a.iter().for_each(mark_deep);
    let mut items = (**a).clone();
    items.sort_by(Val::order);
    Ok(items)
}

fn sort<'a>(cv: Cv<'a, D>) -> ValXs<'a, V<'a>> {
    bome(sorted(&cv.1).and_then(Val::arr))
}

fn unique<'a>(cv: Cv<'a, D>) -> ValXs<'a, V<'a>> {
    bome(sorted(&cv.1).and_then(|mut v| {
        v.dedup_by(|a, b| a.order(b).is_eq());
        Val::arr(v)
    }))
}

fn min<'a>(cv: Cv<'a, D>) -> ValXs<'a, V<'a>> {
    bome(sorted(&cv.1).map(|v| v.into_iter().next().unwrap_or(Val::new(K::Null))))
}

fn max<'a>(cv: Cv<'a, D>) -> ValXs<'a, V<'a>> {
    bome(sorted(&cv.1).map(|v| v.into_iter().next_back().unwrap_or(Val::new(K::Null))))
}

fn reverse<'a>(cv: Cv<'a, D>) -> ValXs<'a, V<'a>> {
    let v = cv.1;
    bome(match &v.k {
        K::Arr(a) => Val::arr(a.iter().rev().cloned().collect()),
        K::Str(s) => {
            mark(&v);
            Val::str(s.chars().rev().collect::<String>())
        }
        K::Null => Val::arr(Vec::new()),
        _ => Err(JError::typ(v.clone(), "array or string")),
    })
}

fn rounded<'a>(cv: Cv<'a, D>, mode: RoundingMode) -> ValXs<'a, V<'a>> {
    mark(&cv.1);
    bome(cv.1.as_dec().and_then(|d| dec_val(d.with_scale_round(0, mode))))
}

fn floor<'a>(cv: Cv<'a, D>) -> ValXs<'a, V<'a>> {
    rounded(cv, RoundingMode::Floor)
}

fn ceil<'a>(cv: Cv<'a, D>) -> ValXs<'a, V<'a>> {
    rounded(cv, RoundingMode::Ceiling)
}

fn round<'a>(cv: Cv<'a, D>) -> ValXs<'a, V<'a>> {
    rounded(cv, RoundingMode::HalfUp)
}

/// The elements of the input array with the outputs of `f` on each, sorted by those outputs
/// (stably): for `sort_by(f)` and its kin. Only the outputs of `f` are compared, so only what
/// `f` picks is read, not the whole elements.
fn keyed<'a>(mut cv: Cv<'a, D>) -> Result<Vec<(Vec<Val>, Val)>, jaq_core::Exn<'a, Val>> {
    let (f, fc) = cv.0.pop_fun();
    let K::Arr(a) = &cv.1.k else { return Err(JError::typ(cv.1.clone(), "array").into()) };
    let mut out = Vec::with_capacity(a.len());
    for x in a.iter() {
        let keys: Vec<Val> = f.run((fc.clone(), x.clone())).collect::<Result<_, _>>()?;
        keys.iter().for_each(mark_deep);
        out.push((keys, x.clone()));
    }
    let n = out.len() as u64;
    charge(1 + n * (64 - n.leading_zeros() as u64), 8 * n)?;
    let cmp = |a: &[Val], b: &[Val]| {
        a.iter().zip(b).map(|(x, y)| x.order(y)).find(|o| o.is_ne()).unwrap_or(a.len().cmp(&b.len()))
    };
    out.sort_by(|(a, _), (b, _)| cmp(a, b));
    Ok(out)
}

/// `keyed`'s elements in runs of equal keys.
fn groups(keyed: Vec<(Vec<Val>, Val)>) -> Vec<Vec<Val>> {
    let mut out: Vec<(Vec<Val>, Vec<Val>)> = Vec::new();
    for (k, x) in keyed {
        match out.last_mut() {
            Some((last, xs))
                if last.len() == k.len() && last.iter().zip(&k).all(|(a, b)| a.order(b).is_eq()) =>
            {
                xs.push(x)
            }
            _ => out.push((k, vec![x])),
        }
    }
    out.into_iter().map(|(_, xs)| xs).collect()
}

fn sort_by<'a>(cv: Cv<'a, D>) -> ValXs<'a, V<'a>> {
    match keyed(cv) {
        Ok(k) => bome(Val::arr(k.into_iter().map(|(_, x)| x).collect())),
        Err(e) => box_once(Err(e)),
    }
}

fn min_by<'a>(cv: Cv<'a, D>) -> ValXs<'a, V<'a>> {
    match keyed(cv) {
        Ok(k) => bome(Ok(k.into_iter().next().map_or(Val::new(K::Null), |(_, x)| x))),
        Err(e) => box_once(Err(e)),
    }
}

fn max_by<'a>(cv: Cv<'a, D>) -> ValXs<'a, V<'a>> {
    match keyed(cv) {
        Ok(k) => bome(Ok(k.into_iter().next_back().map_or(Val::new(K::Null), |(_, x)| x))),
        Err(e) => box_once(Err(e)),
    }
}

fn group_by<'a>(cv: Cv<'a, D>) -> ValXs<'a, V<'a>> {
    match keyed(cv) {
        Ok(k) => bome(groups(k).into_iter().map(Val::arr).collect::<Result<Vec<_>, _>>().and_then(Val::arr)),
        Err(e) => box_once(Err(e)),
    }
}

fn unique_by<'a>(cv: Cv<'a, D>) -> ValXs<'a, V<'a>> {
    match keyed(cv) {
        Ok(k) => bome(Val::arr(groups(k).into_iter().filter_map(|g| g.into_iter().next()).collect())),
        Err(e) => box_once(Err(e)),
    }
}

fn natives() -> Vec<Native> {
    let plain: [(&'static str, jaq_core::RunPtr<D>); 20] = [
        ("length", length),
        ("keys", keys),
        ("type", type_of),
        ("tonumber", tonumber),
        ("tojson", tojson),
        ("ascii_downcase", downcase),
        ("ascii_upcase", upcase),
        ("sort", sort),
        ("unique", unique),
        ("min", min),
        ("max", max),
        ("reverse", reverse),
        ("floor", floor),
        ("ceil", ceil),
        ("round", round),
        ("has", has),
        ("startswith", startswith),
        ("endswith", endswith),
        ("ltrimstr", ltrimstr),
        ("rtrimstr", rtrimstr),
    ];
    let one_arg = ["has", "startswith", "endswith", "ltrimstr", "rtrimstr"];
    let mut out: Vec<Native> = plain
        .into_iter()
        .map(|(name, run)| native::run::<D>((name, native::v(usize::from(one_arg.contains(&name))), run)))
        .collect();
    out.push(native::run::<D>(("split", native::v(1), split_fn)));
    out.push(native::run::<D>(("join", native::v(1), join)));
    let by: [(&'static str, jaq_core::RunPtr<D>); 5] = [
        ("sort_by", sort_by),
        ("min_by", min_by),
        ("max_by", max_by),
        ("group_by", group_by),
        ("unique_by", unique_by),
    ];
    out.extend(
        by.into_iter().map(|(name, run)| native::run::<D>((name, [jaq_core::Bind::Fun(())].into(), run))),
    );
    out.extend(jaq_core::funs::<D>());
    out
}

// ---------------------------------------------------------------------------------------------
// Compiling: the limits on the text and shape, then jaq's parser and compiler.

/// Line and column (1-based) of byte `offset` in `code`.
fn position(code: &str, offset: usize) -> String {
    let before = code.get(..offset).unwrap_or(code);
    let line = before.matches('\n').count() + 1;
    let col = before.rsplit('\n').next().map_or(0, |l| l.chars().count()) + 1;
    format!("line {line}, column {col}")
}

/// Where `part` (a slice of `code`, or something else) is, for an error message.
fn at_part(code: &str, part: &str) -> String {
    let (start, end) = (code.as_ptr() as usize, code.as_ptr() as usize + code.len());
    let p = part.as_ptr() as usize;
    if part.is_empty() && p == end {
        return "at the end".into();
    }
    if (start..end).contains(&p) { format!("at {}", position(code, p - start)) } else { String::new() }
}

/// How many outputs a term can give per input by its shape (iterating a value counts one:
/// those are charged as they run); `Err` for what the sandbox refuses.
fn fan(t: &load::parse::Term<&str>) -> Result<u64, String> {
    use load::lex::StrPart;
    use load::parse::{BinaryOp, Term};
    let prod = |ts: &mut dyn Iterator<Item = &Term<&str>>| -> Result<u64, String> {
        let mut n = 1u64;
        for t in ts {
            n = n.saturating_mul(fan(t)?);
        }
        Ok(n)
    };
    let n = match t {
        Term::Id | Term::Recurse | Term::Num(_) | Term::Var(_) | Term::Break(_) => 1,
        Term::Str(_, parts) => prod(&mut parts.iter().filter_map(|p| match p {
            StrPart::Term(t) => Some(t),
            _ => None,
        }))?,
        Term::Arr(inner) => {
            if let Some(t) = inner {
                fan(t)?;
            }
            1
        }
        Term::Obj(entries) => {
            prod(&mut entries.iter().flat_map(|(k, v)| std::iter::once(k).chain(v.iter())))?
        }
        Term::Neg(t) | Term::Label(_, t) => fan(t)?,
        Term::BinOp(l, op, r) => {
            let (l, r) = (fan(l)?, fan(r)?);
            match op {
                BinaryOp::Comma | BinaryOp::Alt => l.saturating_add(r),
                BinaryOp::Pipe(Some(p)) => l.saturating_mul(r).saturating_mul(pattern_fan(p)?),
                _ => l.saturating_mul(r),
            }
        }
        Term::Fold(_, xs, p, args) => {
            let xs = fan(xs)?.saturating_mul(pattern_fan(p)?);
            let outs: Vec<u64> = args.iter().map(fan).collect::<Result<_, _>>()?;
            // An update giving several values would branch the fold at every element.
            if outs.get(1).is_some_and(|u| *u > 1) {
                return Err("the update of `reduce`/`foreach` must give one value".into());
            }
            let init = outs.first().copied().unwrap_or(1);
            let extract = outs.get(2).copied().unwrap_or(1);
            init.saturating_mul(xs).saturating_mul(extract)
        }
        Term::TryCatch(t, c) => fan(t)?.saturating_add(c.as_deref().map(fan).transpose()?.unwrap_or(0)),
        Term::IfThenElse(branches, els) => {
            let mut conds = 1u64;
            let mut outs = els.as_deref().map(fan).transpose()?.unwrap_or(1);
            // Each value of a condition runs one branch: the widest one bounds the outputs.
            for (c, b) in branches {
                conds = conds.saturating_mul(fan(c)?);
                outs = outs.max(fan(b)?);
            }
            conds.saturating_mul(outs)
        }
        Term::Def(..) => return Err("`def` is not allowed in an expression (write a Rust Translator)".into()),
        Term::Call(_, args) => prod(&mut args.iter())?,
        Term::Path(t, path) => {
            use jaq_core::path::Part;
            let mut n = fan(t)?;
            for (part, _) in &path.0 {
                let m = match part {
                    Part::Index(i) => fan(i)?,
                    Part::Range(a, b) => {
                        let a = a.as_ref().map(fan).transpose()?.unwrap_or(1);
                        let b = b.as_ref().map(fan).transpose()?.unwrap_or(1);
                        a.saturating_mul(b)
                    }
                };
                n = n.saturating_mul(m);
            }
            n
        }
    };
    if n > MAX_FAN {
        return Err(format!("the expression can give more than {MAX_FAN} values by its shape alone"));
    }
    Ok(n)
}

/// How many bindings a destructuring pattern can make per value (`{(.a, .b): $x}` makes two).
fn pattern_fan(p: &load::parse::Pattern<&str>) -> Result<u64, String> {
    use load::parse::Pattern;
    let mut n = 1u64;
    match p {
        Pattern::Var(_) => {}
        Pattern::Arr(ps) => {
            for p in ps {
                n = n.saturating_mul(pattern_fan(p)?);
            }
        }
        Pattern::Obj(entries) => {
            for (k, p) in entries {
                n = n.saturating_mul(fan(k)?).saturating_mul(pattern_fan(p)?);
            }
        }
    }
    Ok(n)
}

impl Expr {
    /// Compiles `code`, or says what is wrong with it (jaq's message and position, or the
    /// sandbox's limit).
    pub(super) fn compile(code: &str) -> Result<Expr, String> {
        if code.len() > MAX_LEN {
            return Err(format!("the expression is {} bytes; at most {MAX_LEN} are allowed", code.len()));
        }
        let mut depth = 0usize;
        for (i, b) in code.bytes().enumerate() {
            match b {
                b'(' | b'[' | b'{' => {
                    depth += 1;
                    if depth > MAX_NESTING {
                        return Err(format!(
                            "brackets nested more than {MAX_NESTING} deep at {}",
                            position(code, i)
                        ));
                    }
                }
                b')' | b']' | b'}' => depth = depth.saturating_sub(1),
                _ => {}
            }
        }
        let ops = code.bytes().filter(|b| b"|,+-*/%=<>!?".contains(b)).count()
            + code
                .split(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
                .filter(|w| KEYWORDS.contains(w))
                .count();
        if ops > MAX_OPS {
            return Err(format!(
                "the expression has {ops} operators and keywords; at most {MAX_OPS} are allowed \
                 (write a Rust Translator for this much logic)"
            ));
        }
        let prelude = load::parse(DEFS, |p| p.defs()).unwrap_or_default();
        let arena = Arena::default();
        let modules = Loader::new(prelude).load(&arena, File { code, path: () }).map_err(|errs| {
            let mut msgs = Vec::new();
            for (_, e) in errs {
                match e {
                    load::Error::Lex(es) => {
                        for (expect, part) in es {
                            msgs.push(format!("expected {} {}", expect.as_str(), at_part(code, part)));
                        }
                    }
                    load::Error::Parse(es) => {
                        for (expect, part) in es {
                            let found = if part.is_empty() { "nothing".into() } else { format!("`{part}`") };
                            msgs.push(format!(
                                "expected {}, found {found} {}",
                                expect.as_str(),
                                at_part(code, part)
                            ));
                        }
                    }
                    load::Error::Io(es) => {
                        for (path, _) in es {
                            msgs.push(format!("`{path}`: modules cannot be loaded {}", at_part(code, path)));
                        }
                    }
                }
            }
            format!("the expression does not parse: {}", msgs.join("; "))
        })?;
        // The same text parses to the same term: walked for what the sandbox refuses.
        if let Some(term) = load::parse(code, |p| p.term()) {
            fan(&term)?;
        }
        let filter = jaq_core::Compiler::default().with_funs(natives()).compile(modules).map_err(|errs| {
            let mut msgs = Vec::new();
            for (_, es) in errs {
                for (name_at, undefined) in es {
                    // `ltrimstr/2`: the name may exist with another number of arguments.
                    let name = match undefined {
                        jaq_core::compile::Undefined::Filter(n) if n > 0 => format!("{name_at}/{n}"),
                        _ => name_at.to_owned(),
                    };
                    msgs.push(format!("unknown {} `{name}` {}", undefined.as_str(), at_part(code, name_at)));
                }
            }
            format!("{} (the sandbox has no input, env, files or clock)", msgs.join("; "))
        })?;
        Ok(Expr { code: code.to_owned(), filter: Arc::new(filter) })
    }

    /// Runs the expression on `record` (at record pointer `rec_at`) for core field `out_ptr`:
    /// its first output, `None` when it gives none. What it read goes into `consumed`.
    pub(super) fn eval(
        &self,
        record: &Value,
        rec_at: &str,
        out_ptr: &str,
        consumed: &mut HashSet<String>,
    ) -> Result<Option<Value>, Rejection> {
        RUN.with(|r| *r.borrow_mut() = Run::default());
        let input = Val::from_record(record, rec_at);
        let first = {
            let ctx = Ctx::<D>::new(&self.filter.lut, Vars::new([]));
            let mut outs = self.filter.id.run((ctx, input));
            outs.next()
        };
        let result = match first {
            None => Ok(None),
            Some(Ok(v)) => {
                mark_deep(&v);
                v.to_value().map(Some)
            }
            Some(Err(exn)) => Err(match exn.get_err() {
                Ok(e) => match e.into_val() {
                    Val { k: K::Str(s), .. } => s.to_string(),
                    v => v.to_string(),
                },
                Err(_) => "the expression stopped without a value".into(),
            }),
        };
        let run = RUN.with(|r| std::mem::take(&mut *r.borrow_mut()));
        let failed = |why: String| {
            reject(rec_at, "expr", format!("the `expr` of core field `{out_ptr}` failed: {why}"))
        };
        if let Some(why) = run.over {
            return Err(failed(why));
        }
        let value = result.map_err(failed)?;
        consumed.extend(run.reads.iter().map(|p| p.to_string()));
        Ok(value)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rec(text: &str) -> Value {
        Value::parse(text.as_bytes()).expect("json")
    }

    /// Runs `code` on `record`: the output's JSON text and the pointers read, sorted.
    fn run(code: &str, record: &str) -> Result<(Option<String>, Vec<String>), Rejection> {
        let e = Expr::compile(code).expect("compiles");
        let mut consumed = HashSet::new();
        let out = e.eval(&rec(record), "", "/x", &mut consumed)?;
        let mut reads: Vec<String> = consumed.into_iter().collect();
        reads.sort();
        Ok((out.map(|v| v.to_json()), reads))
    }

    fn value(code: &str, record: &str) -> String {
        run(code, record).expect("runs").0.expect("a value")
    }

    fn error(code: &str, record: &str) -> String {
        let r = run(code, record).expect_err("fails");
        assert_eq!(r.rule, "expr");
        r.message
    }

    #[test]
    fn arithmetic_is_exact_decimal() {
        assert_eq!(value(".a + .b", r#"{"a": 0.1, "b": 0.2}"#), "0.3");
        assert_eq!(value(".amount * 2", r#"{"amount": 1.25}"#), "2.50");
        assert_eq!(value(".id + 1", r#"{"id": 12345678901234567890}"#), "12345678901234567891");
        assert_eq!(value(".n + 1", r#"{"n": 1E400}"#), format!("1{}1", "0".repeat(399)));
        assert_eq!(value(".n * 1", r#"{"n": 1E400}"#), "1E400");
        assert_eq!(value(".a / 4", r#"{"a": 1}"#), "0.25");
        assert_eq!(value("-.a", r#"{"a": 1.50}"#), "-1.50");
        assert_eq!(value(".a - .b", r#"{"a": 10.00, "b": 0.005}"#), "9.995");
        assert!(error("1 / 3", "{}").contains("no exact decimal"));
        assert!(error(".a / 0", r#"{"a": 1}"#).contains("division by zero"));
        assert_eq!(
            value(
                "[.lines[] | .price * .qty] | add",
                r#"{"lines": [{"price": 19.99, "qty": 3}, {"price": 0.01, "qty": 1}]}"#
            ),
            "59.98"
        );
        assert_eq!(value(".a == 1", r#"{"a": 1.0}"#), "true");
        assert_eq!(value("[.[] | floor]", "[1.5, -1.5, 2]"), "[1,-2,2]");
    }

    #[test]
    fn untouched_numbers_keep_their_text() {
        assert_eq!(
            value(".", r#"{"a": 1.50, "b": 1E400, "c": -0.000000000000000000001}"#),
            r#"{"a":1.50,"b":1E400,"c":-0.000000000000000000001}"#
        );
        assert_eq!(value("[.[] | select(. > 1)]", "[1.50, 1E400, 0.5]"), "[1.50,1E400]");
        assert_eq!(value("1.50", "{}"), "1.50");
        assert_eq!(value(".a | tostring", r#"{"a": 1.10}"#), r#""1.10""#);
        assert_eq!(value(".a | tonumber", r#"{"a": "12.50"}"#), "12.50");
        assert_eq!(value("[.[] | .id] | max", r#"[{"id": 1296269}, {"id": 1296270}]"#), "1296270");
    }

    #[test]
    fn reads_are_what_the_expression_used() {
        let (out, reads) = run(".amount * 2", r#"{"amount": 1.25, "note": "x"}"#).expect("runs");
        assert_eq!((out.as_deref(), reads.as_slice()), (Some("2.50"), &["/amount".to_owned()][..]));
        // Passed over, not read: only `.b` reaches the output.
        let (_, reads) = run(".a | .b", r#"{"a": {"b": 1, "c": 2}}"#).expect("runs");
        assert_eq!(reads, ["/a/b"]);
        // A container reaching the output whole: everything below it.
        let (_, reads) = run(".a", r#"{"a": {"b": 1, "c": [2]}, "d": 3}"#).expect("runs");
        assert_eq!(reads, ["/a"]);
        // Tested by select: read; the picked element's name reaches the output.
        let (out, reads) = run(
            r#"first(.labels[] | select(.name | startswith("prio:"))) | .name"#,
            r#"{"labels": [{"id": 1, "name": "bug"}, {"id": 2, "name": "prio:high"}]}"#,
        )
        .expect("runs");
        assert_eq!(out.as_deref(), Some(r#""prio:high""#));
        assert_eq!(reads, ["/labels/0/name", "/labels/1/name"]);
        // Structure only (a type, the keys, a length of an array) is not a read.
        let (out, reads) =
            run("[(.a | type), (.b | keys), (.c | length)]", r#"{"a": 1, "b": {"k": 2}, "c": [3]}"#)
                .expect("runs");
        assert_eq!((out.as_deref(), reads.len()), (Some(r#"["number",["k"],1]"#), 0));
        // `max_by` compares only what its filter picks.
        let (out, reads) = run(
            "max_by(.created) | .id",
            r#"[{"id": 1296269, "created": "2026-11-20T14:05:41-07:00", "body": "a"},
                {"id": 1296270, "created": "2026-11-21T09:00:00-07:00", "body": "b"}]"#,
        )
        .expect("runs");
        assert_eq!(out.as_deref(), Some("1296270"));
        assert_eq!(reads, ["/0/created", "/1/created", "/1/id"]);
        // Inside `each`, pointers carry the element's prefix.
        let e = Expr::compile(".qty * .price").expect("compiles");
        let mut consumed = HashSet::new();
        let out = e.eval(&rec(r#"{"qty": 2, "price": 1.5, "sku": "A"}"#), "/lines/3", "/x", &mut consumed);
        assert_eq!(out.expect("runs").map(|v| v.to_json()).as_deref(), Some("3.0"));
        assert!(
            consumed.contains("/lines/3/qty") && consumed.contains("/lines/3/price") && consumed.len() == 2
        );
    }

    #[test]
    fn no_output_is_absent_and_errors_name_the_field() {
        assert_eq!(run(".a[] | select(. > 5)", r#"{"a": [1, 2]}"#).expect("runs").0, None);
        let r = run(r#"error("no total")"#, "{}").expect_err("fails");
        assert_eq!(r.message, "the `expr` of core field `/x` failed: no total");
        assert!(error(".a + 1", r#"{"a": "x"}"#).contains(r#"cannot calculate "x" + 1"#));
        assert_eq!(value(r#"try (.a + 1) catch "fallback""#, r#"{"a": "x"}"#), r#""fallback""#);
    }

    #[test]
    fn the_budget_ends_runaway_expressions_quickly() {
        let start = std::time::Instant::now();
        assert!(error("[range(1e9)]", "{}").contains("steps"));
        assert!(error("reduce range(1e9) as $x (0; . + 1)", "{}").contains("steps"));
        assert!(error(r#"reduce range(64) as $x ("ab"; . + .)"#, "{}").contains("MiB"));
        assert!(error(r#""ab" * 100000000"#, "{}").contains("MiB"));
        assert!(error("1E9999 * 1E9999", "{}").contains("digits"));
        assert!(error("1E9000 + 1E-9000", "{}").contains("digits"));
        assert!(error(".n * 1", r#"{"n": 1E99999}"#).contains("digits"));
        assert!(error(".n > 1", r#"{"n": 1E-99999999999999999999999}"#).contains("digits"));
        assert!(error("reduce range(100) as $x (2; . * .)", "{}").contains("digits"));
        assert!(error("reduce range(1000) as $x (0; [.])", "{}").contains("nested"));
        assert!(error(".[1e15] = 1", "[]").contains("MiB"));
        // A limit broken inside `try` still ends the run.
        assert!(error("try ([range(1e9)] | length) catch 0", "{}").contains("steps"));
        assert!(
            error(
                "[limit(1e9; .[] as $a | .[] as $b | .[] as $c | 1)]",
                &format!("[{}]", vec!["0"; 200].join(","))
            )
            .contains("steps")
        );
        assert!(start.elapsed() < std::time::Duration::from_secs(20), "{:?}", start.elapsed());
        // A huge number passing through is fine: only arithmetic on it is bounded.
        assert_eq!(value(".n", r#"{"n": 1E99999}"#), "1E99999");
    }

    #[test]
    fn compile_refuses_what_the_sandbox_does_not_allow() {
        let err = |code: &str| Expr::compile(code).expect_err("refused");
        assert!(err("def f: f; f").contains("`def`"));
        assert!(err("input").contains("unknown filter `input`"));
        assert!(err("$ENV.HOME").contains("unknown variable `$ENV`"));
        for name in
            ["env", "now", "halt", "debug", "stderr", "input_filename", "inputs", "repeat(.)", "recurse(.)"]
        {
            assert!(err(name).contains("unknown filter"), "{name}");
        }
        assert!(err(&".a + ".repeat(600)).contains("at most 2048"));
        assert!(err(&format!("{}1{}", "[".repeat(40), "]".repeat(40))).contains("nested"));
        assert!(err("(.,.) | ".repeat(11).trim_end_matches(" | ")).contains("1024"));
        assert!(err("reduce .[] as $x (0; ., .)").contains("one value"));
        let keys = format!(". as {{{}}} | $a", ["((.,.),(.,.)): $a"; 6].join(", "));
        assert!(err(&keys).contains("1024"), "{keys}");
        let e = err(".a | if . then 1 els 2 end");
        assert!(e.contains("does not parse") && e.contains("line 1, column"), "{e}");
        assert!(err("map(.a").contains("at the end"));
        assert!(
            err(r#".a | ltrimstr("x"; "y")"#).contains("unknown filter `ltrimstr/2` at line 1, column 6")
        );
        assert!(err(r#"include "x"; ."#).contains("modules cannot be loaded"));
        assert!(err(r#"import "x" as x; x::f"#).contains("modules cannot be loaded"));
    }

    #[test]
    fn deep_text_does_not_overflow_the_stack() {
        // The longest chains the limits let through, on a thread with a runtime's small stack
        // (in a debug build, whose frames are the largest).
        let chains = [
            "(try -.a | ".repeat(24) + &"- try 1 | ".repeat(9) + "1" + &")".repeat(24),
            "-".repeat(99) + "1",
            "1 + ".repeat(99) + "1",
            "try ".repeat(99) + "1",
            "[{a: [.a".repeat(10) + &"]}]".repeat(10),
            // The deepest value the budget lets an expression build, walked every way.
            "reduce range(255) as $x (0; [.]) | (.. |= .) | [..] | tojson | length".into(),
            "reduce range(255) as $x (0; {a: .}) | . == . and . < [.] | tostring".into(),
        ];
        let handle = std::thread::Builder::new()
            .stack_size(2 << 20)
            .spawn(move || {
                chains
                    .iter()
                    .map(|c| {
                        Expr::compile(c).map(|e| e.eval(&Value::Null, "", "/x", &mut HashSet::new()).is_ok())
                    })
                    .collect::<Vec<_>>()
            })
            .expect("thread");
        let results = handle.join().expect("no stack overflow");
        assert!(results.iter().all(|r| *r == Ok(true)), "{results:?}");
        assert!(Expr::compile(&("-".repeat(101) + "1")).expect_err("too many").contains("at most 100"));
        assert!(Expr::compile(&"try ".repeat(200)).is_err());
    }

    fn mapping(on_unmapped: &str, fields: serde_json::Value) -> Result<Mapping, Vec<MappingIssue>> {
        let spec = serde_json::json!({"name": "m", "version": "1", "message_type": "t", "type_version": "1",
            "on_unmapped": on_unmapped, "fields": fields});
        Mapping::compile(serde_json::from_value(spec).expect("spec"))
    }

    #[test]
    fn a_mapping_counts_what_its_expressions_read() {
        let m = mapping("reject", serde_json::json!({"/amount": {"expr": ".amount * 2"}})).expect("compiles");
        let record = rec(r#"{"amount": 1.25, "note": "x"}"#);
        let r = m.apply(&record).expect_err("/note is read by nothing");
        assert_eq!((r.field.as_deref(), r.rule.as_str()), (Some("/note"), "unmapped"));
        let m = mapping("ignore", serde_json::json!({"/amount": {"expr": ".amount * 2"}})).expect("compiles");
        let (body, fid) = m.apply(&record).expect("maps");
        assert_eq!(body.to_json(), r#"{"amount":2.50}"#);
        assert_eq!(
            (fid.mapped.as_slice(), fid.ignored.as_slice()),
            (&["/amount".to_owned()][..], &["/note".to_owned()][..])
        );
        // Inside `each`, on a Stripe-shaped invoice: every line's amount and quantity read.
        let m = mapping(
            "reject",
            serde_json::json!({
                "/id": {"from": "/id"},
                "/total": {"expr": "[.lines.data[] | .amount * .quantity] | add", "default": 0},
                "/lines": {"each": "/lines/data", "fields": {
                    "/label": {"expr": "if .description == null then \"(none)\" else .description end"}}}
            }),
        )
        .expect("compiles");
        let invoice = rec(r#"{"id": "in_1MtHbELkdIwHu7ixl4OzzPMv", "lines": {"data": [
            {"amount": 1099, "quantity": 2, "description": "T-shirt \u00e9t\u00e9"},
            {"amount": 1, "quantity": 12345678901234567890, "description": null}]}}"#);
        let (body, fid) = m.apply(&invoice).expect("maps");
        assert_eq!(
            body.to_json(),
            r#"{"id":"in_1MtHbELkdIwHu7ixl4OzzPMv","lines":[{"label":"T-shirt été"},{"label":"(none)"}],"total":12345678901234570088}"#
        );
        assert!(fid.extras.is_empty() && fid.ignored.is_empty() && fid.defaulted.is_empty());
        // No output: the default applies and is listed.
        let m = mapping(
            "ignore",
            serde_json::json!({"/first_big": {"expr": "first(.[] | select(. > 100))", "default": "none"}}),
        )
        .expect("compiles");
        let (body, fid) = m.apply(&rec(r#"{"a": 1, "b": 2}"#)).expect("maps");
        assert_eq!(
            (body.to_json().as_str(), fid.defaulted.as_slice()),
            (r#"{"first_big":"none"}"#, &["/first_big".to_owned()][..])
        );
    }

    #[test]
    fn a_bad_expression_is_refused_at_its_key() {
        let err = mapping("reject", serde_json::json!({"/a": {"expr": ".a |"}})).expect_err("does not parse");
        assert_eq!(err[0].at, ["fields", "/a", "expr"]);
        assert!(err[0].message.contains("expected term") && err[0].message.contains("at the end"), "{err:?}");
        let err = mapping("reject", serde_json::json!({"/a": {"expr": "now"}})).expect_err("no clock");
        assert!(err[0].message.contains("unknown filter `now`"), "{err:?}");
        let err = mapping("reject", serde_json::json!({"/a": {"expr": ".a", "from": "/a"}}))
            .expect_err("two sources");
        assert!(err[0].message.contains("exactly one of"), "{err:?}");
        let err = mapping("reject", serde_json::json!({"/a": {"expr": ".a", "convert": "string"}}))
            .expect_err("conversion");
        assert!(err[0].message.contains("apply to a `from` value"), "{err:?}");
        let r = mapping("reject", serde_json::json!({"/a": {"expr": ".a + 1"}}))
            .expect("compiles")
            .apply(&rec(r#"{"a": true}"#))
            .expect_err("a type error rejects");
        assert_eq!(r.rule, "expr");
        assert!(
            r.message.starts_with("the `expr` of core field `/a` failed: cannot calculate true + 1"),
            "{r:?}"
        );
    }

    #[test]
    fn the_linter_assumes_an_expression_may_read_its_whole_scope() {
        let input = JsonSchema::compile(serde_json::json!({"type": "object", "properties": {
            "amount": {"type": "number"}, "note": {"type": "string"},
            "lines": {"type": "array", "items": {"properties": {"qty": {}, "sku": {}}}}}}))
        .expect("schema");
        let leaves = input.declared_leaves();
        let can_exist = |p: &str| input.can_exist(p);
        let sides = LintSides {
            input: &can_exist,
            input_leaves: Some(&leaves),
            input_types: None,
            input_is: "the input",
            input_schema_is: "its schema",
            output: None,
            output_at: "",
            output_field_is: "field",
            output_required_by: "the output",
            output_is: "the output",
        };
        let inner = mapping(
            "reject",
            serde_json::json!({"/amount": {"from": "/amount"},
                "/lines": {"each": "/lines", "fields": {"/n": {"expr": ".qty * 2"}}}}),
        )
        .expect("compiles");
        let text: Vec<String> = inner.lint_sides(&sides).into_iter().map(|i| i.message).collect();
        assert_eq!(text.len(), 1, "{text:?}");
        assert!(text[0].starts_with("`/note` of the input is neither read"), "{text:?}");
        let whole = mapping("reject", serde_json::json!({"/total": {"expr": ".amount"}})).expect("compiles");
        assert!(whole.lint_sides(&sides).is_empty());
    }

    #[test]
    fn the_vetted_filters_behave_like_jq() {
        let r = r#"{"items": [{"k": "b", "n": 2}, {"k": "a", "n": 10}, {"k": "b", "n": 1.5}],
            "tags": ["x", "y"], "name": "  Ada  ", "m": {"a": 1, "b": null}, "neg": -3.50}"#;
        for (code, want) in [
            (".items | sort_by(.n) | map(.n)", "[1.5,2,10]"),
            (".items | group_by(.k) | map(map(.n))", "[[10],[2,1.5]]"),
            (".items | unique_by(.k) | map(.n)", "[10,2]"),
            (".items | min_by(.n) | .k", r#""b""#),
            (".m | to_entries | map(.key)", r#"["a","b"]"#),
            (".m | with_entries(select(.value != null))", r#"{"a":1}"#),
            (".tags | join(\", \")", r#""x, y""#),
            (r#""a,b" | split(",")"#, r#"["a","b"]"#),
            (r#".name | ltrimstr("  ") | ascii_downcase"#, r#""ada  ""#),
            (".m | has(\"b\")", "true"),
            (".tags | has(1), has(-1)", "true"),
            ("[.tags | has(-1)]", "[false]"),
            (".tags | .[3] = \"z\"", r#"["x","y",null,"z"]"#),
            ("null | .[1] = 1", "[null,1]"),
            (".m | del(.b)", r#"{"a":1}"#),
            (".m | map_values(. // 0)", r#"{"a":1,"b":0}"#),
            (".tags[1:]", r#"["y"]"#),
            (".tags[-1]", r#""y""#),
            (".missing // \"none\"", r#""none""#),
            (r#""n=\(.neg) \(.tags)""#, r#""n=-3.50 [\"x\",\"y\"]""#),
            (".neg | abs", "3.50"),
            ("[limit(2; .items[].n)]", "[2,10]"),
            ("[.items[].n] | any(. > 5), all(. > 5)", "true"),
            ("isempty(.tags[] | select(. == \"z\"))", "true"),
            (".neg | tostring", r#""-3.50""#),
            (".neg | round", "-4"),
            ("\"y\" | in({\"y\": 1})", "true"),
            ("[.items[].n] | add / 3", "4.5"),
            ("[.items[] | select(.k == \"b\") | .n] | add", "3.5"),
            (".items | length", "3"),
        ] {
            assert_eq!(value(code, r), want, "{code}");
        }
    }
}
