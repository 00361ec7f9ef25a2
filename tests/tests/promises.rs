//! Promises the docs make about the agent's own lifecycle, each shown end to end with the
//! real agent, eBPF and PostgreSQL: an unreachable database is a clear error on record,
//! and a stop with open sessions closes each of them on record.

use std::{
    process::{Command, Stdio},
    time::Duration,
};

use pam_e2e::OutputWithin;
use pam_e2e::SpawnWatched;
use pam_e2e::{
    Agent, Cgroup, ResourceSpec, TestHost, agent_bin, postgres::PgServer, require_root, wait_for,
};

const PASSWORD: &str = "pg-promises-password";
/// Every SELECT, pg_sleep (volatile) included.
const POLICY: &str = "[[policy.rules]]\nname = \"all\"\naction = \"allow\"\nkinds = [\"select\"]\npermit_flags = [\"volatile_function\"]\n";

fn psql(cg: &Cgroup, host: &str, port: u16, sql: &str) -> Command {
    let mut c = Command::new(agent_bin());
    c.args(["exec", "--cgroup"]).arg(&cg.path).args([
        "--",
        "psql",
        "-h",
        host,
        "-p",
        &port.to_string(),
        "-U",
        "postgres",
        "-d",
        "postgres",
        "-XAtc",
        sql,
    ]);
    c.env("PGPASSWORD", PASSWORD).env("PGCONNECT_TIMEOUT", "5");
    c
}

#[test]
fn an_unreachable_database_is_a_clear_error_on_record() {
    if !require_root("promises") {
        return;
    }
    let host = TestHost::new().expect("test host");
    let cg = Cgroup::new("unreach").expect("cgroup");
    // Nothing listens on 5499 of the test host.
    let agent = Agent::start_with(
        &[&cg],
        &[ResourceSpec::postgres("gone", host.v4, 5499)],
        POLICY,
    )
    .expect("agent");
    let out = psql(&cg, &host.v4.to_string(), 5499, "select 1")
        .output_within()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(
        err.contains("FATAL:  pam-agent: resource \"gone\" cannot be reached"),
        "{err}"
    );
    let closed = agent.settled();
    let closed: Vec<_> = closed
        .iter()
        .filter(|r| r["kind"] == "session_closed")
        .collect();
    assert_eq!(closed.len(), 1);
    assert_eq!(closed[0]["end"], "upstream_unreachable");
    assert!(
        closed[0]["detail"]
            .as_str()
            .unwrap()
            .contains(&format!("{}:5499", host.v4)),
        "{closed:?}"
    );
}

#[test]
fn a_stop_with_open_sessions_closes_each_on_record() {
    if !require_root("promises") {
        return;
    }
    let host = TestHost::new().expect("test host");
    let _pg = PgServer::start(&host, 5432, PASSWORD).expect("postgres");
    let cg = Cgroup::new("stopping").expect("cgroup");
    let mut agent = Agent::start_with(
        &[&cg],
        &[ResourceSpec::postgres("db", host.v4, 5432)],
        POLICY,
    )
    .expect("agent");
    let v4 = host.v4.to_string();
    let mut workers: Vec<_> = (0..3)
        .map(|_| {
            psql(&cg, &v4, 5432, "select pg_sleep(60)")
                .stdout(Stdio::null())
                .stderr(Stdio::piped())
                .spawn_watched()
                .unwrap()
        })
        .collect();
    // All three are in their statement.
    wait_for("three running statements", Duration::from_secs(20), || {
        (agent
            .records("statement")
            .iter()
            .filter(|r| r["text"] == "select pg_sleep(60)")
            .count()
            == 3)
            .then_some(())
    });
    agent.stop().expect("orderly stop");
    let all = agent.journal();
    let opened: Vec<_> = all
        .iter()
        .filter(|r| r["kind"] == "session_opened")
        .map(|r| r["session"].clone())
        .collect();
    let closed: Vec<_> = all
        .iter()
        .filter(|r| r["kind"] == "session_closed")
        .collect();
    assert_eq!(opened.len(), 3);
    assert_eq!(closed.len(), 3, "every open session closed on record");
    // Each opened session closed exactly once, by the stop.
    let ids = |v: Vec<&serde_json::Value>| -> Vec<String> {
        let mut v: Vec<String> = v.iter().map(|s| s.to_string()).collect();
        v.sort();
        v
    };
    assert_eq!(
        ids(closed.iter().map(|c| &c["session"]).collect()),
        ids(opened.iter().collect())
    );
    for c in &closed {
        assert_eq!(c["end"], "agent_shutdown", "{c}");
    }
    let stopped = all.last().unwrap();
    assert_eq!(
        stopped["kind"], "agent_stopped",
        "the stop is the last record"
    );
    for w in &mut workers {
        let status = w.wait().unwrap();
        assert!(
            !status.success(),
            "the worker's session ended with the agent"
        );
    }
    let (ok, report) = agent.verify_journal();
    assert!(ok, "{report}");
}

#[test]
fn disable_turns_enforcement_off_even_after_the_governed_cgroup_is_gone() {
    if !require_root("promises") {
        return;
    }
    let host = TestHost::new().expect("test host");
    let cg = Cgroup::new("vanishing").expect("cgroup");
    let mut agent = Agent::start_with(
        &[&cg],
        &[ResourceSpec::postgres("db", host.v4, 5432)],
        POLICY,
    )
    .expect("agent");
    // The agent's own log, written to a file, carries no terminal colour codes. (READY
    // reaches systemd just before the log line: wait for the line.)
    let log = wait_for("the ready line in the log", Duration::from_secs(10), || {
        let log = agent.log();
        log.contains("pam-agent ready").then_some(log)
    });
    assert!(
        !log.contains('\u{1b}'),
        "colour codes in a log file: {log:?}"
    );
    agent.stop().expect("stop");
    assert!(
        !agent.link_pins().is_empty(),
        "still enforced while stopped"
    );
    drop(cg);
    // `check` now fails (the cgroup is gone), but `disable` still works from the config.
    let out = Command::new(agent_bin())
        .args(["disable", "--config"])
        .arg(&agent.config)
        .output_within()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(agent.link_pins().is_empty(), "every link detached");
    assert!(!agent.pin_dir.exists() || std::fs::read_dir(&agent.pin_dir).unwrap().count() == 0);
}

#[test]
fn verify_says_permission_denied_not_tampered() {
    if !require_root("promises") {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    std::fs::set_permissions(
        dir.path(),
        std::os::unix::fs::PermissionsExt::from_mode(0o755),
    )
    .unwrap();
    let journal = dir.path().join("journal.db");
    std::fs::copy(
        concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/../pam-agent/tests/fixtures/journal-v1/journal.db"
        ),
        &journal,
    )
    .unwrap();
    std::fs::set_permissions(
        &journal,
        std::os::unix::fs::PermissionsExt::from_mode(0o600),
    )
    .unwrap();
    let out = Command::new("runuser")
        .args(["-u", "nobody", "--"])
        .arg(agent_bin())
        .args(["audit", "verify", "--journal"])
        .arg(&journal)
        .output_within()
        .unwrap();
    let (stdout, stderr) = (
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr),
    );
    assert_eq!(out.status.code(), Some(4), "{stdout}{stderr}");
    assert!(stderr.contains("permission denied"), "{stderr}");
    assert!(!stdout.contains("TAMPERED"), "{stdout}");
    // Root reads it, and it verifies.
    let out = Command::new(agent_bin())
        .args(["audit", "verify", "--journal"])
        .arg(&journal)
        .output_within()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stdout)
    );
}
