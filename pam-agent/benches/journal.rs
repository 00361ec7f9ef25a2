//! Journal throughput: durable writes with group commit (many sessions writing at once,
//! fsync on), and verification. Results and the machine they ran on: docs/benchmarks-journal.md.

use std::{path::PathBuf, time::Instant};

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use pam_agent::{
    audit::bench::{opened, statement},
    journal::{
        Journal, SessionId, WriterOptions,
        reader::Reader,
        sqlite::{SqliteStore, StoreOptions},
        verify::{VerifyOptions, verify},
    },
};

/// Concurrent writers: each waits for its ack, as a session does before forwarding.
const WRITERS: u64 = 2048;
const RECORDS_PER_ITER: u64 = 50_000;

fn scratch(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("pam-bench-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir.join("journal.db")
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
    let (journal, writer) = Journal::start_with(
        SqliteStore::open(StoreOptions::new(&path)).unwrap(),
        WriterOptions::default(),
    );
    let mut g = c.benchmark_group("journal");
    g.throughput(Throughput::Elements(RECORDS_PER_ITER / WRITERS * WRITERS));
    g.sample_size(10);
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
    let records = 200_000;
    {
        let rt = tokio::runtime::Runtime::new().unwrap();
        let mut opts = StoreOptions::new(&path);
        opts.fsync = false;
        let (journal, writer) =
            Journal::start_with(SqliteStore::open(opts).unwrap(), WriterOptions::default());
        let t = Instant::now();
        write(&rt, &journal, records);
        drop(journal);
        writer.join().unwrap();
        eprintln!("built a {records}-record journal in {:?}", t.elapsed());
    }
    let reader = Reader::open(&path).unwrap();
    let mut g = c.benchmark_group("journal");
    g.throughput(Throughput::Elements(records / WRITERS * WRITERS));
    g.sample_size(10);
    g.bench_function("verify", |b| {
        b.iter(|| {
            let report = verify(&reader, &VerifyOptions::default());
            assert!(report.ok(), "{:?}", report.problems);
        })
    });
    g.finish();
    let _ = std::fs::remove_dir_all(path.parent().unwrap());
}

criterion_group!(benches, durable_writes, verification);
criterion_main!(benches);
