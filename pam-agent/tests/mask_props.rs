//! Property tests of the masking engine's row rewriters: what a client receives is always a
//! well-formed message, unmasked rows are byte-identical, and no input makes it panic.

use pam_agent::mask::{ColumnName, MaskingConfig, MaskingPolicy, ResolvedColumn, RowPlan, Subject};
use pam_agent::protocols::postgres::masking::copy_text::{escape_into, unescape_into};
use pam_agent::protocols::postgres::masking::datarow::{encode_body, values};
use pam_agent::protocols::postgres::masking::{
    CopyTextOptions, PlanResults, PlannedColumn, RewriteRows,
};
use proptest::prelude::*;

const RULES: &str = r#"
hash_key = "00112233445566778899aabbccddeeff"
[[rules]]
name = "all"
[[rules.columns]]
columns = ["public.t.c0"]
strategy = { kind = "email" }
[[rules.columns]]
columns = ["public.t.c1"]
strategy = { kind = "keyed_hash" }
[[rules.columns]]
columns = ["public.t.c2"]
strategy = { kind = "partial", keep_last = 2, mask_char = "•" }
[[rules.columns]]
columns = ["public.t.c3"]
strategy = { kind = "null" }
[[rules.content]]
detectors = ["email", "phone", "payment_card", "us_ssn", "iban", "ipv4", "ipv6", "jwt", "aws_access_key", "github_token", "slack_token", "api_key"]
patterns = [{ name = "emp", regex = "EMP-[0-9]{3}" }]
strategy = { kind = "redact", text = "<x>" }
"#;

/// Compiled once: building the detector set is the slow part in a debug build.
fn policy() -> MaskingPolicy {
    static POLICY: std::sync::OnceLock<MaskingPolicy> = std::sync::OnceLock::new();
    POLICY
        .get_or_init(|| {
            MaskingPolicy::compile(&toml::from_str::<MaskingConfig>(RULES).unwrap()).unwrap()
        })
        .clone()
}

/// Columns c0..c3 have column rules; the rest are text expressions, scanned by detectors.
fn masking_plan(p: &MaskingPolicy, n: usize, format: i16) -> RowPlan {
    let cols: Vec<PlannedColumn> = (0..n)
        .map(|i| PlannedColumn {
            name: Some(ResolvedColumn {
                name: ColumnName::new("public", "t", &format!("c{i}")),
                base: vec![],
                ..ResolvedColumn::default()
            }),
            type_oid: [25, 23, 1043, 20, 25, 3802][i % 6],
            format,
        })
        .collect();
    p.for_subject(&Subject::default())
        .plan_columns(&cols)
        .unwrap()
}

fn text_plan(p: &MaskingPolicy, n: usize) -> RowPlan {
    let cols: Vec<PlannedColumn> = (0..n)
        .map(|_| PlannedColumn {
            name: None,
            type_oid: 25,
            format: 0,
        })
        .collect();
    p.for_subject(&Subject::default())
        .plan_columns(&cols)
        .unwrap()
}

/// Values that look like what the detectors hunt for, mixed with noise.
fn value() -> impl Strategy<Value = Option<Vec<u8>>> {
    let sensitive = prop_oneof![
        Just("jane.doe@example.com".to_string()),
        Just("4111 1111 1111 1111".to_string()),
        Just("536-22-1234".to_string()),
        Just("DE89370400440532013000".to_string()),
        Just("10.1.2.3".to_string()),
        Just("EMP-123".to_string()),
        "[a-z@. 0-9-]{0,40}",
        "\\PC{0,20}",
    ];
    prop_oneof![
        1 => Just(None),
        6 => (sensitive.clone(), sensitive).prop_map(|(a, b)| Some(format!("{a} {b}").into_bytes())),
        2 => proptest::collection::vec(any::<u8>(), 0..40).prop_map(Some),
    ]
}

/// Parses a DataRow message from the protocol's definition, without the engine's code:
/// 'D', Int32 length (itself included), Int16 column count, then per column an Int32
/// length (-1: NULL) and that many bytes, and nothing after the last column.
fn parse_message(msg: &[u8]) -> Vec<Option<Vec<u8>>> {
    assert_eq!(msg[0], b'D');
    let len = i32::from_be_bytes(msg[1..5].try_into().unwrap());
    assert_eq!(len as usize, msg.len() - 1, "length field");
    let mut at = 5;
    let mut take = |n: usize| {
        let field = &msg[at..at + n];
        at += n;
        field
    };
    let count = i16::from_be_bytes(take(2).try_into().unwrap());
    assert!(count >= 0, "column count {count}");
    let values = (0..count)
        .map(|_| match i32::from_be_bytes(take(4).try_into().unwrap()) {
            -1 => None,
            n => {
                assert!(n >= 0, "value length {n}");
                Some(take(n as usize).to_vec())
            }
        })
        .collect();
    assert_eq!(at, msg.len(), "bytes after the last column");
    values
}

#[test]
fn the_tests_own_parser_reads_a_hand_made_row() {
    // Two columns: "ab", NULL.
    let msg = [
        b'D', 0, 0, 0, 16, 0, 2, 0, 0, 0, 2, b'a', b'b', 0xff, 0xff, 0xff, 0xff,
    ];
    assert_eq!(parse_message(&msg), [Some(b"ab".to_vec()), None]);
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 256, failure_persistence: None, ..ProptestConfig::default() })]

    #[test]
    fn rows_without_findings_are_byte_identical(row in proptest::collection::vec(
        proptest::option::of("[A-Za-z ,;!?]{0,60}".prop_map(String::into_bytes)), 0..12))
    {
        let p = policy();
        let vals: Vec<Option<&[u8]>> = row.iter().map(|v| v.as_deref()).collect();
        let body = encode_body(&vals);
        // Scanned by every detector, nothing found.
        let mut plan = text_plan(&p, row.len());
        let mut out = Vec::new();
        plan.rewrite_data_row(&body, &mut out).unwrap();
        prop_assert_eq!(&out[5..], &body[..]);
        prop_assert_eq!(plan.take_report().total(), 0);
        // No rule at all.
        let none = MaskingPolicy::compile(&MaskingConfig::default()).unwrap();
        let mut plan = text_plan(&none, row.len());
        prop_assert!(plan.is_passthrough());
        out.clear();
        plan.rewrite_data_row(&body, &mut out).unwrap();
        prop_assert_eq!(&out[5..], &body[..]);
    }

    #[test]
    fn masked_rows_are_always_well_formed(row in proptest::collection::vec(value(), 1..10), binary in any::<bool>()) {
        let p = policy();
        let vals: Vec<Option<&[u8]>> = row.iter().map(|v| v.as_deref()).collect();
        let mut plan = masking_plan(&p, row.len(), i16::from(binary));
        let mut out = Vec::new();
        plan.rewrite_data_row(&encode_body(&vals), &mut out).unwrap();
        let got = parse_message(&out);
        prop_assert_eq!(got.len(), row.len());
        for (i, (before, after)) in row.iter().zip(&got).enumerate() {
            if before.is_none() {
                prop_assert!(after.is_none(), "NULL stays NULL");
            }
            if i == 3 {
                prop_assert!(after.is_none(), "the null strategy");
            }
            if let (Some(a), 1) = (after, i) {
                // int4 column hashed: still an int4 in its format.
                if binary { prop_assert_eq!(a.len(), 4); } else { prop_assert!(std::str::from_utf8(a).unwrap().parse::<i32>().is_ok()); }
            }
            if let (Some(a), 4) = (after, i % 6) {
                for secret in ["jane.doe@example.com", "4111 1111 1111 1111", "536-22-1234", "DE89370400440532013000", "EMP-123"] {
                    prop_assert!(!a.windows(secret.len()).any(|w| w == secret.as_bytes()), "column {} still shows {}", i, secret);
                }
            }
        }
    }

    #[test]
    fn arbitrary_bytes_never_panic_and_errors_write_nothing(body in proptest::collection::vec(any::<u8>(), 0..64), n in 0usize..4) {
        let p = policy();
        let mut plan = masking_plan(&p, n, 0);
        let mut out = b"x".to_vec();
        match plan.rewrite_data_row(&body, &mut out) {
            Ok(()) => { parse_message(&out[1..]); }
            Err(_) => prop_assert_eq!(&out[..], b"x"),
        }
        let mut copy = text_plan(&p, n);
        let mut out = b"x".to_vec();
        if copy.rewrite_copy_text_row(&body, &CopyTextOptions::default(), &mut out).is_err() {
            prop_assert_eq!(&out[..], b"x");
        }
    }

    #[test]
    fn copy_escaping_round_trips(value in proptest::collection::vec(any::<u8>(), 0..64), delimiter in prop_oneof![Just(b'\t'), Just(b','), Just(b'|')]) {
        let mut escaped = Vec::new();
        escape_into(&value, delimiter, &mut escaped);
        prop_assert!(!escaped.contains(&b'\n') && !escaped.contains(&b'\r'));
        let mut back = Vec::new();
        unescape_into(&escaped, &mut back).unwrap();
        prop_assert_eq!(back, value);
    }

    #[test]
    fn copy_rows_without_findings_are_byte_identical(fields in proptest::collection::vec(
        proptest::option::of("[A-Za-z \\\\\t\n\r,]{0,30}".prop_map(String::into_bytes)), 1..8))
    {
        let p = policy();
        let opts = CopyTextOptions::default();
        let mut row = Vec::new();
        for (i, f) in fields.iter().enumerate() {
            if i > 0 { row.push(b'\t'); }
            match f { Some(v) => escape_into(v, b'\t', &mut row), None => row.extend_from_slice(b"\\N") }
        }
        row.push(b'\n');
        let mut plan = text_plan(&p, fields.len());
        let mut out = Vec::new();
        plan.rewrite_copy_text_row(&row, &opts, &mut out).unwrap();
        prop_assert_eq!(out, row);
    }

    #[test]
    fn parsers_of_server_messages_never_panic(body in proptest::collection::vec(any::<u8>(), 0..80)) {
        let _ = pam_agent::protocols::postgres::masking::row_description::parse(&body);
        let _ = pam_agent::protocols::postgres::masking::CatalogRow::from_data_row(&body);
        let _ = values(&body);
    }

    #[test]
    fn scanned_values_never_panic_and_keep_the_rest(text in "[0-9a-fA-F@:.+() -]{0,48}", binary in any::<bool>()) {
        // Digits, hex, separators and @: the alphabet every detector's confirmation works on.
        let p = policy();
        let cols = [PlannedColumn { name: None, type_oid: 25, format: i16::from(binary) }];
        let mut plan = p.for_subject(&Subject::default()).plan_columns(&cols).unwrap();
        let mut out = Vec::new();
        plan.rewrite_data_row(&encode_body(&[Some(text.as_bytes())]), &mut out).unwrap();
        let got = parse_message(&out);
        let masked = got[0].as_deref().expect("redact never makes NULL");
        let report = plan.take_report();
        if report.total() == 0 {
            prop_assert_eq!(masked, text.as_bytes());
        } else {
            prop_assert!(std::str::from_utf8(masked).unwrap().contains("<x>"));
        }
    }
}
