//! The committed golden journal (tests/fixtures/journal-v1): a small journal written by
//! the agent's own store, holding every record kind, a retention anchor and signed
//! checkpoints. Every build must verify it with `pam-agent audit verify`, read it back
//! with `audit query` exactly as committed, and its chain and signatures must check out
//! under the formulas of docs/journal.md (`common::format`, independent of the product).
//! A format change that breaks this needs a migration for journals already on disk; the
//! fixture is never regenerated to make such a change pass (its signing key is gone).

mod common;

use std::{
    collections::BTreeSet,
    path::{Path, PathBuf},
    time::Duration,
};

use common::*;
use jiff::Timestamp;
use pam_agent::journal::{
    Event, JournalStore, Record, SessionId,
    event::{ApprovalOutcome, Decision, MaskedColumn, ResourceRef, SessionEnd},
    sqlite::{SqliteStore, StoreOptions},
};
use rusqlite::Connection;

fn fixture_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/journal-v1")
}

fn fixture(name: &str) -> String {
    std::fs::read_to_string(fixture_dir().join(name))
        .unwrap_or_else(|e| panic!("fixture {name}: {e}"))
}

/// A copy of the golden journal in a scratch directory: readers may create `-shm` files,
/// and the committed file must stay as it is.
fn golden(dir: &Scratch) -> PathBuf {
    let path = dir.path("journal.db");
    std::fs::copy(fixture_dir().join("journal.db"), &path).unwrap();
    path
}

fn public_key() -> String {
    fixture("public_key.hex").trim().to_owned()
}

const LAST_SEQ: u64 = 21;

/// A signed row: (seq, hash, ts_us, public_key, signature).
type Signed = (u64, Vec<u8>, i64, Vec<u8>, Vec<u8>);

#[test]
fn golden_journal_verifies_with_its_pinned_key() {
    let dir = Scratch::new("golden-verify");
    let path = golden(&dir);
    let key = public_key();
    let o = audit(
        &path,
        &[
            "verify",
            "--trusted-key",
            &key,
            "--expect-seq",
            &LAST_SEQ.to_string(),
        ],
    );
    let out = stdout(&o);
    assert_eq!(o.status.code(), Some(0), "{out}{}", stderr(&o));
    assert!(
        out.contains(&format!("signed by ed25519 key {key}")),
        "{out}"
    );
    assert!(out.contains("OK: chain intact"), "{out}");
    // A witness that saw more records than the file holds: the same file now fails.
    let o = audit(&path, &["verify", "--expect-seq", "22"]);
    assert_eq!(o.status.code(), Some(1), "{}", stdout(&o));
}

#[test]
fn golden_journal_reads_back_exactly() {
    let dir = Scratch::new("golden-query");
    let path = golden(&dir);
    let o = audit(&path, &["query", "--format", "jsonl"]);
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    assert_eq!(stdout(&o), fixture("query.jsonl"));

    // Every kind the agent knew when the fixture was made is in it, once the pruned
    // records are gone (kinds added since are read back by journal_cli).
    let lines: Vec<serde_json::Value> = stdout(&o)
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    let kinds: BTreeSet<&str> = lines.iter().map(|r| r["kind"].as_str().unwrap()).collect();
    // Kinds added since version 1 cannot be in it: the file is never re-made.
    const ADDED_SINCE: &[&str] = &[
        "resource_resolved",
        "worker_token",
        "execution",
        "session_login",
        "session_settings",
    ];
    assert_eq!(
        kinds,
        Event::KINDS
            .iter()
            .copied()
            .filter(|k| !ADDED_SINCE.contains(k))
            .collect::<BTreeSet<_>>()
    );
    let seqs: Vec<u64> = lines.iter().map(|r| r["seq"].as_u64().unwrap()).collect();
    assert_eq!(seqs, (3..=LAST_SEQ).collect::<Vec<_>>());

    // The indexed columns, through the filters that use them.
    let seqs_of = |args: &[&str]| -> Vec<u64> {
        let mut a = vec!["query", "--format", "jsonl"];
        a.extend_from_slice(args);
        let o = audit(&path, &a);
        assert_eq!(o.status.code(), Some(0), "{args:?}: {}", stderr(&o));
        stdout(&o)
            .lines()
            .map(|l| {
                serde_json::from_str::<serde_json::Value>(l).unwrap()["seq"]
                    .as_u64()
                    .unwrap()
            })
            .collect()
    };
    assert_eq!(
        seqs_of(&["--principal", "alice", "--kind", "statement"]),
        [7, 10, 14]
    );
    assert_eq!(
        seqs_of(&["--principal", "1001"]),
        (6..=18).collect::<Vec<_>>()
    );
    assert_eq!(seqs_of(&["--decision", "deny"]), [14]);
    assert_eq!(seqs_of(&["--decision", "pending"]), [11, 15]);
    assert_eq!(seqs_of(&["--decision", "refused"]), [19]);
    assert_eq!(
        seqs_of(&["--process", "python3", "--resource", "orders-db"]).len(),
        13
    );
    assert_eq!(
        seqs_of(&["--session", SESSION, "--kind", "statement_completed"]),
        [8, 13]
    );
    // `--since` includes its instant, `--until` excludes it.
    assert_eq!(
        seqs_of(&[
            "--since",
            "2026-01-01T00:00:10Z",
            "--until",
            "2026-01-01T00:00:12Z"
        ]),
        [13, 14]
    );

    // Exact values of a record of each decision, as an auditor reads them.
    let by_seq = |seq: u64| &lines[(seq - 3) as usize];
    assert_eq!(
        by_seq(7)["text"],
        "SELECT id, total FROM orders WHERE id = 7"
    );
    assert_eq!(by_seq(7)["rule"], "read-orders");
    assert_eq!(by_seq(7)["ts"], "2026-01-01T00:00:04Z");
    assert_eq!(by_seq(14)["decision"], "deny");
    assert_eq!(by_seq(14)["reason"], "statement kind ddl is not allowed");
    assert!(by_seq(14).get("text").is_none(), "{}", by_seq(14));
    assert_eq!(by_seq(13)["error"], "23505");
    assert_eq!(by_seq(20)["kind"], "journal_pruned");
    assert_eq!(by_seq(20)["through_seq"], 2);
    assert_eq!(by_seq(20)["records"], 2);
    assert_eq!(by_seq(20)["reason"], "max_age");
}

/// The stored chain and signatures, checked with the documented formulas only.
#[test]
fn golden_journal_follows_the_documented_formulas() {
    let dir = Scratch::new("golden-formulas");
    let path = golden(&dir);
    let c = Connection::open(&path).unwrap();
    let meta = |k: &str| -> String {
        c.query_row("SELECT value FROM meta WHERE key = ?1", [k], |r| r.get(0))
            .unwrap()
    };
    assert_eq!(meta("schema_version"), "1");
    assert_eq!(meta("public_key"), public_key());
    let id: [u8; 16] = format::unhex(&meta("journal_id")).try_into().unwrap();
    let public = format::unhex(&public_key());

    // The anchor retention signed: record 3 follows `prev_hash`.
    let (first_seq, anchor_prev, anchor_ts, anchor_key, anchor_sig): (
        u64,
        Vec<u8>,
        i64,
        Vec<u8>,
        Vec<u8>,
    ) = c
        .query_row(
            "SELECT first_seq, prev_hash, ts_us, public_key, signature FROM anchors",
            [],
            |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?, r.get(4)?)),
        )
        .unwrap();
    assert_eq!(first_seq, 3);
    assert_eq!(anchor_key, public);
    let mut prev: [u8; 32] = anchor_prev.try_into().unwrap();
    assert!(format::signature_ok(
        &public,
        &format::anchor_message(&id, first_seq, &prev, anchor_ts),
        &anchor_sig
    ));

    let mut hashes = std::collections::HashMap::new();
    let mut st = c
        .prepare("SELECT seq, record, prev_hash, hash FROM records ORDER BY seq")
        .unwrap();
    let rows = st
        .query_map([], |r| {
            Ok((
                r.get::<_, u64>(0)?,
                r.get::<_, String>(1)?,
                r.get::<_, Vec<u8>>(2)?,
                r.get::<_, Vec<u8>>(3)?,
            ))
        })
        .unwrap();
    let mut n = 0;
    for row in rows {
        let (seq, json, stored_prev, stored_hash) = row.unwrap();
        assert_eq!(stored_prev, prev, "seq {seq}: prev_hash");
        let hash = format::link(&prev, json.as_bytes());
        assert_eq!(
            stored_hash, hash,
            "seq {seq}: hash by the documented formula"
        );
        let parsed: serde_json::Value = serde_json::from_str(&json).unwrap();
        assert_eq!(parsed["seq"], seq);
        hashes.insert(seq, hash);
        prev = hash;
        n += 1;
    }
    assert_eq!(n, LAST_SEQ - 2);

    // Checkpoints: signed by the pinned key over the documented message, naming real hashes.
    let mut st = c
        .prepare("SELECT seq, hash, ts_us, public_key, signature FROM checkpoints ORDER BY seq")
        .unwrap();
    let cps: Vec<Signed> = st
        .query_map([], |r| {
            Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?, r.get(4)?))
        })
        .unwrap()
        .map(Result::unwrap)
        .collect();
    let seqs: Vec<u64> = cps.iter().map(|c| c.0).collect();
    // Every 5 records (checkpoint_records = 5; the one at 5 went with retention, which
    // removes checkpoints up to the records it removes), and the clean stop.
    assert_eq!(seqs, [5, 10, 15, 20, LAST_SEQ]);
    for (seq, hash, ts, key, sig) in &cps {
        assert_eq!(key, &public);
        assert_eq!(
            hash, &hashes[seq],
            "checkpoint {seq} names the record's hash"
        );
        let hash: [u8; 32] = hash.as_slice().try_into().unwrap();
        assert!(
            format::signature_ok(
                &public,
                &format::checkpoint_message(&id, *seq, &hash, *ts),
                sig
            ),
            "checkpoint {seq}: signature over the documented message"
        );
    }
}

const SESSION: &str = "019b7600-0000-7000-8000-000000000001";
const APPROVAL_1: &str = "019b7600-0000-7000-8000-0000000000a1";
const APPROVAL_2: &str = "019b7600-0000-7000-8000-0000000000a2";

fn at(secs: i64) -> Timestamp {
    "2026-01-01T00:00:00Z".parse::<Timestamp>().unwrap() + Duration::from_secs(secs as u64)
}

fn statement(n: u64, kind: &str, text: Option<&str>, decision: Decision, rule: &str) -> Event {
    Event::Statement {
        statement: Some(n),
        text: text.map(Into::into),
        fingerprint: Some(format!("fp{n:02}")),
        kinds: vec![kind.into()],
        tables: vec!["public.orders".into()],
        functions: Vec::new(),
        flags: Vec::new(),
        decision,
        rule: Some(rule.into()),
        reason: None,
        duration_ms: None,
        rows: None,
        error: None,
    }
}

/// Writes the golden journal into tests/fixtures/journal-v1 (only with
/// PAM_WRITE_GOLDEN=1; the signing key is thrown away). Only for a new format version.
#[test]
#[ignore = "writes the committed fixture; run only to create a new format version"]
fn write_golden_journal() {
    if std::env::var("PAM_WRITE_GOLDEN").as_deref() != Ok("1") {
        return;
    }
    let scratch = Scratch::new("golden-write");
    let out = fixture_dir();
    std::fs::create_dir_all(&out).unwrap();
    let db = out.join("journal.db");
    let _ = std::fs::remove_file(&db);
    let mut opts = StoreOptions::new(&db);
    opts.signing_key = scratch.path("key.pem");
    opts.checkpoint_every = 5;
    opts.checkpoint_interval = Duration::from_secs(3600);
    opts.max_age = Some(Duration::from_secs(3650 * 86400));
    let mut store = SqliteStore::open(opts).unwrap();
    let s = Some(SessionId(SESSION.parse().unwrap()));
    let a1 = APPROVAL_1.parse().unwrap();
    let a2 = APPROVAL_2.parse().unwrap();
    let old = "2015-06-01T00:00:00Z".parse::<Timestamp>().unwrap();
    let put = |store: &mut SqliteStore, ts: Timestamp, session, event| {
        let seq = store.last_seq() + 1;
        store
            .append(&[Record {
                seq,
                ts,
                session,
                event,
            }])
            .unwrap();
    };
    // 1-2: an earlier run, old enough for retention to remove.
    put(
        &mut store,
        old,
        None,
        Event::AgentStarted {
            version: "0.0.9".into(),
            config: "/etc/pam-agent/config.toml".into(),
            governed: vec![],
            resources: vec![],
        },
    );
    put(
        &mut store,
        old,
        None,
        Event::AgentStopped {
            reason: "SIGTERM".into(),
        },
    );
    put(
        &mut store,
        at(0),
        None,
        Event::AgentStarted {
            version: "0.1.0".into(),
            config: "/etc/pam-agent/config.toml".into(),
            governed: vec!["/crew.slice".into()],
            resources: vec!["orders-db".into()],
        },
    );
    put(
        &mut store,
        at(1),
        None,
        Event::ConfigReloaded {
            config: "/etc/pam-agent/config.toml".into(),
            ok: false,
            detail: Some("resources[0].port: must be between 1 and 65535".into()),
        },
    );
    put(
        &mut store,
        at(2),
        None,
        Event::PolicyReloaded {
            config: "/etc/pam-agent/config.toml".into(),
            rules: 4,
        },
    );
    put(
        &mut store,
        at(3),
        s,
        Event::SessionOpened {
            principal: principal(1001, "alice", "python3"),
            resource: ResourceRef {
                name: "orders-db".into(),
                protocol: "postgres".into(),
            },
            destination: addr("10.0.0.5:5432"),
            client: addr("127.0.0.1:40001"),
        },
    );
    put(
        &mut store,
        at(4),
        s,
        statement(
            1,
            "select",
            Some("SELECT id, total FROM orders WHERE id = 7"),
            Decision::Allow,
            "read-orders",
        ),
    );
    put(
        &mut store,
        at(5),
        s,
        Event::StatementCompleted {
            statement: 1,
            duration_ms: 3,
            rows: Some(1),
            error: None,
        },
    );
    put(
        &mut store,
        at(6),
        s,
        Event::MaskingApplied {
            rule: Some("mask-pii".into()),
            columns: vec![MaskedColumn {
                name: "public.orders.email".into(),
                method: "email".into(),
                values: 1,
                by: Some("column".into()),
                rule: Some("mask-pii".into()),
                pattern: Some("public.*.email".into()),
                nulled: 0,
            }],
            rows: 1,
            statement: Some(1),
        },
    );
    put(
        &mut store,
        at(7),
        s,
        statement(
            2,
            "update",
            Some("UPDATE orders SET total = 0 WHERE id = 7"),
            Decision::RequireApproval,
            "approve-writes",
        ),
    );
    put(
        &mut store,
        at(8),
        s,
        Event::ApprovalRequested {
            approval: a1,
            rule: "approve-writes".into(),
            request: "UPDATE orders SET total = 0 WHERE id = 7".into(),
            approvers: vec!["dba-oncall".into()],
            expires_at: at(308),
        },
    );
    put(
        &mut store,
        at(9),
        s,
        Event::ApprovalDecided {
            approval: a1,
            outcome: ApprovalOutcome::Approved,
            by: "carol@example.com".into(),
            reason: Some("ticket OPS-12".into()),
            grant: None,
        },
    );
    put(
        &mut store,
        at(10),
        s,
        Event::StatementCompleted {
            statement: 2,
            duration_ms: 5,
            rows: None,
            error: Some("23505".into()),
        },
    );
    let mut denied = statement(3, "ddl", None, Decision::Deny, "no-ddl");
    if let Event::Statement { reason, .. } = &mut denied {
        *reason = Some("statement kind ddl is not allowed".into());
    }
    put(&mut store, at(11), s, denied);
    put(
        &mut store,
        at(12),
        s,
        Event::ApprovalRequested {
            approval: a2,
            rule: "approve-writes".into(),
            request: "fp04".into(),
            approvers: vec![],
            expires_at: at(72),
        },
    );
    put(
        &mut store,
        at(72),
        s,
        Event::ApprovalExpired { approval: a2 },
    );
    put(
        &mut store,
        at(73),
        s,
        Event::Error {
            component: "postgres".into(),
            message: "upstream sent a malformed DataRow".into(),
        },
    );
    put(
        &mut store,
        at(74),
        s,
        Event::SessionClosed {
            bytes_from_worker: 1200,
            bytes_to_worker: 34000,
            duration_ms: 71000,
            end: SessionEnd::Error,
            detail: Some("upstream sent a malformed DataRow".into()),
        },
    );
    put(
        &mut store,
        at(75),
        None,
        Event::ConnectionRefused {
            client: addr("127.0.0.1:40002"),
            reason: "no kernel record for this connection".into(),
            count: None,
            since: None,
        },
    );
    // 20: journal_pruned, written by retention itself (removes 1-2, signs the anchor).
    assert_eq!(store.enforce_retention().unwrap(), 2);
    assert_eq!(store.last_seq(), 20);
    put(
        &mut store,
        at(80),
        None,
        Event::AgentStopped {
            reason: "SIGTERM".into(),
        },
    );
    store.close().unwrap();
    let public = store.public_key();
    drop(store);
    std::fs::write(
        out.join("public_key.hex"),
        format!("{}\n", format::hex(&public)),
    )
    .unwrap();
    let q = audit(&db, &["query", "--format", "jsonl"]);
    assert!(q.status.success());
    std::fs::write(out.join("query.jsonl"), &q.stdout).unwrap();
    for suffix in ["-wal", "-shm"] {
        let _ = std::fs::remove_file(format!("{}{suffix}", db.display()));
    }
}

/// The agent opening the v1 golden journal migrates it to format 2: the records move to
/// a first segment as stored (same JSON, same hashes, the v1 checkpoints and anchor as
/// signed frames), the SQLite file becomes the index. It then verifies with the golden
/// key pinned and reads back exactly as before.
#[test]
fn golden_v1_journal_migrates_to_segments() {
    use pam_agent::journal::log::LogStore;
    let dir = Scratch::new("golden-migrate");
    let path = golden(&dir);
    let mut opts = StoreOptions::new(&path);
    opts.checkpoint_every = 5;
    let mut store = LogStore::open(opts).unwrap();
    assert_eq!(store.last_seq(), LAST_SEQ);
    store.close().unwrap();
    drop(store);

    let key = public_key();
    let o = audit(
        &path,
        &[
            "verify",
            "--trusted-key",
            &key,
            "--expect-seq",
            &LAST_SEQ.to_string(),
        ],
    );
    let out = stdout(&o);
    assert_eq!(o.status.code(), Some(0), "{out}{}", stderr(&o));
    assert!(
        out.contains("format 2: the segments' chain verified"),
        "{out}"
    );
    let q = audit(&path, &["query", "--format", "jsonl"]);
    assert_eq!(stdout(&q), fixture("query.jsonl"));

    // The segment, read with the test's own parser: the anchor, then records 3..=21 with
    // the hashes the v1 file holds, and its checkpoints after the records they sign.
    let seg = dir.path("journal.db.segments/00000000000000000003.seg");
    let (header, frames) = format::split_segment(&std::fs::read(seg).unwrap());
    assert_eq!(u64::from_be_bytes(header[24..32].try_into().unwrap()), 3);
    let c = Connection::open(fixture_dir().join("journal.db")).unwrap();
    let v1: Vec<(String, Vec<u8>, Vec<u8>)> = c
        .prepare("SELECT record, prev_hash, hash FROM records ORDER BY seq")
        .unwrap()
        .query_map([], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)))
        .unwrap()
        .map(Result::unwrap)
        .collect();
    assert_eq!(header[40..72], v1[0].1[..]);
    assert_eq!(frames[0].0, b'A');
    let records: Vec<_> = frames
        .iter()
        .filter(|(t, _)| *t == b'R')
        .map(|(_, f)| format::record_parts(f))
        .collect();
    assert_eq!(records.len(), v1.len());
    for ((prev, json, hash), (v1_json, v1_prev, v1_hash)) in records.iter().zip(&v1) {
        assert_eq!(json, v1_json.as_bytes());
        assert_eq!(&prev[..], &v1_prev[..]);
        assert_eq!(&hash[..], &v1_hash[..]);
    }
    assert_eq!(frames.iter().filter(|(t, _)| *t == b'C').count(), 5);
}
