//! Compiling a request template: the path split into segments of text and placeholders, query
//! parameters and headers checked and encoded once, so that building a request per message
//! only walks the pieces.

use super::encode::{self, Ptr, percent_encode, percent_encode_into};
use super::{HeaderPart, Part, Piece, QueryPart, RESERVED_HEADERS, header_value_problem};

/// Splits a path template into segments of text and placeholders, checking it.
pub(super) fn compile_path(path: &str) -> Result<Vec<Vec<Piece>>, String> {
    let Some(rest) = path.strip_prefix('/') else {
        return Err(format!("path `{path}` must start with /"));
    };
    let mut segments = Vec::new();
    for seg in split_segments(rest) {
        let mut pieces = Vec::new();
        let mut text = String::new();
        let mut chars = seg.char_indices().peekable();
        while let Some((i, ch)) = chars.next() {
            match ch {
                '{' => {
                    let end = seg[i..].find('}').ok_or_else(|| {
                        format!(
                            "path `{path}`: `{{` opens a placeholder that is not closed (write {{/pointer}})"
                        )
                    })?;
                    let inner = &seg[i + 1..i + end];
                    if inner.contains('{') {
                        return Err(format!("path `{path}`: placeholders do not nest"));
                    }
                    let ptr = Ptr::below_root(inner).ok_or_else(|| {
                        format!("path `{path}`: placeholder `{{{inner}}}` is not a JSON pointer like {{/id}}")
                    })?;
                    if !text.is_empty() {
                        pieces.push(Piece::Text(std::mem::take(&mut text)));
                    }
                    pieces.push(Piece::At(ptr));
                    while chars.next_if(|(j, _)| *j <= i + end).is_some() {}
                }
                '}' => return Err(format!("path `{path}`: `}}` without a placeholder to close")),
                '%' => {
                    let hex = seg.get(i + 1..i + 3).filter(|h| h.bytes().all(|b| b.is_ascii_hexdigit()));
                    if hex.is_none() {
                        return Err(format!("path `{path}`: `%` must start an escape like %20"));
                    }
                    text.push('%');
                }
                c if c.is_ascii() && (encode::is_unreserved(c as u8) || "!$&'()*+,;=:@".contains(c)) => {
                    text.push(c);
                }
                c => {
                    return Err(format!(
                        "path `{path}`: `{c}` is not a URL path character (percent-encode it; query \
                         parameters go in `query`)"
                    ));
                }
            }
        }
        if !text.is_empty() {
            pieces.push(Piece::Text(text));
        }
        let lone_text = match pieces.as_slice() {
            [Piece::Text(t)] => Some(t.replace("%2e", ".").replace("%2E", ".")),
            _ => None,
        };
        if matches!(lone_text.as_deref(), Some("." | "..")) {
            return Err(format!("path `{path}`: a `.` or `..` segment would climb out of the path"));
        }
        segments.push(pieces);
    }
    Ok(segments)
}

/// The template's segments between `/`s, a `/` inside a placeholder (a pointer's) not counting.
fn split_segments(rest: &str) -> Vec<&str> {
    let mut out = Vec::new();
    let (mut start, mut depth) = (0, 0usize);
    for (i, b) in rest.bytes().enumerate() {
        match b {
            b'{' => depth += 1,
            b'}' => depth = depth.saturating_sub(1),
            b'/' if depth == 0 => {
                out.push(&rest[start..i]);
                start = i + 1;
            }
            _ => {}
        }
    }
    out.push(&rest[start..]);
    out
}

pub(super) fn compile_query(name: &str, part: &Part) -> Result<QueryPart, String> {
    if name.is_empty() {
        return Err("a query parameter needs a name".into());
    }
    let name_enc = percent_encode(name);
    match part {
        Part::Const(v) => {
            let mut pair = format!("{name_enc}=");
            percent_encode_into(&mut pair, v);
            Ok(QueryPart::Fixed(pair))
        }
        Part::Pointer(p) => Ptr::below_root(p)
            .map(|ptr| QueryPart::At(name_enc, ptr))
            .ok_or_else(|| format!("query parameter `{name}`: `{p}` is not a JSON pointer like /id")),
    }
}

pub(super) fn compile_header(name: &str, lower: &str, part: &Part) -> Result<HeaderPart, String> {
    // RFC 9110 section 5.6.2: a field name is a token.
    let tchar = |b: u8| b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b);
    if name.is_empty() || !name.bytes().all(tchar) {
        return Err(format!("`{name}` is not an HTTP header name (letters, digits and !#$%&'*+-.^_`|~)"));
    }
    if let Some((_, why)) = RESERVED_HEADERS.iter().find(|(h, _)| *h == lower) {
        return Err(format!("header `{name}` cannot be set by a template: {why}"));
    }
    match part {
        Part::Const(v) => match header_value_problem(v) {
            Some(why) => Err(format!("header `{name}`: the value {why}")),
            None => Ok(HeaderPart::Fixed(name.to_owned(), v.clone())),
        },
        Part::Pointer(p) => Ptr::below_root(p)
            .map(|ptr| HeaderPart::At(name.to_owned(), ptr))
            .ok_or_else(|| format!("header `{name}`: `{p}` is not a JSON pointer like /id")),
    }
}
