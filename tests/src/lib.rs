//! Fixtures for pam-agent's end-to-end tests: every one is a real thing on this host
//! (a network namespace test host, a cgroup v2 directory, the agent binary, worker
//! processes) and every one cleans itself up on drop, also when the test panics.
//!
//! - [`TestHost`]: a network namespace with a veth pair, IPv4 and IPv6 addresses.
//! - [`Cgroup`]: a governed cgroup under the cgroup2 mount.
//! - [`Agent`]: `pam-agent run` with a generated config, ready when it says READY=1 on
//!   its systemd notify socket.
//! - [`worker`]: runs `pam-testpeer connect` as a worker (inside a cgroup or not).
//! - [`idp::Idp`]: a real OpenID provider on loopback; [`receiver`]: webhook receivers.
//! - [`session::Session`]: one PostgreSQL session kept open and driven statement by
//!   statement, for what must hold across an event in the agent.
//! - [`masking::MaskFixture`]: the masking tests' database, cgroup and agent.
//! - [`oracle`]: the masking tests' search for protected values in what clients received.

pub mod dns;
pub mod idp;
pub mod masking;
pub mod ocsf;
pub mod oracle;
pub mod peer_suite;
pub mod postgres;
pub mod receiver;
pub mod run_id;
pub mod session;

use std::{
    io::Read,
    net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr},
    os::unix::net::UnixDatagram,
    path::{Path, PathBuf},
    process::{Child, Command, Output, Stdio},
    time::{Duration, Instant},
};

use anyhow::{Context, bail};
use serde_json::Value;

/// An id no other fixture of any running test process holds (used in interface,
/// namespace, cgroup and pin names): see [`run_id`].
fn unique() -> u32 {
    run_id::take()
}

/// True when the test can run (root with eBPF). Under `CI=true` a test that cannot run
/// fails instead of skipping.
pub fn require_root(test: &str) -> bool {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } == 0 {
        return true;
    }
    if std::env::var("CI").as_deref() == Ok("true") {
        panic!("{test}: needs root and eBPF, and CI=true forbids skipping");
    }
    report_skip(test, "needs root and eBPF");
    false
}

/// Directory holding the workspace's built binaries (target/debug or target/release).
pub fn bin_dir() -> PathBuf {
    if let Some(dir) = std::env::var_os("PAM_BIN_DIR") {
        return dir.into();
    }
    let exe = std::env::current_exe().expect("test executable path");
    // target/<profile>/deps/<test>-<hash>
    exe.parent()
        .and_then(Path::parent)
        .expect("target profile dir")
        .to_owned()
}

pub fn agent_bin() -> PathBuf {
    let p = bin_dir().join("pam-agent");
    assert!(
        p.exists(),
        "{} not built: run `cargo build --bins` (cargo xtask test does)",
        p.display()
    );
    p
}

pub fn peer_bin() -> PathBuf {
    bin_dir().join("pam-testpeer")
}

fn run(cmd: &mut Command) -> anyhow::Result<Output> {
    let out = output_within(cmd, CHILD_TIMEOUT);
    if !out.status.success() {
        bail!(
            "{cmd:?} failed ({}): {}",
            out.status,
            String::from_utf8_lossy(&out.stderr)
        );
    }
    Ok(out)
}

fn ip(args: &[&str]) -> anyhow::Result<()> {
    run(Command::new("ip").args(args)).map(|_| ())
}

/// A test host: a network namespace reachable from the host over a veth pair.
pub struct TestHost {
    /// Its fixture id ([`run_id`]): processes started in it are noted under it.
    pub id: u32,
    pub ns: String,
    host_if: String,
    /// The veth end inside the namespace.
    ns_if: String,
    /// The test host's own addresses.
    pub v4: Ipv4Addr,
    pub v6: Ipv6Addr,
    servers: Vec<Child>,
}

impl TestHost {
    pub fn new() -> anyhow::Result<TestHost> {
        let id = unique();
        let ns = format!("pamt{id}");
        let host_if = format!("pt{id}h");
        let ns_if = format!("pt{id}n");
        let (a, b) = ((id / 250) % 250 + 1, id % 250 + 1);
        let host = TestHost {
            id,
            ns: ns.clone(),
            host_if: host_if.clone(),
            ns_if: ns_if.clone(),
            v4: Ipv4Addr::new(10, 200 + (a % 50) as u8, b as u8, 2),
            v6: format!("fd00:{a:x}:{b:x}::2").parse()?,
            servers: Vec::new(),
        };
        let host_v4 = format!("10.{}.{}.1/24", 200 + (a % 50), b);
        let ns_v4 = format!("{}/24", host.v4);
        let host_v6 = format!("fd00:{a:x}:{b:x}::1/64");
        let ns_v6 = format!("{}/64", host.v6);
        ip(&["netns", "add", &ns])?;
        ip(&[
            "link", "add", &host_if, "type", "veth", "peer", "name", &ns_if,
        ])?;
        ip(&["link", "set", &ns_if, "netns", &ns])?;
        ip(&["addr", "add", &host_v4, "dev", &host_if])?;
        ip(&["-6", "addr", "add", &host_v6, "dev", &host_if, "nodad"])?;
        ip(&["link", "set", &host_if, "up"])?;
        ip(&["-n", &ns, "addr", "add", &ns_v4, "dev", &ns_if])?;
        ip(&[
            "-n", &ns, "-6", "addr", "add", &ns_v6, "dev", &ns_if, "nodad",
        ])?;
        ip(&["-n", &ns, "link", "set", &ns_if, "up"])?;
        ip(&["-n", &ns, "link", "set", "lo", "up"])?;
        Ok(host)
    }

    /// A second IPv4 and IPv6 address of the test host (`.3` and `::3`, beside `.2` and
    /// `::2`): one machine with several addresses, as a database host often has.
    pub fn add_second_addresses(&self) -> anyhow::Result<(Ipv4Addr, Ipv6Addr)> {
        let o = self.v4.octets();
        let v4 = Ipv4Addr::new(o[0], o[1], o[2], 3);
        let mut s = self.v6.segments();
        s[7] = 3;
        let v6 = Ipv6Addr::from(s);
        ip(&[
            "-n",
            &self.ns,
            "addr",
            "add",
            &format!("{v4}/24"),
            "dev",
            &self.ns_if,
        ])?;
        ip(&[
            "-n",
            &self.ns,
            "-6",
            "addr",
            "add",
            &format!("{v6}/64"),
            "dev",
            &self.ns_if,
            "nodad",
        ])?;
        Ok((v4, v6))
    }

    /// Runs a command inside the test host's namespace.
    pub fn command(&self, program: impl AsRef<std::ffi::OsStr>) -> Command {
        let mut c = Command::new("ip");
        c.args(["netns", "exec", &self.ns]).arg(program);
        c
    }

    /// Starts the echo server on the given ports (IPv4 and IPv6) and waits for it.
    pub fn serve_echo(&mut self, ports: &[u16]) -> anyhow::Result<()> {
        self.serve("serve", ports)
    }

    /// Starts a server that accepts and at once closes (for connect benchmarks).
    pub fn serve_close(&mut self, ports: &[u16]) -> anyhow::Result<()> {
        self.serve("serve-close", ports)
    }

    /// Starts the `transfer` checker (`pam-testpeer serve-sink`): it checks each byte a
    /// client sends and answers only after the client's half-close.
    pub fn serve_sink(&mut self, ports: &[u16]) -> anyhow::Result<()> {
        self.serve("serve-sink", ports)
    }

    fn serve(&mut self, mode: &str, ports: &[u16]) -> anyhow::Result<()> {
        let mut cmd = self.command(peer_bin());
        std::os::unix::process::CommandExt::process_group(&mut cmd, 0);
        cmd.arg(mode);
        for p in ports {
            cmd.arg(format!("0.0.0.0:{p}")).arg(format!("[::]:{p}"));
        }
        let mut child = cmd
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .context("starting echo server")?;
        let mut ready = [0u8; 6];
        let _watch = Watchdog::new(
            child.id(),
            format!("{cmd:?} (waiting for it to listen)"),
            Duration::from_secs(30),
        );
        child
            .stdout
            .as_mut()
            .expect("stdout")
            .read_exact(&mut ready)
            .context("echo server did not start")?;
        run_id::note_pid(self.id, child.id());
        self.servers.push(child);
        Ok(())
    }

    pub fn addr4(&self, port: u16) -> SocketAddr {
        SocketAddr::new(IpAddr::V4(self.v4), port)
    }

    pub fn addr6(&self, port: u16) -> SocketAddr {
        SocketAddr::new(IpAddr::V6(self.v6), port)
    }

    /// The IPv4 address in IPv4-mapped IPv6 form, as a dual-stack socket would use it.
    pub fn addr_mapped(&self, port: u16) -> SocketAddr {
        SocketAddr::new(IpAddr::V6(self.v4.to_ipv6_mapped()), port)
    }
}

impl Drop for TestHost {
    fn drop(&mut self) {
        for s in &mut self.servers {
            let _ = s.kill();
            let _ = s.wait();
        }
        let _ = Command::new("ip")
            .args(["link", "del", &self.host_if])
            .output();
        let _ = Command::new("ip").args(["netns", "del", &self.ns]).output();
        run_id::release(self.id);
    }
}

/// Removes what killed test runs left behind (a Drop never runs under SIGKILL): the
/// registered fixtures of dead test processes ([`run_id::sweep`]: their agents,
/// postmasters and servers, namespaces, veths, cgroups and pins), then test objects that
/// no live test process registered (runs of older fixtures). Objects of running tests
/// are left alone. Returns how many slots and objects it removed.
pub fn sweep_leftovers() -> usize {
    let mut removed = run_id::sweep();
    // The id at the end of a fixture's name, when a live test process holds it.
    let held = |name: &str| run_id::id_of(name).is_some_and(run_id::live);
    if let Ok(out) = Command::new("ip").args(["netns", "list"]).output() {
        for line in String::from_utf8_lossy(&out.stdout).lines() {
            let ns = line.split_whitespace().next().unwrap_or_default();
            if ns.starts_with("pamt")
                && !held(ns)
                && Command::new("ip")
                    .args(["netns", "del", ns])
                    .status()
                    .is_ok_and(|s| s.success())
            {
                removed += 1;
            }
        }
    }
    if let Ok(out) = Command::new("ip").args(["-o", "link", "show"]).output() {
        for line in String::from_utf8_lossy(&out.stdout).lines() {
            // "12: pt1234h@if11: <...>"
            if let Some(name) = line.split(": ").nth(1).and_then(|n| n.split('@').next())
                && name.starts_with("pt")
                && name.ends_with('h')
                && !held(name)
                && Command::new("ip")
                    .args(["link", "del", name])
                    .status()
                    .is_ok_and(|s| s.success())
            {
                removed += 1;
            }
        }
    }
    if let Ok(entries) = std::fs::read_dir(cgroup2_root()) {
        for e in entries.flatten() {
            let name = e.file_name().to_string_lossy().into_owned();
            if name.starts_with("pamtest-") && !held(&name) {
                drop(Cgroup { path: e.path() });
                removed += 1;
            }
        }
    }
    if let Ok(entries) = std::fs::read_dir("/sys/fs/bpf") {
        for e in entries.flatten() {
            let name = e.file_name().to_string_lossy().into_owned();
            if name.starts_with("pamtest-") && !held(&name) {
                let _ = Command::new(agent_bin())
                    .args(["disable", "--pin-dir"])
                    .arg(e.path())
                    .output();
                removed += 1;
            }
        }
    }
    removed
}

/// Finds the cgroup2 mount from /proc/self/mounts.
pub fn cgroup2_root() -> PathBuf {
    let mounts = std::fs::read_to_string("/proc/self/mounts").expect("/proc/self/mounts");
    mounts
        .lines()
        .find_map(|l| {
            let f: Vec<&str> = l.split_whitespace().collect();
            (f.get(2) == Some(&"cgroup2")).then(|| PathBuf::from(f[1]))
        })
        .expect("a cgroup2 mount")
}

/// A cgroup v2 directory the test creates and removes (killing what runs in it).
pub struct Cgroup {
    pub path: PathBuf,
}

impl Cgroup {
    pub fn new(tag: &str) -> anyhow::Result<Cgroup> {
        let path = cgroup2_root().join(format!("pamtest-{tag}-{}", unique()));
        std::fs::create_dir(&path).with_context(|| format!("mkdir {}", path.display()))?;
        Ok(Cgroup { path })
    }

    /// The cgroup id eBPF reports: the directory's inode.
    pub fn id(&self) -> u64 {
        use std::os::unix::fs::MetadataExt;
        std::fs::metadata(&self.path).expect("cgroup dir").ino()
    }
}

impl Drop for Cgroup {
    fn drop(&mut self) {
        let _ = std::fs::write(self.path.join("cgroup.kill"), "1");
        let deadline = Instant::now() + Duration::from_secs(5);
        while std::fs::remove_dir(&self.path).is_err() && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(20));
        }
        if let Some(id) = self
            .path
            .file_name()
            .and_then(|n| run_id::id_of(&n.to_string_lossy()))
        {
            run_id::release(id);
        }
    }
}

/// A protected resource as written into the agent's config.
pub struct ResourceSpec {
    pub name: String,
    pub address: String,
    pub port: u16,
    pub protocol: &'static str,
    /// More `key = value` lines for this resource's table (TLS settings, say).
    pub extra: Vec<String>,
}

impl ResourceSpec {
    pub fn tcp(name: &str, address: impl ToString, port: u16) -> Self {
        ResourceSpec {
            name: name.into(),
            address: address.to_string(),
            port,
            protocol: "tcp",
            extra: Vec::new(),
        }
    }

    /// Adds a `key = value` line to the resource's table.
    pub fn with(mut self, line: impl Into<String>) -> Self {
        self.extra.push(line.into());
        self
    }

    pub fn postgres(name: &str, address: impl ToString, port: u16) -> Self {
        ResourceSpec {
            protocol: "postgres",
            ..Self::tcp(name, address, port)
        }
    }
}

/// A running `pam-agent run` with its own config, journal and pin directory.
pub struct Agent {
    /// Its fixture id ([`run_id`]), in its pin directory's name.
    id: u32,
    child: Option<Child>,
    pub dir: tempfile::TempDir,
    pub config: PathBuf,
    pub journal: PathBuf,
    pub pin_dir: PathBuf,
    pub port: u16,
    /// More environment for the agent's process from its next (re)start on
    /// (`LD_PRELOAD` of a fault-injecting shim, say).
    pub env: Vec<(String, String)>,
}

/// A free TCP port on loopback for the agent's listener.
pub fn free_port() -> u16 {
    let l = std::net::TcpListener::bind("127.0.0.1:0").expect("bind 127.0.0.1:0");
    l.local_addr().expect("local addr").port()
}

impl Agent {
    /// Writes a config governing `cgroups` and protecting `resources`, then starts the
    /// agent and waits until it is ready.
    pub fn start(cgroups: &[&Cgroup], resources: &[ResourceSpec]) -> anyhow::Result<Agent> {
        Self::start_with(cgroups, resources, "")
    }

    /// Like [`Agent::start`], with more config appended (a `[policy]` section, say).
    pub fn start_with(
        cgroups: &[&Cgroup],
        resources: &[ResourceSpec],
        extra: &str,
    ) -> anyhow::Result<Agent> {
        Self::start_with_journal(cgroups, resources, "", extra)
    }

    /// Like [`Agent::start_with`], with more lines in the `[journal]` section
    /// (`fsync = false`, say).
    pub fn start_with_journal(
        cgroups: &[&Cgroup],
        resources: &[ResourceSpec],
        journal_extra: &str,
        extra: &str,
    ) -> anyhow::Result<Agent> {
        Self::start_config(cgroups, resources, "", journal_extra, None, extra)
    }

    /// Like [`Agent::start_with`], with the journal in `dir` (a small tmpfs, say).
    pub fn start_with_journal_in(
        cgroups: &[&Cgroup],
        resources: &[ResourceSpec],
        dir: &Path,
        extra: &str,
    ) -> anyhow::Result<Agent> {
        Self::start_config(cgroups, resources, "", "", Some(dir), extra)
    }

    /// Like [`Agent::start_with`], with more lines in the `[listener]` section
    /// (`max_sessions_per_principal = 2`, say).
    pub fn start_with_listener(
        cgroups: &[&Cgroup],
        resources: &[ResourceSpec],
        listener_extra: &str,
        extra: &str,
    ) -> anyhow::Result<Agent> {
        Self::start_config(cgroups, resources, listener_extra, "", None, extra)
    }

    fn start_config(
        cgroups: &[&Cgroup],
        resources: &[ResourceSpec],
        listener_extra: &str,
        journal_extra: &str,
        journal_dir: Option<&Path>,
        extra: &str,
    ) -> anyhow::Result<Agent> {
        let dir = tempfile::Builder::new()
            .prefix("pam-agent-test")
            .tempdir()?;
        let port = free_port();
        let id = unique();
        let pin_dir = PathBuf::from(format!("/sys/fs/bpf/pamtest-{id}"));
        let journal = journal_dir.unwrap_or(dir.path()).join("journal.db");
        let mut text = format!(
            "[agent]\npin_dir = \"{}\"\n\n[listener]\nport = {port}\n{listener_extra}\n\n[journal]\npath = \"{}\"\n{journal_extra}\n\n[govern]\ncgroups = [{}]\n",
            pin_dir.display(),
            journal.display(),
            cgroups
                .iter()
                .map(|c| format!("\"{}\"", c.path.display()))
                .collect::<Vec<_>>()
                .join(", ")
        );
        for r in resources {
            text.push_str(&format!(
                "\n[[resources]]\nname = \"{}\"\naddress = \"{}\"\nport = {}\nprotocol = \"{}\"\n",
                r.name, r.address, r.port, r.protocol
            ));
            for line in &r.extra {
                text.push_str(line);
                text.push('\n');
            }
        }
        text.push('\n');
        text.push_str(extra);
        let config = dir.path().join("config.toml");
        std::fs::write(&config, text)?;
        let mut agent = Agent {
            id,
            child: None,
            dir,
            config,
            journal,
            pin_dir,
            port,
            env: Vec::new(),
        };
        agent.restart()?;
        Ok(agent)
    }

    /// The running agent's process id.
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    /// The running agent's resident memory, and its peak so far (VmRSS, VmHWM), in KiB.
    pub fn memory_kib(&self) -> Option<(u64, u64)> {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.pid()?)).ok()?;
        let field = |name: &str| {
            status
                .lines()
                .find_map(|l| l.strip_prefix(name))
                .and_then(|v| v.split_whitespace().next()?.parse().ok())
        };
        Some((field("VmRSS:")?, field("VmHWM:")?))
    }

    /// Starts the agent (again) with the same config and waits for READY=1.
    pub fn restart(&mut self) -> anyhow::Result<()> {
        assert!(self.child.is_none(), "agent already running");
        let notify_path = self.dir.path().join("notify.sock");
        let _ = std::fs::remove_file(&notify_path);
        let notify = UnixDatagram::bind(&notify_path)?;
        notify.set_read_timeout(Some(Duration::from_millis(200)))?;
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.dir.path().join("agent.log"))?;
        let mut child = Command::new(agent_bin())
            .args(["run", "--config"])
            .arg(&self.config)
            .envs(self.env.iter().map(|(k, v)| (k, v)))
            .env("NOTIFY_SOCKET", &notify_path)
            .env(
                "RUST_LOG",
                std::env::var("PAM_TEST_AGENT_LOG").unwrap_or_else(|_| "info".into()),
            )
            .stdout(log.try_clone()?)
            .stderr(log)
            .spawn()
            .context("starting pam-agent")?;
        run_id::note_pid(self.id, child.id());
        let deadline = Instant::now() + Duration::from_secs(30);
        let mut buf = [0u8; 512];
        loop {
            if let Ok(n) = notify.recv(&mut buf)
                && String::from_utf8_lossy(&buf[..n]).contains("READY=1")
            {
                break;
            }
            if let Some(status) = child.try_wait()? {
                bail!("pam-agent exited before ready ({status}):\n{}", self.log());
            }
            if Instant::now() > deadline {
                let _ = child.kill();
                bail!("pam-agent not ready within 30 s:\n{}", self.log());
            }
        }
        self.child = Some(child);
        Ok(())
    }

    /// Stops the agent with SIGTERM (orderly) and waits for it to exit.
    pub fn stop(&mut self) -> anyhow::Result<()> {
        self.signal_and_wait(libc::SIGTERM)
    }

    /// Kills the agent with SIGKILL (a crash) and waits for it to exit.
    pub fn kill(&mut self) -> anyhow::Result<()> {
        self.signal_and_wait(libc::SIGKILL)
    }

    fn signal_and_wait(&mut self, sig: i32) -> anyhow::Result<()> {
        if let Some(mut child) = self.child.take() {
            // SAFETY: signalling our own child process by pid.
            unsafe { libc::kill(child.id() as i32, sig) };
            let deadline = Instant::now() + Duration::from_secs(30);
            let status = loop {
                if let Some(status) = child.try_wait()? {
                    break status;
                }
                if Instant::now() > deadline {
                    let _ = child.kill();
                    let _ = child.wait();
                    bail!(
                        "HUNG: pam-agent did not exit within 30 s of signal {sig}; killed:\n{}",
                        self.log()
                    );
                }
                std::thread::sleep(Duration::from_millis(10));
            };
            if sig == libc::SIGTERM && !status.success() {
                bail!("pam-agent exited with {status} on SIGTERM:\n{}", self.log());
            }
        }
        Ok(())
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("agent.log")).unwrap_or_default()
    }

    /// Every journal record so far, as JSON, read the way a security engineer would:
    /// `pam-agent audit query --format jsonl`.
    pub fn journal(&self) -> Vec<Value> {
        if !self.journal.exists() {
            return Vec::new();
        }
        let out = run(Command::new(agent_bin())
            .args(["audit", "query", "--format", "jsonl", "--journal"])
            .arg(&self.journal))
        .expect("pam-agent audit query");
        String::from_utf8_lossy(&out.stdout)
            .lines()
            .filter(|l| !l.is_empty())
            .map(|l| serde_json::from_str(l).expect("journal line is JSON"))
            .collect()
    }

    /// `pam-agent audit verify` on this agent's journal: (passed, output).
    pub fn verify_journal(&self) -> (bool, String) {
        let out = output_within(
            Command::new(agent_bin())
                .args(["audit", "verify", "--journal"])
                .arg(&self.journal),
            CHILD_TIMEOUT,
        );
        (
            out.status.success(),
            String::from_utf8_lossy(&out.stdout).into_owned()
                + &String::from_utf8_lossy(&out.stderr),
        )
    }

    /// Journal records of one kind.
    pub fn records(&self, kind: &str) -> Vec<Value> {
        self.journal()
            .into_iter()
            .filter(|r| r["kind"] == kind)
            .collect()
    }

    /// The session_opened record for a worker pid, and the session's close record.
    pub fn session_of_pid(&self, pid: u64) -> Option<(Value, Option<Value>)> {
        let all = self.journal();
        let opened = all
            .iter()
            .find(|r| r["kind"] == "session_opened" && r["principal"]["pid"] == pid)?
            .clone();
        let closed = all
            .iter()
            .find(|r| r["kind"] == "session_closed" && r["session"] == opened["session"])
            .cloned();
        Some((opened, closed))
    }

    /// Names of the link pins (each one attached program).
    pub fn link_pins(&self) -> Vec<String> {
        std::fs::read_dir(self.pin_dir.join("links"))
            .map(|d| {
                d.flatten()
                    .map(|e| e.file_name().to_string_lossy().into_owned())
                    .collect()
            })
            .unwrap_or_default()
    }

    /// Number of entries in one of the agent's pinned maps (read with bpftool).
    pub fn map_entries(&self, map: &str) -> usize {
        let dir = self.pin_dir.join("maps");
        let path = std::fs::read_dir(&dir)
            .expect("maps pin dir")
            .flatten()
            .map(|e| e.path())
            .find(|p| {
                p.file_name()
                    .and_then(|n| n.to_str())
                    .is_some_and(|n| n.starts_with(&format!("{map}-v")))
            })
            .unwrap_or_else(|| panic!("no pinned map {map} in {}", dir.display()));
        let out = run(Command::new("bpftool")
            .args(["map", "dump", "pinned"])
            .arg(&path)
            .arg("-j"))
        .expect("bpftool map dump (installed by cargo xtask setup)");
        let v: Value = serde_json::from_slice(&out.stdout).expect("bpftool JSON");
        v.as_array().map(Vec::len).unwrap_or(0)
    }

    /// `pam-agent status` for this agent: (exit code, output).
    pub fn status(&self) -> (i32, String) {
        let out = output_within(
            Command::new(agent_bin())
                .args(["status", "--config"])
                .arg(&self.config),
            CHILD_TIMEOUT,
        );
        (
            out.status.code().unwrap_or(-1),
            String::from_utf8_lossy(&out.stdout).into_owned()
                + &String::from_utf8_lossy(&out.stderr),
        )
    }

    /// `pam-agent disable` for this agent's pin directory.
    pub fn disable(&self) -> anyhow::Result<String> {
        let out = run(Command::new(agent_bin())
            .args(["disable", "--config"])
            .arg(&self.config))?;
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    }
}

impl Drop for Agent {
    fn drop(&mut self) {
        let _ = self.kill();
        if self.pin_dir.exists() {
            let _ = Command::new(agent_bin())
                .args(["disable", "--pin-dir"])
                .arg(&self.pin_dir)
                .output();
        }
        run_id::release(self.id);
    }
}

/// What a `pam-testpeer connect` worker reported.
#[derive(Debug, Clone)]
pub struct Report(pub Value);

impl Report {
    pub fn pid(&self) -> u64 {
        self.0["pid"].as_u64().expect("pid in report")
    }
    pub fn ok(&self) -> bool {
        self.0["echo_ok"] == true
    }
    pub fn peer(&self) -> String {
        self.0["peer"].as_str().unwrap_or_default().to_owned()
    }
    pub fn local(&self) -> String {
        self.0["local"].as_str().unwrap_or_default().to_owned()
    }
    pub fn errno(&self) -> Option<i64> {
        self.0["errno"].as_i64()
    }
}

/// How to run a worker.
#[derive(Default, Clone, Copy)]
pub struct WorkerOpts<'a> {
    /// Run inside this cgroup (via `pam-agent exec`); outside any governed one if None.
    pub cgroup: Option<&'a Cgroup>,
    /// Drop to this uid/gid before connecting.
    pub uid: Option<u32>,
    pub bytes: usize,
}

/// Runs `pam-testpeer connect ADDR` as a worker and returns its report.
pub fn worker(to: SocketAddr, opts: WorkerOpts<'_>) -> Report {
    let mut cmd = match opts.cgroup {
        Some(cg) => {
            let mut c = Command::new(agent_bin());
            c.args(["exec", "--cgroup"]).arg(&cg.path).arg("--");
            c
        }
        None => Command::new("env"),
    };
    if let Some(uid) = opts.uid {
        cmd.args([
            "setpriv",
            &format!("--reuid={uid}"),
            &format!("--regid={uid}"),
            "--clear-groups",
        ]);
    }
    let bytes = if opts.bytes == 0 { 4096 } else { opts.bytes };
    cmd.arg(peer_bin())
        .arg("connect")
        .arg(to.to_string())
        .arg(bytes.to_string());
    let out = output_within(&mut cmd, CHILD_TIMEOUT);
    let stdout = String::from_utf8_lossy(&out.stdout);
    let line = stdout.lines().last().unwrap_or_else(|| {
        panic!(
            "worker printed nothing; stderr: {}",
            String::from_utf8_lossy(&out.stderr)
        )
    });
    Report(serde_json::from_str(line).expect("worker report is JSON"))
}

/// How long one child process (a client, `pam-agent audit`, an `ip` command) or one read
/// of the harness may take before the test fails, naming what hung. Generous: the 3
/// million row COPY takes under a minute here.
pub const CHILD_TIMEOUT: Duration = Duration::from_secs(300);

/// Polls `check` (every 20 ms) until it gives a value, and fails the test naming `what`
/// when `limit` passes first. For records the agent writes in the background
/// (completions, masking, session ends): wait for the record, never sleep for it.
pub fn wait_for<T>(what: &str, limit: Duration, mut check: impl FnMut() -> Option<T>) -> T {
    let deadline = Instant::now() + limit;
    loop {
        if let Some(v) = check() {
            return v;
        }
        if Instant::now() > deadline {
            panic!("timed out after {limit:?} waiting for {what}");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Kills a process group when it outlives its deadline (a hung client, a server that
/// never says it is ready), printing what was running. Dropping it disarms it.
pub struct Watchdog {
    disarm: Option<std::sync::mpsc::Sender<()>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Watchdog {
    /// Watches the process group `pgid` (a child spawned with `process_group(0)`).
    pub fn new(pgid: u32, what: String, limit: Duration) -> Watchdog {
        let (tx, rx) = std::sync::mpsc::channel::<()>();
        let thread = std::thread::spawn(move || {
            if let Err(std::sync::mpsc::RecvTimeoutError::Timeout) = rx.recv_timeout(limit) {
                use std::io::Write;
                let _ = writeln!(
                    std::io::stderr(),
                    "HUNG: {what} still running after {limit:?}; killing it"
                );
                // SAFETY: signalling a process group this test spawned.
                unsafe { libc::kill(-(pgid as i32), libc::SIGKILL) };
            }
        });
        Watchdog {
            disarm: Some(tx),
            thread: Some(thread),
        }
    }
}

impl Drop for Watchdog {
    fn drop(&mut self) {
        drop(self.disarm.take());
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// Whether a command succeeded, and what it printed (stdout, stderr) as text.
pub fn printed(out: &Output) -> (bool, String, String) {
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// Like `cmd.output()`, but the child (in its own process group, with everything it
/// started) is killed after `limit`, and the test fails naming the command and what it
/// printed so far.
pub fn output_within(cmd: &mut Command, limit: Duration) -> Output {
    use std::os::unix::process::CommandExt;
    let what = format!("{cmd:?}");
    let mut child = cmd
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .process_group(0)
        .spawn()
        .unwrap_or_else(|e| panic!("cannot start {what}: {e}"));
    let pipe = |r: Option<Box<dyn Read + Send>>| {
        std::thread::spawn(move || {
            let mut buf = Vec::new();
            if let Some(mut r) = r {
                let _ = r.read_to_end(&mut buf);
            }
            buf
        })
    };
    let out = pipe(child.stdout.take().map(|s| Box::new(s) as _));
    let err = pipe(child.stderr.take().map(|s| Box::new(s) as _));
    let deadline = Instant::now() + limit;
    let status = loop {
        match child.try_wait() {
            Ok(Some(status)) => break Some(status),
            Ok(None) if Instant::now() < deadline => std::thread::sleep(Duration::from_millis(10)),
            _ => break None,
        }
    };
    let Some(status) = status else {
        // SAFETY: signalling the process group this function spawned.
        unsafe { libc::kill(-(child.id() as i32), libc::SIGKILL) };
        let _ = child.wait();
        let (out, err) = (
            out.join().unwrap_or_default(),
            err.join().unwrap_or_default(),
        );
        panic!(
            "HUNG: {what} still running after {limit:?}; killed.\nstdout: {}\nstderr: {}",
            String::from_utf8_lossy(&out),
            String::from_utf8_lossy(&err)
        );
    };
    Output {
        status,
        stdout: out.join().unwrap_or_default(),
        stderr: err.join().unwrap_or_default(),
    }
}

/// A child process under a [`Watchdog`]: started in its own process group, killed with
/// everything it started (printing what it was) if it outlives [`CHILD_TIMEOUT`], and
/// when dropped (a failed test leaves no worker behind). Use it as a [`Child`].
pub struct Watched {
    child: Option<Child>,
    _watch: Watchdog,
}

impl Watched {
    /// `Child::wait_with_output`, under the same deadline.
    pub fn wait_with_output(mut self) -> std::io::Result<Output> {
        self.child.take().expect("child").wait_with_output()
    }
}

impl std::ops::Deref for Watched {
    type Target = Child;
    fn deref(&self) -> &Child {
        self.child.as_ref().expect("child")
    }
}

impl std::ops::DerefMut for Watched {
    fn deref_mut(&mut self) -> &mut Child {
        self.child.as_mut().expect("child")
    }
}

impl Drop for Watched {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            // SAFETY: signalling the process group this fixture spawned.
            unsafe { libc::kill(-(child.id() as i32), libc::SIGKILL) };
            let _ = child.wait();
        }
    }
}

/// `cmd.spawn_watched()`: `spawn()`, as a [`Watched`] child.
pub trait SpawnWatched {
    fn spawn_watched(&mut self) -> std::io::Result<Watched>;
}

impl SpawnWatched for Command {
    fn spawn_watched(&mut self) -> std::io::Result<Watched> {
        use std::os::unix::process::CommandExt;
        let what = format!("{self:?}");
        let child = self.process_group(0).spawn()?;
        let watch = Watchdog::new(child.id(), what, CHILD_TIMEOUT);
        Ok(Watched {
            child: Some(child),
            _watch: watch,
        })
    }
}

/// Records a skipped test where people and scripts see it: a `SKIP` line written to the
/// terminal past the test harness's output capture, and one line appended to
/// `target/<profile>/pam-skipped.log` (count them with `wc -l`).
pub fn report_skip(test: &str, why: &str) {
    use std::io::Write;
    // libtest names each test's thread after the test.
    let name = std::thread::current()
        .name()
        .filter(|n| *n != "main")
        .map_or_else(|| test.to_owned(), |n| format!("{test}::{n}"));
    let line = format!("SKIP {name}: {why} (CI=true makes this a failure)");
    let _ = writeln!(std::io::stderr(), "{line}");
    if let Ok(mut f) = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(bin_dir().join("pam-skipped.log"))
    {
        let _ = writeln!(f, "{line}");
    }
}

impl Agent {
    /// Waits until every session in the journal has its `session_closed` record (the
    /// last record of a session: its completions and masking records precede it), then
    /// returns the whole journal.
    pub fn settled(&self) -> Vec<Value> {
        wait_for(
            "every session's session_closed record",
            Duration::from_secs(30),
            || {
                let all = self.journal();
                let open = all.iter().filter(|r| r["kind"] == "session_opened").count();
                let closed = all.iter().filter(|r| r["kind"] == "session_closed").count();
                (open == closed).then_some(all)
            },
        )
    }

    /// Waits for at least `n` records of `kind` and returns all of them.
    pub fn wait_for_records(&self, kind: &str, n: usize) -> Vec<Value> {
        wait_for(
            &format!("{n} `{kind}` records"),
            Duration::from_secs(30),
            || {
                let found = self.records(kind);
                (found.len() >= n).then_some(found)
            },
        )
    }
}

/// `cmd.output_within()`: [`output_within`] with [`CHILD_TIMEOUT`], where a `Command`
/// chain would call `output()`.
pub trait OutputWithin {
    fn output_within(&mut self) -> std::io::Result<Output>;
}

impl OutputWithin for Command {
    fn output_within(&mut self) -> std::io::Result<Output> {
        Ok(output_within(self, CHILD_TIMEOUT))
    }
}
