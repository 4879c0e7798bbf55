//! The small encoders a request needs, written out rather than taken from a URL crate so that
//! what goes on the wire is exactly what the module documents: percent-encoding of everything
//! outside RFC 3986's unreserved set, form bodies in bracket notation, and pointers read
//! through tokens split once at compile time.

use layer1_ingest::Rejection;
use layer1_ingest::json::{Value, escape_token, tokens};

const HEX: &[u8; 16] = b"0123456789ABCDEF";

/// RFC 3986 section 2.3: the only characters never encoded.
pub(super) fn is_unreserved(b: u8) -> bool {
    b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~')
}

/// Appends `s` with every byte outside the unreserved set as `%XX` (upper-case hex, of the
/// UTF-8 bytes). Used for path segments, query names and values, and form keys and values
/// alike: one rule, so a space is always `%20` (never `+`), and `/`, `?`, `#`, `&`, `=`, `%`,
/// `[` and `]` inside a value can never be read as structure.
pub(super) fn percent_encode_into(out: &mut String, s: &str) {
    for &b in s.as_bytes() {
        if is_unreserved(b) {
            out.push(char::from(b));
        } else {
            out.push('%');
            out.push(char::from(HEX[usize::from(b >> 4)]));
            out.push(char::from(HEX[usize::from(b & 0x0f)]));
        }
    }
}

/// `s`, percent-encoded (see [`percent_encode_into`]).
pub(super) fn percent_encode(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    percent_encode_into(&mut out, s);
    out
}

/// A JSON pointer split into its tokens once, at compile time: reading a value per message then
/// walks the document without parsing the pointer again.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct Ptr {
    /// The pointer as written (for rejections).
    pub(super) text: String,
    tokens: Vec<String>,
}

impl Ptr {
    /// `p` as a pointer below the root (`/id`); `None` for anything else, the root included
    /// (a path segment, a query value or a header is one scalar, never the whole message).
    pub(super) fn below_root(p: &str) -> Option<Ptr> {
        tokens(p).filter(|t| !t.is_empty()).map(|tokens| Ptr { text: p.to_owned(), tokens })
    }

    /// The value at this pointer in `doc` (RFC 6901, as [`Value::pointer`] reads it).
    pub(super) fn get<'v>(&self, doc: &'v Value) -> Option<&'v Value> {
        let mut cur = doc;
        for tok in &self.tokens {
            cur = match cur {
                Value::Object(m) => m.get(tok)?,
                Value::Array(a) => a.get(array_index(tok)?)?,
                _ => return None,
            };
        }
        Some(cur)
    }
}

/// RFC 6901 array index: `0` or digits without a leading zero.
fn array_index(tok: &str) -> Option<usize> {
    if tok.is_empty() || (tok.len() > 1 && tok.starts_with('0')) || !tok.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    tok.parse().ok()
}

/// The text of a scalar as it goes into a URL or a header: a string as it is, a number exactly
/// as written (`12345678901234567890.10` stays), a boolean as `true`/`false`. `None` for null,
/// objects and arrays.
pub(super) fn scalar_text(v: &Value) -> Option<&str> {
    match v {
        Value::String(s) => Some(s),
        Value::Number(n) => Some(n.as_str()),
        Value::Bool(true) => Some("true"),
        Value::Bool(false) => Some("false"),
        _ => None,
    }
}

/// `application/x-www-form-urlencoded` in bracket notation, as Stripe and most payment APIs
/// read it: `{"amount": 1234, "metadata": {"order_id": "7"}, "items": [{"sku": "A"}]}` is
/// `amount=1234&items[0][sku]=A&metadata[order_id]=7`.
///
/// - Members in the object's key order (the hub's objects keep keys sorted), arrays by index.
/// - Numbers exactly as written, booleans `true`/`false`.
/// - `null`, an empty object and an empty array are `key=` (the empty value): Stripe's way to
///   clear a field, and the only way the form can say the key is there at all.
/// - Every key token and value is percent-encoded as [`percent_encode_into`] does (a space is
///   `%20`); the brackets that give the structure are written literally, as Stripe's own
///   libraries do, so a `[` inside a key is `%5B` and cannot be mistaken for nesting.
///
/// The top level must be an object (a form is a list of named fields); `at` is the body's place
/// in the message, for the rejection.
pub(super) fn form_body(body: &Value, at: &str) -> Result<String, Rejection> {
    let Value::Object(m) = body else {
        let msg = format!("a form body must be an object of fields, not {}", body.kind_name());
        return Err(if at.is_empty() {
            Rejection::whole("type", msg)
        } else {
            Rejection::field(at, "type", msg)
        });
    };
    let mut out = String::new();
    let mut key = String::new();
    for (k, v) in m {
        key.clear();
        percent_encode_into(&mut key, k);
        form_pairs(&mut out, &mut key, v);
    }
    Ok(out)
}

/// Appends the pairs of `v` under the (already encoded) `key`; `key` is restored on return so
/// the caller can reuse its buffer for the next sibling.
fn form_pairs(out: &mut String, key: &mut String, v: &Value) {
    let restore = key.len();
    match v {
        Value::Object(m) if !m.is_empty() => {
            for (k, x) in m {
                key.push('[');
                percent_encode_into(key, k);
                key.push(']');
                form_pairs(out, key, x);
                key.truncate(restore);
            }
        }
        Value::Array(a) if !a.is_empty() => {
            for (i, x) in a.iter().enumerate() {
                key.push('[');
                key.push_str(&i.to_string());
                key.push(']');
                form_pairs(out, key, x);
                key.truncate(restore);
            }
        }
        _ => {
            if !out.is_empty() {
                out.push('&');
            }
            out.push_str(key);
            out.push('=');
            if let Some(t) = scalar_text(v) {
                percent_encode_into(out, t);
            }
        }
    }
}

/// The pointer of `token` below `at`, for rejections naming an element.
pub(super) fn child(at: &str, token: &str) -> String {
    format!("{at}/{}", escape_token(token))
}
