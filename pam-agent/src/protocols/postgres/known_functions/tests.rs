use super::*;
use crate::protocols::postgres::sql::classify;

fn group(schema: &str, marks: &str, sigs: &[&str]) -> Group {
    Group {
        schema: schema.into(),
        volatile: marks.contains('v'),
        security_definer: marks.contains('s'),
        user: marks.contains('u'),
        flexible: marks.contains('x'),
        languages: vec!["internal".into()],
        signatures: sigs.iter().map(|s| s.to_string()).collect(),
    }
}

fn known(path: &[&str], functions: &[(&str, Group)]) -> KnownFunctions {
    let mut k = KnownFunctions::new();
    let mut rows = vec![Row::Path {
        schemas: path.iter().map(|s| s.to_string()).collect(),
        role: "crew".into(),
    }];
    let mut asked = Vec::new();
    for (name, g) in functions {
        asked.push(name.to_string());
        rows.push(Row::Function {
            name: name.to_string(),
            group: g.clone(),
        });
    }
    k.absorb(&asked, rows);
    k
}

fn flags(r: &Resolved) -> Vec<&'static str> {
    r.flags.iter().map(|f| f.as_str()).collect()
}

#[test]
fn built_ins_resolve_to_pg_catalog_and_carry_their_volatility() {
    let k = known(
        &["pg_catalog", "public"],
        &[
            ("upper", group("pg_catalog", "", &["25"])),
            ("nextval", group("pg_catalog", "v", &["2205"])),
        ],
    );
    let r = k.resolve("upper");
    assert_eq!(r.names, ["pg_catalog.upper"]);
    assert!(r.flags.is_empty());
    assert_eq!(k.resolve("pg_catalog.upper").names, ["pg_catalog.upper"]);
    let r = k.resolve("nextval");
    assert_eq!(r.names, ["pg_catalog.nextval"]);
    assert_eq!(flags(&r), ["volatile_function"]);
    // Written qualified into a schema that has none: unknown, read as the worst.
    let r = k.resolve("public.upper");
    assert_eq!(r.names, ["public.upper"]);
    assert_eq!(flags(&r), ["user_function", "volatile_function"]);
}

#[test]
fn a_shadow_earlier_on_the_path_is_what_runs() {
    let upper = [
        ("upper", group("pg_catalog", "", &["25"])),
        ("upper", group("public", "vu", &["25"])),
    ];
    // pg_catalog first (implicitly): the same signature in public is never reached.
    let k = known(&["pg_catalog", "public"], &upper);
    let r = k.resolve("upper");
    assert_eq!(r.names, ["pg_catalog.upper"]);
    assert!(r.flags.is_empty());
    // public first (search_path = public, pg_catalog): the user function runs.
    let k = known(&["public", "pg_catalog"], &upper);
    let r = k.resolve("upper");
    assert_eq!(r.names, ["public.upper"]);
    assert_eq!(flags(&r), ["user_function", "volatile_function"]);
}

#[test]
fn a_later_overload_that_could_win_counts_as_called() {
    // public.upper(varchar) can win overload resolution for a varchar argument even with
    // pg_catalog first; so can one with defaults or a variadic one.
    for g in [
        group("public", "vu", &["1043"]),
        group("public", "vux", &["25"]),
    ] {
        let k = known(
            &["pg_catalog", "public"],
            &[("upper", group("pg_catalog", "", &["25"])), ("upper", g)],
        );
        let r = k.resolve("upper");
        assert_eq!(r.names, ["pg_catalog.upper", "public.upper"]);
        assert_eq!(flags(&r), ["user_function", "volatile_function"]);
    }
}

#[test]
fn unknown_calls_and_unknown_paths_read_as_the_worst() {
    let k = KnownFunctions::new();
    assert_eq!(
        flags(&k.resolve("count")),
        ["user_function", "volatile_function"]
    );
    let k = known(
        &["pg_catalog", "public"],
        &[("count", group("pg_catalog", "", &["2276"]))],
    );
    assert_eq!(
        flags(&k.resolve("archive_orders")),
        ["user_function", "volatile_function"]
    );
    assert_eq!(
        flags(&k.resolve("other.db.count")),
        ["user_function", "volatile_function"]
    );
    let r = known(
        &["pg_catalog"],
        &[("definer", group("public", "su", &[""]))],
    )
    .resolve("public.definer");
    assert_eq!(flags(&r), ["security_definer", "user_function"]);
}

#[test]
fn a_change_in_the_same_message_leaves_later_calls_unknown() {
    let k = known(
        &["pg_catalog", "public"],
        &[("upper", group("pg_catalog", "", &["25"]))],
    );
    let sts = classify(
        "SELECT upper('a'); SET search_path = public, pg_catalog; SELECT upper('b')",
        1 << 20,
    )
    .unwrap();
    let out = k.resolve_all(&sts, true);
    assert!(out[0].flags.is_empty(), "{:?}", out[0].flags);
    assert_eq!(
        out[0].functions.iter().collect::<Vec<_>>(),
        ["pg_catalog.upper"]
    );
    assert!(out[2].flags.contains(&flag::USER_FUNCTION));
    assert!(out[2].flags.contains(&flag::VOLATILE_FUNCTION));
    // Nothing to look up past the change: a lookup would not see it.
    let mut k = k;
    k.forget();
    let sts = classify("SET search_path = public; SELECT lower('x')", 1 << 20).unwrap();
    assert!(k.missing(&sts).is_empty());
    let sts = classify("SELECT lower('x'), pg_catalog.upper('y')", 1 << 20).unwrap();
    assert_eq!(k.missing(&sts), ["lower", "upper"]);
}

#[test]
fn changes_drop_knowledge_and_a_batch_change_blocks_lookups_until_sync() {
    let mut k = known(
        &["pg_catalog", "public"],
        &[("upper", group("pg_catalog", "", &["25"]))],
    );
    let sel = classify("SELECT upper('a')", 1 << 20).unwrap();
    assert!(k.missing(&sel).is_empty());
    for text in [
        "CREATE FUNCTION public.f() RETURNS int LANGUAGE sql AS 'SELECT 1'",
        "SET search_path = public, pg_catalog",
        "SET ROLE other",
        "RESET ALL",
        "DISCARD ALL",
        "SELECT set_config('search_path', 'public', false)",
        "/* driver */ RESET ALL",
    ] {
        let mut k = known(
            &["pg_catalog", "public"],
            &[("upper", group("pg_catalog", "", &["25"]))],
        );
        let st = classify(text, 1 << 20).unwrap();
        k.forwarded(&st.iter().collect::<Vec<_>>(), true);
        assert_eq!(k.missing(&sel), ["upper"], "{text}");
        assert!(!k.can_look_up(), "{text}");
        k.batch_closed();
        assert!(k.can_look_up(), "{text}");
    }
    // Ordinary statements change nothing.
    let st = classify(
        "SELECT 1; INSERT INTO t VALUES (1); SHOW search_path",
        1 << 20,
    )
    .unwrap();
    k.forwarded(&st.iter().collect::<Vec<_>>(), false);
    assert!(k.missing(&sel).is_empty());
    // The end of a transaction that changed the path may undo the change.
    let set = classify("SET LOCAL search_path = public", 1 << 20).unwrap();
    k.forwarded(&set.iter().collect::<Vec<_>>(), false);
    k.absorb(
        &["upper".into()],
        vec![Row::Path {
            schemas: vec!["public".into()],
            role: "crew".into(),
        }],
    );
    let commit = classify("COMMIT", 1 << 20).unwrap();
    k.forwarded(&commit.iter().collect::<Vec<_>>(), false);
    assert_eq!(k.missing(&sel), ["upper"]);
}

#[test]
fn names_split_back_exactly() {
    assert_eq!(split_name("upper").unwrap(), ["upper"]);
    assert_eq!(
        split_name("pg_catalog.upper").unwrap(),
        ["pg_catalog", "upper"]
    );
    // A function named "pg_catalog.upper" in the search path is not pg_catalog's upper.
    let sts = classify(r#"SELECT "pg_catalog.upper"('x'), "a""b"()"#, 1 << 20).unwrap();
    let names: Vec<&String> = sts[0].functions.iter().collect();
    assert_eq!(names, [r#""a""b""#, r#""pg_catalog.upper""#]);
    assert_eq!(split_name(names[1]).unwrap(), ["pg_catalog.upper"]);
    assert_eq!(split_name(names[0]).unwrap(), [r#"a"b"#]);
    assert_eq!(split_name("oid:42"), None);
    let k = known(
        &["pg_catalog", "public"],
        &[("upper", group("pg_catalog", "", &["25"]))],
    );
    assert_eq!(
        flags(&k.resolve(names[1])),
        ["user_function", "volatile_function"]
    );
}

#[test]
fn lookup_rows_and_the_bound_names() {
    let body = datarow::encode_body(&[
        Some(b"f"),
        Some(b"public"),
        Some(b"upper"),
        Some(b"vsux"),
        Some(b"plpgsql"),
        Some(b"25;1043"),
    ]);
    assert_eq!(
        Row::from_data_row(&body).unwrap(),
        Row::Function {
            name: "upper".into(),
            group: Group {
                schema: "public".into(),
                volatile: true,
                security_definer: true,
                user: true,
                flexible: true,
                languages: vec!["plpgsql".into()],
                signatures: vec!["25".into(), "1043".into()],
            }
        }
    );
    let body = datarow::encode_body(&[
        Some(b"p"),
        Some(b"pg_catalog,public"),
        Some(b"crew"),
        Some(b""),
        Some(b""),
        Some(b""),
    ]);
    assert_eq!(
        Row::from_data_row(&body).unwrap(),
        Row::Path {
            schemas: vec!["pg_catalog".into(), "public".into()],
            role: "crew".into()
        }
    );
    assert_eq!(
        Row::from_data_row(&datarow::encode_body(&[Some(b"x")])),
        Err(LookupError::Malformed)
    );
    assert_eq!(
        text_array(&["a".into(), r#"b"c\d"#.into()]),
        r#"{"a","b\"c\\d"}"#
    );
}

#[test]
fn a_function_call_oid_resolves_to_the_function_it_names_or_reads_as_unknown() {
    let row = |name: &str, g: Group| Row::Function {
        name: name.into(),
        group: g,
    };
    let r = resolve_oid(964, &[row("lo_unlink", group("pg_catalog", "v", &["26"]))]);
    assert_eq!(r.names, ["pg_catalog.lo_unlink"]);
    assert_eq!(flags(&r), ["side_effect_function", "volatile_function"]);
    let r = resolve_oid(16390, &[row("wipe", group("public", "vsu", &[""]))]);
    assert_eq!(r.names, ["public.wipe"]);
    assert_eq!(
        flags(&r),
        ["security_definer", "user_function", "volatile_function"]
    );
    let r = resolve_oid(999_999, &[]);
    assert_eq!(r.names, ["oid:999999"]);
    assert_eq!(flags(&r), ["user_function", "volatile_function"]);
}
