//! Driver behaviour through the postgres session: asyncpg (extended protocol,
//! prepared statements, pipelining, portals), psycopg 3 (pipeline mode, COPY both
//! ways, server-side cursors, cancel), SQLAlchemy over psycopg2, pgbench.

mod postgres_support;

use pam_agent::journal::Event;
use postgres_support::*;
use serde_json::{Value, json};

fn json_of(run: &PsqlRun) -> Value {
    assert!(run.ok, "client failed:\n{}\n{}", run.stdout, run.stderr);
    serde_json::from_str(run.stdout.trim()).unwrap_or_else(|e| panic!("{e}: {run:?}"))
}

fn refused(v: &Value, rule: &str) {
    assert_eq!(v[0], "42501", "{v}");
    let msg = v[1].as_str().unwrap();
    assert!(msg.contains(&format!("rule \"{rule}\"")), "{msg}");
}

#[test]
fn asyncpg_extended_protocol() {
    let pg = PgServer::start();
    let proxy = Proxy::start(&pg, CREW_POLICY);
    let out = json_of(&proxy.python("asyncpg_extended.py", &[]));
    assert_eq!(out["fetch"], json!([[1, "item1"], [2, "item2"]]));
    assert_eq!(out["prepared"], json!([10, 20, 30]));
    assert_eq!(out["count_after_executemany"], json!(3));
    assert_eq!(out["cursor"], json!([1, 2, 3, 4, 5]));
    refused(&out["denied_fetch"], "default");
    refused(&out["denied_prepare"], "no-unbounded-writes");
    refused(&out["denied_simple"], "no-unbounded-writes");
    // The refusal failed the transaction: the next insert was ignored, and the one
    // before it rolled back with it.
    assert_eq!(out["in_failed_tx"], json!("25P02"));
    assert_eq!(out["count_after_tx"], json!(3));
    assert_eq!(out["prepared_again"], json!(50));
    assert_eq!(pg.direct("SELECT count(*) FROM orders"), "5\n");
    // A named prepared statement is judged once at Parse and audited per execution
    // (completions are written in the background: read once every session closed).
    let records = proxy.settled_records();
    let parse_n = records
        .iter()
        .find_map(|r| match &r.event {
            pam_agent::journal::Event::Statement {
                statement, text, ..
            } if text.as_deref() == Some("SELECT qty FROM orders WHERE id = $1") => *statement,
            _ => None,
        })
        .expect("prepared statement journaled");
    let executions = records
        .iter()
        .filter(|r| {
            matches!(&r.event, pam_agent::journal::Event::StatementCompleted { statement, rows: Some(1), .. } if *statement == parse_n)
        })
        .count();
    assert_eq!(executions, 4, "{records:#?}");
}

#[test]
fn psycopg_pipeline_copy_and_cursors() {
    let pg = PgServer::start();
    let proxy = Proxy::start(&pg, CREW_POLICY);
    let out = json_of(&proxy.python("psycopg_pipeline.py", &[]));
    assert_eq!(out["after_pipeline"], json!(1));
    refused(&out["pipeline_refusal"].clone(), "default");
    // The refused pipeline ran none of its statements.
    assert_eq!(out["notes"], json!(["p1"]));
    assert_eq!(out["copy_in_rows"], json!(1000));
    assert_eq!(
        out["copy_out"],
        json!("1\titem1\n2\titem2\n3\titem3\n4\titem4\n5\titem5\n")
    );
    assert_eq!(out["count_after_copy"], json!(1001));
    assert_eq!(out["copy_secret"], json!("42501"));
    assert_eq!(out["named_cursor"], json!([1, 2, 3, 4, 5]));
    // COPY FROM STDIN's rows come from its CommandComplete ("COPY 1000"), on the
    // completion of that very statement (same session, same number).
    let records = proxy.settled_records();
    let copy_in: Vec<_> = records
        .iter()
        .filter_map(|r| match &r.event {
            Event::Statement {
                statement: Some(n),
                kinds,
                ..
            } if kinds.first().map(String::as_str) == Some("copy_in") => Some((r.session, *n)),
            _ => None,
        })
        .collect();
    assert_eq!(copy_in.len(), 1, "{records:#?}");
    let rows: Vec<Option<u64>> = records
        .iter()
        .filter_map(|r| match &r.event {
            Event::StatementCompleted {
                statement, rows, ..
            } if (r.session, *statement) == copy_in[0] => Some(*rows),
            _ => None,
        })
        .collect();
    assert_eq!(rows, [Some(1000)]);
}

#[test]
fn sqlalchemy_over_psycopg2() {
    let pg = PgServer::start();
    let proxy = Proxy::start(&pg, CREW_POLICY);
    let out = json_of(&proxy.python("sqlalchemy_psycopg2.py", &[]));
    assert_eq!(out["rows"], json!([[3, 30], [4, 40], [5, 50]]));
    refused(&out["secret"], "default");
    assert_eq!(out["count"], json!(1));
}

#[test]
fn cancel_reaches_the_right_backend() {
    let pg = PgServer::start();
    // pg_sleep is volatile: allowed by name (and only when called), with that flag
    // permitted.
    let sleep = "[[rules]]\nname = \"crew-may-sleep\"\naction = \"allow\"\nkinds = [\"select\"]\n\
                 functions = [\"pg_catalog.pg_sleep\"]\nany_functions = [\"pg_catalog.pg_sleep\"]\npermit_flags = [\"volatile_function\"]\n";
    let proxy = Proxy::start(&pg, &format!("{CREW_POLICY}{sleep}"));
    let out = json_of(&proxy.python("psycopg_cancel.py", &[]));
    assert_eq!(out["cancel"], json!("57014"));
    assert!(out["seconds"].as_f64().unwrap() < 10.0, "{out}");
    assert_eq!(out["after"], json!(42));
    // The worker sees its backend's own pid (pg_terminate_backend, notifications), and
    // only the secret key is the agent's.
    assert_eq!(out["visible_pid"], out["server_pid"]);
    // The cancel came on its own connection and was forwarded with the server's key.
    proxy.wait_for_record("the forwarded cancel's close record", |r| {
        matches!(&r.event, Event::SessionClosed { detail: Some(d), .. } if d.starts_with("cancel request forwarded"))
    });
}

#[test]
fn pgbench_simple_extended_and_prepared() {
    let pg = PgServer::start();
    let policy = r#"
[[rules]]
name = "bench"
action = "allow"
kinds = ["select", "insert", "update", "delete", "transaction", "copy_in", "ddl", "maintenance", "session"]
tables = ["public.pgbench_*", "pg_catalog.*"]
"#;
    let proxy = Proxy::start(&pg, policy);
    let pgbench = |args: &[&str]| {
        let out = std::process::Command::new("pgbench")
            .env("PGPASSWORD", PASSWORD)
            .env("PGSSLMODE", "disable")
            .args(["-h", "127.0.0.1", "-U", "postgres"])
            .arg("-p")
            .arg(proxy.port.to_string())
            .args(args)
            .arg("postgres")
            .output_within()
            .unwrap();
        let text = format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        assert!(out.status.success(), "pgbench {args:?}:\n{text}");
        text
    };
    pgbench(&["-i", "-s", "1", "-q"]);
    assert_eq!(
        pg.direct("SELECT count(*) FROM pgbench_accounts"),
        "100000\n"
    );
    for mode in ["simple", "extended", "prepared"] {
        let text = pgbench(&["-M", mode, "-c", "2", "-t", "50", "-n"]);
        assert!(text.contains("number of failed transactions: 0"), "{text}");
        assert!(
            text.contains("number of transactions actually processed: 100/100"),
            "{text}"
        );
    }
    assert_eq!(pg.direct("SELECT count(*) FROM pgbench_history"), "300\n");
}
