//! Which output fields a mapping's rules fill from which input pointers: for showing a
//! translated message with some input fields masked (an integration's `redact` pointers), the
//! output fields that carry them are masked too.

use super::*;

impl Mapping {
    /// The output pointers (`*` for the elements of an `each`) of every rule that reads an
    /// input pointer for which `reads` answers true: `from`, each part of `concat`, and the
    /// rules inside `each` with the array's pointer before theirs (`/lines/*/sku`), and an `expr`
    /// whose scope holds such a pointer. Input
    /// pointers are given as the fidelity report writes them, with `*` for an `each`'s element.
    /// Constants read nothing. Under `keep-in-extras`, the extras (`extras_at`) hold unread
    /// fields by their own pointer: the caller looks there itself.
    pub fn outputs_reading(&self, reads: &dyn Fn(&str) -> bool) -> Vec<String> {
        let mut out = Vec::new();
        outputs_reading(&self.fields, "", "", reads, &mut out);
        out
    }
}

fn outputs_reading(
    fields: &[Field],
    rec_at: &str,
    out_at: &str,
    reads: &dyn Fn(&str) -> bool,
    out: &mut Vec<String>,
) {
    for f in fields {
        let here = format!("{out_at}{}", f.out);
        let read = |p: &Pointer| reads(&format!("{rec_at}{p}"));
        match &f.source {
            Source::From(p) if read(p) => out.push(here),
            Source::Concat(parts, _) if parts.iter().any(read) => out.push(here),
            // What an expression reads is known only when it runs: it may read anything in
            // its scope (the record, or the `each` element).
            Source::Expr(_) if reads(rec_at) => out.push(here),
            Source::Each(p, inner) => {
                outputs_reading(inner, &format!("{rec_at}{p}/*"), &format!("{here}/*"), reads, out)
            }
            _ => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn outputs_of_rules_reading_a_pointer() {
        let spec: MappingSpec = serde_json::from_value(serde_json::json!({
            "name": "m", "version": "1", "message_type": "t", "type_version": "1",
            "fields": {
                "/intent": {"from": "/data/object/id"},
                "/secret": {"from": "/data/object/client_secret"},
                "/both": {"concat": ["/data/object/id", "/data/object/client_secret"]},
                "/kind": {"const": "x"},
                "/lines": {"each": "/data/object/lines", "fields": {
                    "/key": {"from": "/key"}, "/n": {"from": "/n"}
                }}
            }
        }))
        .expect("spec");
        let m = Mapping::compile(spec).expect("compiles");
        let mut got =
            m.outputs_reading(&|p| p == "/data/object/client_secret" || p == "/data/object/lines/*/key");
        got.sort();
        assert_eq!(got, vec!["/both", "/lines/*/key", "/secret"]);
        assert!(m.outputs_reading(&|_| false).is_empty());
    }
}
