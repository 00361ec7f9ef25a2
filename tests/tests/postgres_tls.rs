//! TLS end to end, through the real eBPF redirect and the real agent binary: workers
//! verify the agent's certificate (made by its persistent CA for the address they
//! dialed), and the agent speaks TLS to a PostgreSQL 15 server with `ssl = on` when the
//! resource says so. Both sides are independent.

use std::{os::unix::process::CommandExt, path::Path, process::Command};

use std::time::Duration;

use pam_e2e::SpawnWatched;
use pam_e2e::{
    Agent, CHILD_TIMEOUT, Cgroup, OutputWithin, ResourceSpec, TestHost, Watchdog, agent_bin,
    postgres::{CREW_POLICY, PgServer, SERVER_DNS_NAME},
    require_root, wait_for,
};

const PASSWORD: &str = "pg-tls-password";
const SSL_OF_THIS_BACKEND: &str = "select ssl from pg_stat_ssl where pid = pg_backend_pid()";

/// psql in the governed cgroup with a full conninfo string: (success, stdout, stderr).
fn psql(cg: &Cgroup, conninfo: &str, commands: &[&str]) -> (bool, String, String) {
    let mut c = Command::new(agent_bin());
    c.args(["exec", "--cgroup"])
        .arg(&cg.path)
        .args([
            "--",
            "psql",
            "-XAt",
            "-v",
            "ON_ERROR_STOP=1",
            "-v",
            "VERBOSITY=verbose",
        ])
        .arg(format!(
            "{conninfo} user=postgres dbname=shop password={PASSWORD} connect_timeout=5"
        ));
    for sql in commands {
        c.args(["-c", sql]);
    }
    let out = c.output_within().expect("psql");
    pam_e2e::printed(&out)
}

fn shop(pg: &PgServer) {
    pg.admin_sql("postgres", "create database shop").unwrap();
    pg.admin_sql(
        "shop",
        "create table orders(id int primary key, total numeric(10,2));
         insert into orders select g, g * 2.5 from generate_series(1, 100) g;",
    )
    .unwrap();
}

fn worker_tls(dir: &Path) -> String {
    format!(
        "\n[worker_tls]\nca_cert = \"{}\"\nca_key = \"{}\"\n",
        dir.join("ca.pem").display(),
        dir.join("ca.key").display()
    )
}

#[test]
fn workers_verify_the_agent_and_the_agent_verifies_the_server() {
    if !require_root("postgres_tls") {
        return;
    }
    let host = TestHost::new().expect("test host");
    let pg = PgServer::start_tls(&host, 5432, PASSWORD).expect("postgres with ssl=on");
    shop(&pg);
    let server_ca = pg.server_ca.clone().unwrap();
    let cg = Cgroup::new("pgtls").expect("cgroup");
    let ca_dir = tempfile::tempdir().unwrap();
    let agent = Agent::start_with(
        &[&cg],
        &[
            // TLS toward the server, verified against its CA and the destination IP.
            ResourceSpec::postgres("shop-db", host.v4, 5432)
                .with(format!("tls_names = [\"{SERVER_DNS_NAME}\"]"))
                .with("upstream_tls = \"verify-full\"")
                .with(format!("upstream_ca = \"{}\"", server_ca.display())),
            // Plain TCP toward the server.
            ResourceSpec::postgres("shop-db-v6", host.v6, 5432),
        ],
        &format!("{}{CREW_POLICY}", worker_tls(ca_dir.path())),
    )
    .expect("agent");

    // The agent made its CA on first start: key 0600, certificate shown by the CLI.
    let agent_ca = ca_dir.path().join("ca.pem");
    use std::os::unix::fs::PermissionsExt;
    let mode = std::fs::metadata(ca_dir.path().join("ca.key"))
        .unwrap()
        .permissions()
        .mode();
    assert_eq!(mode & 0o777, 0o600);
    let show = Command::new(agent_bin())
        .args(["ca", "show", "--config"])
        .arg(&agent.config)
        .output_within()
        .unwrap();
    assert!(show.status.success());
    assert_eq!(
        String::from_utf8_lossy(&show.stdout),
        std::fs::read_to_string(&agent_ca).unwrap()
    );
    let init = Command::new(agent_bin())
        .args(["ca", "init", "--config"])
        .arg(&agent.config)
        .output_within()
        .unwrap();
    assert!(
        String::from_utf8_lossy(&init.stdout).contains("kept the existing"),
        "{init:?}"
    );

    let root = format!("sslrootcert={}", agent_ca.display());
    let v4 = host.v4.to_string();
    let v6 = host.v6.to_string();

    // TLS on both sides: SCRAM channel binding cannot pass through (the worker binds to
    // the agent's certificate); the agent says so instead of a failed proof.
    let (ok, _, err) = psql(
        &cg,
        &format!("host={v4} sslmode=verify-full {root}"),
        &["select 1"],
    );
    assert!(!ok);
    assert!(err.contains("channel_binding=disable"), "{err}");
    let root = format!("{root} channel_binding=disable");

    // verify-full by IP address: the agent's leaf names the address psql dialed, and the
    // server sees TLS from the agent.
    let (ok, out, err) = psql(
        &cg,
        &format!("host={v4} sslmode=verify-full {root}"),
        &[
            "\\conninfo",
            "select count(*) from orders",
            SSL_OF_THIS_BACKEND,
        ],
    );
    assert!(ok, "{out}{err}\n{}", agent.log());
    assert!(out.contains("SSL connection"), "{out}");
    assert!(out.ends_with("100\nt\n"), "{out}");

    // verify-full by host name: the resource's tls_names are in the leaf too.
    let (ok, out, err) = psql(
        &cg,
        &format!("host={SERVER_DNS_NAME} hostaddr={v4} sslmode=verify-full {root}"),
        &[SSL_OF_THIS_BACKEND],
    );
    assert!(ok, "{out}{err}");
    assert_eq!(out, "t\n");

    // A worker in plain text, the server still reached over TLS.
    let (ok, out, err) = psql(
        &cg,
        &format!("host={v4} sslmode=disable"),
        &[SSL_OF_THIS_BACKEND],
    );
    assert!(ok, "{out}{err}");
    assert_eq!(out, "t\n");

    // TLS from the worker (IPv6 address in the leaf), plain TCP to the server.
    let (ok, out, err) = psql(
        &cg,
        &format!("host={v6} sslmode=verify-full {root}"),
        &["\\conninfo", SSL_OF_THIS_BACKEND],
    );
    assert!(ok, "{out}{err}");
    assert!(
        out.contains("SSL connection") && out.ends_with("f\n"),
        "{out}"
    );
    let (ok, out, err) = psql(
        &cg,
        &format!("host={v6} sslmode=require"),
        &[SSL_OF_THIS_BACKEND],
    );
    assert!(ok, "{out}{err}");
    assert_eq!(out, "f\n");

    // Trusting another CA (the server's): the agent's certificate is refused.
    let (ok, _, err) = psql(
        &cg,
        &format!(
            "host={v4} sslmode=verify-full sslrootcert={}",
            server_ca.display()
        ),
        &["select 1"],
    );
    assert!(!ok);
    assert!(err.contains("certificate verify failed"), "{err}");

    // A cancel request for a session whose server link is TLS goes over TLS too and
    // reaches the right backend.
    let sleeper = Command::new(agent_bin())
        .args(["exec", "--cgroup"])
        .arg(&cg.path)
        .args(["--", "psql", "-XAt"])
        .arg(format!(
            "host={v4} sslmode=verify-full {root} user=postgres dbname=shop password={PASSWORD}"
        ))
        .args(["-c", "select pg_sleep(120)"])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .process_group(0)
        .spawn_watched()
        .unwrap();
    let _watch = Watchdog::new(sleeper.id(), "psql pg_sleep(120)".into(), CHILD_TIMEOUT);
    let running = "select count(*) from pg_stat_activity where query = 'select pg_sleep(120)'";
    wait_for(
        "pg_sleep to start upstream",
        Duration::from_secs(20),
        || (pg.admin_sql("shop", running).unwrap().trim() == "1").then_some(()),
    );
    // SAFETY: signalling our own child (psql, exec'd by pam-agent exec).
    unsafe { libc::kill(sleeper.id() as i32, libc::SIGINT) };
    let out = sleeper.wait_with_output().unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("canceling statement due to user request"),
        "{err}"
    );

    // Statements are still judged over TLS.
    let (ok, _, err) = psql(
        &cg,
        &format!("host={v4} sslmode=verify-full {root}"),
        &["delete from orders"],
    );
    assert!(
        !ok && err.starts_with(
            "ERROR:  42501: pam-agent refused the statement (rule \"no-unbounded-writes\")"
        ),
        "{err}"
    );
    assert_eq!(
        pg.admin_sql("shop", "select count(*) from orders")
            .unwrap()
            .trim(),
        "100"
    );

    let (ok, out) = agent.verify_journal();
    assert!(ok, "{out}");
}

#[test]
fn a_server_without_tls_is_never_used_in_plain_text() {
    if !require_root("postgres_tls") {
        return;
    }
    let host = TestHost::new().expect("test host");
    let pg = PgServer::start(&host, 5432, PASSWORD).expect("postgres with ssl=off");
    shop(&pg);
    let cg = Cgroup::new("pgnotls").expect("cgroup");
    let agent = Agent::start_with(
        &[&cg],
        &[
            ResourceSpec::postgres("shop-db", host.v4, 5432).with("upstream_tls = \"require\""),
            ResourceSpec::postgres("shop-db-v6", host.v6, 5432),
        ],
        CREW_POLICY,
    )
    .expect("agent");

    let (ok, out, err) = psql(
        &cg,
        &format!("host={} sslmode=disable", host.v4),
        &["select 1"],
    );
    assert!(!ok, "{out}");
    assert!(
        err.contains("requires TLS to the server") && err.contains("does not accept TLS"),
        "{err}"
    );
    // The close record is written after the worker got its error: wait for it.
    let refused = |r: &serde_json::Value| {
        r["end"] == "error"
            && r["detail"]
                .as_str()
                .is_some_and(|d| d.contains("does not accept TLS"))
    };
    wait_for(
        "the session_closed record of the refused plain-text session",
        Duration::from_secs(10),
        || agent.records("session_closed").into_iter().find(refused),
    );
    assert!(pg.log_path().exists());

    // No [worker_tls]: SSLRequest is answered 'N' as PostgreSQL does with ssl=off, so a
    // worker that requires TLS fails clearly and one that prefers it goes on in clear.
    let v6 = host.v6.to_string();
    let (ok, _, err) = psql(&cg, &format!("host={v6} sslmode=require"), &["select 1"]);
    assert!(!ok);
    assert!(err.contains("server does not support SSL"), "{err}");
    let (ok, out, err) = psql(&cg, &format!("host={v6} sslmode=prefer"), &["select 1"]);
    assert!(ok && out == "1\n", "{out}{err}");
}
