//! The agent's memory budget, end to end: many governed workers (psycopg 3, through the
//! real redirect) each binding a huge value at once are answered in turn while the
//! agent's peak resident memory stays under the budget plus a constant; a message larger
//! than the whole budget gets SQLSTATE 54000, and the journal says why that session
//! ended.

use std::{
    os::unix::process::CommandExt,
    process::{Command, Stdio},
    time::Duration,
};

use pam_e2e::{
    Agent, Cgroup, ResourceSpec, TestHost, Watchdog, agent_bin, postgres::PgServer, require_root,
};

const PASSWORD: &str = "pg-budget-password";
/// The budget under test: 64 MiB of messages held at once.
const BUDGET: u64 = 64 << 20;
/// What the agent may hold beyond the budget (read buffers, tasks and the parser of
/// each session, the allocator's slack): the constant docs/postgres.md names.
const BEYOND_BUDGET: u64 = 48 << 20;
const WORKERS: usize = 12;
/// Each worker's value: 24 MiB, so only two fit in the budget at once.
const VALUE: usize = 24 << 20;

/// A governed psycopg worker that binds `len` bytes and prints what the server says the
/// length is, or the SQLSTATE it was refused with.
fn worker(cg: &Cgroup, host: &str, len: usize) -> (std::process::Child, Watchdog) {
    let script = format!(
        "import psycopg\n\
         try:\n\
         \x20   with psycopg.connect(host='{host}', user='postgres', password='{PASSWORD}', dbname='postgres', autocommit=True) as c:\n\
         \x20       print(c.execute('select length(%s::text)', ('x' * {len},)).fetchone()[0])\n\
         except psycopg.Error as e:\n\
         \x20   print('ERROR', e.sqlstate, e)\n"
    );
    let child = Command::new(agent_bin())
        .args(["exec", "--cgroup"])
        .arg(&cg.path)
        .args(["--", "python3", "-c", &script])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .process_group(0)
        .spawn()
        .expect("python3 with psycopg");
    let watchdog = Watchdog::new(
        child.id(),
        format!("a worker binding {len} bytes"),
        Duration::from_secs(300),
    );
    (child, watchdog)
}

#[test]
fn huge_messages_wait_for_the_budget_or_get_54000_and_memory_stays_bounded() {
    if !require_root("memory_budget") {
        return;
    }
    let host = TestHost::new().expect("test host");
    let _pg = PgServer::start(&host, 5432, PASSWORD).expect("postgres");
    let cg = Cgroup::new("budget").expect("cgroup");
    let agent = Agent::start_with_listener(
        &[&cg],
        &[ResourceSpec::postgres("db", host.v4, 5432)],
        &format!("max_buffered_bytes = {BUDGET}"),
        "[policy]\nmax_message_bytes = 268435456\n\
         [[policy.rules]]\nname = \"reads\"\naction = \"allow\"\nkinds = [\"select\"]\n",
    )
    .expect("agent");
    let (baseline, _) = agent.memory_kib().expect("agent memory");
    let v4 = host.v4.to_string();
    // All at once: together they ask for four times the budget.
    let workers: Vec<_> = (0..WORKERS).map(|_| worker(&cg, &v4, VALUE)).collect();
    // And one whose single message could never fit.
    let too_big = worker(&cg, &v4, 100 << 20);
    for (w, _watchdog) in workers {
        let out = w.wait_with_output().unwrap();
        let said = String::from_utf8_lossy(&out.stdout);
        assert_eq!(
            said.trim(),
            VALUE.to_string(),
            "every worker gets its answer once its bytes fit: {said}{}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    let out = too_big.0.wait_with_output().unwrap();
    let said = String::from_utf8_lossy(&out.stdout);
    assert!(
        said.starts_with("ERROR 54000")
            && said.contains("larger than the agent's memory budget of 67108864 bytes"),
        "{said}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    // The peak, as the kernel kept it: a property of the run, not a timing.
    let (_, peak) = agent.memory_kib().expect("agent memory");
    let (baseline, peak) = (baseline * 1024, peak * 1024);
    eprintln!(
        "agent RSS: {} MiB at the start, peak {} MiB; {WORKERS} x {} MiB + 100 MiB sent, budget {} MiB",
        baseline >> 20,
        peak >> 20,
        VALUE >> 20,
        BUDGET >> 20
    );
    assert!(
        peak <= baseline + BUDGET + BEYOND_BUDGET,
        "peak RSS {} MiB over {} MiB at the start + the budget {} MiB + {} MiB",
        peak >> 20,
        baseline >> 20,
        BUDGET >> 20,
        BEYOND_BUDGET >> 20
    );
    // The refusal is on record: the session's closing record says why it ended.
    let closed = agent.records("session_closed");
    let refused: Vec<_> = closed
        .iter()
        .filter(|r| {
            r["detail"]
                .as_str()
                .is_some_and(|d| d.contains("larger than the agent's memory budget"))
        })
        .collect();
    assert_eq!(refused.len(), 1, "{closed:#?}");
    assert_eq!(refused[0]["end"], "error");
    assert_eq!(
        closed.len(),
        WORKERS + 1,
        "every session closed on record: {closed:#?}"
    );
    assert!(agent.verify_journal().0);
}
