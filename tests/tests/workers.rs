//! Real, unmodified database clients as governed workers: `psql` and CrewAI's own
//! NL2SQLTool reach a real PostgreSQL on a test host by its own address, through the
//! agent, and get exactly what a direct connection gets; the journal shows them.

use std::process::Command;

use pam_e2e::{Agent, Cgroup, ResourceSpec, TestHost, agent_bin, postgres::PgServer, require_root};

const PASSWORD: &str = "worker-test-password";

fn in_cgroup(cg: Option<&Cgroup>) -> Command {
    match cg {
        Some(cg) => {
            let mut c = Command::new(agent_bin());
            c.args(["exec", "--cgroup"]).arg(&cg.path).arg("--");
            c
        }
        None => Command::new("env"),
    }
}

fn output(mut cmd: Command) -> String {
    let out = cmd.output().expect("running worker");
    assert!(
        out.status.success(),
        "worker failed: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn setup() -> (TestHost, PgServer, Cgroup, Agent) {
    let host = TestHost::new().expect("test host");
    let pg = PgServer::start(&host, 5432, PASSWORD).expect("postgres");
    pg.admin_sql("postgres", "create database shop").unwrap();
    pg.admin_sql(
        "shop",
        "create table orders(id int primary key, customer text, total numeric(10,2));
         insert into orders select g, 'customer-' || g, g * 2.5 from generate_series(1, 100) g;",
    )
    .unwrap();
    let cg = Cgroup::new("workers").expect("cgroup");
    let agent = Agent::start(
        &[&cg],
        &[
            ResourceSpec::tcp("shop-db", host.v4, 5432),
            ResourceSpec::tcp("shop-db-v6", host.v6, 5432),
        ],
    )
    .expect("agent");
    (host, pg, cg, agent)
}

#[test]
fn psql_through_the_agent_sees_what_a_direct_connection_sees() {
    if !require_root("workers") {
        return;
    }
    let (host, _pg, cg, agent) = setup();
    let sql = "select count(*), sum(total), max(customer) from orders";
    let psql = |cg: Option<&Cgroup>, addr: String| {
        let mut c = in_cgroup(cg);
        c.args([
            "psql", "-h", &addr, "-U", "postgres", "-d", "shop", "-XAt", "-c", sql,
        ])
        .env("PGPASSWORD", PASSWORD);
        output(c)
    };
    let direct = psql(None, host.v4.to_string());
    assert_eq!(direct.trim(), "100|12625.00|customer-99");
    assert_eq!(psql(Some(&cg), host.v4.to_string()), direct);
    assert_eq!(psql(Some(&cg), host.v6.to_string()), direct);
    let opened = agent.records("session_opened");
    assert_eq!(opened.len(), 2, "{opened:#?}");
    assert!(opened.iter().all(|r| r["principal"]["comm"] == "psql"));
    assert_eq!(opened[1]["resource"]["name"], "shop-db-v6");
}

#[test]
fn crewai_nl2sql_tool_runs_unmodified_through_the_agent() {
    if !require_root("workers") {
        return;
    }
    let (host, _pg, cg, agent) = setup();
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/clients/crewai_nl2sql.py");
    let uri = format!("postgresql://postgres:{PASSWORD}@{}:5432/shop", host.v4);
    let sql = "select customer, total from orders where id <= 3 order by id";
    let run = |cg: Option<&Cgroup>| {
        let mut c = in_cgroup(cg);
        c.args(["python3", script, &uri, sql]);
        output(c)
    };
    let direct = run(None);
    assert!(direct.contains("customer-3"), "{direct}");
    let governed = run(Some(&cg));
    assert_eq!(governed, direct);
    let opened = agent.records("session_opened");
    assert!(
        !opened.is_empty(),
        "CrewAI's connection did not go through the agent"
    );
    assert!(opened.iter().all(|r| {
        r["principal"]["exe"]
            .as_str()
            .unwrap_or_default()
            .contains("python")
    }));
    assert!(
        opened
            .iter()
            .all(|r| r["destination"] == format!("{}:5432", host.v4))
    );
}
