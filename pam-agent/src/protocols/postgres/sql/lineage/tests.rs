use crate::protocols::postgres::sql::classify;

/// `schema.table.column` (`?` unknown, `*` whole row) with the functions passed through.
fn derived(sql: &str) -> Vec<String> {
    let sts = classify(sql, 1 << 20).unwrap();
    sts.into_iter()
        .flat_map(|s| s.request.derived)
        .map(|d| {
            let mut s = format!(
                "{}.{}.{}",
                d.schema.as_deref().unwrap_or("?"),
                d.table.as_deref().unwrap_or("?"),
                d.column.as_deref().unwrap_or("*")
            );
            // Functions only; other computations are checked below.
            let functions: Vec<&str> = d
                .through
                .iter()
                .map(String::as_str)
                .filter(|t| t.starts_with(|c: char| !c.is_ascii_uppercase()))
                .collect();
            if !functions.is_empty() {
                s.push_str(&format!(" via {}", functions.join(",")));
            }
            s
        })
        .collect()
}

fn has(sql: &str, want: &str) {
    let got = derived(sql);
    assert!(
        got.iter().any(|g| g == want),
        "{sql}\nwant {want}\ngot {got:?}"
    );
}

fn none(sql: &str) {
    let got = derived(sql);
    assert!(got.is_empty(), "{sql}\nwant nothing derived, got {got:?}");
}

#[test]
fn columns_returned_as_themselves_are_not_derived() {
    for sql in [
        "SELECT ssn FROM t",
        "SELECT t.ssn AS x, name FROM public.t",
        "SELECT * FROM t",
        "SELECT t.* FROM t JOIN u ON t.id = u.id",
        "SELECT ssn FROM (SELECT ssn FROM t) s",
        "SELECT s.x FROM (SELECT ssn AS x FROM t) s",
        "WITH c AS (SELECT ssn FROM t) SELECT ssn FROM c",
        "SELECT * FROM (SELECT * FROM t) s",
        "SELECT a.ssn FROM t a LEFT JOIN u b USING (id)",
        "SELECT ssn FROM t ORDER BY 1",
        "UPDATE t SET name = 'x' WHERE id = 1 RETURNING ssn",
        "DELETE FROM t RETURNING *",
        "COPY (SELECT ssn FROM t) TO STDOUT",
        "COPY t TO STDOUT",
        "DECLARE c CURSOR FOR SELECT ssn FROM t",
        "SELECT count(*) FROM t",
        "SELECT id, 1 + 2, now() FROM t",
        "SELECT ssn FROM t, generate_series(1, 3) g",
        "BEGIN",
        "SET application_name = 'x'",
    ] {
        none(sql);
    }
}

#[test]
fn functions_operators_and_casts_derive() {
    has("SELECT reverse(ssn) FROM t", "?.t.ssn via reverse");
    has(
        "SELECT substring(c.ssn, 1, 3) FROM crm.t c",
        "crm.t.ssn via substring",
    );
    has("SELECT ssn || '' FROM t", "?.t.ssn");
    has("SELECT ssn::bytea FROM t", "?.t.ssn");
    has("SELECT CAST(ssn AS bytea) FROM t", "?.t.ssn");
    has(
        "SELECT encode(convert_to(ssn, 'UTF8'), 'base64') FROM t",
        "?.t.ssn via convert_to,encode",
    );
    has("SELECT CASE WHEN true THEN ssn END FROM t", "?.t.ssn");
    has("SELECT coalesce(ssn, 'x') FROM t", "?.t.ssn");
    has("SELECT array_agg(ssn) FROM t", "?.t.ssn via array_agg");
    has("SELECT ARRAY[ssn] FROM t", "?.t.ssn");
    has("SELECT ROW(ssn, 1) FROM t", "?.t.ssn");
    has(
        "SELECT json_build_object('k', ssn) FROM t",
        "?.t.ssn via json_build_object",
    );
    has(
        "SELECT lag(ssn) OVER (ORDER BY id) FROM t",
        "?.t.ssn via lag",
    );
    has("SELECT count(ssn) FROM t", "?.t.ssn via count");
    has(
        "SELECT pg_catalog.count(ssn) FROM t",
        "?.t.ssn via pg_catalog.count",
    );
}

#[test]
fn whole_rows_derive() {
    has("SELECT c FROM t c", "?.t.*");
    has("SELECT to_json(t) FROM t", "?.t.* via to_json");
    has("SELECT row(t.*) FROM t", "?.t.*");
    has("SELECT (c).ssn FROM t c", "?.t.*");
    has("SELECT jsonb_agg(x) FROM crm.t x", "crm.t.* via jsonb_agg");
    has("SELECT s FROM (SELECT ssn FROM t) s", "?.t.ssn");
    has("SELECT count(t.*) FROM t", "?.t.* via count");
    // Column aliases of a table: `d` may be any of its columns.
    has(
        "SELECT reverse(d) FROM t AS x(a, b, c, d)",
        "?.t.* via reverse",
    );
    none("SELECT d FROM t AS x(a, b, c, d)");
}

#[test]
fn set_operations_values_and_functions_in_from_lose_the_origin() {
    has("SELECT ssn FROM t UNION SELECT 'x'", "?.t.ssn");
    has(
        "SELECT x FROM (SELECT ssn AS x FROM t UNION ALL SELECT ssn FROM u) s",
        "?.u.ssn",
    );
    has("SELECT * FROM t UNION SELECT * FROM t", "?.t.*");
    has(
        "SELECT v.x FROM (VALUES ((SELECT ssn FROM t LIMIT 1))) v(x)",
        "?.t.ssn",
    );
    has(
        "SELECT p FROM t, LATERAL unnest(string_to_array(t.ssn, '-')) p",
        "?.t.ssn via string_to_array,unnest",
    );
    has(
        "SELECT r FROM t, LATERAL (SELECT reverse(t.ssn) AS r) s",
        "?.t.ssn via reverse",
    );
    has("SELECT ssn FROM t a FULL JOIN t b USING (ssn)", "?.t.ssn");
    has(
        "WITH RECURSIVE r(x) AS (SELECT ssn FROM t UNION ALL SELECT x FROM r) SELECT x FROM r",
        "?.t.ssn",
    );
}

#[test]
fn subqueries_and_ctes_carry_derivations_outwards() {
    has("SELECT (SELECT ssn FROM t LIMIT 1)", "?.t.ssn");
    has("SELECT ARRAY(SELECT ssn FROM t)", "?.t.ssn");
    has("SELECT 'x' = ANY (SELECT ssn FROM t)", "?.t.ssn");
    has(
        "WITH c AS (SELECT reverse(ssn) AS r FROM t) SELECT r FROM c",
        "?.t.ssn via reverse",
    );
    has(
        "SELECT * FROM (SELECT reverse(ssn) r FROM t) s",
        "?.t.ssn via reverse",
    );
    // EXISTS returns no value of the sub-select.
    none("SELECT EXISTS (SELECT ssn FROM t)");
}

#[test]
fn copies_count_even_when_bare() {
    has("CREATE TABLE c AS SELECT ssn FROM t", "?.t.ssn");
    has("SELECT ssn INTO c FROM t", "?.t.ssn");
    has("CREATE VIEW v AS SELECT ssn AS contact FROM t", "?.t.ssn");
    has("CREATE MATERIALIZED VIEW v AS SELECT * FROM t", "?.t.*");
    has("INSERT INTO c SELECT ssn FROM t", "?.t.ssn");
    has(
        "INSERT INTO c (x) VALUES ((SELECT ssn FROM t LIMIT 1))",
        "?.t.ssn",
    );
    has("UPDATE t SET note = ssn", "?.t.ssn");
    has(
        "ALTER TABLE t ADD COLUMN r text GENERATED ALWAYS AS (reverse(ssn)) STORED",
        "?.?.ssn via reverse",
    );
    has(
        "DO $$ DECLARE x text; BEGIN SELECT ssn INTO x FROM t; RAISE NOTICE '%', x; END $$",
        "?.t.ssn",
    );
    has(
        "CREATE FUNCTION f() RETURNS text LANGUAGE sql AS 'SELECT ssn FROM t'",
        "?.t.ssn",
    );
    has("PREPARE p AS SELECT md5(ssn) FROM t", "?.t.ssn via md5");
    has(
        "COPY (SELECT upper(ssn) FROM t) TO STDOUT",
        "?.t.ssn via upper",
    );
}

#[test]
fn the_expression_is_quoted_as_written() {
    let sts = classify("SELECT id, reverse(ssn) AS r, name FROM t", 1 << 20).unwrap();
    let d = &sts[0].request.derived;
    assert_eq!(d.len(), 1, "{d:?}");
    assert_eq!(d[0].expression, "reverse(ssn)");
    let sts = classify(
        "SELECT CASE WHEN id > 1 THEN ssn ELSE 'x' END FROM t",
        1 << 20,
    )
    .unwrap();
    assert_eq!(
        sts[0].request.derived[0].expression,
        "CASE WHEN id > ? THEN ssn ELSE ? END"
    );
}

#[test]
fn what_is_computed_before_a_function_is_on_the_way_innermost_first() {
    let through = |sql: &str| -> Vec<String> {
        let sts = classify(sql, 1 << 20).unwrap();
        sts[0].request.derived[0].through.clone()
    };
    assert_eq!(through("SELECT count(ssn) FROM t"), ["count"]);
    assert_eq!(
        through("SELECT count(ssn::int) FROM t"),
        ["TypeCast", "count"]
    );
    assert_eq!(
        through("SELECT count(reverse(ssn)) FROM t"),
        ["reverse", "count"]
    );
    assert_eq!(through("SELECT ssn || 'x' FROM t"), ["AExpr"]);
}

#[test]
fn casts_and_functions_in_row_deciding_clauses_derive() {
    // They can fail with the value quoted in the error message.
    has("SELECT id FROM t WHERE ssn::int = 0", "?.t.ssn");
    has(
        "SELECT id FROM t WHERE length(ssn) > 3",
        "?.t.ssn via length",
    );
    has(
        "SELECT id FROM t a JOIN u b ON a.ssn::date = b.d",
        "?.t.ssn",
    );
    has("SELECT id FROM t ORDER BY ssn::uuid", "?.t.ssn");
    has("SELECT id FROM t LIMIT (SELECT ssn::int FROM t)", "?.?.ssn");
    has(
        "SELECT count(*) FILTER (WHERE ssn::int > 0) FROM t",
        "?.t.ssn",
    );
    has("UPDATE t SET a = 1 WHERE ssn::regclass IS NULL", "?.t.ssn");
    has(
        "SELECT id FROM t WHERE EXISTS (SELECT 1 FROM u WHERE u.ssn::int = 1)",
        "?.u.ssn",
    );
    // Plain comparisons and aggregates that cannot fail are the side-channel guard's.
    none("SELECT id FROM t WHERE ssn = 'x' AND email LIKE 'a%' ORDER BY ssn");
    let sts = classify("SELECT id FROM t WHERE ssn::int = 0", 1 << 20).unwrap();
    assert_eq!(sts[0].request.derived[0].expression, "WHERE clause");
}

/// View definitions as `pg_get_viewdef` prints them, and generated columns' expressions.
#[test]
fn defined_outputs_follow_renames_and_computations() {
    let col = |t: &str, c: &str| super::DefinedRef {
        schema: None,
        table: Some(t.into()),
        column: Some(c.into()),
    };
    let outs = super::defined_outputs(
        " SELECT c.id,\n    c.email AS contact,\n    reverse(c.ssn) AS r\n   FROM customers c;",
    )
    .unwrap();
    assert_eq!(outs.len(), 3);
    assert!(outs[1].direct, "a rename is the column itself");
    assert_eq!(outs[1].refs, [col("customers", "email")]);
    assert!(!outs[2].direct, "a computation is derived");
    assert_eq!(outs[2].refs, [col("customers", "ssn")]);
    let union = super::defined_outputs("SELECT email FROM a UNION SELECT email FROM b").unwrap();
    assert!(!union[0].direct);
    let generated = super::defined_outputs("SELECT (ssn || ''::text) FROM public.t").unwrap();
    assert!(!generated[0].direct);
    assert_eq!(generated[0].refs[0].column.as_deref(), Some("ssn"));
    let copy = super::defined_outputs("SELECT ssn FROM public.t").unwrap();
    assert!(copy[0].direct);
    assert_eq!(super::defined_outputs("SELECT 1; SELECT 2"), None);
    assert_eq!(super::defined_outputs("VALUES (1)"), None);
    assert_eq!(super::defined_outputs("not sql"), None);
}

/// Each derivation's place in the statement's own result (`-`: none).
fn slots(sql: &str) -> Vec<String> {
    use crate::mask::Slot;
    let sts = classify(sql, 1 << 20).unwrap();
    let mut out: Vec<String> = sts
        .into_iter()
        .flat_map(|s| s.request.derived)
        .map(|d| {
            let at = match d.output {
                Some(Slot::FromStart(i)) => format!("+{i}"),
                Some(Slot::FromEnd(i)) => format!("-{i}"),
                None => "-".into(),
            };
            format!("{} {at}", d.column.as_deref().unwrap_or("*"))
        })
        .collect();
    out.sort();
    out.dedup();
    out
}

#[test]
fn computed_values_of_the_result_know_their_place() {
    let cases: &[(&str, &[&str])] = &[
        ("SELECT id, reverse(ssn) FROM t", &["ssn +1"]),
        (
            "SELECT reverse(ssn), upper(email) AS e FROM t",
            &["email +1", "ssn +0"],
        ),
        // After a `*`, counted from the end; between two, unknown.
        ("SELECT *, reverse(ssn), id FROM t", &["ssn -1"]),
        ("SELECT t.*, md5(ssn), u.* FROM t, u", &["ssn -"]),
        (
            "SELECT ssn || '' FROM t UNION SELECT name FROM u",
            &["name +0", "ssn +0"],
        ),
        ("SELECT c FROM t c", &["* +0", "c +0"]),
        (
            "SELECT (SELECT reverse(ssn) FROM t LIMIT 1) AS x",
            &["ssn +0"],
        ),
        (
            "UPDATE t SET name = 'x' RETURNING id, reverse(ssn)",
            &["ssn +1"],
        ),
        // Rows that leave another way, or are kept: no place.
        ("COPY (SELECT reverse(ssn) FROM t) TO STDOUT", &["ssn -"]),
        (
            "DECLARE c CURSOR FOR SELECT reverse(ssn) FROM t",
            &["ssn -"],
        ),
        ("EXPLAIN ANALYZE SELECT reverse(ssn) FROM t", &["ssn -"]),
        ("CREATE TABLE x AS SELECT reverse(ssn) FROM t", &["ssn -"]),
        // What a prepared statement selects is kept: any column of any table.
        ("CREATE TABLE x AS EXECUTE p", &["* -"]),
        (
            "INSERT INTO x SELECT reverse(ssn) FROM t RETURNING id",
            &["ssn -"],
        ),
        ("SELECT id FROM t WHERE ssn::int = 0", &["ssn -"]),
        ("SELECT * FROM (SELECT reverse(ssn) FROM t) s", &["ssn -"]),
        (
            "WITH d AS (DELETE FROM t RETURNING reverse(ssn) AS r) SELECT 1",
            &["ssn -"],
        ),
        // PREPARE: the place in a later EXECUTE's result.
        ("PREPARE p AS SELECT id, reverse(ssn) FROM t", &["ssn +1"]),
    ];
    for (sql, want) in cases {
        assert_eq!(slots(sql), *want, "{sql}");
    }
}

#[test]
fn returning_lists_are_read_as_results() {
    // PostgreSQL 18's parser keeps RETURNING in a clause of its own: a value computed
    // there is derived like one in a select list.
    has(
        "UPDATE t SET name = 'x' RETURNING reverse(ssn)",
        "?.t.ssn via reverse",
    );
    has("DELETE FROM t RETURNING md5(ssn)", "?.t.ssn via md5");
    has(
        "INSERT INTO t(id) VALUES (1) RETURNING ssn || ''",
        "?.t.ssn",
    );
    // `old`/`new` aliases are not placed in a table: matched by the column name alone.
    has(
        "INSERT INTO t(id) VALUES (1) RETURNING WITH (OLD AS o) upper(o.ssn)",
        "?.?.ssn via upper",
    );
    none("UPDATE t SET name = 'x' RETURNING ssn, id");
}
