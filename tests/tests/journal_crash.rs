//! The write-ahead promise under a crash: governed workers run statements through the
//! agent as fast as they can, and the agent is killed with SIGKILL mid-load. Every
//! statement a worker saw succeed has its record in the journal, the journal verifies,
//! and the sessions the kill left open are closed on record (`abandoned`) when the agent
//! starts again. Real agent, eBPF redirect, PostgreSQL and psycopg.

use std::{
    collections::HashSet,
    io::{BufRead, BufReader},
    process::{Command, Stdio},
    sync::{Arc, Mutex},
    time::Duration,
};

use pam_e2e::OutputWithin;
use pam_e2e::SpawnWatched;
use pam_e2e::{
    Agent, Cgroup, ResourceSpec, TestHost, agent_bin, postgres::PgServer, require_root, wait_for,
};

const PASSWORD: &str = "pg-crash-password";
const POLICY: &str =
    "[[policy.rules]]\nname = \"reads\"\naction = \"allow\"\nkinds = [\"select\"]\n";
const WORKERS: usize = 4;

/// A worker: one connection, `SELECT 'w<id>-<n>'` in a loop, printing each marker only
/// after its result arrived.
const WORKER: &str = r#"
import sys, psycopg
conn = psycopg.connect(sys.argv[1], autocommit=True)
n = 0
while True:
    marker = "w%s-%d" % (sys.argv[2], n)
    row = conn.execute("SELECT '%s'" % marker).fetchone()
    assert row[0] == marker
    print(marker, flush=True)
    n += 1
"#;

#[test]
fn kill_9_under_load_keeps_every_acknowledged_statement() {
    if !require_root("journal_crash") {
        return;
    }
    let host = TestHost::new().expect("test host");
    let _pg = PgServer::start(&host, 5432, PASSWORD).expect("postgres");
    let cg = Cgroup::new("crash").expect("cgroup");
    // `sync = "interval"`: records are acknowledged once in the OS, which is exactly what
    // survives a kill of the agent.
    let mut agent = Agent::start_with_journal(
        &[&cg],
        &[ResourceSpec::postgres("db", host.v4, 5432)],
        "sync = \"interval\"",
        POLICY,
    )
    .expect("agent");
    let uri = format!(
        "postgresql://postgres:{PASSWORD}@{}:5432/postgres?sslmode=disable",
        host.v4
    );
    let seen: Arc<Mutex<Vec<String>>> = Arc::default();
    let mut children = Vec::new();
    let mut readers = Vec::new();
    for w in 0..WORKERS {
        let mut child = Command::new(agent_bin())
            .args(["exec", "--cgroup"])
            .arg(&cg.path)
            .args(["--", "python3", "-c", WORKER, &uri, &w.to_string()])
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn_watched()
            .expect("worker");
        let out = child.stdout.take().unwrap();
        let seen = seen.clone();
        readers.push(std::thread::spawn(move || {
            for line in BufReader::new(out).lines() {
                let Ok(line) = line else { break };
                seen.lock().unwrap().push(line);
            }
        }));
        children.push(child);
    }
    // Under load: every worker has had many statements answered.
    wait_for("load", Duration::from_secs(60), || {
        let seen = seen.lock().unwrap();
        (0..WORKERS)
            .all(|w| {
                seen.iter()
                    .filter(|m| m.starts_with(&format!("w{w}-")))
                    .count()
                    >= 200
            })
            .then_some(())
    });
    agent.kill().expect("kill -9");
    for mut c in children {
        let _ = c.kill();
        let _ = c.wait();
    }
    for r in readers {
        r.join().unwrap();
    }
    let seen = seen.lock().unwrap().clone();
    assert!(seen.len() >= 200 * WORKERS);

    // Read while the agent is down, as an auditor would after the crash.
    let journal = agent.journal();
    let texts: HashSet<String> = journal
        .iter()
        .filter(|r| r["kind"] == "statement")
        .filter_map(|r| r["text"].as_str().map(str::to_owned))
        .collect();
    let lost: Vec<&String> = seen
        .iter()
        .filter(|m| !texts.contains(&format!("SELECT '{m}'")))
        .collect();
    assert!(
        lost.is_empty(),
        "{} of {} statements the workers saw succeed have no record, e.g. {:?}",
        lost.len(),
        seen.len(),
        &lost[..lost.len().min(5)]
    );
    let (ok, out) = agent.verify_journal();
    assert!(ok, "verify after kill -9:\n{out}");
    let opened: Vec<serde_json::Value> = journal
        .iter()
        .filter(|r| r["kind"] == "session_opened")
        .map(|r| r["session"].clone())
        .collect();
    assert_eq!(opened.len(), WORKERS, "{opened:?}");

    // The next start closes the sessions the kill left open, on record.
    agent.restart().expect("restart");
    let journal = agent.journal();
    for s in &opened {
        let closed: Vec<&serde_json::Value> = journal
            .iter()
            .filter(|r| r["kind"] == "session_closed" && r["session"] == *s)
            .collect();
        assert_eq!(closed.len(), 1, "session {s}: {closed:?}");
        assert_eq!(closed[0]["end"], "abandoned", "{}", closed[0]);
    }
    let (ok, out) = agent.verify_journal();
    assert!(ok, "verify after the restart:\n{out}");
    agent.stop().expect("stop");
}

/// A worker with an open session: connects, says so, then runs the statement given on
/// each line of its stdin and prints `ok` or the error.
const INTERACTIVE: &str = r#"
import sys, psycopg
conn = psycopg.connect(sys.argv[1], autocommit=True)
print("connected", flush=True)
for line in sys.stdin:
    try:
        conn.execute(line.strip())
        print("ok", flush=True)
    except Exception as e:
        print("error: %s" % str(e).replace("\n", " "), flush=True)
"#;

/// The journal on a file system that fills up: a statement the agent cannot journal is
/// refused and never reaches the database (no silent audit loss), and statements are
/// journaled and run again once there is room.
#[test]
fn a_full_disk_refuses_statements_rather_than_running_them_unaudited() {
    use std::io::Write;
    if !require_root("journal_crash") {
        return;
    }
    let host = TestHost::new().expect("test host");
    let pg = PgServer::start(&host, 5432, PASSWORD).expect("postgres");
    pg.admin_sql("postgres", "CREATE TABLE marks (m text)")
        .unwrap();
    let cg = Cgroup::new("diskfull").expect("cgroup");
    let policy =
        "[[policy.rules]]\nname = \"rw\"\naction = \"allow\"\nkinds = [\"select\", \"insert\"]\n";
    let mut agent = Agent::start_with(
        &[&cg],
        &[ResourceSpec::postgres("db", host.v4, 5432)],
        policy,
    )
    .expect("agent");
    // Move the journal onto a small tmpfs of its own.
    agent.stop().expect("stop");
    let fs = agent.dir.path().join("jfs");
    std::fs::create_dir_all(&fs).unwrap();
    let mounted = Command::new("mount")
        .args(["-t", "tmpfs", "-o", "size=4m", "tmpfs"])
        .arg(&fs)
        .output_within()
        .unwrap()
        .status;
    assert!(mounted.success());
    struct Unmount(std::path::PathBuf);
    impl Drop for Unmount {
        fn drop(&mut self) {
            let _ = Command::new("umount").arg("-l").arg(&self.0).status();
        }
    }
    let _unmount = Unmount(fs.clone());
    let config = std::fs::read_to_string(&agent.config).unwrap();
    let journal = fs.join("journal.db");
    std::fs::write(
        &agent.config,
        config.replace(
            &format!("path = \"{}\"", agent.journal.display()),
            &format!("path = \"{}\"", journal.display()),
        ),
    )
    .unwrap();
    agent.journal = journal;
    agent.restart().expect("restart on tmpfs");

    let uri = format!(
        "postgresql://postgres:{PASSWORD}@{}:5432/postgres?sslmode=disable",
        host.v4
    );
    let mut worker = Command::new(agent_bin())
        .args(["exec", "--cgroup"])
        .arg(&cg.path)
        .args(["--", "python3", "-c", INTERACTIVE, &uri])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn_watched()
        .expect("worker");
    let mut stdin = worker.stdin.take().unwrap();
    let mut lines = BufReader::new(worker.stdout.take().unwrap()).lines();
    assert_eq!(lines.next().expect("worker starts").unwrap(), "connected");
    let mut ask = |sql: &str| -> String {
        writeln!(stdin, "{sql}").unwrap();
        lines.next().expect("worker answers").unwrap()
    };
    assert_eq!(ask("INSERT INTO marks VALUES ('before')"), "ok");

    // Fill the file system.
    let filler = fs.join("filler");
    let _ = Command::new("dd")
        .args(["if=/dev/zero", "bs=64k"])
        .arg(format!("of={}", filler.display()))
        .output_within();
    // The last page of the log may still hold a few records; then statements fail.
    let mut refused = None;
    for n in 0..10_000 {
        let answer = ask(&format!("INSERT INTO marks VALUES ('full-{n}')"));
        if answer.starts_with("error") {
            refused = Some(n);
            break;
        }
        assert_eq!(answer, "ok");
    }
    let refused = refused.expect("a full file system refuses statements");
    // Every row the database holds has its record; the refused statement has neither.
    let rows = pg
        .admin_sql(
            "postgres",
            "SELECT string_agg(m, ',' ORDER BY m) FROM marks",
        )
        .unwrap();
    let rows: Vec<&str> = rows.trim().split(',').collect();
    assert!(
        !rows.contains(&format!("full-{refused}").as_str()),
        "{rows:?}"
    );
    let texts: Vec<String> = agent
        .records("statement")
        .iter()
        .filter_map(|r| r["text"].as_str().map(str::to_owned))
        .collect();
    for row in &rows {
        assert!(
            texts.iter().any(|t| t.contains(&format!("'{row}'"))),
            "row {row} reached the database without its record"
        );
    }
    let _ = worker.kill();
    let _ = worker.wait();

    // Room again: a new session works, on record.
    std::fs::remove_file(&filler).unwrap();
    let out = Command::new(agent_bin())
        .args(["exec", "--cgroup"])
        .arg(&cg.path)
        .args(["--", "python3", "-c", INTERACTIVE, &uri])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn_watched()
        .and_then(|mut c| {
            writeln!(
                c.stdin.take().unwrap(),
                "INSERT INTO marks VALUES ('after')"
            )?;
            c.wait_with_output()
        })
        .unwrap();
    assert_eq!(String::from_utf8_lossy(&out.stdout), "connected\nok\n");
    let texts: Vec<String> = agent
        .records("statement")
        .iter()
        .filter_map(|r| r["text"].as_str().map(str::to_owned))
        .collect();
    assert!(texts.iter().any(|t| t.contains("'after'")), "{texts:?}");
    assert!(
        !texts.iter().any(|t| t.contains("'while-full'")),
        "{texts:?}"
    );
    let (ok, out) = agent.verify_journal();
    assert!(ok, "{out}");
    agent.stop().expect("stop");
}
