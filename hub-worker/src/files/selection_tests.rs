//! Event selection in integration files: record kinds picked by request header, `[[drop]]`
//! rules, and the mistakes in them, each reported at its line.

use layer1_ingest::Failure;
use layer2_normalize::{Normalizer, RawInput, Record};

use super::scratch::ScratchDir;
use super::*;

/// A scratch integrations directory with the core catalogue and the schemas these tests use.
struct Dir(ScratchDir);

impl Dir {
    fn new() -> Self {
        let d = Self(ScratchDir::new("po-select"));
        d.write(
            "core.toml",
            "destinations = [\"core.dev\"]\n[[message_types]]\ntype = \"dev.event\"\nversion = \"1\"\nschema = \"any.json\"\n",
        );
        d.write("any.json", "{}");
        d.write(
            "issue.json",
            r#"{"type": "object", "required": ["action", "issue"],
               "properties": {"action": {"type": "string"},
                 "issue": {"type": "object", "required": ["id", "number"]}}}"#,
        );
        d.write(
            "envelope.json",
            r#"{"type": "object", "additionalProperties": false,
               "properties": {"action": {"type": "string"}, "issue": {}, "ref": {}, "commits": {}}}"#,
        );
        d
    }

    fn write(&self, name: &str, text: &str) {
        self.0.write(name, text);
    }

    /// Loads the directory with `github.toml` as given; the diagnostics of that file.
    fn load(&self, github: &str) -> Loaded {
        self.write("github.toml", github);
        load_dir(self.0.path(), false)
    }
}

const KINDS: &str = r#"
[kinds.issue_opened]
schema = "issue.json"
schema_version = "1"
source_ref = "/issue/id"
when = { all = [ { header = "X-GitHub-Event", equals = "issues" }, { pointer = "/action", equals = "opened" } ] }
[kinds.issue_opened.mapping]
name = "issue"
version = "1"
message_type = "dev.event"
type_version = "1"
on_unmapped = "ignore"
fields = { "/title" = { from = "/issue/title" } }

[kinds.push]
schema = "any.json"
schema_version = "1"
when = { header = "X-GitHub-Event", equals = "push" }
[kinds.push.mapping]
name = "push"
version = "1"
message_type = "dev.event"
type_version = "1"
on_unmapped = "ignore"
fields = { "/title" = { from = "/ref" } }

[[routes]]
type = "dev.event"
destination = "core.dev"
"#;

const DROP: &str = r#"source = "github"

[[drop]]
name = "issues-not-opened"          # shown on the row and in stats
when = { all = [ { header = "X-GitHub-Event", equals = "issues" },
                 { not = { pointer = "/action", equals = "opened" } } ] }
"#;

async fn normalize(n: &DeclaredNormalizer, body: &str, event: &str) -> Result<Vec<Record>, Failure> {
    let headers = format!(
        r#"{{"x-github-event":"{event}","x-github-delivery":"72d3162e-cc78-11e3-81ab-4c9367dc0958"}}"#
    );
    let raw = RawInput {
        id: uuid::Uuid::now_v7().into(),
        source: "github",
        source_ref: None,
        content_type: "application/json",
        body: body.as_bytes(),
        headers: &headers,
    };
    n.normalize(&raw).await
}

fn at(loaded: &Loaded, needle: &str) -> Diagnostic {
    loaded
        .diagnostics
        .iter()
        .find(|d| d.message.contains(needle))
        .cloned()
        .unwrap_or_else(|| panic!("no diagnostic with {needle:?}: {:#?}", loaded.diagnostics))
}

fn line_of(text: &str, needle: &str) -> usize {
    text.lines().position(|l| l.contains(needle)).expect("in the file") + 1
}

/// The GitHub case from the file: kinds by `X-GitHub-Event`, other issue actions dropped.
#[tokio::test]
async fn a_github_file_picks_kinds_by_header_and_drops_by_rule() {
    let dir = Dir::new();
    let loaded = dir.load(&format!("{DROP}{KINDS}"));
    assert!(loaded.diagnostics.is_empty(), "{:#?}", loaded.diagnostics);
    let n = &loaded.integrations[0].normalizer;
    let opened =
        r#"{"action":"opened","issue":{"id":1296269,"number":1347,"title":"Spelling error in the README"}}"#;
    let recs = normalize(n, opened, "issues").await.expect("opened");
    assert_eq!((recs[0].kind.as_str(), recs[0].source_ref.as_deref()), ("issue_opened", Some("1296269")));
    let closed = opened.replace("opened", "closed");
    match normalize(n, &closed, "issues").await {
        Err(Failure::Dropped { rule }) => assert_eq!(rule, "issues-not-opened"),
        other => panic!("expected a drop, got {other:?}"),
    }
    let recs = normalize(n, r#"{"ref":"refs/heads/main"}"#, "push").await.expect("push");
    assert_eq!(recs[0].kind, "push");
    // Without the drop rule the same closed issue is rejected, naming the kinds tried.
    let loaded = dir.load(&format!("source = \"github\"\n{KINDS}"));
    match normalize(&loaded.integrations[0].normalizer, &closed, "issues").await {
        Err(Failure::Rejected(r)) => {
            assert!(r.message.starts_with("matches none of the record kinds: issue_opened (when: "), "{r}")
        }
        other => panic!("expected a rejection, got {other:?}"),
    }
}

#[test]
fn drop_rules_are_checked_at_their_lines() {
    let dir = Dir::new();
    let text = format!(
        r#"source = "github"

[payload]
schema = "envelope.json"

[[drop]]
name = "Pings!"
when = {{ header = "X-GitHub-Event", equals = "ping" }}

[[drop]]
name = "labels"
when = {{ all = [] }}

[[drop]]
name = "labels"
when = {{ pointer = "/acton", equals = "labeled" }}

[[drop]]
name = "both"
when = {{ pointer = "/action", header = "X-GitHub-Event", equals = "x" }}
{KINDS}
[[routes]]
type = "dev.event"
destination = "core.dev"
filter = {{ not = {{ header = "X-GitHub-Event", equals = "ping" }} }}
"#
    );
    let loaded = dir.load(&text);
    assert!(loaded.integrations.is_empty());
    let d = at(&loaded, "drop rule `Pings!` must be");
    assert_eq!(d.line, Some(line_of(&text, "Pings!")));
    let d = at(&loaded, "`all = []` is useless");
    assert_eq!(d.line, Some(line_of(&text, "all = []")));
    let d = at(&loaded, "drop rule `labels` is declared twice");
    assert_eq!(
        d.line,
        text.lines().enumerate().filter(|(_, l)| l.contains("\"labels\"")).map(|(i, _)| i + 1).last()
    );
    let d = at(&loaded, "`/acton` cannot exist in a payload");
    assert_eq!(d.line, Some(line_of(&text, "/acton")));
    let d = at(&loaded, "exactly one of");
    assert_eq!(d.line, Some(line_of(&text, "equals = \"x\"")));
    let d = at(&loaded, "only known for incoming webhooks");
    assert_eq!(d.line, Some(line_of(&text, "filter =")));
    assert_eq!(loaded.diagnostics.len(), 6, "{:#?}", loaded.diagnostics);
}

#[test]
fn drop_rules_need_record_kinds() {
    let dir = Dir::new();
    let loaded = dir.load(DROP);
    let d = at(&loaded, "[drop] is for webhooks in");
    assert_eq!(d.line, Some(line_of(DROP, "[[drop]]")));
}

/// `when = [ ... ]`, several tests meant together, is answered with how to combine them.
#[test]
fn when_given_an_array_says_how_to_combine_at_its_line() {
    let dir = Dir::new();
    let want = "`when` takes one condition: { pointer = \"/action\", equals = \"opened\" } or { header = ... }; \
                combine several with all = [...], any = [...], not = {...}";
    let kinds = KINDS.replace(
        r#"when = { header = "X-GitHub-Event", equals = "push" }"#,
        r#"when = [ { header = "X-GitHub-Event", equals = "push" }, { pointer = "/ref", exists = true } ]"#,
    );
    let text = format!("source = \"github\"\n{kinds}");
    let loaded = dir.load(&text);
    let d = at(&loaded, want);
    assert_eq!(d.line, Some(line_of(&text, "when = [")), "{d}");

    let text = DROP.replace("when = { all = [", "when = [").replace("} ] }", "} ]");
    let text = format!("{text}{KINDS}");
    let loaded = dir.load(&text);
    let d = at(&loaded, want);
    assert_eq!(d.line, Some(line_of(&text, "when = [")), "{d}");
}
