//! Limits against a noisy neighbour, end to end: one governed worker opening sessions in
//! a loop gets PostgreSQL's own "too many connections" (53300) past its limit, the
//! database never sees the extra connections, other principals still get in, and the
//! journal holds one record per burst, not one per connection.

use std::{
    process::{Command, Stdio},
    time::{Duration, Instant},
};

use pam_e2e::{Agent, Cgroup, ResourceSpec, TestHost, agent_bin, postgres::PgServer, require_root};

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
                .spawn()
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
        let out = psql(&noisy, &v4, "select 1").output().unwrap();
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
    let out = psql(&quiet, &v4, "select 42").output().unwrap();
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), "42");
    // One journal record for the burst, naming the principal.
    let refused = agent.records("connection_refused");
    assert_eq!(refused.len(), 1, "{refused:#?}");
    let reason = refused[0]["reason"].as_str().unwrap();
    assert!(
        reason.contains("too many sessions for this principal (limit 2)")
            && reason.contains(&format!("cgroup id {}", noisy.id())),
        "{reason}"
    );
    for mut h in held {
        let _ = h.kill();
        let _ = h.wait();
    }
}
