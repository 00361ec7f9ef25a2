//! Issue 11, redirect integrity: each test performs an attack on the redirect as a local
//! user or a governed worker would (see docs of the threat model), and shows it refused.
//! Real eBPF, real cgroups, the real agent binary; attackers are Python scripts
//! (tests/tests/attacker.py) run as `nobody` where the attacker is unprivileged.
//! Run as root, one test at a time (they share the kernel).

use std::{
    io::{BufRead, BufReader, Write},
    os::unix::fs::PermissionsExt,
    path::{Path, PathBuf},
    process::{Command, Stdio},
    time::{Duration, Instant},
};

use pam_e2e::OutputWithin;
use pam_e2e::{Agent, Cgroup, ResourceSpec, TestHost, WorkerOpts, require_root, wait_for, worker};
use pam_e2e::{SpawnWatched, Watched};
use serde_json::Value;

const PROTECTED: u16 = 7000;
const NOBODY: u32 = 65534;

fn setup(tag: &str) -> (TestHost, Cgroup, Agent) {
    let mut host = TestHost::new().expect("test host");
    host.serve_echo(&[PROTECTED]).expect("echo server");
    let cg = Cgroup::new(tag).expect("cgroup");
    let agent = Agent::start_with_journal(
        &[&cg],
        &[
            ResourceSpec::tcp("echo-v4", host.v4, PROTECTED),
            ResourceSpec::tcp("echo-v6", host.v6, PROTECTED),
        ],
        "fsync = false",
        "",
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

/// The attacker script, written where `nobody` can read it.
struct Script {
    dir: tempfile::TempDir,
}

impl Script {
    fn new() -> Script {
        let dir = tempfile::Builder::new()
            .prefix("pam-attacker")
            .tempdir()
            .unwrap();
        std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o777)).unwrap();
        let path = dir.path().join("attacker.py");
        std::fs::write(&path, include_str!("attacker.py")).unwrap();
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755)).unwrap();
        Script { dir }
    }

    fn path(&self) -> PathBuf {
        self.dir.path().join("attacker.py")
    }

    /// A command running the script: in `cgroup` (governed) or not, as `uid` or root,
    /// with `wrap` (e.g. `unshare -rn`) between the privilege drop and python.
    fn command(&self, cgroup: Option<&Cgroup>, uid: Option<u32>, wrap: &[&str]) -> Command {
        let mut c = match cgroup {
            Some(cg) => {
                let mut c = Command::new(pam_e2e::agent_bin());
                c.args(["exec", "--cgroup"]).arg(&cg.path).arg("--");
                c
            }
            None => Command::new("env"),
        };
        if let Some(uid) = uid {
            c.args([
                "setpriv",
                &format!("--reuid={uid}"),
                &format!("--regid={uid}"),
                "--clear-groups",
            ]);
        }
        c.args(wrap).arg("/usr/bin/python3").arg(self.path());
        c
    }

    /// Runs to completion and parses the last line of output as JSON.
    fn run(
        &self,
        cgroup: Option<&Cgroup>,
        uid: Option<u32>,
        wrap: &[&str],
        args: &[&str],
    ) -> Value {
        let out = self
            .command(cgroup, uid, wrap)
            .args(args)
            .output_within()
            .expect("running attacker");
        let stdout = String::from_utf8_lossy(&out.stdout);
        let line = stdout.lines().last().unwrap_or_else(|| {
            panic!(
                "attacker {args:?} printed nothing; stderr: {}",
                String::from_utf8_lossy(&out.stderr)
            )
        });
        serde_json::from_str(line).expect("attacker report is JSON")
    }
}

/// An unprivileged squatter binding the listener port in a loop and logging whatever
/// it receives. Killed on drop.
struct Squatter {
    child: Watched,
    log: PathBuf,
}

impl Squatter {
    fn start(script: &Script, port: u16, seconds: u32) -> Squatter {
        let log = script.dir.path().join(format!("squat-{port}.log"));
        std::fs::write(&log, "").unwrap();
        std::fs::set_permissions(&log, std::fs::Permissions::from_mode(0o666)).unwrap();
        let child = script
            .command(None, Some(NOBODY), &[])
            .args(["squat", &port.to_string(), &seconds.to_string()])
            .arg(&log)
            .spawn_watched()
            .expect("squatter");
        Squatter { child, log }
    }

    fn lines(&self, prefix: &str) -> Vec<String> {
        std::fs::read_to_string(&self.log)
            .unwrap_or_default()
            .lines()
            .filter(|l| l.starts_with(prefix))
            .map(str::to_owned)
            .collect()
    }

    /// Waits until the squatter holds both the IPv4 and the IPv6 listener address.
    fn wait_bound(&self) {
        let deadline = Instant::now() + Duration::from_secs(5);
        while self.lines("bound").len() < 2 {
            assert!(
                Instant::now() < deadline,
                "squatter could not bind: {:?}",
                self.lines("")
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    fn received(&self) -> Vec<String> {
        self.lines("accepted")
    }
}

impl Drop for Squatter {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn assert_running(agent: &Agent) {
    let (code, out) = agent.status();
    assert_eq!(code, 0, "{out}");
    assert!(out.contains("held by the agent"), "{out}");
    assert!(
        out.contains(&format!("pid {}", agent.pid().unwrap())),
        "{out}"
    );
}

fn assert_not_running(agent: &Agent) {
    let (code, out) = agent.status();
    assert_eq!(code, 3, "{out}");
    assert!(out.contains("agent NOT running"), "{out}");
    assert!(!out.contains("held by the agent"), "{out}");
}

#[test]
fn a_squatter_on_the_listener_port_receives_nothing_while_the_agent_runs() {
    if !require_root("redirect_integrity") {
        return;
    }
    let (host, cg, mut agent) = setup("squat-run");
    let script = Script::new();
    // The agent listens on an ephemeral port: the redirect target is free to bind.
    let squatter = Squatter::start(&script, agent.port, 30);
    squatter.wait_bound();
    assert_running(&agent);

    for dst in [
        host.addr4(PROTECTED),
        host.addr6(PROTECTED),
        host.addr_mapped(PROTECTED),
    ] {
        let r = worker(dst, governed(&cg));
        assert!(
            r.ok(),
            "{dst}: governed connect did not reach the agent: {:?}",
            r.0
        );
        let (opened, _) = agent
            .session_of_pid(r.pid())
            .unwrap_or_else(|| panic!("{dst}: no session journaled"));
        assert_eq!(opened["principal"]["cgroup_id"], cg.id(), "{dst}: {opened}");
        assert!(
            opened["destination"]
                .as_str()
                .is_some_and(|d| d.ends_with(&format!(":{PROTECTED}"))),
            "{dst}: {opened}"
        );
    }
    // A direct connect to the target lands on the agent too (refused there, journaled).
    for to in ["127.0.0.1", "[::1]"] {
        let to = format!("{to}:{}", agent.port).parse().unwrap();
        let r = worker(
            to,
            WorkerOpts {
                uid: Some(NOBODY),
                ..Default::default()
            },
        );
        assert!(!r.ok(), "{to}: {:?}", r.0);
    }
    std::thread::sleep(Duration::from_millis(300));
    assert_eq!(
        squatter.received(),
        Vec::<String>::new(),
        "the squatter got connections"
    );
    // Both on record, coalesced: the first at once, the second counted; its record is
    // written when the interval ends or, as here, at the stop (not lost for want of a
    // later refusal), before `agent_stopped`.
    let refused = agent.records("connection_refused");
    assert_eq!(refused.len(), 1, "the first at once: {refused:#?}");
    agent.stop().unwrap();
    let refused = agent.records("connection_refused");
    let stopped = agent.records("agent_stopped");
    assert!(refused.last().unwrap()["seq"].as_u64() < stopped.last().unwrap()["seq"].as_u64());
    let counts: Vec<u64> = refused
        .iter()
        .map(|r| r["count"].as_u64().unwrap())
        .collect();
    assert_eq!(counts, [1, 1], "{refused:#?}");
    for r in &refused {
        assert!(
            r["reason"].as_str().unwrap().contains("not redirected"),
            "{r}"
        );
    }
}

/// Sum of the `count`s of `connection_refused` records.
fn refused_total(records: &[Value]) -> u64 {
    records
        .iter()
        .map(|r| r["count"].as_u64().unwrap_or(1))
        .sum()
}

#[test]
fn a_squatter_receives_nothing_while_the_agent_is_stopped_or_killed() {
    if !require_root("redirect_integrity") {
        return;
    }
    let (host, cg, mut agent) = setup("squat-stop");
    let script = Script::new();
    let squatter = Squatter::start(&script, agent.port, 60);
    squatter.wait_bound();
    for crash in [false, true] {
        if crash {
            agent.kill().unwrap();
        } else {
            agent.stop().unwrap();
        }
        assert_not_running(&agent);
        for dst in [
            host.addr4(PROTECTED),
            host.addr6(PROTECTED),
            host.addr_mapped(PROTECTED),
        ] {
            let r = worker(dst, governed(&cg));
            assert!(
                !r.ok(),
                "crash={crash}: {dst} connected with the agent down: {:?}",
                r.0
            );
            assert_eq!(r.errno(), Some(i64::from(libc::ECONNREFUSED)), "{:?}", r.0);
        }
        // Even a connection that skipped the connect hook (ungoverned, straight to
        // the target) is dropped rather than handed to the squatter.
        let direct = script.run(
            None,
            None,
            &[],
            &["loop", &format!("127.0.0.1:{}", agent.port), "0.5"],
        );
        assert_eq!(direct["ok"], 0, "{direct}");
        assert_eq!(squatter.received(), Vec::<String>::new(), "crash={crash}");
        agent.restart().unwrap();
        assert_running(&agent);
        let r = worker(host.addr4(PROTECTED), governed(&cg));
        assert!(r.ok(), "{:?}", r.0);
    }
    assert_eq!(squatter.received(), Vec::<String>::new());
}

#[test]
fn a_restart_under_a_bind_loop_hands_over_without_a_window() {
    if !require_root("redirect_integrity") {
        return;
    }
    let (host, cg, mut agent) = setup("squat-restart");
    let script = Script::new();
    let squatter = Squatter::start(&script, agent.port, 60);
    squatter.wait_bound();
    // Governed workers connect continuously through the whole restart.
    let load = script
        .command(Some(&cg), Some(NOBODY), &[])
        .args(["loop", &host.addr4(PROTECTED).to_string(), "4"])
        .stdout(Stdio::piped())
        .spawn_watched()
        .unwrap();
    std::thread::sleep(Duration::from_millis(700));
    agent.stop().unwrap();
    assert_not_running(&agent);
    std::thread::sleep(Duration::from_millis(500));
    // The start does not fail on the squatted port: the agent takes its own socket.
    agent
        .restart()
        .expect("the agent starts while the port is squatted");
    assert_running(&agent);
    let out = load.wait_with_output().unwrap();
    let counts: Value = serde_json::from_slice(
        String::from_utf8_lossy(&out.stdout)
            .lines()
            .last()
            .unwrap()
            .as_bytes(),
    )
    .unwrap();
    // Every attempt either went through the agent or was refused; none elsewhere.
    assert!(counts["ok"].as_u64().unwrap() > 0, "{counts}");
    assert!(counts["refused"].as_u64().unwrap() > 0, "{counts}");
    // Sessions cut by the stop, or a SYN in flight across the hand-over, end as
    // "other" (closed by the agent); never delivered elsewhere.
    assert!(counts["other"].as_u64().unwrap() <= 3, "{counts}");
    assert_eq!(squatter.received(), Vec::<String>::new(), "{counts}");
    let sessions = agent.records("session_opened").len() as u64;
    assert!(sessions >= counts["ok"].as_u64().unwrap(), "{counts}");
}

#[test]
fn a_pin_directory_made_by_another_user_or_open_to_others_is_refused() {
    if !require_root("redirect_integrity") {
        return;
    }
    let (_host, _cg, mut agent) = setup("pindir");
    agent.stop().unwrap();
    agent.disable().unwrap();
    assert!(!agent.pin_dir.exists());
    // bpffs is mounted 1777: any user can create the agent's pin directory first.
    let made = Command::new("setpriv")
        .args([
            &format!("--reuid={NOBODY}"),
            &format!("--regid={NOBODY}"),
            "--clear-groups",
            "mkdir",
        ])
        .arg(&agent.pin_dir)
        .output_within()
        .unwrap()
        .status;
    assert!(
        made.success(),
        "nobody could not create {}",
        agent.pin_dir.display()
    );
    let err = format!(
        "{:#}",
        agent.restart().expect_err("started on a foreign pin dir")
    );
    assert!(err.contains("refusing pin directory"), "{err}");
    assert!(err.contains("belongs to uid 65534"), "{err}");
    std::fs::remove_dir(&agent.pin_dir).unwrap();

    // Root's own, but writable by others.
    std::fs::create_dir(&agent.pin_dir).unwrap();
    std::fs::set_permissions(&agent.pin_dir, std::fs::Permissions::from_mode(0o777)).unwrap();
    let err = format!(
        "{:#}",
        agent.restart().expect_err("started on a 0777 pin dir")
    );
    assert!(err.contains("writable by others"), "{err}");
    std::fs::remove_dir(&agent.pin_dir).unwrap();

    agent.restart().expect("a fresh pin directory works");
    let mode = std::fs::metadata(&agent.pin_dir)
        .unwrap()
        .permissions()
        .mode();
    assert_eq!(mode & 0o077, 0, "pin dir mode {mode:o}");
}

/// Spawns a `hold` worker (from local port `bind_port`, 0: the kernel's choice) and
/// returns it with its first report.
fn hold(
    script: &Script,
    cg: &Cgroup,
    dst: std::net::SocketAddr,
    bind_port: u16,
) -> (Watched, Value, BufReader<std::process::ChildStdout>) {
    let mut child = script
        .command(Some(cg), Some(NOBODY), &[])
        .args(["hold", &dst.to_string(), &bind_port.to_string()])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn_watched()
        .unwrap();
    let mut out = BufReader::new(child.stdout.take().unwrap());
    let mut line = String::new();
    out.read_line(&mut line).unwrap();
    let v: Value = serde_json::from_str(&line).expect("hold report");
    (child, v, out)
}

#[test]
fn a_stale_record_cannot_lend_a_governed_identity_to_another_socket() {
    if !require_root("redirect_integrity") {
        return;
    }
    let (host, cg, mut agent) = setup("stale");
    let script = Script::new();

    // 1. The case: a governed connect while the agent is stopped. It is
    //    refused, and leaves nothing in the kernel for the socket it keeps.
    agent.stop().unwrap();
    let (mut refused, report, _out1) = hold(&script, &cg, host.addr4(PROTECTED), 0);
    assert_eq!(report["connected"], false, "{report}");
    assert_eq!(report["errno"], libc::ECONNREFUSED, "{report}");
    assert_eq!(agent.map_entries("PAM_CONNECTS"), 0);
    agent.restart().unwrap();

    // 2. A governed connection that breaks (the agent killed under it) while the
    //    worker keeps its socket: the attempt is over, its record must go, and the
    //    local port is free for anyone to bind. The worker binds a port no other socket
    //    holds: one the kernel picked for it by connect() may be shared with another
    //    host connection's TIME_WAIT, which keeps it from every bind for a minute.
    let own_port = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("a free local port")
        .port();
    let (mut held, report, mut out2) = hold(&script, &cg, host.addr4(PROTECTED), own_port);
    assert_eq!(report["connected"], true, "{report}");
    let port = report["local_port"].as_u64().unwrap() as u16;
    assert_eq!(port, own_port, "{report}");
    assert_eq!(agent.map_entries("PAM_CONNECTS"), 1);
    agent.kill().unwrap();
    held.stdin.as_mut().unwrap().write_all(b"go\n").unwrap();
    let mut line = String::new();
    out2.read_line(&mut line).unwrap();
    let broke: Value = serde_json::from_str(&line).unwrap();
    assert!(
        !broke["broken"].is_null(),
        "the connection did not break: {broke}"
    );
    std::thread::sleep(Duration::from_millis(100));
    assert_eq!(
        agent.map_entries("PAM_CONNECTS"),
        0,
        "a record outlived its connection attempt"
    );
    agent.restart().unwrap();
    let before = agent.records("session_opened").len();
    let refused_before = refused_total(&agent.records("connection_refused"));

    // 3. An ungoverned user scans local ports around the worker's (including its
    //    very port, now free) and connects to the listener from each.
    let lo = port.saturating_sub(500).max(1024);
    let hi = port.saturating_add(500);
    let scan = script.run(
        None,
        Some(NOBODY),
        &[],
        &[
            "scan",
            &agent.port.to_string(),
            &lo.to_string(),
            &hi.to_string(),
        ],
    );
    let bound: Vec<u64> = serde_json::from_value(scan["bound_ports"].clone()).unwrap();
    let mut attempts = scan["connected"].as_u64().unwrap();
    if !bound.contains(&u64::from(port)) {
        // The worker's port frees once the kernel has finished with the broken
        // connection: try that very port again for a while, the way an attacker would.
        let p = port.to_string();
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        loop {
            let again = script.run(
                None,
                Some(NOBODY),
                &[],
                &["scan", &agent.port.to_string(), &p, &p],
            );
            assert_eq!(
                again["got_data"], 0,
                "the attacker's bytes were relayed: {again}"
            );
            attempts += again["connected"].as_u64().unwrap();
            if again["bound"] == 1 {
                break;
            }
            assert!(
                std::time::Instant::now() < deadline,
                "the worker's port {port} was never free to bind; its sockets:\n{}",
                sockets_on(port)
            );
            std::thread::sleep(Duration::from_millis(200));
        }
    }
    // connect() takes even ports and other host connections keep some of them in
    // TIME_WAIT, so on a busy host only about half the range can be bound.
    assert!(scan["connected"].as_u64().unwrap() > 450, "{scan}");
    assert_eq!(
        scan["got_data"], 0,
        "the attacker's bytes were relayed: {scan}"
    );
    std::thread::sleep(Duration::from_millis(300));
    assert_eq!(
        agent.records("session_opened").len(),
        before,
        "a session was opened for the attacker"
    );
    // Every attempt refused and on record, coalesced: counts that add up to the
    // attempts exactly (the last ones written when their interval ends), in far fewer
    // records than attempts.
    let records = wait_for(
        "every refusal of the scan on record",
        Duration::from_secs(60),
        || {
            let r = agent.records("connection_refused");
            (refused_total(&r) >= refused_before + attempts).then_some(r)
        },
    );
    assert_eq!(refused_total(&records), refused_before + attempts);
    assert!(
        (records.len() as u64) * 50 < attempts,
        "{} records for {attempts} attempts",
        records.len()
    );
    for r in &records {
        assert!(
            r["reason"].as_str().unwrap().contains("not redirected"),
            "{r}"
        );
    }
    for child in [&mut refused, &mut held] {
        let _ = child.kill();
        let _ = child.wait();
    }
}

/// Every TCP socket on a local port, as `ss` shows it (and what `ss` said if it failed).
fn sockets_on(port: u16) -> String {
    let out = Command::new("ss")
        .args(["-tanpe", "state", "all", &format!("( sport = :{port} )")])
        .output_within()
        .unwrap();
    format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

#[test]
fn a_worker_in_another_network_namespace_fails_closed() {
    if !require_root("redirect_integrity") {
        return;
    }
    let (host, cg, agent) = setup("netns");
    let script = Script::new();
    let port = agent.port.to_string();
    // The local port both the worker (in its namespace) and the host user bind: one the
    // host has free now (a fixed number can be some other connection's ephemeral port).
    let local_port = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("a free local port")
        .port()
        .to_string();
    // An unprivileged governed worker makes its own user + network namespace, listens
    // on that namespace's loopback at the agent's port, and connects to the resource.
    for dst in [host.addr4(PROTECTED), host.addr6(PROTECTED)] {
        let r = script.run(
            Some(&cg),
            Some(NOBODY),
            &[
                "unshare",
                "-rn",
                "sh",
                "-c",
                "ip link set lo up && exec \"$@\"",
                "sh",
            ],
            &["netns", &port, &dst.to_string(), &local_port],
        );
        assert_eq!(r["connected"], false, "{dst}: {r}");
        assert_eq!(r["errno"], libc::EPERM, "{dst}: {r}");
        assert_eq!(r["squatter_accepted"], 0, "{dst}: {r}");
    }
    // Nothing was recorded for those attempts, so nothing can be borrowed: a host user
    // connecting from the same local port gets no session.
    assert_eq!(agent.map_entries("PAM_CONNECTS"), 0);
    let scan = wait_for(
        "the host user binding the worker's local port",
        Duration::from_secs(10),
        || {
            let scan = script.run(
                None,
                Some(NOBODY),
                &[],
                &["scan", &port, &local_port, &local_port],
            );
            (scan["bound"] == 1).then_some(scan)
        },
    );
    assert_eq!(scan["connected"], 1, "{scan}");
    assert_eq!(scan["got_data"], 0, "{scan}");
    std::thread::sleep(Duration::from_millis(300));
    assert!(agent.records("session_opened").is_empty());
    // The same worker in the agent's namespace is still served.
    let r = worker(host.addr4(PROTECTED), governed(&cg));
    assert!(r.ok(), "{:?}", r.0);
}

#[test]
fn sockets_made_outside_the_cgroup_are_governed_in_a_governed_task() {
    if !require_root("redirect_integrity") {
        return;
    }
    let (host, cg, agent) = setup("foreign-sock");
    let script = Script::new();
    let cgroup = cg.path.display().to_string();
    // The process starts ungoverned; the socket is made before it joins, or by an
    // ungoverned process and passed in; or made governed and passed out.
    for mode in ["premade", "passed_in", "passed_out"] {
        for dst in [host.addr4(PROTECTED), host.addr6(PROTECTED)] {
            let r = script.run(None, None, &[], &[mode, &cgroup, &dst.to_string()]);
            assert_eq!(r["echo_ok"], true, "{mode} {dst}: {r}");
            let local = r["local"].as_str().unwrap_or_default();
            assert!(
                local.starts_with("127.0.0.1") || local.starts_with("::1"),
                "{mode} {dst}: went around the agent: {r}"
            );
            // getpeername still shows the original destination.
            let peer: std::net::SocketAddr = match dst {
                std::net::SocketAddr::V4(_) => r["peer"].as_str().unwrap().parse().unwrap(),
                std::net::SocketAddr::V6(_) => {
                    let p = r["peer"].as_str().unwrap();
                    let (ip, port) = p.rsplit_once(':').unwrap();
                    format!("[{ip}]:{port}").parse().unwrap()
                }
            };
            assert_eq!(peer, dst, "{mode}: {r}");
            let pid = r["pid"].as_u64().unwrap();
            let (opened, _) = agent
                .session_of_pid(pid)
                .unwrap_or_else(|| panic!("{mode} {dst}: no session for pid {pid}"));
            assert_eq!(
                opened["destination"],
                dst.to_string(),
                "{mode} {dst}: {opened}"
            );
        }
    }
}

#[test]
fn a_worker_that_exits_right_after_connecting_is_still_attributed_to_its_cgroup() {
    if !require_root("redirect_integrity") {
        return;
    }
    let (host, cg, agent) = setup("fire");
    let script = Script::new();
    let expected = format!(
        "/{}",
        cg.path
            .strip_prefix(pam_e2e::cgroup2_root())
            .unwrap()
            .display()
    );
    for dst in [host.addr4(PROTECTED), host.addr6(PROTECTED)] {
        let r = script.run(Some(&cg), Some(NOBODY), &[], &["fire", &dst.to_string()]);
        let pid = r["pid"].as_u64().unwrap();
        // The worker is gone before the agent reads anything about it.
        let deadline = Instant::now() + Duration::from_secs(5);
        let opened = loop {
            if let Some((opened, _)) = agent.session_of_pid(pid) {
                break opened;
            }
            assert!(
                Instant::now() < deadline,
                "{dst}: no session for the exited worker {pid}: {:#?}",
                agent.journal()
            );
            std::thread::sleep(Duration::from_millis(50));
        };
        let p = &opened["principal"];
        assert_eq!(p["cgroup_id"], cg.id(), "{opened}");
        assert_eq!(p["cgroup"], expected.as_str(), "{opened}");
        assert_eq!(p["uid"], NOBODY, "{opened}");
    }
}

/// Waits for the session of `pid` and returns its principal.
fn principal_of(agent: &Agent, pid: u64) -> Value {
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        if let Some((opened, _)) = agent.session_of_pid(pid) {
            return opened["principal"].clone();
        }
        assert!(
            Instant::now() < deadline,
            "no session for {pid}: {:#?}",
            agent.journal()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[test]
fn the_executable_is_what_the_kernel_saw_at_connect_never_a_later_or_forged_one() {
    if !require_root("redirect_integrity") {
        return;
    }
    let (host, cg, agent) = setup("exe");
    let script = Script::new();
    let dst = host.addr4(PROTECTED).to_string();
    let python = std::fs::canonicalize("/usr/bin/python3").unwrap();
    let python = python.display().to_string();

    // A forged command name is recorded as what it is (self-chosen); the executable
    // is still the real one.
    let mut forged = script
        .command(Some(&cg), Some(NOBODY), &[])
        .args(["comm", "psql", &dst])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn_watched()
        .unwrap();
    let mut line = String::new();
    BufReader::new(forged.stdout.take().unwrap())
        .read_line(&mut line)
        .unwrap();
    let r: Value = serde_json::from_str(&line).unwrap();
    let p = principal_of(&agent, r["pid"].as_u64().unwrap());
    assert_eq!(p["comm"], "psql", "{p}");
    assert_eq!(p["exe"], python.as_str(), "{p}");
    let _ = forged.kill();
    let _ = forged.wait();

    // Connect in one binary, exec into another (an "allowed" one) keeping the socket:
    // the journal never names the binary exec'd after connect().
    let r = script.run(
        Some(&cg),
        Some(NOBODY),
        &[],
        &["exec_after", &dst, "/usr/bin/sleep"],
    );
    let p = principal_of(&agent, r["pid"].as_u64().unwrap());
    assert_ne!(p["exe"], "/usr/bin/sleep", "{p}");
    assert!(p["exe"].is_null() || p["exe"] == python.as_str(), "{p}");

    // In its own user + mount namespace, a worker bind-mounts python over an allowed
    // path and runs it from there: /proc shows the allowed path, the kernel's inode
    // does not match it, and the executable is unknown.
    let mut cmd = Command::new(pam_e2e::agent_bin());
    cmd.args(["exec", "--cgroup"])
        .arg(&cg.path)
        .args([
            "--",
            "setpriv",
            "--reuid=65534",
            "--regid=65534",
            "--clear-groups",
            "unshare",
            "-rm",
            "sh",
            "-c",
        ])
        .arg(format!(
            "mount --bind {python} /usr/bin/sleep && exec /usr/bin/sleep \"$@\""
        ))
        .arg("sh")
        .arg(script.path())
        .args(["hold", &dst]);
    let mut masked = cmd
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn_watched()
        .unwrap();
    let mut line = String::new();
    BufReader::new(masked.stdout.take().unwrap())
        .read_line(&mut line)
        .unwrap();
    let r: Value = serde_json::from_str(&line).expect("bind-mounted worker report");
    assert_eq!(r["connected"], true, "{r}");
    let pid = r["pid"].as_u64().unwrap();
    let shown = std::fs::read_link(format!("/proc/{pid}/exe")).unwrap();
    assert_eq!(
        shown,
        Path::new("/usr/bin/sleep"),
        "the disguise did not work"
    );
    let p = principal_of(&agent, pid);
    assert!(
        p["exe"].is_null(),
        "a disguised executable was believed: {p}"
    );
    let _ = masked.kill();
    let _ = masked.wait();
}

#[test]
fn mptcp_connects_are_redirected_and_attributed() {
    if !require_root("redirect_integrity") {
        return;
    }
    let (host, cg, agent) = setup("mptcp");
    let script = Script::new();
    for dst in [host.addr4(PROTECTED), host.addr6(PROTECTED)] {
        let r = script.run(Some(&cg), Some(NOBODY), &[], &["mptcp", &dst.to_string()]);
        assert_eq!(r["echo_ok"], true, "{dst}: {r}");
        let local = r["local"].as_str().unwrap_or_default();
        assert!(
            local.starts_with("127.0.0.1") || local.starts_with("::1"),
            "{dst}: went around the agent: {r}"
        );
        let p = principal_of(&agent, r["pid"].as_u64().unwrap());
        assert_eq!(p["cgroup_id"], cg.id(), "{p}");
        // getpeername on the MPTCP socket returns the original destination, not the
        // redirect target (the record is the first subflow's).
        let peer = r["peer"].as_str().unwrap();
        let (ip, port) = peer.rsplit_once(':').unwrap();
        assert_eq!(ip.parse::<std::net::IpAddr>().unwrap(), dst.ip(), "{r}");
        assert_eq!(port, dst.port().to_string(), "{r}");
    }
}

#[test]
fn a_tcp_fast_open_connect_is_redirected_too() {
    if !require_root("redirect_integrity") {
        return;
    }
    let (host, cg, agent) = setup("tfo");
    let script = Script::new();
    for dst in [host.addr4(PROTECTED), host.addr6(PROTECTED)] {
        // sendto(MSG_FASTOPEN) connects inside sendmsg, not connect().
        let r = script.run(Some(&cg), Some(NOBODY), &[], &["tfo", &dst.to_string()]);
        assert_eq!(r["echo_ok"], true, "{dst}: {r}");
        let local = r["local"].as_str().unwrap_or_default();
        assert!(
            local.starts_with("127.0.0.1") || local.starts_with("::1"),
            "{dst}: went around the agent: {r}"
        );
        let p = principal_of(&agent, r["pid"].as_u64().unwrap());
        assert_eq!(p["cgroup_id"], cg.id(), "{p}");
    }
}
