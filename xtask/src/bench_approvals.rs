//! `cargo xtask bench --only approvals`: how long an approval takes to take effect. A
//! governed psql's DELETE is held; another user runs `pam-agent approvals approve`; we
//! time that command (connect, decide, journal the decision, release the statement) and
//! the time until the worker's psql has its result, over several rounds, with the direct
//! DELETE (no agent) in the same run as the baseline.

use std::{
    fmt::Write as _,
    os::unix::fs::PermissionsExt,
    process::{Command, Stdio},
    time::{Duration, Instant},
};

use anyhow::Context;
use pam_e2e::{Agent, Cgroup, ResourceSpec, TestHost, agent_bin, postgres::PgServer};

use crate::util;

const HEADING: &str = "Approvals: from `approve` to the statement's result (issue 10)";
const PASSWORD: &str = "bench-approvals";
const ROUNDS: usize = 30;

pub fn run() -> anyhow::Result<()> {
    util::sweep(true);
    let host = TestHost::new()?;
    let pg = PgServer::start(&host, 5432, PASSWORD)?;
    pg.admin_sql(
        "postgres",
        &format!(
            "create table t(id int primary key); insert into t select generate_series(1, {})",
            2 * ROUNDS
        ),
    )?;
    let cg = Cgroup::new("benchappr")?;
    let sock_dir = tempfile::Builder::new()
        .prefix("pam-bench-appr")
        .tempdir()?;
    std::fs::set_permissions(sock_dir.path(), std::fs::Permissions::from_mode(0o755))?;
    let socket = sock_dir.path().join("approvals.sock");
    let _agent = Agent::start_with(
        &[&cg],
        &[ResourceSpec::postgres("db", host.v4, 5432)],
        &format!(
            "[[policy.rules]]\nname = \"deletes\"\naction = \"require_approval\"\nkinds = [\"delete\"]\n\n\
             [approvals]\nsocket = \"{}\"\ngroup = \"nogroup\"\n",
            socket.display()
        ),
    )?;
    let v4 = host.v4.to_string();
    let psql = |governed: bool, sql: &str| {
        let mut c = if governed {
            let mut c = Command::new(agent_bin());
            c.args(["exec", "--cgroup"]).arg(&cg.path).arg("--");
            c
        } else {
            Command::new("env")
        };
        c.args([
            "psql", "-h", &v4, "-U", "postgres", "-d", "postgres", "-XAtqc", sql,
        ])
        .env("PGPASSWORD", PASSWORD)
        .stdout(Stdio::null())
        .stderr(Stdio::null());
        c
    };
    let approvals = |args: &[&str]| {
        Command::new("setpriv")
            .args(["--reuid", "65534", "--regid", "65534", "--init-groups"])
            .arg(agent_bin())
            .arg("approvals")
            .arg("--socket")
            .arg(&socket)
            .args(args)
            .output()
    };
    let (mut approve_ms, mut result_ms, mut direct_ms) = (Vec::new(), Vec::new(), Vec::new());
    for i in 1..=ROUNDS {
        let t = Instant::now();
        psql(false, &format!("delete from t where id = {}", ROUNDS + i)).status()?;
        direct_ms.push(ms(t.elapsed()));
        let mut worker = psql(true, &format!("delete from t where id = {i}")).spawn()?;
        let id = loop {
            let out = approvals(&["--json", "list"])?;
            let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap_or_default();
            if let Some(id) = v["requests"][0]["id"].as_str() {
                break id.to_owned();
            }
            std::thread::sleep(Duration::from_millis(5));
        };
        let t = Instant::now();
        let ok = approvals(&["approve", &id])?;
        approve_ms.push(ms(t.elapsed()));
        anyhow::ensure!(
            ok.status.success(),
            "approve failed: {}",
            String::from_utf8_lossy(&ok.stderr)
        );
        worker.wait().context("worker")?;
        result_ms.push(ms(t.elapsed()));
    }
    let left = pg.admin_sql("postgres", "select count(*) from t")?;
    anyhow::ensure!(left.trim() == "0", "every delete ran: {left}");
    let mut md = format!("## {HEADING}\n\n");
    writeln!(
        md,
        "{ROUNDS} rounds, {}. A governed psql's `DELETE` is held by a `require_approval` rule; \
         `nobody` runs `pam-agent approvals approve ID` (a new process: connect to the control \
         socket, decide, journal the decision with fsync, release the statement). *approve* is \
         that command's wall time; *result* runs until the worker's psql exited with its result \
         (the statement forwarded, run and answered, psql's exit). The baseline is the same \
         `DELETE` by psql directly, no agent (process start to exit).\n",
        crate::bench::machine()
    )?;
    writeln!(md, "| measure | p50 ms | p95 ms |\n|---|---:|---:|")?;
    for (name, v) in [
        ("approve (CLI, decision journaled)", &mut approve_ms),
        ("approve to the worker's result", &mut result_ms),
        ("direct psql DELETE, whole process", &mut direct_ms),
    ] {
        v.sort_by(f64::total_cmp);
        writeln!(
            md,
            "| {name} | {:.1} | {:.1} |",
            v[v.len() / 2],
            v[v.len() * 95 / 100]
        )?;
    }
    writeln!(
        md,
        "\nGoal: under 10 ms from `approve` to the statement reaching the server (via the CLI)."
    )?;
    util::replace_section("docs/benchmarks.md", HEADING, &md)?;
    println!("{md}");
    Ok(())
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}
