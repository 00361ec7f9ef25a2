//! Principals and credential injection end to end: `[[principals]]` names workers by
//! systemd unit, uid and executable hash; each principal gets its own verdicts and its
//! own database login, which the agent makes with a secret the worker never holds
//! (`worker_auth = "none"`, SCRAM-SHA-256 upstream against a server that accepts
//! nothing else). Real eBPF, a real PostgreSQL 15, psql, psycopg 3 and asyncpg.

use std::{
    os::unix::fs::PermissionsExt,
    path::{Path, PathBuf},
    process::{Command, Output},
};

use pam_e2e::SpawnWatched;
use pam_e2e::{
    Agent, Cgroup, OutputWithin, ResourceSpec, TestHost, agent_bin, postgres::PgServer,
    require_root,
};
use serde_json::Value;

const ADMIN_PASSWORD: &str = "identity-admin-password";
const WRITER_SECRET: &str = "W-secret-7f3c1d9a";
const READER_SECRET: &str = "R-secret-41aa02be";
const PSQL: &str = "/usr/lib/postgresql/15/bin/psql";
/// A uid with a name on the test machine (Debian's cloud images have it; the test
/// makes it if missing).
const OTHER_UID: u32 = 1000;

/// A cgroup under a governed one, named like a systemd unit; removed on drop.
struct Unit {
    path: PathBuf,
}

impl Unit {
    fn new(parent: &Cgroup, name: &str) -> Unit {
        let path = parent.path.join(name);
        std::fs::create_dir(&path).expect("unit cgroup");
        Unit { path }
    }
}

impl Drop for Unit {
    fn drop(&mut self) {
        let _ = std::fs::write(self.path.join("cgroup.kill"), "1");
        for _ in 0..250 {
            if std::fs::remove_dir(&self.path).is_ok() {
                return;
            }
            std::thread::sleep(std::time::Duration::from_millis(20));
        }
    }
}

struct Fixture {
    // Drop order: units before their parent cgroup, the agent before the database.
    orders: Unit,
    billing: Unit,
    misc: Unit,
    agent: Agent,
    cg: Cgroup,
    pg: PgServer,
    host: TestHost,
    secrets: tempfile::TempDir,
}

fn sha256_of(path: &str) -> String {
    let out = Command::new("sha256sum").arg(path).output_within().unwrap();
    String::from_utf8_lossy(&out.stdout)
        .split_whitespace()
        .next()
        .unwrap()
        .to_owned()
}

fn ensure_other_user() {
    let ok = Command::new("id")
        .arg(OTHER_UID.to_string())
        .output_within()
        .unwrap();
    if !ok.status.success() {
        let out = Command::new("useradd")
            .args(["-M", "-u", &OTHER_UID.to_string(), "pamcrew"])
            .output_within()
            .unwrap();
        assert!(out.status.success(), "useradd: {out:?}");
    }
}

fn secret_file(dir: &Path, name: &str, secret: &str) -> PathBuf {
    let path = dir.join(name);
    std::fs::write(&path, format!("{secret}\n")).unwrap();
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600)).unwrap();
    path
}

fn setup() -> Fixture {
    ensure_other_user();
    let host = TestHost::new().expect("test host");
    let pg = PgServer::start(&host, 5432, ADMIN_PASSWORD).expect("postgres");
    pg.admin_sql("postgres", "create database shop").unwrap();
    pg.admin_sql(
        "shop",
        &format!(
            "create role crew_writer login password '{WRITER_SECRET}';
             create role crew_reader login password '{READER_SECRET}';
             create table orders(id int primary key, customer text);
             insert into orders select g, 'customer-' || g from generate_series(1, 10) g;
             grant select, delete on orders to crew_writer;
             grant select on orders to crew_reader;"
        ),
    )
    .unwrap();
    let secrets = tempfile::tempdir().unwrap();
    let writer = secret_file(secrets.path(), "writer", WRITER_SECRET);
    let reader = secret_file(secrets.path(), "reader", READER_SECRET);
    let cg = Cgroup::new("identity").expect("cgroup");
    let policy = format!(
        r#"
[[principals]]
name = "orders-crew"
units = ["orders-*.service"]

[[principals]]
name = "billing-crew"
units = ["billing-*.service"]

[[principals]]
name = "psql-as-{OTHER_UID}"
uids = [{OTHER_UID}]
exe_sha256 = ["{}"]

[policy]
default = "deny"

[[policy.rules]]
name = "housekeeping"
action = "allow"
kinds = ["transaction", "session"]

[[policy.rules]]
name = "reads"
action = "allow"
kinds = ["select"]
tables = ["public.orders", "pg_catalog.*", "information_schema.*"]
principals = ["orders-crew", "billing-crew", "psql-as-{OTHER_UID}"]

[[policy.rules]]
name = "orders-deletes"
action = "allow"
kinds = ["delete"]
tables = ["public.orders"]
principals = ["orders-crew"]
"#,
        sha256_of(PSQL)
    );
    let resource = ResourceSpec::postgres("shop-db", host.v4, 5432)
        .with("worker_auth = \"none\"")
        .with(format!(
            "[[resources.logins]]\nprincipals = [\"orders-crew\"]\nrole = \"crew_writer\"\nsecret_file = \"{}\"",
            writer.display()
        ))
        .with(format!(
            "[[resources.logins]]\nprincipals = [\"billing-crew\", \"psql-as-{OTHER_UID}\"]\nrole = \"crew_reader\"\nsecret_file = \"{}\"",
            reader.display()
        ));
    let agent = Agent::start_with(&[&cg], &[resource], &policy).expect("agent");
    Fixture {
        orders: Unit::new(&cg, "orders-1.service"),
        billing: Unit::new(&cg, "billing-1.service"),
        misc: Unit::new(&cg, "misc"),
        agent,
        cg,
        pg,
        host,
        secrets,
    }
}

/// `psql -w` (never prompts: a server that asked for a password would fail it) in
/// `cgroup`, optionally as another uid, with `password` in PGPASSWORD if given.
fn psql(
    cgroup: &Path,
    uid: Option<u32>,
    host: &str,
    role: &str,
    password: Option<&str>,
    sql: &str,
) -> Output {
    let mut c = Command::new(agent_bin());
    c.args(["exec", "--cgroup"]).arg(cgroup).arg("--");
    if let Some(uid) = uid {
        c.args([
            "setpriv",
            &format!("--reuid={uid}"),
            &format!("--regid={uid}"),
            "--clear-groups",
        ]);
    }
    c.args([
        PSQL,
        "-w",
        "-h",
        host,
        "-U",
        role,
        "-d",
        "shop",
        "-XAt",
        "-v",
        "VERBOSITY=verbose",
        "-c",
        sql,
    ])
    .env_remove("PGPASSWORD")
    .env("PGCONNECT_TIMEOUT", "5");
    if let Some(p) = password {
        c.env("PGPASSWORD", p);
    }
    c.output_within().expect("psql")
}

fn text(o: &Output) -> (String, String) {
    (
        String::from_utf8_lossy(&o.stdout).trim().to_owned(),
        String::from_utf8_lossy(&o.stderr).trim().to_owned(),
    )
}

const WHO_AM_I: &str =
    "select current_user, application_name from pg_stat_activity where pid = pg_backend_pid()";

#[test]
fn each_principal_gets_its_own_login_and_verdicts_and_never_holds_the_secret() {
    if !require_root("identity") {
        return;
    }
    let f = setup();
    let v4 = f.host.v4.to_string();

    // By unit: two units under the same uid are two principals, two roles, two verdicts.
    // No password, or a wrong one: the worker is never asked, the agent logs in.
    for password in [None, Some("not-the-password")] {
        let (out, err) = text(&psql(&f.orders.path, None, &v4, "root", password, WHO_AM_I));
        assert_eq!(out, "crew_writer|pam-agent/orders-crew psql", "{err}");
    }
    let (out, err) = text(&psql(
        &f.billing.path,
        None,
        &v4,
        "crew_reader",
        None,
        WHO_AM_I,
    ));
    // psql's own application_name follows the principal's tag.
    assert_eq!(out, "crew_reader|pam-agent/billing-crew psql", "{err}");
    let delete = "delete from orders where id = 1";
    let (out, err) = text(&psql(&f.billing.path, None, &v4, "root", None, delete));
    assert!(out.is_empty(), "{out}");
    assert!(
        err.starts_with("ERROR:  42501: pam-agent refused the statement (rule \"default\")"),
        "{err}"
    );
    assert!(err.contains("principal `billing-crew` not listed"), "{err}");
    assert_eq!(
        f.pg.admin_sql("shop", "select count(*) from orders")
            .unwrap()
            .trim(),
        "10",
        "a refused delete ran"
    );
    let (out, err) = text(&psql(&f.orders.path, None, &v4, "root", None, delete));
    assert_eq!(out, "DELETE 1", "{err}");

    // By uid and executable hash: psql run as uid 1000, outside any named unit.
    let (out, err) = text(&psql(
        &f.misc.path,
        Some(OTHER_UID),
        &v4,
        "x",
        None,
        WHO_AM_I,
    ));
    // `x` is neither the login's role nor the worker's own user name: refused.
    assert!(out.is_empty(), "{out}");
    assert!(
        err.contains("FATAL:  pam-agent: principal \"psql-as-1000\" logs in to resource \"shop-db\" as role \"crew_reader\", not \"x\""),
        "{err}"
    );
    let user = Command::new("id")
        .args(["-nu", &OTHER_UID.to_string()])
        .output_within()
        .unwrap();
    let user = String::from_utf8_lossy(&user.stdout).trim().to_owned();
    let (out, err) = text(&psql(
        &f.misc.path,
        Some(OTHER_UID),
        &v4,
        &user,
        None,
        WHO_AM_I,
    ));
    assert_eq!(out, "crew_reader|pam-agent/psql-as-1000 psql", "{err}");

    // Root in the same cgroup: no entry names it (unknown), no login: FATAL 28000.
    let (out, err) = text(&psql(&f.misc.path, None, &v4, "root", None, WHO_AM_I));
    assert!(out.is_empty(), "{out}");
    assert!(
        err.contains(
            "FATAL:  pam-agent: principal \"unknown\" has no login on resource \"shop-db\""
        ),
        "{err}"
    );
    // Asking for the superuser by name does not get it either.
    let (_, err) = text(&psql(
        &f.orders.path,
        None,
        &v4,
        "postgres",
        Some(ADMIN_PASSWORD),
        WHO_AM_I,
    ));
    assert!(
        err.contains("FATAL:  pam-agent: principal \"orders-crew\" logs in to resource \"shop-db\" as role \"crew_writer\", not \"postgres\""),
        "{err}"
    );

    // The journal names each session's principal, with the facts behind it.
    let journal = f.agent.settled();
    let opened: Vec<&Value> = journal
        .iter()
        .filter(|r| r["kind"] == "session_opened")
        .collect();
    let names: Vec<&str> = opened
        .iter()
        .map(|r| r["principal"]["name"].as_str().unwrap_or("?"))
        .collect();
    assert_eq!(
        names,
        [
            "orders-crew",
            "orders-crew",
            "billing-crew",
            "billing-crew",
            "orders-crew",
            "psql-as-1000",
            "psql-as-1000",
            "unknown",
            "orders-crew"
        ]
    );
    assert_eq!(opened[0]["principal"]["unit"], "orders-1.service");
    assert_eq!(opened[5]["principal"]["uid"], OTHER_UID);
    assert_eq!(opened[5]["principal"]["exe_sha256"], sha256_of(PSQL));
    let closes: Vec<&Value> = journal
        .iter()
        .filter(|r| r["kind"] == "session_closed")
        .collect();
    assert!(
        closes.iter().any(|c| c["detail"]
            .as_str()
            .is_some_and(|d| d.contains("has no login"))),
        "the unmapped principal's refusal is journaled: {closes:#?}"
    );

    // `audit query --principal NAME`: exactly the records of that principal's sessions.
    let out = Command::new(agent_bin())
        .args(["audit", "--journal"])
        .arg(&f.agent.journal)
        .args(["query", "--principal", "billing-crew", "--format", "jsonl"])
        .output_within()
        .unwrap();
    assert!(out.status.success(), "{out:?}");
    let billing_sessions: Vec<&str> = opened
        .iter()
        .filter(|r| r["principal"]["name"] == "billing-crew")
        .map(|r| r["session"].as_str().unwrap())
        .collect();
    let rows: Vec<Value> = String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    let want = journal
        .iter()
        .filter(|r| {
            r["session"]
                .as_str()
                .is_some_and(|s| billing_sessions.contains(&s))
        })
        .count();
    assert_eq!(rows.len(), want);
    assert!(want >= 4, "two sessions, each opened, judged and closed");
    assert!(
        rows.iter()
            .all(|r| billing_sessions.contains(&r["session"].as_str().unwrap_or_default()))
    );

    // The secrets appear nowhere: not in the journal's files, the agent's log, nor in
    // what `check` prints.
    let check = Command::new(agent_bin())
        .args(["check", "--config"])
        .arg(&f.agent.config)
        .output_within()
        .unwrap();
    let said = String::from_utf8_lossy(&check.stdout).into_owned();
    assert!(
        said.contains("the agent logs in: orders-crew as crew_writer (secret: file ")
            && said
                .contains("principals: orders-crew, billing-crew, psql-as-1000 (others: unknown)"),
        "{said}"
    );
    let mut haystack: Vec<u8> = Vec::new();
    for suffix in ["", "-wal", "-shm"] {
        let mut p = f.agent.journal.clone().into_os_string();
        p.push(suffix);
        haystack.extend(std::fs::read(p).unwrap_or_default());
    }
    haystack.extend(f.agent.log().into_bytes());
    haystack.extend(check.stdout);
    haystack.extend(check.stderr);
    for secret in [WRITER_SECRET, READER_SECRET] {
        assert!(
            !haystack
                .windows(secret.len())
                .any(|w| w == secret.as_bytes()),
            "the secret leaked"
        );
    }
    drop(f.secrets);
    let _ = &f.cg;
}

#[test]
fn python_drivers_log_in_without_a_password_and_a_rotated_secret_is_used_next() {
    if !require_root("identity") {
        return;
    }
    let f = setup();
    let v4 = f.host.v4.to_string();
    let run = |code: &str| {
        let mut c = Command::new(agent_bin());
        c.args(["exec", "--cgroup"])
            .arg(&f.billing.path)
            .args(["--", "python3", "-c", code])
            .env_remove("PGPASSWORD");
        let out = c.output_within().expect("python");
        (
            String::from_utf8_lossy(&out.stdout).trim().to_owned(),
            String::from_utf8_lossy(&out.stderr).trim().to_owned(),
        )
    };
    let psycopg = format!(
        "import psycopg\n\
         with psycopg.connect('postgresql://crew_reader@{v4}:5432/shop') as c:\n\
         \x20   print('|'.join(map(str, c.execute(\"{WHO_AM_I}\").fetchone())))"
    );
    let asyncpg = format!(
        "import asyncio, asyncpg\n\
         async def main():\n\
         \x20   c = await asyncpg.connect(host='{v4}', user='crew_reader', database='shop')\n\
         \x20   r = await c.fetchrow(\"{WHO_AM_I}\")\n\
         \x20   print('|'.join(map(str, r)))\n\
         \x20   await c.close()\n\
         asyncio.run(main())"
    );
    for code in [&psycopg, &asyncpg] {
        let (out, err) = run(code);
        assert_eq!(out, "crew_reader|pam-agent/billing-crew", "{err}");
    }
    // Another role than the principal's login: the driver sees SQLSTATE 28000.
    let (out, err) = run(&format!(
        "import asyncio, asyncpg\n\
         async def main():\n\
         \x20   try:\n\
         \x20       await asyncpg.connect(host='{v4}', user='postgres', database='shop')\n\
         \x20   except asyncpg.PostgresError as e:\n\
         \x20       print(e.sqlstate)\n\
         asyncio.run(main())"
    ));
    assert_eq!(out, "28000", "{err}");

    // Rotation: the role's password changes on the server and in the secret file; the
    // next session uses the new one, with no reload.
    let rotated = "R-rotated-5c0ffee1";
    f.pg.admin_sql(
        "shop",
        &format!("alter role crew_reader password '{rotated}'"),
    )
    .unwrap();
    let (out, err) = run(&psycopg);
    assert!(out.is_empty(), "old secret still accepted? {out}");
    assert!(
        err.contains("password authentication failed for user \"crew_reader\""),
        "the server refused the old secret: {err}"
    );
    secret_file(f.secrets.path(), "reader", rotated);
    let (out, err) = run(&psycopg);
    assert_eq!(out, "crew_reader|pam-agent/billing-crew", "{err}");
    let log = f.agent.log();
    assert!(!log.contains(rotated) && !log.contains(READER_SECRET));

    // CrewAI's own NL2SQLTool, with a database URI that holds no password.
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/clients/crewai_nl2sql.py");
    let uri = format!("postgresql://crew_reader@{v4}:5432/shop");
    let mut c = Command::new(agent_bin());
    c.args(["exec", "--cgroup"])
        .arg(&f.billing.path)
        .args([
            "--",
            "python3",
            script,
            &uri,
            "select customer from orders where id <= 2 order by id",
        ])
        .env_remove("PGPASSWORD");
    let out = c.output_within().expect("crewai");
    let rows = String::from_utf8_lossy(&out.stdout);
    assert!(
        rows.contains("customer-1") && rows.contains("customer-2"),
        "{rows}{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn principals_explain_names_a_running_process_and_says_why() {
    if !require_root("identity") {
        return;
    }
    let f = setup();
    let sleeper = |cgroup: &Path| {
        Command::new(agent_bin())
            .args(["exec", "--cgroup"])
            .arg(cgroup)
            .args(["--", "sleep", "30"])
            .spawn_watched()
            .expect("sleep")
    };
    let explain = |args: &[&str]| {
        let out = Command::new(agent_bin())
            .args(["principals", "explain", "--config"])
            .arg(&f.agent.config)
            .args(args)
            .output_within()
            .unwrap();
        (
            out.status.code(),
            String::from_utf8_lossy(&out.stdout).into_owned(),
        )
    };
    let mut billing = sleeper(&f.billing.path);
    let mut misc = sleeper(&f.misc.path);
    pam_e2e::wait_for(
        "sleepers in their cgroups",
        std::time::Duration::from_secs(5),
        || {
            let procs =
                |p: &Path| std::fs::read_to_string(p.join("cgroup.procs")).unwrap_or_default();
            (!procs(&f.billing.path).is_empty() && !procs(&f.misc.path).is_empty()).then_some(())
        },
    );
    let (code, out) = explain(&["--pid", &billing.id().to_string()]);
    assert_eq!(code, Some(0), "{out}");
    assert!(out.contains("unit:      billing-1.service"), "{out}");
    assert!(
        out.contains("principal \"orders-crew\": no match: unit \"billing-1.service\" not listed"),
        "{out}"
    );
    assert!(out.ends_with("principal: billing-crew\n"), "{out}");
    // By unit name: the unit's first process.
    let (code, by_unit) = explain(&["--unit", "billing-1.service"]);
    assert_eq!((code, by_unit), (Some(0), out));
    let (code, out) = explain(&["--pid", &misc.id().to_string()]);
    assert_eq!(code, Some(2), "{out}");
    assert!(
        out.contains("principal \"psql-as-1000\": no match: uid 0 not listed"),
        "{out}"
    );
    assert!(out.contains("principal: unknown"), "{out}");
    let (code, _) = explain(&["--unit", "no-such-unit.service"]);
    assert_eq!(code, Some(1));
    let _ = billing.kill();
    let _ = misc.kill();
    let _ = billing.wait();
    let _ = misc.wait();
}

#[test]
fn over_tls_to_the_server_the_agent_binds_scram_to_the_servers_certificate() {
    if !require_root("identity") {
        return;
    }
    ensure_other_user();
    let host = TestHost::new().expect("test host");
    let pg = PgServer::start_tls(&host, 5432, ADMIN_PASSWORD).expect("postgres");
    pg.admin_sql("postgres", "create database shop").unwrap();
    pg.admin_sql(
        "shop",
        &format!("create role crew_reader login password '{READER_SECRET}'"),
    )
    .unwrap();
    let secrets = tempfile::tempdir().unwrap();
    let reader = secret_file(secrets.path(), "reader", READER_SECRET);
    let cg = Cgroup::new("identity-tls").expect("cgroup");
    let resource = ResourceSpec::postgres("shop-db", host.v4, 5432)
        .with("upstream_tls = \"verify-full\"")
        .with(format!(
            "upstream_ca = \"{}\"",
            pg.server_ca.as_ref().unwrap().display()
        ))
        .with("worker_auth = \"none\"")
        .with(format!(
            "[[resources.logins]]\nrole = \"crew_reader\"\nsecret_file = \"{}\"",
            reader.display()
        ));
    let agent = Agent::start_with(
        &[&cg],
        &[resource],
        "[policy]\ndefault = \"deny\"\n[[policy.rules]]\nname = \"all\"\naction = \"allow\"\n",
    )
    .expect("agent");
    let (out, err) = text(&psql(
        &cg.path,
        None,
        &host.v4.to_string(),
        "root",
        None,
        "select current_user, ssl from pg_stat_ssl join pg_stat_activity using (pid) where pid = pg_backend_pid()",
    ));
    assert_eq!(out, "crew_reader|t", "{err}");
    let log = agent.log();
    assert!(
        log.contains("method=\"SCRAM-SHA-256-PLUS\"") || log.contains("method=SCRAM-SHA-256-PLUS"),
        "{log}"
    );
    assert!(!log.contains(READER_SECRET));
}

/// A worker that presents an identity-provider token as its password
/// (`worker_auth = "oidc"`): verified against a real provider on loopback, bound to the
/// workload (`token_subjects`), matched by rules (`token_groups`), never forwarded or
/// journaled; every forged or foreign token refused with FATAL 28000 and a record.
#[test]
fn worker_tokens_are_verified_bound_to_their_workload_and_never_kept() {
    use pam_e2e::idp::{AUDIENCE, Idp};
    use serde_json::json;
    if !require_root("identity") {
        return;
    }
    let idp = Idp::start(&[("orders-bot", &["crew"]), ("billing-bot", &["interns"])])
        .expect("OpenID provider");
    let host = TestHost::new().expect("test host");
    let pg = PgServer::start(&host, 5432, ADMIN_PASSWORD).expect("postgres");
    pg.admin_sql("postgres", "create database shop").unwrap();
    pg.admin_sql(
        "shop",
        &format!(
            "create role crew_reader login password '{READER_SECRET}';
             create table orders(id int primary key, customer text);
             insert into orders values (1, 'customer-1');
             grant select on orders to crew_reader;"
        ),
    )
    .unwrap();
    let secrets = tempfile::tempdir().unwrap();
    let reader = secret_file(secrets.path(), "reader", READER_SECRET);
    let cg = Cgroup::new("identity-oidc").expect("cgroup");
    let policy = r#"
[[principals]]
name = "orders-crew"
units = ["orders-*.service"]
token_subjects = ["orders-bot"]

[[principals]]
name = "billing-crew"
units = ["billing-*.service"]
token_subjects = ["billing-bot"]

[policy]
default = "deny"

[[policy.rules]]
name = "crew-group-reads"
action = "allow"
kinds = ["select"]
tables = ["public.orders", "pg_catalog.*"]
token_groups = ["crew"]
"#;
    let resource = ResourceSpec::postgres("shop-db", host.v4, 5432)
        .with("worker_auth = \"oidc\"")
        .with(format!(
            "[resources.worker_oidc]\nissuer = \"{}\"\naudience = [\"{AUDIENCE}\"]",
            idp.issuer
        ))
        .with(format!(
            "[[resources.logins]]\nrole = \"crew_reader\"\nsecret_file = \"{}\"",
            reader.display()
        ));
    let agent = Agent::start_with(&[&cg], &[resource], policy).expect("agent");
    let orders = Unit::new(&cg, "orders-1.service");
    let billing = Unit::new(&cg, "billing-1.service");
    let v4 = host.v4.to_string();

    // The provider's own token, as the orders workload's password: in, as the login's
    // role; its group lets it read.
    let orders_token = idp.token("orders-bot");
    let (out, err) = text(&psql(
        &orders.path,
        None,
        &v4,
        "crew_reader",
        Some(&orders_token),
        "select current_user, (select customer from orders)",
    ));
    assert_eq!(out, "crew_reader|customer-1", "{err}");
    // The billing workload's own token is valid, but its group may not read.
    let billing_token = idp.token("billing-bot");
    let (out, err) = text(&psql(
        &billing.path,
        None,
        &v4,
        "crew_reader",
        Some(&billing_token),
        "select customer from orders",
    ));
    assert!(out.is_empty(), "{out}");
    assert!(
        err.contains("42501") && err.contains("token has none of token_groups"),
        "{err}"
    );
    // The orders token copied into the billing workload: refused there.
    let (out, err) = text(&psql(
        &billing.path,
        None,
        &v4,
        "crew_reader",
        Some(&orders_token),
        "select 1",
    ));
    assert!(out.is_empty(), "{out}");
    assert!(
        err.contains("FATAL:  pam-agent: worker token refused: principal \"billing-crew\" may not present a token of subject \"orders-bot\""),
        "{err}"
    );

    // Forged and foreign tokens: each refused before the server is dialed.
    let now = || {
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_secs() as i64
    };
    let with = |changes: serde_json::Value| {
        let mut c = idp.claims("orders-bot", &["crew"]);
        for (k, v) in changes.as_object().unwrap() {
            c[k] = v.clone();
        }
        c
    };
    let k1 = idp.signing_kid().to_owned();
    idp.unpublished_key("rogue").unwrap();
    let sound = idp.forge("RS256", Some(&k1), &with(json!({})), false);
    let (out, err) = text(&psql(
        &orders.path,
        None,
        &v4,
        "crew_reader",
        Some(&sound),
        "select 1",
    ));
    assert_eq!(out, "1", "the forging itself is sound: {err}");
    let attacks = [
        (
            "alg none",
            idp.forge("none", Some(&k1), &with(json!({})), false),
            "algorithm",
        ),
        (
            "HS256 with the public key",
            idp.forge("HS256", Some(&k1), &with(json!({})), false),
            "algorithm",
        ),
        (
            "expired",
            idp.forge(
                "RS256",
                Some(&k1),
                &with(json!({"iat": now() - 7200, "exp": now() - 3600})),
                false,
            ),
            "expired",
        ),
        (
            "foreign audience",
            idp.forge(
                "RS256",
                Some(&k1),
                &with(json!({"aud": "https://elsewhere.test/"})),
                false,
            ),
            "audience",
        ),
        (
            "unknown key",
            idp.forge("RS256", Some("rogue"), &with(json!({})), false),
            "rogue",
        ),
        (
            "altered signature",
            idp.forge("RS256", Some(&k1), &with(json!({})), true),
            "signature",
        ),
        ("not a token", "hunter2".to_owned(), "not a JWT"),
    ];
    for (what, token, says) in &attacks {
        let (out, err) = text(&psql(
            &orders.path,
            None,
            &v4,
            "crew_reader",
            Some(token),
            "select 1",
        ));
        assert!(out.is_empty(), "{what}: {out}");
        assert!(
            err.contains("FATAL:  pam-agent: worker token refused: the token was refused:")
                && err.contains(says),
            "{what}: {err}"
        );
    }

    // The journal: one worker_token record per attempt, accepted ones with subject,
    // groups and expiry; never a token.
    let journal = agent.settled();
    let tokens: Vec<&Value> = journal
        .iter()
        .filter(|r| r["kind"] == "worker_token")
        .collect();
    let accepted: Vec<bool> = tokens
        .iter()
        .map(|r| r["accepted"].as_bool().unwrap())
        .collect();
    let mut want = vec![true, true, false, true];
    want.extend(std::iter::repeat_n(false, attacks.len()));
    assert_eq!(accepted, want);
    assert_eq!(tokens[0]["subject"], "orders-bot");
    assert_eq!(tokens[0]["groups"], json!(["crew"]));
    assert!(tokens[0]["expires_at"].as_i64().unwrap() > now());
    assert_eq!(tokens[0]["issuer"], idp.issuer.as_str());
    let mut haystack = std::fs::read(&agent.journal).unwrap();
    let mut wal = agent.journal.clone().into_os_string();
    wal.push("-wal");
    haystack.extend(std::fs::read(wal).unwrap_or_default());
    haystack.extend(agent.log().into_bytes());
    for t in [&orders_token, &billing_token, &sound] {
        // The signature part is what makes a token usable: it must be nowhere.
        let sig = t.rsplit('.').next().unwrap();
        assert!(
            !haystack.windows(sig.len()).any(|w| w == sig.as_bytes()),
            "a token was kept"
        );
    }
    // This run's records, exported as OCSF, validate against the schema.
    let kinds = agent.assert_ocsf_export_valid();
    for kind in [
        "worker_token",
        "session_login",
        "session_opened",
        "statement",
    ] {
        assert!(kinds.contains(kind), "no {kind} in {kinds:?}");
    }
    drop((orders, billing));
}
