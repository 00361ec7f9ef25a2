//! Every execution is journaled before it runs, with its bound parameters decoded per
//! type (issue 14): real PostgreSQL 15, asyncpg (binary values) and psycopg 3 (text
//! values) through the agent's session code, in each `journal.parameters` mode.

mod postgres_support;

use pam_agent::{
    govern::ParameterRecording,
    journal::{Event, event::Parameter},
};
use postgres_support::*;

const POLICY: &str = r#"
[[rules]]
name = "crew"
action = "allow"
kinds = ["select", "insert", "transaction", "session"]
tables = ["public.*", "pg_catalog.*"]
"#;

type Key = (Option<pam_agent::journal::SessionId>, u64);
type Journal = (Vec<(Key, String)>, Vec<(Key, Vec<Parameter>)>, Vec<Event>);

/// (session and statement number, its text) of every statement record, every execution
/// record, and every event in order.
fn journal(proxy: &Proxy) -> Journal {
    let records = proxy.settled_records();
    let mut statements = Vec::new();
    let mut executions = Vec::new();
    for r in &records {
        match &r.event {
            Event::Statement {
                statement: Some(n),
                text,
                ..
            } => statements.push(((r.session, *n), text.clone().unwrap_or_default())),
            Event::Execution {
                statement,
                parameters,
                ..
            } => executions.push(((r.session, *statement), parameters.clone())),
            _ => {}
        }
    }
    (
        statements,
        executions,
        records.into_iter().map(|r| r.event).collect(),
    )
}

fn shown(p: &[Parameter]) -> Vec<String> {
    p.iter()
        .map(|p| {
            format!(
                "{} {}",
                p.ty.as_deref().unwrap_or("?"),
                match (&p.redacted, &p.value) {
                    (Some(r), _) => format!("[{r}]"),
                    (None, Some(v)) => v.clone(),
                    (None, None) => "NULL".into(),
                }
            )
        })
        .collect()
}

fn run(mode: ParameterRecording) -> (PgServer, Proxy, serde_json::Value) {
    let pg = PgServer::start();
    let proxy = Proxy::with(
        &pg,
        Options {
            parameters: mode,
            ..Options::policy(POLICY)
        },
    );
    let out = proxy.python("bind_parameters.py", &[]);
    assert!(out.ok, "{out:?}");
    let json: serde_json::Value = serde_json::from_str(out.stdout.trim()).unwrap();
    (pg, proxy, json)
}

/// The executions of the statement whose text starts with `prefix`.
fn executions_of(proxy: &Proxy, prefix: &str) -> Vec<Vec<String>> {
    let (statements, executions, _) = journal(proxy);
    let numbers: Vec<Key> = statements
        .iter()
        .filter(|(_, t)| t.starts_with(prefix))
        .map(|(k, _)| *k)
        .collect();
    assert!(!numbers.is_empty(), "{prefix}: {statements:?}");
    executions
        .iter()
        .filter(|(n, _)| numbers.contains(n))
        .map(|(_, p)| shown(p))
        .collect()
}

#[test]
fn executions_are_journaled_write_ahead_with_decoded_parameters() {
    let (_pg, proxy, out) = run(ParameterRecording::Redacted);
    assert_eq!(
        out["row"],
        serde_json::json!([
            "7",
            "-9000000000",
            "shipped",
            "True",
            "12345678-1234-5678-1234-567812345678",
            "-12.345",
            "2026-01-02 03:04:05+00:00",
            "2026-12-01",
            "1.5",
            null
        ])
    );
    assert_eq!(out["prepared"], serde_json::json!([20, 30]));
    assert_eq!(out["psycopg"], serde_json::json!("item4"));

    // asyncpg binds binary values; their types come from the server's describe.
    assert_eq!(
        executions_of(&proxy, "SELECT $1::int4"),
        [[
            "int4 7",
            "int8 -9000000000",
            "text shipped",
            "bool true",
            "uuid 12345678-1234-5678-1234-567812345678",
            "numeric -12.345",
            "timestamptz 2026-01-02T03:04:05Z",
            "date 2026-12-01",
            "float8 1.5",
            "text NULL",
        ]]
    );
    // One record per execution of a prepared statement.
    assert_eq!(
        executions_of(&proxy, "SELECT qty FROM orders WHERE id = $1"),
        [["int4 2"], ["int4 3"]]
    );
    // What a detector finds is withheld by default.
    assert_eq!(
        executions_of(&proxy, "INSERT INTO audit_log"),
        [["text [detector email]"]]
    );
    // psycopg binds text values.
    let psycopg = executions_of(&proxy, "SELECT item FROM orders WHERE id = $1");
    assert_eq!(psycopg.len(), 1, "{psycopg:?}");
    assert!(
        psycopg[0][0].ends_with(" 4") && psycopg[0][1].ends_with(" none"),
        "{psycopg:?}"
    );

    // Write-ahead: each execution record comes before its statement's completion.
    let (_, _, events) = journal(&proxy);
    for (i, e) in events.iter().enumerate() {
        if let Event::Execution { statement, .. } = e {
            let done = events[i..].iter().position(
                |c| matches!(c, Event::StatementCompleted { statement: s, .. } if s == statement),
            );
            assert!(
                done.is_some(),
                "execution of #{statement} without a later completion"
            );
        }
    }
}

#[test]
fn full_shows_every_value_and_none_keeps_types_only() {
    let (_pg, proxy, _) = run(ParameterRecording::Full);
    assert_eq!(
        executions_of(&proxy, "INSERT INTO audit_log"),
        [["text jane@example.com"]]
    );
    let (_pg, proxy, _) = run(ParameterRecording::None);
    assert_eq!(
        executions_of(&proxy, "INSERT INTO audit_log"),
        [["text [not recorded]"]]
    );
    assert_eq!(
        executions_of(&proxy, "SELECT qty FROM orders WHERE id = $1"),
        [["int4 [not recorded]"], ["int4 [not recorded]"]]
    );
}
