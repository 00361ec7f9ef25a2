//! Derivations the database defines (issue 13): views and generated columns that already
//! exist, read through the real redirect with psql (text) and psycopg 3 (binary). A view
//! or generated column that is exactly a masked column is masked like it (a rename, a view
//! over that view, a generated copy); one computed from it is withheld (NULL) and the
//! journal says which and why. The oracle (`pam_e2e::oracle`, not the agent's code)
//! searches everything each client received, rows and messages, for the protected values:
//! raw, reversed, spaced out, digits only, hex, base64; the same forms run by an
//! ungoverned process show each does give the values away there.

use pam_e2e::{
    masking::{MaskFixture, received as cells_of},
    oracle, require_root,
};
use serde_json::{Value, json};

const PASSWORD: &str = "pg-views-password";

const CONFIG: &str = r#"
[policy]
default = "deny"

[[policy.rules]]
name = "crew"
action = "allow"
kinds = ["select", "copy_out", "transaction", "session", "cursor"]

[masking]

[[masking.rules]]
name = "crm-pii"
when = { resources = ["crm-db"] }

[[masking.rules.columns]]
columns = ["public.customers.email"]
strategy = { kind = "email" }

[[masking.rules.columns]]
columns = ["public.customers.ssn", "public.people.ssn"]
strategy = { kind = "partial", keep_last = 4 }
"#;

const SSN: &str = "123-45-6789";
const EMAIL: &str = "maria.garcia@example.com";
const SECRETS: [&str; 2] = [SSN, EMAIL];

/// The database's own derivations: each view or generated column here is defined by the
/// DBA, not by the governed worker (whose CREATE VIEW over a masked column is refused).
const SCHEMA: &str = "
create table customers(id int primary key, email text, ssn text);
insert into customers values (1, 'maria.garcia@example.com', '123-45-6789');
create view renamed as select id, email as contact, ssn as tax_id from customers;
create view renamed_again as select contact as c, tax_id as t from renamed;
create view computed as select id, reverse(ssn) as r,
  encode(convert_to(ssn, 'UTF8'), 'base64') as b, upper(email) as e from customers;
create view computed_again as select r as r2, b || '' as b2 from computed;
create view mixed as select c.id, c.ssn as plain, length(c.ssn) || c.ssn as glued
  from customers c join renamed r on r.id = c.id;
create materialized view frozen as select id, translate(ssn, '-', ' ') as spaced from customers;
create table people(id int, ssn text,
  ssn_copy text generated always as (ssn) stored,
  ssn_rev text generated always as (reverse(ssn)) stored,
  ssn_digits text generated always as (replace(ssn, '-', '')) stored);
insert into people(id, ssn) values (1, '123-45-6789');
create view people_v as select id, ssn_copy as copied, ssn_rev as rev from people;
create role analyst login password 'pg-views-password';
grant select on all tables in schema public to analyst;
";

/// (name, query) forms, each revealing a protected value to an ungoverned reader.
const FORMS: &[(&str, &str)] = &[
    (
        "view renaming columns",
        "SELECT contact, tax_id FROM renamed",
    ),
    (
        "view over a renaming view",
        "SELECT c, t FROM renamed_again",
    ),
    ("view computing", "SELECT r, b, e FROM computed"),
    (
        "view over a computing view",
        "SELECT r2, b2 FROM computed_again",
    ),
    (
        "view with a join, plain and glued",
        "SELECT plain, glued FROM mixed",
    ),
    ("materialized view", "SELECT spaced FROM frozen"),
    (
        "generated columns",
        "SELECT ssn_copy, ssn_rev, ssn_digits FROM people",
    ),
    (
        "every column of a table with generated ones",
        "SELECT * FROM people",
    ),
    (
        "view over generated columns",
        "SELECT copied, rev FROM people_v",
    ),
    ("star of a computing view", "SELECT * FROM computed"),
];

fn setup(tag: &str) -> MaskFixture {
    MaskFixture::start(tag, PASSWORD, SCHEMA, CONFIG)
}

/// psql as the analyst (text results), governed or not, running `script`.
fn psql(f: &MaskFixture, governed: bool, script: &str) -> (bool, String, String) {
    f.psql(governed, "analyst", script)
}

/// psycopg 3 with binary results, governed or not: per form, what it received.
fn psycopg_binary(f: &MaskFixture, governed: bool) -> Value {
    let corpus: Value = FORMS
        .iter()
        .map(|(name, sql)| json!({"name": name, "steps": [sql], "copy": null}))
        .collect();
    f.python(
        governed,
        "psycopg-binary",
        &f.dsn("analyst", PASSWORD),
        &corpus,
    )
}

fn leak(cells: &[String]) -> Option<(String, &'static str)> {
    oracle::leak(cells, &SECRETS)
}

#[test]
fn views_and_generated_columns_reveal_nothing_in_text_or_binary() {
    if !require_root("masking_views") {
        return;
    }
    let f = setup("views");
    let script: String = FORMS.iter().map(|(_, q)| format!("{q};\n")).collect();

    // Ungoverned, every form gives a protected value away (the oracle can fail).
    let direct = psycopg_binary(&f, false);
    for (name, _) in FORMS {
        assert!(
            leak(&cells_of(&direct[name])).is_some(),
            "{name} reveals nothing even directly: {}",
            direct[name]
        );
    }
    let (ok, out, err) = psql(&f, false, &script);
    assert!(ok && out.contains(SSN), "{err}");

    // Governed: psql, text results.
    let (ok, out, err) = psql(&f, true, &script);
    assert!(ok, "{err}");
    let lines: Vec<String> = out.lines().map(str::to_owned).collect();
    // Rows and messages alike.
    assert_eq!(
        leak(&[out.clone(), err.clone()]),
        None,
        "psql received: {out}{err}"
    );
    // Exactly-a-masked-column forms are masked like the column; computed ones are NULL.
    let expected = [
        "m***@example.com|*******6789", // renamed
        "m***@example.com|*******6789", // renamed_again
        "||",                           // computed: reverse, base64, upper(email)
        "|",                            // computed_again
        "*******6789|",                 // mixed: plain masked, glued withheld
        "",                             // frozen: spaced withheld
        "*******6789||",                // generated: copy masked, computed withheld
        "1|*******6789|*******6789||",  // SELECT * FROM people
        "*******6789|",                 // people_v
        "1|||",                         // SELECT * FROM computed
    ];
    assert_eq!(lines, expected, "{err}");

    // Governed: psycopg 3, binary results.
    let got = psycopg_binary(&f, true);
    for (name, _) in FORMS {
        let cells = cells_of(&got[name]);
        assert!(got[name]["error"].is_null(), "{name}: {}", got[name]);
        assert_eq!(leak(&cells), None, "{name} leaked over binary: {cells:?}");
    }
    assert_eq!(
        cells_of(&got["view renaming columns"]),
        ["m***@example.com", "*******6789"]
    );
    assert_eq!(cells_of(&got["generated columns"]), ["*******6789"]);

    // The journal says which column was withheld and what it is computed from.
    let all = f.agent.settled();
    let derived: Vec<Value> = all
        .iter()
        .filter(|r| r["kind"] == "masking_applied")
        .flat_map(|r| r["columns"].as_array().cloned().unwrap_or_default())
        .filter(|c| c["by"] == "derived")
        .collect();
    assert!(
        derived.iter().any(|c| c["name"]
            == "public.computed.r (computed from public.customers.ssn)"
            && c["rule"] == "crm-pii"
            && c["pattern"] == "public.customers.ssn"),
        "{derived:?}"
    );
    assert!(
        derived
            .iter()
            .any(|c| c["name"] == "public.people.ssn_rev (computed from public.people.ssn)"),
        "{derived:?}"
    );
}

#[test]
fn copy_of_a_table_with_generated_columns_is_masked() {
    if !require_root("masking_views") {
        return;
    }
    let f = setup("viewcopy");
    // COPY of the table sends its stored columns only; COPY of a query sends what it
    // selects, generated columns included.
    let script = "COPY people TO STDOUT;\nCOPY (SELECT * FROM people) TO STDOUT;\n\
                  COPY computed TO STDOUT;\nCOPY (SELECT r, b FROM computed) TO STDOUT;\n";
    let (ok, out, err) = psql(&f, false, script);
    assert!(ok && out.contains(SSN), "{err}");
    let (ok, out, err) = psql(&f, true, script);
    assert!(ok, "{err}");
    assert_eq!(
        out,
        "1\t*******6789\n\
         1\t*******6789\t*******6789\t\\N\t\\N\n\
         \\N\t\\N\n",
        "{err}"
    );
    assert_eq!(leak(&[out.clone(), err.clone()]), None, "{out}{err}");
    // COPY of a view is refused by PostgreSQL itself (only tables can be copied); the
    // query over it is withheld like any result.
    assert!(err.contains("cannot copy from view"), "{err}");
}
