//! The engine alone, with neutral columns: config → plan → masked values → report, and the
//! side-channel guard. (With PostgreSQL's codecs: `protocols::postgres::masking::tests`.)

use super::fixtures::*;
use super::strategy::{KeyedHasher, Masked};
use super::*;

fn named(schema: &str, table: &str, column: &str, kind: &'static dyn ValueKind) -> Column {
    Column {
        origin: Origin::Named(ResolvedColumn {
            name: ColumnName::new(schema, table, column),
            base: vec![],
            ..ResolvedColumn::default()
        }),
        kind,
    }
}

/// Masks one value and returns what a codec would send (None = NULL, the input if unchanged).
fn mask(plan: &mut RowPlan, column: usize, value: &str) -> Option<String> {
    let mut out = Vec::new();
    match plan.mask_value(column, value.as_bytes(), &mut out) {
        Outcome::Unchanged => Some(value.to_string()),
        Outcome::Written => Some(String::from_utf8(out).unwrap()),
        Outcome::Null => None,
    }
}

#[test]
fn the_engine_plans_neutral_columns_without_a_protocol() {
    let p = policy(PII);
    let mut plan = crew(&p).plan_result(&[
        named("public", "customers", "email", &PlainText),
        named("public", "customers", "balance", &Opaque),
        named("public", "customers", "name", &PlainText),
        Column {
            origin: Origin::Unnamed,
            kind: &Opaque,
        },
        Column {
            origin: Origin::Withheld,
            kind: &PlainText,
        },
    ]);
    assert!(!plan.is_passthrough());
    assert_eq!(plan.column_count(), 5);
    assert_eq!(plan.withheld_columns(), 1);
    assert_eq!(
        mask(&mut plan, 0, "jane@example.com").as_deref(),
        Some("j***@example.com")
    );
    assert_eq!(
        mask(&mut plan, 1, "12.50"),
        None,
        "a kind that cannot hold the masked form makes it NULL"
    );
    assert_eq!(
        mask(&mut plan, 2, "card 4111 1111 1111 1111, ok").as_deref(),
        Some("card [redacted], ok"),
        "detectors scan a named column no rule names"
    );
    assert!(plan.passes(3), "detectors do not scan opaque values");
    assert_eq!(mask(&mut plan, 4, "anything"), None, "withheld");
    assert_eq!(
        mask(&mut plan, 9, "x").as_deref(),
        Some("x"),
        "outside the plan"
    );
    plan.count_row();
    let report = plan.take_report();
    assert_eq!(report.rows, 1);
    let sources: Vec<&MaskSource> = report.entries.iter().map(|e| &e.source).collect();
    assert!(sources.contains(&&MaskSource::Unresolved), "{sources:?}");
    assert!(
        report
            .entries
            .iter()
            .any(|e| e.nulled_for_type == 1 && e.rule == "crew-pii"),
        "{report:?}"
    );
    let nobody = p.for_subject(&Subject::default());
    assert!(nobody.is_noop());
    assert!(
        nobody
            .plan_result(&[named("public", "customers", "email", &PlainText)])
            .is_passthrough()
    );
}

#[test]
fn side_channels_name_masked_columns_used_to_filter_or_sort() {
    let p = policy(PII);
    let m = crew(&p);
    let r = |schema: Option<&str>, table: Option<&str>, column: &str, clause| ColumnReference {
        schema: schema.map(Into::into),
        table: table.map(Into::into),
        column: Some(column.into()),
        clause,
    };
    let refs = [
        r(Some("public"), Some("customers"), "email", Clause::Where),
        r(None, None, "ssn", Clause::OrderBy),
        r(Some("public"), Some("customers"), "name", Clause::GroupBy),
        r(Some("public"), Some("orders"), "email", Clause::Join),
    ];
    let hits = m.side_channels(&refs);
    let summary: Vec<(&str, &str, Clause)> = hits
        .iter()
        .map(|h| (h.rule.as_str(), h.pattern.as_str(), h.reference.clause))
        .collect();
    assert_eq!(
        summary,
        [
            ("crew-pii", "public.customers.email", Clause::Where),
            ("crew-pii", "*.*.ssn", Clause::OrderBy)
        ]
    );
    // ops-notes masks tickets.note but does not ask for refusal.
    let ops = p.with_rules(&["ops-notes"]).unwrap();
    assert!(
        ops.side_channels(&[r(Some("public"), Some("tickets"), "note", Clause::Where)])
            .is_empty()
    );
    // Any column of a table (`FROM customers AS c(a, b, c, d)`): hits when one may be
    // masked (`*.*.ssn` names a column of every table).
    let any = |table: &str| ColumnReference {
        schema: None,
        table: Some(table.into()),
        column: None,
        clause: Clause::Where,
    };
    assert_eq!(m.side_channels(&[any("customers")]).len(), 1);
    assert_eq!(m.side_channels(&[any("orders")])[0].pattern, "*.*.ssn");
}

#[test]
fn config_errors_say_what_is_wrong() {
    let compile = |t: &str| {
        MaskingPolicy::compile(&toml::from_str::<MaskingConfig>(t).unwrap())
            .unwrap_err()
            .to_string()
    };
    let rule = |body: &str| format!("[[rules]]\nname = \"r\"\n{body}");
    assert!(
        compile(&rule(
            "[[rules.columns]]\ncolumns = [\"customers.email\"]\nstrategy = { kind = \"null\" }"
        ))
        .contains("must be schema.table.column")
    );
    assert!(
        compile(&rule(
            "[[rules.columns]]\ncolumns = [\"a.b.c\"]\nstrategy = { kind = \"keyed_hash\" }"
        ))
        .contains("neither hash_key nor hash_key_file")
    );
    assert!(compile(&rule("[[rules.content]]\npatterns = [{ name = \"x\", regex = \"(\" }]\nstrategy = { kind = \"null\" }"))
        .contains("does not compile"));
    assert!(
        compile(&rule("[[rules.content]]\nstrategy = { kind = \"null\" }"))
            .contains("needs detectors or patterns")
    );
    assert!(compile(&rule("")).contains("masks nothing"));
    let twice = format!(
        "{}\n[[rules.columns]]\ncolumns=[\"a.b.c\"]\nstrategy={{kind=\"null\"}}\n",
        rule("")
    );
    assert!(compile(&format!("{twice}{twice}")).contains("unique"));
    assert!(compile("hash_key = \"abcd\"").contains("at least 16 bytes"));
    let short = format!(
        "hash_key = \"{KEY}\"\n{}",
        rule(
            "[[rules.columns]]\ncolumns = [\"a.b.c\"]\nstrategy = { kind = \"keyed_hash\", length = 4 }"
        )
    );
    assert!(compile(&short).contains("8..=64"));

    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("mask.key");
    std::fs::write(&file, format!("{KEY}\n")).unwrap();
    let cfg = MaskingConfig {
        hash_key_file: Some(file),
        ..MaskingConfig::default()
    };
    assert!(MaskingPolicy::compile(&cfg).is_ok());
}

// Two value kinds a protocol could define, for testing the engine without one.

/// Plain text: every strategy applies, detectors scan it.
#[derive(Debug, Clone, Copy)]
pub struct PlainText;

impl ValueKind for PlainText {
    fn scan_from(&self) -> Option<usize> {
        Some(0)
    }

    fn write_masked(
        &self,
        strategy: &Strategy,
        value: &[u8],
        hasher: Option<&KeyedHasher>,
        _tmp: &mut Vec<u8>,
        out: &mut Vec<u8>,
    ) -> Masked {
        super::strategy::write_text(strategy, value, hasher, out)
    }
}

/// Values nothing masked fits: a masked value becomes NULL, detectors do not look inside.
#[derive(Debug, Clone, Copy)]
pub struct Opaque;

impl ValueKind for Opaque {
    fn scan_from(&self) -> Option<usize> {
        None
    }

    fn write_masked(
        &self,
        _strategy: &Strategy,
        _value: &[u8],
        _hasher: Option<&KeyedHasher>,
        _tmp: &mut Vec<u8>,
        _out: &mut Vec<u8>,
    ) -> Masked {
        Masked::Null
    }
}
