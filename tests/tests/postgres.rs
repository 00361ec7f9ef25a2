//! PostgreSQL resources end to end: real eBPF redirect, the real agent binary with a
//! statement policy, a real PostgreSQL 15 on a test host, and unmodified clients (psql,
//! CrewAI's NL2SQLTool) that connect to the database's own address.

use std::process::Command;

use pam_e2e::{Agent, Cgroup, ResourceSpec, TestHost, agent_bin, postgres::PgServer, require_root};

const PASSWORD: &str = "pg-e2e-password";

struct Fixture {
    // Field order is drop order: the agent and database go before the test host.
    agent: Agent,
    cg: Cgroup,
    _pg: PgServer,
    host: TestHost,
}

fn setup() -> Fixture {
    let host = TestHost::new().expect("test host");
    let pg = PgServer::start(&host, 5432, PASSWORD).expect("postgres");
    pg.admin_sql("postgres", "create database shop").unwrap();
    pg.admin_sql(
        "shop",
        "create table orders(id int primary key, customer text, total numeric(10,2));
         insert into orders select g, 'customer-' || g, g * 2.5 from generate_series(1, 100) g;
         create table secrets(id int, value text); insert into secrets values (1, 'launch-code');",
    )
    .unwrap();
    let cg = Cgroup::new("pg").expect("cgroup");
    let agent = Agent::start_with(
        &[&cg],
        &[
            ResourceSpec::postgres("shop-db", host.v4, 5432),
            ResourceSpec::postgres("shop-db-v6", host.v6, 5432),
        ],
        pam_e2e::postgres::CREW_POLICY,
    )
    .expect("agent");
    Fixture {
        agent,
        cg,
        _pg: pg,
        host,
    }
}

/// psql with `-v ON_ERROR_STOP=0`: runs every statement, prints results and errors.
fn psql(cg: Option<&Cgroup>, host: &str, sql: &str) -> (String, String) {
    let mut c = match cg {
        Some(cg) => {
            let mut c = Command::new(agent_bin());
            c.args(["exec", "--cgroup"]).arg(&cg.path).arg("--");
            c
        }
        None => Command::new("env"),
    };
    c.args([
        "psql", "-h", host, "-U", "postgres", "-d", "shop", "-XAt", "-c", sql,
    ])
    .env("PGPASSWORD", PASSWORD)
    .env("PGCONNECT_TIMEOUT", "5");
    let out = c.output().expect("psql");
    (
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn allowed_statements_match_a_direct_connection_and_refused_ones_get_42501() {
    if !require_root("postgres") {
        return;
    }
    let f = setup();
    let v4 = f.host.v4.to_string();
    let read = "select count(*), sum(total) from orders";
    let (direct, _) = psql(None, &v4, read);
    assert_eq!(direct.trim(), "100|12625.00");
    let (governed, err) = psql(Some(&f.cg), &v4, read);
    assert_eq!(governed, direct, "{err}");
    let (governed6, err) = psql(Some(&f.cg), &f.host.v6.to_string(), read);
    assert_eq!(governed6, direct, "{err}");

    // Refused: the worker sees a proper error naming the rule, and nothing ran.
    for (sql, rule) in [
        ("select * from secrets", "default"),
        ("drop table orders", "default"),
        ("delete from orders", "no-unbounded-writes"),
    ] {
        let (out, err) = psql(Some(&f.cg), &v4, sql);
        assert!(out.is_empty(), "{sql}: {out}");
        assert!(err.contains("ERROR"), "{sql}: {err}");
        assert!(err.contains(rule), "{sql}: expected rule {rule} in: {err}");
    }
    assert_eq!(
        psql(None, &v4, read).0,
        direct,
        "a refused statement changed data"
    );

    // One session, refused statement in the middle, the session goes on.
    let script = "select 1; select * from secrets; select 2;";
    let (out, err) = {
        let mut c = Command::new(agent_bin());
        c.args(["exec", "--cgroup"])
            .arg(&f.cg.path)
            .args(["--", "psql", "-h", &v4])
            .args([
                "-U",
                "postgres",
                "-d",
                "shop",
                "-XAt",
                "-v",
                "ON_ERROR_STOP=0",
            ])
            .env("PGPASSWORD", PASSWORD);
        let mut child = c
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        use std::io::Write;
        child
            .stdin
            .take()
            .unwrap()
            .write_all(script.replace("; ", ";\n").as_bytes())
            .unwrap();
        let o = child.wait_with_output().unwrap();
        (
            String::from_utf8_lossy(&o.stdout).into_owned(),
            String::from_utf8_lossy(&o.stderr).into_owned(),
        )
    };
    assert_eq!(out, "1\n2\n", "{err}");
    assert!(
        err.contains("42501") || err.contains("permission") || err.contains("refused"),
        "{err}"
    );

    // The journal has each statement with its decision and rule, read back by the CLI.
    let statements = f.agent.records("statement");
    let decided = |needle: &str| {
        statements
            .iter()
            .find(|r| r["text"].as_str().is_some_and(|t| t.contains(needle)))
            .unwrap_or_else(|| panic!("no statement record for {needle}: {statements:#?}"))
            .clone()
    };
    assert_eq!(decided("sum(total)")["decision"], "allow");
    assert_eq!(decided("sum(total)")["rule"], "crew-reads-orders");
    assert_eq!(decided("secrets")["decision"], "deny");
    assert_eq!(decided("drop table")["decision"], "deny");
    assert_eq!(decided("delete from orders")["rule"], "no-unbounded-writes");
    assert!(!f.agent.records("statement_completed").is_empty());
    let (ok, out) = f.agent.verify_journal();
    assert!(ok, "{out}");
}

#[test]
fn crewai_nl2sql_tool_is_judged_statement_by_statement() {
    if !require_root("postgres") {
        return;
    }
    let f = setup();
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/clients/crewai_nl2sql.py");
    let uri = format!("postgresql://postgres:{PASSWORD}@{}:5432/shop", f.host.v4);
    let run = |cg: Option<&Cgroup>, sql: &str| {
        let mut c = match cg {
            Some(cg) => {
                let mut c = Command::new(agent_bin());
                c.args(["exec", "--cgroup"]).arg(&cg.path).arg("--");
                c
            }
            None => Command::new("env"),
        };
        let out = c.args(["python3", script, &uri, sql]).output().unwrap();
        (
            String::from_utf8_lossy(&out.stdout).into_owned(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    };
    let sql = "select customer, total from orders where id <= 3 order by id";
    let (direct, _) = run(None, sql);
    assert!(direct.contains("customer-3"), "{direct}");
    let (governed, err) = run(Some(&f.cg), sql);
    assert_eq!(governed, direct, "{err}");
    // The same tool asked to read another table gets the policy's refusal.
    let (refused, err) = run(Some(&f.cg), "select value from secrets");
    assert!(!refused.contains("launch-code") && !err.contains("launch-code"));
    let said = refused + &err;
    assert!(
        said.contains("pam-agent refused the statement"),
        "expected a policy refusal, got: {said}"
    );
    let denied = f
        .agent
        .records("statement")
        .into_iter()
        .filter(|r| r["decision"] == "deny")
        .count();
    assert!(denied >= 1);
}
