//! Adversarial records and expressions (a review's probes): each test states the promised
//! behaviour: no panic, bounded time, valid output, nothing lost silently.

use super::*;
use std::time::Instant;

/// The longest an expression the budget stops may run here. Not a speed target: without the
/// budget these run for minutes (quadratic work), with it well under a second in a release
/// build; the margin is for a debug build on a loaded 2-core machine (CI runs test binaries
/// side by side; one run took 2.3 s where 2 s was the bound).
const GUARD: std::time::Duration = std::time::Duration::from_secs(10);

fn mapping(fields: Value) -> Result<Mapping, Vec<MappingIssue>> {
    test_mapping(fields, json!([]), "ignore")
}

/// Runs `f` on a thread with a 2 MiB stack (a tokio worker's), reporting a panic as Err.
fn on_small_stack<T: Send + 'static>(f: impl FnOnce() -> T + Send + 'static) -> std::thread::Result<T> {
    std::thread::Builder::new().stack_size(2 << 20).spawn(f).expect("thread").join()
}

#[test]
fn money_to_minor_units_huge_negative_exponent_in_jpy_does_not_panic() {
    let m = mapping(json!({"/a": {"from": "/a", "money": "to-minor-units", "currency": "JPY"}}))
        .expect("compiles");
    let got = std::panic::catch_unwind(|| m.apply(&json!({"a": "1e-9223372036854775808"})).map(|_| ()));
    let r = got.expect("no panic (attempt to negate with overflow)");
    assert_eq!(r.expect_err("not a whole yen").rule, "money");
}

#[test]
fn money_to_minor_units_zero_with_big_exponent_is_zero() {
    // `0e5000` and `0e-99999999999999999999` are exactly 0 minor units.
    let m = mapping(json!({"/a": {"from": "/a", "money": "to-minor-units", "currency": "EUR"}}))
        .expect("compiles");
    let (b, _) = m.apply(&json!({"a": "0e5000"})).expect("zero is an amount");
    assert_eq!(b["a"].to_json(), "0");
}

#[test]
fn unix_timestamp_beyond_year_9999_is_not_written_as_invalid_rfc3339() {
    // Milliseconds given to a `unix` rule (a common mistake): year 55 840.
    let m = mapping(json!({"/t": {"from": "/t", "timestamp": "unix"}})).expect("compiles");
    match m.apply(&json!({"t": 1700000000123i64})) {
        Err(r) => assert_eq!(r.rule, "timestamp"),
        Ok((b, _)) => {
            let s = b["t"].as_str().expect("text").to_owned();
            assert!(
                s.len() >= 4 && s.as_bytes()[..4].iter().all(u8::is_ascii_digit),
                "not RFC 3339 (4-digit year): {s}"
            );
        }
    }
}

#[test]
fn leap_second_at_non_midnight_is_refused_or_valid() {
    // RFC 3339 allows :60 only for a real leap second (23:59:60 UTC); 14:05:60+01:00 is not.
    let m =
        mapping(json!({"/t": {"from": "/t", "timestamp": "rfc3339", "offset": "split"}})).expect("compiles");
    let got = m.apply(&json!({"t": "2026-11-20T14:05:60+01:00"}));
    if let Ok((b, _)) = got {
        panic!("accepted a non-leap :60 second: {}", b.to_json());
    }
}

#[test]
fn expr_if_in_reduce_update_is_one_value() {
    // `if` gives one value per input whichever branch runs: a common jq idiom.
    for code in [
        "reduce .[] as $x (0; if $x > 0 then . + $x else . end)",
        "[.[] | if . > 1 then \"big\" elif . > 0 then \"small\" else \"none\" end] | join(\",\")",
    ] {
        let m = mapping(json!({"/x": {"expr": code}}));
        assert!(m.is_ok(), "`{code}` refused: {:?}", m.err());
    }
}

#[test]
fn expr_def_is_refused_even_when_top_level() {
    for code in ["def f: f; f", "def f: [f]; f", "def r: ., (.[]? | r); r"] {
        assert!(expr::Expr::compile(code).is_err(), "`{code}` compiled: recursion in the sandbox");
    }
}

#[test]
fn expr_long_path_chain_does_not_overflow_a_small_stack() {
    let code: String = ".a".repeat(1000);
    let r = on_small_stack(move || {
        let m = mapping(json!({"/x": {"expr": code}}));
        if let Ok(m) = m {
            let _ = m.apply(&json!({"a": {"a": 1}}));
        }
    });
    assert!(r.is_ok(), "stack overflow or panic");
}

#[test]
fn expr_deep_built_values_on_small_stack() {
    let r = on_small_stack(|| {
        let m = mapping(json!({"/x": {"expr": "reduce range(250) as $i (0; [.]) | [..] | tojson | length"}}))
            .expect("compiles");
        let _ = m.apply(&json!({}));
        let m = mapping(json!({"/x": {"expr": "reduce range(250) as $i (0; [.]) | (.. |= .) | . == ."}}))
            .expect("compiles");
        let _ = m.apply(&json!({}));
    });
    assert!(r.is_ok(), "stack overflow or panic");
}

#[test]
fn expr_deep_record_on_small_stack() {
    let mut text = String::new();
    for _ in 0..127 {
        text.push_str("{\"a\":");
    }
    text.push('1');
    for _ in 0..127 {
        text.push('}');
    }
    let rec = Value::parse(text.as_bytes()).expect("127 deep parses");
    let r = on_small_stack(move || {
        for code in ["[..] | length", "(.. |= .) | tojson", ". == .", "[paths] | length", "tostring"] {
            if let Ok(m) = mapping(json!({"/x": {"expr": code}})) {
                let _ = m.apply(&rec);
            }
        }
    });
    assert!(r.is_ok(), "stack overflow or panic");
}

#[test]
fn expr_string_slice_work_is_charged() {
    // A 1 MiB string (a webhook's `body`) sliced in a loop: every slice decodes the whole
    // string, charged one step. The budget should bound the time.
    let s = "x".repeat(1 << 20);
    let m = mapping(json!({"/x": {
        "expr": ".s as $s | reduce range(3000) as $i (0; . + ($s[0:1] | length))"}}))
    .expect("compiles");
    let t = Instant::now();
    let r = m.apply(&json!({"s": s}));
    let took = t.elapsed();
    assert!(took < GUARD, "{took:?} for {r:?}");
}

#[test]
fn expr_string_length_work_is_charged() {
    let s = "é".repeat(1 << 19);
    let m = mapping(json!({"/x": {"expr": ".s as $s | reduce range(30000) as $i (0; . + ($s | length))"}}))
        .expect("compiles");
    let t = Instant::now();
    let r = m.apply(&json!({"s": s}));
    let took = t.elapsed();
    assert!(took < GUARD, "{took:?} for {}", r.is_ok());
}

#[test]
fn expr_big_number_compare_is_charged() {
    let a = format!("1{}", "0".repeat(9990));
    let b = format!("2{}", "0".repeat(9990));
    let rec = Value::parse(format!("{{\"a\": {a}, \"b\": {b}}}").as_bytes()).expect("json");
    let m = mapping(json!({"/x": {
        "expr": ".a as $a | .b as $b | reduce range(10000) as $i (0; . + ([$a < $b] | length))"}}))
    .expect("compiles");
    let t = Instant::now();
    let r = m.apply(&rec);
    let took = t.elapsed();
    assert!(took < GUARD, "{took:?} for {}", r.is_ok());
}

#[test]
fn expr_huge_exponent_and_repeat_and_range_are_refused_cleanly() {
    for (code, rec) in [
        (".n + 1", json!({"n": 1})),
        ("\"ab\" * 1e18", json!({})),
        ("\"\" * 1e18", json!({})),
        ("[limit(1e9999; range(0; 1e9999))] | length", json!({})),
        ("[range(0; 10; 0)] | length", json!({})),
        ("[range(0.5; 3; 0.25)] | length", json!({})),
        (".[1e9999]", json!([])),
        (".[100000000] = 1", json!([])),
        ("1e9999 / 1e-9999", json!({})),
        ("1e9999 % 7", json!({})),
        ("{(.k): 1}", json!({"k": 1})),
        ("[.[] | tostring] | join(\",\")", Value::parse(b"[1E400, -0, 0.10]").expect("j")),
    ] {
        let m = mapping(json!({"/x": {"expr": code}})).expect(code);
        let t = Instant::now();
        let r = std::panic::catch_unwind(|| m.apply(&rec).map(|(b, _)| b.to_json()));
        assert!(r.is_ok(), "`{code}` panicked");
        assert!(t.elapsed() < GUARD, "`{code}` took {:?}", t.elapsed());
        eprintln!("{code}: {:?}", r.ok().map(|r| r.map_err(|e| e.message)));
    }
}

#[test]
fn adversarial_records_through_paths_and_fidelity() {
    let m = mapping(json!({
        "/a": {"from": "/~0~1/*/", "default": 0},
        "/b": {"from": "/x/*/*/y", "on_null": "omit"},
        "/c": {"concat": ["/", "/~1"], "separator": "-"},
        "/d": {"from": "/n", "convert": "integer"},
    }))
    .expect("compiles");
    let rec = Value::parse(
        br#"{"~/": [{"": 1}, {}, null], "x": [[{"y": null}, {"y": 2}], []], "": "e", "/": -0,
            "n": -0}"#,
    )
    .expect("json");
    let (b, f) = m.apply(&rec).expect("maps");
    eprintln!("{} {f:?}", b.to_json());
    assert_eq!(b["c"], json!("e--0"));
}
