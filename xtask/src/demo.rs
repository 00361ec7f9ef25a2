//! The main job, live on this machine: a real PostgreSQL on a test host, the agent
//! governing a cgroup, and an unmodified `psql` worker in that cgroup whose connection
//! is redirected, relayed and journaled; then the same worker with the agent stopped.

use std::process::Command;

use pam_e2e::{Agent, Cgroup, ResourceSpec, TestHost, postgres::PgServer};

use crate::util;

const PASSWORD: &str = "demo-worker-password";
/// The database password of `crew_reader`, which only the agent holds (in a 0600 file).
const READER_SECRET: &str = "demo-reader-secret-5e1f";

pub fn run() -> anyhow::Result<()> {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        anyhow::bail!(
            "the demo attaches eBPF programs and creates network namespaces: run it as root"
        );
    }
    util::sweep(false);

    step("test host: a network namespace with its own IPv4/IPv6 addresses");
    let host = TestHost::new()?;
    println!("  addresses {} and {}", host.v4, host.v6);

    step("PostgreSQL 15 on the test host, with a table of orders");
    let pg = PgServer::start(&host, 5432, PASSWORD)?;
    pg.admin_sql("postgres", "create database shop")?;
    pg.admin_sql(
        "shop",
        "create table orders(id serial primary key, customer text, total numeric(10,2),
                             email text, card text);
         insert into orders(customer, total, email, card)
           select 'customer-' || g, (g * 7.5)::numeric, 'customer' || g || '@example.com',
                  '4111 1111 1111 1111' from generate_series(1, 250) g;
         create table api_keys(id int, owner text, secret text);
         insert into api_keys values (1, 'billing', 'sk-live-demo');",
    )?;
    pg.admin_sql(
        "shop",
        &format!(
            "create role crew_reader login password '{READER_SECRET}';
             grant select on orders to crew_reader;"
        ),
    )?;
    // Credential injection: the agent, not the worker, holds crew_reader's password.
    let secrets = tempfile::Builder::new()
        .prefix("pam-demo-secrets")
        .tempdir()?;
    let reader_secret = secrets.path().join("shop-db.crew_reader");
    std::fs::write(&reader_secret, READER_SECRET)?;
    std::fs::set_permissions(
        &reader_secret,
        std::os::unix::fs::PermissionsExt::from_mode(0o600),
    )?;

    step("governed cgroup for workers, and the agent protecting the database");
    let workers = Cgroup::new("demo-workers")?;
    // The approvals socket: in a directory `nobody` (the demo's approver) can reach.
    let sock_dir = tempfile::Builder::new().prefix("pam-demo").tempdir()?;
    std::fs::set_permissions(
        sock_dir.path(),
        std::os::unix::fs::PermissionsExt::from_mode(0o755),
    )?;
    let socket = sock_dir.path().join("approvals.sock");
    let approvals = format!(
        "{DEMO_APPROVAL}\n[approvals]\nsocket = \"{}\"\ngroup = \"nogroup\"\n",
        socket.display()
    );
    let mut agent = Agent::start_with(
        &[&workers],
        &[
            ResourceSpec::postgres("shop-db", host.v4, 5432),
            // Over IPv6 the agent logs workers in itself, as crew_reader.
            ResourceSpec::postgres("shop-db-v6", host.v6, 5432)
                .with("worker_auth = \"none\"")
                .with(format!(
                    "[[resources.logins]]\nprincipals = [\"demo-crew\"]\nrole = \"crew_reader\"\nsecret_file = \"{}\"",
                    reader_secret.display()
                )),
        ],
        &format!(
            "{DEMO_PRINCIPALS}{}{DEMO_MASKING}{approvals}",
            pam_e2e::postgres::CREW_POLICY
        ),
    )?;
    println!("  cgroup {}", workers.path.display());
    println!("  config {}", agent.config.display());
    println!("{}", std::fs::read_to_string(&agent.config)?);

    let sql = "select count(*) as orders, sum(total) as revenue from orders";
    step(
        "an unmodified psql worker inside the governed cgroup connects to the database's own address",
    );
    let out = psql(Some(&workers), &host.v4.to_string(), sql)?;
    println!("{out}");

    step("statements the policy refuses: the worker gets an error naming the rule, nothing runs");
    for sql in [
        "select * from api_keys",
        "delete from orders",
        "drop table orders",
    ] {
        match psql(Some(&workers), &host.v4.to_string(), sql) {
            Ok(out) => anyhow::bail!("policy let `{sql}` through:\n{out}"),
            Err(e) => println!(
                "  {sql}\n    -> {}",
                e.to_string()
                    .split("ERROR:")
                    .nth(1)
                    .and_then(|rest| rest.lines().next())
                    .unwrap_or_default()
                    .trim()
            ),
        }
    }
    step("why: pam-agent policy explain");
    let explain = Command::new(pam_e2e::agent_bin())
        .args(["policy", "explain", "--config"])
        .arg(&agent.config)
        .args([
            "--principal",
            "user=root",
            "--resource",
            "shop-db",
            "delete from orders",
        ])
        .output()?;
    println!("{}", String::from_utf8_lossy(&explain.stdout));

    step(
        "over IPv6, credential injection: psql with no password (-w: never prompt) is logged in by the agent as crew_reader",
    );
    let mut cmd = Command::new(pam_e2e::agent_bin());
    cmd.args(["exec", "--cgroup"])
        .arg(&workers.path)
        .args(["--", "psql", "-w", "-h"])
        .arg(host.v6.to_string())
        .args([
            "-U",
            "crew_reader",
            "-d",
            "shop",
            "-X",
            "-c",
            "select current_user, application_name, inet_client_addr() as seen_by_server \
             from pg_stat_activity where pid = pg_backend_pid()",
        ])
        .env_remove("PGPASSWORD")
        .env("PGCONNECT_TIMEOUT", "5");
    println!("{}", util::output(&mut cmd)?);
    let explain = Command::new(pam_e2e::agent_bin())
        .args(["principals", "explain", "--config"])
        .arg(&agent.config)
        .args(["--pid", &std::process::id().to_string()])
        .output()?;
    println!(
        "  $ pam-agent principals explain --pid {}   (this demo process, outside the workers' cgroup)",
        std::process::id()
    );
    print!("{}", String::from_utf8_lossy(&explain.stdout));

    step("masking: the governed worker gets masked e-mail addresses and card numbers");
    let sql_pii = "select id, customer, email, card from orders order by id limit 3";
    println!("{}", psql(Some(&workers), &host.v4.to_string(), sql_pii)?);
    println!("  (an ungoverned process, connecting directly, sees the real values:)");
    println!("{}", psql(None, &host.v4.to_string(), sql_pii)?);

    step("a statement held for approval inside the worker's session, approved by another user");
    approval(&workers, &host.v4.to_string(), &socket)?;

    step("a CrewAI worker, unmodified: CrewAI's NL2SQLTool queries the database");
    let script = util::root().join("tests/clients/crewai_nl2sql.py");
    // By IPv6, through credential injection: the URI holds no password.
    let uri = format!("postgresql://crew_reader@[{}]:5432/shop", host.v6);
    println!("  db_uri = {uri}");
    let mut crew = Command::new(pam_e2e::agent_bin());
    crew.args(["exec", "--cgroup"])
        .arg(&workers.path)
        .args(["--", "python3"])
        .arg(&script)
        .arg(&uri)
        .arg("select customer, email, total from orders order by total desc limit 3");
    println!("{}", util::output(&mut crew)?);

    step("what the agent journaled (pam-agent audit query)");
    // The closing record follows the worker's exit by a moment.
    std::thread::sleep(std::time::Duration::from_millis(300));
    let table = Command::new(pam_e2e::agent_bin())
        .args(["audit", "query", "--journal"])
        .arg(&agent.journal)
        .output()?;
    println!("{}", String::from_utf8_lossy(&table.stdout));
    let verify = Command::new(pam_e2e::agent_bin())
        .args(["audit", "verify", "--journal"])
        .arg(&agent.journal)
        .output()?;
    println!("{}", String::from_utf8_lossy(&verify.stdout));

    step("agent stopped: the governed worker cannot reach the database (fail closed)");
    agent.stop()?;
    match psql(Some(&workers), &host.v4.to_string(), sql) {
        Ok(out) => {
            anyhow::bail!("governed worker reached the database with the agent stopped:\n{out}")
        }
        Err(e) => println!(
            "  refused as expected: {}",
            e.to_string().lines().last().unwrap_or_default()
        ),
    }
    step("an ungoverned process is unaffected");
    println!("{}", psql(None, &host.v4.to_string(), sql)?);

    step("agent restarted: capture resumes");
    agent.restart()?;
    println!("{}", psql(Some(&workers), &host.v4.to_string(), sql)?);
    let sessions = agent.records("session_opened").len();
    println!("  sessions journaled: {sessions}");
    // psql v4, psql v6, CrewAI (one or more connections), psql after the restart.
    if sessions < 4 {
        anyhow::bail!("expected at least 4 journaled sessions, found {sessions}");
    }
    step("demo complete; cleaning up (agent, pins, cgroup, database, test host)");
    drop(agent);
    drop(pg);
    drop(workers);
    drop(host);
    Ok(())
}

/// The demo's workers, named by their cgroup.
const DEMO_PRINCIPALS: &str = r#"
[[principals]]
name = "demo-crew"
cgroups = ["/pamtest-demo-workers-*"]
"#;

/// Masking for the demo's workers: e-mail addresses by column, card numbers by content.
const DEMO_MASKING: &str = r#"
[masking]

[[masking.rules]]
name = "crew-pii"
when = { resources = ["shop-db", "shop-db-v6"] }

[[masking.rules.columns]]
columns = ["public.orders.email"]
strategy = { kind = "email" }

[[masking.rules.content]]
detectors = ["payment_card", "email", "us_ssn", "iban"]
strategy = { kind = "partial", keep_last = 4 }
"#;

/// The approval rule of the demo: deleting an API key needs a second person.
const DEMO_APPROVAL: &str = r#"
[[policy.rules]]
name = "api-key-deletes-need-approval"
action = "require_approval"
kinds = ["delete"]
tables = ["public.api_keys"]
approval_timeout = "2m"
"#;

/// A worker deletes an API key: the agent holds the statement and tells psql; `nobody`
/// (not the worker's uid) lists and approves it over the control socket; the same psql
/// session then deletes the row.
fn approval(workers: &Cgroup, host: &str, socket: &std::path::Path) -> anyhow::Result<()> {
    let sql = "delete from api_keys where id = 1";
    let mut worker = Command::new(pam_e2e::agent_bin());
    worker
        .args(["exec", "--cgroup"])
        .arg(&workers.path)
        .args([
            "--", "psql", "-h", host, "-U", "postgres", "-d", "shop", "-X", "-c", sql,
        ])
        .env("PGPASSWORD", PASSWORD)
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped());
    let worker = worker.spawn()?;
    println!("  worker (uid 0): {sql}   ... waits");
    let approvals = |args: &[&str]| -> anyhow::Result<std::process::Output> {
        Ok(Command::new("setpriv")
            .args(["--reuid", "65534", "--regid", "65534", "--init-groups"])
            .arg(pam_e2e::agent_bin())
            .arg("approvals")
            .arg("--socket")
            .arg(socket)
            .args(args)
            .output()?)
    };
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
    let id = loop {
        let out = approvals(&["--json", "list"])?;
        let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap_or_default();
        if let Some(id) = v["requests"][0]["id"].as_str() {
            break id.to_owned();
        }
        anyhow::ensure!(
            std::time::Instant::now() < deadline,
            "no approval request appeared: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        std::thread::sleep(std::time::Duration::from_millis(100));
    };
    println!("  $ pam-agent approvals list            (as nobody, uid 65534)");
    print!("{}", String::from_utf8_lossy(&approvals(&["list"])?.stdout));
    println!("  $ pam-agent approvals approve {id} --reason 'rotating the key'");
    let ok = approvals(&["approve", &id, "--reason", "rotating the key"])?;
    print!("{}", String::from_utf8_lossy(&ok.stdout));
    let out = worker.wait_with_output()?;
    println!("  the worker's psql session:");
    for line in String::from_utf8_lossy(&out.stderr)
        .lines()
        .chain(String::from_utf8_lossy(&out.stdout).lines())
    {
        println!("    {line}");
    }
    anyhow::ensure!(out.status.success(), "the approved statement failed");
    Ok(())
}

fn step(text: &str) {
    println!("\n== {text}");
}

fn psql(cgroup: Option<&Cgroup>, host: &str, sql: &str) -> anyhow::Result<String> {
    let mut cmd = match cgroup {
        Some(cg) => {
            let mut c = Command::new(pam_e2e::agent_bin());
            c.args(["exec", "--cgroup"]).arg(&cg.path).arg("--");
            c
        }
        None => Command::new("env"),
    };
    cmd.arg("psql")
        .args([
            "-h", host, "-p", "5432", "-U", "postgres", "-d", "shop", "-X", "-c", sql,
        ])
        .env("PGPASSWORD", PASSWORD)
        .env("PGCONNECT_TIMEOUT", "5");
    util::output(&mut cmd)
}
