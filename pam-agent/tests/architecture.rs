//! The dependency rules of ARCHITECTURE.md, checked on the source so that CI fails when one
//! breaks:
//! - nothing outside `protocols/` names PostgreSQL (identifiers or paths `postgres`,
//!   `Postgres`, `pg_…`), except the few places listed in [`POSTGRES_NAMED_OUTSIDE`];
//! - `journal/` imports no policy, masking, protocol, core (`govern`) or proxy;
//! - `policy/` imports no protocol, masking, journal, tokio, `std::fs` or `std::net`;
//! - `protocols/postgres/wire/` knows no SQL, policy or core;
//! - `mask/` imports no protocol, journal or tokio.
//!
//! The checker reads `pam-agent/src/**/*.rs` as text: comments, string and character
//! literals and `#[cfg(test)]` modules are removed, `use` trees are expanded and `self::` /
//! `super::` resolved to `crate::` paths, and every path a rule forbids is reported with
//! its file. Each rule has a control test that feeds it a violating snippet.

use std::path::{Path, PathBuf};

/// One source file: its path under `src/` (`mask/plan.rs`) and its text.
struct Source {
    rel: String,
    text: String,
}

fn sources() -> Vec<Source> {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let mut files = Vec::new();
    walk(&root, &mut files);
    files.sort();
    let all: Vec<Source> = files
        .into_iter()
        .map(|p| Source {
            rel: p
                .strip_prefix(&root)
                .unwrap()
                .to_string_lossy()
                .replace('\\', "/"),
            text: std::fs::read_to_string(&p).unwrap(),
        })
        .collect();
    // Files of `#[cfg(test)] mod name;` (unit tests kept beside the code) are no product.
    let tests: Vec<String> = all
        .iter()
        .flat_map(|s| test_module_files(&s.rel, &s.text))
        .collect();
    let sources: Vec<Source> = all
        .into_iter()
        .filter(|s| !tests.contains(&s.rel))
        .collect();
    assert!(
        sources.len() > 50,
        "read the crate's sources: {}",
        sources.len()
    );
    sources
}

fn walk(dir: &Path, out: &mut Vec<PathBuf>) {
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() {
            walk(&path, out);
        } else if path.extension().is_some_and(|e| e == "rs") {
            out.push(path);
        }
    }
}

// ---------------------------------------------------------------------------------------
// Reading Rust source as far as the rules need.

/// The code without comments, string/char literals (replaced by spaces, lines kept).
fn strip(src: &str) -> String {
    let c: Vec<char> = src.chars().collect();
    let mut out = String::with_capacity(src.len());
    let ident = |ch: char| ch.is_alphanumeric() || ch == '_';
    let blank = |out: &mut String, s: &[char]| {
        for &ch in s {
            out.push(if ch == '\n' { '\n' } else { ' ' });
        }
    };
    let mut i = 0;
    while i < c.len() {
        let prev_ident = i > 0 && ident(c[i - 1]);
        if c[i] == '/' && c.get(i + 1) == Some(&'/') {
            let end = c[i..]
                .iter()
                .position(|&x| x == '\n')
                .map_or(c.len(), |p| i + p);
            blank(&mut out, &c[i..end]);
            i = end;
        } else if c[i] == '/' && c.get(i + 1) == Some(&'*') {
            let (mut depth, mut j) = (1, i + 2);
            while j < c.len() && depth > 0 {
                if c[j] == '/' && c.get(j + 1) == Some(&'*') {
                    depth += 1;
                    j += 2;
                } else if c[j] == '*' && c.get(j + 1) == Some(&'/') {
                    depth -= 1;
                    j += 2;
                } else {
                    j += 1;
                }
            }
            blank(&mut out, &c[i..j]);
            i = j;
        } else if c[i] == 'r'
            && (!prev_ident || (i > 0 && c[i - 1] == 'b' && !(i > 1 && ident(c[i - 2]))))
            && matches!(c.get(i + 1), Some('"') | Some('#'))
        {
            let hashes = c[i + 1..].iter().take_while(|&&x| x == '#').count();
            if c.get(i + 1 + hashes) != Some(&'"') {
                out.push(c[i]);
                i += 1;
                continue;
            }
            let mut j = i + 2 + hashes;
            while j < c.len() {
                if c[j] == '"'
                    && c[j + 1..]
                        .iter()
                        .take(hashes)
                        .filter(|&&x| x == '#')
                        .count()
                        == hashes
                {
                    j += 1 + hashes;
                    break;
                }
                j += 1;
            }
            blank(&mut out, &c[i..j.min(c.len())]);
            i = j;
        } else if c[i] == '"' {
            let mut j = i + 1;
            while j < c.len() && c[j] != '"' {
                j += if c[j] == '\\' { 2 } else { 1 };
            }
            let end = (j + 1).min(c.len());
            blank(&mut out, &c[i..end]);
            i = end;
        } else if c[i] == '\'' && !prev_ident {
            // A character literal ('x', '\n', '\u{..}'), else a lifetime or label.
            let end = if c.get(i + 1) == Some(&'\\') {
                c[i + 2..]
                    .iter()
                    .position(|&x| x == '\'')
                    .map(|p| i + 2 + p + 1)
            } else if c.get(i + 2) == Some(&'\'') {
                Some(i + 3)
            } else {
                None
            };
            match end {
                Some(end) => {
                    blank(&mut out, &c[i..end]);
                    i = end;
                }
                None => {
                    out.push(c[i]);
                    i += 1;
                }
            }
        } else {
            out.push(c[i]);
            i += 1;
        }
    }
    out
}

#[derive(Debug, Clone, PartialEq)]
enum Tok {
    Ident(String),
    Punct(&'static str),
    Other(char),
}

fn tokens(code: &str) -> Vec<Tok> {
    let c: Vec<char> = code.chars().collect();
    let mut out = Vec::new();
    let mut i = 0;
    while i < c.len() {
        let ch = c[i];
        if ch.is_alphabetic() || ch == '_' {
            let start = i;
            while i < c.len() && (c[i].is_alphanumeric() || c[i] == '_') {
                i += 1;
            }
            let word: String = c[start..i].iter().collect();
            out.push(Tok::Ident(word.trim_start_matches("r#").to_string()));
            continue;
        }
        if ch == ':' && c.get(i + 1) == Some(&':') {
            out.push(Tok::Punct("::"));
            i += 2;
            continue;
        }
        match ch {
            '{' => out.push(Tok::Punct("{")),
            '}' => out.push(Tok::Punct("}")),
            ',' => out.push(Tok::Punct(",")),
            ';' => out.push(Tok::Punct(";")),
            '*' => out.push(Tok::Punct("*")),
            '#' => out.push(Tok::Punct("#")),
            '[' => out.push(Tok::Punct("[")),
            ']' => out.push(Tok::Punct("]")),
            '(' => out.push(Tok::Punct("(")),
            ')' => out.push(Tok::Punct(")")),
            c if c.is_whitespace() => {}
            c => out.push(Tok::Other(c)),
        }
        i += 1;
    }
    out
}

fn is_ident(t: Option<&Tok>, word: &str) -> bool {
    matches!(t, Some(Tok::Ident(w)) if w == word)
}

/// Drops `#[cfg(test)]` items (`mod tests { .. }`, test-only functions): the rules are
/// about what the product depends on.
fn without_test_items(toks: Vec<Tok>) -> Vec<Tok> {
    let mut out = Vec::with_capacity(toks.len());
    let mut i = 0;
    while i < toks.len() {
        let cfg_test = toks[i] == Tok::Punct("#")
            && toks.get(i + 1) == Some(&Tok::Punct("["))
            && is_ident(toks.get(i + 2), "cfg")
            && toks.get(i + 3) == Some(&Tok::Punct("("))
            && is_ident(toks.get(i + 4), "test")
            && toks.get(i + 5) == Some(&Tok::Punct(")"))
            && toks.get(i + 6) == Some(&Tok::Punct("]"));
        if !cfg_test {
            out.push(toks[i].clone());
            i += 1;
            continue;
        }
        // Skip the item: up to its `;` or its balanced `{ .. }` block.
        let mut j = i + 7;
        while j < toks.len() && toks[j] != Tok::Punct(";") && toks[j] != Tok::Punct("{") {
            j += 1;
        }
        if toks.get(j) == Some(&Tok::Punct("{")) {
            let mut depth = 0;
            while j < toks.len() {
                match toks[j] {
                    Tok::Punct("{") => depth += 1,
                    Tok::Punct("}") => {
                        depth -= 1;
                        if depth == 0 {
                            break;
                        }
                    }
                    _ => {}
                }
                j += 1;
            }
        }
        i = j + 1;
    }
    out
}

/// The files a file's `#[cfg(test)] mod name;` declarations refer to.
fn test_module_files(rel: &str, text: &str) -> Vec<String> {
    let toks = tokens(&strip(text));
    let dir = module_of(rel).join("/");
    let dir = if dir.is_empty() {
        dir
    } else {
        format!("{dir}/")
    };
    let mut out = Vec::new();
    for w in toks.windows(10) {
        if let [
            Tok::Punct("#"),
            Tok::Punct("["),
            Tok::Ident(cfg),
            Tok::Punct("("),
            Tok::Ident(test),
            Tok::Punct(")"),
            Tok::Punct("]"),
            Tok::Ident(m),
            Tok::Ident(name),
            Tok::Punct(";"),
        ] = w
            && cfg == "cfg"
            && test == "test"
            && m == "mod"
        {
            out.push(format!("{dir}{name}.rs"));
            out.push(format!("{dir}{name}/mod.rs"));
        }
    }
    out
}

/// The module path of a file under `src/`: `mask/plan.rs` → `[mask, plan]`.
fn module_of(rel: &str) -> Vec<String> {
    let mut parts: Vec<String> = rel
        .trim_end_matches(".rs")
        .split('/')
        .map(String::from)
        .collect();
    if matches!(
        parts.last().map(String::as_str),
        Some("mod" | "lib" | "main")
    ) {
        parts.pop();
    }
    parts
}

/// `self::` / `super::` / `crate::` made absolute (`crate::a::b`); other paths unchanged.
fn resolve(module: &[String], path: &[String]) -> String {
    let mut base: Vec<String> = Vec::new();
    let mut rest = path;
    match path.first().map(String::as_str) {
        Some("crate") => {
            base.push("crate".into());
            rest = &path[1..];
        }
        Some("self") => {
            base.push("crate".into());
            base.extend(module.iter().cloned());
            rest = &path[1..];
        }
        Some("super") => {
            let ups = path.iter().take_while(|s| *s == "super").count();
            base.push("crate".into());
            base.extend(
                module
                    .iter()
                    .take(module.len().saturating_sub(ups))
                    .cloned(),
            );
            rest = &path[ups..];
        }
        _ => {}
    }
    base.extend(rest.iter().filter(|s| *s != "self").cloned());
    base.join("::")
}

/// Expands one `use` tree starting at `toks[*i]` into full paths.
fn use_tree(toks: &[Tok], i: &mut usize, prefix: &[String], out: &mut Vec<Vec<String>>) {
    let mut path = prefix.to_vec();
    loop {
        match toks.get(*i) {
            Some(Tok::Ident(w)) if w == "as" => {
                *i += 2; // `as name`
                break;
            }
            Some(Tok::Ident(w)) => {
                path.push(w.clone());
                *i += 1;
            }
            Some(Tok::Punct("::")) => *i += 1,
            Some(Tok::Punct("*")) => {
                *i += 1;
                break;
            }
            Some(Tok::Punct("{")) => {
                *i += 1;
                while *i < toks.len() && toks[*i] != Tok::Punct("}") {
                    use_tree(toks, i, &path, out);
                    if toks.get(*i) == Some(&Tok::Punct(",")) {
                        *i += 1;
                    }
                }
                *i += 1;
                return;
            }
            _ => break,
        }
    }
    out.push(path);
}

/// Every path a file uses (its `use` trees and the paths written in its code), resolved.
fn paths_used(rel: &str, text: &str) -> Vec<String> {
    let module = module_of(rel);
    let toks = without_test_items(tokens(&strip(text)));
    let mut raw: Vec<Vec<String>> = Vec::new();
    let mut i = 0;
    while i < toks.len() {
        if is_ident(toks.get(i), "use") {
            i += 1;
            use_tree(&toks, &mut i, &[], &mut raw);
            continue;
        }
        if let Tok::Ident(first) = &toks[i]
            && toks.get(i + 1) == Some(&Tok::Punct("::"))
        {
            let mut path = vec![first.clone()];
            let mut j = i + 1;
            while toks.get(j) == Some(&Tok::Punct("::")) {
                match toks.get(j + 1) {
                    Some(Tok::Ident(w)) => path.push(w.clone()),
                    Some(Tok::Punct("{")) => {
                        // `crate::{a, b}` in an expression position (rare): expand it too.
                        let mut k = j + 1;
                        use_tree(&toks, &mut k, &path, &mut raw);
                        j = k;
                        break;
                    }
                    _ => break,
                }
                j += 2;
            }
            raw.push(path);
            i = j.max(i + 1);
            continue;
        }
        i += 1;
    }
    raw.iter().map(|p| resolve(&module, p)).collect()
}

/// Identifiers of a file's product code (no comments, strings or test items).
fn identifiers(text: &str) -> Vec<String> {
    without_test_items(tokens(&strip(text)))
        .into_iter()
        .filter_map(|t| match t {
            Tok::Ident(w) => Some(w),
            _ => None,
        })
        .collect()
}

// ---------------------------------------------------------------------------------------
// The rules.

/// An import rule: files under `under` use no path starting with one of `forbidden`.
struct ImportRule {
    under: &'static str,
    forbidden: &'static [&'static str],
}

const JOURNAL: ImportRule = ImportRule {
    under: "journal/",
    forbidden: &[
        "crate::policy",
        "crate::mask",
        "crate::protocols",
        "crate::govern",
        "crate::proxy",
    ],
};

const POLICY: ImportRule = ImportRule {
    under: "policy/",
    forbidden: &[
        "crate::protocols",
        "crate::mask",
        "crate::journal",
        "tokio",
        "std::fs",
        "std::net",
    ],
};

const WIRE: ImportRule = ImportRule {
    under: "protocols/postgres/wire/",
    forbidden: &[
        "crate::protocols::postgres::sql",
        "crate::policy",
        "crate::govern",
    ],
};

const MASK: ImportRule = ImportRule {
    under: "mask/",
    forbidden: &["crate::protocols", "crate::journal", "tokio"],
};

fn import_violations(rule: &ImportRule, sources: &[Source]) -> Vec<String> {
    let mut out = Vec::new();
    for s in sources.iter().filter(|s| s.rel.starts_with(rule.under)) {
        for path in paths_used(&s.rel, &s.text) {
            let hit = rule
                .forbidden
                .iter()
                .any(|f| path == *f || path.starts_with(&format!("{f}::")));
            if hit && !out.contains(&format!("{}: {path}", s.rel)) {
                out.push(format!("{}: {path}", s.rel));
            }
        }
    }
    out
}

/// Places outside `protocols/` allowed to name PostgreSQL: (file, identifier, why).
/// None: the `Protocol` enum, its dispatch (`protocols::serve`) and each protocol's keys
/// live in `protocols/`; the proxy hands every session to `protocols::serve`.
const POSTGRES_NAMED_OUTSIDE: &[(&str, &str, &str)] = &[];

/// Whether an identifier names PostgreSQL.
fn names_postgres(word: &str) -> bool {
    word.to_ascii_lowercase().contains("postgres") || word.starts_with("pg_")
}

fn postgres_violations(sources: &[Source]) -> Vec<String> {
    let mut out = Vec::new();
    for s in sources.iter().filter(|s| !s.rel.starts_with("protocols/")) {
        for word in identifiers(&s.text) {
            let allowed = POSTGRES_NAMED_OUTSIDE
                .iter()
                .any(|(file, w, _)| *file == s.rel && *w == word);
            let hit = format!("{}: {word}", s.rel);
            if names_postgres(&word) && !allowed && !out.contains(&hit) {
                out.push(hit);
            }
        }
    }
    out
}

fn assert_clean(what: &str, violations: Vec<String>) {
    assert!(
        violations.is_empty(),
        "{what}:\n  {}",
        violations.join("\n  ")
    );
}

fn snippet(rel: &str, text: &str) -> Vec<Source> {
    vec![Source {
        rel: rel.into(),
        text: text.into(),
    }]
}

// ---------------------------------------------------------------------------------------
// The checks on the crate.

#[test]
fn nothing_outside_protocols_names_postgres() {
    assert_clean(
        "PostgreSQL named outside protocols/",
        postgres_violations(&sources()),
    );
}

#[test]
fn the_journal_imports_no_policy_protocol_or_proxy() {
    assert_clean("journal/", import_violations(&JOURNAL, &sources()));
}

#[test]
fn the_policy_imports_no_protocol_masking_journal_or_io() {
    assert_clean("policy/", import_violations(&POLICY, &sources()));
}

#[test]
fn the_wire_layer_knows_no_sql_policy_or_core() {
    assert_clean(
        "protocols/postgres/wire/",
        import_violations(&WIRE, &sources()),
    );
}

#[test]
fn masking_imports_no_protocol_journal_or_tokio() {
    assert_clean("mask/", import_violations(&MASK, &sources()));
}

// ---------------------------------------------------------------------------------------
// Controls: each rule flags a violating snippet, and what only looks like one passes.

#[test]
fn control_postgres_named_outside_protocols_is_flagged() {
    let bad = snippet(
        "daemon.rs",
        "use crate::protocols::postgres::CancelRegistry;\nfn f(p: PostgresSettings) {}\n",
    );
    let v = postgres_violations(&bad);
    assert!(v.contains(&"daemon.rs: postgres".to_string()), "{v:?}");
    assert!(
        v.contains(&"daemon.rs: PostgresSettings".to_string()),
        "{v:?}"
    );
    let pg = snippet("audit/mod.rs", "fn f() { pg_query::parse(x); }");
    assert_eq!(postgres_violations(&pg), ["audit/mod.rs: pg_query"]);
    // Inside protocols/, in comments, strings or tests: not flagged.
    let fine = [
        Source {
            rel: "proxy/session.rs".into(),
            text: "fn run() { protocols::serve(d) }\n// postgres\nconst S: &str = \"pg_x\";\n#[cfg(test)]\nmod tests { fn pg_x() {} }\n".into(),
        },
        Source {
            rel: "protocols/postgres/mod.rs".into(),
            text: "pub fn postgres() {}".into(),
        },
    ];
    assert_eq!(postgres_violations(&fine), Vec::<String>::new());
    let dispatch_in_proxy = snippet(
        "proxy/session.rs",
        "match p { Protocol::Postgres => postgres::serve() }",
    );
    assert_eq!(
        postgres_violations(&dispatch_in_proxy),
        ["proxy/session.rs: Postgres", "proxy/session.rs: postgres"],
        "the proxy names no protocol"
    );
}

#[test]
fn control_journal_importing_the_policy_is_flagged() {
    for (rel, text, want) in [
        (
            "journal/event.rs",
            "use crate::policy::Decision;",
            "crate::policy::Decision",
        ),
        (
            "journal/mod.rs",
            "use crate::{principal::Principal, mask::MaskingReport};",
            "crate::mask::MaskingReport",
        ),
        (
            "journal/sqlite.rs",
            "fn f() { let _ = crate::proxy::Shared::new(); }",
            "crate::proxy::Shared::new",
        ),
        (
            "journal/event.rs",
            "use super::super::govern::Verdict;",
            "crate::govern::Verdict",
        ),
    ] {
        assert_eq!(
            import_violations(&JOURNAL, &snippet(rel, text)),
            [format!("{rel}: {want}")],
            "{text}"
        );
    }
    let fine = snippet(
        "journal/event.rs",
        "use crate::principal::Principal; // crate::policy\nuse super::chain;",
    );
    assert_eq!(import_violations(&JOURNAL, &fine), Vec::<String>::new());
}

#[test]
fn control_policy_doing_io_or_naming_a_protocol_is_flagged() {
    for (text, want) in [
        (
            "use crate::protocols::postgres::sql::Kind;",
            "crate::protocols::postgres::sql::Kind",
        ),
        ("use std::{collections::HashMap, fs};", "std::fs"),
        (
            "fn f() { std::net::TcpStream::connect(a); }",
            "std::net::TcpStream::connect",
        ),
        ("use tokio::sync::watch;", "tokio::sync::watch"),
        ("use crate::journal::Event;", "crate::journal::Event"),
        (
            "use crate::mask::MaskingPolicy as M;",
            "crate::mask::MaskingPolicy",
        ),
    ] {
        assert_eq!(
            import_violations(&POLICY, &snippet("policy/mod.rs", text)),
            [format!("policy/mod.rs: {want}")],
            "{text}"
        );
    }
    let fine = snippet(
        "policy/config.rs",
        "use std::collections::HashSet;\nuse super::glob;\nconst T: &str = \"tokio::spawn\";",
    );
    assert_eq!(import_violations(&POLICY, &fine), Vec::<String>::new());
}

#[test]
fn control_wire_layer_knowing_sql_is_flagged() {
    let bad = snippet(
        "protocols/postgres/wire/frontend.rs",
        "use super::super::sql::classify;",
    );
    assert_eq!(
        import_violations(&WIRE, &bad),
        ["protocols/postgres/wire/frontend.rs: crate::protocols::postgres::sql::classify"]
    );
    let bad = snippet(
        "protocols/postgres/wire/mod.rs",
        "use crate::{policy::Decision, protocols::postgres::sql};",
    );
    assert_eq!(import_violations(&WIRE, &bad).len(), 2);
    let fine = snippet(
        "protocols/postgres/wire/frame.rs",
        "use super::backend::sqlstate;\nuse bytes::Bytes;",
    );
    assert_eq!(import_violations(&WIRE, &fine), Vec::<String>::new());
    // Outside the wire layer the rule does not apply.
    let elsewhere = snippet("protocols/postgres/judge.rs", "use super::sql::classify;");
    assert_eq!(import_violations(&WIRE, &elsewhere), Vec::<String>::new());
}

#[test]
fn control_masking_naming_a_protocol_is_flagged() {
    for (rel, text, want) in [
        (
            "mask/side_channel.rs",
            "pub use crate::protocols::postgres::sql::{Clause, ColumnReference};",
            "crate::protocols::postgres::sql::Clause",
        ),
        (
            "mask/plan.rs",
            "use crate::journal::Event;",
            "crate::journal::Event",
        ),
        (
            "mask/engine.rs",
            "async fn f() { tokio::task::yield_now().await }",
            "tokio::task::yield_now",
        ),
    ] {
        let v = import_violations(&MASK, &snippet(rel, text));
        assert_eq!(v.first(), Some(&format!("{rel}: {want}")), "{text}: {v:?}");
    }
    let fine = snippet(
        "mask/plan.rs",
        "use super::engine::Masker;\nlet s = r#\"crate::protocols\"#; let c = '\"'; let l: &'static str;",
    );
    assert_eq!(import_violations(&MASK, &fine), Vec::<String>::new());
}

#[test]
fn control_reader_sees_through_literals_and_nesting() {
    assert_eq!(
        paths_used(
            "a/b.rs",
            "use self::c::{d, e::{f as g, *}};\nuse super::h;\nlet x = \"crate::no\"; /* crate::no */ b'x'; br##\"crate::no\"##;"
        ),
        [
            "crate::a::b::c::d",
            "crate::a::b::c::e::f",
            "crate::a::b::c::e",
            "crate::a::h"
        ]
    );
    assert_eq!(
        module_of("protocols/postgres/masking/mod.rs"),
        ["protocols", "postgres", "masking"]
    );
    assert_eq!(module_of("lib.rs"), Vec::<String>::new());
    assert_eq!(
        test_module_files("policy/mod.rs", "mod config;\n#[cfg(test)]\nmod tests;"),
        ["policy/tests.rs", "policy/tests/mod.rs"]
    );
}
