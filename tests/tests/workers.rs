//! Real, unmodified database clients as governed workers: `psql` and CrewAI's own
//! NL2SQLTool reach a real PostgreSQL on a test host by its own address, through the
//! agent, and get exactly what a direct connection gets; the journal shows them.

use std::process::Command;

use pam_e2e::{
    Agent, Cgroup, OutputWithin, ResourceSpec, TestHost, agent_bin, postgres::PgServer,
    require_root,
};
use serde_json::Value;

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
    let out = cmd.output_within().expect("running worker");
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
    // Two governed sessions (the direct run is not one), each opened with the kernel's
    // view of the worker and closed in order, with the bytes it relayed.
    let journal = agent.settled();
    let sessions = sessions(&journal);
    let seen: Vec<(String, String, String)> = sessions
        .iter()
        .map(|(o, c)| {
            (
                o["resource"]["name"].as_str().unwrap().to_owned(),
                o["destination"].as_str().unwrap().to_owned(),
                c["end"].as_str().unwrap().to_owned(),
            )
        })
        .collect();
    assert_eq!(
        seen,
        [
            (
                "shop-db".into(),
                format!("{}:5432", host.v4),
                "closed".into()
            ),
            (
                "shop-db-v6".into(),
                format!("[{}]:5432", host.v6),
                "closed".into()
            ),
        ]
    );
    for (o, c) in &sessions {
        assert_eq!(o["principal"]["comm"], "psql", "{o}");
        assert_eq!(
            o["principal"]["exe"], "/usr/lib/postgresql/15/bin/psql",
            "{o}"
        );
        assert_eq!(o["principal"]["cgroup_id"], cg.id(), "{o}");
        assert!(
            c["bytes_to_worker"].as_u64().unwrap() > direct.len() as u64,
            "{c}"
        );
    }
}

/// Each `session_opened` record with its `session_closed` record.
fn sessions(journal: &[Value]) -> Vec<(Value, Value)> {
    journal
        .iter()
        .filter(|r| r["kind"] == "session_opened")
        .map(|o| {
            let c = journal
                .iter()
                .find(|c| c["kind"] == "session_closed" && c["session"] == o["session"])
                .unwrap_or_else(|| panic!("session without close: {o}"));
            (o.clone(), c.clone())
        })
        .collect()
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
    // Every connection CrewAI made went through the agent as python, to the database's
    // own address, and closed in order.
    let journal = agent.settled();
    let sessions = sessions(&journal);
    // NL2SQLTool (crewai-tools 1.15.30, pinned by `cargo xtask setup`) connects three
    // times: two schema reads and the query.
    assert_eq!(
        sessions.len(),
        3,
        "CrewAI's connections did not all go through the agent: {sessions:#?}"
    );
    for (o, c) in &sessions {
        let exe = o["principal"]["exe"].as_str().unwrap_or_default();
        assert!(
            exe.rsplit('/')
                .next()
                .unwrap_or_default()
                .starts_with("python3"),
            "{o}"
        );
        assert_eq!(o["principal"]["cgroup_id"], cg.id(), "{o}");
        assert_eq!(o["destination"], format!("{}:5432", host.v4));
        assert_eq!(o["resource"]["name"], "shop-db");
        assert_eq!(c["end"], "closed", "{c}");
    }
}
