//! Masking that follows the value (issue 13), end to end: a corpus of evasion forms (a
//! masked column through string functions, encodings, casts, concatenation, aggregates,
//! arrays, rows, JSON, whole rows, CTEs, set operations, LATERAL, windows, sub-selects,
//! views, COPY, copies into other tables) run by psql (text), psycopg 3 (text and binary)
//! and asyncpg (binary) through the real eBPF redirect to PostgreSQL 15. Whatever each
//! client receives is searched for the protected values in every form: raw, digits only,
//! letters and digits only (spaced out, dashes dropped), reversed, base64 and hex. The
//! oracle is this file's own code, not the agent's. The same corpus run by an ungoverned
//! process shows the forms are real: each revealing form does give the values away there.

use pam_e2e::{
    masking::{MaskFixture, received},
    oracle, require_root,
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

/// The first protected value found in any cell: (the cell, the form it was in).
fn leaks(cells: &[String]) -> Option<(String, &'static str)> {
    oracle::leak(cells, SECRETS)
}

const SCHEMA: &str = "
create table customers(id int primary key, name text, email text, ssn text, token text);
insert into customers values
  (1, 'Maria Garcia', 'maria.garcia@example.com', '123-45-6789', 'tok_Zq8Xv3Lm9Kp2Ww'),
  (2, 'Wei Chen', 'wei.chen@example.net', '078-05-1120', 'tok_Hn4Rt7Yb1Cd6Qs');
create view contacts as select id, email as contact from customers;
create table notes(id int, body text, tags text[], blob bytea, card_num int8,
                   amount numeric, doc jsonb);
insert into notes values
  (1, 'write to amara@example.org', array['219-09-9999', 'x'],
   convert_to('ssn 219-09-9999', 'UTF8'), 4111111111111111, 4111111111111111.00,
   '{\"contact\": \"amara@example.org\"}');";

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

/// The shared oracle on this corpus's kinds of values: each form it must flag, and the
/// masked values it must not (no root needed).
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
        assert_eq!(oracle::leak_in(cell, s), Some(how), "{cell}");
    }
    for cell in ["*******6789", "m***@example.com", "[token]", "2", "{1,2}"] {
        assert_eq!(leaks(&[cell.to_owned()]), None, "{cell}");
    }
    assert_eq!(oracle::base64(b"ab"), "YWI=");
    assert_eq!(oracle::base64(b"abc"), "YWJj");
}

/// Whether `text` (a statement record's) is one of `form`'s statements.
fn is_statement_of(form: &Form, text: &str) -> bool {
    form.steps.contains(&text)
        || form
            .copy
            .is_some_and(|q| text.starts_with(&format!("COPY ({q}) TO STDOUT")))
}

#[test]
fn evasion_corpus_reveals_nothing_to_any_client_in_text_or_binary() {
    if !require_root("masking evasion") {
        return;
    }
    let f = MaskFixture::start("evasion", PASSWORD, SCHEMA, CONFIG);
    let dsn = f.uri("postgres", PASSWORD);
    let corpus = corpus_json();

    // Ungoverned, the forms are real: each revealing one gives a value away.
    let direct = f.python(false, "psycopg-text", &dsn, &corpus);
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

    // Governed: every client, text and binary. A column as itself is served (masked);
    // every other form is refused by the agent, by this rule, before it runs.
    let evasions: Vec<&str> = CORPUS
        .iter()
        .filter(|f| !f.allowed)
        .map(|f| f.name)
        .collect();
    for client in ["psycopg-text", "psycopg-binary", "asyncpg"] {
        let out = f.python(true, client, &dsn, &corpus);
        let mut refused = Vec::new();
        for form in CORPUS {
            let got = &out[form.name];
            let what = format!("{client} {}", form.name);
            // Values and error messages alike.
            if let Some((cell, how)) = leaks(&received(got)) {
                panic!("{what}: a protected value reached the client ({how}) in {cell:?}");
            }
            if got["error"].is_null() {
                assert!(!received(got).is_empty(), "{what}: no values");
                continue;
            }
            if form.allowed {
                let refused: Vec<String> = f
                    .agent
                    .journal()
                    .iter()
                    .filter(|r| r["kind"] == "statement" && r["decision"] == "deny")
                    .map(|r| format!("{} {}", r["text"], r["flags"]))
                    .collect();
                panic!("{what}: a column as itself must be served: {got}\nrefused: {refused:#?}");
            }
            // Refused by the agent (its SQLSTATE, message and rule), never the server's
            // own error nor a client-side failure.
            assert_eq!(got["sqlstate"], "42501", "{what}: {got}");
            let msg = got["error"].as_str().unwrap();
            assert!(
                msg.starts_with("pam-agent refused") && msg.contains("crm-pii"),
                "{what}: {msg}"
            );
            refused.push(form.name);
        }
        assert_eq!(refused, evasions, "{client}: the forms refused");
    }

    // psql, text format, the whole corpus in one script.
    let (_, stdout, stderr) = f.psql(true, "postgres", &psql_script());
    // Rows, and the server's and agent's error messages.
    let cells: Vec<String> = stdout
        .lines()
        .chain(stderr.lines())
        .flat_map(|l| std::iter::once(l.to_owned()).chain(l.split('|').map(str::to_owned)))
        .collect();
    if let Some((cell, how)) = leaks(&cells) {
        panic!("psql: a protected value reached the client ({how}) in {cell:?}");
    }
    // Served forms did come back (masked), refusals name the rule: one per evasion form.
    // psql goes on after an error, and the refusal fails the form's transaction as the
    // server's own error would, so a form's later steps get the server's 25P02, two of
    // them the policy also refuses (the EXECUTE of the refused PREPARE, the call of the
    // function whose CREATE was refused): on record below, not shown.
    assert!(stdout.contains("m***@example.com"), "{stdout}");
    assert!(stdout.contains("*******6789"), "{stdout}");
    assert_eq!(
        stderr
            .matches("ERROR:  42501: pam-agent refused the statement (rule \"crm-pii\")")
            .count(),
        evasions.len(),
        "psql refusals: {stderr}"
    );
    assert_eq!(
        stderr
            .matches("ERROR:  42501: pam-agent refused the statement (rule \"default\")")
            .count(),
        0,
        "{stderr}"
    );
    assert!(
        stderr
            .matches("ERROR:  25P02: current transaction is aborted")
            .count()
            >= 2,
        "{stderr}"
    );
    assert!(
        stderr.contains(
            "the result `reverse(ssn)` is computed from customers.ssn, which rule crm-pii masks"
        ),
        "{stderr}"
    );

    // On record: each evasion form refused by this rule once per client (three drivers
    // and psql), by one of its own statements, with the flag; besides them only psql's
    // two later steps.
    let journal = f.agent.settled();
    let denied: Vec<&Value> = journal
        .iter()
        .filter(|r| r["kind"] == "statement" && r["decision"] == "deny")
        .collect();
    let (masking, policy): (Vec<&Value>, Vec<&Value>) =
        denied.iter().partition(|r| r["rule"] == "crm-pii");
    for form in CORPUS.iter().filter(|f| !f.allowed) {
        let of_form: Vec<&&Value> = masking
            .iter()
            .filter(|r| is_statement_of(form, r["text"].as_str().unwrap_or("")))
            .collect();
        assert_eq!(
            of_form.len(),
            4,
            "{}: refusals on record {of_form:#?}",
            form.name
        );
        for r in of_form {
            assert!(
                r["flags"]
                    .as_array()
                    .is_some_and(|fl| fl.iter().any(|x| x == "derived_from_masked")),
                "{}: {r}",
                form.name
            );
        }
    }
    assert_eq!(masking.len(), 4 * evasions.len(), "{masking:#?}");
    // The function's call is judged after the agent looks it up, which the server
    // refuses in the failed block: not run either way.
    let mut policy: Vec<(&str, &str)> = policy
        .iter()
        .map(|r| (r["text"].as_str().unwrap(), r["rule"].as_str().unwrap()))
        .collect();
    policy.sort();
    assert_eq!(
        policy,
        [
            ("EXECUTE p", "default"),
            ("SELECT pg_temp.f()", "function_lookup_failed")
        ],
        "{denied:#?}"
    );
    let text = serde_json::to_string(&journal).unwrap();
    for s in SECRETS {
        assert!(!text.contains(s), "{s} reached the journal");
    }
}
