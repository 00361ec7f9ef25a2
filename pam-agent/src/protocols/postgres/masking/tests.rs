//! The engine with PostgreSQL's codecs, without a server: config → plan → rewritten rows
//! → report.

use super::datarow::{encode_body, values};
use super::*;
use crate::mask::fixtures::*;
use crate::mask::*;

fn col(schema: &str, table: &str, column: &str, type_oid: u32, format: i16) -> PlannedColumn {
    PlannedColumn {
        name: Some(ResolvedColumn {
            name: ColumnName::new(schema, table, column),
            base: vec![],
            ..ResolvedColumn::default()
        }),
        type_oid,
        format,
    }
}

fn expr(type_oid: u32) -> PlannedColumn {
    PlannedColumn {
        name: None,
        type_oid,
        format: 0,
    }
}

/// Rewrites one row and returns its values as text (None = NULL), checking the framing.
fn rewrite(plan: &mut RowPlan, row: &[Option<&[u8]>]) -> Vec<Option<Vec<u8>>> {
    let mut out = b"previous".to_vec();
    plan.rewrite_data_row(&encode_body(row), &mut out).unwrap();
    assert_eq!(&out[..8], b"previous", "earlier output is kept");
    let msg = &out[8..];
    assert_eq!(msg[0], b'D');
    let len = i32::from_be_bytes(msg[1..5].try_into().unwrap()) as usize;
    assert_eq!(
        len,
        msg.len() - 1,
        "the length field counts itself and the body"
    );
    values(&msg[5..])
        .unwrap()
        .into_iter()
        .map(|v| v.map(<[u8]>::to_vec))
        .collect()
}

fn s(v: &Option<Vec<u8>>) -> Option<&str> {
    v.as_deref().map(|b| std::str::from_utf8(b).unwrap())
}

#[test]
fn column_rules_and_detectors_mask_a_text_row() {
    let p = policy(PII);
    let m = crew(&p);
    assert_eq!(m.active_rules().collect::<Vec<_>>(), ["crew-pii"]);
    let mut plan = m
        .plan_columns(&[
            col("public", "customers", "email", 25, 0),
            col("hr", "people", "ssn", 1043, 0),
            col("public", "customers", "name", 25, 0),
            expr(25),
            col("public", "customers", "id", 23, 0),
            col("public", "customers", "card", 20, 0),
            col("public", "customers", "created", 1184, 0),
        ])
        .unwrap();
    let row = rewrite(
        &mut plan,
        &[
            Some(b"jane.doe@example.com"),
            Some(b"536-22-1234"),
            Some(b"Jane Doe"),
            Some(b"wrote from jane@work.example.org, card 4111 1111 1111 1111"),
            Some(b"42"),
            Some(b"4111111111111111"),
            Some(b"2024-05-01 10:00:00+00"),
        ],
    );
    assert_eq!(s(&row[0]), Some("j***@example.com"));
    assert_eq!(s(&row[1]), Some("*******1234"));
    assert_eq!(s(&row[2]), Some("Jane Doe"), "no rule, no finding");
    assert_eq!(s(&row[3]), Some("wrote from [redacted], card [redacted]"));
    let id: i32 = s(&row[4])
        .unwrap()
        .parse()
        .expect("a keyed hash of an int4 is an int4");
    assert!(id >= 0);
    assert_eq!(row[5], None, "partial cannot keep an int8 valid: NULL");
    assert_eq!(
        s(&row[6]),
        Some("2024-05-01 10:00:00+00"),
        "not scannable, no rule"
    );

    // The same id hashes to the same value: joins in the client still work.
    let again = rewrite(
        &mut plan,
        &[Some(b"x@y.io"), None, None, None, Some(b"42"), None, None],
    );
    assert_eq!(again[4], row[4]);
    assert_eq!(s(&again[0]), Some("x***@y.io"));

    let report = plan.take_report();
    assert_eq!(report.rows, 2);
    let json = serde_json::to_string(&report).unwrap();
    for secret in ["jane", "536-22", "4111", "example.com"] {
        assert!(!json.contains(secret), "report leaks {secret}: {json}");
    }
    let entry = |src: &MaskSource| {
        report
            .entries
            .iter()
            .find(|e| &e.source == src)
            .cloned()
            .unwrap()
    };
    let email = entry(&MaskSource::Column {
        pattern: "public.customers.email".into(),
        column: "public.customers.email".into(),
    });
    assert_eq!(
        (email.rule.as_str(), email.strategy, email.count),
        ("crew-pii", StrategyKind::Email, 2)
    );
    let card = entry(&MaskSource::Column {
        pattern: "public.customers.card".into(),
        column: "public.customers.card".into(),
    });
    assert_eq!((card.count, card.nulled_for_type), (0, 1));
    let found = entry(&MaskSource::Detector {
        detector: "payment_card".into(),
    });
    assert_eq!((found.strategy, found.count), (StrategyKind::Redact, 1));
    assert_eq!(
        plan.take_report().total(),
        0,
        "taking the report resets the counts"
    );
}

#[test]
fn binary_format_masks_text_types_and_keeps_other_types_valid() {
    let p = policy(PII);
    let mut plan = crew(&p)
        .plan_columns(&[
            col("public", "customers", "email", 1043, 1),
            col("public", "customers", "id", 20, 1),
            col("public", "customers", "balance", 1700, 1),
            expr(25),
        ])
        .unwrap();
    let numeric = [0u8, 1, 0, 0, 0, 0, 0, 0, 0, 12];
    let row = rewrite(
        &mut plan,
        &[
            Some(b"ann@example.net"),
            Some(&7i64.to_be_bytes()),
            Some(&numeric),
            Some(b"IBAN DE89370400440532013000"),
        ],
    );
    assert_eq!(s(&row[0]), Some("a***@example.net"));
    assert_eq!(row[1].as_ref().map(Vec::len), Some(8), "int8 stays 8 bytes");
    assert_eq!(row[2], None, "numeric cannot hold a hex hash: NULL");
    assert_eq!(s(&row[3]), Some("IBAN [redacted]"));
}

#[test]
fn passthrough_and_other_subjects_leave_rows_byte_identical() {
    let p = policy(PII);
    let nobody = p.for_subject(&Subject {
        user: Some("alice"),
        ..Subject::default()
    });
    assert!(nobody.is_noop());
    let mut plan = nobody
        .plan_columns(&[col("public", "customers", "email", 25, 0), expr(25)])
        .unwrap();
    assert!(plan.is_passthrough());
    let body = encode_body(&[Some(b"jane@example.com"), None]);
    let mut out = Vec::new();
    plan.rewrite_data_row(&body, &mut out).unwrap();
    assert_eq!(&out[5..], &body[..]);
    let ops = p.with_rules(&["ops-notes"]).unwrap();
    let plan = ops
        .plan_columns(&[col("public", "customers", "email", 25, 0)])
        .unwrap();
    assert!(
        plan.is_passthrough(),
        "ops-notes masks other columns and scans nothing"
    );
    assert!(p.with_rules(&["nope"]).is_err());
}

#[test]
fn malformed_rows_are_errors_and_write_nothing() {
    let p = policy(PII);
    let mut plan = crew(&p)
        .plan_columns(&[col("public", "customers", "email", 25, 0), expr(25)])
        .unwrap();
    let mut out = b"kept".to_vec();
    let one_column = encode_body(&[Some(b"a@b.io")]);
    assert_eq!(
        plan.rewrite_data_row(&one_column, &mut out),
        Err(DataRowError::ColumnCount {
            got: 1,
            expected: 2
        })
    );
    let mut cut = encode_body(&[Some(b"jane@example.com"), Some(b"x")]);
    cut.pop();
    assert!(matches!(
        plan.rewrite_data_row(&cut, &mut out),
        Err(DataRowError::Truncated { column: 1 })
    ));
    assert_eq!(out, b"kept");
    assert_eq!(plan.take_report().rows, 0);
}

#[test]
fn plans_from_row_description_need_resolved_columns() {
    let p = policy(PII);
    let m = crew(&p);
    let mut resolver = ColumnResolver::new();
    let email = FieldSource {
        table_oid: 16400,
        attnum: 2,
    };
    let fields = [
        FieldInfo {
            source: email,
            type_oid: 25,
            format: 0,
        },
        FieldInfo {
            source: FieldSource {
                table_oid: 0,
                attnum: 0,
            },
            type_oid: 25,
            format: 0,
        },
    ];
    assert_eq!(
        m.plan(&fields, &resolver).unwrap_err(),
        PlanError::Unresolved {
            index: 0,
            table_oid: 16400,
            attnum: 2
        }
    );
    let asked = resolver.unresolved(&[email]);
    resolver.absorb(
        &asked,
        [CatalogRow {
            source: email,
            is_base: false,
            name: ColumnName::new("public", "customers", "email"),
        }],
    );
    let mut plan = m.plan(&fields, &resolver).unwrap();
    let row = rewrite(
        &mut plan,
        &[Some(b"bo@example.com"), Some(b"bo@example.com")],
    );
    assert_eq!(s(&row[0]), Some("b***@example.com"));
    assert_eq!(s(&row[1]), Some("[redacted]"));
    let bad_format = [FieldInfo {
        source: FieldSource {
            table_oid: 0,
            attnum: 0,
        },
        type_oid: 25,
        format: 2,
    }];
    assert_eq!(
        m.plan(&bad_format, &resolver).unwrap_err(),
        PlanError::Format { index: 0, code: 2 }
    );
}

#[test]
fn a_view_column_is_masked_by_its_base_column_rule() {
    let p = policy(PII);
    let view_col = PlannedColumn {
        name: Some(ResolvedColumn {
            name: ColumnName::new("public", "customer_emails", "email"),
            base: vec![ColumnName::new("public", "customers", "email")],
            ..ResolvedColumn::default()
        }),
        type_oid: 25,
        format: 0,
    };
    let mut plan = crew(&p).plan_columns(&[view_col]).unwrap();
    assert_eq!(
        s(&rewrite(&mut plan, &[Some(b"li@example.com")])[0]),
        Some("l***@example.com")
    );
}

#[test]
fn json_values_stay_valid_json() {
    let p = policy(PII);
    let mut plan = crew(&p)
        .plan_columns(&[
            expr(3802),
            PlannedColumn {
                name: None,
                type_oid: 3802,
                format: 1,
            },
        ])
        .unwrap();
    let row = rewrite(
        &mut plan,
        &[
            Some(br#"{"contact": "eve@example.com", "n": 1}"#),
            Some(b"\x01{\"ssn\": \"536-22-1234\"}"),
        ],
    );
    assert_eq!(s(&row[0]), Some(r#"{"contact": "[redacted]", "n": 1}"#));
    assert_eq!(
        row[1].as_deref(),
        Some(&b"\x01{\"ssn\": \"[redacted]\"}"[..])
    );
    // A card number written as a bare JSON number cannot be replaced by text: NULL.
    let row = rewrite(&mut plan, &[Some(br#"{"card": 4111111111111111}"#), None]);
    assert_eq!(row[0], None);
    let report = plan.take_report();
    let card = report
        .entries
        .iter()
        .find(|e| {
            e.source
                == MaskSource::Detector {
                    detector: "payment_card".into(),
                }
        })
        .unwrap();
    assert_eq!(card.nulled_for_type, 1);
}

#[test]
fn copy_text_rows_are_unescaped_masked_and_reescaped() {
    let p = policy(PII);
    let mut plan = crew(&p)
        .plan_columns(&[
            col("public", "customers", "email", 25, 0),
            expr(25),
            col("public", "customers", "id", 23, 0),
            expr(23),
        ])
        .unwrap();
    let opts = CopyTextOptions::default();
    let mut out = Vec::new();
    plan.rewrite_copy_text_row(
        b"jo\\\\hn@example.com\tnote:\\tcard\\n4111111111111111\t7\t\\N\n",
        &opts,
        &mut out,
    )
    .unwrap();
    let id = {
        let mut h = crew(&p)
            .plan_columns(&[col("public", "customers", "id", 23, 0)])
            .unwrap();
        let v = rewrite(&mut h, &[Some(b"7")]);
        s(&v[0]).unwrap().to_string()
    };
    assert_eq!(
        out,
        format!("j***@example.com\tnote:\\tcard\\n[redacted]\t{id}\t\\N\n").into_bytes()
    );

    // Nothing to mask: the row is copied byte for byte, escapes and all.
    out.clear();
    let row = b"a\\\\b\\tc@\tplain \\x41\t8\t9\n";
    let mut unmasked = p
        .for_subject(&Subject::default())
        .plan_columns(&[expr(25), expr(25), expr(23), expr(23)])
        .unwrap();
    unmasked
        .rewrite_copy_text_row(row, &opts, &mut out)
        .unwrap();
    assert_eq!(out, row);

    // Malformed rows write nothing.
    out.clear();
    assert_eq!(
        plan.rewrite_copy_text_row(b"a\tb\n", &opts, &mut out),
        Err(CopyRowError::FieldCount {
            got: 2,
            expected: 4
        })
    );
    assert_eq!(
        plan.rewrite_copy_text_row(b"a\tb\tc\td", &opts, &mut out),
        Err(CopyRowError::NoNewline)
    );
    assert_eq!(
        plan.rewrite_copy_text_row(b"a\\\tb\tc\td\\\n", &opts, &mut out),
        Err(CopyRowError::TrailingBackslash)
    );
    assert!(out.is_empty());

    // Masked NULL becomes the configured NULL marker; a custom delimiter is escaped.
    let pipes = CopyTextOptions {
        delimiter: b'|',
        null: b"".to_vec(),
        whole_table: false,
    };
    let mut ops = p
        .with_rules(&["ops-notes", "crew-pii"])
        .unwrap()
        .plan_columns(&[col("public", "tickets", "note", 25, 0), expr(25)])
        .unwrap();
    ops.rewrite_copy_text_row(b"call me|x\\|y 536-22-1234\n", &pipes, &mut out)
        .unwrap();
    assert_eq!(out, b"|x\\|y [redacted]\n");
}
