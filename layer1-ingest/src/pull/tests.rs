use std::collections::BTreeMap;

use super::*;

const BASE: &str = "https://api.shop.example/v1/orders";

/// Nine orders in three pages, shaped like a shop API's: GitHub-sized ids, an id beyond u64,
/// amounts with more digits than an f64 holds, nulls, unicode and `-07:00` offsets.
fn order(i: usize) -> String {
    format!(
        r#"{{"id":{id},"ref":1844674407370955161{i}9,"total":"x","amount":12.3400000000000000000{i}1,"customer":"Zoë {i}","note":null,"updated_at":"2026-11-20T0{i}:15:00-07:00"}}"#,
        id = 1296269 + i
    )
}

fn orders(range: std::ops::Range<usize>) -> String {
    format!("[{}]", range.map(order).collect::<Vec<_>>().join(","))
}

fn check_records(got: &[Value]) {
    assert_eq!(got.len(), 9, "every record once");
    for (i, r) in got.iter().enumerate() {
        let id = r.pointer("/id").and_then(Value::as_number).map(|n| n.as_str().to_owned());
        assert_eq!(id, Some((1296269 + i).to_string()));
        let big = r.pointer("/ref").and_then(Value::as_number).map(|n| n.as_str().to_owned());
        assert_eq!(big, Some(format!("1844674407370955161{i}9")));
        let amount = r.pointer("/amount").and_then(Value::as_number).map(|n| n.as_str().to_owned());
        assert_eq!(amount, Some(format!("12.3400000000000000000{i}1")));
        assert_eq!(r.pointer("/customer").and_then(Value::as_str), Some(format!("Zoë {i}").as_str()));
    }
}

type Server = BTreeMap<String, (String, Vec<(String, String)>)>;

/// Runs a whole pull against canned pages keyed by URL; returns the records and the URLs asked.
fn run(spec: &PullSpec, server: &Server) -> Result<(Vec<Value>, Vec<String>), PullError> {
    let (mut req, mut pos) = spec.first(None)?;
    let mut memory = RunMemory::default();
    let (mut records, mut urls) = (Vec::new(), Vec::new());
    loop {
        urls.push(req.url.clone());
        let (body, headers) = server.get(&req.url).unwrap_or_else(|| panic!("no page at {}", req.url));
        let out = spec.next(&pos, body.as_bytes(), headers, &mut memory)?;
        records.extend(out.records);
        match out.next {
            Next::Request(r, p) => (req, pos) = (r, p),
            Next::Done => return Ok((records, urls)),
            Next::PageLimit(_) => panic!("page limit hit"),
            Next::Stop(e) => return Err(e),
        }
    }
}

/// The error a page's `next` stopped on (its records stay good).
fn stopped(out: Result<PageOutcome, PullError>, what: &str) -> PullError {
    match out.unwrap_or_else(|e| panic!("{what}: the page itself was refused: {e}")).next {
        Next::Stop(e) => e,
        other => panic!("{what}: expected a stop, got {other:?}"),
    }
}

fn serve(pages: &[(&str, String)]) -> Server {
    pages.iter().map(|(u, b)| (u.to_string(), (b.clone(), Vec::new()))).collect()
}

#[test]
fn cursor_in_body_walks_three_pages() {
    let mut spec = PullSpec::new(BASE);
    spec.records = Some("/data".into());
    spec.query = vec![("limit".into(), QueryValue::Number(Number::parse("3").expect("number")))];
    spec.pagination = Pagination::CursorInBody { next: "/meta/next".into(), param: "starting_after".into() };
    let server = serve(&[
        (
            "https://api.shop.example/v1/orders?limit=3",
            format!(r#"{{"data":{},"meta":{{"next":"ord_1296271"}}}}"#, orders(0..3)),
        ),
        (
            "https://api.shop.example/v1/orders?limit=3&starting_after=ord_1296271",
            format!(r#"{{"data":{},"meta":{{"next":1296274}}}}"#, orders(3..6)),
        ),
        (
            "https://api.shop.example/v1/orders?limit=3&starting_after=1296274",
            format!(r#"{{"data":{},"meta":{{"next":null}}}}"#, orders(6..9)),
        ),
    ]);
    let (records, urls) = run(&spec, &server).expect("run");
    check_records(&records);
    assert_eq!(urls.len(), 3);
}

#[test]
fn next_link_in_body_resolves_relative_links() {
    let mut spec = PullSpec::new(BASE);
    spec.records = Some("/results".into());
    spec.pagination = Pagination::NextLinkInBody { next: "/next".into() };
    let server = serve(&[
        (BASE, format!(r#"{{"results":{},"next":"orders?page=2&q=a%20b"}}"#, orders(0..3))),
        (
            "https://api.shop.example/v1/orders?page=2&q=a%20b",
            format!(r#"{{"results":{},"next":"/v1/orders?page=3#frag"}}"#, orders(3..6)),
        ),
        ("https://api.shop.example/v1/orders?page=3", format!(r#"{{"results":{},"next":""}}"#, orders(6..9))),
    ]);
    let (records, _) = run(&spec, &server).expect("run");
    check_records(&records);
}

#[test]
fn link_header_walks_three_pages_like_github() {
    let mut spec = PullSpec::new("https://api.github.com/repositories/1296269/issues");
    spec.pagination = Pagination::LinkHeader;
    let p2 = "https://api.github.com/repositories/1296269/issues?page=2";
    let p3 = "https://api.github.com/repositories/1296269/issues?page=3";
    let mut server: Server = BTreeMap::new();
    let link = |next: &str| {
        vec![(
            "Link".to_owned(),
            format!(
                r#"<{next}>; rel="next", <https://api.github.com/repositories/1296269/issues?page=3>; rel="last""#
            ),
        )]
    };
    server.insert(spec.url.clone(), (orders(0..3), link(p2)));
    // A relative target resolves against the page's URL.
    server.insert(p2.to_owned(), (orders(3..6), vec![("link".into(), r#"<?page=3>; rel="next""#.into())]));
    server.insert(p3.to_owned(), (orders(6..9), vec![("Link".into(), format!(r#"<{p2}>; rel="prev""#))]));
    let (records, urls) = run(&spec, &server).expect("run");
    check_records(&records);
    assert_eq!(urls, vec![spec.url.clone(), p2.to_owned(), p3.to_owned()]);
}

#[test]
fn page_number_ends_on_a_short_page() {
    let mut spec = PullSpec::new(BASE);
    spec.pagination =
        Pagination::PageNumber { param: "page".into(), start: 1, size_param: Some("per_page".into()) };
    spec.page_size = Some(4);
    let server = serve(&[
        ("https://api.shop.example/v1/orders?page=1&per_page=4", orders(0..4)),
        ("https://api.shop.example/v1/orders?page=2&per_page=4", orders(4..8)),
        ("https://api.shop.example/v1/orders?page=3&per_page=4", orders(8..9)),
    ]);
    let (records, urls) = run(&spec, &server).expect("run");
    check_records(&records);
    assert_eq!(urls.len(), 3);
}

#[test]
fn offset_limit_ends_on_an_empty_page() {
    let mut spec = PullSpec::new(BASE);
    spec.records = Some("/items".into());
    spec.pagination = Pagination::OffsetLimit { offset_param: "offset".into(), limit_param: "limit".into() };
    spec.page_size = Some(3);
    let page = |r| format!(r#"{{"items":{}}}"#, orders(r));
    let server = serve(&[
        ("https://api.shop.example/v1/orders?offset=0&limit=3", page(0..3)),
        ("https://api.shop.example/v1/orders?offset=3&limit=3", page(3..6)),
        ("https://api.shop.example/v1/orders?offset=6&limit=3", page(6..9)),
        ("https://api.shop.example/v1/orders?offset=9&limit=3", r#"{"items":[]}"#.to_owned()),
    ]);
    let (records, urls) = run(&spec, &server).expect("run");
    check_records(&records);
    assert_eq!(urls.len(), 4);
}

#[test]
fn link_header_parsing() {
    let h = r#"<https://x.example/a?page=1>; rel="prev"; title="a, b; <c>", <https://x.example/a?page=3>; REL="Last Next""#;
    assert_eq!(link_next(h).as_deref(), Some("https://x.example/a?page=3"));
    let h = r#"<https://x.example/p?page=2>; rel=next, <https://x.example/p?page=9>; rel="last""#;
    assert_eq!(link_next(h).as_deref(), Some("https://x.example/p?page=2"));
    assert_eq!(link_next(r#"<https://x.example/p?page=9>; rel="last""#), None);
    assert_eq!(link_next(r#"<https://x.example/p>; rel="nextish""#), None);
    assert_eq!(link_next(r#"<https://x.example/p; title="rel=next""#), None);
    assert_eq!(link_next(""), None);
    // A quoted value holding a comma and a link-like text must not be split into a link.
    let h = r#"<https://x.example/a>; title="x, <https://x.example/evil>; rel=next"; rel="prev", <https://x.example/b>; rel="next""#;
    assert_eq!(link_next(h).as_deref(), Some("https://x.example/b"));
    let h = r#"<https://x.example/a>; title="say \"hi, <https://x.example/evil>; rel=next"; rel=prev, <https://x.example/c>; rel=next"#;
    assert_eq!(link_next(h).as_deref(), Some("https://x.example/c"));
}

#[test]
fn the_same_cursor_twice_is_a_loop() {
    let mut spec = PullSpec::new(BASE);
    spec.pagination = Pagination::CursorInBody { next: "/next".into(), param: "cursor".into() };
    spec.records = Some("/data".into());
    let server = serve(&[
        (BASE, format!(r#"{{"data":{},"next":"c2"}}"#, orders(0..3))),
        (
            "https://api.shop.example/v1/orders?cursor=c2",
            format!(r#"{{"data":{},"next":"c3"}}"#, orders(3..6)),
        ),
        (
            "https://api.shop.example/v1/orders?cursor=c3",
            format!(r#"{{"data":{},"next":"c2"}}"#, orders(6..9)),
        ),
    ]);
    let err = run(&spec, &server).expect_err("loop");
    assert!(matches!(&err, PullError::Loop { next, .. } if next.ends_with("cursor=c2")), "{err}");
    assert!(err.to_string().contains("`/next`"), "{err}");
    // A Link header naming the page itself as next (relative, with a fragment) loops at once.
    spec.pagination = Pagination::LinkHeader;
    spec.records = None;
    let (_, pos) = spec.first(None).expect("first");
    let headers = vec![("LINK".to_owned(), r#"<orders#top>; rel="next""#.to_owned())];
    let err = stopped(spec.next(&pos, b"[]", &headers, &mut RunMemory::default()), "self loop");
    assert!(matches!(err, PullError::Loop { .. }), "{err}");
}

#[test]
fn a_page_over_the_bound_is_refused() {
    let mut spec = PullSpec::new(BASE);
    let body = orders(0..3);
    spec.max_page_bytes = body.len() - 1;
    let (_, pos) = spec.first(None).expect("first");
    let err = spec.next(&pos, body.as_bytes(), &[], &mut RunMemory::default()).expect_err("too large");
    assert_eq!(err, PullError::TooLarge { size: body.len(), limit: body.len() - 1 });
    spec.max_page_bytes = body.len();
    assert!(spec.next(&pos, body.as_bytes(), &[], &mut RunMemory::default()).is_ok());
}

#[test]
fn a_page_that_is_not_json_or_has_no_records_is_refused() {
    let mut spec = PullSpec::new(BASE);
    spec.records = Some("/data".into());
    let (_, pos) = spec.first(None).expect("first");
    let mut m = RunMemory::default();
    let err = spec.next(&pos, b"<html>502 Bad Gateway</html>", &[], &mut m).expect_err("not json");
    assert!(matches!(err, PullError::NotJson(_)), "{err}");
    let err = spec.next(&pos, br#"{"data":{"id":1}}"#, &[], &mut m).expect_err("not array");
    assert_eq!(err.to_string(), "records at `/data` are an object, not an array");
    let err = spec.next(&pos, br#"{"items":[]}"#, &[], &mut m).expect_err("missing");
    assert_eq!(err, PullError::RecordsMissing("/data".into()));
}

#[test]
fn a_next_link_to_another_host_is_refused() {
    let mut spec = PullSpec::new(BASE);
    spec.pagination = Pagination::NextLinkInBody { next: "/next".into() };
    spec.records = Some("/data".into());
    let (_, pos) = spec.first(None).expect("first");
    for link in [
        "https://evil.example/v1/orders?page=2",
        "//evil.example/x",
        "http://api.shop.example/v1/orders?page=2",
        "https://api.shop.example:8443/x",
    ] {
        let body = format!(r#"{{"data":[],"next":"{link}"}}"#);
        let err = stopped(spec.next(&pos, body.as_bytes(), &[], &mut RunMemory::default()), link);
        assert!(matches!(err, PullError::OtherHost { .. }), "{link}: {err}");
    }
    spec.pagination = Pagination::LinkHeader;
    spec.records = None;
    let headers = vec![("Link".to_owned(), r#"<https://evil.example/?page=2>; rel="next""#.to_owned())];
    let err = stopped(spec.next(&pos, b"[]", &headers, &mut RunMemory::default()), "header");
    assert!(err.to_string().contains("the Link header"), "{err}");
    // A saved position pointing elsewhere (a tampered state row) is refused as well.
    let bad = Position { pages: 1, at: At::Url { url: "https://evil.example/".into() }, since: None };
    assert!(matches!(spec.request(&bad), Err(PullError::OtherHost { .. })));
}

#[test]
fn resuming_from_a_saved_position_sends_the_same_request() {
    let mut spec = PullSpec::new(BASE);
    spec.records = Some("/data".into());
    spec.cursor_field = Some("/updated_at".into());
    spec.cursor_param = Some("updated_since".into());
    spec.pagination = Pagination::CursorInBody { next: "/next".into(), param: "cursor".into() };
    let (first, pos) = spec.first(Some("2026-11-19T23:00:00-07:00")).expect("first");
    assert_eq!(first.url, "https://api.shop.example/v1/orders?updated_since=2026-11-19T23%3A00%3A00-07%3A00");
    let body = format!(r#"{{"data":{},"next":"b64/+=&x y"}}"#, orders(0..3));
    let out = spec.next(&pos, body.as_bytes(), &[], &mut RunMemory::default()).expect("page");
    let Next::Request(req, next_pos) = out.next else { panic!("expected a next request") };
    let saved = serde_json::to_string(&next_pos).expect("serialize");
    assert_eq!(
        saved,
        r#"{"pages":1,"at":{"kind":"cursor","cursor":"b64/+=&x y"},"since":"2026-11-19T23:00:00-07:00"}"#
    );
    let restored: Position = serde_json::from_str(&saved).expect("deserialize");
    assert_eq!(spec.request(&restored).expect("request"), req);
    assert_eq!(
        req.url,
        "https://api.shop.example/v1/orders?updated_since=2026-11-19T23%3A00%3A00-07%3A00&cursor=b64%2F%2B%3D%26x+y"
    );
    // A position saved under another pagination style is refused, not guessed at.
    let page = Position { pages: 1, at: At::Page { number: 2 }, since: None };
    assert!(matches!(spec.request(&page), Err(PullError::PositionMismatch(_))));
}

#[test]
fn max_pages_pauses_the_run_with_a_position() {
    let mut spec = PullSpec::new(BASE);
    spec.pagination = Pagination::PageNumber { param: "page".into(), start: 1, size_param: None };
    spec.page_size = Some(3);
    spec.max_pages = 2;
    let (_, pos) = spec.first(None).expect("first");
    let mut m = RunMemory::default();
    let out = spec.next(&pos, orders(0..3).as_bytes(), &[], &mut m).expect("page 1");
    let Next::Request(_, pos) = out.next else { panic!("page 2 expected") };
    let out = spec.next(&pos, orders(3..6).as_bytes(), &[], &mut m).expect("page 2");
    assert_eq!(out.records.len(), 3, "the last page's records are kept");
    assert_eq!(out.next, Next::PageLimit(Position { pages: 2, at: At::Page { number: 3 }, since: None }));
    // The next run continues at page 3 with a fresh page count.
    let Next::PageLimit(saved) = out.next else { panic!("page limit expected") };
    let pos = saved.new_run();
    assert!(spec.request(&pos).expect("request").url.ends_with("?page=3"));
    let out = spec.next(&pos, orders(6..9).as_bytes(), &[], &mut RunMemory::default()).expect("page 3");
    assert!(matches!(out.next, Next::Request(_, Position { pages: 1, at: At::Page { number: 4 }, .. })));
}

#[test]
fn high_water_compares_timestamps_by_instant() {
    assert_eq!(compare_cursors("2026-11-20T10:00:00+01:00", "2026-11-20T09:30:00Z"), Ordering::Less);
    assert_eq!(compare_cursors("2026-11-20T02:30:00-07:00", "2026-11-20T09:30:00Z"), Ordering::Equal);
    let mut spec = PullSpec::new(BASE);
    spec.cursor_field = Some("/updated_at".into());
    let page =
        br#"[{"id":1,"updated_at":"2026-11-20T09:30:00Z"},{"id":2,"updated_at":"2026-11-20T10:00:00+01:00"},
        {"id":3,"updated_at":"2026-11-20T03:00:00-07:00"},{"id":4,"updated_at":null},{"id":5}]"#;
    let (_, pos) = spec.first(Some("2026-11-20T09:15:00Z")).expect("first");
    let out = spec.next(&pos, page, &[], &mut RunMemory::default()).expect("page");
    assert_eq!(out.high_water.as_deref(), Some("2026-11-20T03:00:00-07:00"));
    assert_eq!(out.behind_saved, 1, "10:00+01:00 is 09:00Z, before the saved 09:15Z");
    assert_eq!(out.without_cursor, 2);
}

#[test]
fn high_water_compares_numbers_exactly_beyond_u64() {
    let mut spec = PullSpec::new(BASE);
    spec.cursor_field = Some("/seq".into());
    let page = br#"[{"seq":18446744073709551617},{"seq":18446744073709551616.5},{"seq":184467440737095516160e-1},{"seq":9}]"#;
    let (_, pos) = spec.first(Some("18446744073709551616.25")).expect("first");
    let out = spec.next(&pos, page, &[], &mut RunMemory::default()).expect("page");
    assert_eq!(out.high_water.as_deref(), Some("18446744073709551617"));
    assert_eq!(out.behind_saved, 2, "18446744073709551616 (written 184467440737095516160e-1) and 9");
    assert_eq!(compare_cursors("-1e400", "-2e399"), Ordering::Less);
    assert_eq!(compare_cursors("0.00", "-0"), Ordering::Equal);
    assert_eq!(compare_cursors("1.10", "1.1"), Ordering::Equal);
    assert_eq!(compare_cursors("100", "99.999999999999999999999"), Ordering::Greater);
    assert_eq!(compare_cursors("abc", "abd"), Ordering::Less);
}

#[test]
fn validate_names_every_bad_key() {
    let mut spec = PullSpec::new("/v1/orders");
    spec.records = Some("data".into());
    spec.cursor_param = Some("since".into());
    spec.query = vec![("limit".into(), QueryValue::Text("10".into()))];
    spec.headers = vec![("X Bad".into(), "v".into())];
    spec.pagination = Pagination::OffsetLimit { offset_param: "offset".into(), limit_param: "limit".into() };
    spec.max_pages = 0;
    let errs = spec.validate().expect_err("invalid");
    let text = errs.join("\n");
    for key in [
        "url:",
        "records:",
        "cursor_param:",
        "headers:",
        "pagination.limit_param: `limit`",
        "page_size:",
        "max_pages:",
    ] {
        assert!(text.contains(key), "{key} missing from:\n{text}");
    }
    assert!(matches!(spec.first(None), Err(PullError::Invalid(_))));
    assert!(PullSpec::new(BASE).validate().is_ok());
}

#[test]
fn credentials_in_the_url_are_refused() {
    for url in ["https://user:pw@api.shop.example/v1/orders", "https://token@api.shop.example/"] {
        let errs = PullSpec::new(url).validate().expect_err(url);
        assert!(errs.iter().any(|e| e.starts_with("url: holds credentials")), "{url}: {errs:?}");
    }
    // An `@` in the query is no credential.
    assert!(PullSpec::new("https://api.shop.example/v1/orders?email=a@b.example").validate().is_ok());
}
