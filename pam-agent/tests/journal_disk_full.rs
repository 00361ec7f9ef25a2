//! A journal on a full file system: writes fail with a clear error (so callers refuse the
//! work), nothing acknowledged is lost, and writing resumes once there is room.
//! Needs root (it mounts a 1 MiB tmpfs); fails rather than skips on CI.

mod common;

use std::{path::PathBuf, process::Command};

use common::*;
use pam_agent::journal::{Event, JournalError, SessionId};

/// The newest seq, as an auditor reads it (index, then the log's tail).
fn last_seq(path: &std::path::Path) -> u64 {
    let q = audit(path, &["query", "--format", "jsonl", "--limit", "1"]);
    assert!(q.status.success(), "{}", stderr(&q));
    let v: serde_json::Value = serde_json::from_str(stdout(&q).trim()).unwrap();
    v["seq"].as_u64().unwrap()
}

/// A tmpfs mounted for the test, unmounted on drop.
struct Tmpfs(PathBuf);

impl Tmpfs {
    fn mount(dir: PathBuf, size: &str) -> Tmpfs {
        std::fs::create_dir_all(&dir).unwrap();
        let ok = Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size}"), "tmpfs"])
            .arg(&dir)
            .status_within()
            .unwrap();
        assert!(ok.success(), "mount tmpfs failed");
        Tmpfs(dir)
    }

    fn resize(&self, size: &str) {
        let ok = Command::new("mount")
            .args(["-o", &format!("remount,size={size}")])
            .arg(&self.0)
            .status_within()
            .unwrap();
        assert!(ok.success());
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = Command::new("umount")
            .arg("-l")
            .arg(&self.0)
            .status_within();
    }
}

#[test]
fn full_disk_refuses_writes_and_keeps_acknowledged_records() {
    if !require_root("full_disk_refuses_writes_and_keeps_acknowledged_records") {
        return;
    }
    let dir = Scratch::new("diskfull");
    let fs = Tmpfs::mount(dir.path("fs"), "1m");
    let path = fs.0.join("journal.db");
    let session = SessionId::new();
    let events = every_kind(session);
    let mut acked = Vec::new();
    let mut failure = None;
    {
        let (j, h) = open(options(&path));
        j.record_blocking(Some(session), events[2].1.clone())
            .unwrap();
        for i in 0..100_000u64 {
            let mut e = events[3].1.clone();
            if let Event::Statement { text, .. } = &mut e {
                *text = Some(format!("SELECT '{}' -- {i}", "x".repeat(200)));
            }
            match j.record_blocking(Some(session), e) {
                Ok(seq) => acked.push(seq),
                Err(err) => {
                    failure = Some(err);
                    break;
                }
            }
        }
        // Later writes fail the same way, or fit in what little room a failed group left;
        // whatever is acknowledged must be kept.
        let mut failed_again = 0;
        for _ in 0..20 {
            match j.record_blocking(
                None,
                Event::AgentStopped {
                    reason: "full".into(),
                },
            ) {
                Ok(seq) => acked.push(seq),
                Err(_) => failed_again += 1,
            }
        }
        assert!(failed_again > 0, "the file system stopped being full");
        drop(j);
        h.join().unwrap();
    }
    let failure = failure.expect("a 1 MiB file system must fill up");
    assert!(matches!(failure, JournalError::Write(_)), "{failure:?}");
    assert!(
        failure.to_string().contains("No space left on device"),
        "unclear error: {failure}"
    );
    assert!(acked.len() > 10, "only {} records fit", acked.len());

    // Everything acknowledged is there, and the journal verifies.
    let v = audit(&path, &["verify"]);
    assert!(v.status.success(), "{}{}", stdout(&v), stderr(&v));
    let max = last_seq(&path);
    assert_eq!(
        max,
        *acked.last().unwrap(),
        "no unacknowledged record was kept either"
    );

    // With room again, writing continues right after the last acknowledged record: first
    // the close of the session the writer left open (`abandoned`), then ours.
    fs.resize("8m");
    let (j, h) = open(options(&path));
    let seq = j
        .record_blocking(
            None,
            Event::AgentStopped {
                reason: "room again".into(),
            },
        )
        .unwrap();
    assert_eq!(seq, max + 2);
    drop(j);
    h.join().unwrap();
    let v = audit(&path, &["verify"]);
    assert!(v.status.success(), "{}{}", stdout(&v), stderr(&v));
    // The index caught up with the log once there was room.
    let v = stdout(&v);
    assert!(
        v.contains(&format!("{} index rows checked", max + 2)),
        "{v}"
    );
    let closed = audit(
        &path,
        &["query", "--kind", "session_closed", "--format", "jsonl"],
    );
    assert!(
        stdout(&closed).contains("\"end\":\"abandoned\""),
        "{}",
        stdout(&closed)
    );
}
