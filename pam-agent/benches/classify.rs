//! Parse-and-decide cost per statement: uncached (libpg_query parse, fingerprint,
//! tree walk, rule evaluation) and cached (text lookup + rule evaluation), which is
//! what every repeated statement of a session pays; and `varying_constants`, a
//! statement whose literals change on every execution (pgbench's simple protocol),
//! served by the normalised cache. Figures: docs/benchmarks.md.

use criterion::{Criterion, criterion_group, criterion_main};
use pam_agent::{
    policy::{Policy, RawPolicy},
    principal::Principal,
    protocols::postgres::sql::{self, Classifier, ClassifierConfig},
};

const STATEMENTS: &[(&str, &str)] = &[
    (
        "point_select",
        "SELECT id, item, qty FROM orders WHERE id = $1",
    ),
    (
        "join_filter",
        "SELECT o.id, c.name, sum(l.qty * l.price) FROM public.orders o JOIN customers c ON c.id = o.customer_id \
         JOIN order_lines l ON l.order_id = o.id WHERE o.created_at > now() - interval '7 days' \
         GROUP BY o.id, c.name ORDER BY 3 DESC LIMIT 20",
    ),
    (
        "insert",
        "INSERT INTO audit_log (note, at) VALUES ($1, now())",
    ),
    (
        "writable_cte",
        "WITH moved AS (DELETE FROM queue WHERE id IN (SELECT id FROM queue ORDER BY id LIMIT 10) RETURNING *) \
         INSERT INTO done SELECT * FROM moved",
    ),
];

fn policy() -> Policy {
    let raw: RawPolicy = toml::from_str(
        r#"
[[rules]]
name = "no-unbounded-writes"
action = "deny"
if_flags = ["update_without_where", "delete_without_where"]
[[rules]]
name = "ddl"
action = "require_approval"
kinds = ["ddl", "dcl", "admin"]
[[rules]]
name = "crew"
action = "allow"
users = ["crew"]
cgroups = ["/crew.slice/*"]
kinds = ["select", "insert", "update", "delete", "transaction"]
tables = ["public.*"]
"#,
    )
    .unwrap();
    raw.validate(&["db"], &sql::VOCABULARY).unwrap().0
}

/// Policy over a classified text, as the gate applies it (unreadable text is refused
/// before policy).
fn decide(
    policy: &Policy,
    who: &Principal,
    classified: &Result<Vec<sql::Statement>, sql::Unclassifiable>,
) -> Option<pam_agent::policy::Decision> {
    let sts = classified.as_ref().ok()?;
    let subject = pam_agent::policy::Subject::new(who, "db");
    Some(policy.decide_all(&subject, sts.iter().map(|s| &s.request)))
}

fn principal() -> Principal {
    Principal {
        pid: 1,
        tid: 1,
        uid: 1001,
        gid: 1001,
        cgroup_id: 1,
        comm: "python3".into(),
        user: Some("crew".into()),
        exe: Some("/usr/bin/python3".into()),
        cgroup: Some("/crew.slice/w1.service".into()),
        unit: None,
        ..Default::default()
    }
}

fn bench(c: &mut Criterion) {
    let policy = policy();
    let who = principal();
    let classifier = Classifier::start(ClassifierConfig::default()).unwrap();
    for (name, text) in STATEMENTS {
        c.bench_function(&format!("uncached/{name}"), |b| {
            b.iter(|| {
                let classified = sql::classify(std::hint::black_box(text), 1 << 20);
                decide(&policy, &who, &classified)
            })
        });
        classifier.classify_here(text);
        c.bench_function(&format!("cached/{name}"), |b| {
            b.iter(|| {
                let classified = classifier.classify_here(std::hint::black_box(text));
                decide(&policy, &who, &classified)
            })
        });
    }
    // A new text every time, as pgbench -M simple sends them.
    let texts: Vec<String> = (0..4096)
        .map(|i| {
            format!(
                "UPDATE pgbench_accounts SET abalance = abalance + {} WHERE aid = {};",
                i * 7 % 5000,
                i * 7919 % 100_000 + 1
            )
        })
        .collect();
    let mut i = 0;
    c.bench_function("varying_constants/uncached", |b| {
        b.iter(|| {
            i = (i + 1) % texts.len();
            let classified = sql::classify(std::hint::black_box(&texts[i]), 1 << 20);
            decide(&policy, &who, &classified)
        })
    });
    classifier.classify_here(&texts[0]);
    c.bench_function("varying_constants/normalised_hit", |b| {
        b.iter(|| {
            i = (i + 1) % texts.len();
            let classified = classifier.classify_here(std::hint::black_box(&texts[i]));
            decide(&policy, &who, &classified)
        })
    });
}

criterion_group! {
    name = benches;
    config = Criterion::default()
        .sample_size(50)
        .warm_up_time(std::time::Duration::from_millis(500))
        .measurement_time(std::time::Duration::from_secs(2));
    targets = bench
}
criterion_main!(benches);
