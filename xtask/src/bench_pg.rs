//! `cargo xtask bench`, PostgreSQL part (issue 4): pgbench against a real PostgreSQL 15
//! on a test host, three ways in the same run, point by point:
//!
//! - direct: an ungoverned pgbench to the test host's address;
//! - pgbouncer in session mode on this host (a plain proxy: the baseline for what any
//!   proxy costs);
//! - pam-agent: the same, unmodified pgbench started in a governed cgroup, so its
//!   connections are redirected by the kernel programs, and every statement is
//!   classified, judged and journaled (default journal settings: each record written,
//!   in the OS, before its statement goes on; flushed to disk within 50 ms);
//! - pam-agent with `sync = "always"` in its journal (each statement also waits for the
//!   disk's flush): what the disk's flush latency costs on top.

use std::{
    fmt::Write as _,
    net::TcpStream,
    path::Path,
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

use anyhow::{Context, bail};
use pam_e2e::{Agent, Cgroup, ResourceSpec, TestHost, postgres::PgServer};

use crate::util;

const PG_PORT: u16 = 5432;
const PASSWORD: &str = "bench-password";
/// Scale 10: more branches than clients, so 8 TPC-B clients do not all queue on one row.
const SCALE: &str = "10";

/// Allows what pgbench sends, nothing else.
pub(crate) const POLICY: &str = r#"
[policy]
default = "deny"

[[policy.rules]]
name = "no-unbounded-writes"
action = "deny"
if_flags = ["update_without_where", "delete_without_where"]

[[policy.rules]]
name = "pgbench-housekeeping"
action = "allow"
kinds = ["transaction", "session"]

[[policy.rules]]
name = "pgbench"
action = "allow"
kinds = ["select", "insert", "update"]
tables = ["public.pgbench_*", "pg_catalog.*"]
"#;

#[derive(Clone, Copy, PartialEq)]
enum Setup {
    Direct,
    Pgbouncer,
    Agent,
    AgentAlways,
}

impl Setup {
    const ALL: [Setup; 4] = [
        Setup::Direct,
        Setup::Pgbouncer,
        Setup::Agent,
        Setup::AgentAlways,
    ];

    fn label(self) -> &'static str {
        match self {
            Setup::Direct => "direct",
            Setup::Pgbouncer => "pgbouncer (session)",
            Setup::Agent => "pam-agent (redirected)",
            Setup::AgentAlways => "pam-agent, sync = always",
        }
    }
}

struct Point {
    script: &'static str,
    clients: u32,
    mode: &'static str,
    tps: [f64; 4],
    /// Proxy CPU time per transaction, µs (pgbouncer, agent, agent with sync = always).
    cpu_us: [f64; 4],
    /// Of the agent's: its journal index thread (built behind the log).
    index_us: [f64; 4],
}

/// CPU time (user + system) of a process, and of its threads named `thread`, in µs.
fn cpu_us(pid: u32, thread: &str) -> (f64, f64) {
    let tick = 1e6 / 100.0; // USER_HZ
    let fields = |stat: &str| -> Option<(String, f64)> {
        let open = stat.find('(')?;
        let close = stat.rfind(')')?;
        let comm = stat[open + 1..close].to_owned();
        let rest: Vec<&str> = stat[close + 2..].split_whitespace().collect();
        let ticks = rest.get(11)?.parse::<f64>().ok()? + rest.get(12)?.parse::<f64>().ok()?;
        Some((comm, ticks * tick))
    };
    let total = std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .ok()
        .and_then(|s| fields(&s))
        .map_or(0.0, |(_, t)| t);
    let mut part = 0.0;
    if let Ok(tasks) = std::fs::read_dir(format!("/proc/{pid}/task")) {
        for t in tasks.flatten() {
            if let Some((comm, us)) = std::fs::read_to_string(t.path().join("stat"))
                .ok()
                .and_then(|s| fields(&s))
                && comm.starts_with(thread)
            {
                part += us;
            }
        }
    }
    (total, part)
}

/// Transactions pgbench completed.
fn parse_transactions(out: &str) -> Option<f64> {
    out.lines()
        .find_map(|l| l.strip_prefix("number of transactions actually processed: "))
        .and_then(|l| l.split(|c: char| !c.is_ascii_digit()).next())
        .and_then(|n| n.parse().ok())
}

/// Runs the matrix and returns the markdown section (without its `## ` heading line).
pub fn run(seconds: u32) -> anyhow::Result<String> {
    let host = TestHost::new()?;
    let pg = PgServer::start(&host, PG_PORT, PASSWORD)?;
    let target = host.v4.to_string();
    eprintln!("pgbench -i -s {SCALE}...");
    util::output(
        pgbench_cmd(None, &target, PG_PORT)
            .args(["-i", "-q", "-s", SCALE])
            .arg("postgres"),
    )?;
    let bouncer = Pgbouncer::start(&target, PG_PORT)?;
    let cg = Cgroup::new("pgbench")?;
    let agent = Agent::start_with(
        &[&cg],
        &[ResourceSpec::postgres("bench-db", host.v4, PG_PORT)],
        POLICY,
    )?;
    // A second agent governing another cgroup: same resource, every record on disk
    // before its statement goes on.
    let cg_always = Cgroup::new("pgbench-always")?;
    let agent_always = Agent::start_with_journal(
        &[&cg_always],
        &[ResourceSpec::postgres("bench-db", host.v4, PG_PORT)],
        "sync = \"always\"",
        POLICY,
    )?;
    eprintln!(
        "agents: default pid {:?}, sync = always pid {:?}",
        agent.pid(),
        agent_always.pid()
    );
    let load_before = loadavg();
    let version = pg.admin_sql("postgres", "show server_version")?;

    let mut points = Vec::new();
    // `PAM_BENCH_PG_POINTS=select-only/1/simple,tpcb/8/prepared` runs only the points
    // whose "script/clients/mode" label contains one of the patterns (for profiling).
    let only: Vec<String> = std::env::var("PAM_BENCH_PG_POINTS")
        .map(|v| v.split(',').map(str::to_owned).collect())
        .unwrap_or_default();
    for (script, args) in [("select-only (-S)", &["-S"][..]), ("tpcb-like", &[][..])] {
        for clients in [1u32, 8] {
            for mode in ["simple", "prepared"] {
                let label = format!("{script}/{clients}/{mode}");
                if !only.is_empty() && !only.iter().any(|o| label.contains(o.as_str())) {
                    continue;
                }
                let mut tps = [0.0; 4];
                let mut cpu = [f64::NAN; 4];
                let mut index = [f64::NAN; 4];
                for (i, setup) in Setup::ALL.into_iter().enumerate() {
                    let proxy_pid = match setup {
                        Setup::Direct => None,
                        Setup::Pgbouncer => bouncer.pid(),
                        Setup::Agent => agent.pid(),
                        Setup::AgentAlways => agent_always.pid(),
                    };
                    let before = proxy_pid.map(|p| cpu_us(p, "pam-journal-ind"));
                    let mut cmd = match setup {
                        Setup::Direct => pgbench_cmd(None, &target, PG_PORT),
                        Setup::Pgbouncer => pgbench_cmd(None, "127.0.0.1", bouncer.port),
                        Setup::Agent => pgbench_cmd(Some(&cg.path), &target, PG_PORT),
                        Setup::AgentAlways => pgbench_cmd(Some(&cg_always.path), &target, PG_PORT),
                    };
                    cmd.args(args)
                        .args(["-n", "-M", mode, "-c", &clients.to_string()])
                        .args(["-j", &clients.min(2).to_string()])
                        .args(["-T", &seconds.to_string(), "postgres"]);
                    let out = util::output(&mut cmd)?;
                    tps[i] = parse_tps(&out)?;
                    if let (Some(p), Some((t0, i0)), Some(n)) =
                        (proxy_pid, before, parse_transactions(&out))
                    {
                        let (t1, i1) = cpu_us(p, "pam-journal-ind");
                        cpu[i] = (t1 - t0) / n;
                        index[i] = (i1 - i0) / n;
                    }
                    eprintln!(
                        "  {script} c={clients} {mode} {}: {:.0} tps",
                        setup.label(),
                        tps[i]
                    );
                }
                points.push(Point {
                    script,
                    clients,
                    mode,
                    tps,
                    cpu_us: cpu,
                    index_us: index,
                });
            }
        }
    }
    let load_after = loadavg();
    let statements = agent.records("statement").len();
    drop(agent);
    drop(agent_always);
    drop(bouncer);
    drop(pg);
    drop(host);

    let mut md = String::new();
    writeln!(
        md,
        "pgbench (PostgreSQL {}) scale {SCALE}, {seconds} s per point, `-n` (no vacuum), \
         `-j` = min(clients, 2). Every point is measured four ways one after the other in \
         the same run: **direct** (ungoverned pgbench → the test host's address, over the \
         veth pair); **pgbouncer** 1.18 in session pool mode on this host (pgbench → \
         127.0.0.1 → pgbouncer → server); **pam-agent**: the unmodified pgbench started \
         in a governed cgroup (`pam-agent exec`) connecting to the server's own address, \
         redirected by the kernel programs into the agent, which classifies, judges and \
         journals every statement before forwarding it (default journal settings: \
         segment log, each record written by its session (in the OS) before the statement \
         goes on, flushed to disk within 50 ms; SQLite index behind it); and the same with \
         `sync = \"always\"` (each statement also waits for an `fdatasync` covering its \
         record; a second agent governing another cgroup), which shows what the disk's \
         flush latency costs. The default agent journaled {statements} statement records \
         in this run. \
         Load average (1 min) before/after: {load_before}/{load_after}; pgbench, \
         PostgreSQL, the proxies and the journal share the 2 CPUs.\n",
        version.trim()
    )?;
    writeln!(
        md,
        "| script | clients | mode | direct tps | pgbouncer tps (ratio) | pam-agent tps (ratio) | pam-agent, sync = always, tps (ratio) |"
    )?;
    writeln!(md, "|---|---:|---|---:|---:|---:|---:|")?;
    for p in &points {
        let [d, b, a, n] = p.tps;
        writeln!(
            md,
            "| {} | {} | {} | {d:.0} | {b:.0} ({:.2}) | {a:.0} ({:.2}) | {n:.0} ({:.2}) |",
            p.script,
            p.clients,
            p.mode,
            b / d,
            a / d,
            n / d
        )?;
    }
    writeln!(
        md,
        "\nProxy CPU time per transaction (user + system time of the proxy process over \
         the point, from /proc, divided by the transactions pgbench completed; same runs as \
         above). The agent's includes its journal index thread (SQLite, built behind the \
         log), shown apart in parentheses. Goal: agent ≤ 1.5× pgbouncer.\n"
    )?;
    writeln!(
        md,
        "| script | clients | mode | pgbouncer µs/tx | pam-agent µs/tx (index) | ratio | pam-agent, sync = always, µs/tx (index) | ratio |"
    )?;
    writeln!(md, "|---|---:|---|---:|---:|---:|---:|---:|")?;
    for p in &points {
        let [_, b, a, n] = p.cpu_us;
        writeln!(
            md,
            "| {} | {} | {} | {b:.1} | {a:.1} ({:.1}) | {:.2} | {n:.1} ({:.1}) | {:.2} |",
            p.script,
            p.clients,
            p.mode,
            p.index_us[2],
            a / b,
            p.index_us[3],
            n / b
        )?;
    }
    let cpu_met = points
        .iter()
        .filter(|p| p.cpu_us[2] <= 1.5 * p.cpu_us[1])
        .count();
    writeln!(
        md,
        "\nCPU goal (agent ≤ 1.5× pgbouncer, default journal): **met at {cpu_met} of {} points.**",
        points.len()
    )?;
    let met = |i: usize| {
        points
            .iter()
            .filter(|p| p.tps[i] / p.tps[0] >= 0.9 && p.tps[i] >= p.tps[1])
            .count()
    };
    writeln!(
        md,
        "\nGoal: pam-agent ≥ 0.90 of direct and ahead of pgbouncer's ratio. **Met at {} of \
         {n} points with the default journal; at {} of {n} with `sync = \"always\"`.**",
        met(2),
        met(3),
        n = points.len()
    )?;
    Ok(md)
}

pub(crate) fn pgbench_cmd(governed: Option<&Path>, host: &str, port: u16) -> Command {
    let mut c = match governed {
        Some(cg) => {
            let mut c = Command::new(pam_e2e::agent_bin());
            c.args(["exec", "--cgroup"]).arg(cg).args(["--", "pgbench"]);
            c
        }
        None => Command::new("pgbench"),
    };
    c.args(["-h", host, "-p", &port.to_string(), "-U", "postgres"])
        .env("PGPASSWORD", PASSWORD)
        .env("PGSSLMODE", "disable");
    c
}

pub(crate) fn parse_tps(out: &str) -> anyhow::Result<f64> {
    out.lines()
        .find_map(|l| l.strip_prefix("tps = "))
        .and_then(|l| l.split_whitespace().next())
        .and_then(|n| n.parse().ok())
        .with_context(|| format!("no tps line in pgbench output:\n{out}"))
}

fn loadavg() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .ok()
        .and_then(|s| s.split_whitespace().next().map(str::to_owned))
        .unwrap_or_else(|| "?".into())
}

/// pgbouncer on this host in session mode, run as `postgres` (it refuses root), stopped
/// on drop.
struct Pgbouncer {
    child: Child,
    port: u16,
    _dir: tempfile::TempDir,
}

impl Pgbouncer {
    fn start(server: &str, server_port: u16) -> anyhow::Result<Pgbouncer> {
        let dir = tempfile::Builder::new().prefix("pam-pgbouncer").tempdir()?;
        let port = pam_e2e::free_port();
        let ini = dir.path().join("pgbouncer.ini");
        std::fs::write(
            dir.path().join("userlist.txt"),
            format!("\"postgres\" \"{PASSWORD}\"\n"),
        )?;
        std::fs::write(
            &ini,
            format!(
                "[databases]\npostgres = host={server} port={server_port} dbname=postgres\n\n\
                 [pgbouncer]\nlisten_addr = 127.0.0.1\nlisten_port = {port}\n\
                 unix_socket_dir =\nauth_type = scram-sha-256\nauth_file = {}\n\
                 pool_mode = session\nmax_client_conn = 100\ndefault_pool_size = 20\n\
                 ignore_startup_parameters = extra_float_digits\n\
                 logfile = {}\n",
                dir.path().join("userlist.txt").display(),
                dir.path().join("pgbouncer.log").display(),
            ),
        )?;
        chown_postgres(dir.path())?;
        for f in std::fs::read_dir(dir.path())? {
            chown_postgres(&f?.path())?;
        }
        let child = Command::new("runuser")
            .args(["-u", "postgres", "--", "pgbouncer"])
            .arg(&ini)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .context("starting pgbouncer")?;
        let bouncer = Pgbouncer {
            child,
            port,
            _dir: dir,
        };
        let deadline = Instant::now() + Duration::from_secs(10);
        while TcpStream::connect(("127.0.0.1", port)).is_err() {
            if Instant::now() > deadline {
                bail!("pgbouncer did not listen on 127.0.0.1:{port} within 10 s");
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        Ok(bouncer)
    }
}

impl Pgbouncer {
    /// pgbouncer's own pid (the child of `runuser`).
    fn pid(&self) -> Option<u32> {
        let parent = self.child.id();
        std::fs::read_to_string(format!("/proc/{parent}/task/{parent}/children"))
            .ok()?
            .split_whitespace()
            .next()?
            .parse()
            .ok()
    }
}

impl Drop for Pgbouncer {
    fn drop(&mut self) {
        // runuser passes SIGTERM on to pgbouncer.
        // SAFETY: signalling our own child process by pid.
        unsafe { libc::kill(self.child.id() as i32, libc::SIGTERM) };
        let _ = self.child.wait();
    }
}

fn chown_postgres(path: &Path) -> anyhow::Result<()> {
    util::output(Command::new("chown").arg("postgres:postgres").arg(path)).map(|_| ())
}
