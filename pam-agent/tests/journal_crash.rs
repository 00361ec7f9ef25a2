//! A writer killed with SIGKILL at arbitrary moments under load: the journal reopens at
//! its last whole record, verifies, and holds every record the writer acknowledged; the
//! sessions the kill left open are closed (`abandoned`) at the next open; a torn last
//! record is cut, kept aside and journaled.
//! The writer is the real binary (`pam-agent audit bench --print-acks`), which prints a
//! seq only after the journal acknowledged it. Records are read as an auditor does
//! (`audit query`: the index, then the log's records it does not hold yet).

mod common;

use std::{
    io::{BufRead, BufReader},
    process::Stdio,
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use common::*;
use pam_agent::journal::{Event, SessionId};

/// Every record, through `audit query`.
fn all_records(path: &std::path::Path) -> Vec<serde_json::Value> {
    let q = audit(path, &["query", "--format", "jsonl"]);
    assert!(q.status.success(), "{}", stderr(&q));
    stdout(&q)
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect()
}

#[test]
fn kill_9_under_load_loses_nothing_acknowledged() {
    let dir = Scratch::new("crash");
    let path = dir.path("journal.db");
    let mut all_acked: Vec<u64> = Vec::new();
    // Kill at different moments: right after start, and deep into a run.
    let mut open_at_kill: Vec<serde_json::Value> = Vec::new();
    for (round, after) in [150u64, 400, 900, 60].into_iter().enumerate() {
        let mut cmd = bin();
        cmd.args([
            "audit",
            "bench",
            "--records",
            "0",
            "--concurrency",
            "48",
            "--print-acks",
            "--journal",
        ])
        .arg(&path)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
        if round > 0 {
            cmd.arg("--append");
        }
        let mut child = cmd.spawn_watched().unwrap();
        let acked = Arc::new(Mutex::new(Vec::new()));
        let reader = {
            let acked = acked.clone();
            let out = child.stdout.take().unwrap();
            std::thread::spawn(move || {
                for line in BufReader::new(out).lines() {
                    let Ok(line) = line else { break };
                    acked
                        .lock()
                        .unwrap()
                        .push(line.trim().parse::<u64>().unwrap());
                }
            })
        };
        // Wait for the writer to be busy, then let it run a little more.
        let start = Instant::now();
        while acked.lock().unwrap().is_empty() {
            assert!(
                start.elapsed() < Duration::from_secs(30),
                "writer never acknowledged"
            );
            if let Some(status) = child.try_wait().unwrap() {
                let mut err = String::new();
                std::io::Read::read_to_string(&mut child.stderr.take().unwrap(), &mut err).unwrap();
                panic!("writer exited early ({status}): {err}");
            }
            std::thread::sleep(Duration::from_millis(5));
        }
        std::thread::sleep(Duration::from_millis(after));
        child.kill().unwrap(); // SIGKILL
        child.wait().unwrap();
        reader.join().unwrap();
        let acked = acked.lock().unwrap().clone();
        assert!(!acked.is_empty());

        // A kill can cut a group's write part-way (the kernel stops a write between
        // pages for a fatal signal): then the only problem is a torn last frame, which
        // holds nothing acknowledged and which the next open cuts (checked below).
        let v = audit(&path, &["verify"]);
        let report = format!("{}{}", stdout(&v), stderr(&v));
        let problems: Vec<&str> = report
            .lines()
            .filter(|l| l.starts_with("TAMPERED"))
            .collect();
        let torn_tail = problems.len() == 1
            && problems[0]
                .contains("ends inside a frame (a torn write the agent has not recovered yet");
        assert!(
            v.status.success() || torn_tail,
            "round {round}: verify after kill -9 failed:\n{report}"
        );
        let records = all_records(&path);
        let seqs: Vec<u64> = records.iter().map(|r| r["seq"].as_u64().unwrap()).collect();
        let max = *seqs.last().unwrap();
        assert_eq!(
            seqs,
            (1..=max).collect::<Vec<_>>(),
            "records are numbered without gaps"
        );
        let highest = *acked.iter().max().unwrap();
        assert!(
            highest <= max,
            "round {round}: acknowledged seq {highest} but the journal ends at {max}"
        );
        // The previous kill's open sessions were closed at this round's start.
        for s in &open_at_kill {
            let closed: Vec<_> = records
                .iter()
                .filter(|r| r["kind"] == "session_closed" && r["session"] == *s)
                .collect();
            assert_eq!(closed.len(), 1, "round {round}: session {s}");
            assert_eq!(closed[0]["end"], "abandoned");
        }
        open_at_kill = records
            .iter()
            .filter(|r| r["kind"] == "session_opened")
            .map(|r| r["session"].clone())
            .filter(|s| {
                !records
                    .iter()
                    .any(|r| r["kind"] == "session_closed" && r["session"] == *s)
            })
            .collect();
        assert!(
            !open_at_kill.is_empty(),
            "round {round}: the kill left sessions open"
        );
        all_acked.extend(acked);
    }
    // Every acknowledged seq is unique and present.
    let mut sorted = all_acked.clone();
    sorted.sort_unstable();
    sorted.dedup();
    assert_eq!(
        sorted.len(),
        all_acked.len(),
        "a seq was acknowledged twice"
    );
    let present: std::collections::HashSet<u64> = all_records(&path)
        .iter()
        .map(|r| r["seq"].as_u64().unwrap())
        .collect();
    for seq in &sorted {
        assert!(
            present.contains(seq),
            "acknowledged record {seq} is missing"
        );
    }
    // Reopened after the last kill (a torn tail cut), the journal verifies whole.
    {
        let (j, h) = open(options(&path));
        drop(j);
        h.join().unwrap();
    }
    let v = audit(&path, &["verify"]);
    assert!(
        v.status.success(),
        "verify after reopening failed:\n{}{}",
        stdout(&v),
        stderr(&v)
    );
}

/// Half a record at the end of the last segment (a write cut by a crash): the next open
/// cuts it, keeps the bytes aside, journals what it did, and the journal verifies.
#[test]
fn a_torn_last_record_is_cut_kept_and_journaled() {
    let dir = Scratch::new("torn");
    let path = dir.path("journal.db");
    let s = SessionId::new();
    // Records before the cut: every kind once.
    let n = every_kind(s).len() as u64;
    {
        let (j, h) = open(options(&path));
        for (session, event) in every_kind(s) {
            j.record_blocking(session, event).unwrap();
        }
        drop(j);
        h.join().unwrap();
    }
    let seg = dir.path("journal.db.segments/00000000000000000001.seg");
    let whole = std::fs::read(&seg).unwrap();
    // A record frame for the next seq whose write stopped halfway.
    let json = format!(
        r#"{{"seq":{},"ts":"2026-01-01T00:00:00Z","kind":"agent_stopped","reason":"cut"}}"#,
        n + 1
    );
    let frame = format::record_frame(&[0; 32], json.as_bytes(), &[0; 32]);
    let mut torn = whole.clone();
    torn.extend_from_slice(&frame[..frame.len() / 2]);
    std::fs::write(&seg, &torn).unwrap();
    let v = audit(&path, &["verify"]);
    assert_eq!(
        v.status.code(),
        Some(1),
        "an unrecovered torn tail shows: {}",
        stdout(&v)
    );

    let (j, h) = open(options(&path));
    let seq = j
        .record_blocking(
            None,
            Event::AgentStopped {
                reason: "after".into(),
            },
        )
        .unwrap();
    drop(j);
    h.join().unwrap();
    let records = all_records(&path);
    let note = records
        .iter()
        .find(|r| r["kind"] == "error" && r["component"] == "journal")
        .expect("the cut is journaled");
    assert_eq!(note["seq"], n + 1, "{note}");
    assert!(
        note["message"].as_str().unwrap().contains("torn tail"),
        "{note}"
    );
    assert_eq!(seq, n + 2);
    let kept: Vec<_> = std::fs::read_dir(dir.path("journal.db.segments"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.to_string_lossy().contains(".torn-"))
        .collect();
    assert_eq!(kept.len(), 1);
    assert_eq!(std::fs::read(&kept[0]).unwrap(), frame[..frame.len() / 2]);
    let v = audit(&path, &["verify"]);
    assert!(v.status.success(), "{}", stdout(&v));
    assert!(
        stdout(&v).contains("torn tail cut from the log"),
        "{}",
        stdout(&v)
    );
}

/// A crash between creating the next segment and writing its header leaves an empty
/// file: the next open sets it aside (it holds no record) and goes on.
#[test]
fn a_segment_cut_at_its_creation_is_set_aside() {
    let dir = Scratch::new("torn-create");
    let path = dir.path("journal.db");
    let s = SessionId::new();
    let n = every_kind(s).len() as u64;
    {
        let (j, h) = open(options(&path));
        for (session, event) in every_kind(s) {
            j.record_blocking(session, event).unwrap();
        }
        drop(j);
        h.join().unwrap();
    }
    let next = dir.path(&format!("journal.db.segments/{:020}.seg", n + 1));
    std::fs::write(&next, b"PAMJ").unwrap();
    let (j, h) = open(options(&path));
    let seq = j
        .record_blocking(
            None,
            Event::AgentStopped {
                reason: "after".into(),
            },
        )
        .unwrap();
    drop(j);
    h.join().unwrap();
    assert_eq!(seq, n + 1);
    let v = audit(&path, &["verify"]);
    assert!(v.status.success(), "{}", stdout(&v));
    assert_eq!(all_records(&path).len() as u64, n + 1);
}

/// One writer per journal: a second store on the same journal is refused while the first
/// is open (two writers would interleave their frames).
#[test]
fn a_second_writer_is_refused() {
    let dir = Scratch::new("two-writers");
    let path = dir.path("journal.db");
    let (j, h) = open(options(&path));
    let e = pam_agent::journal::log::LogStore::open(options(&path))
        .err()
        .expect("a second writer must be refused");
    assert!(e.to_string().contains("in use by another process"), "{e}");
    drop(j);
    h.join().unwrap();
    assert!(pam_agent::journal::log::LogStore::open(options(&path)).is_ok());
}
