//! Tampering with the SQLite file directly (as someone with write access would) and
//! checking that `pam-agent audit verify` finds it, names the record, and exits 1. Forged
//! hashes are computed with the documented formula (`common::format`), never with the
//! product's chain code, so a forgery cannot share a bug with what it attacks.
//!
//! The journal is format 2: the SQLite file is the index queries read, checked against
//! the segments (`journal_tamper_segments.rs` attacks those).

mod common;

use std::path::Path;

use common::*;
use pam_agent::journal::{Event, SessionId};
use rusqlite::{Connection, params};

/// 50 records (checkpoints every 10): a session of alice with statements.
fn journal(dir: &Scratch) -> std::path::PathBuf {
    let path = dir.path("journal.db");
    let (j, h) = open(options(&path));
    let s = SessionId::new();
    let events = every_kind(s);
    j.record_blocking(Some(s), events[2].1.clone()).unwrap();
    for i in 0..49 {
        let mut e = events[3].1.clone();
        if let Event::Statement { rows, .. } = &mut e {
            *rows = Some(i);
        }
        j.record_blocking(Some(s), e).unwrap();
    }
    drop(j);
    h.join().unwrap();
    let ok = audit(&path, &["verify"]);
    assert!(
        ok.status.success(),
        "fresh journal must verify: {}",
        stdout(&ok)
    );
    path
}

fn db(path: &Path) -> Connection {
    Connection::open(path).unwrap()
}

/// Runs verify and asserts it fails naming `needle`.
fn assert_detected(path: &Path, args: &[&str], needle: &str) {
    let mut a = vec!["verify"];
    a.extend_from_slice(args);
    let o = audit(path, &a);
    let out = stdout(&o);
    assert_eq!(
        o.status.code(),
        Some(1),
        "verify passed a tampered journal:\n{out}{}",
        stderr(&o)
    );
    assert!(out.contains(needle), "expected `{needle}` in:\n{out}");
}

fn get_hash(c: &Connection, seq: u64) -> [u8; 32] {
    let h: Vec<u8> = c
        .query_row("SELECT hash FROM records WHERE seq = ?1", [seq], |r| {
            r.get(0)
        })
        .unwrap();
    h.try_into().unwrap()
}

#[test]
fn edited_record() {
    let dir = Scratch::new("tamper-edit");
    let path = journal(&dir);
    db(&path)
        .execute("UPDATE records SET record = replace(record, '\"rows\":21', '\"rows\":0') WHERE seq = 23", [])
        .unwrap();
    assert_detected(&path, &[], "seq 23: record edited");
}

#[test]
fn edited_index_column() {
    let dir = Scratch::new("tamper-column");
    let path = journal(&dir);
    db(&path)
        .execute("UPDATE records SET user = 'mallory' WHERE seq = 23", [])
        .unwrap();
    assert_detected(&path, &[], "seq 23: indexed column `user`");
}

#[test]
fn deleted_record() {
    let dir = Scratch::new("tamper-delete");
    let path = journal(&dir);
    db(&path)
        .execute("DELETE FROM records WHERE seq = 17", [])
        .unwrap();
    assert_detected(&path, &[], "seq 17: record missing");
}

#[test]
fn deleted_first_records() {
    let dir = Scratch::new("tamper-head");
    let path = journal(&dir);
    db(&path)
        .execute("DELETE FROM records WHERE seq <= 5", [])
        .unwrap();
    assert_detected(
        &path,
        &[],
        "seq 6: the journal starts here but no signed anchor",
    );
}

#[test]
fn reordered_records() {
    let dir = Scratch::new("tamper-reorder");
    let path = journal(&dir);
    let c = db(&path);
    // Swap the whole rows of 12 and 13, keeping the positions.
    c.execute_batch(
        "UPDATE records SET seq = 1012 WHERE seq = 12;
         UPDATE records SET seq = 12 WHERE seq = 13;
         UPDATE records SET seq = 13 WHERE seq = 1012;",
    )
    .unwrap();
    assert_detected(&path, &[], "seq 12: holds the content of record 13");
}

#[test]
fn inserted_record_with_a_correct_link() {
    let dir = Scratch::new("tamper-insert");
    let path = journal(&dir);
    let c = db(&path);
    // Make room after 25 and insert a forged record that links correctly to 25.
    c.execute_batch("UPDATE records SET seq = seq + 1000 WHERE seq > 25; UPDATE records SET seq = seq - 999 WHERE seq > 1000;")
        .unwrap();
    let prev = get_hash(&c, 25);
    let json = r#"{"seq":26,"ts":"2025-01-01T00:00:00Z","kind":"agent_stopped","reason":"forged"}"#;
    let hash = format::link(&prev, json.as_bytes());
    c.execute(
        "INSERT INTO records (seq, ts_us, kind, record, prev_hash, hash) VALUES (26, 1735689600000000, 'agent_stopped', ?1, ?2, ?3)",
        params![json, &prev[..], &hash[..]],
    )
    .unwrap();
    assert_detected(&path, &[], "seq 27: does not follow the record before it");
}

#[test]
fn truncated_tail() {
    let dir = Scratch::new("tamper-truncate");
    let path = journal(&dir);
    db(&path)
        .execute("DELETE FROM records WHERE seq > 45", [])
        .unwrap();
    assert_detected(
        &path,
        &[],
        "journal truncated: records end at 45 but a checkpoint signed seq 50",
    );
}

#[test]
fn truncated_tail_with_checkpoints_removed() {
    let dir = Scratch::new("tamper-truncate-cp");
    let path = journal(&dir);
    let c = db(&path);
    // Cut the tail and the checkpoints that would betray it, leaving 10 unsigned records.
    c.execute("DELETE FROM records WHERE seq > 40", []).unwrap();
    c.execute("DELETE FROM checkpoints WHERE seq > 30", [])
        .unwrap();
    assert_detected(
        &path,
        &[],
        "no checkpoint, though the journal signs one every 10 records",
    );
    // A shorter cut looks like an index that has not caught up yet (the agent killed
    // before it indexed its last records): it hides nothing, the log still holds them
    // and queries read them from there.
    let dir2 = Scratch::new("tamper-truncate-witness");
    let path2 = journal(&dir2);
    let c2 = db(&path2);
    c2.execute("DELETE FROM records WHERE seq > 45", [])
        .unwrap();
    c2.execute("DELETE FROM checkpoints WHERE seq > 40", [])
        .unwrap();
    let o = audit(&path2, &["verify", "--expect-seq", "50"]);
    assert!(o.status.success(), "{}", stdout(&o));
    let q = audit(&path2, &["query", "--format", "jsonl"]);
    assert_eq!(stdout(&q).lines().count(), 50, "{}", stdout(&q));
}

#[test]
fn rewritten_chain_fails_at_the_signed_checkpoint() {
    let dir = Scratch::new("tamper-rechain");
    let path = journal(&dir);
    let c = db(&path);
    c.execute(
        "UPDATE records SET record = replace(record, '\"rows\":21', '\"rows\":0') WHERE seq = 23",
        [],
    )
    .unwrap();
    // Recompute every hash from 23 on, as an attacker without the signing key can.
    rechain_from(&c, 23);
    assert_detected(
        &path,
        &[],
        "seq 30: chain differs from the signed checkpoint: a record in 21..=30 was altered",
    );
}

#[test]
fn forged_checkpoint_signature() {
    let dir = Scratch::new("tamper-signature");
    let path = journal(&dir);
    db(&path)
        .execute(
            "UPDATE checkpoints SET signature = zeroblob(64) WHERE seq = 20",
            [],
        )
        .unwrap();
    assert_detected(&path, &[], "seq 20: checkpoint signature invalid");
}

#[test]
fn untrusted_key() {
    let dir = Scratch::new("tamper-key");
    let path = journal(&dir);
    assert_detected(
        &path,
        &["--trusted-key", &"ab".repeat(32)],
        "signature invalid or by an unexpected key",
    );
    // The right key passes.
    let key: String = db(&path)
        .query_row("SELECT value FROM meta WHERE key = 'public_key'", [], |r| {
            r.get(0)
        })
        .unwrap();
    let o = audit(&path, &["verify", "--trusted-key", &key]);
    assert!(o.status.success(), "{}", stdout(&o));
}

#[test]
fn truncated_file() {
    let dir = Scratch::new("tamper-file");
    let path = journal(&dir);
    let len = std::fs::metadata(&path).unwrap().len();
    let f = std::fs::OpenOptions::new().write(true).open(&path).unwrap();
    f.set_len(len / 2).unwrap();
    drop(f);
    let o = audit(&path, &["verify"]);
    assert_eq!(o.status.code(), Some(1), "{}{}", stdout(&o), stderr(&o));
    let all = format!("{}{}", stdout(&o), stderr(&o));
    assert!(
        all.contains("cannot be read") || all.contains("malformed"),
        "{all}"
    );
}

/// An attacker who rewrites a record, recomputes every hash and re-signs every checkpoint
/// with a key of their own (all with the documented formulas, not the product's code):
/// only the pinned key tells. Without a pin `verify` names the foreign key it saw.
#[test]
fn rewritten_and_resigned_with_a_foreign_key() {
    let dir = Scratch::new("tamper-resign");
    let path = journal(&dir);
    let c = db(&path);
    let genuine: String = c
        .query_row("SELECT value FROM meta WHERE key = 'public_key'", [], |r| {
            r.get(0)
        })
        .unwrap();
    let id: [u8; 16] = format::unhex(
        &c.query_row("SELECT value FROM meta WHERE key = 'journal_id'", [], |r| {
            r.get::<_, String>(0)
        })
        .unwrap(),
    )
    .try_into()
    .unwrap();
    c.execute(
        "UPDATE records SET record = replace(record, '\"rows\":21', '\"rows\":0') WHERE seq = 23",
        [],
    )
    .unwrap();
    rechain_from(&c, 23);
    let seed = [0x5a; 32];
    let foreign = ed25519_dalek::SigningKey::from_bytes(&seed)
        .verifying_key()
        .to_bytes();
    let cps: Vec<(u64, i64)> = c
        .prepare("SELECT seq, ts_us FROM checkpoints")
        .unwrap()
        .query_map([], |r| Ok((r.get(0)?, r.get(1)?)))
        .unwrap()
        .map(Result::unwrap)
        .collect();
    for (seq, ts) in cps {
        let hash = get_hash(&c, seq);
        let sig = format::sign(&seed, &format::checkpoint_message(&id, seq, &hash, ts));
        c.execute(
            "UPDATE checkpoints SET hash = ?1, public_key = ?2, signature = ?3 WHERE seq = ?4",
            params![&hash[..], &foreign[..], &sig[..], seq],
        )
        .unwrap();
    }
    c.execute(
        "UPDATE meta SET value = ?1 WHERE key = 'public_key'",
        [format::hex(&foreign)],
    )
    .unwrap();
    assert_detected(
        &path,
        &["--trusted-key", &genuine],
        "seq 10: checkpoint signature invalid or by an unexpected key",
    );
    let o = audit(&path, &["verify"]);
    assert!(
        stdout(&o).contains(&format!("signed by ed25519 key {}", format::hex(&foreign))),
        "{}",
        stdout(&o)
    );
}

/// Recomputes the hash chain from `from` to the end (seq 50), as an attacker without the
/// signing key can after editing a record.
fn rechain_from(c: &Connection, from: u64) {
    let mut prev = get_hash(c, from - 1);
    for seq in from..=50u64 {
        let json: String = c
            .query_row("SELECT record FROM records WHERE seq = ?1", [seq], |r| {
                r.get(0)
            })
            .unwrap();
        let hash = format::link(&prev, json.as_bytes());
        c.execute(
            "UPDATE records SET prev_hash = ?1, hash = ?2 WHERE seq = ?3",
            params![&prev[..], &hash[..], seq],
        )
        .unwrap();
        prev = hash;
    }
}
