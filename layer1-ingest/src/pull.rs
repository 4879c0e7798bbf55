//! Pulled sources, the pure part: for one source the hub polls itself, which request to make
//! first and, given a response, what the records are and which request comes next.
//!
//! Nothing here does I/O. The caller sends each [`PageRequest`] (attaching the source's
//! [`crate::deliver::Auth`] the way deliveries do, only ever to the spec's own origin, which this
//! module guarantees for every URL it hands out), handles statuses and retries, stores the page,
//! and saves the returned [`Position`] in the same transaction as the page. Because a request is
//! a function of the spec and the position alone ([`PullSpec::request`]), a run killed after a
//! commit resumes with exactly the request it would have made; a page fetched twice yields the
//! same records in the same order, and the caller deduplicates them by their source references.

use std::cmp::Ordering;
use std::collections::BTreeSet;
use std::fmt;

use serde::{Deserialize, Serialize};
use url::Url;

use crate::json::{Number, Value, scalar_text, tokens};

pub mod run;
pub mod store;
#[cfg(test)]
mod tests;

/// Pages per run when the integration file does not say.
pub const DEFAULT_MAX_PAGES: u32 = 1000;
/// Largest page accepted when the integration file does not say (16 MiB).
pub const DEFAULT_MAX_PAGE_BYTES: usize = 16 * 1024 * 1024;

/// The HTTP method of a pulled source's requests. Parameters always go in the query string:
/// neither method sends a body.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "UPPERCASE")]
pub enum Method {
    /// `GET`.
    Get,
    /// `POST` (some search APIs want it even for reads).
    Post,
}

impl Method {
    /// The method's name as HTTP writes it.
    pub fn as_str(self) -> &'static str {
        match self {
            Method::Get => "GET",
            Method::Post => "POST",
        }
    }
}

/// A fixed query parameter's value.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum QueryValue {
    /// Text, sent as it is (percent-encoded).
    Text(String),
    /// A number, sent as written (`100`, `1.50`): never rounded through a float.
    Number(Number),
    /// `true` or `false`.
    Bool(bool),
}

impl fmt::Display for QueryValue {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            QueryValue::Text(s) => f.write_str(s),
            QueryValue::Number(n) => f.write_str(n.as_str()),
            QueryValue::Bool(b) => write!(f, "{b}"),
        }
    }
}

/// How an API splits a listing into pages.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Pagination {
    /// One request per run.
    None,
    /// The page carries an opaque cursor for the next page (Stripe's `starting_after` style,
    /// Slack's `response_metadata/next_cursor`), sent back in a query parameter.
    CursorInBody {
        /// JSON pointer to the next cursor in the page; absent, `null` or `""` ends the run.
        next: String,
        /// The query parameter that carries it.
        param: String,
    },
    /// The page carries the URL of the next page, absolute or relative to the page's own URL.
    NextLinkInBody {
        /// JSON pointer to the next URL; absent, `null` or `""` ends the run.
        next: String,
    },
    /// The `Link: <...>; rel="next"` response header (RFC 8288), as GitHub sends it.
    LinkHeader,
    /// Numbered pages.
    PageNumber {
        /// The query parameter carrying the page number.
        param: String,
        /// The first page's number (usually 1, sometimes 0).
        start: u64,
        /// The query parameter carrying the page size, if the API takes one.
        size_param: Option<String>,
    },
    /// Offset and limit.
    OffsetLimit {
        /// The query parameter carrying the offset (0 on the first page).
        offset_param: String,
        /// The query parameter carrying the limit ([`PullSpec::page_size`]).
        limit_param: String,
    },
}

/// One pulled source's request and paging rules.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PullSpec {
    /// Absolute `http`/`https` URL of the listing (base URL and path, may carry a query).
    pub url: String,
    /// The method.
    pub method: Method,
    /// Fixed query parameters, in order.
    pub query: Vec<(String, QueryValue)>,
    /// Fixed headers (authentication is not here: see the module documentation).
    pub headers: Vec<(String, String)>,
    /// JSON pointer to the records array in a page; `None`: the page is the array.
    pub records: Option<String>,
    /// How pages follow each other.
    pub pagination: Pagination,
    /// Records per page; sent by the page-number and offset styles, which also end on a page
    /// with fewer records than this.
    pub page_size: Option<u32>,
    /// Pages per run; the run pauses at the bound (see [`Next::PageLimit`]).
    pub max_pages: u32,
    /// Largest page accepted, in bytes.
    pub max_page_bytes: usize,
    /// JSON pointer to a record's cursor field (for example `/updated_at`), for incremental runs.
    pub cursor_field: Option<String>,
    /// The query parameter that carries the saved cursor (for example `updated_since`).
    pub cursor_param: Option<String>,
}

/// Where a run is: what the next request is, as data. Saved as JSON with the page it follows,
/// so that a run resumes from it after a crash.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Position {
    /// Pages already fetched in this run.
    pub pages: u32,
    /// The next page.
    pub at: At,
    /// The saved cursor the run started from, sent with every request of the run (so that a
    /// resumed run asks for the same listing).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub since: Option<String>,
}

impl Position {
    /// The position for the next run to continue a listing that one run left at
    /// [`Next::PageLimit`]: the same page and saved cursor, the page count back to zero. (A run
    /// resumed after a crash keeps its count: use the saved position as it is.)
    pub fn new_run(mut self) -> Position {
        self.pages = 0;
        self
    }
}

/// The next page of a [`Position`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum At {
    /// The spec's own URL, no pagination parameter.
    Start,
    /// A cursor from the previous page.
    Cursor {
        /// Its text.
        cursor: String,
    },
    /// A next link (from the body or the `Link` header), resolved and checked.
    Url {
        /// The absolute URL.
        url: String,
    },
    /// A page number.
    Page {
        /// The number.
        number: u64,
    },
    /// An offset.
    Offset {
        /// The offset.
        offset: u64,
    },
}

/// A request to send.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PageRequest {
    /// The method.
    pub method: Method,
    /// The absolute URL, query percent-encoded.
    pub url: String,
    /// The spec's fixed headers (authentication is added by the caller).
    pub headers: Vec<(String, String)>,
}

/// What follows a page.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Next {
    /// Another page: send the request; save the position with this page.
    Request(PageRequest, Position),
    /// The listing is over.
    Done,
    /// There are more pages but the run reached [`PullSpec::max_pages`]: this page's records are
    /// good; save the position, and the next run continues from it.
    PageLimit(Position),
    /// This page's records are good but its next page is not usable (a pagination loop, a
    /// next link to another host, a next cursor that is an object): take the records, keep
    /// the position at this page, and stop the run with the error.
    Stop(PullError),
}

/// One page, understood.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PageOutcome {
    /// The records, in the page's order, numbers exactly as written.
    pub records: Vec<Value>,
    /// The highest cursor-field value among them (see [`compare_cursors`]), as text.
    pub high_water: Option<String>,
    /// Records whose cursor value is before the run's saved cursor: an API that promised
    /// "updated since" sent older ones. Only flagged; the records are kept.
    pub behind_saved: usize,
    /// Records without a usable cursor value (absent, null, not a string or number), when the
    /// spec has a cursor field.
    pub without_cursor: usize,
    /// What comes next.
    pub next: Next,
}

/// What one run has seen, to catch an API that sends the run round in a circle. Lives for a
/// run; a resumed run starts a new one (the loop is still caught on its next turn).
#[derive(Debug, Clone, Default)]
pub struct RunMemory {
    seen: BTreeSet<String>,
}

/// Why a page cannot be used. Each names the pointer, header or bound involved.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum PullError {
    /// The spec itself is unusable (what [`PullSpec::validate`] reports).
    #[error("invalid pull settings: {}", .0.join("; "))]
    Invalid(Vec<String>),
    /// The page is larger than [`PullSpec::max_page_bytes`].
    #[error("page of {size} bytes exceeds the limit of {limit} bytes")]
    TooLarge {
        /// Its size.
        size: usize,
        /// The bound.
        limit: usize,
    },
    /// The page does not parse as JSON.
    #[error("page is not JSON: {0}")]
    NotJson(String),
    /// The records pointer finds nothing.
    #[error("page has no records at `{0}`")]
    RecordsMissing(String),
    /// The records pointer finds something that is not an array.
    #[error("records at `{pointer}` are {kind}, not an array")]
    RecordsNotArray {
        /// The pointer (empty: the whole page).
        pointer: String,
        /// What was there.
        kind: &'static str,
    },
    /// The next cursor or link is neither a string nor a number.
    #[error("next page at `{pointer}` is {kind}, not a string or number")]
    BadNext {
        /// The pointer.
        pointer: String,
        /// What was there.
        kind: &'static str,
    },
    /// A next link that is not a URL.
    #[error("next link `{link}` from {from} is not a URL: {why}")]
    BadLink {
        /// The link as sent.
        link: String,
        /// Where it came from (a pointer or the `Link` header).
        from: String,
        /// The parser's reason.
        why: String,
    },
    /// A next link to another origin: the source's credentials must not follow it.
    #[error("next link `{link}` from {from} leaves {origin}: refused, credentials must not follow")]
    OtherHost {
        /// The link.
        link: String,
        /// Where it came from.
        from: String,
        /// The spec's origin.
        origin: String,
    },
    /// The next cursor or link was already used in this run: following it would never end.
    #[error("pagination loop: next page `{next}` from {from} was already fetched in this run")]
    Loop {
        /// The repeated cursor or URL.
        next: String,
        /// Where it came from.
        from: String,
    },
    /// A record older than the saved cursor from an API asked for newer ones only.
    #[error(
        "the cursor went backwards: record {index} has `{field}` = `{cursor}`, before the saved cursor `{since}` the API was asked to start after"
    )]
    Backwards {
        /// The record's index in the page.
        index: usize,
        /// The cursor field.
        field: String,
        /// Its value.
        cursor: String,
        /// The saved cursor.
        since: String,
    },
    /// A position that does not fit the spec's pagination (a state saved under other settings).
    #[error("saved position {0} does not fit this source's pagination; reset the state")]
    PositionMismatch(String),
}

impl From<PullError> for crate::Error {
    fn from(e: PullError) -> Self {
        crate::Error::InvalidInput(e.to_string())
    }
}

impl PullSpec {
    /// A spec for `url` with one `GET` request and the default bounds.
    pub fn new(url: impl Into<String>) -> Self {
        PullSpec {
            url: url.into(),
            method: Method::Get,
            query: Vec::new(),
            headers: Vec::new(),
            records: None,
            pagination: Pagination::None,
            page_size: None,
            max_pages: DEFAULT_MAX_PAGES,
            max_page_bytes: DEFAULT_MAX_PAGE_BYTES,
            cursor_field: None,
            cursor_param: None,
        }
    }

    /// Every problem with the spec, each naming its key.
    pub fn validate(&self) -> Result<(), Vec<String>> {
        let mut out = Vec::new();
        match Url::parse(&self.url) {
            Ok(u) if !matches!(u.scheme(), "http" | "https") => {
                out.push(format!("url: `{}` must be http or https", self.url))
            }
            Ok(u) if u.host_str().is_none_or(str::is_empty) => {
                out.push(format!("url: `{}` has no host", self.url))
            }
            Ok(u) if u.fragment().is_some() => {
                out.push(format!("url: `{}` must not have a #fragment", self.url))
            }
            // A credential in the URL would be stored with every page's request and shown by
            // the audit desk: it goes in the source's authentication, by reference.
            Ok(u) if !u.username().is_empty() || u.password().is_some() => out.push(
                "url: holds credentials: they go in the authentication settings, by reference to a secret"
                    .into(),
            ),
            Ok(_) => {}
            Err(e) => out.push(format!("url: `{}` is not an absolute URL: {e}", self.url)),
        }
        let mut pointer = |key: &str, p: &Option<String>| {
            if let Some(p) = p
                && tokens(p).is_none()
            {
                out.push(format!("{key}: `{p}` is not a JSON pointer (empty, or starting with `/`)"));
            }
        };
        pointer("records", &self.records);
        pointer("cursor_field", &self.cursor_field);
        if let Pagination::CursorInBody { next, .. } | Pagination::NextLinkInBody { next } = &self.pagination
        {
            pointer("pagination.next", &Some(next.clone()));
        }
        if self.cursor_field.as_deref() == Some("") {
            out.push("cursor_field: must point inside the record, not be the whole record".into());
        }
        if self.cursor_param.is_some() && self.cursor_field.is_none() {
            out.push("cursor_param: needs cursor_field (where the cursor is read from)".into());
        }
        // Parameters this module writes itself must not also be fixed ones, or the API would
        // get two values and pick one we cannot predict.
        let mut params: Vec<(&str, &str)> = Vec::new();
        match &self.pagination {
            Pagination::CursorInBody { param, .. } => params.push(("pagination.param", param)),
            Pagination::PageNumber { param, size_param, .. } => {
                params.push(("pagination.param", param));
                if let Some(s) = size_param {
                    params.push(("pagination.size_param", s));
                    if self.page_size.is_none() {
                        out.push("pagination.size_param: needs page_size".into());
                    }
                }
            }
            Pagination::OffsetLimit { offset_param, limit_param } => {
                params.push(("pagination.offset_param", offset_param));
                params.push(("pagination.limit_param", limit_param));
                if self.page_size.is_none() {
                    out.push("page_size: offset_limit pagination needs one".into());
                }
            }
            Pagination::None | Pagination::NextLinkInBody { .. } | Pagination::LinkHeader => {}
        }
        if let Some(c) = &self.cursor_param {
            params.push(("cursor_param", c));
        }
        for (i, (key, name)) in params.iter().enumerate() {
            if name.is_empty() {
                out.push(format!("{key}: must not be empty"));
            } else if self.query.iter().any(|(q, _)| q == name) {
                out.push(format!("{key}: `{name}` is also a fixed query parameter"));
            } else if params[..i].iter().any(|(_, n)| n == name) {
                out.push(format!("{key}: `{name}` is used twice"));
            }
        }
        for (name, _) in &self.query {
            if name.is_empty() {
                out.push("query: a parameter has an empty name".into());
            }
        }
        for (name, value) in &self.headers {
            if reqwest::header::HeaderName::from_bytes(name.as_bytes()).is_err() {
                out.push(format!("headers: `{name}` is not a header name"));
            } else if reqwest::header::HeaderValue::from_str(value).is_err() {
                out.push(format!("headers.{name}: the value has characters a header cannot carry"));
            }
        }
        if self.page_size == Some(0) {
            out.push("page_size: must be at least 1".into());
        }
        if self.max_pages == 0 {
            out.push("max_pages: must be at least 1".into());
        }
        if self.max_page_bytes == 0 {
            out.push("max_page_bytes: must be at least 1".into());
        }
        if out.is_empty() { Ok(()) } else { Err(out) }
    }

    /// The first request of a run, and the position it stands for. `saved_cursor` is the
    /// cursor the previous run saved (incremental runs), sent in [`PullSpec::cursor_param`].
    pub fn first(&self, saved_cursor: Option<&str>) -> Result<(PageRequest, Position), PullError> {
        let at = match &self.pagination {
            Pagination::PageNumber { start, .. } => At::Page { number: *start },
            Pagination::OffsetLimit { .. } => At::Offset { offset: 0 },
            _ => At::Start,
        };
        let pos = Position { pages: 0, at, since: saved_cursor.map(str::to_owned) };
        Ok((self.request(&pos)?, pos))
    }

    /// The request a position stands for: the same every time, so a run resumed from a saved
    /// position sends what it would have sent.
    pub fn request(&self, pos: &Position) -> Result<PageRequest, PullError> {
        self.validate().map_err(PullError::Invalid)?;
        self.request_unchecked(pos)
    }

    /// [`PullSpec::request`] for a spec already validated (by the caller of [`PullSpec::next`]
    /// once per page, not once per URL it builds).
    fn request_unchecked(&self, pos: &Position) -> Result<PageRequest, PullError> {
        let base = self.base()?;
        let url = match (&pos.at, &self.pagination) {
            // A next link is the API's own full URL: it already carries every parameter.
            (At::Url { url }, Pagination::NextLinkInBody { .. } | Pagination::LinkHeader) => {
                let u =
                    Url::parse(url).map_err(|e| PullError::PositionMismatch(format!("url `{url}`: {e}")))?;
                if u.origin() != base.origin() {
                    return Err(PullError::OtherHost {
                        link: url.clone(),
                        from: "the saved position".into(),
                        origin: base.origin().ascii_serialization(),
                    });
                }
                u
            }
            (At::Start, Pagination::None | Pagination::CursorInBody { .. })
            | (At::Start, Pagination::NextLinkInBody { .. } | Pagination::LinkHeader) => {
                self.with_params(base, pos, &[])
            }
            (At::Cursor { cursor }, Pagination::CursorInBody { param, .. }) => {
                self.with_params(base, pos, &[(param, cursor.clone())])
            }
            (At::Page { number }, Pagination::PageNumber { param, size_param, .. }) => {
                let mut extra = vec![(param, number.to_string())];
                if let (Some(s), Some(n)) = (size_param, self.page_size) {
                    extra.push((s, n.to_string()));
                }
                self.with_params(base, pos, &extra)
            }
            (At::Offset { offset }, Pagination::OffsetLimit { offset_param, limit_param }) => {
                let limit = self.page_size.unwrap_or_default().to_string();
                self.with_params(base, pos, &[(offset_param, offset.to_string()), (limit_param, limit)])
            }
            (at, _) => return Err(PullError::PositionMismatch(format!("{at:?}"))),
        };
        Ok(PageRequest { method: self.method, url: url.to_string(), headers: self.headers.clone() })
    }

    /// Reads one response to the request `pos` stands for (a 2xx: statuses and retries are the
    /// caller's), and says what comes next. `headers` are the response's headers (names in any
    /// case); `memory` is the run's.
    pub fn next(
        &self,
        pos: &Position,
        page: &[u8],
        headers: &[(String, String)],
        memory: &mut RunMemory,
    ) -> Result<PageOutcome, PullError> {
        self.validate().map_err(PullError::Invalid)?;
        if page.len() > self.max_page_bytes {
            return Err(PullError::TooLarge { size: page.len(), limit: self.max_page_bytes });
        }
        let doc = Value::parse(page).map_err(PullError::NotJson)?;
        let pointer = self.records.clone().unwrap_or_default();
        let records = match doc.pointer(&pointer) {
            None => return Err(PullError::RecordsMissing(pointer)),
            Some(Value::Array(a)) => a.clone(),
            Some(other) => return Err(PullError::RecordsNotArray { pointer, kind: other.kind_name() }),
        };
        // The page just read counts as seen: an API answering with its own cursor loops too.
        let here = self.request_unchecked(pos)?.url;
        memory.seen.insert(here.clone());

        let (high_water, behind_saved, without_cursor) = self.cursors(&records, pos.since.as_deref());
        let pages = pos.pages.saturating_add(1);
        let at = self.next_at(pos, &here, &doc, headers, records.len());
        let next = match at {
            Ok(Some(at)) => {
                let next_pos = Position { pages, at, since: pos.since.clone() };
                match self.request_unchecked(&next_pos) {
                    Err(e) => Next::Stop(e),
                    Ok(req) if memory.seen.contains(&req.url) => {
                        Next::Stop(PullError::Loop { next: req.url, from: self.next_source() })
                    }
                    Ok(_) if pages >= self.max_pages => Next::PageLimit(next_pos),
                    Ok(req) => Next::Request(req, next_pos),
                }
            }
            Ok(None) => Next::Done,
            Err(e) => Next::Stop(e),
        };
        Ok(PageOutcome { records, high_water, behind_saved, without_cursor, next })
    }

    /// The cursor value of one record, as text (numbers as written).
    pub fn cursor_of(&self, record: &Value) -> Option<String> {
        let field = self.cursor_field.as_deref()?;
        record.pointer(field).and_then(scalar_text)
    }

    fn cursors(&self, records: &[Value], since: Option<&str>) -> (Option<String>, usize, usize) {
        let mut high: Option<String> = None;
        let (mut behind, mut without) = (0, 0);
        if self.cursor_field.is_none() {
            return (None, 0, 0);
        }
        for r in records {
            let Some(c) = self.cursor_of(r) else {
                without += 1;
                continue;
            };
            if since.is_some_and(|s| compare_cursors(&c, s) == Ordering::Less) {
                behind += 1;
            }
            if high.as_deref().is_none_or(|h| compare_cursors(&c, h) == Ordering::Greater) {
                high = Some(c);
            }
        }
        (high, behind, without)
    }

    fn next_source(&self) -> String {
        match &self.pagination {
            Pagination::CursorInBody { next, .. } | Pagination::NextLinkInBody { next } => {
                format!("`{next}`")
            }
            Pagination::LinkHeader => "the Link header".into(),
            _ => "the page number".into(),
        }
    }

    fn next_at(
        &self,
        pos: &Position,
        here: &str,
        doc: &Value,
        headers: &[(String, String)],
        count: usize,
    ) -> Result<Option<At>, PullError> {
        let short = |count: usize| count == 0 || self.page_size.is_some_and(|n| count < n as usize);
        Ok(match &self.pagination {
            Pagination::None => None,
            Pagination::CursorInBody { next, .. } => {
                body_text(doc, next)?.map(|cursor| At::Cursor { cursor })
            }
            Pagination::NextLinkInBody { next } => match body_text(doc, next)? {
                None => None,
                Some(link) => Some(At::Url { url: self.resolve(here, &link, &format!("`{next}`"))? }),
            },
            Pagination::LinkHeader => {
                let link = headers
                    .iter()
                    .filter(|(n, _)| n.eq_ignore_ascii_case("link"))
                    .find_map(|(_, v)| link_next(v));
                match link {
                    None => None,
                    Some(link) => Some(At::Url { url: self.resolve(here, &link, "the Link header")? }),
                }
            }
            Pagination::PageNumber { .. } => match &pos.at {
                At::Page { number } if !short(count) => Some(At::Page { number: number.saturating_add(1) }),
                _ => None,
            },
            Pagination::OffsetLimit { .. } => match &pos.at {
                At::Offset { offset } if !short(count) => {
                    Some(At::Offset { offset: offset.saturating_add(count as u64) })
                }
                _ => None,
            },
        })
    }

    fn base(&self) -> Result<Url, PullError> {
        Url::parse(&self.url).map_err(|e| PullError::Invalid(vec![format!("url: {e}")]))
    }

    /// `link` resolved against the URL of the page it came from, refused if it leaves the
    /// spec's origin (scheme, host and port).
    fn resolve(&self, page_url: &str, link: &str, from: &str) -> Result<String, PullError> {
        let page_url = Url::parse(page_url).map_err(|e| PullError::Invalid(vec![format!("url: {e}")]))?;
        let u = page_url.join(link).map_err(|e| PullError::BadLink {
            link: link.to_owned(),
            from: from.to_owned(),
            why: e.to_string(),
        })?;
        let origin = self.base()?.origin();
        if u.origin() != origin {
            return Err(PullError::OtherHost {
                link: link.to_owned(),
                from: from.to_owned(),
                origin: origin.ascii_serialization(),
            });
        }
        let mut u = u;
        u.set_fragment(None);
        Ok(u.to_string())
    }

    fn with_params(&self, mut url: Url, pos: &Position, extra: &[(&String, String)]) -> Url {
        {
            let mut q = url.query_pairs_mut();
            for (k, v) in &self.query {
                q.append_pair(k, &v.to_string());
            }
            if let (Some(p), Some(since)) = (&self.cursor_param, &pos.since) {
                q.append_pair(p, since);
            }
            for (k, v) in extra {
                q.append_pair(k, v);
            }
        }
        // `query_pairs_mut` leaves a bare `?` when nothing was added.
        if url.query() == Some("") {
            url.set_query(None);
        }
        url
    }
}

/// The text at `pointer` in a page, for a next cursor or link: `None` when it is absent,
/// `null` or empty (the listing is over).
fn body_text(doc: &Value, pointer: &str) -> Result<Option<String>, PullError> {
    match doc.pointer(pointer) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::String(s)) if s.is_empty() => Ok(None),
        Some(v @ (Value::String(_) | Value::Number(_))) => Ok(scalar_text(v)),
        Some(other) => Err(PullError::BadNext { pointer: pointer.to_owned(), kind: other.kind_name() }),
    }
}

/// The target of the first link with relation `next` in a `Link` header value (RFC 8288):
/// `<https://api.github.com/repositories/1296269/issues?page=2>; rel="next", <...>; rel="last"`.
/// Relation types are compared without case; `rel` may list several (`rel="next last"`);
/// quoted parameter values may contain `,` and `;`.
pub fn link_next(header: &str) -> Option<String> {
    let b = header.as_bytes();
    let mut i = 0;
    while i < b.len() {
        // Skip to the next `<`.
        while i < b.len() && b[i] != b'<' {
            i += 1;
        }
        let start = i + 1;
        let end = start + header.get(start..)?.find('>')?;
        let target = header.get(start..end)?.trim();
        i = end + 1;
        // Parameters up to the next `,` outside quotes, split at `;` outside quotes, so that a
        // quoted title holding `, <...>; rel=next` is never read as a link or a relation.
        let mut params: Vec<String> = vec![String::new()];
        let mut quoted = false;
        while i < b.len() {
            let c = b[i];
            i += 1;
            if quoted && c == b'\\' && i < b.len() {
                i += 1;
                continue;
            }
            match c {
                b'"' => quoted = !quoted,
                b',' if !quoted => break,
                b';' if !quoted => params.push(String::new()),
                // Only ASCII matters for `rel`; other bytes of quoted values are dropped.
                _ if c.is_ascii() => {
                    if let Some(last) = params.last_mut() {
                        last.push(char::from(c));
                    }
                }
                _ => {}
            }
        }
        for p in &params {
            let Some((name, value)) = p.split_once('=') else { continue };
            if !name.trim().eq_ignore_ascii_case("rel") {
                continue;
            }
            if value.split_ascii_whitespace().any(|r| r.eq_ignore_ascii_case("next")) {
                return Some(target.to_owned());
            }
        }
    }
    None
}

/// Orders two cursor values: two RFC 3339 timestamps by instant (`2026-11-20T10:00:00+01:00` is
/// before `2026-11-20T09:30:00Z`), two JSON numbers exactly (any size, any precision), anything
/// else as text.
pub fn compare_cursors(a: &str, b: &str) -> Ordering {
    if let (Ok(x), Ok(y)) = (chrono::DateTime::parse_from_rfc3339(a), chrono::DateTime::parse_from_rfc3339(b))
    {
        return x.cmp(&y);
    }
    if let (Some(x), Some(y)) = (Decimal::parse(a), Decimal::parse(b)) {
        return x.cmp(&y);
    }
    a.cmp(b)
}

/// A JSON number as sign, significant digits and exponent: value = 0.digits × 10^exp.
#[derive(PartialEq, Eq)]
struct Decimal {
    negative: bool,
    digits: String,
    exp: i128,
}

impl Decimal {
    fn parse(text: &str) -> Option<Decimal> {
        Number::parse(text)?;
        let (negative, rest) = match text.strip_prefix('-') {
            Some(r) => (true, r),
            None => (false, text),
        };
        let (mantissa, exp) = match rest.find(['e', 'E']) {
            Some(i) => (&rest[..i], rest.get(i + 1..)?),
            None => (rest, "0"),
        };
        let exp_digits = exp.trim_start_matches(['+', '-']);
        // An exponent too long for i64 is beyond any real cursor: clamp, the order still holds.
        let mut e: i128 = exp_digits.parse::<i64>().map(i128::from).unwrap_or(i128::from(i64::MAX));
        if exp.starts_with('-') {
            e = -e;
        }
        let (int, frac) = mantissa.split_once('.').unwrap_or((mantissa, ""));
        let all = format!("{int}{frac}");
        let mut point = int.len() as i128 + e;
        let trimmed = all.trim_start_matches('0');
        point -= (all.len() - trimmed.len()) as i128;
        let digits = trimmed.trim_end_matches('0').to_owned();
        if digits.is_empty() {
            return Some(Decimal { negative: false, digits, exp: 0 });
        }
        Some(Decimal { negative, digits, exp: point })
    }

    fn sign(&self) -> i8 {
        match (self.digits.is_empty(), self.negative) {
            (true, _) => 0,
            (false, true) => -1,
            (false, false) => 1,
        }
    }
}

impl PartialOrd for Decimal {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}

impl Ord for Decimal {
    fn cmp(&self, other: &Self) -> Ordering {
        let by_sign = self.sign().cmp(&other.sign());
        if by_sign != Ordering::Equal || self.sign() == 0 {
            return by_sign;
        }
        let magnitude = self.exp.cmp(&other.exp).then_with(|| self.digits.cmp(&other.digits));
        if self.negative { magnitude.reverse() } else { magnitude }
    }
}

/// How a pulled source's runs read, as Airbyte names the modes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum SyncMode {
    /// Every run reads the whole listing; every record of a run is taken (once per run, by
    /// primary key, when one is declared).
    #[default]
    FullRefresh,
    /// A run takes only the records whose cursor value is past the saved cursor.
    Incremental,
    /// As incremental, but a record at exactly the saved cursor is taken unless the same
    /// (primary key, cursor value) was taken before: an API whose `updated_since` is inclusive
    /// neither loses a record updated in the same instant as the cursor nor repeats one.
    IncrementalDedup,
}

impl SyncMode {
    /// The mode's name, as the file writes it.
    pub fn as_str(self) -> &'static str {
        match self {
            SyncMode::FullRefresh => "full_refresh",
            SyncMode::Incremental => "incremental",
            SyncMode::IncrementalDedup => "incremental_dedup",
        }
    }

    /// Whether runs start from the saved cursor.
    pub fn is_incremental(self) -> bool {
        !matches!(self, SyncMode::FullRefresh)
    }

    /// What the mode needs of the spec and the primary key, each problem naming its key.
    pub fn check(self, spec: &PullSpec, primary_key: Option<&str>) -> Result<(), Vec<String>> {
        let mut out = Vec::new();
        if let Some(p) = primary_key
            && (tokens(p).is_none() || p.is_empty())
        {
            out.push(format!(
                "primary_key: `{p}` is not a JSON pointer inside the record (starting with `/`)"
            ));
        }
        match self {
            SyncMode::FullRefresh if spec.cursor_param.is_some() => out.push(
                "cursor_param: a full_refresh run reads everything and sends no cursor (use mode = \"incremental\")"
                    .into(),
            ),
            SyncMode::Incremental | SyncMode::IncrementalDedup if spec.cursor_field.is_none() => {
                out.push(format!("cursor_field: mode `{}` needs one (for example \"/updated_at\")", self.as_str()))
            }
            SyncMode::IncrementalDedup if primary_key.is_none() => out.push(
                "primary_key: mode `incremental_dedup` needs one (for example \"/id\"): records are told apart by it"
                    .into(),
            ),
            _ => {}
        }
        if out.is_empty() { Ok(()) } else { Err(out) }
    }
}

/// A record a page yields to take.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Pick {
    /// Its index in the page's records.
    pub index: usize,
    /// Its key ([`record_key`]).
    pub key: String,
    /// Its cursor value, if the spec has a cursor field and the record one.
    pub cursor: Option<String>,
}

/// Which of a page's records a run takes, before the records already taken are set aside.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Selection {
    /// The records to take, unless taken already (see [`record_key`]).
    pub take: Vec<Pick>,
    /// Indices of records not past the run's saved cursor (incremental modes).
    pub not_past: Vec<usize>,
}

/// Keys longer than this are replaced by their hash.
const MAX_KEY_LEN: usize = 1000;

/// A record's key for deduplication: its primary key's value (or, without one, the SHA-256 of
/// its JSON text) and, in the incremental modes, `@` and its cursor value. Full refresh keys a
/// record by primary key alone: within one run, a record served on two pages (a listing that
/// shifted under offset pagination) is taken once.
pub fn record_key(record: &Value, mode: SyncMode, primary_key: Option<&str>, cursor: Option<&str>) -> String {
    use sha2::Digest;
    let hash = |text: &str| format!("sha256:{}", hex::encode(sha2::Sha256::digest(text.as_bytes())));
    let id = primary_key.and_then(|p| record.pointer(p)).and_then(scalar_text);
    let id = match id {
        Some(id) => format!("id:{id}"),
        None => hash(&record.to_json()),
    };
    let key = match (mode.is_incremental(), cursor) {
        (true, Some(c)) => format!("{id}@{c}"),
        _ => id,
    };
    if key.len() > MAX_KEY_LEN { hash(&key) } else { key }
}

/// Which records of a page a run in `mode` takes, given the cursor the run started from.
///
/// Incremental: a record is taken when its cursor value is after `since` (or it has none, or
/// there is no saved cursor); incremental with dedup: at or after. When the API was asked for
/// records after `since` (the spec has a `cursor_param`) and sends one before it, the cursor
/// went backwards: the page is refused ([`PullError::Backwards`]) rather than trusted.
pub fn select(
    spec: &PullSpec,
    mode: SyncMode,
    primary_key: Option<&str>,
    records: &[Value],
    since: Option<&str>,
) -> Result<Selection, PullError> {
    let mut out = Selection::default();
    for (index, record) in records.iter().enumerate() {
        let cursor = spec.cursor_of(record);
        if mode.is_incremental()
            && let (Some(c), Some(s)) = (&cursor, since)
        {
            let order = compare_cursors(c, s);
            if order == Ordering::Less && spec.cursor_param.is_some() {
                return Err(PullError::Backwards {
                    index,
                    field: spec.cursor_field.clone().unwrap_or_default(),
                    cursor: c.clone(),
                    since: s.to_owned(),
                });
            }
            let past = match mode {
                SyncMode::IncrementalDedup => order != Ordering::Less,
                _ => order == Ordering::Greater,
            };
            if !past {
                out.not_past.push(index);
                continue;
            }
        }
        let key = record_key(record, mode, primary_key, cursor.as_deref());
        out.take.push(Pick { index, key, cursor });
    }
    Ok(out)
}
