//! Functions are judged by what the server will run (issue 14): calls resolved through
//! the session's search path against the server's catalog, with the catalog's
//! volatility, user-or-built-in and security definer facts as flags; a read-only analyst
//! policy in a few lines; fail closed when the catalog cannot be read. Real PostgreSQL
//! 15, real psql, the agent's session code.

mod postgres_support;

use std::process::Command;

use pam_agent::journal::Event;
use postgres_support::*;

/// The read-only analyst of docs/postgres.md: reads of public tables with built-in,
/// non-volatile functions; search path changes allowed (so the test can move a shadow
/// in front of pg_catalog), nothing else.
const ANALYST: &str = r#"
[[rules]]
name = "no-volatile-functions"
action = "deny"
if_flags = ["volatile_function"]

[[rules]]
name = "analyst-reads-public"
action = "allow"
kinds = ["select"]
tables = ["public.*"]

[[rules]]
name = "housekeeping"
action = "allow"
kinds = ["session", "transaction"]
permit_flags = ["search_path_change"]
"#;

/// A sequence, a user function that writes, a shadow of `upper(text)` that writes, and
/// a security definer function.
const SETUP: &str = "
CREATE SEQUENCE order_ids;
CREATE FUNCTION public.archive_orders() RETURNS int LANGUAGE sql
  AS $$ INSERT INTO audit_log(note) VALUES ('archived') RETURNING 1 $$;
CREATE FUNCTION public.upper(text) RETURNS text LANGUAGE plpgsql
  AS $$ BEGIN INSERT INTO audit_log(note) VALUES ('shadow ran'); RETURN 'x'; END $$;
CREATE FUNCTION public.definer() RETURNS int LANGUAGE sql STABLE SECURITY DEFINER
  AS $$ SELECT 1 $$;
CREATE FUNCTION public.double(int) RETURNS int LANGUAGE sql IMMUTABLE AS $$ SELECT $1 * 2 $$;
";

fn statements(proxy: &Proxy) -> Vec<(String, String, Vec<String>, Vec<String>)> {
    proxy
        .settled_records()
        .into_iter()
        .filter_map(|r| match r.event {
            Event::Statement {
                text,
                decision,
                functions,
                flags,
                ..
            } => Some((
                text.unwrap_or_default(),
                decision.as_str().to_owned(),
                functions,
                flags,
            )),
            _ => None,
        })
        .collect()
}

fn refused_by(run: &PsqlRun, rule: &str) -> bool {
    run.stderr.contains(&format!(
        "ERROR:  42501: pam-agent refused the statement (rule \"{rule}\")"
    ))
}

#[test]
fn read_only_analyst_reads_with_built_ins_and_never_runs_what_writes() {
    let pg = PgServer::start();
    pg.direct(SETUP);
    let proxy = Proxy::start(&pg, ANALYST);

    // Built-ins resolve to pg_catalog and run (the same-signature public.upper is hidden
    // behind the implicit pg_catalog at the head of the path).
    let run = proxy.psql("SELECT count(*), max(id), upper(item), pg_catalog.lower(item) FROM orders GROUP BY item ORDER BY item LIMIT 1");
    assert!(run.ok, "{run:?}");
    assert_eq!(run.stdout, "1|1|ITEM1|item1\n");

    for (sql, rule) in [
        ("SELECT nextval('order_ids')", "no-volatile-functions"),
        (
            "SELECT pg_catalog.setval('order_ids', 5)",
            "no-volatile-functions",
        ),
        ("SELECT archive_orders()", "no-volatile-functions"),
        (
            "SELECT public.upper(item) FROM orders",
            "no-volatile-functions",
        ),
        // Not volatile, but a user function: the allow rule does not permit the flag.
        ("SELECT public.definer()", "default"),
        ("SELECT double(id) FROM orders", "default"),
        // Unknown to the server: read as the worst.
        ("SELECT no_such_function()", "no-volatile-functions"),
    ] {
        let run = proxy.psql(sql);
        assert!(refused_by(&run, rule), "{sql}: {run:?}");
    }
    // Nothing ran: no row written, the sequence never advanced.
    assert_eq!(pg.direct("SELECT count(*) FROM audit_log"), "0\n");
    assert_eq!(
        pg.direct("SELECT last_value, is_called FROM order_ids"),
        "1|f\n"
    );

    // The journal names what the server would run, with the catalog's facts.
    let st = statements(&proxy);
    let find = |prefix: &str| {
        st.iter()
            .find(|s| s.0.starts_with(prefix))
            .unwrap_or_else(|| panic!("{prefix}: {st:?}"))
    };
    let read = find("SELECT count(*)");
    assert_eq!(read.1, "allow");
    assert_eq!(
        read.2,
        [
            "pg_catalog.count",
            "pg_catalog.lower",
            "pg_catalog.max",
            "pg_catalog.upper"
        ]
    );
    assert!(read.3.is_empty(), "{read:?}");
    let next = find("SELECT nextval");
    assert_eq!(next.2, ["pg_catalog.nextval"]);
    assert_eq!(next.3, ["side_effect_function", "volatile_function"]);
    let archive = find("SELECT archive_orders");
    assert_eq!(archive.2, ["public.archive_orders"]);
    assert_eq!(archive.3, ["user_function", "volatile_function"]);
    let definer = find("SELECT public.definer");
    assert_eq!(definer.3, ["security_definer", "user_function"]);
}

#[test]
fn a_shadow_moved_ahead_of_pg_catalog_is_what_the_call_is_judged_as() {
    let pg = PgServer::start();
    pg.direct(SETUP);
    let proxy = Proxy::start(&pg, ANALYST);
    // One session: the path change is allowed, then the same text now runs the shadow on
    // the server, so it is judged as the shadow and refused. In one message, a call after
    // the change cannot be looked up yet and reads as unknown: refused too.
    let run = proxy.psql_script(
        "SELECT upper(item) FROM orders WHERE id = 1;
         SET search_path = public, pg_catalog;
         SELECT upper(item) FROM orders WHERE id = 1;
         SHOW search_path;
         RESET search_path;
         SELECT upper(item) FROM orders WHERE id = 2;
         SET search_path = public, pg_catalog\\; SELECT lower(item) FROM orders WHERE id = 1;
",
    );
    assert!(run.stdout.starts_with("ITEM1\n"), "{run:?}");
    assert!(
        run.stdout.contains("public, pg_catalog\nRESET\nITEM2\n"),
        "{run:?}"
    );
    assert_eq!(
        run.stderr
            .matches("pam-agent refused the statement (rule \"no-volatile-functions\")")
            .count(),
        2,
        "{run:?}"
    );
    assert_eq!(pg.direct("SELECT count(*) FROM audit_log"), "0\n");
    let st = statements(&proxy);
    let shadowed: Vec<_> = st
        .iter()
        .filter(|s| s.0.starts_with("SELECT upper(item)"))
        .map(|s| (s.1.as_str(), s.2.clone()))
        .collect();
    // The login and each effective search path the lookups found are on record.
    let records = proxy.settled_records();
    let login = records
        .iter()
        .find_map(|r| match &r.event {
            Event::SessionLogin {
                database,
                role,
                application_name,
                reported,
            } => Some((
                database.clone(),
                role.clone(),
                application_name.clone(),
                reported.get("session_authorization").cloned(),
            )),
            _ => None,
        })
        .unwrap();
    assert_eq!(
        login,
        (
            Some("postgres".into()),
            Some("postgres".into()),
            Some("psql".into()),
            Some("postgres".into())
        )
    );
    let paths: Vec<Vec<String>> = records
        .iter()
        .filter_map(|r| match &r.event {
            Event::SessionSettings { search_path, .. } => Some(search_path.clone()),
            _ => None,
        })
        .collect();
    assert_eq!(
        paths,
        [
            vec!["pg_catalog", "public"],
            vec!["public", "pg_catalog"],
            vec!["pg_catalog", "public"]
        ]
    );
    assert_eq!(
        shadowed,
        [
            ("allow", vec!["pg_catalog.upper".to_owned()]),
            // pg_catalog's other upper()s (ranges) stay candidates: other argument types.
            (
                "deny",
                vec!["pg_catalog.upper".to_owned(), "public.upper".to_owned()]
            ),
            ("allow", vec!["pg_catalog.upper".to_owned()]),
        ]
    );
}

#[test]
fn when_the_catalog_cannot_be_read_calls_are_refused_and_the_rest_runs() {
    let pg = PgServer::start();
    pg.direct(&format!(
        "CREATE ROLE analyst LOGIN PASSWORD '{PASSWORD}';
         GRANT SELECT ON orders TO analyst;
         REVOKE SELECT ON pg_catalog.pg_proc FROM PUBLIC;"
    ));
    let proxy = Proxy::start(&pg, ANALYST);
    let out = Command::new("psql")
        .args(["-X", "-At", "-v", "VERBOSITY=verbose"])
        .arg(format!(
            "host=127.0.0.1 port={} user=analyst dbname=postgres password={PASSWORD} sslmode=disable",
            proxy.port
        ))
        .args([
            "-c",
            "SELECT id FROM orders WHERE id = 3",
            "-c",
            "SELECT count(*) FROM orders",
            "-c",
            "SELECT 'still here'",
        ])
        .output_within()
        .unwrap();
    let run = PsqlRun::from(out);
    assert!(run.stdout.starts_with("3\n"), "{run:?}");
    assert!(run.stdout.ends_with("still here\n"), "{run:?}");
    assert!(
        run.stderr.contains(
            "the server failed the function lookup (42501): what a function call runs cannot be known"
        ),
        "{run:?}"
    );
    let st = statements(&proxy);
    let count = st
        .iter()
        .find(|s| s.0 == "SELECT count(*) FROM orders")
        .unwrap();
    assert_eq!(count.1, "deny", "{st:?}");
}

#[test]
fn drivers_batches_are_looked_up_and_judged_call_by_call() {
    let pg = PgServer::start();
    pg.direct(SETUP);
    let proxy = Proxy::start(&pg, ANALYST);
    let run = proxy.python("functions_pipeline.py", &[]);
    assert!(run.ok, "{run:?}");
    let out: serde_json::Value = serde_json::from_str(run.stdout.trim()).unwrap();
    assert_eq!(out["pipeline"], serde_json::json!(["A", "b", 5]));
    assert_eq!(out["nextval"], serde_json::json!("42501"));
    assert_eq!(out["asyncpg"], serde_json::json!(50));
    assert_eq!(
        pg.direct("SELECT last_value, is_called FROM order_ids"),
        "1|f\n"
    );
}

/// The analyst, also reading the catalog (drivers read it to learn types): calls that
/// are volatile or not built in are refused.
const CATALOG_ANALYST: &str = r#"
[[rules]]
name = "no-volatile-or-user-functions"
action = "deny"
if_flags = ["volatile_function", "user_function"]

[[rules]]
name = "analyst-reads"
action = "allow"
kinds = ["select"]
tables = ["public.*", "pg_catalog.*"]

[[rules]]
name = "housekeeping"
action = "allow"
kinds = ["session", "transaction"]
"#;

#[test]
fn asyncpg_introspects_composite_types_under_a_no_volatile_functions_policy() {
    let pg = PgServer::start();
    pg.direct(SETUP);
    pg.direct(
        "CREATE TYPE pair AS (a int, b text);
         CREATE DOMAIN positive AS int CHECK (VALUE > 0);",
    );
    let proxy = Proxy::start(&pg, CATALOG_ANALYST);
    // Unmodified asyncpg: prepare (Parse, Describe, Flush), then, inside that open
    // batch, `set_config('jit', ...)` and its introspection query (array_agg, casts).
    let run = proxy.python("asyncpg_composite.py", &[]);
    assert!(run.ok, "{run:?}");
    let out: serde_json::Value = serde_json::from_str(run.stdout.trim()).unwrap();
    assert_eq!(
        out,
        serde_json::json!({
            "row": [2, "item2", 20],
            "pair": [1, "x"],
            "domain": 7,
            "pairs": [[2, "y"]],
        })
    );
    // The introspection's calls resolved to the built-ins, with their real volatility.
    let st = statements(&proxy);
    let intro = st
        .iter()
        .find(|s| s.0.starts_with("WITH RECURSIVE typeinfo_tree"))
        .unwrap_or_else(|| panic!("{st:?}"));
    assert_eq!(intro.1, "allow");
    assert_eq!(intro.2, ["pg_catalog.array_agg"]);
    assert!(intro.3.is_empty(), "{intro:?}");
    let jit = st
        .iter()
        .find(|s| s.0.contains("set_config('jit'"))
        .unwrap();
    assert_eq!(
        (jit.1.as_str(), jit.2.clone()),
        (
            "allow",
            vec![
                "pg_catalog.current_setting".to_owned(),
                "pg_catalog.set_config".to_owned()
            ]
        )
    );
}

#[test]
fn inside_an_open_batch_a_shadow_of_a_built_in_is_still_what_the_call_is_judged_as() {
    let pg = PgServer::start();
    pg.direct(SETUP);
    // A user function named like a built-in, earlier on the worker's search path, and
    // a shadow of array_agg's name (an aggregate other argument types could pick).
    pg.direct(
        "CREATE SCHEMA shadow;
         CREATE FUNCTION shadow.array_agg(anyelement) RETURNS text LANGUAGE plpgsql
           AS $$ BEGIN INSERT INTO public.audit_log(note) VALUES ('shadow ran'); RETURN 'x'; END $$;
         CREATE FUNCTION shadow.lower(text) RETURNS text LANGUAGE plpgsql
           AS $$ BEGIN INSERT INTO public.audit_log(note) VALUES ('shadow ran'); RETURN 'x'; END $$;
         CREATE TYPE public.pair AS (a int, b text);
         ALTER ROLE postgres SET search_path = shadow, pg_catalog, public;",
    );
    let proxy = Proxy::start(&pg, CATALOG_ANALYST);
    let run = proxy.python("asyncpg_shadow.py", &[]);
    assert!(run.ok, "{run:?}");
    let out: serde_json::Value = serde_json::from_str(run.stdout.trim()).unwrap();
    // Each call is judged as the shadow, also when looked up inside asyncpg's open batch
    // (its introspection of `pair` calls array_agg).
    assert_eq!(out["lower"], "42501", "{out}");
    assert_eq!(out["array_agg"], "42501", "{out}");
    assert_eq!(out["pair"], "42501", "{out}");
    assert_eq!(out["after"], 5, "{out}");
    assert_eq!(pg.direct("SELECT count(*) FROM audit_log"), "0\n");
    let st = statements(&proxy);
    let lower = st.iter().find(|s| s.0.contains("lower(")).unwrap();
    assert_eq!(lower.1, "deny");
    assert!(lower.2.contains(&"shadow.lower".to_owned()), "{lower:?}");
    assert!(lower.3.contains(&"user_function".to_owned()), "{lower:?}");
    let intro = st
        .iter()
        .find(|s| s.0.starts_with("WITH RECURSIVE typeinfo_tree"))
        .unwrap_or_else(|| panic!("{st:?}"));
    assert_eq!(intro.1, "deny");
    assert_eq!(intro.2, ["pg_catalog.array_agg", "shadow.array_agg"]);
}

/// Large objects through libpq's fast path, and nothing else called by OID.
const LARGE_OBJECTS: &str = r#"
[[rules]]
name = "large-objects"
action = "allow"
kinds = ["function_call"]
functions = ["pg_catalog.lo_*", "pg_catalog.lowrite", "pg_catalog.loread"]
permit_flags = ["volatile_function", "side_effect_function"]

[[rules]]
name = "housekeeping"
action = "allow"
kinds = ["select", "transaction"]
tables = ["pg_catalog.*"]
"#;

#[test]
fn a_function_call_message_is_judged_as_the_function_its_oid_names() {
    let pg = PgServer::start();
    pg.direct(SETUP);
    let proxy = Proxy::start(&pg, LARGE_OBJECTS);
    // psql's \lo_import: libpq calls lo_creat, lo_open, lowrite, lo_close by OID.
    let run = proxy.psql_script("\\lo_import '/etc/hostname'\n");
    assert!(run.stdout.starts_with("lo_import "), "{run:?}");
    assert_eq!(
        pg.direct("SELECT count(*) FROM pg_largeobject_metadata"),
        "1\n"
    );

    // A worker calling a user function that writes by its OID, and an OID no function
    // has: both refused, nothing written.
    let archive = pg.direct("SELECT 'public.archive_orders'::regproc::oid");
    let archive: u32 = archive.trim().parse().unwrap();
    let mut r = raw::Raw::login(&proxy);
    for oid in [archive, 999_999] {
        r.send(&[raw::function_call(oid)]);
        let answers = r.until_ready();
        assert_eq!(answers.len(), 2, "{answers:?}");
        assert_eq!(raw::sqlstate(&answers[0].1), "42501", "{answers:?}");
        assert!(
            raw::field(&answers[0].1, b'M').contains("(rule \"default\")"),
            "{answers:?}"
        );
    }
    assert_eq!(pg.direct("SELECT count(*) FROM audit_log"), "0\n");
    drop(r);

    // The journal names what each OID is.
    let calls: Vec<_> = statements(&proxy)
        .into_iter()
        .filter(|s| s.0.starts_with("<FunctionCall oid"))
        .collect();
    let lo: Vec<_> = calls.iter().filter(|c| c.1 == "allow").collect();
    assert!(
        lo.iter().any(|c| c.2 == ["pg_catalog.lowrite"])
            && lo.iter().all(|c| c.2[0].starts_with("pg_catalog.lo")),
        "{calls:?}"
    );
    let refused = |name: &str| {
        calls
            .iter()
            .find(|c| c.2 == [name])
            .unwrap_or_else(|| panic!("{name}: {calls:?}"))
    };
    let user = refused("public.archive_orders");
    assert_eq!(user.1, "deny");
    assert_eq!(user.3, ["user_function", "volatile_function"]);
    let unknown = refused("oid:999999");
    assert_eq!(unknown.1, "deny");
    assert_eq!(unknown.3, ["user_function", "volatile_function"]);
}
