//! Masking's fail-closed paths (issue 16), end to end through the real redirect: what
//! the agent cannot mask is refused or withheld, never sent in clear. A protocol-level
//! FunctionCall, `COPY ... ENCODING`, and a session whose column-name preload fails (its
//! role may not read the catalog); COPY of a table with generated columns is masked.

use pam_e2e::{Agent, masking::MaskFixture, oracle, require_root};

const PASSWORD: &str = "pg-failclosed-password";

/// Policy allows everything these tests do (function_call included), so every refusal
/// below is masking's.
const CONFIG: &str = r#"
[policy]
default = "deny"

[[policy.rules]]
name = "crew"
action = "allow"
kinds = ["select", "copy_out", "function_call", "transaction", "session", "cursor"]
# The large-object functions a FunctionCall names (lo_creat, ...) carry these.
permit_flags = ["volatile_function", "side_effect_function"]

[masking]

[[masking.rules]]
name = "crm-pii"
when = { resources = ["crm-db"] }

[[masking.rules.columns]]
columns = ["public.customers.ssn", "public.people.ssn"]
strategy = { kind = "partial", keep_last = 4 }
"#;

const SSN: &str = "123-45-6789";

fn setup(tag: &str) -> MaskFixture {
    let schema = format!(
        "create table customers(id int primary key, ssn text);
         insert into customers values (1, '{SSN}');
         create table people(id int, ssn text,
                             ssn_upper text generated always as (upper(ssn)) stored);
         insert into people(id, ssn) values (1, '{SSN}');
         create role analyst login password '{PASSWORD}';
         grant select on customers, people to analyst;"
    );
    MaskFixture::start(tag, PASSWORD, &schema, CONFIG)
}

/// psql in the governed cgroup as `user`, running `script`: (ok, stdout, stderr).
fn governed_psql(f: &MaskFixture, user: &str, script: &str) -> (bool, String, String) {
    f.psql(true, user, script)
}

/// Decisions on record: (text, decision, rule).
fn decisions(agent: &Agent) -> Vec<(String, String, String)> {
    agent
        .settled()
        .iter()
        .filter(|r| r["kind"] == "statement")
        .map(|r| {
            (
                r["text"].as_str().unwrap_or("").to_owned(),
                r["decision"].as_str().unwrap_or("").to_owned(),
                r["rule"].as_str().unwrap_or("").to_owned(),
            )
        })
        .collect()
}

#[test]
fn a_function_call_message_on_a_masked_session_is_refused() {
    if !require_root("masking_fail_closed") {
        return;
    }
    let f = setup("fc");
    // psql's \lo_import sends libpq fast-path FunctionCall messages (lo_creat, ...).
    let (_, stdout, stderr) = governed_psql(
        &f,
        "postgres",
        "\\lo_import '/etc/hostname'\nSELECT 'alive';\n",
    );
    assert!(
        stderr.contains("ERROR:  42501: pam-agent refused")
            && stderr.contains("a FunctionCall result cannot be masked"),
        "{stderr}"
    );
    assert!(stdout.contains("alive"), "the session goes on: {stdout}");
    // Nothing reached the server: no large object was created.
    assert_eq!(
        f.pg.admin_sql("crm", "select count(*) from pg_largeobject_metadata")
            .unwrap()
            .trim(),
        "0"
    );
    let d = decisions(&f.agent);
    assert!(
        d.iter()
            .any(|(t, dec, rule)| t.starts_with("<FunctionCall oid")
                && dec == "deny"
                && rule == "masking"),
        "{d:?}"
    );
}

#[test]
fn copy_with_an_encoding_is_refused_and_of_generated_columns_masked() {
    if !require_root("masking_fail_closed") {
        return;
    }
    let f = setup("copyenc");
    let sql = "COPY customers TO STDOUT (ENCODING 'LATIN1')";
    let (_, stdout, stderr) = governed_psql(&f, "postgres", &format!("{sql};\n"));
    assert!(stdout.is_empty(), "{sql}: {stdout}");
    assert!(
        stderr.contains(
            "ERROR:  42501: pam-agent refused the statement (rule \"masking\"): \
             COPY option `encoding` cannot be used on a masked connection"
        ),
        "{sql}: {stderr}"
    );
    // COPY leaves generated columns out of its rows while the description of `SELECT *`
    // has them: the agent plans the stored columns only (the preload lists generated
    // ones), so the masked column lines up and is masked.
    let (ok, stdout, stderr) = governed_psql(&f, "postgres", "COPY people TO STDOUT;\n");
    assert!(ok, "{stderr}");
    assert_eq!(stdout, "1\t*******6789\n");
    // Text COPY of the masked table itself is served, masked.
    let (ok, stdout, stderr) = governed_psql(&f, "postgres", "COPY customers TO STDOUT;\n");
    assert!(ok, "{stderr}");
    assert_eq!(stdout, "1\t*******6789\n");
}

#[test]
fn a_failed_catalog_preload_withholds_columns_instead_of_leaking_them() {
    if !require_root("masking_fail_closed") {
        return;
    }
    let f = setup("preload");
    // The preload reads pg_attribute; the analyst role may not.
    f.pg.admin_sql(
        "crm",
        "revoke select on pg_catalog.pg_attribute from public",
    )
    .unwrap();
    let (_, stdout, stderr) = governed_psql(
        &f,
        "analyst",
        "SELECT ssn FROM customers;\nSELECT ssn_upper FROM people;\n",
    );
    // Both values withheld (NULL), not sent: neither the masked column nor the one
    // generated from it, which no rule names.
    assert_eq!(stdout, "\n\n", "{stderr}");
    assert_eq!(oracle::leak(&[stdout, stderr.clone()], &[SSN]), None);
    // On record: the masking component's error, in the session that ran the statements.
    let all = f.agent.settled();
    let sessions: Vec<&serde_json::Value> = all
        .iter()
        .filter(|r| r["kind"] == "statement" && r["text"] == "SELECT ssn FROM customers")
        .map(|r| &r["session"])
        .collect();
    assert_eq!(sessions.len(), 1, "{all:#?}");
    let errors: Vec<&serde_json::Value> = all
        .iter()
        .filter(|r| r["kind"] == "error" && r["component"] == "masking")
        .collect();
    assert!(
        !errors.is_empty()
            && errors.iter().all(|r| r["session"] == *sessions[0]
                && r["message"]
                    .as_str()
                    .is_some_and(|m| m.starts_with("the column-name preload failed"))),
        "the failed preload is on record: {errors:#?}\n{all:#?}\n{stderr}"
    );
}
