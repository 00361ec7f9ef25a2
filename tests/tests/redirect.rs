//! The redirect, end to end: real eBPF attached to a real cgroup, real worker processes,
//! an echo server on a test host in its own network namespace, the real agent binary.
//! Each test builds its own host, cgroup and agent (own pin directory) and tears them
//! down on drop. Run as root, one test at a time (they share the kernel).

use pam_e2e::OutputWithin;
use pam_e2e::{Agent, Cgroup, ResourceSpec, TestHost, WorkerOpts, require_root, worker};

const PROTECTED: u16 = 7000;
const UNPROTECTED: u16 = 7001;

/// A host serving echo on both ports, a governed cgroup, and an agent protecting port
/// 7000 of the host (IPv4 and IPv6 addresses).
fn setup(tag: &str) -> (TestHost, Cgroup, Agent) {
    let mut host = TestHost::new().expect("test host");
    host.serve_echo(&[PROTECTED, UNPROTECTED])
        .expect("echo server");
    let cg = Cgroup::new(tag).expect("cgroup");
    let agent = Agent::start(
        &[&cg],
        &[
            ResourceSpec::tcp("echo-v4", host.v4, PROTECTED),
            ResourceSpec::tcp("echo-v6", host.v6, PROTECTED),
        ],
    )
    .expect("agent");
    (host, cg, agent)
}

fn governed(cg: &Cgroup) -> WorkerOpts<'_> {
    WorkerOpts {
        cgroup: Some(cg),
        ..Default::default()
    }
}

#[test]
fn governed_connects_by_ipv4_ipv6_and_v4_mapped_are_redirected_with_identity() {
    if !require_root("redirect") {
        return;
    }
    let (host, cg, agent) = setup("families");
    let cases = [
        (host.addr4(PROTECTED), "echo-v4", "127.0.0.1"),
        (host.addr6(PROTECTED), "echo-v6", "[::1]"),
        (host.addr_mapped(PROTECTED), "echo-v4", "[::ffff:127.0.0.1]"),
    ];
    for (dst, resource, proxy_side) in cases {
        let r = worker(
            dst,
            WorkerOpts {
                bytes: 100_000,
                ..governed(&cg)
            },
        );
        assert!(r.ok(), "{dst}: echo through the agent failed: {:?}", r.0);
        // The worker sees the address it asked for...
        assert_eq!(
            r.peer(),
            dst.to_string(),
            "getpeername must return the original"
        );
        // ...while its socket is really connected to the agent on loopback.
        assert!(
            r.local().starts_with(proxy_side),
            "{dst}: worker socket {} is not on the agent's loopback side",
            r.local()
        );

        let (opened, closed) = agent.session_of_pid(r.pid()).unwrap_or_else(|| {
            panic!(
                "{dst}: no session for pid {} in {:#?}",
                r.pid(),
                agent.journal()
            )
        });
        assert_eq!(opened["destination"], dst.to_string());
        assert_eq!(opened["resource"]["name"], resource);
        let p = &opened["principal"];
        assert_eq!(p["uid"], 0);
        assert_eq!(p["user"], "root");
        assert_eq!(p["comm"], "pam-testpeer");
        assert_eq!(p["cgroup_id"], cg.id());
        assert!(
            p["exe"]
                .as_str()
                .unwrap_or_default()
                .ends_with("pam-testpeer")
        );
        // The close record may trail the worker's exit by a moment.
        let closed = closed.or_else(|| {
            std::thread::sleep(std::time::Duration::from_millis(300));
            agent.session_of_pid(r.pid()).and_then(|(_, c)| c)
        });
        let closed = closed.expect("session_closed record");
        assert_eq!(closed["bytes_from_worker"], 100_000);
        assert_eq!(closed["bytes_to_worker"], 100_000);
        assert_eq!(closed["end"], "closed");
    }
}

#[test]
fn ungoverned_workers_and_unprotected_ports_go_direct() {
    if !require_root("redirect") {
        return;
    }
    let (host, cg, agent) = setup("direct");

    let outside = worker(host.addr4(PROTECTED), WorkerOpts::default());
    assert!(outside.ok(), "{:?}", outside.0);
    assert!(
        outside.local().starts_with("10."),
        "ungoverned worker must connect from its own address, got {}",
        outside.local()
    );

    let unprotected = worker(host.addr4(UNPROTECTED), governed(&cg));
    assert!(unprotected.ok(), "{:?}", unprotected.0);
    assert!(
        unprotected.local().starts_with("10."),
        "{}",
        unprotected.local()
    );

    let unprotected6 = worker(host.addr6(UNPROTECTED), governed(&cg));
    assert!(unprotected6.ok(), "{:?}", unprotected6.0);
    assert!(
        unprotected6.local().starts_with("[fd00:"),
        "{}",
        unprotected6.local()
    );

    for pid in [outside.pid(), unprotected.pid(), unprotected6.pid()] {
        assert!(
            agent.session_of_pid(pid).is_none(),
            "pid {pid} went through the agent"
        );
    }
    assert!(agent.records("session_opened").is_empty());
}

#[test]
fn governed_worker_running_as_an_unprivileged_user_is_captured() {
    if !require_root("redirect") {
        return;
    }
    let (host, cg, agent) = setup("unpriv");
    let r = worker(
        host.addr4(PROTECTED),
        WorkerOpts {
            uid: Some(65534),
            ..governed(&cg)
        },
    );
    assert!(r.ok(), "{:?}", r.0);
    assert_eq!(r.0["uid"], 65534);
    let (opened, _) = agent.session_of_pid(r.pid()).expect("session recorded");
    assert_eq!(opened["principal"]["uid"], 65534);
    assert_eq!(opened["principal"]["gid"], 65534);
    assert_eq!(opened["principal"]["user"], "nobody");
}

#[test]
fn stopped_or_killed_agent_fails_closed_and_restart_resumes_without_duplicates() {
    if !require_root("redirect") {
        return;
    }
    let (host, cg, mut agent) = setup("failclosed");
    let pins = agent.link_pins();
    // Two connect hooks on the governed cgroup, six programs on the cgroup2 root, and
    // sk_lookup on the host's network namespace.
    assert_eq!(pins.len(), 9, "one link per program: {pins:?}");
    let (code, out) = agent.status();
    assert_eq!(code, 0, "{out}");
    assert!(
        out.contains("enforced") && out.contains("agent running"),
        "{out}"
    );

    for crash in [false, true] {
        if crash {
            agent.kill().expect("kill -9");
        } else {
            agent.stop().expect("orderly stop");
        }
        // Governed connects to protected resources fail, on every address family.
        for dst in [
            host.addr4(PROTECTED),
            host.addr6(PROTECTED),
            host.addr_mapped(PROTECTED),
        ] {
            let r = worker(dst, governed(&cg));
            assert!(
                !r.ok(),
                "crash={crash}: {dst} reached the resource with the agent down"
            );
            assert_eq!(r.errno(), Some(i64::from(libc::ECONNREFUSED)), "{:?}", r.0);
        }
        let (code, out) = agent.status();
        assert_eq!(code, 3, "{out}");
        assert!(
            out.contains(": enforced") && out.contains("agent NOT running"),
            "{out}"
        );
        // Everything else is untouched.
        assert!(worker(host.addr4(PROTECTED), WorkerOpts::default()).ok());
        assert!(worker(host.addr4(UNPROTECTED), governed(&cg)).ok());

        agent.restart().expect("restart");
        let after = agent.link_pins();
        assert_eq!(
            after.len(),
            9,
            "crash={crash}: stale or duplicate links: {after:?}"
        );
        assert!(
            after.iter().all(|p| !pins.contains(p)),
            "old generation left behind"
        );

        let r = worker(host.addr4(PROTECTED), governed(&cg));
        assert!(r.ok(), "{:?}", r.0);
        let (opened, _) = agent
            .session_of_pid(r.pid())
            .expect("capture did not resume: no session for the worker");
        assert_eq!(
            opened["destination"],
            host.addr4(PROTECTED).to_string(),
            "{opened}"
        );
        assert_eq!(opened["principal"]["cgroup_id"], cg.id(), "{opened}");
    }
    let kinds: Vec<String> = agent
        .journal()
        .iter()
        .map(|r| r["kind"].as_str().unwrap_or_default().to_owned())
        .filter(|k| k.starts_with("agent_"))
        .collect();
    // The orderly stop is journaled; the crash is not (it could not be).
    assert_eq!(
        kinds,
        [
            "agent_started",
            "agent_stopped",
            "agent_started",
            "agent_started"
        ]
    );
    // The journal survived the kill -9 whole: the hash chain and signatures verify.
    let (ok, out) = agent.verify_journal();
    assert!(ok, "audit verify failed after kill -9:\n{out}");
}

#[test]
fn disable_detaches_everything_and_leaves_no_pins() {
    if !require_root("redirect") {
        return;
    }
    let (host, cg, mut agent) = setup("disable");
    agent.stop().expect("stop");
    let out = agent.disable().expect("disable");
    assert!(out.contains("detached 9 program links"), "{out}");
    assert!(!agent.pin_dir.exists(), "pin dir left behind");
    let (code, out) = agent.status();
    assert_eq!(code, 3, "{out}");
    assert!(out.contains("NOT enforced"), "{out}");
    // Enforcement is off: the governed worker now connects directly.
    let r = worker(host.addr4(PROTECTED), governed(&cg));
    assert!(r.ok(), "{:?}", r.0);
    assert!(r.local().starts_with("10."), "{}", r.local());
}

#[test]
fn a_connection_the_kernel_did_not_redirect_is_refused_and_journaled() {
    if !require_root("redirect") {
        return;
    }
    let (_host, _cg, agent) = setup("unjudged");
    let to = std::net::SocketAddr::from(([127, 0, 0, 1], agent.port));
    let r = worker(to, WorkerOpts::default());
    assert!(!r.ok(), "an unredirected connection was relayed: {:?}", r.0);
    assert_eq!(r.0["received"], 0);
    // Journaled before the worker's connection is closed: on record now, as one refusal.
    let refused = agent.records("connection_refused");
    assert_eq!(refused.len(), 1, "{:#?}", agent.journal());
    assert_eq!(refused[0]["count"], 1);
    assert!(
        refused[0]["reason"]
            .as_str()
            .unwrap()
            .contains("not redirected")
    );
}

#[test]
fn several_governed_cgroups_are_all_captured() {
    if !require_root("redirect") {
        return;
    }
    let mut host = TestHost::new().expect("test host");
    host.serve_echo(&[PROTECTED]).expect("echo server");
    let a = Cgroup::new("multi-a").expect("cgroup");
    let b = Cgroup::new("multi-b").expect("cgroup");
    let o = host.v4.octets();
    let net = format!("{}.{}.{}.0/24", o[0], o[1], o[2]);
    let agent =
        Agent::start(&[&a, &b], &[ResourceSpec::tcp("net", net, PROTECTED)]).expect("agent");
    assert_eq!(agent.link_pins().len(), 11);
    for cg in [&a, &b] {
        let r = worker(host.addr4(PROTECTED), governed(cg));
        assert!(r.ok(), "{:?}", r.0);
        let (opened, _) = agent.session_of_pid(r.pid()).expect("session");
        assert_eq!(opened["principal"]["cgroup_id"], cg.id());
        assert_eq!(opened["resource"]["name"], "net");
    }
}

#[test]
fn kernel_records_are_released_with_their_sockets() {
    if !require_root("redirect") {
        return;
    }
    let (host, cg, mut agent) = setup("cleanup");
    for _ in 0..5 {
        assert!(worker(host.addr4(PROTECTED), governed(&cg)).ok());
    }
    // Refused connects (agent down) leave no record behind.
    agent.stop().expect("stop");
    for _ in 0..5 {
        assert!(!worker(host.addr6(PROTECTED), governed(&cg)).ok());
    }
    std::thread::sleep(std::time::Duration::from_millis(200));
    assert_eq!(
        agent.map_entries("PAM_CONNECTS"),
        0,
        "connect records leaked"
    );
    assert_eq!(agent.map_entries("PAM_PROTECTED"), 2);
}

#[test]
fn a_second_agent_on_the_same_pin_directory_is_refused() {
    if !require_root("redirect") {
        return;
    }
    let (host, cg, agent) = setup("second");
    // Same pins, another listener port: it must not take over.
    let config = std::fs::read_to_string(&agent.config).unwrap();
    let other = agent.dir.path().join("second.toml");
    let port = pam_e2e::free_port();
    // Its own journal: a journal has one writer, and that would refuse it first.
    let journal = agent.dir.path().join("second.db");
    std::fs::write(
        &other,
        config
            .replace(&format!("port = {}", agent.port), &format!("port = {port}"))
            .replace(
                &format!("path = \"{}\"", agent.journal.display()),
                &format!("path = \"{}\"", journal.display()),
            ),
    )
    .unwrap();
    let out = std::process::Command::new(pam_e2e::agent_bin())
        .args(["run", "--config"])
        .arg(&other)
        .output_within()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("another pam-agent is running"), "{err}");
    // The first one still works, with its links intact.
    assert_eq!(agent.link_pins().len(), 9);
    let r = worker(host.addr4(PROTECTED), governed(&cg));
    assert!(r.ok(), "{:?}", r.0);
}
