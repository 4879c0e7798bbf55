//! Layer 3 of the post office: records translated faithfully into core-app messages. Each row
//! keeps the mapping's name and version and a fidelity report; no silent field loss, no number
//! rounding (JSON numbers are carried as their exact text).

pub mod entity;
pub mod mapping;
pub mod stage;
pub mod translator;

pub use mapping::{
    Case, Convert, FieldRule, LintSides, Loss, Mapping, MappingIssue, MappingSpec, MappingTranslator,
    MoneyConvert, OffsetOut, OnNull, OnUnmapped, Precision, TypesOf,
};
pub use stage::{Parent, TranslateStage, Translators, translate, translation_row};
pub use translator::{CoreMessage, Fidelity, RecordInput, Translation, Translator};
