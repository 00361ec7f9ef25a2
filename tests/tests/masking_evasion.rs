//! Masking that follows the value (issue 13), end to end: a corpus of evasion forms (a
//! masked column through string functions, encodings, casts, concatenation, aggregates,
//! arrays, rows, JSON, whole rows, CTEs, set operations, LATERAL, windows, sub-selects,
//! views, COPY, copies into other tables) run by psql (text), psycopg 3 (text and binary)
//! and asyncpg (binary) through the real eBPF redirect to PostgreSQL 15. Whatever each
//! client receives is searched for the protected values in every form: raw, digits only,
//! letters and digits only (spaced out, dashes dropped), reversed, base64 and hex. The
//! oracle is this file's own code, not the agent's. The same corpus run by an ungoverned
//! process shows the forms are real: each revealing form does give the values away there.

use std::process::Command;

use pam_e2e::{
    Agent, Cgroup, OutputWithin, ResourceSpec, TestHost, agent_bin, postgres::PgServer,
    require_root,
};
use serde_json::{Value, json};

const PASSWORD: &str = "pg-evasion-password";

const CONFIG: &str = r#"
[policy]
default = "deny"

[[policy.rules]]
name = "drivers-housekeeping"
action = "allow"
kinds = ["transaction", "session", "cursor"]

[[policy.rules]]
name = "analyst"
action = "allow"
kinds = ["select", "copy_out", "insert", "update", "ddl"]
permit_flags = ["create_table_as", "update_without_where"]
tables = ["public.*", "pg_catalog.*", "information_schema.*"]

[masking]

[[masking.rules]]
name = "crm-pii"
when = { resources = ["crm-db"] }

[[masking.rules.columns]]
columns = ["public.customers.email", "public.contacts.contact"]
strategy = { kind = "email" }

[[masking.rules.columns]]
columns = ["public.customers.ssn"]
strategy = { kind = "partial", keep_last = 4 }

[[masking.rules.columns]]
columns = ["public.customers.token"]
strategy = { kind = "redact", text = "[token]" }

[[masking.rules.content]]
detectors = ["email", "payment_card", "us_ssn"]
strategy = { kind = "redact", text = "[pii]" }
"#;

/// The protected values of the fixture.
const SECRETS: &[&str] = &[
    "maria.garcia@example.com",
    "wei.chen@example.net",
    "123-45-6789",
    "078-05-1120",
    "tok_Zq8Xv3Lm9Kp2Ww",
    "tok_Hn4Rt7Yb1Cd6Qs",
    // Only content detectors protect these (table `notes`).
    "4111111111111111",
    "219-09-9999",
    "amara@example.org",
];

/// One evasion form: its statements (the last one's rows are what the client reads),
/// or a query for COPY ... TO STDOUT; `reveals`: run ungoverned it gives a protected
/// value away in a form the oracle recognises; `allowed`: the governed run must not be
/// refused (its values come back masked).
struct Form {
    name: &'static str,
    steps: &'static [&'static str],
    copy: Option<&'static str>,
    reveals: bool,
    allowed: bool,
    /// Ungoverned, the form fails (with the value in its error).
    fails: bool,
}

const fn q(name: &'static str, steps: &'static [&'static str]) -> Form {
    Form {
        name,
        steps,
        copy: None,
        reveals: true,
        allowed: false,
        fails: false,
    }
}

/// Gives nothing away (a hash, a length, a count) but must still be handled.
const fn opaque(name: &'static str, steps: &'static [&'static str]) -> Form {
    Form {
        reveals: false,
        ..q(name, steps)
    }
}

/// Fails when run ungoverned, with the value in the error message.
const fn in_error(name: &'static str, steps: &'static [&'static str]) -> Form {
    Form {
        fails: true,
        ..q(name, steps)
    }
}

/// A column returned as itself: served, masked.
const fn served(name: &'static str, steps: &'static [&'static str]) -> Form {
    Form {
        allowed: true,
        ..q(name, steps)
    }
}

const fn copy(name: &'static str, query: &'static str) -> Form {
    Form {
        name,
        steps: &[],
        copy: Some(query),
        reveals: true,
        allowed: false,
        fails: false,
    }
}

const CORPUS: &[Form] = &[
    // String functions.
    q("reverse", &["SELECT reverse(ssn) FROM customers"]),
    q(
        "substring",
        &["SELECT substring(ssn, 1, 11) FROM customers"],
    ),
    q(
        "substr_rejoin",
        &["SELECT substr(ssn, 1, 3) || substr(ssn, 4) FROM customers"],
    ),
    q("left", &["SELECT left(email, 100) FROM customers"]),
    q("right", &["SELECT right(ssn, 11) FROM customers"]),
    q("replace", &["SELECT replace(ssn, '-', '') FROM customers"]),
    q(
        "translate_spaces",
        &["SELECT translate(ssn, '-', ' ') FROM customers"],
    ),
    q(
        "split_rejoin",
        &[
            "SELECT split_part(ssn, '-', 1) || split_part(ssn, '-', 2) || split_part(ssn, '-', 3) FROM customers",
        ],
    ),
    q(
        "array_rejoin",
        &["SELECT array_to_string(string_to_array(ssn, '-'), '') FROM customers"],
    ),
    q(
        "spaced_out",
        &[r"SELECT regexp_replace(ssn, '(.)', '\1 ', 'g') FROM customers"],
    ),
    q("upper", &["SELECT upper(email) FROM customers"]),
    q("lower_token", &["SELECT lower(token) FROM customers"]),
    q("initcap", &["SELECT initcap(email) FROM customers"]),
    q("trim", &["SELECT trim(ssn) FROM customers"]),
    q("lpad", &["SELECT lpad(ssn, 20, '#') FROM customers"]),
    q("repeat", &["SELECT repeat(token, 1) FROM customers"]),
    q(
        "overlay",
        &["SELECT overlay(ssn placing 'x' from 100) FROM customers"],
    ),
    q("format", &["SELECT format('%s', email) FROM customers"]),
    q(
        "quote_literal",
        &["SELECT quote_literal(ssn) FROM customers"],
    ),
    q("concat", &["SELECT concat(ssn, '') FROM customers"]),
    q(
        "concat_ws",
        &["SELECT concat_ws('|', 'x', token) FROM customers"],
    ),
    q("concat_op", &["SELECT id || ':' || ssn FROM customers"]),
    q("concat_empty", &["SELECT '' || email FROM customers"]),
    q("collate", &["SELECT ssn COLLATE \"C\" FROM customers"]),
    // Encodings and casts.
    q(
        "base64",
        &["SELECT encode(convert_to(ssn, 'UTF8'), 'base64') FROM customers"],
    ),
    q(
        "hex",
        &["SELECT encode(convert_to(email, 'UTF8'), 'hex') FROM customers"],
    ),
    q(
        "escape",
        &["SELECT encode(convert_to(token, 'UTF8'), 'escape') FROM customers"],
    ),
    q("cast_bytea", &["SELECT ssn::bytea FROM customers"]),
    q(
        "cast_bytea_fn",
        &["SELECT CAST(email AS bytea) FROM customers"],
    ),
    q(
        "convert_to",
        &["SELECT convert_to(token, 'UTF8') FROM customers"],
    ),
    q("cast_varchar", &["SELECT ssn::varchar(40) FROM customers"]),
    q("cast_char", &["SELECT ssn::char(11) FROM customers"]),
    q("cast_name", &["SELECT email::name FROM customers"]),
    q("cast_json", &["SELECT to_json(ssn)::text FROM customers"]),
    opaque("md5", &["SELECT md5(ssn) FROM customers"]),
    opaque("length", &["SELECT length(ssn) FROM customers"]),
    // Conditionals.
    q(
        "case",
        &["SELECT CASE WHEN id > 0 THEN ssn END FROM customers"],
    ),
    q("coalesce", &["SELECT coalesce(ssn, '') FROM customers"]),
    q("nullif", &["SELECT nullif(email, 'x') FROM customers"]),
    q("greatest", &["SELECT greatest(token, '') FROM customers"]),
    // Aggregates and windows.
    q("array_agg", &["SELECT array_agg(ssn) FROM customers"]),
    q(
        "string_agg",
        &["SELECT string_agg(email, ',') FROM customers"],
    ),
    q("max", &["SELECT max(ssn) FROM customers"]),
    q("min", &["SELECT min(token) FROM customers"]),
    q("json_agg", &["SELECT json_agg(ssn) FROM customers"]),
    q(
        "lag",
        &["SELECT lag(ssn) OVER (ORDER BY id) FROM customers"],
    ),
    q(
        "first_value",
        &["SELECT first_value(email) OVER (ORDER BY id) FROM customers"],
    ),
    // Arrays, rows, JSON, XML.
    q("array_ctor", &["SELECT ARRAY[ssn] FROM customers"]),
    q(
        "array_text",
        &["SELECT ARRAY[email, ssn]::text FROM customers"],
    ),
    q("unnest", &["SELECT unnest(ARRAY[token]) FROM customers"]),
    q("row", &["SELECT row(id, ssn) FROM customers"]),
    q("row_text", &["SELECT row(ssn)::text FROM customers"]),
    q("to_json", &["SELECT to_json(email) FROM customers"]),
    q("to_jsonb", &["SELECT to_jsonb(ssn) FROM customers"]),
    q(
        "json_build_object",
        &["SELECT json_build_object('s', ssn) FROM customers"],
    ),
    q(
        "jsonb_build_array",
        &["SELECT jsonb_build_array(token) FROM customers"],
    ),
    q(
        "xmlelement",
        &["SELECT xmlelement(name x, ssn) FROM customers"],
    ),
    // Whole rows.
    q("whole_row", &["SELECT c FROM customers c"]),
    q("whole_row_text", &["SELECT c::text FROM customers c"]),
    q("whole_row_field", &["SELECT (c).ssn FROM customers c"]),
    q("row_to_json", &["SELECT row_to_json(c) FROM customers c"]),
    q("to_json_row", &["SELECT to_json(customers) FROM customers"]),
    q("jsonb_agg_row", &["SELECT jsonb_agg(c) FROM customers c"]),
    q("row_star", &["SELECT row(c.*) FROM customers c"]),
    q(
        "jsonpath_row",
        &["SELECT jsonb_path_query(to_jsonb(c), '$.ssn') FROM customers c"],
    ),
    // Queries around the column.
    q(
        "cte",
        &["WITH x AS (SELECT reverse(ssn) AS r FROM customers) SELECT r FROM x"],
    ),
    q("union", &["SELECT ssn FROM customers UNION SELECT 'x'"]),
    q(
        "union_all_sub",
        &["SELECT s FROM (SELECT ssn AS s FROM customers UNION ALL SELECT email FROM customers) u"],
    ),
    q(
        "intersect",
        &["SELECT email FROM customers INTERSECT SELECT email FROM customers"],
    ),
    q("except", &["SELECT token FROM customers EXCEPT SELECT 'x'"]),
    q(
        "union_star",
        &["SELECT * FROM customers UNION ALL SELECT * FROM customers"],
    ),
    q(
        "recursive_cte",
        &[
            "WITH RECURSIVE r(x, n) AS (SELECT ssn, 1 FROM customers UNION ALL SELECT x, n + 1 FROM r WHERE n < 1) SELECT x FROM r",
        ],
    ),
    q(
        "lateral_subselect",
        &["SELECT l.x FROM customers c, LATERAL (SELECT reverse(c.ssn) AS x) l"],
    ),
    q(
        "lateral_function",
        &["SELECT p FROM customers c, LATERAL unnest(ARRAY[c.email]) p"],
    ),
    q(
        "values",
        &["SELECT v.x FROM (VALUES ((SELECT ssn FROM customers WHERE id = 1))) v(x)"],
    ),
    q(
        "scalar_subquery",
        &["SELECT (SELECT ssn FROM customers WHERE id = 1)"],
    ),
    q(
        "array_subquery",
        &["SELECT ARRAY(SELECT email FROM customers)"],
    ),
    q(
        "subquery_agg",
        &["SELECT (SELECT string_agg(token, ',') FROM customers)"],
    ),
    q(
        "full_join_using",
        &["SELECT ssn FROM customers a FULL JOIN customers b USING (ssn)"],
    ),
    q("view_derived", &["SELECT upper(contact) FROM contacts"]),
    // Copies: the value lands where no rule masks it, then is read back.
    q(
        "create_table_as",
        &[
            "CREATE TEMP TABLE x AS SELECT ssn FROM customers",
            "SELECT * FROM x",
        ],
    ),
    q(
        "select_into",
        &["SELECT email INTO TEMP y FROM customers", "SELECT * FROM y"],
    ),
    q(
        "insert_select",
        &[
            "CREATE TEMP TABLE z (v text)",
            "INSERT INTO z SELECT token FROM customers",
            "SELECT v FROM z",
        ],
    ),
    q(
        "update_set",
        &[
            "UPDATE customers SET name = ssn",
            "SELECT name FROM customers",
        ],
    ),
    q(
        "view_rename",
        &[
            "CREATE TEMP VIEW w AS SELECT ssn AS tax FROM customers",
            "SELECT tax FROM w",
        ],
    ),
    q(
        "prepare",
        &[
            "PREPARE p AS SELECT reverse(email) FROM customers",
            "EXECUTE p",
        ],
    ),
    q(
        "table_column_aliases",
        &["SELECT reverse(d) FROM customers AS c(a, b, c, d)"],
    ),
    q(
        "natural_full_join",
        &["SELECT ssn FROM customers a NATURAL FULL JOIN customers b"],
    ),
    in_error(
        "where_cast",
        &["SELECT id FROM customers WHERE ssn::int = 0"],
    ),
    in_error(
        "order_by_cast",
        &["SELECT id FROM customers ORDER BY email::int"],
    ),
    in_error(
        "where_regclass",
        &["SELECT id FROM customers WHERE token::regclass IS NULL"],
    ),
    in_error(
        "filter_cast",
        &["SELECT count(*) FILTER (WHERE ssn::date IS NULL) FROM customers"],
    ),
    in_error("count_cast", &["SELECT count(ssn::int) FROM customers"]),
    in_error("cast_int", &["SELECT ssn::int FROM customers"]),
    opaque(
        "count_nested",
        &["SELECT count(reverse(ssn)) FROM customers"],
    ),
    q(
        "cursor",
        &[
            "DECLARE cur CURSOR FOR SELECT reverse(ssn) FROM customers",
            "FETCH ALL FROM cur",
        ],
    ),
    q(
        "sql_function",
        &[
            "CREATE FUNCTION pg_temp.f() RETURNS text LANGUAGE sql AS 'SELECT ssn FROM customers WHERE id = 1'",
            "SELECT pg_temp.f()",
        ],
    ),
    copy("copy_reverse", "SELECT reverse(ssn) FROM customers"),
    copy("copy_whole_row", "SELECT c FROM customers c"),
    // RETURNING computes like a select list (PostgreSQL 18 parses it as a clause).
    q(
        "returning_reverse",
        &["UPDATE customers SET name = name RETURNING id, reverse(ssn)"],
    ),
    q(
        "returning_base64",
        &["UPDATE customers SET name = name RETURNING encode(convert_to(token, 'UTF8'), 'base64')"],
    ),
    // Served, masked: the column as itself, and what reveals nothing.
    served("plain", &["SELECT id, email, ssn, token FROM customers"]),
    served("star", &["SELECT * FROM customers"]),
    served("parenthesised", &["SELECT (ssn) FROM customers"]),
    served(
        "subselect_star",
        &["SELECT s.ssn FROM (SELECT * FROM customers) s"],
    ),
    served(
        "cte_plain",
        &["WITH x AS (SELECT email FROM customers) SELECT email FROM x"],
    ),
    served("view_plain", &["SELECT contact FROM contacts"]),
    served(
        "returning",
        &["UPDATE customers SET name = name RETURNING ssn, token"],
    ),
    Form {
        reveals: false,
        ..served(
            "count",
            &["SELECT count(ssn), count(DISTINCT email) FROM customers"],
        )
    },
    // No column rule names `notes`: content detectors look inside every type.
    served("detect_text", &["SELECT id, body FROM notes"]),
    served("detect_array", &["SELECT id, tags FROM notes"]),
    served("detect_bytea", &["SELECT id, blob FROM notes"]),
    served(
        "detect_bytea_escape",
        &["SELECT id, encode(blob, 'escape') FROM notes"],
    ),
    served("detect_int8", &["SELECT id, card_num FROM notes"]),
    served("detect_numeric", &["SELECT id, amount FROM notes"]),
    served("detect_jsonb", &["SELECT id, doc FROM notes"]),
    served("detect_json", &["SELECT id, doc::json FROM notes"]),
    served("detect_row", &["SELECT id, row(id, body) FROM notes"]),
    served("detect_whole_row", &["SELECT id, n FROM notes n"]),
    served(
        "detect_array_ctor",
        &["SELECT id, ARRAY[body, 'x'] FROM notes"],
    ),
    served(
        "detect_int_array",
        &["SELECT id, ARRAY[card_num] FROM notes"],
    ),
    served(
        "detect_nested_array",
        &["SELECT id, ARRAY[tags] FROM notes"],
    ),
    served(
        "detect_record_array",
        &["SELECT id, array_agg(n) FROM notes n GROUP BY id"],
    ),
    served("detect_to_jsonb", &["SELECT id, to_jsonb(n) FROM notes n"]),
    served(
        "detect_convert_to",
        &["SELECT id, convert_to(body, 'UTF8') FROM notes"],
    ),
];

/// Every form in which `secret` could be read back from `cell`.
fn leak_in(cell: &str, secret: &str) -> Option<&'static str> {
    let lower = cell.to_lowercase();
    let s = secret.to_lowercase();
    let rev: String = s.chars().rev().collect();
    let alnum = |t: &str| -> String { t.chars().filter(|c| c.is_alphanumeric()).collect() };
    let digits = |t: &str| -> String { t.chars().filter(|c| c.is_ascii_digit()).collect() };
    let hex: String = secret.bytes().map(|b| format!("{b:02x}")).collect();
    let b64 = base64(secret.as_bytes());
    let (cell_alnum, s_alnum) = (alnum(&lower), alnum(&s));
    let s_alnum_rev: String = s_alnum.chars().rev().collect();
    let s_digits = digits(&s);
    let s_digits_rev: String = s_digits.chars().rev().collect();
    if lower.contains(&s) {
        Some("raw")
    } else if lower.contains(&rev) {
        Some("reversed")
    } else if cell_alnum.contains(&s_alnum) {
        Some("spaced out or separators dropped")
    } else if cell_alnum.contains(&s_alnum_rev) {
        Some("reversed, separators dropped")
    } else if s_digits.len() >= 7
        && (digits(cell).contains(&s_digits) || digits(cell).contains(&s_digits_rev))
    {
        Some("digits only")
    } else if lower.contains(&hex) {
        Some("hex")
    } else if cell.contains(b64.trim_end_matches('=')) {
        Some("base64")
    } else {
        None
    }
}

/// Standard base64 (RFC 4648), written here so the oracle shares nothing with the agent.
fn base64(input: &[u8]) -> String {
    const ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = String::new();
    for chunk in input.chunks(3) {
        let b = [
            chunk[0],
            *chunk.get(1).unwrap_or(&0),
            *chunk.get(2).unwrap_or(&0),
        ];
        let n = (u32::from(b[0]) << 16) | (u32::from(b[1]) << 8) | u32::from(b[2]);
        for i in 0..4 {
            if i <= chunk.len() {
                out.push(ALPHABET[(n >> (18 - 6 * i)) as usize & 63] as char);
            } else {
                out.push('=');
            }
        }
    }
    out
}

/// What a client received for one form: its values, and the error message if any.
fn received(got: &Value) -> Vec<String> {
    let mut cells: Vec<String> = serde_json::from_value(got["values"].clone()).unwrap();
    if let Some(e) = got["error"].as_str() {
        cells.push(e.to_owned());
    }
    cells
}

/// The first protected value found in any cell, with the form it was in.
fn leaks(cells: &[String]) -> Option<(String, &'static str, String)> {
    cells.iter().find_map(|c| {
        SECRETS
            .iter()
            .find_map(|s| leak_in(c, s).map(|how| ((*s).to_owned(), how, c.clone())))
    })
}

struct Fixture {
    agent: Agent,
    cg: Cgroup,
    pg: PgServer,
    host: TestHost,
}

fn setup() -> Fixture {
    let host = TestHost::new().expect("test host");
    let pg = PgServer::start(&host, 5432, PASSWORD).expect("postgres");
    pg.admin_sql("postgres", "create database crm").unwrap();
    pg.admin_sql("postgres", "alter database crm set jit = off")
        .unwrap();
    pg.admin_sql(
        "crm",
        "create table customers(id int primary key, name text, email text, ssn text, token text);
         insert into customers values
           (1, 'Maria Garcia', 'maria.garcia@example.com', '123-45-6789', 'tok_Zq8Xv3Lm9Kp2Ww'),
           (2, 'Wei Chen', 'wei.chen@example.net', '078-05-1120', 'tok_Hn4Rt7Yb1Cd6Qs');
         create view contacts as select id, email as contact from customers;
         create table notes(id int, body text, tags text[], blob bytea, card_num int8,
                            amount numeric, doc jsonb);
         insert into notes values
           (1, 'write to amara@example.org', array['219-09-9999', 'x'],
            convert_to('ssn 219-09-9999', 'UTF8'), 4111111111111111, 4111111111111111.00,
            '{\"contact\": \"amara@example.org\"}');",
    )
    .unwrap();
    let cg = Cgroup::new("evasion").expect("cgroup");
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

/// Runs the corpus with one Python client: per form, `{values, error, sqlstate}`.
fn run_client(cg: Option<&Cgroup>, client: &str, dsn: &str, corpus: &std::path::Path) -> Value {
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/clients/mask_evasion.py");
    let out = command(cg, "python3")
        .arg(script)
        .arg(client)
        .arg(dsn)
        .arg(corpus)
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

fn corpus_json() -> Value {
    Value::Array(
        CORPUS
            .iter()
            .map(|f| json!({"name": f.name, "steps": f.steps, "copy": f.copy}))
            .collect(),
    )
}

/// The psql script of the whole corpus: each form in a transaction, rolled back.
fn psql_script() -> String {
    let mut s = String::new();
    for f in CORPUS {
        s.push_str("BEGIN;\n");
        if let Some(c) = f.copy {
            s.push_str(&format!("COPY ({c}) TO STDOUT;\n"));
        }
        for step in f.steps {
            s.push_str(step);
            s.push_str(";\n");
        }
        s.push_str("ROLLBACK;\n");
    }
    s
}

#[test]
fn corpus_is_large_enough_and_named_uniquely() {
    let mut names: Vec<&str> = CORPUS.iter().map(|f| f.name).collect();
    names.sort();
    names.dedup();
    assert_eq!(names.len(), CORPUS.len());
    let evasions = CORPUS.iter().filter(|f| !f.allowed).count();
    assert!(CORPUS.iter().filter(|f| f.allowed).count() >= 20);
    assert!(evasions >= 60, "{evasions} evasion forms");
}

/// The oracle itself, on values it must and must not flag (no root needed).
#[test]
fn oracle_finds_every_form_and_ignores_masked_values() {
    let s = "123-45-6789";
    for (cell, how) in [
        ("x 123-45-6789 y", "raw"),
        ("9876-54-321", "reversed"),
        ("1 2 3 - 4 5 - 6 7 8 9", "spaced out or separators dropped"),
        ("987654321", "reversed, separators dropped"),
        ("a1b2c3d4e5f6g7h8i9", "digits only"),
        ("\\x3132332d34352d36373839", "hex"),
        ("MTIzLTQ1LTY3ODk=", "base64"),
    ] {
        assert_eq!(leak_in(cell, s), Some(how), "{cell}");
    }
    for cell in ["*******6789", "m***@example.com", "[token]", "2", "{1,2}"] {
        assert_eq!(leaks(&[cell.to_owned()]), None, "{cell}");
    }
    assert_eq!(base64(b"ab"), "YWI=");
    assert_eq!(base64(b"abc"), "YWJj");
}

#[test]
fn evasion_corpus_reveals_nothing_to_any_client_in_text_or_binary() {
    if !require_root("masking evasion") {
        return;
    }
    let f = setup();
    let dir = tempfile::tempdir().unwrap();
    let corpus = dir.path().join("corpus.json");
    std::fs::write(&corpus, corpus_json().to_string()).unwrap();
    let dsn = format!(
        "postgresql://postgres:{PASSWORD}@{}:5432/crm?sslmode=disable",
        f.host.v4
    );

    // Ungoverned, the forms are real: each revealing one gives a value away.
    let direct = run_client(None, "psycopg-text", &dsn, &corpus);
    for form in CORPUS {
        let got = &direct[form.name];
        assert_eq!(got["error"].is_null(), !form.fails, "{}: {got}", form.name);
        let cells = received(got);
        if form.reveals {
            assert!(
                leaks(&cells).is_some(),
                "{}: the oracle sees no value in the unmasked result {cells:?}",
                form.name
            );
        }
    }

    // Governed: every client, text and binary.
    let mut refused = 0;
    for client in ["psycopg-text", "psycopg-binary", "asyncpg"] {
        let out = run_client(Some(&f.cg), client, &dsn, &corpus);
        for form in CORPUS {
            let got = &out[form.name];
            let what = format!("{client} {}", form.name);
            // Values and error messages alike.
            if let Some((secret, how, cell)) = leaks(&received(got)) {
                panic!("{what}: {secret} reached the client ({how}) in {cell:?}");
            }
            if got["error"].is_null() {
                assert!(!received(got).is_empty(), "{what}: no values");
            } else {
                // Refused by the agent before it ran, never a client-side failure.
                if form.allowed {
                    let refused: Vec<String> = f
                        .agent
                        .journal()
                        .iter()
                        .filter(|r| r["kind"] == "statement" && r["decision"] == "deny")
                        .map(|r| format!("{} {}", r["text"], r["flags"]))
                        .collect();
                    panic!(
                        "{what}: a column as itself must be served: {got}\nrefused: {refused:#?}"
                    );
                }
                assert_eq!(got["sqlstate"], "42501", "{what}: {got}");
                let msg = got["error"].as_str().unwrap();
                assert!(
                    msg.contains("pam-agent refused") && msg.contains("crm-pii"),
                    "{what}: {msg}"
                );
                refused += 1;
            }
        }
    }
    eprintln!(
        "{} forms x 3 drivers: {refused} refused by the agent, the rest served masked",
        CORPUS.len()
    );
    assert!(refused >= 3 * 60, "only {refused} refusals");

    // psql, text format, the whole corpus in one script.
    let script = dir.path().join("corpus.sql");
    std::fs::write(&script, psql_script()).unwrap();
    let out = command(Some(&f.cg), "psql")
        .args([
            "-h",
            &f.host.v4.to_string(),
            "-U",
            "postgres",
            "-d",
            "crm",
            "-XAt",
            "-f",
        ])
        .arg(&script)
        .env("PGPASSWORD", PASSWORD)
        .env("PGCONNECT_TIMEOUT", "5")
        .output_within()
        .expect("psql");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    // Rows, and the server's and agent's error messages.
    let cells: Vec<String> = stdout
        .lines()
        .chain(stderr.lines())
        .flat_map(|l| std::iter::once(l.to_owned()).chain(l.split('|').map(str::to_owned)))
        .collect();
    if let Some((secret, how, cell)) = leaks(&cells) {
        panic!("psql: {secret} reached the client ({how}) in {cell:?}");
    }
    // Served forms did come back (masked), refusals name the rule.
    assert!(stdout.contains("m***@example.com"), "{stdout}");
    assert!(stdout.contains("*******6789"), "{stdout}");
    assert!(
        stderr.matches("pam-agent refused").count() >= 60,
        "psql refusals: {stderr}"
    );
    assert!(
        stderr.contains(
            "the result `reverse(ssn)` is computed from customers.ssn, which rule crm-pii masks"
        ),
        "{stderr}"
    );

    // On record: refused with the flag, and no value in the journal.
    let journal = f.agent.settled();
    let flagged = journal
        .iter()
        .filter(|r| {
            r["kind"] == "statement"
                && r["decision"] == "deny"
                && r["flags"]
                    .as_array()
                    .is_some_and(|fl| fl.iter().any(|x| x == "derived_from_masked"))
        })
        .count();
    eprintln!("{flagged} statements refused with derived_from_masked on record");
    assert!(flagged >= 4 * 60, "{flagged} derived_from_masked records");
    let text = serde_json::to_string(&journal).unwrap();
    for s in SECRETS {
        assert!(!text.contains(s), "{s} reached the journal");
    }
    let _ = &f.pg;
}
