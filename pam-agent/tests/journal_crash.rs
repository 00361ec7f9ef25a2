//! A writer killed with SIGKILL at arbitrary moments under load: the journal reopens at
//! its last whole record, verifies, and holds every record the writer acknowledged.
//! The writer is the real binary (`pam-agent audit bench --print-acks`), which prints a
//! seq only after the journal acknowledged it.

mod common;

use std::{
    io::{BufRead, BufReader},
    process::Stdio,
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use common::*;
use rusqlite::Connection;

#[test]
fn kill_9_under_load_loses_nothing_acknowledged() {
    let dir = Scratch::new("crash");
    let path = dir.path("journal.db");
    let mut all_acked: Vec<u64> = Vec::new();
    // Kill at different moments: right after start, and deep into a run.
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
        let mut child = cmd.spawn().unwrap();
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

        let v = audit(&path, &["verify"]);
        assert!(
            v.status.success(),
            "round {round}: verify after kill -9 failed:\n{}{}",
            stdout(&v),
            stderr(&v)
        );
        let c = Connection::open(&path).unwrap();
        let (n, max): (u64, u64) = c
            .query_row("SELECT count(*), max(seq) FROM records", [], |r| {
                Ok((r.get(0)?, r.get(1)?))
            })
            .unwrap();
        assert_eq!(n, max, "records are numbered without gaps");
        let highest = *acked.iter().max().unwrap();
        assert!(
            highest <= max,
            "round {round}: acknowledged seq {highest} but the journal ends at {max}"
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
    let c = Connection::open(&path).unwrap();
    let mut stmt = c.prepare("SELECT 1 FROM records WHERE seq = ?1").unwrap();
    for seq in &sorted {
        assert!(
            stmt.exists([seq]).unwrap(),
            "acknowledged record {seq} is missing"
        );
    }
}
