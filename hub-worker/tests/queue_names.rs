//! `hub-worker check` against the configured transport's queue names: destinations are logical
//! names that every transport must be able to map to a queue of its own, one queue per name.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

fn hub_worker() -> Command {
    Command::new(env!("CARGO_BIN_EXE_hub-worker"))
}

fn temp_dir() -> PathBuf {
    let dir = std::env::temp_dir().join(format!("po-names-{}", uuid::Uuid::now_v7().simple()));
    std::fs::create_dir_all(&dir).expect("temp dir");
    dir
}

fn examples() -> String {
    Path::new(concat!(env!("CARGO_MANIFEST_DIR"), "/../examples/integrations")).display().to_string()
}

/// A config on `transport` (the `[transport]` section's body) over `integrations`.
fn config(dir: &Path, integrations: &str, transport: &str) -> PathBuf {
    let path = dir.join("hub.toml");
    std::fs::write(
        &path,
        format!("integrations_dir = {integrations:?}\n[database]\nurl = \"sqlite::memory:\"\n[transport]\n{transport}"),
    )
    .expect("write config");
    path
}

fn check(cfg: &Path) -> Output {
    hub_worker()
        .args(["check", "--config"])
        .arg(cfg)
        .env("SHOP_API_TOKEN", "shop-api-token-0123456789") // the examples' pulled source
        .env("RUST_BACKTRACE", "0")
        .output()
        .expect("runs")
}

fn text(out: &Output) -> String {
    format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr))
}

const SQS: &str = "kind = \"sqs\"\nregion = \"us-east-1\"\nendpoint_url = \"http://127.0.0.1:4566\"\n";
const RABBIT: &str = "kind = \"rabbitmq\"\nurl = \"amqp://guest:guest@127.0.0.1:5672/%2f\"\n";

/// The example integrations (`core.payments`, `hub.receipts`, ...) pass on SQS and on RabbitMQ:
/// SQS maps the dots by its default rule instead of refusing them at start.
#[test]
fn the_examples_pass_on_every_transport() {
    let dir = temp_dir();
    for transport in [SQS, RABBIT] {
        let out = check(&config(&dir, &examples(), transport));
        assert!(out.status.success(), "{transport}\n{}", text(&out));
    }
    let _ = std::fs::remove_dir_all(&dir);
}

/// Destinations SQS cannot take are `core.toml:line: error:` naming the name and the reason:
/// too long after the default rule, and two names on one queue (reported at the second).
#[test]
fn destinations_sqs_cannot_take_are_reported_with_file_and_line() {
    let dir = temp_dir();
    let ints = dir.join("integrations");
    std::fs::create_dir_all(&ints).expect("dir");
    let long = format!("core.{}", "x".repeat(80));
    let core = format!(
        "destinations = [\n  \"core.payments\",\n  \"core-payments\",   # COLLIDES\n  \"{long}\",   # TOO-LONG\n]\n"
    );
    std::fs::write(ints.join("core.toml"), core).expect("core.toml");
    let out = check(&config(&dir, &ints.display().to_string(), SQS));
    assert!(!out.status.success(), "{}", text(&out));
    let err = text(&out);
    let core_file = ints.join("core.toml").display().to_string();
    let collides = format!("{core_file}:3: error: destination `core-payments` on SQS:");
    assert!(
        err.lines().any(|l| l.starts_with(&collides)
            && l.contains("`core.payments` and `core-payments` are both SQS queue `core-payments`")),
        "{err}"
    );
    let too_long = format!("{core_file}:4: error: destination `{long}` on SQS:");
    assert!(err.lines().any(|l| l.starts_with(&too_long) && l.contains("SQS allows 80")), "{err}");
    assert!(err.contains("2 problem(s) found"), "{err}");

    // The same names are fine on RabbitMQ, which takes them as they are.
    let out = check(&config(&dir, &ints.display().to_string(), RABBIT));
    assert!(out.status.success(), "{}", text(&out));

    // A destination colliding with the config's own receipts queue is reported at core.toml.
    std::fs::write(ints.join("core.toml"), "destinations = [\n  \"hub-receipts\",\n]\n").expect("core.toml");
    let out = check(&config(&dir, &ints.display().to_string(), SQS));
    let err = text(&out);
    assert!(
        err.contains(&format!("{core_file}:2: error: destination `hub-receipts`"))
            && err.contains("`hub.receipts` and `hub-receipts` are both SQS queue `hub-receipts`"),
        "{err}"
    );
    let _ = std::fs::remove_dir_all(&dir);
}

/// `[transport.queues]` entries are checked against the transport's rules, and the config's
/// own queues too: clear errors naming the key.
#[test]
fn bad_queue_entries_and_config_queues_are_config_errors() {
    let dir = temp_dir();
    let cases = [
        (
            format!("{SQS}[transport.queues]\n\"core.ledger\" = \"ledger.prod\"\n"),
            "transport.queues.\"core.ledger\": SQS queue `ledger.prod` contains `.`",
        ),
        // Dotted keys may be bare (TOML nests them): the same entry.
        (
            format!("{SQS}[transport.queues]\ncore.ledger = \"not a url/\"\n"),
            "transport.queues.\"core.ledger\"",
        ),
        (
            format!("{SQS}[transport.queues]\n\"core.ledger\" = \"https://sqs.example.com/\"\n"),
            "is not an SQS queue URL",
        ),
        (
            format!("{SQS}[transport.queues]\n\"core.payments\" = \"q\"\n\"core.ledger\" = \"q\"\n"),
            "are both mapped to `q`",
        ),
        (
            format!("{RABBIT}[transport.queues]\n\"core.ledger\" = \"amq.ledger\"\n"),
            "RabbitMQ reserves queue names starting with `amq.`",
        ),
    ];
    for (transport, says) in cases {
        let out = check(&config(&dir, &examples(), &transport));
        assert!(
            !out.status.success() && text(&out).contains(says),
            "{transport}\nexpected `{says}` in\n{}",
            text(&out)
        );
    }
    // The receipts queue, checked against SQS's rules with the key named.
    let cfg = dir.join("receipts.toml");
    std::fs::write(
        &cfg,
        format!(
            "integrations_dir = {:?}\n[database]\nurl = \"sqlite::memory:\"\n[publish]\nreceipts_queue = \"{}\"\n[transport]\n{SQS}",
            examples(),
            "r".repeat(81)
        ),
    )
    .expect("write");
    let out = check(&cfg);
    assert!(
        !out.status.success()
            && text(&out).contains("publish.receipts_queue:")
            && text(&out).contains("SQS allows 80"),
        "{}",
        text(&out)
    );
    // A valid explicit entry onto a URL passes: the queue is another account's.
    let ok = format!(
        "{SQS}[transport.queues]\n\"core.ledger\" = \"https://sqs.eu-west-1.amazonaws.com/210987654321/ledger-intake\"\n"
    );
    let out = check(&config(&dir, &examples(), &ok));
    assert!(out.status.success(), "{}", text(&out));
    let _ = std::fs::remove_dir_all(&dir);
}
