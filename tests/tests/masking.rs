//! Masking end to end: the real agent binary with a `[masking]` section, the real eBPF
//! redirect, PostgreSQL 15 on a test host with a table of personal data, and unmodified
//! workers (psql, CrewAI's NL2SQLTool). Governed workers see masked values; a process
//! outside the governed cgroup, connecting directly, sees the real ones.

use std::process::Command;

use pam_e2e::{Agent, Cgroup, ResourceSpec, TestHost, agent_bin, postgres::PgServer, require_root};

const PASSWORD: &str = "pg-mask-password";

const CONFIG: &str = r#"
[policy]
default = "deny"

[[policy.rules]]
name = "drivers-housekeeping"
action = "allow"
kinds = ["transaction", "session", "cursor"]

[[policy.rules]]
name = "crew-reads-customers"
action = "allow"
kinds = ["select", "copy_out"]
tables = ["public.customers", "pg_catalog.*", "information_schema.*"]

[masking]
hash_key = "8f1e2d3c4b5a69788796a5b4c3d2e1f0"

[[masking.rules]]
name = "crew-pii"
when = { resources = ["crm-db"] }

[[masking.rules.columns]]
columns = ["public.customers.email"]
strategy = { kind = "email" }

[[masking.rules.columns]]
columns = ["public.customers.ssn"]
strategy = { kind = "partial", keep_last = 4 }

[[masking.rules.content]]
detectors = ["email", "payment_card", "us_ssn", "iban"]
strategy = { kind = "redact", text = "[redacted]" }
"#;

struct Fixture {
    // Field order is drop order: the agent and database go before the test host.
    agent: Agent,
    cg: Cgroup,
    pg: PgServer,
    host: TestHost,
}

fn setup() -> Fixture {
    let host = TestHost::new().expect("test host");
    let pg = PgServer::start(&host, 5432, PASSWORD).expect("postgres");
    pg.admin_sql("postgres", "create database crm").unwrap();
    pg.admin_sql(
        "crm",
        "create table customers(id int primary key, name text, email text, ssn text,
                                card text, iban text);
         insert into customers values
           (1, 'Maria Garcia', 'maria.garcia@example.com', '123-45-6789',
            '4111 1111 1111 1111', 'GB82WEST12345698765432'),
           (2, 'Wei Chen', 'wei.chen@example.net', '078-05-1120',
            '5500 0055 5555 5559', 'DE89370400440532013000');",
    )
    .unwrap();
    let cg = Cgroup::new("mask").expect("cgroup");
    let agent = Agent::start_with(
        &[&cg],
        &[ResourceSpec::postgres("crm-db", host.v4, 5432)],
        CONFIG,
    )
    .expect("agent");
    Fixture {
        agent,
        cg,
        pg,
        host,
    }
}

/// A command run inside the governed cgroup, or directly (ungoverned) with `None`.
fn command(cg: Option<&Cgroup>, program: &str) -> Command {
    match cg {
        Some(cg) => {
            let mut c = Command::new(agent_bin());
            c.args(["exec", "--cgroup"])
                .arg(&cg.path)
                .args(["--", program]);
            c
        }
        None => Command::new(program),
    }
}

fn psql(cg: Option<&Cgroup>, host: &str, sql: &str) -> String {
    let out = command(cg, "psql")
        .args(["-h", host, "-U", "postgres", "-d", "crm", "-XAt", "-c", sql])
        .env("PGPASSWORD", PASSWORD)
        .env("PGCONNECT_TIMEOUT", "5")
        .output()
        .expect("psql");
    assert!(
        out.status.success(),
        "{sql}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

#[test]
fn governed_workers_see_masked_values_and_others_the_real_ones() {
    if !require_root("masking") {
        return;
    }
    let f = setup();
    let v4 = f.host.v4.to_string();
    let sql = "select name, email, ssn, card, iban from customers order by id";
    assert_eq!(
        psql(None, &v4, sql),
        "Maria Garcia|maria.garcia@example.com|123-45-6789|4111 1111 1111 1111|GB82WEST12345698765432\n\
         Wei Chen|wei.chen@example.net|078-05-1120|5500 0055 5555 5559|DE89370400440532013000\n"
    );
    assert_eq!(
        psql(Some(&f.cg), &v4, sql),
        "Maria Garcia|m***@example.com|*******6789|[redacted]|[redacted]\n\
         Wei Chen|w***@example.net|*******1120|[redacted]|[redacted]\n"
    );
    // Aliases and expressions, and COPY TO STDOUT.
    assert_eq!(
        psql(
            Some(&f.cg),
            &v4,
            "select email as contact, upper(email) from customers where id = 1"
        ),
        "m***@example.com|[redacted]\n"
    );
    assert_eq!(
        psql(Some(&f.cg), &v4, "copy customers (id, email) to stdout"),
        "1\tm***@example.com\n2\tw***@example.net\n"
    );

    // The audit names the columns and counts, and never a value.
    let masked = f.agent.records("masking_applied");
    assert!(masked.len() >= 3, "{masked:#?}");
    let first = &masked[0];
    assert_eq!(first["rows"], 2, "{first}");
    let columns = first["columns"].as_array().unwrap();
    let email = columns
        .iter()
        .find(|c| c["name"] == "public.customers.email")
        .unwrap_or_else(|| panic!("{first}"));
    assert_eq!(email["values"], 2);
    assert_eq!(email["method"], "email");
    assert_eq!(email["rule"], "crew-pii");
    let cards = columns
        .iter()
        .find(|c| c["name"] == "payment_card")
        .unwrap_or_else(|| panic!("{first}"));
    assert_eq!(cards["values"], 2);
    let journal = serde_json::to_string(&f.agent.journal()).unwrap();
    for secret in ["maria.garcia@", "123-45-6789", "4111 1111", "GB82WEST"] {
        assert!(!journal.contains(secret), "{secret} reached the journal");
    }
    let (ok, report) = f.agent.verify_journal();
    assert!(ok, "{report}");
}

#[test]
fn crewai_nl2sql_tool_gets_masked_rows() {
    if !require_root("masking") {
        return;
    }
    let f = setup();
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/clients/crewai_nl2sql.py");
    let uri = format!("postgresql://postgres:{PASSWORD}@{}:5432/crm", f.host.v4);
    let sql = "select name, email, ssn from customers order by id";
    let run = |cg: Option<&Cgroup>| {
        let out = command(cg, "python3")
            .args([script, &uri, sql])
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        serde_json::from_slice::<serde_json::Value>(&out.stdout).unwrap()
    };
    let direct = run(None);
    assert_eq!(direct[0]["email"], "maria.garcia@example.com", "{direct}");
    let governed = run(Some(&f.cg));
    assert_eq!(
        governed,
        serde_json::json!([
            {"name": "Maria Garcia", "email": "m***@example.com", "ssn": "*******6789"},
            {"name": "Wei Chen", "email": "w***@example.net", "ssn": "*******1120"}
        ])
    );
}

#[test]
fn memory_stays_flat_while_millions_of_masked_rows_stream() {
    if !require_root("masking") {
        return;
    }
    let f = setup();
    let v4 = f.host.v4.to_string();
    f.pg.admin_sql(
        "crm",
        "insert into customers
               select g, 'name ' || g, 'user' || g || '@example.com', '123-45-6789', '', ''
               from generate_series(3, 3000002) g",
    )
    .unwrap();
    // Warm up (journal, parser, caches), then measure the peak around a big result.
    psql(
        Some(&f.cg),
        &v4,
        "select email from customers where id < 10",
    );
    let (before, _) = f.agent.memory_kib().expect("agent memory");
    // About 3M rows and 150 MB of masked text; COPY so psql streams instead of buffering.
    let out = command(Some(&f.cg), "sh")
        .arg("-c")
        .arg(format!(
            "psql -h {v4} -U postgres -d crm -XAt -c 'copy customers (id, email, ssn) to stdout' | \
             awk '/user[0-9]|[0-9]{{3}}-[0-9]{{2}}-/ {{ leaked++ }} END {{ print NR, leaked + 0 }}'"
        ))
        .env("PGPASSWORD", PASSWORD)
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert_eq!(
        text.lines().collect::<Vec<_>>(),
        ["3000002 0"],
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let (_, peak) = f.agent.memory_kib().expect("agent memory");
    eprintln!("agent RSS before {before} KiB, peak {peak} KiB");
    let growth_mib = peak.saturating_sub(before) / 1024;
    assert!(
        growth_mib < 32,
        "agent memory grew by {growth_mib} MiB while streaming (from {before} KiB to a peak of {peak} KiB)"
    );
}
