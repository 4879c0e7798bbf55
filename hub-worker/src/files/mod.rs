//! Integrations as files: a directory with `core.toml` (the core app's destinations and message
//! types, each with a JSON Schema) and one TOML file per source: upstream, its front door, where
//! records sit in a payload, its record kinds with their schemas and mappings, and its routes;
//! downstream, the third party it delivers to (`[target]`) and, per core message type, the
//! mapping into the third party's terms and the request made of it (`[outbound."<type>"]`).
//!
//! Loading checks everything it can before anything runs and reports each problem with its file
//! and line; `hub-worker check` prints them and `run` refuses to start while any remain.

use std::collections::{BTreeSet, HashMap};
use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use serde::Deserialize;

use layer1_ingest::json::tokens;
use layer2_normalize::{DeclaredNormalizer, JsonSchema};
use layer3_translate::MappingTranslator;
use layer4_dispatch::Route;

use crate::config::SourceConfig;

mod integration;
mod outbound;
#[cfg(test)]
mod outbound_tests;
mod pull;
#[cfg(test)]
mod pull_tests;
#[cfg(test)]
pub(crate) mod scratch;
#[cfg(test)]
mod selection_tests;
mod target;

use integration::load_integration;

/// The catalogue's file name inside an integrations directory.
pub const CORE_FILE: &str = "core.toml";
/// Largest schema or integration file read, bytes.
const MAX_FILE_BYTES: u64 = 4 * 1024 * 1024;

/// One problem, where it is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Diagnostic {
    /// The file.
    pub file: PathBuf,
    /// 1-based line, when the problem has a place in the file.
    pub line: Option<usize>,
    /// What is wrong.
    pub message: String,
}

impl fmt::Display for Diagnostic {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.line {
            Some(l) => write!(f, "{}:{l}: error: {}", self.file.display(), self.message),
            None => write!(f, "{}: error: {}", self.file.display(), self.message),
        }
    }
}

/// Finds the line of a key path in a TOML file, for diagnostics.
pub struct Locator {
    text: String,
    doc: Option<toml_edit::ImDocument<String>>,
}

impl Locator {
    /// A locator over `text`.
    pub fn new(text: &str) -> Self {
        Self { text: text.to_owned(), doc: toml_edit::ImDocument::parse(text.to_owned()).ok() }
    }

    /// The 1-based line of byte `offset`.
    pub fn line_at(&self, offset: usize) -> usize {
        self.text.get(..offset).map_or(1, |t| t.matches('\n').count() + 1)
    }

    /// The line of the deepest key of `path` that exists (`["kinds", "contact", "schema"]`;
    /// array elements by index).
    pub fn line_of(&self, path: &[String]) -> Option<usize> {
        let doc = self.doc.as_ref()?;
        let mut item: &toml_edit::Item = doc.as_item();
        let mut span = None;
        for seg in path {
            if let Some(t) = item.as_table_like() {
                let Some((k, v)) = t.get_key_value(seg) else { break };
                span = k.span().or(v.span()).or(span);
                item = v;
            } else if let (Some(aot), Ok(i)) = (item.as_array_of_tables(), seg.parse::<usize>()) {
                let Some(t) = aot.get(i) else { break };
                span = t.span().or(span);
                // Continue into the table (an Item view of it).
                // `Item::get` indexes an array of tables by position.
                let Some(next) = item.get(i) else { break };
                item = next;
            } else if let (Some(arr), Ok(i)) = (item.as_array(), seg.parse::<usize>()) {
                let Some(v) = arr.get(i) else { break };
                span = v.span().or(span);
                break;
            } else {
                break;
            }
        }
        span.map(|s| self.line_at(s.start))
    }
}

/// A diagnostics collector for one file.
struct FileDiags<'a> {
    file: PathBuf,
    loc: Locator,
    out: &'a mut Vec<Diagnostic>,
}

impl FileDiags<'_> {
    fn at(&mut self, path: &[&str], message: impl Into<String>) {
        let path: Vec<String> = path.iter().map(|s| (*s).to_owned()).collect();
        self.at_path(&path, message);
    }

    fn at_path(&mut self, path: &[String], message: impl Into<String>) {
        let line = self.loc.line_of(path);
        self.out.push(Diagnostic { file: self.file.clone(), line, message: message.into() });
    }
}

/// `core.toml`: what the core app accepts.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct CoreFile {
    /// Queues the core app reads.
    destinations: Vec<String>,
    /// Core message types with their schemas.
    #[serde(default)]
    message_types: Vec<CoreType>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct CoreType {
    #[serde(rename = "type")]
    message_type: String,
    version: String,
    schema: PathBuf,
}

/// The core app's contract as declared: destinations and message type schemas.
#[derive(Debug, Default)]
pub struct Catalogue {
    /// Declared destinations.
    pub destinations: BTreeSet<String>,
    /// Core message type schemas by (type, version).
    pub types: HashMap<(String, String), Arc<JsonSchema>>,
}

/// One source's integration, ready to register.
pub struct Integration {
    /// The source name.
    pub source: String,
    /// What the file says the integration is.
    pub description: Option<String>,
    /// The file it came from.
    pub file: PathBuf,
    /// Layer 2 (without kinds, and not registered, for a file with only a downstream side).
    pub normalizer: DeclaredNormalizer,
    /// Layer 3, one per record kind.
    pub translators: Vec<MappingTranslator>,
    /// Layer 4 (scoped to this source).
    pub routes: Vec<Route>,
    /// The front door, if the source takes webhooks.
    pub ingress: Option<SourceConfig>,
    /// `[pull]`, if the hub polls the source itself, with `records` set to `[payload] records`
    /// (where layer 2 splits each page).
    pub pull: Option<crate::pull::PullConfig>,
    /// The downstream side: the file's `[target]` (named after the source) and its
    /// `[outbound."<core type>"]` routes, when it delivers to the third party.
    pub outbound: Option<crate::outbound::Outbound>,
    /// `[payload] redact`: what the audit desk masks of this source's messages for readers
    /// without scope `raw`; `None` when the file names nothing.
    pub redaction: Option<crate::redact::SourceRedaction>,
}

impl Integration {
    /// Registers the integration on `builder`: its normalizer, its translators and its routes
    /// (added with [`crate::HubBuilder::routes`], so they are asked beside any router), its
    /// target and outbound routes, and its pulled source ([`crate::HubBuilder::pull`]). A pulled
    /// source whose settings cannot be built now (a secret that is not set) is a
    /// [`crate::HubBuilder::problem`], `file:line: error: ...`: `build` refuses to start.
    pub fn register(self, mut builder: crate::HubBuilder) -> crate::HubBuilder {
        if let Some(p) = &self.pull {
            let built = p.settings(&self.source).and_then(|s| match p.schedule() {
                Ok(schedule) => Ok((s, schedule)),
                Err(e) => Err(vec![e]),
            });
            builder = match built {
                Ok((settings, schedule)) => builder.pull(settings, schedule),
                Err(messages) => pull::problems(&self.file, &self.source, &messages)
                    .into_iter()
                    .fold(builder, crate::HubBuilder::problem),
            };
        }
        // A file with only a downstream side has no record kinds: a normalizer for it would
        // take the source's payloads only to reject every one.
        if !self.translators.is_empty() {
            builder = builder.normalizer(Arc::new(self.normalizer)).routes(self.routes);
        }
        for t in self.translators {
            builder = builder.translator(Arc::new(t));
        }
        if let Some(o) = self.outbound {
            builder = builder.outbound(o);
        }
        if let Some(r) = self.redaction {
            builder = builder.redaction(self.source, r);
        }
        builder
    }
}

/// Everything an integrations directory declares.
#[derive(Default)]
pub struct Loaded {
    /// The core contract.
    pub catalogue: Catalogue,
    /// The integrations (only those without errors).
    pub integrations: Vec<Integration>,
    /// Every problem found.
    pub diagnostics: Vec<Diagnostic>,
}

fn read_text(path: &Path) -> Result<String, String> {
    let meta = std::fs::metadata(path).map_err(|e| format!("cannot read {}: {e}", path.display()))?;
    if meta.len() > MAX_FILE_BYTES {
        return Err(format!("{} is larger than {MAX_FILE_BYTES} bytes", path.display()));
    }
    std::fs::read_to_string(path).map_err(|e| format!("cannot read {}: {e}", path.display()))
}

/// Reads and compiles a JSON Schema file (relative paths from `base`).
fn load_schema(base: &Path, rel: &Path) -> Result<JsonSchema, String> {
    let path = base.join(rel);
    let text = read_text(&path)?;
    // A schema is read by serde_json (the validator's own document); the exact parse first
    // refuses a repeated key, which serde_json would resolve silently.
    layer1_ingest::json::Value::parse(text.as_bytes())
        .map_err(|e| format!("schema {} is not JSON: {e}", path.display()))?;
    let doc: serde_json::Value =
        serde_json::from_str(&text).map_err(|e| format!("schema {} is not JSON: {e}", path.display()))?;
    JsonSchema::compile(doc).map_err(|e| format!("{} {e}", path.display()))
}

fn parse_toml<T: serde::de::DeserializeOwned>(d: &mut FileDiags<'_>, text: &str) -> Option<T> {
    match toml::from_str::<T>(text) {
        Ok(v) => Some(v),
        Err(e) => {
            let line = e.span().map(|s| d.loc.line_at(s.start));
            d.out.push(Diagnostic { file: d.file.clone(), line, message: e.message().to_owned() });
            None
        }
    }
}

/// A JSON pointer to something below the root (`/id`).
fn is_pointer(p: &str) -> bool {
    tokens(p).is_some_and(|t| !t.is_empty())
}

fn valid_name(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 64
        && s.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b"-_.".contains(&b))
}

/// Loads `dir`. With `check_secrets`, a secret that is not available (a front door's, a
/// target's, a pulled source's) is an error (what `check` and `run` want; tests of the files
/// alone may skip it).
pub fn load_dir(dir: &Path, check_secrets: bool) -> Loaded {
    load_dir_with(dir, Secrets { ingress: check_secrets, targets: check_secrets, pulls: check_secrets })
}

/// Which secrets [`load_dir_with`] requires to be available.
#[derive(Debug, Clone, Copy, Default)]
pub struct Secrets {
    /// Front doors' (`[ingress]`): needed when the HTTP server runs.
    pub ingress: bool,
    /// Targets' (`[target.auth]`): needed when deliveries run (`publish.inbound_queue` set).
    pub targets: bool,
    /// Pulled sources' (`[pull.auth]`): needed whenever the hub runs (it polls them), and
    /// read by [`Integration::register`] in any case.
    pub pulls: bool,
}

/// [`load_dir`], saying which secrets must be available.
pub fn load_dir_with(dir: &Path, secrets: Secrets) -> Loaded {
    let mut loaded = Loaded::default();
    let core_path = dir.join(CORE_FILE);
    load_core(&core_path, dir, &mut loaded);
    let mut files: Vec<PathBuf> = match std::fs::read_dir(dir) {
        Ok(entries) => entries
            .filter_map(|e| e.ok().map(|e| e.path()))
            .filter(|p| {
                p.extension().is_some_and(|x| x == "toml") && p.file_name() != Some(CORE_FILE.as_ref())
            })
            .collect(),
        Err(e) => {
            loaded.diagnostics.push(Diagnostic {
                file: dir.to_owned(),
                line: None,
                message: format!("cannot read the integrations directory: {e}"),
            });
            return loaded;
        }
    };
    files.sort();
    let mut seen: HashMap<String, PathBuf> = HashMap::new();
    for file in files {
        if let Some(i) = load_integration(&file, dir, &loaded.catalogue, secrets, &mut loaded.diagnostics) {
            if let Some(first) = seen.get(&i.source) {
                let loc = Locator::new(&read_text(&file).unwrap_or_default());
                loaded.diagnostics.push(Diagnostic {
                    file: file.clone(),
                    line: loc.line_of(&["source".into()]),
                    message: format!("source `{}` is already declared in {}", i.source, first.display()),
                });
                continue;
            }
            seen.insert(i.source.clone(), file.clone());
            loaded.integrations.push(i);
        }
    }
    loaded
}

fn load_core(path: &Path, dir: &Path, loaded: &mut Loaded) {
    let text = match read_text(path) {
        Ok(t) => t,
        Err(e) => {
            loaded.diagnostics.push(Diagnostic {
                file: path.to_owned(),
                line: None,
                message: format!("{e}: an integrations directory declares the core app's destinations and message types in {CORE_FILE}"),
            });
            return;
        }
    };
    let mut d = FileDiags { file: path.to_owned(), loc: Locator::new(&text), out: &mut loaded.diagnostics };
    let Some(core) = parse_toml::<CoreFile>(&mut d, &text) else { return };
    for (i, dest) in core.destinations.iter().enumerate() {
        if dest.is_empty() || dest.len() > 255 || dest.chars().any(char::is_control) {
            d.at(
                &["destinations", &i.to_string()],
                format!("destination `{dest}` is not 1 to 255 characters"),
            );
        }
        loaded.catalogue.destinations.insert(dest.clone());
    }
    for (i, t) in core.message_types.iter().enumerate() {
        let idx = i.to_string();
        let key = (t.message_type.clone(), t.version.clone());
        if loaded.catalogue.types.contains_key(&key) {
            d.at(
                &["message_types", &idx, "type"],
                format!("{} v{} is declared twice", t.message_type, t.version),
            );
            continue;
        }
        match load_schema(dir, &t.schema) {
            Ok(s) => {
                loaded.catalogue.types.insert(key, Arc::new(s));
            }
            Err(e) => d.at(&["message_types", &idx, "schema"], e),
        }
    }
}

/// Checks the destinations `core.toml` declares against the transport's queue names: each must
/// map to a queue the transport can use, and none may share one with another destination or
/// with the config's own queues (`before`: the receipts and inbound queues, `[[routes]]`
/// destinations; their own problems are the config's to report). Problems come with the line
/// of the destination in `core.toml`.
pub fn check_queue_names(
    dir: &Path,
    names: &layer4_dispatch::QueueNames,
    before: &[&str],
) -> Vec<Diagnostic> {
    let path = dir.join(CORE_FILE);
    // A core.toml that does not load was reported by `load_dir` already.
    let Ok(text) = read_text(&path) else { return Vec::new() };
    let Ok(core) = toml::from_str::<CoreFile>(&text) else { return Vec::new() };
    let loc = Locator::new(&text);
    let mut all: Vec<&str> = before.to_vec();
    all.extend(core.destinations.iter().map(String::as_str));
    names
        .check(&all)
        .into_iter()
        .filter_map(|(i, why)| {
            let idx = i.checked_sub(before.len())?;
            Some(Diagnostic {
                file: path.clone(),
                line: loc.line_of(&["destinations".into(), idx.to_string()]),
                message: format!("destination `{}` on {}: {why}", all[i], names.rule().transport()),
            })
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use layer2_normalize::{Normalizer, RawInput};

    /// Kinds are tried in the order the file lists them, not by name.
    #[tokio::test]
    async fn kinds_keep_file_order_and_diagnostics_have_lines() {
        let scratch = super::scratch::ScratchDir::with_catalogue("po-files");
        let dir = scratch.path().to_owned();
        let w = |name: &str, text: &str| {
            scratch.write(name, text);
        };
        let kind = |name: &str| {
            format!(
                "[kinds.{name}]\nschema = \"any.json\"\nschema_version = \"1\"\nwhen = {{ pointer = \"/a\" }}\n\
                 [kinds.{name}.mapping]\nname = \"m\"\nversion = \"1\"\nmessage_type = \"t\"\ntype_version = \"1\"\n\
                 on_unmapped = \"ignore\"\nfields = {{ \"/a\" = {{ from = \"/a\" }} }}\n"
            )
        };
        w(
            "s.toml",
            &format!(
                "source = \"s\"\n{}{}[[routes]]\ntype = \"t\"\ndestination = \"q\"\n",
                kind("zeta"),
                kind("alpha")
            ),
        );
        let loaded = load_dir(&dir, false);
        assert!(loaded.diagnostics.is_empty(), "{:?}", loaded.diagnostics);
        let raw = RawInput {
            id: uuid::Uuid::now_v7().into(),
            source: "s",
            source_ref: None,
            content_type: "application/json",
            body: br#"{"a":1}"#,
            headers: "",
        };
        let recs = loaded.integrations[0].normalizer.normalize(&raw).await.expect("normalizes");
        assert_eq!(recs[0].kind, "zeta", "the first kind in the file wins");

        w("s.toml", "source = \"s\"\n\n[kinds.k]\nschema = \"missing.json\"\n");
        let loaded = load_dir(&dir, false);
        let d = &loaded.diagnostics[0];
        assert_eq!((d.line, d.message.contains("missing field")), (Some(3), true), "{d}");
    }

    /// A bad `ignore` element is reported at its own line of a multi-line array, both when it
    /// is no pointer (compile) and when the schema rules it out (lint).
    #[test]
    fn a_bad_ignore_element_is_reported_at_its_line() {
        let scratch = super::scratch::ScratchDir::with_catalogue("po-files");
        let dir = scratch.path().to_owned();
        let w = |name: &str, text: &str| {
            scratch.write(name, text);
        };
        w(
            "issue.json",
            r#"{"type": "object", "additionalProperties": false, "properties": {"action": {},
                "issue": {"type": "object", "properties": {"number": {}}}}}"#,
        );
        let text = "source = \"github\"\n\
            [kinds.issue]\nschema = \"issue.json\"\nschema_version = \"1\"\n\
            [kinds.issue.mapping]\nname = \"m\"\nversion = \"1\"\nmessage_type = \"t\"\ntype_version = \"1\"\n\
            ignore = [\n  \"/action\",\n  \"/**/url\",\n  \"issue/url\",\n  \"/repository/id\",\n]\n\
            fields = { \"/n\" = { from = \"/issue/number\" } }\n\
            [[routes]]\ntype = \"t\"\ndestination = \"q\"\n";
        w("github.toml", text);
        let line = |needle: &str| text.lines().position(|l| l.contains(needle)).map(|i| i + 1);
        let loaded = load_dir(&dir, false);
        let found: Vec<(Option<usize>, &str)> =
            loaded.diagnostics.iter().map(|d| (d.line, d.message.as_str())).collect();
        assert_eq!(found.len(), 2, "{found:#?}");
        assert_eq!(found[0].0, line("\"issue/url\""), "{found:#?}");
        assert!(found[0].1.starts_with("ignore[2] `issue/url` is not a JSON pointer"), "{found:#?}");
        assert_eq!(found[1].0, line("/repository/id"), "{found:#?}");
        assert!(found[1].1.starts_with("ignore[3] `/repository/id` cannot exist in a record"), "{found:#?}");
        assert_ne!(line("/repository/id"), line("ignore = ["));
    }

    /// `check` reads the record schema's types: a text timestamp format on a field that is only
    /// ever an integer (a GitHub push's `created_at`) is an error at the rule's line.
    #[test]
    fn a_conversion_the_schema_type_rules_out_is_reported_at_its_line() {
        let scratch = super::scratch::ScratchDir::with_catalogue("po-files");
        let dir = scratch.path().to_owned();
        let w = |name: &str, text: &str| {
            scratch.write(name, text);
        };
        w(
            "push.json",
            r#"{"type": "object", "properties": {"repository": {"type": "object", "properties": {
                "id": {"type": "integer"}, "created_at": {"type": "integer"},
                "pushed_at": {"type": ["integer", "null"]},
                "updated_at": {"type": "string", "format": "date-time"}}}}}"#,
        );
        let file = |created_at: &str| {
            format!(
                "source = \"github\"\n\n[kinds.push]\nschema = \"push.json\"\nschema_version = \"1\"\n\n\
                 [kinds.push.mapping]\nname = \"m\"\nversion = \"1\"\nmessage_type = \"t\"\ntype_version = \"1\"\n\
                 on_unmapped = \"ignore\"\n\n[kinds.push.mapping.fields]\n\
                 \"/repo_id\" = {{ from = \"/repository/id\", convert = \"string\" }}\n\
                 \"/created\" = {{ from = \"/repository/created_at\", timestamp = \"{created_at}\" }}\n\
                 \"/pushed\" = {{ from = \"/repository/pushed_at\", timestamp = \"unix\" }}\n\
                 \"/updated\" = {{ from = \"/repository/updated_at\", timestamp = \"rfc3339\" }}\n\
                 \n[[routes]]\ntype = \"t\"\ndestination = \"q\"\n"
            )
        };
        w("github.toml", &file("rfc3339"));
        let loaded = load_dir(&dir, false);
        let text: Vec<String> = loaded.diagnostics.iter().map(ToString::to_string).collect();
        assert_eq!(loaded.diagnostics.len(), 1, "{text:#?}");
        let d = &loaded.diagnostics[0];
        assert_eq!(d.file, dir.join("github.toml"));
        assert_eq!(d.line, Some(16), "the `/created` rule's line: {d}");
        assert!(
            d.message.contains(
                "`/repository/created_at` is an integer in the record schema; `rfc3339` reads text: use \
                 `unix` or `unix-millis`"
            ),
            "{d}"
        );
        w("github.toml", &file("unix"));
        let loaded = load_dir(&dir, false);
        assert!(loaded.diagnostics.is_empty(), "{:?}", loaded.diagnostics);
    }
}
