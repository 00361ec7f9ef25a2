//! Masking inside real postgres sessions: a real PostgreSQL 15 with a table of personal
//! data, real clients (psql, asyncpg, psycopg 3) through `postgres::serve`, and the
//! values they receive. (tests/tests/masking.rs runs the same through the eBPF redirect.)

mod postgres_support;

use pam_agent::journal::Event;
use postgres_support::*;
use serde_json::{Value, json};

const POLICY: &str = r#"
[[rules]]
name = "crew-all"
action = "allow"
users = ["crew"]
kinds = ["select", "insert", "update", "delete", "transaction", "copy_out", "session", "cursor", "ddl"]
"#;

const MASKING: &str = r#"
hash_key = "00112233445566778899aabbccddeeff"

[[rules]]
name = "crew-pii"
refuse_side_channels = true

[[rules.columns]]
columns = ["public.*.email"]
strategy = { kind = "email" }

[[rules.columns]]
columns = ["public.customers.ssn"]
strategy = { kind = "partial", keep_last = 4 }

[[rules.columns]]
columns = ["public.customers.card", "public.customers.uuid_col"]
strategy = { kind = "keyed_hash", length = 16 }

[[rules.columns]]
columns = ["public.customers.iban"]
strategy = { kind = "null" }

[[rules.content]]
detectors = ["email", "phone", "payment_card", "us_ssn", "iban"]
patterns = [{ name = "employee-id", regex = "EMP-[0-9]{6}" }]
strategy = { kind = "redact", text = "[redacted]" }
"#;

const SEED: &str = r#"
CREATE TABLE customers (
    id int PRIMARY KEY, name text, email text, phone text, ssn text, card text,
    iban text, note jsonb, uuid_col uuid, balance numeric);
INSERT INTO customers VALUES
 (1, 'Maria Garcia', 'maria.garcia@example.com', '+1 415 555 0100', '123-45-6789',
  '4111 1111 1111 1111', 'GB82WEST12345698765432', '{"contact": "maria@home.example.org"}',
  'a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11', 120.50),
 (2, 'Wei Chen', 'wei.chen@example.net', '(212) 555-0199', '078-05-1120',
  '5500 0055 5555 5559', 'DE89370400440532013000', '{"contact": "none"}',
  'b1eebc99-9c0b-4ef8-bb6d-6bb9bd380a22', 99.00),
 (3, 'Amara Okafor', 'amara@example.org', '+44 20 7946 0958', '219-09-9999',
  '3782 822463 10005', 'FR1420041010050500013M02606', '{"ref": "EMP-123456"}',
  'c2eebc99-9c0b-4ef8-bb6d-6bb9bd380a33', 0);
CREATE VIEW customer_contacts AS SELECT id, name, email FROM customers;
"#;

fn server() -> PgServer {
    let pg = PgServer::start();
    pg.direct(SEED);
    pg
}

fn masked_proxy(pg: &PgServer) -> Proxy {
    Proxy::with(pg, Options::masked(POLICY, MASKING))
}

fn lines(run: &PsqlRun) -> Vec<String> {
    assert!(run.ok, "psql failed:\n{}\n{}", run.stdout, run.stderr);
    run.stdout.lines().map(str::to_owned).collect()
}

/// One masked column or detector of a `masking_applied` record: (name, method, values, nulled).
type Masked = (String, String, u64, u64);

/// Every `masking_applied` record: (statement, its entries).
fn masking_records(proxy: &Proxy) -> Vec<(Option<u64>, Vec<Masked>)> {
    proxy
        .settled_records()
        .into_iter()
        .filter_map(|r| match r.event {
            Event::MaskingApplied {
                statement, columns, ..
            } => Some((
                statement,
                columns
                    .into_iter()
                    .map(|c| (c.name, c.method, c.values, c.nulled))
                    .collect(),
            )),
            _ => None,
        })
        .collect()
}

#[test]
fn psql_sees_masked_values_by_column_and_content() {
    let pg = server();
    let proxy = masked_proxy(&pg);

    // Column rules by name, through aliases, `SELECT *`, a view, a join and a subquery.
    let out = lines(&proxy.psql("SELECT id, name, email, ssn FROM customers ORDER BY id"));
    assert_eq!(
        out,
        [
            "1|Maria Garcia|m***@example.com|*******6789",
            "2|Wei Chen|w***@example.net|*******1120",
            "3|Amara Okafor|a***@example.org|*******9999",
        ]
    );
    assert_eq!(
        lines(&proxy.psql("SELECT email AS e FROM customers WHERE id = 1")),
        ["m***@example.com"]
    );
    let star = lines(&proxy.psql("SELECT * FROM customers WHERE id = 2"));
    assert!(!star[0].contains("wei.chen@"), "{star:?}");
    assert!(!star[0].contains("5500 0055"), "{star:?}");
    assert!(!star[0].contains("DE89370400440532013000"), "{star:?}");
    assert!(
        star[0].contains("|Wei Chen|w***@example.net|[redacted]|*******1120|"),
        "{star:?}"
    );
    assert_eq!(
        lines(&proxy.psql("SELECT email FROM customer_contacts WHERE id = 3")),
        ["a***@example.org"]
    );
    assert_eq!(
        lines(&proxy.psql(
            "SELECT c.email FROM customers c JOIN (SELECT id FROM customers WHERE id = 2) s USING (id)"
        )),
        ["w***@example.net"]
    );
    // Keyed hashes: equal values stay equal across queries, so joins still work.
    let h1 = lines(&proxy.psql("SELECT card FROM customers WHERE id = 1"));
    let h2 = lines(&proxy.psql("SELECT card FROM customers WHERE id IN (1, 2) ORDER BY id"));
    assert_eq!(h1[0].len(), 16, "{h1:?}");
    assert_eq!(h2[0], h1[0]);
    assert_ne!(h2[1], h1[0]);
    // Content detectors catch what no column rule names: expressions, JSON, phones.
    assert_eq!(
        lines(&proxy.psql("SELECT lower(phone) || '' FROM customers WHERE id = 1")),
        ["[redacted]"]
    );
    // A value computed from a column a rule masks is refused before it runs (issue 13).
    let derived = proxy.psql("SELECT lower(email) || '' FROM customers WHERE id = 1");
    assert!(
        !derived.ok
            && derived.stderr.contains("ERROR:  42501: pam-agent refused")
            && derived.stderr.contains("customers.email")
            && derived.stderr.contains("lower(email) || ?"),
        "{derived:?}"
    );
    assert_eq!(
        lines(&proxy.psql("SELECT note->>'contact', note FROM customers WHERE id = 1")),
        ["[redacted]|{\"contact\": \"[redacted]\"}"]
    );
    assert_eq!(
        lines(&proxy.psql("SELECT phone FROM customers ORDER BY id")),
        ["[redacted]", "[redacted]", "[redacted]"]
    );
    // The null strategy, and a custom pattern.
    assert_eq!(
        lines(&proxy.psql("SELECT id, count(iban) OVER (), iban FROM customers WHERE id = 1")),
        ["1|1|"]
    );
    assert_eq!(
        lines(&proxy.psql("SELECT note FROM customers WHERE id = 3")),
        ["{\"ref\": \"[redacted]\"}"]
    );
    // Values that are not sensitive are untouched, and so is a non-masked type.
    assert_eq!(
        lines(&proxy.psql("SELECT name, balance FROM customers WHERE id = 1")),
        ["Maria Garcia|120.50"]
    );
    // RETURNING.
    assert_eq!(
        lines(&proxy.psql("UPDATE customers SET name = name WHERE id = 2 RETURNING email, ssn")),
        ["w***@example.net|*******1120", "UPDATE 1"]
    );

    // Audit: which columns and detectors masked how many values, never the values.
    let records = masking_records(&proxy);
    let first = &records[0].1;
    assert!(
        first.contains(&("public.customers.email".into(), "email".into(), 3, 0)),
        "{records:?}"
    );
    assert!(
        first.contains(&("public.customers.ssn".into(), "partial".into(), 3, 0)),
        "{records:?}"
    );
    let journal = std::fs::read_to_string(&proxy.journal_path).unwrap();
    let masking_lines: Vec<&str> = journal
        .lines()
        .filter(|l| l.contains("masking_applied"))
        .collect();
    // One masking record per statement that masked something, matched by session and
    // statement number: every query above but the one reading only name and balance.
    let all = proxy.settled_records();
    let statement_of = |session, n| {
        all.iter()
            .find_map(|r| match &r.event {
                Event::Statement {
                    statement: Some(m),
                    text,
                    ..
                } if r.session == session && *m == n => text.clone(),
                _ => None,
            })
            .unwrap_or_else(|| panic!("no statement {n} in session {session:?}"))
    };
    let mut masked_statements: Vec<String> = all
        .iter()
        .filter_map(|r| match &r.event {
            Event::MaskingApplied {
                statement: Some(n), ..
            } => Some(statement_of(r.session, *n)),
            _ => None,
        })
        .collect();
    masked_statements.sort();
    let mut queried: Vec<String> = all
        .iter()
        .filter_map(|r| match &r.event {
            Event::Statement { text: Some(t), .. } => Some(t.clone()),
            _ => None,
        })
        .filter(|t| t != "SELECT name, balance FROM customers WHERE id = 1")
        .filter(|t| t != "SELECT lower(email) || '' FROM customers WHERE id = 1")
        .collect();
    queried.sort();
    // The refused derivation is on record as such.
    assert!(
        all.iter().any(|r| matches!(&r.event, Event::Statement { text: Some(t), flags, .. }
            if t.starts_with("SELECT lower(email)") && flags.iter().any(|f| f == "derived_from_masked"))),
        "no derived_from_masked record"
    );
    assert_eq!(masked_statements.len(), 13);
    assert_eq!(masked_statements, queried);
    assert_eq!(masking_lines.len(), 13, "{masking_lines:?}");
    for l in masking_lines {
        // What the record says (its time and ids could contain any digits).
        let record: Value = serde_json::from_str(l).unwrap();
        let said = record["columns"].to_string();
        for secret in ["maria", "wei.chen", "123-45-6789", "4111", "GB82", "555"] {
            assert!(!said.contains(secret), "a value reached the journal: {l}");
        }
    }
}

#[test]
fn copy_to_stdout_is_masked_and_unmaskable_forms_are_refused() {
    let pg = server();
    let proxy = masked_proxy(&pg);
    assert_eq!(
        lines(&proxy.psql("COPY customers (id, email, ssn) TO STDOUT")),
        [
            "1\tm***@example.com\t*******6789",
            "2\tw***@example.net\t*******1120",
            "3\ta***@example.org\t*******9999",
        ]
    );
    assert_eq!(
        lines(&proxy.psql(
            "COPY (SELECT email, phone FROM customers WHERE id = 1) TO STDOUT WITH (DELIMITER '|')"
        )),
        ["m***@example.com|[redacted]"]
    );
    let whole = lines(&proxy.psql("COPY customers TO STDOUT"));
    assert_eq!(whole.len(), 3);
    assert!(
        !whole.iter().any(|l| l.contains("maria.garcia@")),
        "{whole:?}"
    );
    for sql in [
        "COPY customers TO STDOUT (FORMAT csv)",
        "COPY customers TO STDOUT (FORMAT binary)",
    ] {
        let run = proxy.psql(sql);
        assert!(!run.ok, "{sql}: {run:?}");
        assert!(
            run.stderr.contains("ERROR:  42501: pam-agent refused")
                && run.stderr.contains("cannot be masked"),
            "{sql}: {}",
            run.stderr
        );
    }
    // The session goes on after a refusal.
    assert_eq!(
        lines(&proxy.psql_script(
            "COPY customers TO STDOUT CSV;\nSELECT email FROM customers WHERE id = 1;\n"
        ))
        .last()
        .unwrap(),
        "m***@example.com"
    );
}

#[test]
fn columns_created_in_the_session_are_masked_after_ddl() {
    let pg = server();
    let proxy = masked_proxy(&pg);
    // The new table's email column is named by `public.*.email` only after the agent
    // reloads column names; until then its columns are withheld, never shown.
    let run = proxy.psql_script(
        "CREATE TABLE contacts_copy (id int, email text);\n\
         INSERT INTO contacts_copy VALUES (1, 'maria.garcia@example.com'), \
           (2, 'wei.chen@example.net'), (3, 'amara@example.org');\n\
         SELECT id, email FROM contacts_copy ORDER BY id;\n\
         BEGIN;\n\
         ALTER TABLE contacts_copy RENAME COLUMN email TO mail;\n\
         ALTER TABLE contacts_copy ADD COLUMN email text DEFAULT 'x@example.com';\n\
         SELECT id, mail, email FROM contacts_copy ORDER BY id;\n\
         ROLLBACK;\n\
         SELECT id, email FROM contacts_copy ORDER BY id;\n",
    );
    assert!(run.stderr.is_empty(), "{}", run.stderr);
    let out = lines(&run);
    assert_eq!(
        out,
        [
            "CREATE TABLE",
            "INSERT 0 3",
            "1|m***@example.com",
            "2|w***@example.net",
            "3|a***@example.org",
            "BEGIN",
            "ALTER TABLE",
            "ALTER TABLE",
            // `mail` is no column rule's, but the detectors still catch its values.
            "1|[redacted]|x***@example.com",
            "2|[redacted]|x***@example.com",
            "3|[redacted]|x***@example.com",
            "ROLLBACK",
            "1|m***@example.com",
            "2|w***@example.net",
            "3|a***@example.org",
        ]
    );
    // DDL and a query in one message: no chance to reload names in between, so the
    // new table's columns are withheld (NULL), and the journal says so. (No function
    // call in it: after DDL in the same message a call cannot be looked up, and is
    // refused as an unknown function.)
    assert_eq!(
        lines(&proxy.psql(
            "CREATE TABLE fresh (email text); INSERT INTO fresh VALUES ('zed@example.com'); \
             SELECT email, 1 FROM fresh"
        )),
        ["CREATE TABLE", "INSERT 0 1", "|1"]
    );
    let withheld = masking_records(&proxy)
        .into_iter()
        .flat_map(|(_, cols)| cols)
        .filter(|c| c.0 == "unresolved")
        .count();
    assert_eq!(withheld, 1);
    // The next statement has the names again.
    assert_eq!(
        lines(&proxy.psql("SELECT email FROM fresh")),
        ["z***@example.com"]
    );
}

#[test]
fn tables_other_sessions_create_are_not_shown_unmasked() {
    let pg = server();
    let proxy = masked_proxy(&pg);
    // A table another session creates after this one loaded the column names: its
    // columns are withheld once, then named by the rules after a reload.
    let direct = format!(
        "psql -X -q -h 127.0.0.1 -p {} -U postgres -d postgres -c \
         \"CREATE TABLE later (email text); INSERT INTO later VALUES ('lee@example.com')\"",
        pg.port
    );
    let run = proxy.psql_script(&format!(
        "SELECT email FROM customers WHERE id = 1;\n\\! PGPASSWORD={PASSWORD} {direct}\n\
         SELECT email, count(email) OVER () FROM later;\n\
         SELECT email FROM later;\n"
    ));
    assert!(run.stderr.is_empty(), "{}", run.stderr);
    assert_eq!(lines(&run), ["m***@example.com", "|1", "l***@example.com"]);
}

#[test]
fn drivers_see_masked_values_in_text_and_binary_formats() {
    let pg = server();
    let proxy = masked_proxy(&pg);
    let run = proxy.python("mask_clients.py", &[]);
    assert!(run.ok, "{}\n{}", run.stdout, run.stderr);
    let out: Value = serde_json::from_str(run.stdout.trim()).unwrap();
    // asyncpg reads text columns in binary format; masked values stay valid text.
    assert_eq!(out["asyncpg_fetch"][0][1], json!("m***@example.com"));
    assert_eq!(out["asyncpg_fetch"][0][2], json!("*******6789"));
    assert_eq!(out["asyncpg_fetch"][1][1], json!("w***@example.net"));
    let card = out["asyncpg_fetch"][0][3].as_str().unwrap();
    assert_eq!(card.len(), 16, "{out}");
    assert_eq!(
        out["asyncpg_fetch"][0][4],
        json!("{\"contact\": \"[redacted]\"}")
    );
    assert_eq!(
        out["asyncpg_prepared"],
        json!([
            ["m***@example.com", "[redacted]"],
            ["w***@example.net", "[redacted]"],
            ["a***@example.org", "[redacted]"]
        ])
    );
    assert_eq!(out["asyncpg_ids"], json!([1, 2, 3]));
    // A uuid column under keyed_hash becomes another valid uuid (binary format).
    let uuids = out["asyncpg_uuid"].as_array().unwrap();
    assert_eq!(uuids.len(), 3);
    for u in uuids {
        let u = u.as_str().unwrap();
        assert_eq!(u.len(), 36, "{u}");
        assert!(
            !u.starts_with("a0eebc99") && !u.starts_with("b1eebc99"),
            "{u}"
        );
    }
    assert_eq!(
        out["asyncpg_cursor"],
        json!(["m***@example.com", "w***@example.net", "a***@example.org"])
    );
    assert_eq!(out["asyncpg_returning"], json!("a***@example.org"));
    assert_eq!(
        out["psycopg_binary"],
        json!([
            [1, "m***@example.com", "[redacted]"],
            [2, "w***@example.net", "[redacted]"]
        ])
    );
    assert_eq!(
        out["psycopg_named_cursor"],
        json!(["m***@example.com", "w***@example.net", "a***@example.org"])
    );
    assert_eq!(
        out["psycopg_copy"],
        json!([
            ["1", "m***@example.com", "*******6789"],
            ["2", "w***@example.net", "*******1120"],
            ["3", "a***@example.org", "*******9999"]
        ])
    );
}

#[test]
fn filtering_or_sorting_on_a_masked_column_is_refused() {
    let pg = server();
    let proxy = masked_proxy(&pg);
    for (sql, column) in [
        (
            "SELECT id FROM customers WHERE ssn LIKE '123%'",
            "customers.ssn",
        ),
        ("SELECT id FROM customers ORDER BY email", "customers.email"),
        (
            "SELECT id FROM customers c WHERE EXISTS (SELECT 1 FROM customers d WHERE d.ssn = c.ssn AND d.id <> c.id)",
            "customers.ssn",
        ),
        (
            "SELECT count(*) FROM customers GROUP BY lower(email)",
            "customers.email",
        ),
        // Column aliases rename by position: `e` is ssn, so any column of customers counts.
        (
            "SELECT 1 FROM customers AS c(a, b, c, d, e) WHERE e LIKE '123%'",
            "customers.*",
        ),
    ] {
        let run = proxy.psql(sql);
        assert!(!run.ok, "{sql}: {run:?}");
        assert!(
            run.stderr.contains("ERROR:  42501: pam-agent refused")
                && run.stderr.contains("rule \"crew-pii\"")
                && run.stderr.contains(column),
            "{sql}: {}",
            run.stderr
        );
    }
    // Reading the masked column, or filtering on others, is fine.
    assert_eq!(
        lines(&proxy.psql("SELECT ssn FROM customers WHERE name = 'Wei Chen'")),
        ["*******1120"]
    );
    let refused = proxy
        .decisions()
        .into_iter()
        .filter(|(_, d, rule)| d == "deny" && rule == "crew-pii")
        .count();
    assert_eq!(refused, 5);
}

#[test]
fn a_connection_without_masking_rules_sees_real_values() {
    let pg = server();
    let proxy = Proxy::start(&pg, POLICY);
    assert_eq!(
        lines(&proxy.psql("SELECT email, ssn FROM customers WHERE id = 1")),
        ["maria.garcia@example.com|123-45-6789"]
    );
    assert!(masking_records(&proxy).is_empty());
}
