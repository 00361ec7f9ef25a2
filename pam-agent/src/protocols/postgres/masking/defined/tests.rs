use super::*;

fn at(table_oid: u32, attnum: i16) -> FieldSource {
    FieldSource { table_oid, attnum }
}

fn def(oid: u32, attnum: i16, table: &str, text: Option<&str>) -> Definition {
    Definition {
        source: at(oid, attnum),
        schema: "public".into(),
        table: table.into(),
        text: text.map(str::to_owned),
    }
}

fn names(v: &[ColumnName]) -> Vec<String> {
    v.iter().map(ToString::to_string).collect()
}

/// A table, two generated columns of it, a view renaming and computing, a view over that
/// view, and one whose definition cannot be read, as the preload reports them.
#[test]
fn views_and_generated_columns_lead_to_their_stored_columns() {
    let mut cache = HashMap::new();
    for (oid, table, cols) in [
        (
            100,
            "customers",
            &["id", "email", "ssn", "ssn_copy", "ssn_rev"][..],
        ),
        (200, "contacts", &["id", "contact", "r", "g"][..]),
        (300, "contacts2", &["c", "r2"][..]),
        (400, "odd", &["x"][..]),
    ] {
        for (i, c) in cols.iter().enumerate() {
            cache.insert(
                at(oid, i16::try_from(i + 1).unwrap()),
                Some(ResolvedColumn {
                    name: ColumnName::new("public", table, c),
                    ..ResolvedColumn::default()
                }),
            );
        }
    }
    let defs = [
        def(100, 4, "customers", Some("ssn")),
        def(100, 5, "customers", Some("reverse(ssn)")),
        def(
            200,
            0,
            "contacts",
            Some(
                " SELECT c.id,\n    c.email AS contact,\n    reverse(c.ssn) AS r,\n    c.ssn_copy AS g\n   FROM customers c;",
            ),
        ),
        def(
            300,
            0,
            "contacts2",
            Some(" SELECT contacts.contact AS c,\n    contacts.r AS r2\n   FROM contacts;"),
        ),
        def(400, 0, "odd", None),
    ];
    link(&mut cache, &defs);
    let col = |oid, n| cache[&at(oid, n)].clone().unwrap();
    assert_eq!(names(&col(100, 4).base), ["public.customers.ssn"]);
    assert!(col(100, 4).derived.is_empty());
    assert_eq!(names(&col(100, 5).derived), ["public.customers.ssn"]);
    assert!(col(200, 1).derived.is_empty());
    assert_eq!(names(&col(200, 2).base), ["public.customers.email"]);
    assert_eq!(names(&col(200, 3).derived), ["public.customers.ssn"]);
    // A rename of a generated copy is the stored column behind the copy.
    assert_eq!(names(&col(200, 4).base), ["public.customers.ssn"]);
    // Over a view: followed to the table.
    assert_eq!(names(&col(300, 1).base), ["public.customers.email"]);
    assert!(col(300, 1).derived.is_empty());
    assert_eq!(names(&col(300, 2).derived), ["public.customers.ssn"]);
    assert!(col(400, 1).unreadable);
    assert!(!col(300, 2).unreadable);
}

#[test]
fn definition_rows_are_read_from_the_preload() {
    let body = datarow::encode_body(&[
        Some(b"16390"),
        Some(b"0"),
        Some(b"d"),
        Some(b"public"),
        Some(b"v"),
        None,
    ]);
    assert_eq!(
        Definition::from_data_row(&body),
        Some(def(16390, 0, "v", None))
    );
    let other = datarow::encode_body(&[
        Some(b"1"),
        Some(b"1"),
        Some(b"c"),
        Some(b"public"),
        Some(b"t"),
        Some(b"x"),
    ]);
    assert_eq!(Definition::from_data_row(&other), None);
}

/// Column references that name no table (a join's unqualified columns) may be any
/// relation with such a column, the views themselves included: twenty such views once
/// took the preload's linking through every path of 16 levels (a session hung at its
/// first statement). They settle at once, and each still leads to the masked column.
#[test]
fn unqualified_references_across_many_views_settle() {
    let mut cache = HashMap::new();
    let mut add = |oid: u32, table: &str, cols: &[&str]| {
        for (i, c) in cols.iter().enumerate() {
            cache.insert(
                at(oid, i16::try_from(i + 1).unwrap()),
                Some(ResolvedColumn {
                    name: ColumnName::new("public", table, c),
                    ..ResolvedColumn::default()
                }),
            );
        }
    };
    add(100, "customers", &["id", "ssn"]);
    add(101, "other", &["id", "note"]);
    let views: Vec<(u32, String)> = (0..20).map(|i| (200 + i, format!("v{i}"))).collect();
    for (oid, name) in &views {
        add(*oid, name, &["id", "s", "r"]);
    }
    let defs: Vec<Definition> = views
        .iter()
        .map(|(oid, name)| {
            def(
                *oid,
                0,
                name,
                Some(" SELECT id, ssn AS s, reverse(ssn) AS r\n   FROM customers, other;"),
            )
        })
        .collect();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        link(&mut cache, &defs);
        let _ = tx.send(cache);
    });
    let cache = rx
        .recv_timeout(std::time::Duration::from_secs(20))
        .expect("linking did not finish");
    let col = |oid, n| cache[&at(oid, n)].clone().unwrap();
    for (oid, _) in &views {
        assert_eq!(names(&col(*oid, 2).base), ["public.customers.ssn"]);
        assert!(col(*oid, 2).derived.is_empty());
        assert_eq!(names(&col(*oid, 3).derived), ["public.customers.ssn"]);
        assert!(!col(*oid, 1).unreadable);
        assert!(col(*oid, 1).derived.is_empty());
    }
}

/// References that lead back to the column itself (through views that may be each other)
/// still carry what the other paths bring: no name is lost to the cycle.
#[test]
fn a_cycle_of_possible_references_keeps_every_name() {
    let mut cache = HashMap::new();
    for (oid, table, col) in [(100, "t", "x"), (200, "a", "x"), (300, "b", "x")] {
        cache.insert(
            at(oid, 1),
            Some(ResolvedColumn {
                name: ColumnName::new("public", table, col),
                ..ResolvedColumn::default()
            }),
        );
    }
    let defs = [
        def(200, 0, "a", Some(" SELECT upper(x) AS x FROM b, t;")),
        def(300, 0, "b", Some(" SELECT x FROM a, t;")),
    ];
    link(&mut cache, &defs);
    for oid in [200, 300] {
        let c = cache[&at(oid, 1)].clone().unwrap();
        assert!(
            names(&c.derived).contains(&"public.t.x".to_owned()),
            "{oid}: {c:?}"
        );
    }
}
