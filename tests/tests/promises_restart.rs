//! Two more promises of ARCHITECTURE.md (issue 16), end to end with the real agent, eBPF
//! and PostgreSQL: the agent is never redirected (not even from inside a governed cgroup),
//! and a restart leaves no gap (a worker connecting in a loop either goes through the
//! agent, on record, or is refused; the server runs nothing the journal does not hold).

use std::{
    collections::BTreeSet,
    path::Path,
    process::Command,
    sync::{
        Arc, Mutex,
        atomic::{AtomicBool, Ordering},
    },
    time::Duration,
};

use pam_e2e::{
    Agent, Cgroup, OutputWithin, ResourceSpec, TestHost, agent_bin, postgres::PgServer,
    require_root, wait_for,
};

const PASSWORD: &str = "pg-restart-password";
const POLICY: &str = "[[policy.rules]]\nname = \"all\"\naction = \"allow\"\nkinds = [\"select\"]\n";

struct Fixture {
    agent: Agent,
    cg: Cgroup,
    pg: PgServer,
    host: TestHost,
}

/// A server that logs every statement it runs, and an agent governing `cg`.
fn setup(tag: &str) -> Fixture {
    let host = TestHost::new().expect("test host");
    let pg = PgServer::start(&host, 5432, PASSWORD).expect("postgres");
    for sql in [
        "alter system set log_statement = 'all'",
        "select pg_reload_conf()",
    ] {
        pg.admin_sql("postgres", sql).unwrap();
    }
    wait_for("log_statement = all", Duration::from_secs(10), || {
        (pg.admin_sql("postgres", "show log_statement").ok()?.trim() == "all").then_some(())
    });
    let cg = Cgroup::new(tag).expect("cgroup");
    let agent = Agent::start_with(
        &[&cg],
        &[ResourceSpec::postgres("db", host.v4, 5432)],
        POLICY,
    )
    .expect("agent");
    Fixture {
        agent,
        cg,
        pg,
        host,
    }
}

/// psql running `select '<tag>'` against `host`, in cgroup `cg` (governed) or directly.
fn psql(host: &str, cg: Option<&Path>, tag: &str) -> std::process::Output {
    let mut c = match cg {
        Some(cg) => {
            let mut c = Command::new(agent_bin());
            c.args(["exec", "--cgroup"]).arg(cg).args(["--", "psql"]);
            c
        }
        None => Command::new("psql"),
    };
    c.args(["-h", host, "-U", "postgres", "-d", "postgres"])
        .args(["-XAtc", &format!("select '{tag}'")])
        .env("PGPASSWORD", PASSWORD)
        .env("PGCONNECT_TIMEOUT", "5")
        .output_within()
        .expect("psql")
}

/// The tags of `select '<tag>'` statements the server ran (its log).
fn server_ran(pg: &PgServer) -> BTreeSet<String> {
    tags(
        pg.log()
            .lines()
            .filter_map(|l| l.split_once("statement: ").map(|(_, s)| s.to_owned())),
    )
}

/// The tags of `select '<tag>'` statements on record in the journal.
fn journaled(agent: &Agent) -> BTreeSet<String> {
    tags(
        agent
            .settled()
            .iter()
            .filter(|r| r["kind"] == "statement")
            .filter_map(|r| r["text"].as_str().map(str::to_owned)),
    )
}

fn tags(texts: impl Iterator<Item = String>) -> BTreeSet<String> {
    texts
        .filter_map(|t| {
            t.trim()
                .strip_prefix("select '")?
                .strip_suffix('\'')
                .map(str::to_owned)
        })
        .collect()
}

#[test]
fn the_agent_inside_a_governed_cgroup_still_reaches_the_server() {
    if !require_root("promises_restart") {
        return;
    }
    let f = setup("selfgov");
    let pid = f.agent.pid().unwrap();
    std::fs::write(f.cg.path.join("cgroup.procs"), pid.to_string()).unwrap();
    let own = std::fs::read_to_string(format!("/proc/{pid}/cgroup")).unwrap();
    let name =
        f.cg.path
            .file_name()
            .unwrap()
            .to_string_lossy()
            .into_owned();
    assert!(
        own.contains(&name),
        "the agent runs in the governed cgroup: {own}"
    );
    // A worker's session makes the agent dial the server from the governed cgroup: that
    // dial is not redirected back into the agent, so the worker gets its answer.
    let out = psql(
        &f.host.v4.to_string(),
        Some(&f.cg.path),
        "through-the-agent",
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(String::from_utf8_lossy(&out.stdout), "through-the-agent\n");
    let all = f.agent.settled();
    let opened = all.iter().filter(|r| r["kind"] == "session_opened").count();
    assert_eq!(opened, 1, "one session, not a loop back into the agent");
    let closed: Vec<_> = all
        .iter()
        .filter(|r| r["kind"] == "session_closed")
        .collect();
    assert_eq!(closed.len(), 1);
    assert_ne!(closed[0]["end"], "upstream_unreachable", "{}", closed[0]);
    assert!(server_ran(&f.pg).contains("through-the-agent"));
}

#[derive(Debug, PartialEq)]
enum Outcome {
    Answered,
    Refused,
    /// Cut: a session the stop ended (never answered by anyone else).
    Cut(String),
}

#[test]
fn a_worker_connecting_across_a_restart_never_reaches_the_server_directly() {
    if !require_root("promises_restart") {
        return;
    }
    let mut f = setup("nogap");
    let host = f.host.v4.to_string();
    // Control: a direct (ungoverned) connection is what the oracle must flag.
    assert!(psql(&host, None, "control-direct").status.success());
    let results: Arc<Mutex<Vec<(String, Outcome)>>> = Arc::default();
    let stop = Arc::new(AtomicBool::new(false));
    let count = |want: fn(&Outcome) -> bool| {
        results
            .lock()
            .unwrap()
            .iter()
            .filter(|(_, o)| want(o))
            .count()
    };
    let worker = {
        let (results, stop, cg) = (results.clone(), stop.clone(), f.cg.path.clone());
        std::thread::spawn(move || {
            let mut i = 0;
            while !stop.load(Ordering::Acquire) {
                let tag = format!("attempt-{i}");
                let out = psql(&host, Some(&cg), &tag);
                let (_, stdout, stderr) = pam_e2e::printed(&out);
                let outcome = if out.status.success() && stdout == format!("{tag}\n") {
                    Outcome::Answered
                } else if stderr.contains("Connection refused") {
                    Outcome::Refused
                } else {
                    Outcome::Cut(stderr)
                };
                results.lock().unwrap().push((tag, outcome));
                i += 1;
            }
        })
    };
    let answered = |o: &Outcome| *o == Outcome::Answered;
    wait_for("3 answers before the stop", Duration::from_secs(60), || {
        (count(answered) >= 3).then_some(())
    });
    f.agent.stop().expect("orderly stop");
    wait_for("2 refusals while stopped", Duration::from_secs(60), || {
        (count(|o| *o == Outcome::Refused) >= 2).then_some(())
    });
    f.agent.restart().expect("restart");
    let before = count(answered);
    wait_for(
        "3 answers after the restart",
        Duration::from_secs(60),
        || (count(answered) >= before + 3).then_some(()),
    );
    stop.store(true, Ordering::Release);
    worker.join().unwrap();
    let results = std::mem::take(&mut *results.lock().unwrap());
    eprintln!(
        "{} attempts: {} answered, {} refused, {} cut",
        results.len(),
        results
            .iter()
            .filter(|(_, o)| *o == Outcome::Answered)
            .count(),
        results
            .iter()
            .filter(|(_, o)| *o == Outcome::Refused)
            .count(),
        results
            .iter()
            .filter(|(_, o)| matches!(o, Outcome::Cut(_)))
            .count()
    );
    let ran = server_ran(&f.pg);
    let on_record = journaled(&f.agent);
    // Every statement the server ran is on record, but for the control.
    let unrecorded: Vec<_> = ran.difference(&on_record).collect();
    assert_eq!(unrecorded, ["control-direct"], "{results:?}");
    // Every answer came through the agent; a refused attempt ran nowhere.
    for (tag, outcome) in &results {
        match outcome {
            Outcome::Answered => assert!(on_record.contains(tag), "{tag}"),
            Outcome::Refused => assert!(!ran.contains(tag), "{tag} ran while refused"),
            Outcome::Cut(err) => assert!(!err.contains(tag.as_str()), "{tag}: {err}"),
        }
    }
}
