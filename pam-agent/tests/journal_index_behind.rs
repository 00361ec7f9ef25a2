//! The index reaches the log's tip however it fell behind. Here another process holds the
//! index database's write lock (a backup tool, `sqlite3` left open) while a burst of
//! records arrives, more than the index thread queues in memory; the lock goes and
//! nothing more is written. Before the fix of session 9, a catch-up that had begun
//! while the lock was held read the log as it was then, the groups dropped from the full
//! queue after it were found only when a later group arrived, and the burst's tail stayed
//! out of the index for good (the `journal_index_lag` end-to-end test stuck at 59,157 of
//! 60,100 statements). The records' session has no opening record (as after retention),
//! which before the same fix made the index look it up again for every record.

mod common;

use std::time::{Duration, Instant};

use common::*;
use pam_agent::journal::{Event, SessionId};

/// The index's own newest seq, read as `audit` would read the index (no log fallback).
fn indexed_tip(path: &std::path::Path) -> u64 {
    let db =
        rusqlite::Connection::open_with_flags(path, rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY)
            .unwrap();
    db.query_row("SELECT coalesce(max(seq), 0) FROM records", [], |r| {
        r.get::<_, i64>(0)
    })
    .unwrap() as u64
}

#[test]
fn the_index_reaches_the_logs_tip_after_a_lock_and_a_burst_it_could_not_queue() {
    let dir = Scratch::new("index-behind");
    let path = dir.path("journal.db");
    // Durable to the operating system only: the burst is about the index, not the disk.
    let mut opts = options(&path);
    opts.fsync = false;
    let (j, h) = open(opts);
    let session = SessionId::new();
    let statement = every_kind(session)
        .into_iter()
        .find_map(|(_, e)| matches!(e, Event::Statement { .. }).then_some(e))
        .unwrap();
    let with_text = |i: usize| {
        let mut e = statement.clone();
        if let Event::Statement { text, .. } = &mut e {
            // Records of 2 KB: the queue's 16 MiB bound is reached after about 3,500.
            *text = Some(format!("SELECT '{}' -- {i}", "x".repeat(2000)));
        }
        e
    };
    let first = j.record_blocking(Some(session), with_text(0)).unwrap();
    let deadline = Instant::now() + Duration::from_secs(30);
    while indexed_tip(&path) < first {
        assert!(
            Instant::now() < deadline,
            "the index never took the first record"
        );
        std::thread::sleep(Duration::from_millis(20));
    }

    // The lock, and a record the index cannot commit: it falls behind (its commit waits
    // 5 s for the lock) and retries a catch-up a second later, which waits again.
    let lock = rusqlite::Connection::open(&path).unwrap();
    lock.execute_batch("BEGIN EXCLUSIVE").unwrap();
    j.record_blocking(Some(session), with_text(1)).unwrap();
    // Timing only arranges the case (the burst inside a waiting catch-up); what is
    // asserted below holds whatever the timing.
    std::thread::sleep(Duration::from_millis(6_500));
    let mut last = 0;
    for i in 2..12_000 {
        last = j.record_blocking(Some(session), with_text(i)).unwrap();
    }
    lock.execute_batch("ROLLBACK").unwrap();
    drop(lock);

    // Nothing more is written; the index must still get every record.
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        let tip = indexed_tip(&path);
        if tip == last {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the index stopped at seq {tip}; the log holds {last}"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    drop(j);
    h.join().unwrap();
    let v = audit(&path, &["verify"]);
    assert!(v.status.success(), "{}{}", stdout(&v), stderr(&v));
    assert!(
        stdout(&v).contains(&format!("{last} index rows checked")),
        "{}",
        stdout(&v)
    );
}
