//! Retention by age and by size removes the oldest records without breaking the
//! verification of what remains: the chain restarts from a signed anchor and the removal
//! itself is journaled. Also: file permissions for the agent and the read group.

mod common;

use std::{
    os::unix::fs::{MetadataExt, PermissionsExt},
    time::Duration,
};

use common::*;
use pam_agent::journal::{
    Event, JournalStore, Record, SessionId,
    log::LogStore,
    sqlite::{SqliteStore, StoreOptions},
};
use rusqlite::Connection;

fn statement(session: SessionId, n: u64) -> Event {
    let mut e = every_kind(session)[3].1.clone();
    if let Event::Statement { rows, .. } = &mut e {
        *rows = Some(n);
    }
    e
}

fn append(store: &mut impl JournalStore, session: SessionId, count: u64) {
    append_at(store, session, count, jiff::Timestamp::now());
}

/// Appends records stamped `ts`: records of an hour ago are old without waiting an hour.
fn append_at(store: &mut impl JournalStore, session: SessionId, count: u64, ts: jiff::Timestamp) {
    let mut batch = Vec::new();
    for _ in 0..count {
        let seq = store.last_seq() + 1 + batch.len() as u64;
        let mut r = Record::new(seq, Some(session), statement(session, seq));
        r.ts = ts;
        batch.push(r);
        if batch.len() == 500 {
            store.append(&batch).unwrap();
            batch.clear();
        }
    }
    store.append(&batch).unwrap();
}

fn an_hour_ago() -> jiff::Timestamp {
    jiff::Timestamp::now() - Duration::from_secs(3600)
}

fn first_last(path: &std::path::Path) -> (u64, u64) {
    Connection::open(path)
        .unwrap()
        .query_row("SELECT min(seq), max(seq) FROM records", [], |r| {
            Ok((r.get(0)?, r.get(1)?))
        })
        .unwrap()
}

fn assert_verifies(path: &std::path::Path) -> String {
    let v = audit(path, &["verify"]);
    assert!(v.status.success(), "{}{}", stdout(&v), stderr(&v));
    stdout(&v)
}

#[test]
fn age_retention_keeps_the_rest_verifiable() {
    let dir = Scratch::new("retain-age");
    let path = dir.path("journal.db");
    let mut opts: StoreOptions = options(&path);
    let session = SessionId::new();
    {
        let mut store = SqliteStore::open(opts.clone()).unwrap();
        append_at(&mut store, session, 35, an_hour_ago());
        store.close().unwrap();
    }
    opts.max_age = Some(Duration::from_secs(60));
    let mut store = SqliteStore::open(opts.clone()).unwrap();
    append(&mut store, session, 5); // 36..=40, young
    assert_eq!(store.enforce_retention().unwrap(), 35);
    store.close().unwrap();
    drop(store);
    assert_eq!(first_last(&path), (36, 41));
    let out = assert_verifies(&path);
    assert!(out.contains("seq 36..=41"), "{out}");
    // The removal is itself a chained, signed record.
    let pruned = audit(
        &path,
        &["query", "--kind", "journal_pruned", "--format", "jsonl"],
    );
    let r: Record = serde_json::from_str(stdout(&pruned).trim()).unwrap();
    assert_eq!(
        r.event,
        Event::JournalPruned {
            through_seq: 35,
            records: 35,
            reason: "max_age".into()
        }
    );
    // Deleting the anchor makes the cut look like what it then is: a deletion.
    Connection::open(&path)
        .unwrap()
        .execute("DELETE FROM anchors", [])
        .unwrap();
    let v = audit(&path, &["verify"]);
    assert_eq!(v.status.code(), Some(1));
    assert!(stdout(&v).contains("no signed anchor"), "{}", stdout(&v));
}

/// Format 2 (the agent's store): the writer removes whole segments whose records are all
/// older than `max_age` (never the one being written), signs an anchor for the first
/// record kept, journals the removal, and numbering continues.
#[test]
fn writer_applies_retention_on_its_own_and_numbering_continues() {
    let dir = Scratch::new("retain-writer");
    let path = dir.path("journal.db");
    let mut opts = options(&path);
    opts.segment_bytes = 4096;
    let session = SessionId::new();
    {
        let mut store = LogStore::open(opts.clone()).unwrap();
        // One group each: a segment is closed between groups.
        for _ in 0..60 {
            append_at(&mut store, session, 1, an_hour_ago());
        }
        store.close().unwrap();
    }
    let segments = || {
        std::fs::read_dir(dir.path("journal.db.segments"))
            .unwrap()
            .filter(|e| {
                e.as_ref()
                    .unwrap()
                    .path()
                    .extension()
                    .is_some_and(|x| x == "seg")
            })
            .count()
    };
    let before = segments();
    assert!(before >= 4, "{before} segments");
    opts.max_age = Some(Duration::from_secs(60));
    let (j, h) = open(opts);
    // The writer's first upkeep tick (after about a second) removes the old segments but
    // the last and journals it: wait for that record.
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    let pruned = loop {
        let q = audit(
            &path,
            &["query", "--kind", "journal_pruned", "--format", "jsonl"],
        );
        if let Ok(r) = serde_json::from_str::<Record>(stdout(&q).trim()) {
            break r;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "the writer never applied retention"
        );
        std::thread::sleep(Duration::from_millis(50));
    };
    let Event::JournalPruned {
        through_seq,
        records,
        ref reason,
    } = pruned.event
    else {
        panic!("{pruned:?}")
    };
    assert_eq!((records, reason.as_str()), (through_seq, "max_age"));
    assert_eq!(pruned.seq, 61);
    // Only the segment being written stayed (and the next, which the pruned record
    // started when that one was full).
    assert!(segments() <= 2, "{} of {before} segments left", segments());
    let seq = j
        .record_blocking(
            None,
            Event::AgentStopped {
                reason: "after retention".into(),
            },
        )
        .unwrap();
    assert_eq!(seq, 62, "seq 61 is the journal_pruned record");
    drop(j);
    h.join().unwrap();
    assert_eq!(first_last(&path), (through_seq + 1, 62));
    let out = assert_verifies(&path);
    assert!(
        out.contains(&format!("seq {}..=62", through_seq + 1)),
        "{out}"
    );
}

#[test]
fn size_retention_keeps_the_journal_under_its_bound() {
    let dir = Scratch::new("retain-size");
    let path = dir.path("journal.db");
    let mut opts = options(&path);
    opts.checkpoint_every = 100;
    let session = SessionId::new();
    let max = 512 * 1024;
    opts.max_bytes = Some(max);
    let mut store = SqliteStore::open(opts).unwrap();
    append(&mut store, session, 6000);
    let removed = store.enforce_retention().unwrap();
    assert!(removed > 1000, "removed {removed}");
    store.close().unwrap();
    drop(store);
    let c = Connection::open(&path).unwrap();
    let used: u64 = c
        .query_row(
            "SELECT (page_count - freelist_count) * page_size FROM pragma_page_count, pragma_freelist_count, pragma_page_size",
            [],
            |r| r.get(0),
        )
        .unwrap();
    assert!(used <= max, "{used} bytes in use, bound {max}");
    assert!(
        std::fs::metadata(&path).unwrap().len() <= max + 64 * 1024,
        "file did not shrink"
    );
    let (first, last) = first_last(&path);
    assert_eq!(first, removed + 1);
    assert_eq!(last, 6001);
    assert_verifies(&path);
}

#[test]
fn journal_is_0640_for_the_read_group_and_the_key_0600() {
    if !require_root("journal_is_0640_for_the_read_group_and_the_key_0600") {
        return;
    }
    let dir = Scratch::new("perms");
    std::fs::set_permissions(&dir.0, std::fs::Permissions::from_mode(0o755)).unwrap();
    let path = dir.path("journal.db");
    let mut opts = options(&path);
    opts.read_group = Some(65534); // nogroup
    let (j, h) = open(opts.clone());
    for (s, e) in every_kind(SessionId::new()) {
        j.record_blocking(s, e).unwrap();
    }
    // While the agent runs (WAL and shared memory present), and after it stopped.
    let mut running = Some((j, h));
    for phase in ["running", "stopped"] {
        if phase == "stopped"
            && let Some((j, h)) = running.take()
        {
            drop(j);
            h.join().unwrap();
        }
        for file in ["journal.db", "journal.db-wal", "journal.db-shm"] {
            // SQLite removes -wal and -shm when the last connection closes.
            let Ok(m) = std::fs::metadata(dir.path(file)) else {
                assert_eq!(phase, "stopped", "{file} missing while running");
                continue;
            };
            assert_eq!(m.permissions().mode() & 0o777, 0o640, "{file}");
            assert_eq!(m.gid(), 65534, "{file}");
            assert_eq!(m.uid(), 0, "{file}");
        }
        let key = std::fs::metadata(&opts.signing_key).unwrap();
        assert_eq!(key.permissions().mode() & 0o777, 0o600);
        // A member of the read group can verify and query; anyone else cannot read.
        let as_user = |uid: u32, gid: u32| {
            use std::os::unix::process::CommandExt;
            bin()
                .args(["audit", "verify", "--journal"])
                .arg(&path)
                .uid(uid)
                .gid(gid)
                .output_within()
                .unwrap()
        };
        let reader = as_user(65534, 65534);
        assert!(
            reader.status.success(),
            "{phase}: {}{}",
            stdout(&reader),
            stderr(&reader)
        );
        let other = as_user(65533, 65533);
        assert!(!other.status.success());
    }
}
