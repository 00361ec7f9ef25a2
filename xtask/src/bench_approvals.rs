//! `cargo xtask bench --only approvals`: how long an approval takes to take effect. A
//! governed psql's DELETE is held; another user runs `pam-agent approvals approve`; we
//! time that command (connect, decide, journal the decision, release the statement) and
//! the time until the worker's psql has its result, over several rounds, with the direct
//! DELETE (no agent) in the same run as the baseline; then the same through the HTTPS
//! API, approved by `curl` with a bearer token from a real OpenID provider on loopback
//! (the token verified on each call). Then pgbench measures what the
//! approval machinery costs when nothing is held: the same policy with and without a
//! `require_approval` rule and the control socket, next to direct, in the same run.

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
            3 * ROUNDS
        ),
    )?;
    let cg = Cgroup::new("benchappr")?;
    let sock_dir = tempfile::Builder::new()
        .prefix("pam-bench-appr")
        .tempdir()?;
    std::fs::set_permissions(sock_dir.path(), std::fs::Permissions::from_mode(0o755))?;
    let socket = sock_dir.path().join("approvals.sock");
    let idp = pam_e2e::idp::Idp::start(&[("alice", &["secops"])])?;
    let api_port = pam_e2e::free_port();
    let ca = sock_dir.path().join("ca.pem");
    let _agent = Agent::start_with(
        &[&cg],
        &[ResourceSpec::postgres("db", host.v4, 5432)],
        &format!(
            "[[policy.rules]]\nname = \"deletes\"\naction = \"require_approval\"\nkinds = [\"delete\"]\n\n\
             [worker_tls]\nca_cert = \"{}\"\nca_key = \"{}\"\n\n\
             [approvals]\nsocket = \"{}\"\ngroup = \"nogroup\"\n\n\
             [approvals.http]\nlisten = \"127.0.0.1:{api_port}\"\n\n\
             [approvals.http.oidc]\nissuer = \"{}\"\naudience = [\"{}\"]\n",
            ca.display(),
            sock_dir.path().join("ca.key").display(),
            socket.display(),
            idp.issuer,
            pam_e2e::idp::AUDIENCE,
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
    // The same through the HTTPS API: curl with a bearer token (verified on each call).
    let token = idp.token("alice");
    let (mut http_ms, mut http_result_ms) = (Vec::new(), Vec::new());
    for i in 1..=ROUNDS {
        let mut worker = psql(
            true,
            &format!("delete from t where id = {}", 2 * ROUNDS + i),
        )
        .spawn()?;
        let id = loop {
            let out = approvals(&["--json", "list"])?;
            let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap_or_default();
            if let Some(id) = v["requests"][0]["id"].as_str() {
                break id.to_owned();
            }
            std::thread::sleep(Duration::from_millis(5));
        };
        let t = Instant::now();
        let ok = Command::new("curl")
            .args(["-sS", "--fail-with-body", "-X", "POST", "--cacert"])
            .arg(&ca)
            .args(["-H", &format!("Authorization: Bearer {token}")])
            .arg(format!(
                "https://127.0.0.1:{api_port}/v1/approvals/{id}/approve"
            ))
            .output()?;
        http_ms.push(ms(t.elapsed()));
        anyhow::ensure!(
            ok.status.success(),
            "HTTP approve failed: {}{}",
            String::from_utf8_lossy(&ok.stdout),
            String::from_utf8_lossy(&ok.stderr)
        );
        worker.wait().context("worker")?;
        http_result_ms.push(ms(t.elapsed()));
    }
    let left = pg.admin_sql("postgres", "select count(*) from t")?;
    anyhow::ensure!(left.trim() == "0", "every delete ran: {left}");
    let unheld = pgbench_unheld(&host, &socket)?;
    let mut md = format!("## {HEADING}\n\n");
    writeln!(
        md,
        "{ROUNDS} rounds, {}. A governed psql's `DELETE` is held by a `require_approval` rule; \
         `nobody` runs `pam-agent approvals approve ID` (a new process: connect to the control \
         socket, decide, journal the decision with fsync, release the statement). *approve* is \
         that command's wall time; *result* runs until the worker's psql exited with its result \
         (the statement forwarded, run and answered, psql's exit). The HTTPS rows do the same \
         with `curl` (a new process: TLS handshake with the agent CA's leaf, bearer token \
         verified against the provider's cached JWKS, decision journaled). The baseline is the same \
         `DELETE` by psql directly, no agent (process start to exit).\n",
        crate::bench::machine()
    )?;
    writeln!(md, "| measure | p50 ms | p95 ms |\n|---|---:|---:|")?;
    for (name, v) in [
        ("approve (CLI, decision journaled)", &mut approve_ms),
        ("approve to the worker's result", &mut result_ms),
        ("approve (HTTPS + bearer token, curl)", &mut http_ms),
        (
            "approve (HTTPS) to the worker's result",
            &mut http_result_ms,
        ),
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
    md.push_str(&unheld);
    util::replace_section("docs/benchmarks.md", HEADING, &md)?;
    println!("{md}");
    Ok(())
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

/// pgbench through two agents with the same policy, one of them also carrying a
/// `require_approval` rule (for deletes, which pgbench never sends) and the approvals
/// control socket, with direct as the baseline: the cost of approvals when nothing is
/// held. Points alternate so that drift in the shared machine hits all three alike.
fn pgbench_unheld(host: &TestHost, socket: &std::path::Path) -> anyhow::Result<String> {
    use crate::bench_pg::{POLICY, parse_tps, pgbench_cmd};
    const SECONDS: &str = "10";
    let target = host.v4.to_string();
    util::output(
        pgbench_cmd(None, &target, 5432)
            .env("PGPASSWORD", PASSWORD)
            .args(["-i", "-q", "-s", "1", "postgres"]),
    )?;
    let resources = [ResourceSpec::postgres("db", host.v4, 5432)];
    let cg_plain = Cgroup::new("benchappr-plain")?;
    let _plain = Agent::start_with(&[&cg_plain], &resources, POLICY)?;
    let cg_held = Cgroup::new("benchappr-rules")?;
    let held_socket = socket.with_file_name("approvals-pgbench.sock");
    let _held = Agent::start_with(
        &[&cg_held],
        &resources,
        &format!(
            "{POLICY}\n[[policy.rules]]\nname = \"deletes\"\naction = \"require_approval\"\n\
             kinds = [\"delete\"]\n\n[approvals]\nsocket = \"{}\"\ngroup = \"nogroup\"\n",
            held_socket.display()
        ),
    )?;
    let mut md = format!(
        "\n### pgbench when nothing is held\n\npgbench scale 1, 1 client, simple protocol, \
         {SECONDS} s per point, measured one after the other in the same run: **direct**; \
         **pam-agent** with the pgbench policy of the PostgreSQL table above; **pam-agent + \
         approvals**: the same policy plus a `require_approval` rule (for deletes, which \
         pgbench never sends) and the approvals control socket. This is what approvals cost \
         a workload that is never held.\n\n\
         | script | direct tps | pam-agent tps (ratio) | pam-agent + approvals tps (ratio) | approvals / pam-agent |\n\
         |---|---:|---:|---:|---:|\n"
    );
    for (script, args) in [("select-only (-S)", &["-S"][..]), ("tpcb-like", &[][..])] {
        let mut tps = [0.0f64; 3];
        for (i, cg) in [None, Some(&cg_plain.path), Some(&cg_held.path)]
            .into_iter()
            .enumerate()
        {
            let mut cmd = pgbench_cmd(cg.map(|p| p.as_path()), &target, 5432);
            cmd.env("PGPASSWORD", PASSWORD)
                .args(args)
                .args(["-n", "-M", "simple", "-c", "1", "-T", SECONDS, "postgres"]);
            tps[i] = parse_tps(&util::output(&mut cmd)?)?;
            eprintln!("  {script} [{i}]: {:.0} tps", tps[i]);
        }
        let [d, a, h] = tps;
        writeln!(
            md,
            "| {script} | {d:.0} | {a:.0} ({:.2}) | {h:.0} ({:.2}) | {:.2} |",
            a / d,
            h / d,
            h / a
        )?;
    }
    Ok(md)
}
