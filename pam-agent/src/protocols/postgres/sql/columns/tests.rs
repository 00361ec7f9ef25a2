use super::{Clause, ColumnReference};
use crate::protocols::postgres::sql::classify;

fn refs(sql: &str) -> Vec<ColumnReference> {
    let mut v = classify(sql, 1 << 20).unwrap();
    assert_eq!(v.len(), 1, "{sql}");
    v.remove(0).request.columns
}

/// `schema.table.column@clause`, `?` for an unknown part.
fn short(sql: &str) -> Vec<String> {
    refs(sql)
        .into_iter()
        .map(|r| {
            format!(
                "{}.{}.{}@{:?}",
                r.schema.as_deref().unwrap_or("?"),
                r.table.as_deref().unwrap_or("?"),
                r.column.as_deref().unwrap_or("*"),
                r.clause
            )
        })
        .collect()
}

fn has(sql: &str, want: &str) {
    let got = short(sql);
    assert!(
        got.iter().any(|g| g == want),
        "{sql}\nwant {want}\ngot {got:?}"
    );
}

#[test]
fn where_resolves_aliases_and_single_tables() {
    let got =
        short("SELECT c.name FROM crm.customers c WHERE c.email LIKE 'a%' AND lower(phone) = 'x'");
    assert_eq!(
        got,
        ["crm.customers.email@Where", "crm.customers.phone@Where",]
    );
    // Unqualified table: schema unknown (matches any), table known.
    has(
        "SELECT 1 FROM customers WHERE ssn = '1'",
        "?.customers.ssn@Where",
    );
    // Select list and RETURNING are not side channels.
    assert!(short("SELECT ssn FROM p").is_empty());
    assert!(
        short("DELETE FROM p WHERE id = 1 RETURNING ssn")
            .iter()
            .all(|r| !r.contains("ssn"))
    );
}

#[test]
fn joins_leave_unqualified_columns_open() {
    let sql = "SELECT o.id FROM public.orders o JOIN customers c ON c.id = o.customer_id \
               JOIN addr USING (zip) WHERE email = 'x'";
    has(sql, "?.customers.id@Join");
    has(sql, "public.orders.customer_id@Join");
    has(sql, "public.orders.zip@Join");
    has(sql, "?.addr.zip@Join");
    // Several tables in scope: the table stays unknown.
    has(sql, "?.?.email@Where");
}

#[test]
fn order_by_ordinals_aliases_and_expressions() {
    has("SELECT name, ssn FROM p ORDER BY 2", "?.p.ssn@OrderBy");
    has("SELECT ssn AS s FROM p ORDER BY s", "?.p.ssn@OrderBy");
    has(
        "SELECT id FROM p ORDER BY CASE WHEN ssn LIKE '5%' THEN 0 ELSE 1 END",
        "?.p.ssn@OrderBy",
    );
    has(
        "SELECT email, count(*) FROM c GROUP BY email",
        "?.c.email@GroupBy",
    );
    has(
        "SELECT lower(email) e FROM c GROUP BY 1 HAVING count(*) > 1",
        "?.c.email@GroupBy",
    );
    has("SELECT DISTINCT ON (ssn) id FROM p", "?.p.ssn@DistinctOn");
    has(
        "SELECT ssn FROM a UNION SELECT tax_id FROM b ORDER BY 1",
        "?.b.tax_id@OrderBy",
    );
    has(
        "SELECT ssn FROM a UNION SELECT tax_id FROM b ORDER BY 1",
        "?.a.ssn@OrderBy",
    );
}

#[test]
fn window_functions_and_aggregate_filters() {
    has(
        "SELECT id, row_number() OVER (PARTITION BY ssn ORDER BY dob) FROM p",
        "?.p.ssn@Window",
    );
    has(
        "SELECT id, row_number() OVER (PARTITION BY ssn ORDER BY dob) FROM p",
        "?.p.dob@Window",
    );
    has(
        "SELECT rank() OVER w FROM p WINDOW w AS (ORDER BY salary)",
        "?.p.salary@Window",
    );
    has(
        "SELECT count(*) FILTER (WHERE ssn LIKE '5%') FROM p",
        "?.p.ssn@Where",
    );
    has(
        "SELECT string_agg(name, ',' ORDER BY ssn) FROM p",
        "?.p.ssn@OrderBy",
    );
}

#[test]
fn subqueries_exists_and_ctes() {
    // IN (sub-select): the sub-select's output is compared in the outer WHERE.
    // (`ssn` could be a column of the outer `orders`: the table stays unknown.)
    has(
        "SELECT id FROM orders WHERE customer_id IN (SELECT id FROM customers WHERE ssn LIKE '5%')",
        "?.?.ssn@Where",
    );
    has(
        "SELECT id FROM orders o WHERE customer_id IN (SELECT c.id FROM customers c WHERE c.ssn LIKE '5%')",
        "?.customers.ssn@Where",
    );
    has(
        "SELECT id FROM orders WHERE 'x' IN (SELECT c.email FROM customers c)",
        "?.customers.email@Where",
    );
    // Correlated: the inner WHERE could mean the outer table's column: unknown table.
    has(
        "SELECT id FROM p WHERE EXISTS (SELECT 1 FROM q WHERE ssn LIKE '5%')",
        "?.?.ssn@Where",
    );
    has(
        "SELECT id FROM p WHERE EXISTS (SELECT 1 FROM q WHERE q.pid = p.id AND p.ssn > '5')",
        "?.p.ssn@Where",
    );
    // A CTE renaming a column: the reference resolves through it.
    has(
        "WITH x AS (SELECT ssn AS s FROM people) SELECT 1 FROM x WHERE s LIKE '5%'",
        "?.people.ssn@Where",
    );
    has(
        "WITH x(s) AS (SELECT ssn FROM people) SELECT 1 FROM x, y WHERE s LIKE '5%'",
        "?.people.ssn@Where",
    );
    has(
        "SELECT 1 FROM (SELECT upper(ssn) AS s FROM hr.people) t WHERE t.s = 'A'",
        "hr.people.ssn@Where",
    );
    has(
        "SELECT 1 FROM (SELECT * FROM hr.people) t ORDER BY t.ssn",
        "hr.people.ssn@OrderBy",
    );
    // Conditions inside a CTE or a sub-select in the select list still count.
    has(
        "WITH x AS (SELECT id FROM people WHERE ssn > '5') SELECT * FROM x",
        "?.people.ssn@Where",
    );
    has(
        "SELECT (SELECT max(id) FROM p WHERE ssn > '5')",
        "?.p.ssn@Where",
    );
}

#[test]
fn dml_conditions() {
    has(
        "UPDATE people SET name = 'x' WHERE ssn = '1'",
        "?.people.ssn@Where",
    );
    has(
        "DELETE FROM hr.people p USING t WHERE p.ssn = t.v",
        "hr.people.ssn@Where",
    );
    has(
        "MERGE INTO people p USING src s ON p.ssn = s.ssn WHEN MATCHED THEN DELETE",
        "?.src.ssn@Join",
    );
    has(
        "INSERT INTO log SELECT id FROM people WHERE ssn LIKE '5%'",
        "?.people.ssn@Where",
    );
    has(
        "COPY (SELECT id FROM people ORDER BY ssn) TO STDOUT",
        "?.people.ssn@OrderBy",
    );
    has(
        "EXPLAIN ANALYZE SELECT id FROM people WHERE ssn = '1'",
        "?.people.ssn@Where",
    );
}

#[test]
fn plain_distinct_and_constants_reference_nothing() {
    assert!(
        short("SELECT DISTINCT a FROM t ORDER BY 1 + 1")
            .iter()
            .all(|r| !r.contains("OrderBy"))
    );
    assert!(short("SELECT 1 WHERE true").is_empty());
    assert_eq!(Clause::Where, Clause::Where);
}

/// `FROM t AS x(a, b)` renames t's columns by position, which only the catalog knows:
/// any name then stands for any column of t (`*`), so a masked one is never missed.
#[test]
fn column_aliases_of_a_table_may_name_any_of_its_columns() {
    has(
        "SELECT 1 FROM customers AS c(a, b, c, d) WHERE d LIKE '1%'",
        "?.customers.*@Where",
    );
    has(
        "SELECT 1 FROM customers AS c(a, b, c, d) ORDER BY c.d",
        "?.customers.*@OrderBy",
    );
    // Among several tables an unqualified name may still be any renamed column.
    has(
        "SELECT 1 FROM customers AS c(a, b, c, d), orders o WHERE d = o.id",
        "?.customers.*@Where",
    );
    has(
        "SELECT 1 FROM (SELECT * FROM customers AS c(a, b, c, d)) s GROUP BY d",
        "?.customers.*@GroupBy",
    );
    has(
        "SELECT 1 FROM customers AS c(a, b, c, d) JOIN orders o ON o.x = c.d",
        "?.customers.*@Join",
    );
    // Without column aliases the column keeps its name.
    has(
        "SELECT 1 FROM customers AS c WHERE c.d = 1",
        "?.customers.d@Where",
    );
}
