//! `audit bench`: how many records per second this disk journals durably, measured with
//! the agent's own writer on a scratch journal (like `pg_test_fsync` for PostgreSQL).
//! With `--print-acks` it prints each acknowledged seq, which the crash tests use: after
//! `kill -9`, every printed seq must be in the journal.

use std::{
    io::Write,
    net::SocketAddr,
    path::PathBuf,
    sync::{
        Arc,
        atomic::{AtomicBool, AtomicU64, Ordering},
    },
    time::Instant,
};

use clap::Args;

use super::AuditError;
use crate::{
    journal::{
        Event, Journal, SessionId, WriterOptions,
        event::{Decision, ResourceRef},
        log::LogStore,
        sqlite::StoreOptions,
    },
    principal::Principal,
};

#[derive(Debug, Args)]
pub struct BenchArgs {
    /// Scratch journal to write (refused if it exists, unless --append).
    #[arg(long)]
    pub journal: PathBuf,
    /// Add to an existing scratch journal.
    #[arg(long)]
    pub append: bool,
    /// Records to write; 0 writes until killed.
    #[arg(long, default_value_t = 100_000)]
    pub records: u64,
    /// Concurrent writers (sessions).
    #[arg(long, default_value_t = 256)]
    pub concurrency: u64,
    /// As journal.fsync = false.
    #[arg(long)]
    pub no_fsync: bool,
    /// Without the index behind the log (measures the log alone).
    #[arg(long)]
    pub no_index: bool,
    /// Print each acknowledged seq on stdout.
    #[arg(long)]
    pub print_acks: bool,
}

pub fn run(args: BenchArgs) -> Result<(), AuditError> {
    if args.journal.exists() && !args.append {
        return Err(AuditError::Usage(format!(
            "{} exists; bench writes synthetic records, so give a scratch path (or --append)",
            args.journal.display()
        )));
    }
    if args.concurrency == 0 {
        return Err(AuditError::Usage("--concurrency must be at least 1".into()));
    }
    let mut opts = StoreOptions::new(&args.journal);
    opts.fsync = !args.no_fsync;
    opts.build_index = !args.no_index;
    let store = LogStore::open(opts).map_err(|e| AuditError::Failed(e.to_string()))?;
    let (journal, writer) = Journal::start_with(store, WriterOptions::default());
    let rt = tokio::runtime::Runtime::new().map_err(|e| AuditError::Failed(e.to_string()))?;
    let written = Arc::new(AtomicU64::new(0));
    let failed = Arc::new(AtomicBool::new(false));
    let started = Instant::now();
    rt.block_on(async {
        let mut tasks = Vec::new();
        for worker in 0..args.concurrency {
            let journal = journal.clone();
            let written = written.clone();
            let failed = failed.clone();
            let (records, print) = (args.records, args.print_acks);
            tasks.push(tokio::spawn(async move {
                let session = SessionId::new();
                let mut first = true;
                loop {
                    let n = written.fetch_add(1, Ordering::Relaxed);
                    if records != 0 && n >= records {
                        written.fetch_sub(1, Ordering::Relaxed);
                        return;
                    }
                    let event = if first {
                        first = false;
                        opened(worker)
                    } else {
                        statement(n)
                    };
                    match journal.record(Some(session), event).await {
                        Ok(seq) if print => {
                            let mut out = std::io::stdout().lock();
                            if writeln!(out, "{seq}").and_then(|()| out.flush()).is_err() {
                                return;
                            }
                        }
                        Ok(_) => {}
                        Err(e) => {
                            if !failed.swap(true, Ordering::Relaxed) {
                                eprintln!("pam-agent: journal write failed: {e}");
                            }
                            written.fetch_sub(1, Ordering::Relaxed);
                            return;
                        }
                    }
                }
            }));
        }
        for t in tasks {
            let _ = t.await;
        }
    });
    // Every record is acknowledged here; the index (built behind the log) may still be
    // catching up, which the close waits for.
    let appended = started.elapsed().as_secs_f64();
    drop(journal);
    let _ = writer.join();
    let n = written.load(Ordering::Relaxed);
    let indexed = started.elapsed().as_secs_f64();
    eprintln!(
        "{n} records appended in {appended:.2} s = {:.0} records/s acknowledged {} \
         (concurrency {}); indexed by {indexed:.2} s = {:.0} records/s",
        n as f64 / appended,
        if args.no_fsync {
            "in the OS (sync = interval)"
        } else {
            "on disk (sync = always)"
        },
        args.concurrency,
        n as f64 / indexed,
    );
    if failed.load(Ordering::Relaxed) {
        return Err(AuditError::Failed("the journal refused writes".into()));
    }
    Ok(())
}

/// A realistic session opening (the principal is this process).
pub fn opened(worker: u64) -> Event {
    let addr = |s: &str| s.parse::<SocketAddr>().expect("literal address");
    Event::SessionOpened {
        principal: Principal {
            pid: std::process::id(),
            tid: std::process::id(),
            uid: 1000 + (worker % 16) as u32,
            gid: 1000,
            cgroup_id: 4242,
            comm: "bench-worker".into(),
            user: Some(format!("worker{}", worker % 16)),
            exe: Some("/usr/bin/python3".into()),
            cgroup: Some("/crew.slice/crew-worker@1.service".into()),
            unit: Some("crew-worker@1.service".into()),
            ..Default::default()
        },
        resource: ResourceRef {
            name: "orders-db".into(),
            protocol: "postgres".into(),
        },
        destination: addr("10.0.0.5:5432"),
        client: addr("10.0.0.9:40000"),
    }
}

/// A typical statement record (about 250 bytes of JSON).
pub fn statement(n: u64) -> Event {
    Event::Statement {
        statement: Some(n),
        kinds: vec!["select".into()],
        tables: vec!["public.orders".into()],
        functions: Vec::new(),
        flags: Vec::new(),
        reason: None,
        text: Some(format!(
            "SELECT id, status, total FROM orders WHERE customer_id = {n} AND created_at > now() - interval '1 day'"
        )),
        fingerprint: Some("a3f1c2d4e5b60718".into()),
        decision: if n.is_multiple_of(50) {
            Decision::Deny
        } else {
            Decision::Allow
        },
        rule: Some("read-orders".into()),
        duration_ms: Some(3),
        rows: Some(n % 100),
        error: None,
    }
}
