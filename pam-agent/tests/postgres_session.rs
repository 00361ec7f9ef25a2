//! The postgres session against a real PostgreSQL 15 with real clients (psql,
//! pgbench): what a worker sees for allowed and refused statements, and what the
//! journal says about them.

mod postgres_support;

use pam_agent::journal::Event;
use postgres_support::*;

#[test]
fn allowed_statements_return_what_a_direct_connection_returns() {
    let pg = PgServer::start();
    let proxy = Proxy::start(&pg, CREW_POLICY);
    let sql = "SELECT id, item, qty FROM orders ORDER BY id";
    let via = proxy.psql(sql);
    assert!(via.ok, "{via:?}");
    assert_eq!(via.stdout, pg.direct(sql));
    assert_eq!(via.stdout.lines().count(), 5);

    let decisions = proxy.decisions();
    assert_eq!(
        decisions,
        vec![(
            sql.to_owned(),
            "allow".to_owned(),
            "crew-public-rw".to_owned()
        )]
    );
    // The completion record carries the rows from CommandComplete ("SELECT 5").
    let completed: Vec<_> = proxy
        .settled_records()
        .into_iter()
        .filter_map(|r| match r.event {
            Event::StatementCompleted {
                statement,
                rows,
                error,
                ..
            } => Some((statement, rows, error)),
            _ => None,
        })
        .collect();
    assert_eq!(completed, vec![(1, Some(5), None)]);
    // The decision was on record before the statement went upstream.
    let seq_of = |f: &dyn Fn(&Event) -> bool| {
        proxy
            .settled_records()
            .iter()
            .find(|r| f(&r.event))
            .unwrap()
            .seq
    };
    assert!(
        seq_of(&|e| matches!(e, Event::Statement { .. }))
            < seq_of(&|e| matches!(e, Event::StatementCompleted { .. }))
    );
}

#[test]
fn notices_notifications_and_copy_through_psql() {
    let pg = PgServer::start();
    let proxy = Proxy::start(&pg, CREW_POLICY);
    let data = pg.dir().join("rows.tsv");
    std::fs::write(&data, "10\tten\t100\n11\televen\t110\n").unwrap();
    let out_file = pg.dir().join("out.tsv");
    let run = proxy.psql_script(&format!(
        "ROLLBACK;
         LISTEN jobs;
         NOTIFY jobs, 'hello';
         \\copy orders FROM '{}'
         \\copy (SELECT id, item FROM orders WHERE id >= 10 ORDER BY id) TO '{}'
         SELECT count(*) FROM orders;
         \\copy secret.keys TO '/dev/null'
",
        data.display(),
        out_file.display()
    ));
    assert!(
        run.stderr
            .contains("WARNING:  25P01: there is no transaction in progress"),
        "{run:?}"
    );
    assert!(
        run.stdout
            .contains("Asynchronous notification \"jobs\" with payload \"hello\" received"),
        "{run:?}"
    );
    assert!(run.stdout.contains("COPY 2\n"), "{run:?}");
    assert!(run.stdout.contains("\n7\n"), "{run:?}");
    assert_eq!(
        std::fs::read_to_string(&out_file).unwrap(),
        "10\tten\n11\televen\n"
    );
    assert!(
        run.stderr
            .contains("ERROR:  42501: pam-agent refused the statement (rule \"default\")"),
        "{run:?}"
    );
}

#[test]
fn fastpath_function_calls_are_judged_by_kind() {
    let pg = PgServer::start();
    // psql's \lo_import uses libpq's fast-path FunctionCall messages (lo_creat, lo_open,
    // lowrite...): refused unless a rule allows kind function_call (and the flags of
    // those functions, which the session looks up by OID).
    let proxy = Proxy::start(&pg, CREW_POLICY);
    let run = proxy.psql_script("\\lo_import '/etc/hostname'\nSELECT 'alive';\n");
    assert!(
        run.stderr
            .contains("ERROR:  42501: pam-agent refused the statement (rule \"default\")"),
        "{run:?}"
    );
    assert!(run.stdout.contains("alive"), "{run:?}");
    assert_eq!(
        pg.direct("SELECT count(*) FROM pg_largeobject_metadata"),
        "0\n"
    );
    let d = proxy.decisions();
    assert!(
        d.iter()
            .any(|(t, dec, _)| t.starts_with("<FunctionCall oid") && dec == "deny"),
        "{d:?}"
    );

    let policy = format!(
        "[[rules]]\nname = \"large-objects\"\naction = \"allow\"\nkinds = [\"function_call\", \"transaction\", \"select\"]\npermit_flags = [\"volatile_function\", \"side_effect_function\"]\n{CREW_POLICY}"
    );
    let proxy = Proxy::start(&pg, &policy);
    let run = proxy.psql_script("\\lo_import '/etc/hostname'\n");
    assert!(run.stdout.starts_with("lo_import "), "{run:?}");
    assert_eq!(
        pg.direct("SELECT count(*) FROM pg_largeobject_metadata"),
        "1\n"
    );
}

#[test]
fn refused_statement_gets_42501_naming_the_rule_and_the_session_continues() {
    let pg = PgServer::start();
    let proxy = Proxy::start(&pg, CREW_POLICY);
    let run = proxy.psql_script(
        "SELECT count(*) FROM orders;
         DELETE FROM orders;
         SELECT count(*) FROM orders;
         BEGIN;
         INSERT INTO orders VALUES (6, 'six', 60);
         DROP TABLE orders;
         SELECT count(*) FROM orders;
         COMMIT;
         SELECT k FROM secret.keys;
         SELECT 'still here';",
    );
    // The refused DROP failed the transaction block as the server's own error would:
    // the server ignores the next statement and COMMIT rolls the block back.
    assert_eq!(
        run.stdout, "5\n5\nBEGIN\nINSERT 0 1\nROLLBACK\nstill here\n",
        "{run:?}"
    );
    assert!(
        run.stderr
            .contains("ERROR:  25P02: current transaction is aborted, commands ignored"),
        "{}",
        run.stderr
    );
    assert!(
        run.stderr.contains(
            "ERROR:  42501: pam-agent refused the statement (rule \"no-unbounded-writes\")"
        ),
        "{}",
        run.stderr
    );
    assert!(
        run.stderr.contains(
            "ERROR:  42501: pam-agent refused the statement (rule \"schema-changes-need-approval\")"
        ),
        "{}",
        run.stderr
    );
    assert!(run.stderr.contains("approval required"), "{}", run.stderr);
    assert!(
        run.stderr
            .contains("ERROR:  42501: pam-agent refused the statement (rule \"default\")"),
        "{}",
        run.stderr
    );
    // Refused statements never reached the server: the table is there, and the insert
    // went with the block the refusal failed.
    assert_eq!(pg.direct("SELECT count(*) FROM orders"), "5\n");

    // One record per statement, in the order sent, with decision and rule.
    let d: Vec<(String, String)> = proxy
        .decisions()
        .into_iter()
        .map(|(text, decision, rule)| (text, format!("{decision} by {rule}")))
        .collect();
    let expected = [
        ("SELECT count(*) FROM orders", "allow by crew-public-rw"),
        ("DELETE FROM orders", "deny by no-unbounded-writes"),
        ("SELECT count(*) FROM orders", "allow by crew-public-rw"),
        ("BEGIN", "allow by crew-public-rw"),
        (
            "INSERT INTO orders VALUES (6, 'six', 60)",
            "allow by crew-public-rw",
        ),
        (
            "DROP TABLE orders",
            "require_approval by schema-changes-need-approval",
        ),
        // In the failed block the server also fails the agent's own catalog lookup for
        // the statement: not run, on record as such, the worker sees the server's 25P02.
        (
            "SELECT count(*) FROM orders",
            "deny by function_lookup_failed",
        ),
        ("COMMIT", "allow by crew-public-rw"),
        ("SELECT k FROM secret.keys", "deny by default"),
        ("SELECT 'still here'", "allow by crew-public-rw"),
    ];
    assert_eq!(
        d,
        expected.map(|(t, r)| (t.to_owned(), r.to_owned())).to_vec()
    );
}

#[test]
fn every_statement_of_a_multi_statement_query_is_judged() {
    let pg = PgServer::start();
    let proxy = Proxy::start(&pg, CREW_POLICY);
    let run = proxy.psql("INSERT INTO audit_log (note) VALUES ('x'); DROP TABLE orders; SELECT 1");
    assert!(!run.ok);
    assert!(
        run.stderr.starts_with(
            "ERROR:  42501: pam-agent refused the statement (rule \"schema-changes-need-approval\")"
        ),
        "{}",
        run.stderr
    );
    assert_eq!(run.stdout, "");
    // None of it ran.
    assert_eq!(pg.direct("SELECT count(*) FROM audit_log"), "0\n");
    assert_eq!(pg.direct("SELECT count(*) FROM orders"), "5\n");
    let run =
        proxy.psql("INSERT INTO audit_log (note) VALUES ('x'); SELECT count(*) FROM audit_log");
    assert!(run.ok, "{run:?}");
    assert_eq!(run.stdout, "INSERT 0 1\n1\n");
}

/// A message whose statements are allowed by different rules: each statement's record
/// names the rule that allowed it, not the first statement's.
#[test]
fn each_allowed_statement_of_a_message_is_on_record_with_its_own_rule() {
    let pg = PgServer::start();
    let policy = r#"
[[rules]]
name = "crew-writes"
action = "allow"
kinds = ["insert"]
tables = ["public.audit_log"]

[[rules]]
name = "crew-reads"
action = "allow"
kinds = ["select"]
tables = ["public.*", "pg_catalog.*"]
"#;
    let proxy = Proxy::start(&pg, policy);
    let run =
        proxy.psql("INSERT INTO audit_log (note) VALUES ('x'); SELECT count(*) FROM audit_log");
    assert!(run.ok, "{run:?}");
    assert_eq!(run.stdout, "INSERT 0 1\n1\n");
    let d: Vec<(String, String, String)> = proxy.decisions();
    assert_eq!(
        d,
        vec![
            (
                "INSERT INTO audit_log (note) VALUES ('x')".to_owned(),
                "allow".to_owned(),
                "crew-writes".to_owned()
            ),
            (
                "SELECT count(*) FROM audit_log".to_owned(),
                "allow".to_owned(),
                "crew-reads".to_owned()
            ),
        ]
    );
}

#[test]
fn evasion_forms_are_refused() {
    let pg = PgServer::start();
    pg.direct("CREATE EXTENSION IF NOT EXISTS dblink; SELECT lo_create(4242)");
    let proxy = Proxy::start(&pg, CREW_POLICY);
    // Each evasion, the decision the worker gets, and the rule that made it.
    let evasions = [
        (
            "WITH gone AS (DELETE FROM orders WHERE id > 0 RETURNING *) SELECT count(*) FROM gone",
            "deny",
            "default",
        ),
        (
            "EXPLAIN ANALYZE DELETE FROM orders",
            "deny",
            "no-unbounded-writes",
        ),
        (
            "CREATE TABLE stolen AS SELECT * FROM secret.keys",
            "require_approval",
            "schema-changes-need-approval",
        ),
        (
            "SELECT * INTO stolen FROM orders",
            "require_approval",
            "schema-changes-need-approval",
        ),
        (
            "DO $$ BEGIN EXECUTE 'DROP TABLE orders'; END $$",
            "deny",
            "default",
        ),
        (
            "COPY orders TO PROGRAM 'touch /tmp/pam-pwned'",
            "deny",
            "default",
        ),
        ("COPY orders FROM '/etc/passwd'", "deny", "default"),
        ("SET ROLE postgres", "deny", "default"),
        ("SET SESSION AUTHORIZATION postgres", "deny", "default"),
        (
            "SELECT set_config('role', 'postgres', false)",
            "deny",
            "default",
        ),
        ("SET search_path = secret, public", "deny", "default"),
        ("SELECT pg_read_file('/etc/passwd')", "deny", "default"),
        (
            "SELECT * FROM orders WHERE item = (SELECT pg_read_file('/etc/hostname'))",
            "deny",
            "default",
        ),
        ("SELECT lo_export(4242, '/tmp/pam-lo')", "deny", "default"),
        (
            "SELECT dblink_exec('dbname=postgres', 'DROP TABLE orders')",
            "deny",
            "default",
        ),
        (
            "SELECT query_to_xml('DELETE FROM orders RETURNING 1', true, true, '')",
            "deny",
            "default",
        ),
        (
            "PREPARE p AS DELETE FROM orders",
            "deny",
            "no-unbounded-writes",
        ),
        ("EXECUTE p", "deny", "default"),
        (
            "SELECT * FROM pg_catalog.pg_authid, secret.keys",
            "deny",
            "default",
        ),
        ("UPDATE orders SET qty = 0", "deny", "no-unbounded-writes"),
        (
            "ALTER SYSTEM SET log_statement = 'none'",
            "require_approval",
            "schema-changes-need-approval",
        ),
        (
            "GRANT ALL ON secret.keys TO PUBLIC",
            "require_approval",
            "schema-changes-need-approval",
        ),
        ("SELEC broken", "deny", "unclassifiable"),
        ("SELECT 1; SELECT k FROM secret.keys", "deny", "default"),
        ("SET NAMES 'SJIS'", "deny", "default"),
        ("SET standard_conforming_strings = off", "deny", "default"),
        (
            "SELECT set_config('client_encoding', 'BIG5', false)",
            "deny",
            "default",
        ),
    ];
    for (sql, _, rule) in evasions {
        let run = proxy.psql(sql);
        assert!(!run.ok, "{sql} was not refused: {run:?}");
        // The agent's refusal (SQLSTATE 42501 and the rule), not the server's own; a
        // text that does not parse gets the server's SQLSTATE for it, 42601.
        let code = if rule == "unclassifiable" {
            "42601"
        } else {
            "42501"
        };
        let refusal = format!("ERROR:  {code}: pam-agent refused the statement (rule \"{rule}\")");
        assert!(
            run.stderr.contains(&refusal),
            "{sql}: expected {refusal} in {}",
            run.stderr
        );
    }
    // Nothing happened on the server.
    assert_eq!(
        pg.direct("SELECT count(*), sum(qty) FROM orders"),
        "5|150\n"
    );
    assert_eq!(
        pg.direct("SELECT count(*) FROM pg_tables WHERE tablename = 'stolen'"),
        "0\n"
    );
    assert!(!std::path::Path::new("/tmp/pam-pwned").exists());
    // Each refusal is journaled with its decision and rule, one record per statement in
    // the order sent (the multi-statement query is two statements, both refused).
    let mut expected: Vec<(String, String, String)> = Vec::new();
    for (sql, decision, rule) in evasions {
        let texts: Vec<&str> = match sql {
            "SELECT 1; SELECT k FROM secret.keys" => vec!["SELECT 1", "SELECT k FROM secret.keys"],
            _ => vec![sql],
        };
        for t in texts {
            expected.push((t.into(), decision.into(), rule.into()));
        }
    }
    assert_eq!(proxy.decisions(), expected);
}

#[test]
fn rules_can_allow_flagged_statements_explicitly() {
    let pg = PgServer::start();
    let policy = format!(
        "{CREW_POLICY}
[[rules]]
name = \"cte-cleanup\"
action = \"allow\"
kinds = [\"select\", \"delete\"]
tables = [\"public.*\"]
permit_flags = [\"data_modifying_cte\"]
"
    );
    // crew-public-rw comes first and does not permit the flag; cte-cleanup does.
    let proxy = Proxy::start(&pg, &policy);
    let run = proxy.psql(
        "WITH gone AS (DELETE FROM orders WHERE id > 3 RETURNING *) SELECT count(*) FROM gone",
    );
    assert!(run.ok, "{run:?}");
    assert_eq!(run.stdout, "2\n");
    let d = proxy.decisions();
    assert_eq!(d[0].2, "cte-cleanup");
}

#[test]
fn a_statement_that_cannot_be_journaled_does_not_run() {
    let pg = PgServer::start();
    let mut opts = Options::policy(CREW_POLICY);
    opts.fail_journal_on = Some("unrecorded".into());
    let proxy = Proxy::with(&pg, opts);
    let run = proxy.psql("INSERT INTO audit_log (note) VALUES ('unrecorded')");
    assert!(!run.ok);
    assert!(
        run.stderr
            .contains("FATAL:  08006: pam-agent: audit journal unavailable"),
        "{}",
        run.stderr
    );
    assert_eq!(pg.direct("SELECT count(*) FROM audit_log"), "0\n");
    // Statements the journal can store still run.
    assert!(
        proxy
            .psql("INSERT INTO audit_log (note) VALUES ('recorded')")
            .ok
    );
    assert_eq!(pg.direct("SELECT count(*) FROM audit_log"), "1\n");
}

#[test]
fn sql_level_execute_is_judged_as_what_was_prepared() {
    let pg = PgServer::start();
    let proxy = Proxy::start(&pg, CREW_POLICY);
    let run = proxy.psql_script(
        "PREPARE item_of(int) AS SELECT item FROM orders WHERE id = $1;\n\
         EXECUTE item_of(2);\n\
         PREPARE wipe AS DELETE FROM orders;\n\
         EXECUTE wipe;\n\
         PREPARE peek AS SELECT k FROM secret.keys;\n\
         EXECUTE peek;\n\
         DEALLOCATE item_of;\n\
         EXECUTE item_of(3);\n\
         PREPARE again(int) AS SELECT qty FROM orders WHERE id = $1; EXECUTE again(4);\n",
    );
    assert_eq!(
        run.stdout, "PREPARE\nitem2\nDEALLOCATE\nPREPARE\n40\n",
        "{run:?}"
    );
    // The refused PREPAREs never reached the server, so their EXECUTEs name nothing
    // the agent knows: refused too; so is an EXECUTE after DEALLOCATE.
    let refusals = run.stderr.matches("42501").count();
    assert_eq!(refusals, 5, "{}", run.stderr);
    assert!(run.stderr.contains("no-unbounded-writes"), "{}", run.stderr);
    assert_eq!(pg.direct("SELECT count(*) FROM orders"), "5\n");
    // EXECUTE is journaled with what it runs.
    let executed = proxy
        .records()
        .into_iter()
        .find_map(|r| match r.event {
            pam_agent::journal::Event::Statement {
                text: Some(t),
                kinds,
                tables,
                decision,
                ..
            } if t == "EXECUTE item_of(2)" => Some((kinds, tables, decision.as_str())),
            _ => None,
        })
        .expect("EXECUTE journaled");
    assert_eq!(
        executed,
        (
            vec!["select".to_string()],
            vec!["public.orders".to_string()],
            "allow"
        )
    );
}
