//! Wire fidelity end to end (issue 14): unmodified asyncpg through the real eBPF
//! redirect and the real agent binary to PostgreSQL 15. Its type introspection, which
//! calls built-ins inside an open batch, passes a policy that refuses volatile and user
//! functions; a large pipelined executemany streams through whole, every execution journaled.

use std::process::Command;

use pam_e2e::{
    Agent, Cgroup, OutputWithin, ResourceSpec, TestHost, agent_bin, postgres::PgServer,
    require_root,
};
use serde_json::{Value, json};

const PASSWORD: &str = "pg-wire-password";

const CONFIG: &str = r#"
[policy]
default = "deny"

[[policy.rules]]
name = "no-volatile-or-user-functions"
action = "deny"
if_flags = ["volatile_function", "user_function"]

[[policy.rules]]
name = "analyst-reads"
action = "allow"
kinds = ["select"]
tables = ["public.*", "pg_catalog.*"]

[[policy.rules]]
name = "bulk-loads"
action = "allow"
kinds = ["insert", "ddl"]
tables = ["public.bulk"]

[[policy.rules]]
name = "housekeeping"
action = "allow"
kinds = ["session", "transaction"]
"#;

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
    pg.admin_sql(
        "postgres",
        "create table orders(id int primary key, customer text);
         insert into orders select g, 'customer-' || g from generate_series(1, 5) g;
         create type pair as (a int, b text);
         create domain positive as int check (value > 0);",
    )
    .unwrap();
    let cg = Cgroup::new("wire").expect("cgroup");
    let agent = Agent::start_with(
        &[&cg],
        &[ResourceSpec::postgres("wire-db", host.v4, 5432)],
        CONFIG,
    )
    .expect("agent");
    Fixture {
        agent,
        cg,
        _pg: pg,
        host,
    }
}

/// Runs the client in the governed cgroup against the database's own address.
fn asyncpg(f: &Fixture, args: &[&str]) -> Value {
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/clients/wire_asyncpg.py");
    let dsn = format!(
        "postgresql://postgres:{PASSWORD}@{}:5432/postgres",
        f.host.v4
    );
    let out = Command::new(agent_bin())
        .args(["exec", "--cgroup"])
        .arg(&f.cg.path)
        .args(["--", "python3", script, args[0], &dsn])
        .args(&args[1..])
        .output_within()
        .expect("python client");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout)
        .unwrap_or_else(|e| panic!("{e}: {}", String::from_utf8_lossy(&out.stdout)))
}

#[test]
fn asyncpg_reads_composite_values_under_a_no_volatile_functions_policy() {
    if !require_root("wire_fidelity") {
        return;
    }
    let f = setup();
    let out = asyncpg(&f, &["composite"]);
    assert_eq!(
        out,
        json!({
            "row": [2, "customer-2"],
            "pair": [1, "x"],
            "domain": 7,
            "pairs": [[2, "y"]],
        })
    );
    // Its introspection was judged as calling the built-in, and allowed.
    let intro: Vec<Value> = f
        .agent
        .records("statement")
        .into_iter()
        .filter(|r| {
            r["text"]
                .as_str()
                .is_some_and(|t| t.starts_with("WITH RECURSIVE typeinfo_tree"))
        })
        .collect();
    assert!(!intro.is_empty());
    for r in intro {
        assert_eq!(r["decision"], "allow", "{r}");
        assert_eq!(r["functions"], json!(["pg_catalog.array_agg"]), "{r}");
    }
}

#[test]
fn a_large_pipelined_executemany_streams_through_whole() {
    if !require_root("wire_fidelity") {
        return;
    }
    let f = setup();
    let (_, before) = f.agent.memory_kib().expect("agent memory");
    // 40,000 rows of 2 KiB: about 80 MiB of Bind/Execute messages in one batch (over the
    // agent's 64 MiB message cap together, and each journaled with its parameters).
    let out = asyncpg(&f, &["large", "40000"]);
    assert_eq!(out, json!({"rows": 40000}));
    // One execution record per row, each of the INSERT's own statement record.
    let journal = f.agent.settled();
    let insert: Vec<&serde_json::Value> = journal
        .iter()
        .filter(|r| r["kind"] == "statement" && r["text"] == "INSERT INTO bulk VALUES ($1, $2)")
        .collect();
    assert_eq!(insert.len(), 1, "{insert:?}");
    let execs = journal
        .iter()
        .filter(|r| {
            r["kind"] == "execution"
                && r["session"] == insert[0]["session"]
                && r["statement"] == insert[0]["statement"]
        })
        .count();
    assert_eq!(execs, 40000, "execution records of the INSERT");
    let (_, peak) = f.agent.memory_kib().expect("agent memory");
    // Not flat yet: the first run measured 107 MB of growth (issue 14, cause open);
    // printed so the figure is seen, not asserted.
    eprintln!(
        "agent peak memory grew by {} KiB while 80 MiB went through",
        peak - before
    );
}
