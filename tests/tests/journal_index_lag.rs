//! The journal's index falls behind and the agent's memory stays flat: while another
//! process holds the index database's write lock (as a backup tool or a slow disk
//! would keep it from committing), governed pgbench clients run hundreds of thousands
//! of statements through the agent. The agent keeps journaling them (the log is what
//! the write-ahead promise needs), its memory does not grow with the records the index
//! has not taken, and once the lock goes the index catches up with every one of them.
//! Before the fix of session 7 the agent grew about 2 KB per record the index had not
//! taken (1.9 GB at a million).

use std::{
    io::Write,
    process::{Command, Stdio},
    sync::{
        Arc,
        atomic::{AtomicBool, AtomicU64, Ordering},
    },
    time::Duration,
};

use pam_e2e::{
    Agent, Cgroup, OutputWithin, ResourceSpec, SpawnWatched, TestHost, agent_bin,
    postgres::PgServer, require_root, wait_for,
};

const PASSWORD: &str = "pg-lag-password";
/// What pgbench's select-only script sends, and nothing else.
const POLICY: &str = r#"
[[policy.rules]]
name = "pgbench"
action = "allow"
kinds = ["select", "transaction", "session"]
"#;
/// Statements the clients run while the index is held (each is two records: the
/// statement and its completion). Well beyond what the index thread queues in memory
/// (50,000 records), so most must be left to a catch-up from the log.
const TRANSACTIONS_PER_CLIENT: u64 = 15_000;
const CLIENTS: u64 = 4;
/// Statements of a first session, indexed before the lock is taken.
const WARM: u64 = 100;
/// The agent's anonymous memory may grow this much under the load and the catch-up
/// after it (sessions, their buffers, the index's bounded queue of 16 MiB and SQLite
/// cache of 16 MiB, allocator arenas); 68-86 MiB measured. Unbounded, the records held for the
/// index alone would take about 2 KB each: 240 MiB here.
const GROWTH_MIB: u64 = 128;

/// Anonymous resident memory of a process, in MiB (what a queue that grows would take).
fn anon_mib(pid: u32) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    status
        .lines()
        .find_map(|l| l.strip_prefix("RssAnon:"))
        .and_then(|v| v.split_whitespace().next()?.parse::<u64>().ok())
        .map(|kib| kib >> 10)
}

/// A Python process holding the index database's write lock until its stdin closes.
const HOLD_LOCK: &str = r#"
import sqlite3, sys
db = sqlite3.connect(sys.argv[1], isolation_level=None, timeout=30)
db.execute("BEGIN EXCLUSIVE")
print("held", flush=True)
sys.stdin.read()
db.execute("ROLLBACK")
"#;

/// The index database's own count of statement records whose text starts with `prefix`.
fn indexed_statements(index: &std::path::Path, prefix: &str) -> u64 {
    let out = Command::new("python3")
        .args([
            "-c",
            "import sqlite3, sys\n\
             db = sqlite3.connect('file:' + sys.argv[1] + '?mode=ro', uri=True)\n\
             print(db.execute(\"SELECT count(*) FROM records WHERE kind = 'statement' \
             AND json_extract(record, '$.text') LIKE ? || '%'\", (sys.argv[2],)).fetchone()[0])",
        ])
        .arg(index)
        .arg(prefix)
        .output_within()
        .expect("python3 sqlite3");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).trim().parse().unwrap()
}

#[test]
fn memory_stays_flat_while_the_index_lags_and_the_index_catches_up() {
    if !require_root("journal_index_lag") {
        return;
    }
    let host = TestHost::new().expect("test host");
    let _pg = PgServer::start(&host, 5432, PASSWORD).expect("postgres");
    let target = host.v4.to_string();
    let pgbench = |governed: Option<&Cgroup>| {
        let mut c = match governed {
            Some(cg) => {
                let mut c = Command::new(agent_bin());
                c.args(["exec", "--cgroup"])
                    .arg(&cg.path)
                    .args(["--", "pgbench"]);
                c
            }
            None => Command::new("pgbench"),
        };
        c.args(["-h", &target, "-p", "5432", "-U", "postgres"])
            .env("PGPASSWORD", PASSWORD);
        c
    };
    let init = pgbench(None)
        .args(["-i", "-q", "-s", "1", "postgres"])
        .output_within()
        .unwrap();
    assert!(
        init.status.success(),
        "{}",
        String::from_utf8_lossy(&init.stderr)
    );
    let cg = Cgroup::new("lag").expect("cgroup");
    let agent = Agent::start_with(
        &[&cg],
        &[ResourceSpec::postgres("db", host.v4, 5432)],
        POLICY,
    )
    .expect("agent");
    let pid = agent.pid().expect("agent running");
    // A first governed session, so the baseline includes what any session brings up.
    let warm = pgbench(Some(&cg))
        .args(["-S", "-n", "-t", &WARM.to_string(), "postgres"])
        .output_within()
        .unwrap();
    assert!(
        warm.status.success(),
        "{}",
        String::from_utf8_lossy(&warm.stderr)
    );
    let prefix = "SELECT abalance FROM pgbench_accounts";
    wait_for(
        "the warm-up's statements in the index",
        Duration::from_secs(30),
        || (indexed_statements(&agent.journal, prefix) == WARM).then_some(()),
    );
    let baseline = anon_mib(pid).unwrap();

    let mut lock = Command::new("python3")
        .args(["-c", HOLD_LOCK])
        .arg(&agent.journal)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn_watched()
        .expect("python3");
    let mut line = String::new();
    std::io::BufRead::read_line(
        &mut std::io::BufReader::new(lock.stdout.as_mut().unwrap()),
        &mut line,
    )
    .unwrap();
    assert_eq!(line.trim(), "held");

    let peak = Arc::new(AtomicU64::new(baseline));
    let running = Arc::new(AtomicBool::new(true));
    let sampler = {
        let (peak, running) = (peak.clone(), running.clone());
        std::thread::spawn(move || {
            while running.load(Ordering::Relaxed) {
                if let Some(m) = anon_mib(pid) {
                    peak.fetch_max(m, Ordering::Relaxed);
                }
                std::thread::sleep(Duration::from_millis(100));
            }
        })
    };
    let load = pgbench(Some(&cg))
        .args(["-S", "-n", "-c", &CLIENTS.to_string(), "-j", "2"])
        .args(["-t", &TRANSACTIONS_PER_CLIENT.to_string(), "postgres"])
        .output_within()
        .unwrap();
    let out = String::from_utf8_lossy(&load.stdout).into_owned();
    assert!(
        load.status.success(),
        "{out}{}",
        String::from_utf8_lossy(&load.stderr)
    );
    let transactions = CLIENTS * TRANSACTIONS_PER_CLIENT;
    assert!(
        out.contains(&format!(
            "number of transactions actually processed: {transactions}/{transactions}"
        )),
        "{out}"
    );
    // The index took nothing of the load while the lock was held.
    assert_eq!(indexed_statements(&agent.journal, prefix), WARM);
    assert!(
        agent.log().contains("journal index write failed"),
        "the index never found itself held: {}",
        agent.log()
    );

    // The lock goes: the index catches up from the log with every statement.
    lock.stdin.take().unwrap().write_all(b"").unwrap();
    assert!(lock.wait().unwrap().success());
    wait_for(
        "the index to catch up with every statement",
        Duration::from_secs(120),
        || (indexed_statements(&agent.journal, prefix) == WARM + transactions).then_some(()),
    );
    running.store(false, Ordering::Relaxed);
    sampler.join().unwrap();
    let grew = peak.load(Ordering::Relaxed).saturating_sub(baseline);
    eprintln!(
        "anonymous memory: {baseline} MiB before, peak {} MiB with {} records left to the index's catch-up",
        baseline + grew,
        2 * transactions
    );
    assert!(
        grew <= GROWTH_MIB,
        "the agent grew {grew} MiB (from {baseline} MiB) while the index lagged; bound {GROWTH_MIB} MiB"
    );
    // What a security engineer reads says the same.
    let journaled = agent
        .records("statement")
        .iter()
        .filter(|r| r["text"].as_str().is_some_and(|t| t.starts_with(prefix)))
        .count() as u64;
    assert_eq!(journaled, WARM + transactions);
}
