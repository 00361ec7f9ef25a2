//! Resources named by host name (issue 12), end to end: a real DNS server (dnsmasq) in
//! the test host's namespace answers A and AAAA with a one-second TTL; the agent protects
//! every address the name resolves to, follows a change while workers connect (the new
//! addresses redirected, the removed one no longer, the kept one never missing), keeps
//! the last addresses when the DNS server is gone, and does not start when a name does
//! not resolve. `check`, `status` and the journal show what the name resolved to; the
//! certificates default to the host name (a worker verifying it by name gets in).

use std::{
    net::{IpAddr, SocketAddr},
    process::Command,
    sync::atomic::{AtomicBool, Ordering},
    time::Duration,
};

use pam_e2e::{
    Agent, Cgroup, OutputWithin, Report, ResourceSpec, TestHost, WorkerOpts, agent_bin,
    dns::DnsServer, require_root, wait_for, worker,
};
use serde_json::Value;

const PORT: u16 = 7000;
const NAME: &str = "db.pamtest.internal";

fn governed(cg: &Cgroup) -> WorkerOpts<'_> {
    WorkerOpts {
        cgroup: Some(cg),
        ..Default::default()
    }
}

fn resolver(dns: &DnsServer) -> String {
    format!(
        "[resolver]\nnameservers = [\"{}\"]\nmin_interval_ms = 200\ninterval_s = 5\n",
        dns.addr
    )
}

/// Went through the agent: the worker's socket was rewritten to the loopback listener.
fn redirected(r: &Report) -> bool {
    r.ok() && (r.local().starts_with("127.") || r.local().starts_with("[::1]"))
}

/// Went straight to the test host, around the agent.
fn direct(r: &Report) -> bool {
    r.ok() && (r.local().starts_with("10.") || r.local().starts_with("[fd00:"))
}

fn addresses(record: &Value, field: &str) -> Vec<String> {
    record[field]
        .as_array()
        .map(|a| a.iter().map(|v| v.as_str().unwrap().to_owned()).collect())
        .unwrap_or_default()
}

fn check(agent: &Agent) -> (bool, String) {
    let out = Command::new(agent_bin())
        .args(["check", "--config"])
        .arg(&agent.config)
        .output_within()
        .unwrap();
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr),
    )
}

#[test]
fn a_host_name_resource_follows_its_addresses_v4_and_v6() {
    if !require_root("hostnames") {
        return;
    }
    let mut host = TestHost::new().expect("test host");
    host.serve_echo(&[PORT]).expect("echo server");
    let (v4b, v6b) = host.add_second_addresses().expect("second addresses");
    let (v4a, v6a) = (IpAddr::V4(host.v4), IpAddr::V6(host.v6));
    let (v4b, v6b) = (IpAddr::V4(v4b), IpAddr::V6(v6b));
    let mut dns = DnsServer::start(&host, &[(NAME, v4a), (NAME, v6a)]).expect("dnsmasq");
    let cg = Cgroup::new("hostname").expect("cgroup");
    let agent = Agent::start_with(
        &[&cg],
        &[ResourceSpec::tcp("db", NAME, PORT)],
        &resolver(&dns),
    )
    .expect("agent");
    let to = |ip: IpAddr| SocketAddr::new(ip, PORT);

    // What it resolved to: in `check`, in `status` (the kernel's map), on record.
    let (ok, out) = check(&agent);
    assert!(ok, "{out}");
    assert!(
        out.contains(&format!(
            "protects: db {NAME} port {PORT} (tcp)\n            resolves to {v4a}, {v6a} (TTL 1 s)"
        )),
        "{out}"
    );
    let (code, out) = agent.status();
    assert_eq!(code, 0, "{out}");
    assert!(
        out.contains(&format!(
            "resource:  db {NAME} port {PORT}: protected: {v4a}, {v6a}"
        )),
        "{out}"
    );
    let first = agent.records("resource_resolved");
    assert_eq!(first.len(), 1, "{first:#?}");
    assert_eq!(first[0]["host"], NAME);
    assert_eq!(
        addresses(&first[0], "addresses"),
        [v4a.to_string(), v6a.to_string()]
    );

    // Every address of the name is protected, v4 and v6; the host's other addresses
    // are not (yet).
    for ip in [v4a, v6a] {
        let r = worker(to(ip), governed(&cg));
        assert!(redirected(&r), "{ip}: {:?}", r.0);
        let (opened, _) = agent.session_of_pid(r.pid()).expect("session on record");
        assert_eq!(opened["resource"]["name"], "db");
    }
    for ip in [v4b, v6b] {
        let r = worker(to(ip), governed(&cg));
        assert!(direct(&r), "{ip} is not the name's yet: {:?}", r.0);
    }

    // The name moves: IPv4 .2 -> .3, IPv6 gains ::3 and keeps ::2. Workers keep
    // connecting to the kept address all along: not one of them may go around the agent.
    let stop = AtomicBool::new(false);
    let reports = std::thread::scope(|scope| {
        let kept = scope.spawn(|| {
            let mut reports = Vec::new();
            while !stop.load(Ordering::Relaxed) {
                reports.push(worker(to(v6a), governed(&cg)));
            }
            reports
        });
        dns.set(&[(NAME, v4b), (NAME, v6a), (NAME, v6b)])
            .expect("new records");
        let wanted = [v4b.to_string(), v6a.to_string(), v6b.to_string()];
        let records = wait_for(
            "the resource_resolved record of the new addresses",
            Duration::from_secs(30),
            || {
                let all = agent.records("resource_resolved");
                all.iter()
                    .any(|r| addresses(r, "addresses") == wanted)
                    .then_some(all)
            },
        );
        // Usually one record; two when the A and AAAA answers straddled the server's
        // reload. Either way: added the new addresses, removed the old one, nothing else.
        let (mut added, mut removed): (Vec<String>, Vec<String>) = (vec![], vec![]);
        for r in &records[1..] {
            added.extend(addresses(r, "added"));
            removed.extend(addresses(r, "removed"));
        }
        added.sort();
        removed.sort();
        assert_eq!(added, [v4b.to_string(), v6b.to_string()], "{records:#?}");
        assert_eq!(removed, [v4a.to_string()], "{records:#?}");
        // The kernel's map follows the record: wait until status shows it.
        wait_for(
            "status to show the new addresses",
            Duration::from_secs(30),
            || {
                let (_, out) = agent.status();
                out.contains(&format!(
                    "resource:  db {NAME} port {PORT}: protected: {v4b}, {v6a}, {v6b}"
                ))
                .then_some(())
            },
        );
        // A few more connections to the kept address after the change, then stop.
        std::thread::sleep(Duration::from_millis(300));
        stop.store(true, Ordering::Relaxed);
        kept.join().unwrap()
    });
    assert!(!reports.is_empty());
    for r in &reports {
        assert!(
            redirected(r),
            "a connection to the kept address {v6a} went around the agent: {:?}",
            r.0
        );
    }

    // Workers connecting by the new addresses are redirected; the old one is no longer
    // protected.
    for ip in [v4b, v6b, v6a] {
        let r = worker(to(ip), governed(&cg));
        assert!(redirected(&r), "{ip}: {:?}", r.0);
        let (opened, _) = agent.session_of_pid(r.pid()).expect("session on record");
        assert_eq!(opened["resource"]["name"], "db");
        assert_eq!(opened["destination"], to(ip).to_string());
    }
    let r = worker(to(v4a), governed(&cg));
    assert!(direct(&r), "{v4a} left the name: {:?}", r.0);
    assert!(agent.session_of_pid(r.pid()).is_none());

    // The DNS server goes away: the last addresses stay protected (fail closed), and the
    // failure is on record once.
    let resolutions = agent.records("resource_resolved").len();
    dns.stop();
    let error = wait_for(
        "an error record of the failed resolution",
        Duration::from_secs(60),
        || {
            agent
                .records("error")
                .into_iter()
                .find(|e| e["component"] == "resolver")
        },
    );
    let message = error["message"].as_str().unwrap();
    assert!(
        message.contains("resource `db`") && message.contains("stay protected"),
        "{message}"
    );
    let r = worker(to(v4b), governed(&cg));
    assert!(redirected(&r), "{:?}", r.0);
    let (code, out) = agent.status();
    assert_eq!(code, 0, "{out}");
    assert!(
        out.contains(&format!("protected: {v4b}, {v6a}, {v6b}")),
        "{out}"
    );
    assert_eq!(agent.records("resource_resolved").len(), resolutions);
    // This run's records, exported as OCSF, validate against the schema.
    let kinds = agent.assert_ocsf_export_valid();
    assert!(kinds.contains("resource_resolved"), "{kinds:?}");
}

#[test]
fn a_host_name_that_does_not_resolve_stops_the_start_naming_the_resource() {
    if !require_root("hostnames") {
        return;
    }
    let host = TestHost::new().expect("test host");
    let dns = DnsServer::start(&host, &[(NAME, IpAddr::V4(host.v4))]).expect("dnsmasq");
    let cg = Cgroup::new("hostname-nx").expect("cgroup");
    let err = Agent::start_with(
        &[&cg],
        &[
            ResourceSpec::tcp("db", NAME, PORT),
            ResourceSpec::tcp("ghost", "nothing.pamtest.internal", PORT),
        ],
        &resolver(&dns),
    )
    .err()
    .expect("the agent must not start with a resource it cannot protect");
    let text = format!("{err:#}");
    assert!(
        text.contains("resource `ghost`") && text.contains("nothing.pamtest.internal"),
        "{text}"
    );
    assert!(text.contains("would be unprotected"), "{text}");
}

#[test]
fn a_host_name_resource_names_the_certificates_by_its_host() {
    if !require_root("hostnames") {
        return;
    }
    use pam_e2e::postgres::{CREW_POLICY, PgServer, SERVER_DNS_NAME};
    const PASSWORD: &str = "pg-hostname-password";
    let host = TestHost::new().expect("test host");
    let pg = PgServer::start_tls(&host, 5432, PASSWORD).expect("postgres with ssl=on");
    let server_ca = pg.server_ca.clone().unwrap();
    let dns = DnsServer::start(&host, &[(SERVER_DNS_NAME, IpAddr::V4(host.v4))]).expect("dnsmasq");
    let cg = Cgroup::new("hostname-tls").expect("cgroup");
    let ca_dir = tempfile::tempdir().unwrap();
    // No tls_names, no upstream_server_name: both default to the host name.
    let agent = Agent::start_with(
        &[&cg],
        &[ResourceSpec::postgres("db", SERVER_DNS_NAME, 5432)
            .with("upstream_tls = \"verify-full\"")
            .with(format!("upstream_ca = \"{}\"", server_ca.display()))],
        &format!(
            "{}\n[worker_tls]\nca_cert = \"{}\"\nca_key = \"{}\"\n{CREW_POLICY}",
            resolver(&dns),
            ca_dir.path().join("ca.pem").display(),
            ca_dir.path().join("ca.key").display()
        ),
    )
    .expect("agent");
    // A worker that verifies the name it connects by (libpq: host= is the name checked,
    // hostaddr= the address dialed) gets in; the server is reached over verified TLS.
    let out = Command::new(agent_bin())
        .args(["exec", "--cgroup"])
        .arg(&cg.path)
        .args(["--", "psql", "-XAt", "-c"])
        .arg("select ssl from pg_stat_ssl where pid = pg_backend_pid()")
        .arg(format!(
            "host={SERVER_DNS_NAME} hostaddr={} sslmode=verify-full sslrootcert={} \
             channel_binding=disable user=postgres dbname=postgres password={PASSWORD} \
             connect_timeout=5",
            host.v4,
            ca_dir.path().join("ca.pem").display()
        ))
        .output_within()
        .unwrap();
    let (stdout, stderr) = (
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr),
    );
    assert!(out.status.success(), "{stdout}{stderr}\n{}", agent.log());
    assert_eq!(stdout, "t\n");
    let opened = agent.records("session_opened");
    assert_eq!(opened.len(), 1, "{opened:#?}");
    assert_eq!(opened[0]["resource"]["name"], "db");
}
