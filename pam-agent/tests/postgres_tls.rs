//! TLS toward the worker with a certificate from the agent's CA: psql verifies it
//! (`sslmode=verify-full`) and its session is encrypted end to end to the proxy.

mod postgres_support;

use pam_agent::tls::AgentCa;
use postgres_support::*;

#[test]
fn psql_verifies_the_agent_certificate() {
    let pg = PgServer::start();
    let ca = AgentCa::generate("pam-agent test CA").unwrap();
    let ca_file = pg.dir().join("agent-ca.pem");
    std::fs::write(&ca_file, ca.cert_pem()).unwrap();
    let mut opts = Options::policy(CREW_POLICY);
    opts.tls = Some(
        ca.acceptor(
            &["localhost".into(), "127.0.0.1".into()],
            std::time::Duration::from_secs(3600),
            b"postgresql",
        )
        .unwrap(),
    );
    let proxy = Proxy::with(&pg, opts);

    let conninfo = format!(
        "host=localhost port={} user=postgres dbname=postgres password={PASSWORD} sslmode=verify-full sslrootcert={}",
        proxy.port,
        ca_file.display()
    );
    let out = std::process::Command::new("psql")
        .args(["-X", "-At", "-v", "VERBOSITY=verbose"])
        .arg(&conninfo)
        .args([
            "-c",
            "\\conninfo",
            "-c",
            "SELECT count(*) FROM orders",
            "-c",
            "DELETE FROM orders",
        ])
        .output_within()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stdout.contains("SSL connection (protocol: TLSv1.3"),
        "{stdout}{stderr}"
    );
    assert!(stdout.contains("\n5\n"), "{stdout}");
    assert!(
        stderr.contains(
            "ERROR:  42501: pam-agent refused the statement (rule \"no-unbounded-writes\")"
        ),
        "{stderr}"
    );

    // A certificate from another CA is not accepted by a verifying client.
    let other = AgentCa::generate("someone else").unwrap();
    let other_file = pg.dir().join("other-ca.pem");
    std::fs::write(&other_file, other.cert_pem()).unwrap();
    let out = std::process::Command::new("psql")
        .args(["-X", "-At"])
        .arg(conninfo.replace(
            &ca_file.display().to_string(),
            &other_file.display().to_string(),
        ))
        .args(["-c", "SELECT 1"])
        .output_within()
        .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("certificate verify failed"));

    // Clients that do not ask for TLS still work.
    assert!(proxy.psql("SELECT 1").ok);
}
