//! Extended batches stream (issue 14): each message is judged, journaled and sent on as
//! it arrives rather than held until Sync, so asyncpg's pipelined `executemany` sees
//! the server's error while it is still writing and stops, as it does against the
//! server directly. Real PostgreSQL 15, real asyncpg, the agent's session code.

mod postgres_support;

use postgres_support::{
    raw::{self, Raw, frame, sqlstate},
    *,
};

const ALLOW_ALL: &str = r#"
[[rules]]
name = "all"
action = "allow"
kinds = ["select", "insert", "ddl", "session", "transaction"]
"#;

#[test]
fn a_failing_executemany_stops_early_and_runs_nothing_after_the_error() {
    let pg = PgServer::start();
    let proxy = Proxy::start(&pg, ALLOW_ALL);
    // 1024 rows of 32 KiB (32 MiB) would follow the duplicate key.
    let run = proxy.python("asyncpg_executemany.py", &["fail", "1024"]);
    assert!(run.ok, "{run:?}");
    let out: serde_json::Value = serde_json::from_str(run.stdout.trim()).unwrap();
    assert_eq!(out["error"], "23505", "{out}");
    assert!(
        out["produced"].as_u64().unwrap() < 1024,
        "the client wrote the whole batch before it saw the error: {out}"
    );
    // The batch is one implicit transaction: the row before the error is rolled back.
    assert_eq!(out["rows"], 0, "{out}");
}

#[test]
fn the_servers_error_arrives_before_the_worker_ends_its_batch() {
    let pg = PgServer::start();
    pg.direct("CREATE TABLE t (id int PRIMARY KEY); GRANT ALL ON t TO trusty;");
    let proxy = Proxy::start(&pg, ALLOW_ALL);
    let mut r = Raw::login(&proxy);
    let bind = frame(b'B', b"\0\0\0\0\0\0\0\0");
    let execute = frame(b'E', b"\0\0\0\0\0");
    // No Sync, no Flush: the batch is still open when the second insert fails.
    r.send(&[
        frame(b'P', b"\0INSERT INTO t VALUES (1)\0\0\0"),
        bind.clone(),
        execute.clone(),
        bind.clone(),
        execute.clone(),
    ]);
    let mut tags = Vec::new();
    let error = loop {
        let (tag, body) = r.frame().expect("the server's answers before Sync");
        tags.push(tag);
        if tag == b'E' {
            break sqlstate(&body);
        }
    };
    assert_eq!(tags, b"12C2E");
    assert_eq!(error, "23505");
    // The rest of the batch is skipped; Sync ends it and rolls the first insert back.
    r.send(&[
        frame(b'P', b"\0INSERT INTO t VALUES (3)\0\0\0"),
        bind,
        execute,
        frame(b'S', b""),
    ]);
    assert_eq!(r.frame().unwrap(), (b'Z', b"I".to_vec()));
    assert_eq!(pg.direct("SELECT count(*) FROM t"), "0\n");
}

#[test]
fn a_refusal_after_part_of_a_streamed_batch_ran_rolls_that_part_back() {
    let pg = PgServer::start();
    pg.direct("CREATE TABLE t (id int PRIMARY KEY); GRANT ALL ON t TO trusty;");
    let proxy = Proxy::start(&pg, ALLOW_ALL);
    let mut r = Raw::login(&proxy);
    let bind = frame(b'B', b"\0\0\0\0\0\0\0\0");
    let execute = frame(b'E', b"\0\0\0\0\0");
    r.send(&[
        frame(b'P', b"\0INSERT INTO t VALUES (1)\0\0\0"),
        bind.clone(),
        execute.clone(),
        // The server holds its answers until Flush or Sync (the agent does not).
        frame(b'H', b""),
    ]);
    // The insert ran on the server, inside the batch's implicit transaction.
    let tags: Vec<u8> = (0..3).map(|_| r.frame().unwrap().0).collect();
    assert_eq!(tags, b"12C");
    // A statement no rule allows, in the same batch: the worker sees the refusal, and
    // the insert before it does not stand ("if any is refused, none runs").
    r.send(&[
        frame(b'P', b"\0DELETE FROM t WHERE id = 1\0\0\0"),
        bind,
        execute,
        frame(b'S', b""),
    ]);
    let answers = r.until_ready();
    let tags: Vec<u8> = answers.iter().map(|(t, _)| *t).collect();
    assert_eq!(tags, b"EZ", "{answers:?}");
    assert_eq!(sqlstate(&answers[0].1), "42501");
    assert!(
        raw::field(&answers[0].1, b'M')
            .contains("pam-agent refused the statement (rule \"default\")"),
        "{answers:?}"
    );
    assert_eq!(pg.direct("SELECT count(*) FROM t"), "0\n");
    // The session goes on.
    r.send(&[frame(b'Q', b"SELECT count(*) FROM t\0")]);
    let tags: Vec<u8> = r.until_ready().iter().map(|(t, _)| *t).collect();
    assert_eq!(tags, b"TDCZ");
}

#[test]
fn a_workers_own_missing_portal_keeps_the_servers_error() {
    let pg = PgServer::start();
    let proxy = Proxy::start(&pg, ALLOW_ALL);
    let mut r = Raw::login(&proxy);
    // An Execute of a portal the worker never bound, inside a streamed batch: the
    // server's own 34000 reaches the worker, not a refusal.
    r.send(&[frame(b'E', b"nope\0\0\0\0\0"), frame(b'S', b"")]);
    let answers = r.until_ready();
    let tags: Vec<u8> = answers.iter().map(|(t, _)| *t).collect();
    assert_eq!(tags, b"EZ", "{answers:?}");
    assert_eq!(sqlstate(&answers[0].1), "34000");
    assert!(raw::field(&answers[0].1, b'M').contains("\"nope\""));
}
