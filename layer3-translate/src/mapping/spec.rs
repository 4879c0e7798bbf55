//! The mapping file format: what an integration file's `[kinds.<name>.mapping]` table says.
//! Options with a closed set of values are enums, so a typo is a parse error listing them.

use super::*;

/// What to do with a record leaf that is neither mapped nor ignored.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "kebab-case")]
#[non_exhaustive]
pub enum OnUnmapped {
    /// Reject the record at layer 3, naming the field (the default: nothing is lost silently).
    #[default]
    Reject,
    /// Carry it in the core message under `extras_at`, keyed by its pointer.
    KeepInExtras,
    /// Drop it, listing it as ignored in the fidelity report.
    Ignore,
}

/// A mapping as written in an integration file.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MappingSpec {
    /// The mapping's name, stored with every layer 3 row it produces.
    pub name: String,
    /// Its version: change it whenever the mapping changes.
    pub version: String,
    /// The core message type it produces (`member.upsert`).
    pub message_type: String,
    /// The core message type's version.
    pub type_version: String,
    /// What to do with unmapped record leaves.
    #[serde(default)]
    pub on_unmapped: OnUnmapped,
    /// Where `keep-in-extras` puts unmapped leaves in the core message.
    #[serde(default = "default_extras_at")]
    pub extras_at: String,
    /// Record pointers deliberately not carried; `*` stands for any one token (an array index),
    /// `**` for any number of tokens, and `*` inside a token is a glob (`/**/*_url`).
    #[serde(default)]
    pub ignore: Vec<String>,
    /// Core field pointer -> rule.
    pub fields: BTreeMap<String, FieldRule>,
}

fn default_extras_at() -> String {
    "/extras".into()
}

/// Where one core field's value comes from and how it is converted.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FieldRule {
    /// A pointer into the record (into the array element, inside `each`); a `*` token takes
    /// every element of an array (`/labels/*/name`).
    #[serde(default)]
    pub from: Option<String>,
    /// A constant value.
    #[serde(default, rename = "const")]
    pub constant: Option<Value>,
    /// Pointers whose text values are joined with `separator`; absent ones are skipped.
    #[serde(default)]
    pub concat: Option<Vec<String>>,
    /// What `concat` puts between values.
    #[serde(default)]
    pub separator: Option<String>,
    /// A pointer to an array of the record: one output element per element, built by `fields`.
    #[serde(default)]
    pub each: Option<String>,
    /// The element's fields, for `each`.
    #[serde(default)]
    pub fields: Option<BTreeMap<String, FieldRule>>,
    /// The value when the source is absent or null (listed as defaulted).
    #[serde(default)]
    pub default: Option<Value>,
    /// Value table: the source's text -> the core value.
    #[serde(default, rename = "enum")]
    pub table: Option<BTreeMap<String, Value>>,
    /// Source timestamp format: `rfc3339`, `unix`, `unix-millis`, or a chrono format string.
    /// The result is RFC 3339 with every fractional digit kept, in the source's offset unless
    /// `offset` says otherwise (see [`OffsetOut`]).
    #[serde(default)]
    pub timestamp: Option<String>,
    /// Offset of timestamps written without one (`+01:00`, `UTC`).
    #[serde(default)]
    pub timezone: Option<String>,
    /// Truncates timestamps to `seconds`, `millis` or `micros` (lossy: `truncate-timestamp`).
    #[serde(default)]
    pub precision: Option<Precision>,
    /// Exact conversion: `string` (a number's text as written), `number` (text that is a JSON
    /// number, every digit kept), `integer` (text or number with no fraction).
    #[serde(default)]
    pub convert: Option<Convert>,
    /// Truncates text to this many characters (lossy: `truncate-text`).
    #[serde(default)]
    pub max_length: Option<usize>,
    /// What a `null` source gives (`keep`, the default: the core field is `null`; `omit`: the
    /// core field is left out). A `null` object on the way to the source (`/milestone/title`
    /// when `milestone` is `null`) counts as a `null` source.
    #[serde(default)]
    pub on_null: Option<OnNull>,
    /// Money: `to-decimal` turns integer minor units (Stripe's `2000`) into the exact decimal
    /// text of the major unit by the currency's ISO 4217 exponent (`"20.00"` in EUR, `"2000"`
    /// in JPY, `"2.000"` in KWD); `to-minor-units` is the way back (downstream), refusing a
    /// value with more fraction digits than the currency has.
    #[serde(default)]
    pub money: Option<MoneyConvert>,
    /// The currency of a `money` rule: a pointer to the currency code beside the amount
    /// (`/currency`, in the same record or `each` element as `from`, read case-insensitively)
    /// or an ISO 4217 code (`EUR`). Reading the code does not map it: an amount must not arrive
    /// without its currency, so the code needs a rule of its own (or `ignore`, knowingly).
    #[serde(default)]
    pub currency: Option<String>,
    /// Case folding of text (`upper`, `lower`): lossy, named `case-fold`.
    #[serde(default)]
    pub case: Option<Case>,
    /// What a timestamp rule keeps of the source's offset: `keep` (the default: validated
    /// RFC 3339 text as written; with `precision`, a `%z` pattern or a `timezone`, RFC 3339 in
    /// that offset; epoch numbers in UTC), `split` (`{"instant": <UTC>, "offset": "-07:00"}`,
    /// `+00:00` for `Z` and epoch numbers), or `utc` (the instant in UTC: lossy, named
    /// `drop-offset`, unless the format is `unix`/`unix-millis`, which have no offset).
    #[serde(default)]
    pub offset: Option<OffsetOut>,
    /// An expression computing the value (the escape hatch for what the declarative rules
    /// cannot say): see the mapping module's documentation.
    #[serde(default)]
    pub expr: Option<String>,
    /// The losses this rule accepts, by name: `truncate-timestamp`, `truncate-text`, `merge-enum`,
    /// `case-fold`, `drop-offset`; one name (`lossy = "case-fold"`) or a list
    /// (`lossy = ["case-fold", "truncate-text"]`) for a rule doing two lossy things.
    #[serde(default, deserialize_with = "one_or_many")]
    pub lossy: Vec<Loss>,
}

/// `lossy = "x"` or `lossy = ["x", "y"]`, by hand rather than an untagged enum so that a
/// misspelt name is still an error listing the names.
fn one_or_many<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Vec<Loss>, D::Error> {
    struct Losses;
    impl<'de> serde::de::Visitor<'de> for Losses {
        type Value = Vec<Loss>;
        fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
            f.write_str("a loss name or a list of them")
        }
        fn visit_str<E: serde::de::Error>(self, v: &str) -> Result<Vec<Loss>, E> {
            use serde::de::IntoDeserializer;
            Loss::deserialize(v.into_deserializer()).map(|l| vec![l])
        }
        fn visit_seq<A: serde::de::SeqAccess<'de>>(self, mut seq: A) -> Result<Vec<Loss>, A::Error> {
            let mut out = Vec::new();
            while let Some(l) = seq.next_element::<Loss>()? {
                out.push(l);
            }
            Ok(out)
        }
    }
    d.deserialize_any(Losses)
}

/// What a `null` source gives (`on_null`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum OnNull {
    /// The core field is `null`.
    #[default]
    Keep,
    /// The core field is left out.
    Omit,
}

/// A money conversion (`money`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum MoneyConvert {
    /// Integer minor units to the exact decimal text of the major unit.
    ToDecimal,
    /// A decimal amount (text or number) to integer minor units.
    ToMinorUnits,
}

/// Case folding (`case`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Case {
    /// `usd` -> `USD`.
    Upper,
    /// `USD` -> `usd`.
    Lower,
}

/// What a timestamp rule keeps of the offset (`offset`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum OffsetOut {
    /// The offset as written.
    #[default]
    Keep,
    /// An object: `instant` (UTC) and `offset` (as written).
    Split,
    /// UTC only.
    Utc,
}

/// A problem with a mapping, at a key path inside the mapping's table (`["fields", "/email",
/// "from"]`), so a loader can point at the file and line.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MappingIssue {
    /// Key path inside the mapping table.
    pub at: Vec<String>,
    /// What is wrong.
    pub message: String,
}

/// The precision a timestamp rule keeps (`precision = "millis"`): a loss, named
/// `truncate-timestamp`. A typo is a parse error listing these values.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Precision {
    /// Whole seconds.
    Seconds,
    /// Milliseconds.
    Millis,
    /// Microseconds.
    Micros,
}

/// A loss a rule accepts by name (`lossy = "truncate-text"`): the fidelity promise allows a
/// loss only where the mapping says so.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Loss {
    /// `precision` drops fractional digits of a timestamp.
    TruncateTimestamp,
    /// `max_length` cuts text.
    TruncateText,
    /// An `enum` table maps two source values to one core value.
    MergeEnum,
    /// `case` folds text (`usd` and `USD` become one).
    CaseFold,
    /// `offset = "utc"` drops the source's offset.
    DropOffset,
}

impl Loss {
    /// The name written in mappings and in fidelity reports.
    pub fn as_str(self) -> &'static str {
        match self {
            Loss::TruncateTimestamp => "truncate-timestamp",
            Loss::TruncateText => "truncate-text",
            Loss::MergeEnum => "merge-enum",
            Loss::CaseFold => "case-fold",
            Loss::DropOffset => "drop-offset",
        }
    }
}

/// An exact conversion (`convert = "number"`); a typo is a parse error listing these values.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Convert {
    /// A number's text as written, a string as it is, `true`/`false` as text.
    String,
    /// Text that is a JSON number, every digit kept.
    Number,
    /// Text or a number with no fraction.
    Integer,
}
