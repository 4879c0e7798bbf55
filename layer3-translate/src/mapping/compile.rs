//! Compiling and linting a mapping: every problem found with its key path, before anything
//! runs, and the static checks against the record's and the core type's schemas.

use super::*;

pub(super) fn issue(at: &[String], key: &str, message: impl Into<String>) -> MappingIssue {
    let mut p = at.to_vec();
    if !key.is_empty() {
        p.push(key.to_owned());
    }
    MappingIssue { at: p, message: message.into() }
}

pub(super) fn parse_offset(s: &str) -> Option<FixedOffset> {
    if s.eq_ignore_ascii_case("utc") || s == "Z" {
        return FixedOffset::east_opt(0);
    }
    let (sign, rest) = match s.as_bytes().first()? {
        b'+' => (1, &s[1..]),
        b'-' => (-1, &s[1..]),
        _ => return None,
    };
    let (h, m) = rest.split_once(':')?;
    let (h, m): (i32, i32) = (h.parse().ok()?, m.parse().ok()?);
    if h > 23 || m > 59 {
        return None;
    }
    FixedOffset::east_opt(sign * (h * 3600 + m * 60))
}

pub(super) fn compile_fields(
    rules: &BTreeMap<String, FieldRule>,
    at: &[String],
    issues: &mut Vec<MappingIssue>,
) -> Vec<Field> {
    let mut out: Vec<Field> = Vec::new();
    for (target, rule) in rules {
        let here: Vec<String> = at.iter().cloned().chain([target.clone()]).collect();
        let Some(out_tokens) = tokens(target).filter(|t| !t.is_empty()) else {
            // Inside `each`, targets are relative to the output element.
            let (what, example, relative) = if at.len() > 1 {
                ("target pointer", "/sku", ", relative to the element")
            } else {
                ("core field pointer", "/email", "")
            };
            let message = if target.starts_with('/') {
                format!("{what} `{target}` is not a JSON pointer like `{example}`{relative}")
            } else {
                let fixed = if target.is_empty() { example.to_owned() } else { format!("/{target}") };
                format!("{what} `{target}` must start with / (`{fixed}`{relative})")
            };
            issues.push(issue(&here, "", message));
            continue;
        };
        if let Some(f) = compile_rule(target, out_tokens, rule, &here, issues) {
            out.push(f);
        }
    }
    // One core field cannot be both a value and an object holding another mapped field.
    for a in &out {
        for b in &out {
            if b.out.starts_with(&format!("{}/", a.out)) {
                issues.push(issue(
                    at,
                    &b.out,
                    format!("`{}` is inside `{}`, which another rule already sets whole", b.out, a.out),
                ));
            }
        }
    }
    out
}

pub(super) fn check_pointer(p: &str, at: &[String], key: &str, issues: &mut Vec<MappingIssue>) {
    if tokens(p).is_none() {
        issues.push(issue(at, key, format!("`{p}` is not a JSON pointer (it starts with /)")));
    }
}

pub(super) fn compile_rule(
    target: &str,
    out_tokens: Vec<String>,
    rule: &FieldRule,
    at: &[String],
    issues: &mut Vec<MappingIssue>,
) -> Option<Field> {
    let sources = [
        rule.from.is_some(),
        rule.constant.is_some(),
        rule.concat.is_some(),
        rule.each.is_some(),
        rule.expr.is_some(),
    ];
    if sources.iter().filter(|s| **s).count() != 1 {
        issues.push(issue(at, "", "give exactly one of `from`, `const`, `concat`, `each`, `expr`"));
        return None;
    }
    let source = if let Some(p) = &rule.from {
        check_pointer(p, at, "from", issues);
        Source::From(Pointer::new(p))
    } else if let Some(v) = &rule.constant {
        Source::Const(v.clone())
    } else if let Some(parts) = &rule.concat {
        if parts.is_empty() {
            issues.push(issue(at, "concat", "concat needs at least one pointer"));
        }
        for p in parts {
            check_pointer(p, at, "concat", issues);
            if projects(p) {
                issues.push(issue(
                    at,
                    "concat",
                    format!(
                        "`{p}`: `*` does not work in `concat` (it joins single values); project with \
                         `from = \"{p}\"` into a field of its own, or name one element by its index"
                    ),
                ));
            }
        }
        Source::Concat(
            parts.iter().map(|p| Pointer::new(p)).collect(),
            rule.separator.clone().unwrap_or_default(),
        )
    } else if let Some(p) = &rule.each {
        check_pointer(p, at, "each", issues);
        if projects(p) {
            issues.push(issue(
                at,
                "each",
                format!(
                    "`{p}`: `*` does not work in `each`'s own pointer (`each` already walks every \
                     element of the array it names); point `each` at the array and use `*` in the \
                     `from` of its fields"
                ),
            ));
        }
        let Some(inner) = &rule.fields else {
            issues.push(issue(at, "each", "`each` needs `fields` describing one element"));
            return None;
        };
        let mut inner_at = at.to_vec();
        inner_at.push("fields".into());
        Source::Each(Pointer::new(p), compile_fields(inner, &inner_at, issues))
    } else if let Some(code) = &rule.expr {
        match expr::Expr::compile(code) {
            Ok(e) => Source::Expr(e),
            Err(why) => {
                issues.push(issue(at, "expr", why));
                return None;
            }
        }
    } else {
        return None;
    };
    let values =
        rule.constant.iter().chain(rule.default.iter()).chain(rule.table.iter().flat_map(|t| t.values()));
    for v in values {
        if toml_artifact(v) {
            issues.push(issue(
                at,
                "",
                "write dates and times as strings (\"2026-11-21T00:00:00Z\"), not TOML datetimes",
            ));
        }
    }
    if rule.default.is_some() && rule.constant.is_some() {
        issues.push(issue(at, "default", "a `const` rule has no use for a `default`"));
    }
    if rule.fields.is_some() && rule.each.is_none() {
        issues.push(issue(at, "fields", "`fields` belongs to an `each` rule"));
    }
    if rule.on_null.is_some() && rule.from.is_none() && rule.each.is_none() && rule.expr.is_none() {
        issues.push(issue(at, "on_null", "`on_null` applies to a `from`, `each` or `expr` source"));
    }
    if rule.separator.is_some() && rule.concat.is_none() {
        issues.push(issue(at, "separator", "`separator` belongs to a `concat` rule"));
    }
    let converts = rule.table.is_some()
        || rule.timestamp.is_some()
        || rule.convert.is_some()
        || rule.max_length.is_some()
        || rule.money.is_some()
        || rule.case.is_some();
    if converts && rule.from.is_none() {
        issues.push(issue(
            at,
            "",
            "`enum`, `timestamp`, `convert`, `money`, `case` and `max_length` apply to a `from` value",
        ));
    }
    let mut t = Transforms::default();
    let mut losses: Vec<Loss> = Vec::new();
    if let Some(table) = &rule.table {
        let mut seen: Vec<&Value> = Vec::new();
        for v in table.values() {
            if seen.contains(&v) {
                losses.push(Loss::MergeEnum);
                break;
            }
            seen.push(v);
        }
        t.table = Some(table.clone());
    }
    t.convert = rule.convert;
    if let Some(f) = &rule.timestamp {
        let offset = match rule.timezone.as_deref().map(|z| (z, parse_offset(z))) {
            Some((z, None)) => {
                issues.push(issue(at, "timezone", format!("`{z}` is not an offset like +01:00 or UTC")));
                None
            }
            Some((_, o)) => o,
            None => None,
        };
        let zoned = matches!(f.as_str(), "rfc3339" | "unix" | "unix-millis")
            || f.contains("%z")
            || f.contains("%:z")
            || f.contains("%#z");
        if zoned && rule.timezone.is_some() {
            issues.push(issue(
                at,
                "timezone",
                format!("`{f}` timestamps carry their own offset: drop `timezone`"),
            ));
        }
        let format = match f.as_str() {
            "rfc3339" => TimeFormat::Rfc3339,
            "unix" => TimeFormat::Unix,
            "unix-millis" => TimeFormat::UnixMillis,
            p if p.contains('%') => {
                let has_offset = p.contains("%z") || p.contains("%:z") || p.contains("%#z");
                if !has_offset && rule.timezone.is_none() {
                    issues.push(issue(
                        at,
                        "timestamp",
                        format!("`{p}` has no offset (%z): say which with `timezone`"),
                    ));
                }
                TimeFormat::Pattern { pattern: p.to_owned(), offset: if has_offset { None } else { offset } }
            }
            other => {
                issues.push(issue(
                    at,
                    "timestamp",
                    format!(
                        "unknown timestamp format `{other}` (rfc3339, unix, unix-millis, or a %-pattern)"
                    ),
                ));
                TimeFormat::Rfc3339
            }
        };
        if rule.precision.is_some() {
            losses.push(Loss::TruncateTimestamp);
        }
        // Epoch numbers carry no offset: in UTC they lose nothing.
        if rule.offset == Some(OffsetOut::Utc) && !matches!(format, TimeFormat::Unix | TimeFormat::UnixMillis)
        {
            losses.push(Loss::DropOffset);
        }
        t.timestamp = Some((format, rule.precision));
        t.offset = rule.offset.unwrap_or_default();
    } else if rule.precision.is_some() || rule.timezone.is_some() || rule.offset.is_some() {
        issues.push(issue(at, "", "`precision`, `timezone` and `offset` belong to a `timestamp` rule"));
    }
    t.money = compile_money(rule, at, issues);
    if let Some(c) = rule.case {
        if rule.timestamp.is_some() || rule.money.is_some() {
            issues.push(issue(at, "case", "`case` folds text, not a timestamp or an amount"));
        }
        losses.push(Loss::CaseFold);
        t.case = Some(c);
    }
    if let Some(n) = rule.max_length {
        losses.push(Loss::TruncateText);
        t.max_length = Some(n);
    }
    // The fidelity promise: a loss happens only where the rule names it.
    let names: Vec<String> = losses.iter().map(|l| format!("\"{}\"", l.as_str())).collect();
    let say = match names.as_slice() {
        [one] => one.clone(),
        all => format!("[{}]", all.join(", ")),
    };
    for loss in losses.iter().map(|l| l.as_str()) {
        if !rule.lossy.iter().any(|l| l.as_str() == loss) {
            issues.push(issue(
                at,
                "",
                format!("this rule loses information ({loss}); say so with `lossy = {say}` or change it"),
            ));
        }
    }
    for l in rule.lossy.iter().filter(|l| !losses.contains(l)) {
        let l = l.as_str();
        issues.push(issue(at, "lossy", format!("`lossy = \"{l}\"` but the rule does not do that")));
    }
    // Built even with problems reported, so that the schema checks can still run on it; a
    // mapping with any problem is never run.
    Some(Field {
        out: target.to_owned(),
        out_tokens,
        source,
        default: rule.default.clone(),
        on_null: rule.on_null.unwrap_or_default(),
        transforms: t,
    })
}

/// The `money` and `currency` of a rule, checked: both or neither, a currency that is an ISO
/// 4217 code with minor units or a pointer, and no other conversion on the same value.
fn compile_money(rule: &FieldRule, at: &[String], issues: &mut Vec<MappingIssue>) -> Option<money::Money> {
    let (convert, cur) = match (rule.money, &rule.currency) {
        (None, None) => return None,
        (None, Some(_)) => {
            issues.push(issue(at, "currency", "`currency` belongs to a `money` rule"));
            return None;
        }
        (Some(_), None) => {
            issues.push(issue(
                at,
                "money",
                "`money` needs `currency`: a pointer to the code beside the amount (\"/currency\") or an \
                 ISO 4217 code (\"EUR\")",
            ));
            return None;
        }
        (Some(m), Some(c)) => (m, c),
    };
    for (given, key) in [
        (rule.convert.is_some(), "convert"),
        (rule.timestamp.is_some(), "timestamp"),
        (rule.table.is_some(), "enum"),
        (rule.max_length.is_some(), "max_length"),
    ] {
        if given {
            issues.push(issue(at, key, format!("`money` converts the amount itself: drop `{key}`")));
        }
    }
    let currency = if cur.starts_with('/') {
        check_pointer(cur, at, "currency", issues);
        money::CurrencyOf::Pointer(cur.clone())
    } else if cur.len() == 3 && cur.bytes().all(|b| b.is_ascii_alphabetic()) {
        match money::currency_exponent(cur) {
            Ok((code, exp)) => money::CurrencyOf::Code(code, exp),
            Err(why) => {
                issues.push(issue(at, "currency", why));
                return None;
            }
        }
    } else {
        issues.push(issue(
            at,
            "currency",
            format!("`{cur}` is neither a JSON pointer (/currency) nor an ISO 4217 code (EUR)"),
        ));
        return None;
    };
    Some(money::Money { convert, currency })
}

impl Mapping {
    /// Compiles `spec`, or lists everything wrong with it.
    pub fn compile(spec: MappingSpec) -> Result<Self, Vec<MappingIssue>> {
        let (m, issues) = Self::compile_all(spec);
        if issues.is_empty() { Ok(m) } else { Err(issues) }
    }

    /// Compiles as much of `spec` as can be, with everything wrong with it: for a linter, which
    /// wants the schema checks too. Run the mapping only if the list is empty.
    pub fn compile_all(spec: MappingSpec) -> (Self, Vec<MappingIssue>) {
        let mut issues = Vec::new();
        for (key, v, max) in [
            ("name", &spec.name, 128),
            ("version", &spec.version, 64),
            ("message_type", &spec.message_type, 128),
            ("type_version", &spec.type_version, 32),
        ] {
            if v.is_empty() || v.len() > max || v.chars().any(char::is_control) {
                issues.push(issue(&[], key, format!("`{key}` must be 1 to {max} characters of text")));
            }
        }
        let fields = compile_fields(&spec.fields, &["fields".to_owned()], &mut issues);
        let mut ignore = Vec::new();
        for (i, p) in spec.ignore.iter().enumerate() {
            match tokens(p).filter(|t| !t.is_empty()) {
                Some(t) => ignore.push(t.iter().map(|t| IgnoreTok::compile(t)).collect()),
                None => issues.push(issue(
                    &["ignore".into(), i.to_string()],
                    "",
                    format!("ignore[{i}] `{p}` is not a JSON pointer like /internal or /**/url"),
                )),
            }
        }
        if spec.on_unmapped == OnUnmapped::KeepInExtras {
            match tokens(&spec.extras_at).filter(|t| !t.is_empty()) {
                None => {
                    issues.push(issue(&[], "extras_at", "`extras_at` must be a JSON pointer like /extras"))
                }
                Some(_) => {
                    let e = &spec.extras_at;
                    if fields.iter().any(|f| {
                        f.out == *e
                            || f.out.starts_with(&format!("{e}/"))
                            || e.starts_with(&format!("{}/", f.out))
                    }) {
                        issues.push(issue(&[], "extras_at", format!("a field rule already writes `{e}`")));
                    }
                }
            }
        }
        (Self { spec, fields, ignore }, issues)
    }

    /// The mapping as written.
    pub fn spec(&self) -> &MappingSpec {
        &self.spec
    }

    /// Checks the mapping against the record's schema and the core type's schema: pointers the
    /// record can never have, required core fields nothing produces, core fields the core type
    /// does not allow.
    /// `record` answers whether a pointer can exist in a record (its schema's
    /// [`JsonSchema::can_exist`], plus whatever the normalizer adds, such as a carried envelope).
    pub fn lint(&self, record: &dyn Fn(&str) -> bool, core: Option<&JsonSchema>) -> Vec<MappingIssue> {
        self.lint_typed(record, None, core)
    }

    /// [`Mapping::lint`], also checking each conversion against the types the record schema
    /// gives its source (`record_types`: [`JsonSchema::types_can_be`] for a record pointer).
    pub fn lint_typed(
        &self,
        record: &dyn Fn(&str) -> bool,
        record_types: Option<&TypesOf<'_>>,
        core: Option<&JsonSchema>,
    ) -> Vec<MappingIssue> {
        let t = format!("{} v{}", self.spec.message_type, self.spec.type_version);
        let core_type = format!("core type {t}");
        self.lint_sides(&LintSides {
            input: record,
            input_types: record_types,
            input_leaves: None,
            input_is: "a record",
            input_schema_is: "the record schema",
            output: core,
            output_at: "",
            output_field_is: "core field",
            output_required_by: &t,
            output_is: &core_type,
        })
    }

    /// [`Mapping::lint`] for either direction: the input and output as `sides` describes them,
    /// and, when `sides.input_leaves` is given and `on_unmapped` is `reject`, every declared
    /// input leaf a rule reads or `ignore` lists (otherwise every message having it would be
    /// refused).
    pub fn lint_sides(&self, sides: &LintSides<'_>) -> Vec<MappingIssue> {
        let mut issues = Vec::new();
        let mut produced = Vec::new();
        let mut reads = Vec::new();
        let mut walk = LintWalk { sides, produced: &mut produced, reads: &mut reads, issues: &mut issues };
        walk.fields(&self.fields, "", &["fields".to_owned()], "");
        for (i, p) in self.spec.ignore.iter().enumerate() {
            // `**` and globs name many pointers a schema cannot be asked about: only the
            // plain part before the first of them is checked (no false alarms).
            let Some(toks) = tokens(p) else { continue };
            let plain: Vec<&String> = toks.iter().take_while(|t| IgnoreTok::compile(t).plain()).collect();
            let checked: String = plain.iter().map(|t| format!("/{}", escape_token(t))).collect();
            if !checked.is_empty() && !(sides.input)(&checked) {
                issues.push(issue(
                    &["ignore".into(), i.to_string()],
                    "",
                    format!(
                        "ignore[{i}] `{p}` cannot exist in {}: {} does not allow {}",
                        sides.input_is,
                        sides.input_schema_is,
                        if plain.len() == toks.len() { "it".to_owned() } else { format!("`{checked}`") }
                    ),
                ));
            }
        }
        if let Some(leaves) = sides.input_leaves
            && self.spec.on_unmapped == OnUnmapped::Reject
        {
            self.lint_unread(leaves, &reads, sides, &mut issues);
        }
        if self.spec.on_unmapped == OnUnmapped::KeepInExtras {
            produced.push(self.spec.extras_at.clone());
        }
        let Some(out) = sides.output else { return issues };
        let at = sides.output_at;
        for req in out.required_pointers() {
            let req = format!("{at}{req}");
            let covered = produced.iter().any(|p| {
                let p = p.as_str();
                p == req || req.starts_with(&format!("{p}/")) || p.starts_with(&format!("{req}/"))
            });
            if !covered {
                issues.push(issue(
                    &["fields".into()],
                    "",
                    format!(
                        "{} `{req}` is required by {} but no rule produces it",
                        sides.output_field_is, sides.output_required_by
                    ),
                ));
            }
        }
        for p in &produced {
            // Only what lies below `output_at` is the schema's; the rest of the output is for
            // other uses (a request's path or headers, say).
            let inside = if at.is_empty() { Some(p.as_str()) } else { p.strip_prefix(at) };
            if let Some(rel) = inside.filter(|r| r.starts_with('/'))
                && !out.can_exist(rel)
            {
                issues.push(issue(
                    &["fields".into()],
                    p,
                    format!("{} has no field `{rel}`", sides.output_is),
                ));
            }
        }
        issues
    }

    /// Every output pointer the mapping's rules write (`*` for the elements of an `each`), and
    /// `extras_at` under `keep-in-extras`: what a translated message can hold.
    pub fn outputs(&self) -> Vec<String> {
        let mut out = Vec::new();
        output_pointers(&self.fields, "", &mut out);
        if self.spec.on_unmapped == OnUnmapped::KeepInExtras {
            out.push(self.spec.extras_at.clone());
        }
        out
    }

    /// Declared input leaves no rule reads and `ignore` does not list.
    fn lint_unread(
        &self,
        leaves: &[String],
        reads: &[String],
        sides: &LintSides<'_>,
        issues: &mut Vec<MappingIssue>,
    ) {
        let reads: Vec<Vec<String>> = reads.iter().filter_map(|r| tokens(r)).collect();
        for leaf in leaves {
            let Some(l) = tokens(leaf) else { continue };
            // A rule reading the leaf or an object above it takes it whole; one reading inside
            // a leaf the schema leaves open takes what it names (and the fidelity check at
            // run time answers for the rest).
            let read = reads.iter().any(|r| r.iter().zip(&l).all(|(a, b)| a == b || a == "*" || b == "*"));
            let ignored = self.ignore.iter().any(|p| fidelity::matches_ignore(&l, p));
            if !read && !ignored {
                issues.push(issue(
                    &["on_unmapped".into()],
                    "",
                    format!(
                        "`{leaf}` of {} is neither read by a rule nor listed in `ignore`: with \
                         on_unmapped = \"reject\" every message that has it would be refused",
                        sides.input_is
                    ),
                ));
            }
        }
    }
}

/// The JSON types a value at a pointer can have, `None` when open: the answer of
/// [`JsonSchema::types_can_be`].
pub type TypesOf<'a> = dyn Fn(&str) -> Option<Vec<&'static str>> + 'a;

/// What [`Mapping::lint_sides`] checks a mapping against, and the words its findings use: a
/// mapping runs both ways, a record to a core message upstream, a core message to a third
/// party's request downstream.
pub struct LintSides<'a> {
    /// Whether a pointer can exist in the input.
    pub input: &'a dyn Fn(&str) -> bool,
    /// The JSON types a value at an input pointer can have ([`JsonSchema::types_can_be`]), to
    /// check each conversion reads what can be there; `None` skips that check.
    pub input_types: Option<&'a TypesOf<'a>>,
    /// Every leaf the input's schema declares ([`JsonSchema::declared_leaves`]), to check
    /// that each is read or ignored; `None` skips that check.
    pub input_leaves: Option<&'a [String]>,
    /// The input, in findings: `a record`, `core message member.updated v1`.
    pub input_is: &'a str,
    /// The input's schema, in findings: `the record schema`.
    pub input_schema_is: &'a str,
    /// The output's schema, if any.
    pub output: Option<&'a JsonSchema>,
    /// Where in the output the schema applies (`""`: the whole output; `/properties`: a request
    /// body at that pointer).
    pub output_at: &'a str,
    /// An output field, in findings: `core field`.
    pub output_field_is: &'a str,
    /// What requires output fields, in findings: `member.upsert v1`.
    pub output_required_by: &'a str,
    /// The output's schema, in findings about fields it lacks: `core type member.upsert v1`.
    pub output_is: &'a str,
}

/// Walks the rules for [`Mapping::lint_sides`], collecting what they produce and read.
struct LintWalk<'s, 'o> {
    sides: &'o LintSides<'s>,
    produced: &'o mut Vec<String>,
    reads: &'o mut Vec<String>,
    issues: &'o mut Vec<MappingIssue>,
}

impl LintWalk<'_, '_> {
    fn fields(&mut self, fields: &[Field], rec_at: &str, at: &[String], out_at: &str) {
        for f in fields {
            let here: Vec<String> = at.iter().cloned().chain([f.out.clone()]).collect();
            self.produced.push(format!("{out_at}{}", f.out));
            let check = |this: &mut Self, p: &str, key: &str| {
                let full = format!("{rec_at}{p}");
                if !(this.sides.input)(&full) {
                    let hint = star_hint(this.sides.input, &full).unwrap_or_default();
                    this.issues.push(issue(
                        &here,
                        key,
                        format!(
                            "`{full}` cannot exist in {}: {} does not allow it{hint}",
                            this.sides.input_is, this.sides.input_schema_is
                        ),
                    ));
                }
                this.reads.push(full);
            };
            match &f.source {
                Source::From(p) => {
                    check(self, p, "from");
                    self.types(f, &format!("{rec_at}{p}"), &here);
                    // The currency a `money` rule reads beside the amount is not taken by it
                    // (its own rule carries it), so it is checked but not counted as read.
                    if let Some(money::Money { currency: money::CurrencyOf::Pointer(c), .. }) =
                        &f.transforms.money
                    {
                        let full = format!("{rec_at}{c}");
                        if !(self.sides.input)(&full) {
                            self.issues.push(issue(
                                &here,
                                "currency",
                                format!(
                                    "`{full}` cannot exist in {}: {} does not allow it",
                                    self.sides.input_is, self.sides.input_schema_is
                                ),
                            ));
                        } else if let Some(types) = self.sides.input_types.and_then(|t| t(&full))
                            && types.iter().any(|t| *t != "null")
                            && !types.contains(&"string")
                        {
                            let what = types.iter().map(|t| article(t)).collect::<Vec<_>>().join(" or ");
                            self.issues.push(issue(
                                &here,
                                "currency",
                                format!(
                                    "`{full}` is {what} in {}; a currency is a code like \"usd\"",
                                    self.sides.input_schema_is
                                ),
                            ));
                        }
                    }
                }
                Source::Concat(parts, _) => parts.iter().for_each(|p| check(self, p, "concat")),
                Source::Const(_) => {}
                // What an expression reads is known only when it runs: it may read anything
                // in its scope (the fidelity check on each record says what it did read).
                Source::Expr(_) => self.reads.push(rec_at.to_owned()),
                Source::Each(p, inner) => {
                    check(self, p, "each");
                    // The array itself is read only through its elements' rules.
                    self.reads.pop();
                    let mut inner_at = here.clone();
                    inner_at.push("fields".into());
                    self.fields(inner, &format!("{rec_at}{p}/*"), &inner_at, &format!("{out_at}{}/*", f.out));
                }
            }
        }
    }
}

impl LintWalk<'_, '_> {
    /// A conversion that cannot read any value the input schema allows at `full` (a text
    /// format on a field that is only ever an integer, say): reported at the rule's key.
    /// Only clear mismatches: an open schema, or a type that might fit, says nothing.
    fn types(&mut self, f: &Field, full: &str, here: &[String]) {
        let Some(types) = self.sides.input_types.and_then(|t| t(full)) else { return };
        // A null source never reaches a conversion.
        let types: Vec<&str> = types.into_iter().filter(|t| *t != "null").collect();
        if types.is_empty() {
            return;
        }
        let only = |allowed: &[&str]| types.iter().all(|t| allowed.contains(t));
        let can = |t: &str| types.contains(&t) || (t == "integer" && types.contains(&"number"));
        let what = types.iter().map(|t| article(t)).collect::<Vec<_>>().join(" or ");
        let schema = self.sides.input_schema_is;
        let t = &f.transforms;
        // Each check reads the source as it is: an `enum` table or a `convert` before the
        // conversion changes what it sees.
        let raw = t.table.is_none();
        let mut found: Vec<(&str, String)> = Vec::new();
        if let Some((format, _)) = &t.timestamp
            && raw
            && t.convert.is_none()
        {
            match format {
                TimeFormat::Rfc3339 | TimeFormat::Pattern { .. } if only(&["integer", "number"]) => {
                    let name = match format {
                        TimeFormat::Pattern { pattern, .. } => pattern.as_str(),
                        _ => "rfc3339",
                    };
                    found.push((
                        "timestamp",
                        format!(
                            "`{full}` is {what} in {schema}; `{name}` reads text: use `unix` or `unix-millis`"
                        ),
                    ));
                }
                TimeFormat::Unix | TimeFormat::UnixMillis if !can("integer") && !can("string") => {
                    found.push((
                        "timestamp",
                        format!("`{full}` is {what} in {schema}; epoch timestamps are numbers or their text"),
                    ));
                }
                _ => {}
            }
        }
        if let Some(c) = t.convert
            && raw
        {
            let bad = match c {
                Convert::Number | Convert::Integer => only(&["object", "array", "boolean"]),
                Convert::String => only(&["object", "array"]),
            };
            if bad {
                let c = format!("{c:?}").to_lowercase();
                found
                    .push(("convert", format!("`{full}` is {what} in {schema}: it cannot convert to a {c}")));
            }
        }
        if t.money.is_some() && !can("integer") && !can("string") {
            found.push((
                "money",
                format!("`{full}` is {what} in {schema}; an amount is a number or its text"),
            ));
        }
        if t.case.is_some() && raw && t.convert.is_none() && !can("string") {
            found.push(("case", format!("`{full}` is {what} in {schema}; `case` folds text")));
        }
        for (key, message) in found {
            self.issues.push(issue(here, key, message));
        }
    }
}

/// `an integer`, `a string`: a JSON type in a sentence.
fn article(t: &str) -> String {
    if t.starts_with(['a', 'e', 'i', 'o', 'u']) { format!("an {t}") } else { format!("a {t}") }
}

fn output_pointers(fields: &[Field], out_at: &str, out: &mut Vec<String>) {
    for f in fields {
        let here = format!("{out_at}{}", f.out);
        if let Source::Each(_, inner) = &f.source {
            output_pointers(inner, &format!("{here}/*"), out);
        }
        out.push(here);
    }
}
