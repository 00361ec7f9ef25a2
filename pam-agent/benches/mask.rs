//! DataRow and COPY-text rewriting throughput: no masking (validate and copy, the
//! baseline), column rules only, and content detectors on every text value. Rows look like a CRM table: realistic
//! lengths, a little personal data in free text.

use std::hint::black_box;

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use pam_agent::mask::{ColumnName, MaskingConfig, MaskingPolicy, ResolvedColumn, RowPlan, Subject};
use pam_agent::protocols::postgres::masking::datarow::encode_body;
use pam_agent::protocols::postgres::masking::{
    CopyTextOptions, PlanResults, PlannedColumn, RewriteRows,
};

const ROWS: usize = 1000;

const COLUMN_RULES: &str = r#"
hash_key = "00112233445566778899aabbccddeeff"
[[rules]]
name = "columns"
[[rules.columns]]
columns = ["public.customers.email"]
strategy = { kind = "email" }
[[rules.columns]]
columns = ["public.customers.phone"]
strategy = { kind = "partial", keep_last = 4 }
[[rules.columns]]
columns = ["public.customers.id"]
strategy = { kind = "keyed_hash" }
"#;

const CONTENT_RULES: &str = r#"
[[rules]]
name = "content"
[[rules.content]]
detectors = ["email", "phone", "payment_card", "us_ssn", "iban", "ipv4", "ipv6", "jwt", "aws_access_key", "github_token", "slack_token", "api_key"]
strategy = { kind = "redact" }
"#;

/// (column, type OID)
const COLUMNS: [(&str, u32); 8] = [
    ("id", 23),
    ("full_name", 25),
    ("email", 1043),
    ("phone", 25),
    ("city", 25),
    ("notes", 25),
    ("created", 1184),
    ("balance", 1700),
];

/// The same rows as COPY text (tab-delimited, newline-terminated; no value needs escaping).
fn copy_rows(rows: &[Vec<u8>]) -> Vec<Vec<u8>> {
    rows.iter()
        .map(|body| {
            let values = pam_agent::protocols::postgres::masking::datarow::values(body).unwrap();
            let mut line = Vec::new();
            for (i, v) in values.iter().enumerate() {
                if i > 0 {
                    line.push(b'\t');
                }
                line.extend_from_slice(v.unwrap());
            }
            line.push(b'\n');
            line
        })
        .collect()
}

fn rows() -> Vec<Vec<u8>> {
    let first = [
        "Maria", "Wei", "Ana", "John", "Fatima", "Lukas", "Aiko", "Pedro",
    ];
    let last = [
        "Garcia", "Chen", "O'Neil", "Smith", "Haddad", "Becker", "Tanaka", "Silva",
    ];
    let cities = [
        "Lisbon",
        "Berlin",
        "Chicago",
        "Osaka",
        "São Paulo",
        "Toronto",
    ];
    (0..ROWS)
        .map(|i| {
            let (f, l) = (first[i % 8], last[(i / 8) % 8]);
            let notes = match i % 10 {
                0 => format!(
                    "Customer asked to be contacted at {}.{}@mail.example.com after 5pm",
                    f.to_lowercase(),
                    i
                ),
                1 => "Paid with card 4111 1111 1111 1111, receipt sent".to_string(),
                _ => format!(
                    "Order #{} shipped on 2024-05-{:02}; delivery window confirmed by phone",
                    80000 + i,
                    i % 28 + 1
                ),
            };
            let values: Vec<String> = vec![
                (i + 1).to_string(),
                format!("{f} {l}"),
                format!("{}.{}{}@example.com", f.to_lowercase(), l.to_lowercase(), i),
                format!("+1 415-555-{:04}", i % 10000),
                cities[i % cities.len()].to_string(),
                notes,
                "2024-03-01 09:30:00+00".to_string(),
                format!("{}.{:02}", i * 7, i % 100),
            ];
            let refs: Vec<Option<&[u8]>> = values.iter().map(|v| Some(v.as_bytes())).collect();
            encode_body(&refs)
        })
        .collect()
}

fn plan(rules: &str) -> RowPlan {
    let policy = MaskingPolicy::compile(&toml::from_str::<MaskingConfig>(rules).unwrap()).unwrap();
    let cols: Vec<PlannedColumn> = COLUMNS
        .iter()
        .map(|(c, t)| PlannedColumn {
            name: Some(ResolvedColumn {
                name: ColumnName::new("public", "customers", c),
                base: vec![],
                ..ResolvedColumn::default()
            }),
            type_oid: *t,
            format: 0,
        })
        .collect();
    policy
        .for_subject(&Subject::default())
        .plan_columns(&cols)
        .unwrap()
}

fn bench(c: &mut Criterion) {
    let rows = rows();
    let bytes: usize = rows.iter().map(|r| r.len() + 5).sum();
    eprintln!(
        "{ROWS} rows per iteration, {bytes} bytes of DataRow messages ({} bytes/row)",
        bytes / ROWS
    );
    let mut group = c.benchmark_group("datarow");
    group.throughput(Throughput::Bytes(bytes as u64));
    for (name, rules) in [
        (
            "no_masking",
            "[[rules]]\nname = \"none\"\n[[rules.columns]]\ncolumns = [\"x.y.z\"]\nstrategy = { kind = \"null\" }\n",
        ),
        ("column_rules", COLUMN_RULES),
        (
            "column_rules_without_hash",
            &COLUMN_RULES.replace("kind = \"keyed_hash\"", "kind = \"redact\""),
        ),
        ("content_detectors", CONTENT_RULES),
    ] {
        let mut plan = plan(rules);
        let mut out = Vec::with_capacity(bytes * 2);
        group.bench_function(name, |b| {
            b.iter(|| {
                out.clear();
                for r in &rows {
                    plan.rewrite_data_row(black_box(r), &mut out).unwrap();
                }
                black_box(out.len())
            })
        });
    }
    group.finish();

    let copy = copy_rows(&rows);
    let copy_bytes: usize = copy.iter().map(Vec::len).sum();
    let opts = CopyTextOptions::default();
    let mut group = c.benchmark_group("copy_text");
    group.throughput(Throughput::Bytes(copy_bytes as u64));
    for (name, rules) in [
        ("column_rules", COLUMN_RULES),
        ("content_detectors", CONTENT_RULES),
    ] {
        let mut plan = plan(rules);
        let mut out = Vec::with_capacity(copy_bytes * 2);
        group.bench_function(name, |b| {
            b.iter(|| {
                out.clear();
                for r in &copy {
                    plan.rewrite_copy_text_row(black_box(r), &opts, &mut out)
                        .unwrap();
                }
                black_box(out.len())
            })
        });
    }
    group.finish();
}

criterion_group! {
    name = benches;
    config = Criterion::default().sample_size(20).warm_up_time(std::time::Duration::from_secs(1)).measurement_time(std::time::Duration::from_secs(4));
    targets = bench
}
criterion_main!(benches);
