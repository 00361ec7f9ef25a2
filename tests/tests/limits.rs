//! Limits against a noisy neighbour, end to end: one governed worker opening sessions in
//! a loop gets PostgreSQL's own "too many connections" (53300) past its limit, the
//! database never sees the extra connections, other principals still get in, and the
//! journal holds a record per burst and interval with a count, not one per connection;
//! a connect-and-close flood is a handful of records and log lines.

use std::{
    process::{Command, Stdio},
    time::{Duration, Instant},
};

use pam_e2e::SpawnWatched;
use pam_e2e::{
    Agent, Cgroup, OutputWithin, ResourceSpec, TestHost, agent_bin, postgres::PgServer,
    require_root, wait_for,
};

const PASSWORD: &str = "pg-limits-password";

fn psql(cg: &Cgroup, host: &str, sql: &str) -> Command {
    let mut c = Command::new(agent_bin());
    c.args(["exec", "--cgroup"])
        .arg(&cg.path)
        .args([
            "--", "psql", "-h", host, "-U", "postgres", "-d", "postgres", "-XAtc", sql,
        ])
        .env("PGPASSWORD", PASSWORD)
        .env("PGCONNECT_TIMEOUT", "5");
    c
}

/// Backends of the database serving clients, as PostgreSQL counts them.
fn client_backends(pg: &PgServer) -> usize {
    pg.admin_sql(
        "postgres",
        "select count(*) from pg_stat_activity where backend_type = 'client backend'",
    )
    .unwrap()
    .trim()
    .parse()
    .unwrap()
}

#[test]
fn one_principal_past_its_limit_gets_53300_and_the_others_still_get_in() {
    if !require_root("limits") {
        return;
    }
    let host = TestHost::new().expect("test host");
    let pg = PgServer::start(&host, 5432, PASSWORD).expect("postgres");
    let (noisy, quiet) = (
        Cgroup::new("noisy").expect("cgroup"),
        Cgroup::new("quiet").expect("cgroup"),
    );
    let agent = Agent::start_with_listener(
        &[&noisy, &quiet],
        &[ResourceSpec::postgres("db", host.v4, 5432)],
        "max_sessions_per_principal = 2",
        // pg_sleep is volatile.
        "[[policy.rules]]\nname = \"all\"\naction = \"allow\"\nkinds = [\"select\"]\npermit_flags = [\"volatile_function\"]\n",
    )
    .expect("agent");
    let v4 = host.v4.to_string();
    // Two sessions of the noisy principal hold their places.
    let held: Vec<_> = (0..2)
        .map(|_| {
            psql(&noisy, &v4, "select pg_sleep(60)")
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn_watched()
                .unwrap()
        })
        .collect();
    let deadline = Instant::now() + Duration::from_secs(10);
    while client_backends(&pg) < 3 {
        assert!(Instant::now() < deadline, "the two sessions did not open");
        std::thread::sleep(Duration::from_millis(50));
    }
    let before = client_backends(&pg);
    // Twenty more from the same principal: each refused as a full server refuses.
    for _ in 0..20 {
        let out = psql(&noisy, &v4, "select 1").output_within().unwrap();
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success());
        assert!(
            err.contains("FATAL:  pam-agent: too many sessions for this principal (limit 2)"),
            "{err}"
        );
    }
    assert_eq!(
        client_backends(&pg),
        before,
        "refused sessions cost the database nothing"
    );
    // Another principal (another cgroup) is not affected.
    let out = psql(&quiet, &v4, "select 42").output_within().unwrap();
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), "42");
    // The burst on record without a record per connection: the first refusal at once,
    // the other 19 counted into one record when the interval ends (no later event
    // needed), each naming the principal.
    let refused = agent.records("connection_refused");
    assert_eq!(refused[0]["count"], 1, "the first at once: {refused:#?}");
    let refused = wait_for(
        "the burst's count on record",
        Duration::from_secs(60),
        || {
            let all = agent.records("connection_refused");
            (refused_total(&all) >= 20).then_some(all)
        },
    );
    assert_eq!(refused_total(&refused), 20, "{refused:#?}");
    assert!(refused.len() <= 3, "{refused:#?}");
    for r in &refused {
        let reason = r["reason"].as_str().unwrap();
        assert!(
            reason.contains("too many sessions for this principal (limit 2)")
                && reason.contains(&format!("cgroup id {}", noisy.id())),
            "{reason}"
        );
    }
    for mut h in held {
        let _ = h.kill();
        let _ = h.wait();
    }
}

/// Sum of the `count`s of `connection_refused` records (a record without one is one).
fn refused_total(records: &[serde_json::Value]) -> u64 {
    records
        .iter()
        .map(|r| r["count"].as_u64().unwrap_or(1))
        .sum()
}

#[test]
fn a_connect_and_close_flood_is_a_handful_of_records_and_a_bounded_log() {
    if !require_root("limits") {
        return;
    }
    const ATTEMPTS: u64 = 2000;
    let mut host = TestHost::new().expect("test host");
    host.serve_echo(&[7000]).expect("echo server");
    let cg = Cgroup::new("flood").expect("cgroup");
    let mut agent = Agent::start_with_journal(
        &[&cg],
        &[ResourceSpec::tcp("echo", host.v4, 7000)],
        "fsync = false",
        "",
    )
    .expect("agent");
    // One governed worker: connect and close, again and again.
    let out = Command::new(agent_bin())
        .args(["exec", "--cgroup"])
        .arg(&cg.path)
        .args(["--"])
        .arg(pam_e2e::peer_bin())
        .args(["connect-close", &host.addr4(7000).to_string()])
        .arg(ATTEMPTS.to_string())
        .output_within()
        .unwrap();
    let report: serde_json::Value =
        serde_json::from_slice(&out.stdout).expect("connect-close report");
    assert_eq!(report["connected"], ATTEMPTS, "{report}");
    // Every attempt is accounted for: refused (counted) or a session (a worker that
    // closed after the kernel recorded it, which the agent still attributes). The last
    // counts come with the interval's end, though no refusal follows them.
    let accounted = |journal: &[serde_json::Value]| {
        let refused: Vec<serde_json::Value> = journal
            .iter()
            .filter(|r| r["kind"] == "connection_refused")
            .cloned()
            .collect();
        let sessions = journal
            .iter()
            .filter(|r| r["kind"] == "session_opened")
            .count() as u64;
        (refused_total(&refused) + sessions, refused)
    };
    let refused = wait_for("every attempt on record", Duration::from_secs(60), || {
        let (n, refused) = accounted(&agent.journal());
        (n >= ATTEMPTS).then_some(refused)
    });
    agent.stop().unwrap();
    let journal = agent.journal();
    assert_eq!(accounted(&journal).0, ATTEMPTS, "{refused:#?}");
    eprintln!(
        "flood: {ATTEMPTS} connect-and-close -> {} connection_refused records, counts {:?}; log {} lines",
        refused.len(),
        refused
            .iter()
            .map(|r| r["count"].as_u64().unwrap())
            .collect::<Vec<_>>(),
        agent.log().lines().count()
    );
    assert!(
        refused.len() <= 6,
        "not coalesced: {} records for {ATTEMPTS} attempts",
        refused.len()
    );
    assert_eq!(
        refused[0]["count"], 1,
        "the first refusal is written at once"
    );
    for r in &refused {
        let reason = r["reason"].as_str().unwrap();
        assert!(
            reason.contains("closed before it could be identified"),
            "a connect-and-close is labelled as what it is: {reason}"
        );
    }
    // The log is bounded the same way: one line per record, not per attempt.
    let log = agent.log();
    let lines = log
        .lines()
        .filter(|l| l.contains("connection refused"))
        .count();
    assert_eq!(lines, refused.len(), "{log}");
    assert!(log.lines().count() < 60, "{log}");
    assert!(agent.verify_journal().0);
}
