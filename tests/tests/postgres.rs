//! PostgreSQL resources end to end: real eBPF redirect, the real agent binary with a
//! statement policy, a real PostgreSQL 15 on a test host, and unmodified clients (psql,
//! CrewAI's NL2SQLTool) that connect to the database's own address.

use std::process::Command;

use pam_e2e::SpawnWatched;
use pam_e2e::{
    Agent, Cgroup, OutputWithin, ResourceSpec, TestHost, agent_bin, postgres::PgServer,
    require_root,
};
use serde_json::{Value, json};

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

/// psql: prints results, and errors with their SQLSTATE (`VERBOSITY=verbose`).
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
        "psql",
        "-h",
        host,
        "-U",
        "postgres",
        "-d",
        "shop",
        "-XAt",
        "-v",
        "VERBOSITY=verbose",
        "-c",
        sql,
    ])
    .env("PGPASSWORD", PASSWORD)
    .env("PGCONNECT_TIMEOUT", "5");
    let (_, stdout, stderr) = pam_e2e::printed(&c.output_within().expect("psql"));
    (stdout, stderr)
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

    // Refused: the worker sees the refusal's SQLSTATE and the rule, and nothing ran.
    let refused = [
        ("select * from secrets", "default"),
        ("drop table orders", "default"),
        ("delete from orders", "no-unbounded-writes"),
    ];
    for (sql, rule) in refused {
        let (out, err) = psql(Some(&f.cg), &v4, sql);
        assert!(out.is_empty(), "{sql}: {out}");
        assert!(
            err.starts_with(&format!(
                "ERROR:  42501: pam-agent refused the statement (rule \"{rule}\")"
            )),
            "{sql}: {err}"
        );
        assert!(
            err.contains(&format!("DETAIL:  rule: {rule}; decision: deny")),
            "{sql}: {err}"
        );
    }
    assert_eq!(
        psql(None, &v4, read).0,
        direct,
        "a refused statement changed data"
    );

    // One session, refused statement in the middle, the session goes on.
    let script = "select 1;\nselect * from secrets;\nselect 2;\n";
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
                "-v",
                "VERBOSITY=verbose",
                "-f",
                "-",
            ])
            .env("PGPASSWORD", PASSWORD);
        let mut child = c
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn_watched()
            .unwrap();
        use std::io::Write;
        child
            .stdin
            .take()
            .unwrap()
            .write_all(script.as_bytes())
            .unwrap();
        let o = child.wait_with_output().unwrap();
        (
            String::from_utf8_lossy(&o.stdout).into_owned(),
            String::from_utf8_lossy(&o.stderr).into_owned(),
        )
    };
    assert_eq!(out, "1\n2\n", "{err}");
    assert!(
        err.starts_with(
            "psql:<stdin>:2: ERROR:  42501: pam-agent refused the statement (rule \"default\")"
        ),
        "{err}"
    );

    // The journal, read back by the CLI once every session closed: each statement with
    // its decision and rule, and a completion for exactly the allowed ones, matched by
    // session and statement number.
    let journal = f.agent.settled();
    let completions = |st: &Value| -> Vec<&Value> {
        journal
            .iter()
            .filter(|r| {
                r["kind"] == "statement_completed"
                    && r["session"] == st["session"]
                    && r["statement"] == st["statement"]
            })
            .collect()
    };
    let judged = |text: &str| -> Vec<(String, String, usize)> {
        journal
            .iter()
            .filter(|r| r["kind"] == "statement" && r["text"] == text)
            .map(|r| {
                (
                    r["decision"].as_str().unwrap().to_owned(),
                    r["rule"].as_str().unwrap_or("(none)").to_owned(),
                    completions(r).len(),
                )
            })
            .collect()
    };
    let allowed = |n| vec![("allow".to_owned(), "crew-reads-orders".to_owned(), 1); n];
    let denied = |rule: &str, n| vec![("deny".to_owned(), rule.to_owned(), 0); n];
    // Twice governed (IPv4 and IPv6); the direct runs never reached the agent.
    assert_eq!(judged(read), allowed(2));
    // The text as the statement reads, without psql's terminating semicolon; the read of
    // `secrets` was refused twice (alone, and in the script).
    assert_eq!(judged("select * from secrets"), denied("default", 2));
    assert_eq!(judged("drop table orders"), denied("default", 1));
    assert_eq!(
        judged("delete from orders"),
        denied("no-unbounded-writes", 1)
    );
    // The script's session: three statements numbered in order, the middle one refused.
    let script_session = &journal
        .iter()
        .find(|r| r["kind"] == "statement" && r["text"] == "select 2")
        .unwrap_or_else(|| panic!("no record of the script's refusal: {journal:#?}"))["session"];
    let in_script: Vec<(u64, &str, &str)> = journal
        .iter()
        .filter(|r| r["kind"] == "statement" && &r["session"] == script_session)
        .map(|r| {
            (
                r["statement"].as_u64().unwrap(),
                r["text"].as_str().unwrap(),
                r["decision"].as_str().unwrap(),
            )
        })
        .collect();
    assert_eq!(
        in_script,
        [
            (1, "select 1", "allow"),
            (2, "select * from secrets", "deny"),
            (3, "select 2", "allow")
        ]
    );
    let done: Vec<u64> = journal
        .iter()
        .filter(|r| r["kind"] == "statement_completed" && &r["session"] == script_session)
        .map(|r| r["statement"].as_u64().unwrap())
        .collect();
    assert_eq!(done, [1, 3]);
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
        let out = c
            .args(["python3", script, &uri, sql])
            .output_within()
            .unwrap();
        let (_, stdout, stderr) = pam_e2e::printed(&out);
        (stdout, stderr)
    };
    let sql = "select customer, total from orders where id <= 3 order by id";
    let (direct, _) = run(None, sql);
    assert!(direct.contains("customer-3"), "{direct}");
    let (governed, err) = run(Some(&f.cg), sql);
    assert_eq!(governed, direct, "{err}");
    // The same tool asked to read another table gets the policy's refusal.
    let (refused, err) = run(Some(&f.cg), "select value from secrets");
    assert!(!refused.contains("launch-code") && !err.contains("launch-code"));
    // The tool prints its answer as a JSON string.
    let said = serde_json::from_str::<String>(refused.trim()).unwrap_or(refused) + &err;
    // psycopg names the error class by its SQLSTATE: 42501 is InsufficientPrivilege.
    assert!(
        said.contains("(psycopg.errors.InsufficientPrivilege) pam-agent refused the statement (rule \"default\")"),
        "expected the policy's 42501 refusal, got: {said}"
    );
    // Exactly one record of it, refused by the default rule, and never completed.
    let journal = f.agent.settled();
    let records: Vec<&Value> = journal
        .iter()
        .filter(|r| r["kind"] == "statement" && r["text"] == "select value from secrets")
        .collect();
    assert_eq!(records.len(), 1, "{journal:#?}");
    assert_eq!(
        (&records[0]["decision"], &records[0]["rule"]),
        (&"deny".into(), &"default".into())
    );
    assert!(!journal.iter().any(|r| r["kind"] == "statement_completed"
        && r["session"] == records[0]["session"]
        && r["statement"] == records[0]["statement"]));
}

/// Issue 14: a call is judged as the function the server will run. The database's own
/// search path (set by its owner, not by the worker) puts a schema ahead of pg_catalog,
/// and a function there shadows `upper`: the worker's `upper(...)` is the shadow on the
/// server, so it is judged and journaled as `app.upper` (a volatile user function) and
/// refused, while other built-ins still run; `nextval` is refused as volatile.
#[test]
fn calls_are_judged_as_the_function_the_search_path_resolves_them_to() {
    if !require_root("postgres") {
        return;
    }
    let f = setup();
    f._pg
        .admin_sql(
            "shop",
            "create sequence order_ids;
             create table audit_log(note text);
             create schema app;
             create function app.upper(text) returns text language plpgsql as
               $$ begin insert into public.audit_log values ('shadow ran'); return 'x'; end $$;
             alter database shop set search_path = app, pg_catalog, public;",
        )
        .unwrap();
    let v4 = f.host.v4.to_string();
    let lower = "select lower(customer) from orders where id = 1";
    let (out, err) = psql(Some(&f.cg), &v4, lower);
    assert_eq!(out, "customer-1\n", "{err}");
    for sql in [
        "select upper(customer) from orders where id = 1",
        "select nextval('order_ids')",
    ] {
        let (out, err) = psql(Some(&f.cg), &v4, sql);
        assert!(out.is_empty(), "{sql}: {out}");
        assert!(
            err.starts_with("ERROR:  42501: pam-agent refused the statement (rule \"default\")"),
            "{sql}: {err}"
        );
    }
    // Directly (ungoverned), the same text runs the shadow: what was refused would have.
    assert_eq!(
        f._pg
            .admin_sql("shop", "select count(*) from audit_log")
            .unwrap()
            .trim(),
        "0"
    );
    let (direct, _) = psql(None, &v4, "select upper(customer) from orders where id = 1");
    assert_eq!(direct, "x\n");

    let journal = f.agent.settled();
    let record = |text: &str| -> (String, Vec<String>, Vec<String>) {
        let r = journal
            .iter()
            .find(|r| r["kind"] == "statement" && r["text"] == text)
            .unwrap_or_else(|| panic!("{text}: {journal:#?}"));
        let strings = |v: &Value| -> Vec<String> {
            v.as_array()
                .map(|a| a.iter().map(|s| s.as_str().unwrap().to_owned()).collect())
                .unwrap_or_default()
        };
        (
            r["decision"].as_str().unwrap().to_owned(),
            strings(&r["functions"]),
            strings(&r["flags"]),
        )
    };
    assert_eq!(
        record(lower),
        ("allow".into(), vec!["pg_catalog.lower".into()], vec![])
    );
    let (decision, functions, flags) = record("select upper(customer) from orders where id = 1");
    assert_eq!(decision, "deny");
    assert_eq!(functions, ["app.upper", "pg_catalog.upper"]);
    assert_eq!(flags, ["user_function", "volatile_function"]);
    let (_, functions, flags) = record("select nextval('order_ids')");
    assert_eq!(functions, ["pg_catalog.nextval"]);
    assert_eq!(flags, ["side_effect_function", "volatile_function"]);
}

/// Issue 14: through the real redirect, an unmodified asyncpg worker's executions are on
/// record before they run, with their bound values (a detector's finding withheld), after
/// a login record naming the database, role and application; `pam-agent audit show`
/// prints them.
#[test]
fn executions_are_on_record_with_their_parameters_and_audit_show_prints_them() {
    if !require_root("postgres") {
        return;
    }
    let f = setup();
    let host = f.host.v4.to_string();
    let script = format!(
        "import asyncio, asyncpg\n\
         async def main():\n\
         \x20   c = await asyncpg.connect(host='{host}', user='postgres', password='{PASSWORD}', database='shop', server_settings={{'application_name': 'crew-report'}})\n\
         \x20   s = await c.prepare('select customer from orders where id = $1 and customer <> $2')\n\
         \x20   for i in (3, 4):\n\
         \x20       print(await s.fetchval(i, 'jane@example.com'))\n\
         asyncio.run(main())\n"
    );
    let out = Command::new(agent_bin())
        .args(["exec", "--cgroup"])
        .arg(&f.cg.path)
        .args(["--", "python3", "-c", &script])
        .output_within()
        .expect("python");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(
        String::from_utf8_lossy(&out.stdout),
        "customer-3\ncustomer-4\n"
    );

    let journal = f.agent.settled();
    let login = journal
        .iter()
        .find(|r| r["kind"] == "session_login")
        .unwrap_or_else(|| panic!("no login record: {journal:#?}"));
    assert_eq!(login["database"], "shop");
    assert_eq!(login["role"], "postgres");
    assert_eq!(login["application_name"], "crew-report");
    assert_eq!(login["reported"]["session_authorization"], "postgres");
    let session = login["session"].as_str().unwrap();
    let executions: Vec<&Value> = journal
        .iter()
        .filter(|r| r["kind"] == "execution" && r["session"] == session)
        .collect();
    assert_eq!(executions.len(), 2, "{journal:#?}");
    for (e, id) in executions.iter().zip(["3", "4"]) {
        assert_eq!(
            e["parameters"],
            serde_json::json!([
                {"type": "int4", "value": id},
                {"type": "text", "redacted": "detector email"}
            ])
        );
        // Stored before the execution it describes completed: a completion of that
        // very statement (same session, same number) follows it, one row, no error.
        assert!(e["statement"].is_u64(), "{e}");
        let done = journal
            .iter()
            .find(|r| {
                r["kind"] == "statement_completed"
                    && r["session"] == session
                    && r["statement"] == e["statement"]
                    && r["seq"].as_u64() > e["seq"].as_u64()
            })
            .unwrap_or_else(|| panic!("no completion after {e}"));
        assert_eq!(
            (&done["rows"], &done["error"]),
            (&json!(1), &Value::Null),
            "{done}"
        );
    }
    let shown = Command::new(agent_bin())
        .args(["audit", "show", session, "--journal"])
        .arg(&f.agent.journal)
        .output_within()
        .expect("audit show");
    let shown = String::from_utf8_lossy(&shown.stdout);
    assert!(
        shown.contains("database shop role postgres application crew-report"),
        "{shown}"
    );
    assert!(
        shown.contains(r#"executes: $1=int4 "3", $2=text [redacted: detector email]"#),
        "{shown}"
    );
    assert!(!shown.contains("jane@example.com"), "{shown}");
    // This run's records, exported as OCSF, validate against the schema.
    let kinds = f.agent.assert_ocsf_export_valid();
    for kind in ["execution", "session_login", "statement_completed"] {
        assert!(kinds.contains(kind), "no {kind} in {kinds:?}");
    }
}
