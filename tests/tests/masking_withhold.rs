//! `on_derived = "withhold"` (issue 13): a rule that withholds rather than refuses lets a
//! statement computing from a masked column run, and sends each computed value as NULL,
//! in its place, next to the columns as themselves (masked) and the other values (in
//! clear). Tried through the real redirect with psql (text), psycopg 3 (text and binary)
//! and asyncpg (binary); the oracle (`pam_e2e::oracle`) searches everything each client
//! received for the protected values, and the same forms run by an ungoverned process
//! show each does give them away there. What the analysis cannot place in the result
//! (a clause, a `*` over computed values, COPY, a cursor) is still refused; the journal
//! flags the statements `derived_withheld` and names each withheld value.

use pam_e2e::{
    masking::{MaskFixture, masking_record, received as cells_of},
    oracle, require_root,
};
use serde_json::{Value, json};

const PASSWORD: &str = "pg-withhold-password";

const CONFIG: &str = r#"
[policy]
default = "deny"

[[policy.rules]]
name = "crew"
action = "allow"
kinds = ["select", "update", "copy_out", "transaction", "session", "cursor"]

[masking]

[[masking.rules]]
name = "crm-pii"
on_derived = "withhold"
when = { resources = ["crm-db"] }

[[masking.rules.columns]]
columns = ["public.customers.email"]
strategy = { kind = "email" }

[[masking.rules.columns]]
columns = ["public.customers.ssn"]
strategy = { kind = "partial", keep_last = 4 }
"#;

const SSN: &str = "123-45-6789";
const EMAIL: &str = "maria.garcia@example.com";
const SECRETS: [&str; 2] = [SSN, EMAIL];

const SCHEMA: &str = "
create table customers(id int primary key, email text, ssn text);
insert into customers values (1, 'maria.garcia@example.com', '123-45-6789');
create role analyst login password 'pg-withhold-password';
grant select, update on customers to analyst;
";

/// (name, steps, what psql prints: one line per row, `|` between values, NULL empty).
/// Every form reveals a protected value to an ungoverned reader.
const SERVED: &[(&str, &[&str], &str)] = &[
    (
        "reverse between plain columns",
        &["SELECT id, reverse(ssn) AS r, ssn FROM customers"],
        "1||*******6789",
    ),
    (
        "base64 and upper before a masked column",
        &["SELECT encode(convert_to(ssn, 'UTF8'), 'base64'), upper(email), email FROM customers"],
        "||m***@example.com",
    ),
    (
        "after a star, counted from the end",
        &["SELECT *, ssn::bytea, id + 1 FROM customers"],
        "1|m***@example.com|*******6789||2",
    ),
    (
        "aggregate into an array",
        &["SELECT count(ssn), array_agg(ssn) FROM customers"],
        "1|",
    ),
    ("whole row", &["SELECT c FROM customers c"], ""),
    (
        "row constructor and json",
        &["SELECT row(id, ssn), to_json(c), id FROM customers c"],
        "||1",
    ),
    // The whole column, every row of it: which rows came from the masked column is not
    // known before they arrive.
    (
        "union",
        &["SELECT ssn || '' AS v FROM customers UNION ALL SELECT 'x'"],
        "\n",
    ),
    (
        "scalar sub-select",
        &["SELECT (SELECT translate(ssn, '-', ' ') FROM customers LIMIT 1), 7"],
        "|7",
    ),
    (
        "RETURNING",
        &["UPDATE customers SET id = id WHERE id = 1 RETURNING id, replace(ssn, '-', '')"],
        "1|",
    ),
    (
        "PREPARE and EXECUTE",
        &[
            "PREPARE p AS SELECT id, split_part(ssn, '-', 1) || split_part(ssn, '-', 2) \
             || split_part(ssn, '-', 3) FROM customers",
            "EXECUTE p",
        ],
        "1|",
    ),
];

/// Values the analysis cannot place in the result: refused as without the option.
const REFUSED: &[(&str, &str)] = &[
    (
        "cast in WHERE",
        "SELECT id FROM customers WHERE ssn::int = 0",
    ),
    (
        "star over computed values",
        "SELECT * FROM (SELECT reverse(ssn) FROM customers) s",
    ),
    (
        "cursor",
        "DECLARE k CURSOR FOR SELECT reverse(ssn) FROM customers",
    ),
];

fn setup(tag: &str) -> MaskFixture {
    MaskFixture::start(tag, PASSWORD, SCHEMA, CONFIG)
}

/// psql as the analyst (text results) running `script` in one session.
fn psql(f: &MaskFixture, governed: bool, script: &str) -> (bool, String, String) {
    f.psql(governed, "analyst", script)
}

/// One Python client (`psycopg-text`, `psycopg-binary`, `asyncpg`) running every form,
/// each in its own transaction: per form, what it received.
fn python(f: &MaskFixture, governed: bool, client: &str) -> Value {
    let corpus: Value = SERVED
        .iter()
        .map(|(name, steps, _)| json!({"name": name, "steps": steps, "copy": null}))
        .chain(
            REFUSED
                .iter()
                .map(|(name, sql)| json!({"name": name, "steps": [sql], "copy": null})),
        )
        .chain(std::iter::once(json!({
            "name": "COPY of a computed value",
            "steps": [],
            "copy": "SELECT reverse(ssn) FROM customers",
        })))
        .collect();
    let dsn = if client == "asyncpg" {
        f.uri("analyst", PASSWORD)
    } else {
        f.dsn("analyst", PASSWORD)
    };
    f.python(governed, client, &dsn, &corpus)
}

/// The psql script: every served form, then every refused one (psql goes on after an
/// error), the UPDATE rolled back.
fn script(forms: impl Iterator<Item = String>) -> String {
    let mut s = String::from("BEGIN;\n");
    for q in forms {
        s.push_str(&q);
        s.push_str(";\n");
    }
    s.push_str("ROLLBACK;\n");
    s
}

#[test]
fn computed_values_are_withheld_in_place_in_text_and_binary() {
    if !require_root("masking_withhold") {
        return;
    }
    let f = setup("withhold");

    // Ungoverned, every form gives a protected value away (the oracle can fail).
    let direct = python(&f, false, "psycopg-binary");
    for (name, _, _) in SERVED {
        assert!(
            oracle::leak(&cells_of(&direct[name]), &SECRETS).is_some(),
            "{name} reveals nothing even directly: {}",
            direct[name]
        );
    }

    // Governed psql, text: each computed value NULL in its place, the rest as usual.
    for (name, steps, expected) in SERVED {
        let (ok, out, err) = psql(&f, true, &script(steps.iter().map(|s| s.to_string())));
        assert!(ok, "{name}: {err}");
        assert_eq!(
            oracle::leak(&[out.clone(), err.clone()], &SECRETS),
            None,
            "{name}"
        );
        // Lines of the form's last step (PREPARE and BEGIN print nothing but tags).
        let rows: Vec<&str> = out
            .lines()
            .filter(|l| !matches!(*l, "BEGIN" | "ROLLBACK" | "PREPARE") && !l.starts_with("UPDATE"))
            .collect();
        assert_eq!(rows.join("\n"), *expected, "{name}: {out}");
    }
    for (name, sql) in REFUSED {
        let (_, out, err) = psql(&f, true, &format!("{sql};\n"));
        assert!(
            err.contains("ERROR:  42501: pam-agent refused") && err.contains("crm-pii"),
            "{name} was not refused by the agent: {out} {err}"
        );
        assert_eq!(oracle::leak(&[out, err], &SECRETS), None, "{name}");
    }

    // Governed Python clients: text and binary results.
    for client in ["psycopg-text", "psycopg-binary", "asyncpg"] {
        let got = python(&f, true, client);
        for (name, _, _) in SERVED {
            let cells = cells_of(&got[name]);
            assert!(
                got[name]["error"].is_null(),
                "{client} {name}: {}",
                got[name]
            );
            assert_eq!(
                oracle::leak(&cells, &SECRETS),
                None,
                "{client} {name} leaked: {cells:?}"
            );
        }
        // Exactly the served values, the computed ones absent (NULL).
        let plain = |name: &str| -> Vec<String> {
            serde_json::from_value(got[name]["values"].clone()).unwrap()
        };
        assert_eq!(
            plain("reverse between plain columns"),
            ["1", "*******6789"],
            "{client}"
        );
        assert_eq!(
            plain("after a star, counted from the end"),
            ["1", "m***@example.com", "*******6789", "2"],
            "{client}"
        );
        assert_eq!(plain("PREPARE and EXECUTE"), ["1"], "{client}");
        for name in REFUSED
            .iter()
            .map(|(n, _)| *n)
            .chain(["COPY of a computed value"])
        {
            // The agent's refusal, not the server's own error.
            assert_eq!(
                got[name]["sqlstate"], "42501",
                "{client} {name}: {}",
                got[name]
            );
            let msg = got[name]["error"].as_str().unwrap_or("");
            assert!(
                msg.starts_with("pam-agent refused") && msg.contains("crm-pii"),
                "{client} {name}: {msg}"
            );
            assert_eq!(oracle::leak(&cells_of(&got[name]), &SECRETS), None);
        }
    }

    // The journal: the statement run by psql and each driver allowed and flagged, and
    // the masking record of that very statement naming the withheld value, its source
    // and the one row it was withheld from.
    let all = f.agent.settled();
    let flagged = |r: &Value, flag: &str| {
        r["flags"]
            .as_array()
            .is_some_and(|fl| fl.iter().any(|x| x == flag))
    };
    let sql = SERVED[0].1[0];
    let runs: Vec<&Value> = all
        .iter()
        .filter(|r| r["kind"] == "statement" && r["text"] == sql)
        .collect();
    assert_eq!(runs.len(), 4, "psql and three drivers ran {sql}: {runs:#?}");
    for st in runs {
        assert!(
            st["decision"] == "allow" && flagged(st, "derived_withheld"),
            "{st}"
        );
        let derived: Vec<&Value> = masking_record(&all, st)["columns"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|c| c["by"] == "derived")
            .collect();
        assert_eq!(derived.len(), 1, "{derived:#?}");
        let c = derived[0];
        assert_eq!(
            (&c["name"], &c["rule"], &c["pattern"], &c["nulled"]),
            (
                &json!("reverse(ssn) (computed from customers.ssn)"),
                &json!("crm-pii"),
                &json!("public.customers.ssn"),
                &json!(1)
            ),
            "{c}"
        );
    }
    // Each refused form refused by this rule, flagged, once per client that ran it.
    for (name, sql) in REFUSED {
        let denied: Vec<&Value> = all
            .iter()
            .filter(|r| r["kind"] == "statement" && r["text"] == *sql)
            .collect();
        assert_eq!(denied.len(), 4, "{name}: {denied:#?}");
        for r in denied {
            assert!(
                r["decision"] == "deny"
                    && r["rule"] == "crm-pii"
                    && flagged(r, "derived_from_masked"),
                "{name}: {r}"
            );
        }
    }
}
