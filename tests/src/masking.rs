//! The masking tests' shared fixture: PostgreSQL on a test host with a database `crm`
//! built from the test's schema, a governed cgroup, and the agent protecting `crm-db`
//! with the test's policy and masking rules. One place, so the masking tests differ only
//! in their schema, rules and forms, and each runs its clients governed or not the same
//! way (the ungoverned run shows its forms do reveal the values).

use std::process::Command;

use serde_json::Value;

use crate::{Agent, Cgroup, OutputWithin, ResourceSpec, TestHost, agent_bin, postgres::PgServer};

/// The resource name every masking test's rules select (`when = { resources = [...] }`).
pub const RESOURCE: &str = "crm-db";

pub struct MaskFixture {
    // Field order is drop order: the agent and database go before the test host.
    pub agent: Agent,
    pub cg: Cgroup,
    pub pg: PgServer,
    pub host: TestHost,
    password: String,
}

impl MaskFixture {
    /// Starts the server (superuser password `password`), creates `crm` (JIT off: the
    /// forms are tiny) and runs `schema` in it, then the agent with `config` governing a
    /// new cgroup named after `tag`.
    pub fn start(tag: &str, password: &str, schema: &str, config: &str) -> MaskFixture {
        let host = TestHost::new().expect("test host");
        let pg = PgServer::start(&host, 5432, password).expect("postgres");
        pg.admin_sql("postgres", "create database crm").unwrap();
        pg.admin_sql("postgres", "alter database crm set jit = off")
            .unwrap();
        pg.admin_sql("crm", schema).unwrap();
        let cg = Cgroup::new(tag).expect("cgroup");
        let agent = Agent::start_with(
            &[&cg],
            &[ResourceSpec::postgres(RESOURCE, host.v4, 5432)],
            config,
        )
        .expect("agent");
        MaskFixture {
            agent,
            cg,
            pg,
            host,
            password: password.to_owned(),
        }
    }

    /// `program` run inside the governed cgroup (`governed`), or directly, ungoverned.
    pub fn command(&self, governed: bool, program: &str) -> Command {
        if governed {
            let mut c = Command::new(agent_bin());
            c.args(["exec", "--cgroup"])
                .arg(&self.cg.path)
                .args(["--", program]);
            c
        } else {
            Command::new(program)
        }
    }

    /// psql as `user` (text results, SQLSTATEs in its messages) running `script` from a
    /// file in one session, under the harness's deadline: (ok, stdout, stderr).
    pub fn psql(&self, governed: bool, user: &str, script: &str) -> (bool, String, String) {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("script.sql");
        std::fs::write(&file, script).unwrap();
        let out = self
            .command(governed, "psql")
            .args(["-h", &self.host.v4.to_string(), "-U", user, "-d", "crm"])
            .args(["-XAt", "-v", "VERBOSITY=verbose", "-f"])
            .arg(&file)
            .env("PGPASSWORD", &self.password)
            .env("PGCONNECT_TIMEOUT", "5")
            .output_within()
            .expect("psql");
        crate::printed(&out)
    }

    /// `clients/mask_evasion.py` with one client (`psycopg-text`, `psycopg-binary`,
    /// `asyncpg`) running `corpus` (`[{name, steps, copy}]`), each form in its own
    /// transaction: per form, `{values, error, sqlstate}`.
    pub fn python(&self, governed: bool, client: &str, dsn: &str, corpus: &Value) -> Value {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("corpus.json");
        std::fs::write(&file, corpus.to_string()).unwrap();
        let script = concat!(env!("CARGO_MANIFEST_DIR"), "/clients/mask_evasion.py");
        let out = self
            .command(governed, "python3")
            .arg(script)
            .arg(client)
            .arg(dsn)
            .arg(&file)
            .output_within()
            .expect("python client");
        assert!(
            out.status.success(),
            "{client}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        serde_json::from_slice(&out.stdout)
            .unwrap_or_else(|e| panic!("{client}: {e}: {}", String::from_utf8_lossy(&out.stdout)))
    }

    /// A libpq connection string for `user` (password `password`) to `crm` on the test host.
    pub fn dsn(&self, user: &str, password: &str) -> String {
        format!(
            "host={} port=5432 user={user} password={password} dbname=crm connect_timeout=5",
            self.host.v4
        )
    }

    /// The same as a URI (asyncpg takes no key=value strings).
    pub fn uri(&self, user: &str, password: &str) -> String {
        format!(
            "postgresql://{user}:{password}@{}:5432/crm?sslmode=disable",
            self.host.v4
        )
    }
}

/// What a client received for one form: its values, and its error message if any.
pub fn received(got: &Value) -> Vec<String> {
    let mut cells: Vec<String> =
        serde_json::from_value(got["values"].clone()).unwrap_or_else(|e| panic!("{e}: {got}"));
    if let Some(e) = got["error"].as_str() {
        cells.push(e.to_owned());
    }
    cells
}

/// The one `masking_applied` record of a `statement` record (same session and number).
pub fn masking_record<'j>(journal: &'j [Value], statement: &Value) -> &'j Value {
    let found: Vec<&Value> = journal
        .iter()
        .filter(|r| {
            r["kind"] == "masking_applied"
                && r["session"] == statement["session"]
                && r["statement"] == statement["statement"]
        })
        .collect();
    assert_eq!(found.len(), 1, "{statement}: masking records {found:#?}");
    found[0]
}
