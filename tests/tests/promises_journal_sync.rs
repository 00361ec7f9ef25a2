//! A journal whose flush fails fails closed (issue 16), end to end: with `sync = "always"`
//! the agent acknowledges a record only after an `fdatasync` covering it. A shim loaded
//! into the agent (`tests/shims/fail_sync.c`, built here with the system `cc`) makes the
//! journal segments' `fdatasync`/`fsync` fail with EIO from a moment the test chooses, as
//! a failing disk would. From then on no record is accepted: an open session's next
//! statement never reaches the server, and no new session is relayed at all; each worker
//! sees an error and the agent's log says why. The server's own statement log shows what
//! reached it.

use std::{path::Path, process::Command};

use pam_e2e::{
    Agent, Cgroup, OutputWithin, ResourceSpec, TestHost, postgres::PgServer, require_root,
    session::Session,
};

const PASSWORD: &str = "pg-sync-password";
const POLICY: &str = "[[policy.rules]]\nname = \"all\"\naction = \"allow\"\nkinds = [\"select\"]\n";

/// Builds the shim into `dir` with the system C compiler.
fn build_shim(dir: &Path) -> std::path::PathBuf {
    let src = concat!(env!("CARGO_MANIFEST_DIR"), "/shims/fail_sync.c");
    let so = dir.join("fail_sync.so");
    let out = Command::new("cc")
        .args(["-shared", "-fPIC", "-O2", "-Wall", "-Werror", "-o"])
        .arg(&so)
        .arg(src)
        .arg("-ldl")
        .output_within()
        .expect("cc");
    assert!(
        out.status.success(),
        "building the shim: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    so
}

fn psql(host: &str, cg: &Cgroup, tag: &str) -> (bool, String, String) {
    pam_e2e::postgres::governed_select(cg, host, PASSWORD, tag)
}

#[test]
fn a_failed_journal_flush_refuses_every_later_record_and_relays_nothing() {
    if !require_root("promises_journal_sync") {
        return;
    }
    let host = TestHost::new().expect("test host");
    let pg = PgServer::start(&host, 5432, PASSWORD).expect("postgres");
    pg.log_every_statement();
    let scratch = tempfile::tempdir().unwrap();
    let shim = build_shim(scratch.path());
    let trigger = scratch.path().join("fail-sync-now");
    let cg = Cgroup::new("jsync").expect("cgroup");
    let mut agent = Agent::start_with_journal(
        &[&cg],
        &[ResourceSpec::postgres("db", host.v4, 5432)],
        "sync = \"always\"",
        POLICY,
    )
    .expect("agent");
    // Again, with the shim loaded (the kit starts agents without extra environment).
    agent.stop().expect("stop");
    agent.env = vec![
        ("LD_PRELOAD".into(), shim.display().to_string()),
        ("PAM_TEST_FAIL_SYNC".into(), trigger.display().to_string()),
    ];
    agent.restart().expect("agent with the shim");
    let v4 = host.v4.to_string();
    let uri = format!("postgresql://postgres:{PASSWORD}@{v4}:5432/postgres");

    // Control: with flushes working, a new session and an open one are served.
    let (ok, stdout, stderr) = psql(&v4, &cg, "flushed");
    assert!(ok, "{stderr}");
    assert_eq!(stdout, "flushed\n");
    let mut open = Session::open(&cg.path, &uri);
    assert_eq!(
        open.rows("select 'open-before'"),
        [[serde_json::json!("open-before")]]
    );
    let log = pg.log();
    assert!(log.contains("statement: select 'flushed'"), "{log}");
    assert!(log.contains("statement: select 'open-before'"), "{log}");
    let connections_before = log.matches("connection authorized").count();
    assert!(connections_before > 0, "the server logs connections");

    // The disk fails.
    std::fs::write(&trigger, "").unwrap();

    // The open session's next statement cannot be put on record: not relayed.
    // The worker is told why, then its connection closes: the agent's fatal error.
    let got = open.ask("select 'open-after'");
    assert_eq!(
        got,
        serde_json::json!({"closed": "pam-agent: audit journal unavailable: journal write \
            failed: Input/output error (os error 5); the statement was not run"}),
        "the open session after the journal failed"
    );
    // Each new session after it: refused before anything is relayed.
    for tag in ["after-1", "after-2"] {
        let (ok, stdout, stderr) = psql(&v4, &cg, tag);
        assert!(
            !ok && stdout.is_empty(),
            "{tag} was served: {stdout} {stderr}"
        );
        // Closed before authentication: the session could not be put on record.
        assert!(
            stderr.contains("server closed the connection unexpectedly"),
            "{tag}: {stderr}"
        );
    }
    let log = pg.log();
    for tag in ["open-after", "after-1", "after-2"] {
        assert!(
            !log.contains(&format!("select '{tag}'")),
            "{tag} reached the server: {log}"
        );
    }
    assert_eq!(
        log.matches("connection authorized").count(),
        connections_before,
        "a new connection reached the server: {log}"
    );

    // The shim did fail the agent's flushes (the test would prove nothing otherwise),
    // and the agent says why it refuses.
    let hits = std::fs::read_to_string(&trigger).unwrap();
    assert!(
        hits.lines()
            .next()
            .is_some_and(|l| l.starts_with("fdatasync ") && l.ends_with(".seg EIO")),
        "the shim intercepted no flush of a segment: {hits:?}"
    );
    let agent_log = agent.log();
    assert!(
        agent_log.contains(
            "journal: fdatasync failed; the journal refuses every record until a restart"
        ),
        "{agent_log}"
    );
    assert!(
        agent_log.contains("cannot journal session; closing it"),
        "{agent_log}"
    );
    drop(open);
    let _ = agent.stop();
}
