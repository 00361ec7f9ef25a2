//! SIGHUP: the operator edits the config and signals the agent. Every reload is journaled:
//! `config_reloaded` with `ok: true` (then `policy_reloaded`) when the file is accepted,
//! `ok: false` and the reason when it is refused, the running config staying in force.

use std::time::{Duration, Instant};

use pam_e2e::{
    Agent, Cgroup, ResourceSpec, TestHost, postgres::PgServer, require_root, session::Session,
};
use serde_json::{Value, json};

const POLICY: &str = "[[policy.rules]]\nname = \"crew-reads\"\naction = \"allow\"\nkinds = [\"select\"]\ntables = [\"public.*\"]\n";

fn sighup(agent: &Agent) {
    let pid = agent.pid().expect("agent running") as i32;
    // SAFETY: signalling our own child process by pid.
    assert_eq!(unsafe { libc::kill(pid, libc::SIGHUP) }, 0);
}

/// Waits until the journal holds `n` records of `kind`, and returns them.
fn wait_for(agent: &Agent, kind: &str, n: usize) -> Vec<Value> {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let got = agent.records(kind);
        if got.len() >= n {
            return got;
        }
        assert!(
            Instant::now() < deadline,
            "no {n} `{kind}` records within 10 s; journal: {:#?}\nlog:\n{}",
            agent.journal(),
            agent.log()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[test]
fn every_reload_is_journaled_and_a_refused_file_says_why() {
    if !require_root("reload") {
        return;
    }
    let cg = Cgroup::new("reload").expect("cgroup");
    let mut agent = Agent::start_with(
        &[&cg],
        &[ResourceSpec::postgres("db", "10.99.0.1", 5432)],
        POLICY,
    )
    .expect("agent");
    let good = std::fs::read_to_string(&agent.config).unwrap();
    let config = agent.config.display().to_string();

    // An accepted file: config_reloaded ok, then the policy swap.
    sighup(&agent);
    let reloads = wait_for(&agent, "config_reloaded", 1);
    assert_eq!(reloads[0]["ok"], true, "{reloads:#?}");
    assert_eq!(reloads[0]["config"], config.as_str());
    assert!(reloads[0].get("detail").is_none(), "{reloads:#?}");
    let policy = wait_for(&agent, "policy_reloaded", 1);
    assert_eq!(policy[0]["rules"], 1);
    assert!(
        policy[0]["seq"].as_u64() > reloads[0]["seq"].as_u64(),
        "config_reloaded comes first"
    );

    // A refused file: config_reloaded with ok = false and the reason naming the field;
    // no policy swap, and the agent keeps running on the old config.
    std::fs::write(&agent.config, good.replace("port = 5432", "port = 0")).unwrap();
    sighup(&agent);
    let reloads = wait_for(&agent, "config_reloaded", 2);
    assert_eq!(reloads[1]["ok"], false, "{reloads:#?}");
    let detail = reloads[1]["detail"].as_str().unwrap_or_default();
    assert!(
        detail.contains("resources[0].port") && detail.contains("between 1 and 65535"),
        "{detail}"
    );
    assert_eq!(agent.records("policy_reloaded").len(), 1);

    // A change only a restart applies is accepted and says so.
    std::fs::write(&agent.config, good.replace("10.99.0.1", "10.99.0.2")).unwrap();
    sighup(&agent);
    let reloads = wait_for(&agent, "config_reloaded", 3);
    assert_eq!(reloads[2]["ok"], true);
    assert!(
        reloads[2]["detail"]
            .as_str()
            .is_some_and(|d| d.contains("restart")),
        "{reloads:#?}"
    );
    wait_for(&agent, "policy_reloaded", 2);

    agent.stop().expect("orderly stop after reloads");
    let (ok, out) = agent.verify_journal();
    assert!(ok, "{out}");
}

const PASSWORD: &str = "pg-reload-password";

/// Before the reload: both tables readable, ssn shown by its last four digits.
const BEFORE: &str = r#"
[policy]
default = "deny"

[[policy.rules]]
name = "reads"
action = "allow"
kinds = ["select"]
tables = ["public.orders", "public.customers"]

[masking]
hash_key = "8f1e2d3c4b5a69788796a5b4c3d2e1f0"

[[masking.rules]]
name = "pii"
when = { resources = ["crm-db"] }

[[masking.rules.columns]]
columns = ["public.customers.ssn"]
strategy = { kind = "partial", keep_last = 4 }
"#;

/// The fields of a `statement` record a test pins: (number, text, decision, rule).
fn pinned(r: &Value) -> (u64, String, String, String) {
    (
        r["statement"].as_u64().expect("statement number"),
        r["text"].as_str().unwrap_or_default().to_owned(),
        r["decision"].as_str().unwrap_or_default().to_owned(),
        r["rule"].as_str().unwrap_or_default().to_owned(),
    )
}

/// The reload promise while sessions run (docs/postgres.md, docs/masking.md): an open
/// session judges its next statement by the new policy and is not dropped; masking rules
/// are chosen when a session opens, so the open session keeps its rules and a session
/// opened after the reload gets the new ones; a refused file changes nothing and is
/// journaled, the sessions going on.
#[test]
fn sessions_running_across_reloads_get_the_new_policy_and_keep_going() {
    if !require_root("reload") {
        return;
    }
    let host = TestHost::new().expect("test host");
    let pg = PgServer::start(&host, 5432, PASSWORD).expect("postgres");
    pg.admin_sql("postgres", "create database crm").unwrap();
    pg.admin_sql(
        "crm",
        "create table customers(id int primary key, ssn text);
         insert into customers values (1, '123-45-6789');
         create table orders(id int primary key);
         insert into orders values (7);",
    )
    .unwrap();
    let cg = Cgroup::new("reload-live").expect("cgroup");
    let mut agent = Agent::start_with(
        &[&cg],
        &[ResourceSpec::postgres("crm-db", host.v4, 5432)],
        BEFORE,
    )
    .expect("agent");
    let uri = format!(
        "postgresql://postgres:{PASSWORD}@{}:5432/crm?sslmode=disable",
        host.v4
    );
    const SSN: &str = "select ssn from customers where id = 1";
    const ORDERS: &str = "select id from orders";

    let mut a = Session::open(&cg.path, &uri);
    assert_eq!(a.rows(SSN), [[json!("*******6789")]]);
    assert_eq!(a.rows(ORDERS), [[json!("7")]]);

    // The new file: orders no longer readable, ssn withheld entirely.
    let before = std::fs::read_to_string(&agent.config).unwrap();
    let after = before
        .replace(
            "tables = [\"public.orders\", \"public.customers\"]",
            "tables = [\"public.customers\"]",
        )
        .replace(
            "strategy = { kind = \"partial\", keep_last = 4 }",
            "strategy = { kind = \"null\" }",
        );
    assert_ne!(after, before);
    std::fs::write(&agent.config, &after).unwrap();
    sighup(&agent);
    assert_eq!(wait_for(&agent, "config_reloaded", 1)[0]["ok"], true);
    wait_for(&agent, "policy_reloaded", 1);

    // The same session: its next statement is judged by the new policy, and it goes on.
    let refused = a.ask(ORDERS);
    assert_eq!(refused["sqlstate"], "42501", "{refused}");
    assert_eq!(
        refused["detail"], "rule: default; decision: deny",
        "{refused}"
    );
    // Its masking rules were chosen when it opened.
    assert_eq!(a.rows(SSN), [[json!("*******6789")]]);
    // A session opened after the reload gets the new masking rules.
    let mut b = Session::open(&cg.path, &uri);
    assert_eq!(b.rows(SSN), [[Value::Null]]);

    // A refused file: journaled with the reason, nothing changes, nobody is dropped.
    std::fs::write(
        &agent.config,
        after.replace("kinds = [\"select\"]", "kinds = [\"selekt\"]"),
    )
    .unwrap();
    sighup(&agent);
    let reloads = wait_for(&agent, "config_reloaded", 2);
    assert_eq!(reloads[1]["ok"], false, "{reloads:#?}");
    assert!(
        reloads[1]["detail"]
            .as_str()
            .is_some_and(|d| d.contains("selekt")),
        "the reason names the bad kind: {reloads:#?}"
    );
    assert_eq!(a.ask(ORDERS)["sqlstate"], "42501");
    assert_eq!(b.ask(ORDERS)["sqlstate"], "42501");
    assert_eq!(a.rows(SSN), [[json!("*******6789")]]);
    assert_eq!(b.rows(SSN), [[Value::Null]]);
    assert_eq!(agent.records("policy_reloaded").len(), 1);
    a.close();
    b.close();

    // The journal, statement by statement: each session's records in its own numbering,
    // the refusals with the message the worker got, and each masking record on the
    // statement it masked, with the method in force for that session.
    let journal = agent.settled();
    let opened: Vec<&Value> = journal
        .iter()
        .filter(|r| r["kind"] == "session_opened")
        .collect();
    assert_eq!(opened.len(), 2, "{journal:#?}");
    let of = |session: &Value| -> Vec<(u64, String, String, String)> {
        journal
            .iter()
            .filter(|r| r["kind"] == "statement" && r["session"] == *session)
            .map(pinned)
            .collect()
    };
    let row = |n: u64, text: &str, decision: &str, rule: &str| {
        (n, text.to_owned(), decision.to_owned(), rule.to_owned())
    };
    assert_eq!(
        of(&opened[0]["session"]),
        [
            row(1, SSN, "allow", "reads"),
            row(2, ORDERS, "allow", "reads"),
            row(3, ORDERS, "deny", "default"),
            row(4, SSN, "allow", "reads"),
            row(5, ORDERS, "deny", "default"),
            row(6, SSN, "allow", "reads"),
        ]
    );
    assert_eq!(
        of(&opened[1]["session"]),
        [
            row(1, SSN, "allow", "reads"),
            row(2, ORDERS, "deny", "default"),
            row(3, SSN, "allow", "reads"),
        ]
    );
    let reason = journal
        .iter()
        .find(|r| r["kind"] == "statement" && r["decision"] == "deny")
        .and_then(|r| r["reason"].as_str())
        .expect("a refusal's reason");
    assert_eq!(
        refused["message"],
        format!("pam-agent refused the statement (rule \"default\"): {reason}")
    );
    let mut masked: Vec<(String, u64, String)> = journal
        .iter()
        .filter(|r| r["kind"] == "masking_applied")
        .map(|r| {
            let s = if r["session"] == opened[0]["session"] {
                "a"
            } else {
                "b"
            };
            let methods: Vec<&str> = r["columns"]
                .as_array()
                .unwrap()
                .iter()
                .map(|c| c["method"].as_str().unwrap())
                .collect();
            (
                s.to_owned(),
                r["statement"].as_u64().unwrap(),
                methods.join(","),
            )
        })
        .collect();
    // Written behind the data path: in any order across sessions.
    masked.sort();
    let m = |s: &str, n: u64, method: &str| (s.to_owned(), n, method.to_owned());
    assert_eq!(
        masked,
        [
            m("a", 1, "partial"),
            m("a", 4, "partial"),
            m("a", 6, "partial"),
            m("b", 1, "null"),
            m("b", 3, "null"),
        ]
    );
    for s in &opened {
        let closed = journal
            .iter()
            .find(|r| r["kind"] == "session_closed" && r["session"] == s["session"])
            .expect("closed on record");
        assert_eq!(closed["end"], "closed", "{closed}");
    }
    agent.stop().expect("stop");
    let (ok, out) = agent.verify_journal();
    assert!(ok, "{out}");
}
