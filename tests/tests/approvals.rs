//! Just-in-time approval of one statement, end to end: psql in a governed cgroup (real
//! eBPF redirect) runs a statement a rule sends to approval; it waits inside its live
//! session while another user decides with `pam-agent approvals` over the agent's control
//! socket; PostgreSQL 15 on a test host shows what ran.

use std::{
    os::unix::fs::PermissionsExt,
    process::{Command, Output, Stdio},
    time::{Duration, Instant},
};

use pam_e2e::OutputWithin;
use pam_e2e::{Agent, Cgroup, ResourceSpec, TestHost, agent_bin, postgres::PgServer, require_root};
use pam_e2e::{SpawnWatched, Watched};
use serde_json::Value;

const PASSWORD: &str = "pg-approvals-password";
/// The worker runs as this uid (no passwd entry needed); approvers are root and nobody.
const WORKER_UID: &str = "4242";
const NOBODY: &str = "65534";

const POLICY: &str = r#"
[[policy.rules]]
name = "ledger-commits-need-approval"
action = "require_approval"
kinds = ["transaction"]
any_tables = ["public.ledger"]

[[policy.rules]]
name = "ledger-writes"
action = "allow"
kinds = ["insert"]
tables = ["public.ledger"]

[[policy.rules]]
name = "deletes-need-approval"
action = "require_approval"
kinds = ["delete"]
tables = ["public.orders"]
approval_timeout = "60s"

[[policy.rules]]
name = "updates-need-two"
action = "require_approval"
kinds = ["update"]
min_approvals = 2

[[policy.rules]]
name = "truncate-expires"
action = "require_approval"
kinds = ["ddl"]
approval_timeout = "2s"

[[policy.rules]]
name = "reads"
action = "allow"
kinds = ["select"]

[[policy.rules]]
name = "drivers-housekeeping"
action = "allow"
kinds = ["transaction", "session"]
"#;

struct Fixture {
    agent: Agent,
    cg: Cgroup,
    pg: PgServer,
    host: TestHost,
    /// Holds the control socket; world-traversable so `nobody` reaches it.
    sock_dir: tempfile::TempDir,
}

impl Fixture {
    fn new() -> Fixture {
        let host = TestHost::new().expect("test host");
        let pg = PgServer::start(&host, 5432, PASSWORD).expect("postgres");
        pg.admin_sql("postgres", "create database shop").unwrap();
        pg.admin_sql(
            "shop",
            "create table orders(id int primary key, note text);
             insert into orders select g, 'order ' || g from generate_series(1, 10) g;
             create table ledger(id int);",
        )
        .unwrap();
        let cg = Cgroup::new("appr").expect("cgroup");
        let sock_dir = tempfile::Builder::new()
            .prefix("pam-approvals")
            .tempdir()
            .unwrap();
        std::fs::set_permissions(sock_dir.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
        let extra = format!(
            "{POLICY}\n[approvals]\nsocket = \"{}\"\ngroup = \"nogroup\"\n",
            sock_dir.path().join("approvals.sock").display()
        );
        let agent = Agent::start_with(
            &[&cg],
            &[ResourceSpec::postgres("shop-db", host.v4, 5432)],
            &extra,
        )
        .expect("agent");
        Fixture {
            agent,
            cg,
            pg,
            host,
            sock_dir,
        }
    }

    /// psql as `uid` in the governed cgroup, each `-c` its own statement in one session.
    fn worker(&self, uid: &str, statements: &[&str]) -> Watched {
        let mut c = Command::new(agent_bin());
        c.args(["exec", "--cgroup"]).arg(&self.cg.path).args([
            "--",
            "setpriv",
            "--reuid",
            uid,
            "--regid",
            uid,
            "--clear-groups",
            "psql",
            "-h",
        ]);
        c.arg(self.host.v4.to_string())
            .args(["-U", "postgres", "-d", "shop", "-X", "-At"])
            // Errors with their SQLSTATE: `ERROR:  42501: ...`.
            .args(["-v", "VERBOSITY=verbose"]);
        for s in statements {
            c.args(["-c", s]);
        }
        c.env("PGPASSWORD", PASSWORD)
            .env("PGCONNECT_TIMEOUT", "5")
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn_watched()
            .expect("psql")
    }

    /// `pam-agent approvals ...` as `uid` (None: root).
    fn approvals(&self, uid: Option<&str>, args: &[&str]) -> Output {
        let mut c = match uid {
            Some(uid) => {
                let mut c = Command::new("setpriv");
                c.args(["--reuid", uid, "--regid", uid, "--init-groups"])
                    .arg(agent_bin());
                c
            }
            None => Command::new(agent_bin()),
        };
        c.arg("approvals")
            .arg("--socket")
            .arg(self.sock_dir.path().join("approvals.sock"))
            .args(args);
        c.output_within().expect("pam-agent approvals")
    }

    /// The pending requests (as root), waiting until there are `n`.
    fn pending(&self, n: usize) -> Vec<Value> {
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            let out = self.approvals(None, &["--json", "list"]);
            assert!(out.status.success(), "{}", text(&out.stderr));
            let v: Value = serde_json::from_slice(&out.stdout).expect("JSON");
            let list = v["requests"].as_array().cloned().unwrap_or_default();
            if list.len() == n || Instant::now() > deadline {
                assert_eq!(list.len(), n, "pending requests: {v}");
                return list;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    fn orders(&self, filter: &str) -> String {
        self.pg
            .admin_sql(
                "shop",
                &format!("select count(*) from orders where {filter}"),
            )
            .unwrap()
            .trim()
            .to_owned()
    }

    fn count_ledger(&self) -> String {
        self.pg
            .admin_sql("shop", "select count(*) from ledger")
            .unwrap()
            .trim()
            .to_owned()
    }

    /// Journal records of a kind.
    fn records(&self, kind: &str) -> Vec<Value> {
        self.agent.records(kind)
    }
}

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

/// Waits for a worker, failing (and killing it) if it takes longer than `secs`.
fn finish(mut child: Watched, secs: u64) -> Output {
    let deadline = Instant::now() + Duration::from_secs(secs);
    while child.try_wait().unwrap().is_none() {
        if Instant::now() > deadline {
            let _ = child.kill();
            panic!(
                "worker still running after {secs}s: {:?}",
                child.wait_with_output()
            );
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    child.wait_with_output().unwrap()
}

/// Like [`finish`], printing the agent's log when the worker hangs.
fn finish_or_log(f: &Fixture, mut child: Watched, secs: u64) -> Output {
    let deadline = Instant::now() + Duration::from_secs(secs);
    while child.try_wait().unwrap().is_none() {
        if Instant::now() > deadline {
            let _ = child.kill();
            panic!(
                "worker still running after {secs}s: {:?}\nagent log:\n{}",
                child.wait_with_output(),
                f.agent.log()
            );
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    child.wait_with_output().unwrap()
}

#[test]
fn a_held_delete_runs_in_the_same_session_once_another_user_approves() {
    if !require_root("approvals") {
        return;
    }
    let f = Fixture::new();
    let worker = f.worker(
        WORKER_UID,
        &[
            "delete from orders where id = 1",
            "select count(*) from orders",
        ],
    );
    let req = f.pending(1).remove(0);
    // What the approver sees: who, where, what and why.
    assert_eq!(req["principal"]["uid"], 4242);
    assert_eq!(req["resource"], "shop-db");
    assert_eq!(req["rule"], "deletes-need-approval");
    assert_eq!(req["text"], "delete from orders where id = 1");
    assert_eq!(req["kinds"], serde_json::json!(["delete"]));
    assert_eq!(req["tables"], serde_json::json!(["public.orders"]));
    // Nothing ran while it waits.
    assert_eq!(f.orders("id = 1"), "1");
    let id = req["id"].as_str().unwrap().to_owned();
    let show = f.approvals(None, &["show", &id]);
    assert!(
        text(&show.stdout).contains("uid 4242"),
        "{}",
        text(&show.stdout)
    );
    // nobody approves: a different user than the worker, admitted by the socket group.
    let ok = f.approvals(Some(NOBODY), &["approve", &id, "--reason", "ticket 7"]);
    assert!(ok.status.success(), "{}", text(&ok.stderr));
    assert!(
        text(&ok.stdout).contains("approved"),
        "{}",
        text(&ok.stdout)
    );
    let out = finish(worker, 20);
    let (stdout, stderr) = (text(&out.stdout), text(&out.stderr));
    assert!(out.status.success(), "{stderr}");
    // The same session ran the delete and went on to the next statement.
    assert_eq!(stdout.lines().last(), Some("9"), "{stdout}");
    assert_eq!(f.orders("id = 1"), "0");
    // psql showed the notice naming the request and how to approve it.
    assert!(
        stderr.contains(&format!("held for approval (request {id}"))
            && stderr.contains(&format!("pam-agent approvals approve {id}")),
        "{stderr}"
    );
    // On record: the statement (held), the request, the decision by nobody, completion.
    let st: Vec<Value> = f
        .records("statement")
        .into_iter()
        .filter(|r| r["text"] == "delete from orders where id = 1")
        .collect();
    assert_eq!(st.len(), 1);
    assert_eq!(st[0]["decision"], "require_approval");
    let requested = f.records("approval_requested");
    assert_eq!(requested.len(), 1);
    assert_eq!(requested[0]["approval"], id.as_str());
    let decided = f.records("approval_decided");
    assert_eq!(decided.len(), 1);
    assert_eq!(decided[0]["outcome"], "approved");
    assert!(
        decided[0]["by"].as_str().unwrap().contains("uid 65534"),
        "{decided:?}"
    );
    assert_eq!(decided[0]["session"], st[0]["session"]);
    let completed = f
        .records("statement_completed")
        .into_iter()
        .filter(|r| r["session"] == st[0]["session"] && r["statement"] == st[0]["statement"])
        .count();
    assert_eq!(completed, 1, "the approved statement completed once");
}

#[test]
fn a_denied_statement_gets_42501_and_the_session_goes_on() {
    if !require_root("approvals") {
        return;
    }
    let f = Fixture::new();
    let worker = f.worker(
        WORKER_UID,
        &[
            "delete from orders where id = 2",
            "select count(*) from orders",
        ],
    );
    let id = f.pending(1)[0]["id"].as_str().unwrap().to_owned();
    let no = f.approvals(None, &["deny", &id, "--reason", "not during the sale"]);
    assert!(no.status.success(), "{}", text(&no.stderr));
    let out = finish(worker, 20);
    let stderr = text(&out.stderr);
    assert!(
        stderr.contains(
            "ERROR:  42501: pam-agent refused the statement (rule \"deletes-need-approval\")"
        ) && stderr.contains("denied by root: not during the sale"),
        "{stderr}"
    );
    assert_eq!(text(&out.stdout).trim(), "10", "the next statement ran");
    assert_eq!(f.orders("id = 2"), "1", "nothing deleted");
    let decided = f.records("approval_decided");
    assert_eq!(decided[0]["outcome"], "rejected");
    // This run's records, exported as OCSF, validate against the schema.
    let kinds = f.agent.assert_ocsf_export_valid();
    for kind in ["approval_requested", "approval_decided", "statement"] {
        assert!(kinds.contains(kind), "no {kind} in {kinds:?}");
    }
}

#[test]
fn an_undecided_statement_expires_and_never_runs() {
    if !require_root("approvals") {
        return;
    }
    let f = Fixture::new();
    let worker = f.worker(WORKER_UID, &["truncate orders"]);
    let id = f.pending(1)[0]["id"].as_str().unwrap().to_owned();
    let out = finish(worker, 20);
    let stderr = text(&out.stderr);
    assert!(
        stderr.contains(&format!("approval request {id} expired")),
        "{stderr}"
    );
    assert_eq!(f.orders("true"), "10");
    assert_eq!(f.records("approval_expired").len(), 1);
    // Too late to approve.
    let late = f.approvals(None, &["approve", &id]);
    assert_eq!(late.status.code(), Some(2));
    assert!(text(&late.stderr).contains("no pending approval request"));
}

#[test]
fn the_requester_cannot_approve_and_two_approvers_are_needed_when_the_rule_says_so() {
    if !require_root("approvals") {
        return;
    }
    let f = Fixture::new();
    // A worker running as root cannot approve its own statement as root.
    let worker = f.worker("0", &["delete from orders where id = 3"]);
    let id = f.pending(1)[0]["id"].as_str().unwrap().to_owned();
    let own = f.approvals(None, &["approve", &id]);
    assert_eq!(own.status.code(), Some(2));
    assert!(
        text(&own.stderr).contains("cannot approve its own request"),
        "{}",
        text(&own.stderr)
    );
    f.approvals(Some(NOBODY), &["deny", &id]);
    finish(worker, 20);
    assert_eq!(f.orders("id = 3"), "1");

    let worker = f.worker(WORKER_UID, &["update orders set note = 'x' where id = 4"]);
    let id = f.pending(1)[0]["id"].as_str().unwrap().to_owned();
    let first = f.approvals(None, &["approve", &id]);
    assert!(
        text(&first.stdout).contains("1 of 2"),
        "{}",
        text(&first.stdout)
    );
    let again = f.approvals(None, &["approve", &id]);
    assert_eq!(again.status.code(), Some(2), "the same approver twice");
    assert_eq!(
        f.orders("note = 'x'"),
        "0",
        "one approval of two runs nothing"
    );
    let second = f.approvals(Some(NOBODY), &["approve", &id]);
    assert!(
        text(&second.stdout).contains("approved"),
        "{}",
        text(&second.stdout)
    );
    let out = finish(worker, 20);
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert_eq!(f.orders("note = 'x'"), "1");
}

#[test]
fn a_grant_lets_the_same_statement_shape_through_for_its_window_only() {
    if !require_root("approvals") {
        return;
    }
    let mut f = Fixture::new();
    let worker = f.worker(WORKER_UID, &["delete from orders where id = 5"]);
    let id = f.pending(1)[0]["id"].as_str().unwrap().to_owned();
    let ok = f.approvals(None, &["approve", &id, "--for", "10m"]);
    assert!(ok.status.success(), "{}", text(&ok.stderr));
    assert!(finish(worker, 20).status.success());
    // The grant is on record and outlives a restart of the agent.
    f.agent.stop().expect("stop");
    f.agent.restart().expect("restart");
    // The same fingerprint (other constants), a new session: runs without a request.
    let again = finish(
        f.worker(WORKER_UID, &["delete from orders where id = 6"]),
        20,
    );
    assert!(again.status.success(), "{}", text(&again.stderr));
    assert_eq!(f.orders("id in (5, 6)"), "0");
    assert_eq!(
        f.records("approval_requested").len(),
        1,
        "no second request"
    );
    // Another shape still waits; revoking the grant makes the first shape wait again.
    let grants = f.approvals(None, &["--json", "grants"]);
    let v: Value = serde_json::from_slice(&grants.stdout).unwrap();
    let grant = v["grants"][0]["id"].as_str().unwrap().to_owned();
    assert!(f.approvals(None, &["revoke", &grant]).status.success());
    let worker = f.worker(WORKER_UID, &["delete from orders where id = 7"]);
    let id = f.pending(1)[0]["id"].as_str().unwrap().to_owned();
    f.approvals(None, &["deny", &id]);
    finish(worker, 20);
    assert_eq!(f.orders("id = 7"), "1");
}

#[test]
fn ctrl_c_withdraws_a_held_statement() {
    if !require_root("approvals") {
        return;
    }
    let f = Fixture::new();
    let worker = f.worker(WORKER_UID, &["delete from orders where id = 8"]);
    let id = f.pending(1)[0]["id"].as_str().unwrap().to_owned();
    // psql sends a CancelRequest on SIGINT, on a new (redirected) connection.
    let psql_pid = descendant_named(worker.id(), "psql").expect("psql process");
    // SAFETY: kill(2) on a pid we found among our own children; no memory involved.
    assert_eq!(unsafe { libc::kill(psql_pid as i32, libc::SIGINT) }, 0);
    let out = finish(worker, 20);
    let stderr = text(&out.stderr);
    assert!(stderr.contains("withdrawn"), "{stderr}");
    assert_eq!(f.orders("id = 8"), "1");
    f.pending(0);
    let decided = f.records("approval_decided");
    assert_eq!(decided.len(), 1, "{decided:?}");
    assert_eq!(decided[0]["outcome"], "withdrawn");
    assert_eq!(decided[0]["approval"], id.as_str());
}

/// The pid of a process named `name` under `root` (pam-agent exec -> setpriv -> psql).
fn descendant_named(root: u32, name: &str) -> Option<u32> {
    let mut frontier = vec![root];
    while let Some(pid) = frontier.pop() {
        let comm = std::fs::read_to_string(format!("/proc/{pid}/comm")).unwrap_or_default();
        if comm.trim() == name {
            return Some(pid);
        }
        let children =
            std::fs::read_to_string(format!("/proc/{pid}/task/{pid}/children")).unwrap_or_default();
        frontier.extend(
            children
                .split_whitespace()
                .filter_map(|c| c.parse::<u32>().ok()),
        );
    }
    None
}

#[test]
fn a_statement_held_when_the_agent_stops_or_dies_never_runs_and_is_abandoned() {
    if !require_root("approvals") {
        return;
    }
    let mut f = Fixture::new();
    // Stopped in order: the request is abandoned at once and the worker told. A stop
    // that waited for the request's deadline (60 s) would record it `expired`, not
    // `abandoned` (checked below); how long a stop takes is not a test's business.
    let worker = f.worker(WORKER_UID, &["delete from orders where id = 9"]);
    let first = f.pending(1)[0]["id"].as_str().unwrap().to_owned();
    f.agent.stop().expect("orderly stop");
    let out = finish(worker, 20);
    assert!(!out.status.success());
    assert_eq!(f.orders("id = 9"), "1");
    // Killed: nothing is told, nothing runs; the next start puts it on record.
    f.agent.restart().expect("restart");
    let worker = f.worker(WORKER_UID, &["delete from orders where id = 10"]);
    let second = f.pending(1)[0]["id"].as_str().unwrap().to_owned();
    f.agent.kill().expect("kill -9");
    let _ = finish(worker, 20);
    assert_eq!(f.orders("id = 10"), "1");
    f.agent.restart().expect("restart after the kill");
    let abandoned: Vec<String> = f
        .records("approval_decided")
        .into_iter()
        .filter(|r| r["outcome"] == "abandoned")
        .map(|r| r["approval"].as_str().unwrap().to_owned())
        .collect();
    assert_eq!(abandoned, [first, second]);
    let (ok, report) = f.agent.verify_journal();
    assert!(ok, "{report}");
}

#[test]
fn a_crewai_nl2sql_write_is_held_approved_and_the_tool_finishes() {
    if !require_root("approvals") {
        return;
    }
    let f = Fixture::new();
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/clients/crewai_nl2sql.py");
    let uri = format!("postgresql://postgres:{PASSWORD}@{}:5432/shop", f.host.v4);
    // CrewAI's own tool, unmodified, allowed to write by its own switch; as root (its
    // Python lives under /root), so nobody approves.
    let crew = Command::new(agent_bin())
        .args(["exec", "--cgroup"])
        .arg(&f.cg.path)
        .args([
            "--",
            "python3",
            script,
            &uri,
            "delete from orders where id = 1",
        ])
        .env("CREWAI_NL2SQL_ALLOW_DML", "true")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn_watched()
        .expect("crewai");
    let req = f.pending(1).remove(0);
    assert_eq!(req["text"], "delete from orders where id = 1");
    assert_eq!(f.orders("id = 1"), "1", "nothing ran while it waits");
    let id = req["id"].as_str().unwrap().to_owned();
    let ok = f.approvals(Some(NOBODY), &["approve", &id]);
    assert!(ok.status.success(), "{}", text(&ok.stderr));
    let out = finish(crew, 60);
    let stdout = text(&out.stdout);
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert!(
        stdout.contains("executed successfully"),
        "the tool finished with its result: {stdout}"
    );
    assert_eq!(
        f.orders("id = 1"),
        "0",
        "the approved delete ran and was committed"
    );
}

#[test]
fn extended_protocol_drivers_wait_for_approval_too() {
    if !require_root("approvals") {
        return;
    }
    let f = Fixture::new();
    let host = f.host.v4.to_string();
    // Each driver deletes one row with a bind parameter (Parse/Bind/Execute/Sync), then
    // reads the count in the same connection. Run as root (the drivers live under
    // /root), approved by nobody.
    let scripts = [
        (
            "asyncpg",
            format!(
                "import asyncio, asyncpg\n\
                 async def main():\n\
                 \x20   c = await asyncpg.connect(host='{host}', user='postgres', password='{PASSWORD}', database='shop')\n\
                 \x20   print(await c.execute('delete from orders where id = $1', 2))\n\
                 \x20   print(await c.fetchval('select count(*) from orders'))\n\
                 asyncio.run(main())\n"
            ),
            "DELETE 1",
        ),
        (
            "psycopg",
            format!(
                "import psycopg\n\
                 with psycopg.connect(host='{host}', user='postgres', password='{PASSWORD}', dbname='shop', autocommit=True) as c:\n\
                 \x20   cur = c.execute('delete from orders where id = %s', (3,), prepare=True)\n\
                 \x20   print('DELETE', cur.rowcount)\n\
                 \x20   print(c.execute('select count(*) from orders').fetchone()[0])\n"
            ),
            "DELETE 1",
        ),
    ];
    let mut expected_rows = 10;
    for (driver, script, said) in scripts {
        let worker = Command::new(agent_bin())
            .args(["exec", "--cgroup"])
            .arg(&f.cg.path)
            .args(["--", "python3", "-c", &script])
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn_watched()
            .expect("python");
        let req = f.pending(1).remove(0);
        assert_eq!(req["rule"], "deletes-need-approval", "{driver}");
        assert_eq!(
            f.orders("true"),
            expected_rows.to_string(),
            "{driver}: waits"
        );
        let id = req["id"].as_str().unwrap().to_owned();
        assert!(
            f.approvals(Some(NOBODY), &["approve", &id])
                .status
                .success()
        );
        let out = finish_or_log(&f, worker, 30);
        let stdout = text(&out.stdout);
        assert!(out.status.success(), "{driver}: {}", text(&out.stderr));
        expected_rows -= 1;
        assert_eq!(
            stdout.lines().collect::<Vec<_>>(),
            [said, &expected_rows.to_string()],
            "{driver}"
        );
    }
}

#[test]
fn a_commit_of_a_transaction_that_wrote_the_ledger_waits_and_a_denial_rolls_it_back() {
    if !require_root("approvals") {
        return;
    }
    let f = Fixture::new();
    let script = [
        "begin",
        "insert into ledger values (1)",
        "insert into ledger values (2)",
        "commit",
        "select count(*) from ledger",
    ];
    // Approved: the transaction's writes stand.
    let worker = f.worker(WORKER_UID, &script);
    let req = f.pending(1).remove(0);
    assert_eq!(req["rule"], "ledger-commits-need-approval");
    assert_eq!(req["text"], "commit");
    assert_eq!(f.count_ledger(), "0", "nothing committed while it waits");
    let id = req["id"].as_str().unwrap().to_owned();
    let show = text(&f.approvals(None, &["show", &id]).stdout);
    assert!(
        show.contains("insert into ledger values (1) -> 1 row(s)")
            && show.contains("insert into ledger values (2) -> 1 row(s)"),
        "the approver sees the transaction: {show}"
    );
    f.approvals(Some(NOBODY), &["approve", &id]);
    let out = finish_or_log(&f, worker, 30);
    assert_eq!(
        text(&out.stdout).lines().last(),
        Some("2"),
        "{}",
        text(&out.stderr)
    );
    assert_eq!(f.count_ledger(), "2");
    // Denied: rolled back, and the session goes on outside the transaction.
    let worker = f.worker(WORKER_UID, &script);
    let id = f.pending(1)[0]["id"].as_str().unwrap().to_owned();
    f.approvals(Some(NOBODY), &["deny", &id, "--reason", "no"]);
    let out = finish_or_log(&f, worker, 30);
    let stderr = text(&out.stderr);
    assert!(stderr.contains("denied by nobody: no"), "{stderr}");
    assert_eq!(text(&out.stdout).lines().last(), Some("2"), "{stderr}");
    assert_eq!(
        f.count_ledger(),
        "2",
        "the denied transaction's rows are gone"
    );
    // A transaction that never wrote the ledger commits without asking.
    let out = finish(f.worker(WORKER_UID, &["begin", "select 1", "commit"]), 20);
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert_eq!(f.records("approval_requested").len(), 2);
}
