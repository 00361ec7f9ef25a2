//! `tcp` resources relayed in the kernel (sockmap and an sk_skb verdict) and with
//! splice: every byte both ways, exact journal counts, half-close, a large transfer,
//! and what happens to a transfer when the agent stops or dies. Real eBPF, real
//! worker processes, a checking server on a test host. Run as root, one at a time.

use std::{
    io::{BufRead, BufReader, Write},
    process::{Command, Stdio},
};

use pam_e2e::{
    Agent, CHILD_TIMEOUT, Cgroup, ResourceSpec, SpawnWatched, TestHost, agent_bin, output_within,
    peer_bin, require_root, wait_for,
};
use serde_json::Value;

const SINK: u16 = 7000;
const ECHO: u16 = 7001;

/// A host with the checking server, a governed cgroup, and an agent relaying the
/// server's port the given way (`kernel` or `splice`).
fn setup(tag: &str, relay: &str) -> (TestHost, Cgroup, Agent) {
    let mut host = TestHost::new().expect("test host");
    host.serve_sink(&[SINK]).expect("sink server");
    host.serve_echo(&[ECHO]).expect("echo server");
    let cg = Cgroup::new(tag).expect("cgroup");
    let agent = Agent::start_with_listener(
        &[&cg],
        &[
            ResourceSpec::tcp("sink", host.v4, SINK),
            ResourceSpec::tcp("echo", host.v4, ECHO),
        ],
        &format!("tcp_relay = \"{relay}\""),
        "",
    )
    .expect("agent");
    (host, cg, agent)
}

/// `pam-testpeer transfer` as a governed worker, with extra arguments.
fn transfer_cmd(cg: &Cgroup, host: &TestHost, args: &[String]) -> Command {
    let mut c = Command::new(agent_bin());
    c.args(["exec", "--cgroup"])
        .arg(&cg.path)
        .arg("--")
        .arg(peer_bin())
        .arg("transfer")
        .arg(host.addr4(SINK).to_string())
        .args(args);
    c
}

fn transfer(cg: &Cgroup, host: &TestHost, send: u64, reply: u64) -> Value {
    let out = output_within(
        &mut transfer_cmd(cg, host, &[send.to_string(), reply.to_string()]),
        CHILD_TIMEOUT,
    );
    let stdout = String::from_utf8_lossy(&out.stdout);
    let line = stdout.lines().last().unwrap_or_else(|| {
        panic!(
            "worker printed nothing; stderr: {}",
            String::from_utf8_lossy(&out.stderr)
        )
    });
    serde_json::from_str(line).expect("worker report is JSON")
}

/// The close record of the worker's session, once written.
fn closed_record(agent: &Agent, pid: u64) -> Value {
    wait_for("the session's session_closed record", WAIT, || {
        agent.session_of_pid(pid).and_then(|(_, c)| c)
    })
}

/// Asserts that the agent relays `tcp` resources the way the config asks.
fn assert_relay_mode(agent: &Agent, relay: &str) {
    let log = agent.log();
    assert!(
        log.contains(&format!("tcp_relay=\"{relay}\"")),
        "the agent does not say it relays tcp resources with {relay}:\n{log}"
    );
    assert!(
        !log.contains("relaying tcp sessions with splice instead"),
        "the kernel refused the relay:\n{log}"
    );
}

/// Bytes both ways across a half-close (the server answers only after the worker's
/// end), each byte checked, and the journal's counts equal to what each side sent.
fn exact_counts_across_a_half_close(relay: &str) {
    let (host, cg, agent) = setup(&format!("relay-{relay}"), relay);
    assert_relay_mode(&agent, relay);
    for (send, reply) in [(1_000_003u64, 777_777u64), (0, 5), (12, 0)] {
        let r = transfer(&cg, &host, send, reply);
        let seen = || format!("{r}\njournal: {:?}\nlog:\n{}", agent.journal(), agent.log());
        assert_eq!(r["error"], Value::Null, "{relay}: {}", seen());
        assert_eq!(r["server"]["count"], send, "{relay}: {}", seen());
        assert_eq!(
            r["server"]["intact"], true,
            "{relay}: bytes changed on the way in: {r}"
        );
        assert_eq!(r["reply_bytes"], reply, "{relay}: {r}");
        assert_eq!(
            r["reply_intact"], true,
            "{relay}: bytes changed on the way out: {r}"
        );
        let closed = closed_record(&agent, r["pid"].as_u64().unwrap());
        assert_eq!(closed["end"], "closed", "{relay}: {closed}");
        assert_eq!(
            closed["bytes_from_worker"], r["sent"],
            "{relay}: {closed} vs {r}"
        );
        assert_eq!(
            closed["bytes_to_worker"], r["received"],
            "{relay}: {closed} vs {r}"
        );
    }
}

#[test]
fn kernel_relay_carries_both_ways_across_a_half_close_with_exact_counts() {
    if !require_root("tcp_relay") {
        return;
    }
    exact_counts_across_a_half_close("kernel");
}

#[test]
fn splice_relay_carries_both_ways_across_a_half_close_with_exact_counts() {
    if !require_root("tcp_relay") {
        return;
    }
    exact_counts_across_a_half_close("splice");
}

#[test]
fn a_large_transfer_through_the_kernel_relay_arrives_intact() {
    if !require_root("tcp_relay") {
        return;
    }
    let (host, cg, agent) = setup("relay-large", "kernel");
    const SIZE: u64 = 300 << 20;
    let r = transfer(&cg, &host, SIZE, SIZE);
    assert_eq!(r["error"], Value::Null, "{r}");
    assert_eq!(r["server"]["count"], SIZE, "{r}");
    assert_eq!(r["server"]["intact"], true, "{r}");
    assert_eq!(r["reply_bytes"], SIZE, "{r}");
    assert_eq!(r["reply_intact"], true, "{r}");
    let closed = closed_record(&agent, r["pid"].as_u64().unwrap());
    assert_eq!(closed["end"], "closed", "{closed}");
    assert_eq!(closed["bytes_from_worker"], SIZE + 16, "{closed}");
    assert_eq!(closed["bytes_to_worker"], r["received"], "{closed}");
}

/// A worker whose first request waits in the agent's socket before the hand-over, and
/// which sends nothing more until it is answered: the hand-over itself must pass it on.
#[test]
fn a_worker_that_speaks_first_and_waits_is_answered_through_the_kernel_relay() {
    if !require_root("tcp_relay") {
        return;
    }
    let (host, cg, agent) = setup("relay-rr", "kernel");
    let mut cmd = Command::new(agent_bin());
    cmd.args(["exec", "--cgroup"])
        .arg(&cg.path)
        .arg("--")
        .arg(peer_bin())
        .args(["rr", &host.addr4(ECHO).to_string(), "200", "64"]);
    let out = output_within(&mut cmd, CHILD_TIMEOUT);
    assert!(
        out.status.success(),
        "round trips failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let all = agent.settled();
    let closed: Vec<&Value> = all
        .iter()
        .filter(|r| r["kind"] == "session_closed")
        .collect();
    assert_eq!(closed.len(), 1, "{all:?}");
    assert_eq!(closed[0]["end"], "closed", "{all:?}");
    assert_eq!(closed[0]["bytes_from_worker"], 200 * 64, "{all:?}");
    assert_eq!(closed[0]["bytes_to_worker"], 200 * 64, "{all:?}");
}

/// How many sockets the agent process `pid` has in its in-kernel relay (entries of its
/// `PAM_RELAY_PEERS`, two per session), read with bpftool.
fn relayed_sockets(pid: u32) -> usize {
    let bpftool = |args: &[&str]| -> Value {
        let out = output_within(Command::new("bpftool").arg("-j").args(args), CHILD_TIMEOUT);
        assert!(out.status.success(), "bpftool {args:?}: {out:?}");
        serde_json::from_slice(&out.stdout).expect("bpftool JSON")
    };
    // The maps the process holds: the `map_id` of its fds.
    let held: Vec<u64> = std::fs::read_dir(format!("/proc/{pid}/fdinfo"))
        .expect("agent fdinfo")
        .flatten()
        .filter_map(|e| std::fs::read_to_string(e.path()).ok())
        .filter_map(|info| {
            info.lines()
                .find_map(|l| l.strip_prefix("map_id:"))
                .and_then(|id| id.trim().parse().ok())
        })
        .collect();
    let maps = bpftool(&["map", "show"]);
    let id = maps
        .as_array()
        .expect("map list")
        .iter()
        .find(|m| {
            m["name"] == "PAM_RELAY_PEERS" && m["id"].as_u64().is_some_and(|id| held.contains(&id))
        })
        .and_then(|m| m["id"].as_u64())
        .unwrap_or_else(|| panic!("agent {pid} has no PAM_RELAY_PEERS map: {maps}"));
    bpftool(&["map", "dump", "id", &id.to_string()])
        .as_array()
        .map_or(0, Vec::len)
}

const WAIT: std::time::Duration = std::time::Duration::from_secs(30);

/// Waits until the agent's one session is relayed in the kernel (its pair in the relay).
fn wait_in_kernel(agent: &Agent) {
    let pid = agent.pid().expect("agent pid");
    wait_for(
        "the session's two sockets in the kernel relay",
        WAIT,
        || (relayed_sockets(pid) == 2).then_some(()),
    );
}

/// A worker that has sent `HOLD` bytes of a larger transfer and waits.
struct Held {
    child: pam_e2e::Watched,
    pid: u64,
}

const HOLD: u64 = 1 << 20;

fn start_held(cg: &Cgroup, host: &TestHost) -> Held {
    let mut child = transfer_cmd(
        cg,
        host,
        &[(64u64 << 20).to_string(), "1000".into(), HOLD.to_string()],
    )
    .stdin(Stdio::piped())
    .stdout(Stdio::piped())
    .stderr(Stdio::piped())
    .spawn_watched()
    .expect("worker");
    let mut line = String::new();
    BufReader::new(child.stdout.as_mut().expect("stdout"))
        .read_line(&mut line)
        .expect("worker's first line");
    let held: Value = serde_json::from_str(line.trim())
        .unwrap_or_else(|_| panic!("worker did not reach its hold point: {line}"));
    assert_eq!(held["held"], true, "{held}");
    Held {
        pid: held["pid"].as_u64().unwrap(),
        child,
    }
}

impl Held {
    /// Lets the worker go on, and returns its report.
    fn finish(mut self) -> Value {
        let _ = self.child.stdin.as_mut().expect("stdin").write_all(b"go\n");
        let out = self.child.wait_with_output().expect("worker output");
        let stdout = String::from_utf8_lossy(&out.stdout);
        let line = stdout.lines().last().expect("worker report");
        serde_json::from_str(line).expect("worker report is JSON")
    }
}

/// The worker's connection ended without the server's answer: none of the rest of its
/// transfer reached the server by another way.
fn assert_cut_off(r: &Value) {
    assert_eq!(
        r["server"],
        Value::Null,
        "the transfer completed around the agent: {r}"
    );
    assert_eq!(r["received"], 0, "{r}");
    assert_ne!(r["sent"], (64u64 << 20) + 16, "{r}");
}

#[test]
fn a_killed_agent_cuts_a_kernel_relayed_transfer_and_nothing_goes_around_it() {
    if !require_root("tcp_relay") {
        return;
    }
    let (host, cg, mut agent) = setup("relay-kill", "kernel");
    let held = start_held(&cg, &host);
    let (opened, _) = wait_for("the session on record", WAIT, || {
        agent.session_of_pid(held.pid)
    });
    assert_eq!(opened["resource"]["name"], "sink");
    wait_in_kernel(&agent);
    agent.kill().expect("kill -9");
    let r = held.finish();
    assert_cut_off(&r);
    assert!(r["error"].is_string(), "the worker saw no failure: {r}");
}

#[test]
fn a_stopped_agent_journals_the_kernel_relayed_session_closing() {
    if !require_root("tcp_relay") {
        return;
    }
    let (host, cg, mut agent) = setup("relay-stop", "kernel");
    let held = start_held(&cg, &host);
    wait_in_kernel(&agent);
    agent.stop().expect("orderly stop");
    let r = held.finish();
    assert_cut_off(&r);
    let (_, closed) = agent
        .session_of_pid(held_pid(&r))
        .expect("session on record");
    let closed = closed.expect("the stop journals the session's end");
    assert_eq!(closed["end"], "agent_shutdown", "{closed}");
    let from_worker = closed["bytes_from_worker"].as_u64().unwrap();
    assert!(
        from_worker <= HOLD + 16,
        "more was counted than the worker sent before the stop: {closed}"
    );
    assert_eq!(closed["bytes_to_worker"], 0, "{closed}");
}

fn held_pid(r: &Value) -> u64 {
    r["pid"].as_u64().expect("pid in report")
}
