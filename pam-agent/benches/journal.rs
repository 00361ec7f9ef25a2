//! Journal throughput (format 2): the log's append alone (groups as the writer makes
//! them), with an fdatasync per group, through the `Journal` handle with many sessions
//! waiting for their records, and verification of the segments and of the whole journal.
//! Figures and the machine they ran on: docs/benchmarks.md ("Audit journal").

use std::{path::PathBuf, time::Instant};

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use pam_agent::{
    audit::bench::{opened, statement},
    journal::{
        Journal, JournalStore, Record, SessionId, WriterOptions,
        log::LogStore,
        reader::Reader,
        segment,
        sqlite::StoreOptions,
        verify::{Report, VerifyOptions, verify},
        verify_log,
    },
};

/// Concurrent writers: each waits for its ack, as a session does before forwarding.
const WRITERS: u64 = 2048;
const RECORDS_PER_ITER: u64 = 50_000;
/// Records per group when the store is driven directly (what 2048 waiting sessions give).
const GROUP: usize = 2048;

fn scratch(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("pam-bench-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir.join("journal.db")
}

fn store(path: &std::path::Path, fsync: bool, index: bool) -> LogStore {
    let mut opts = StoreOptions::new(path);
    opts.fsync = fsync;
    opts.build_index = index;
    LogStore::open(opts).unwrap()
}

/// Appends `groups` groups of `GROUP` statement records straight to the store.
fn append(store: &mut LogStore, session: SessionId, groups: usize) {
    for _ in 0..groups {
        let first = store.last_seq() + 1;
        let records: Vec<Record> = (0..GROUP as u64)
            .map(|i| Record::new(first + i, Some(session), statement(first + i)))
            .collect();
        store.append(&records).unwrap();
    }
}

fn log_append(c: &mut Criterion) {
    let mut g = c.benchmark_group("journal");
    g.throughput(Throughput::Elements(GROUP as u64 * 16));
    g.sample_size(10);
    // Bounded work: the journal grows by every record measured (disk space is shared).
    g.measurement_time(std::time::Duration::from_secs(2));
    g.warm_up_time(std::time::Duration::from_millis(500));
    for (name, fsync) in [("log_append", false), ("log_append_fsync_per_group", true)] {
        let path = scratch(name);
        let mut s = store(&path, fsync, false);
        let session = SessionId::new();
        g.bench_function(name, |b| b.iter(|| append(&mut s, session, 16)));
        drop(s);
        let _ = std::fs::remove_dir_all(path.parent().unwrap());
    }
    g.finish();
}

/// Writes `n` records from `WRITERS` concurrent sessions; returns when all are acked.
fn write(rt: &tokio::runtime::Runtime, journal: &Journal, n: u64) {
    rt.block_on(async {
        let per = n / WRITERS;
        let mut tasks = Vec::new();
        for w in 0..WRITERS {
            let j = journal.clone();
            tasks.push(tokio::spawn(async move {
                let s = SessionId::new();
                j.record(Some(s), opened(w)).await.unwrap();
                for i in 1..per {
                    j.record(Some(s), statement(i)).await.unwrap();
                }
            }));
        }
        for t in tasks {
            t.await.unwrap();
        }
    });
}

fn durable_writes(c: &mut Criterion) {
    let path = scratch("write");
    let rt = tokio::runtime::Runtime::new().unwrap();
    let (journal, writer) =
        Journal::start_with(store(&path, true, false), WriterOptions::default());
    let mut g = c.benchmark_group("journal");
    g.throughput(Throughput::Elements(RECORDS_PER_ITER / WRITERS * WRITERS));
    g.sample_size(10);
    g.measurement_time(std::time::Duration::from_secs(5));
    g.bench_function("write_durable_group_commit", |b| {
        b.iter(|| write(&rt, &journal, RECORDS_PER_ITER))
    });
    g.finish();
    drop(journal);
    writer.join().unwrap();
    let _ = std::fs::remove_dir_all(path.parent().unwrap());
}

fn verification(c: &mut Criterion) {
    let path = scratch("verify");
    let groups = 250; // about 500k records
    {
        let t = Instant::now();
        let mut s = store(&path, false, true);
        append(&mut s, SessionId::new(), groups);
        s.close().unwrap(); // the index catches up from the log here
        eprintln!(
            "built a {}-record journal in {:?}",
            groups * GROUP,
            t.elapsed()
        );
    }
    let records = (groups * GROUP) as u64;
    let dir = segment::dir_of(&path);
    let reader = Reader::open(&path).unwrap();
    let mut g = c.benchmark_group("journal");
    g.throughput(Throughput::Elements(records));
    g.sample_size(10);
    g.bench_function("verify_segments", |b| {
        b.iter(|| {
            let mut report = Report::default();
            verify_log::verify_segments(&dir, &VerifyOptions::default(), &mut report);
            assert!(report.ok(), "{:?}", report.problems);
        })
    });
    g.bench_function("verify_segments_and_index", |b| {
        b.iter(|| {
            let report = verify(&reader, &VerifyOptions::default());
            assert!(report.ok(), "{:?}", report.problems);
        })
    });
    g.finish();
    let _ = std::fs::remove_dir_all(path.parent().unwrap());
}

criterion_group!(benches, log_append, durable_writes, verification);
criterion_main!(benches);
