//! A cache key for "the same statement with other constants": drivers that inline
//! values (pgbench, ORMs in simple-protocol mode) send a new text for every execution,
//! and each would otherwise cost a full parse.
//!
//! The key must never let two texts that PostgreSQL reads as differently shaped
//! statements meet, so this is a deliberately small lexer that gives up (`None`, the
//! caller then parses the exact text) on anything it does not fully understand:
//! comments, dollar quotes, prefixed strings (`E''`, `B''`, `X''`, `N''`, `U&''`),
//! backslashes, non-ASCII or control bytes, `;` before the end, numbers in unusual
//! forms, and `BY` / `DISTINCT` (whose integers can be select-list positions). Everything but a literal is kept byte for byte; each literal becomes a marker
//! of its token class, which no kept byte can be (they are all printable ASCII):
//!
//! - an integer that fits int4 (PostgreSQL's lexer: ICONST);
//! - any other plain number, a decimal or a bigger integer (FCONST);
//! - a standard single-quoted string (SCONST).
//!
//! Two texts with the same key therefore lex to the same token sequence apart from the
//! values of those literals. Whether a classification may be shared by such texts is
//! decided by the caller from the result ([`literal_independent`]).

use super::{Statement, flag, kind};

/// Marker of an integer literal PostgreSQL reads as int4.
const INT: char = '\u{1}';
/// Marker of any other plain numeric literal.
const NUM: char = '\u{2}';
/// Marker of a standard single-quoted string.
const STR: char = '\u{3}';

/// The key of `text` with its literals replaced, or `None` when the text has nothing
/// to replace or anything this lexer does not fully understand.
pub fn normalize(text: &str) -> Option<String> {
    let b = text.as_bytes();
    let mut key = String::with_capacity(b.len());
    let mut literals = 0usize;
    let mut i = 0;
    while i < b.len() {
        let c = b[i];
        match c {
            b'A'..=b'Z' | b'a'..=b'z' | b'_' => {
                let start = i;
                while i < b.len() && is_ident_cont(b[i]) {
                    i += 1;
                }
                // A string or identifier right after a word is a prefixed form (E'',
                // B'', X'', N'', U&'', U&""): not handled here.
                let word = &text[start..i];
                if matches!(b.get(i), Some(b'\'' | b'"'))
                    || (b.get(i) == Some(&b'&') && word.eq_ignore_ascii_case("u"))
                {
                    return None;
                }
                // `ORDER BY 2`, `GROUP BY 2`, `DISTINCT ON (2)`: there an integer is a
                // select-list position, and the column it names is part of the
                // classification (the masking side-channel guard reads it).
                if word.eq_ignore_ascii_case("by") || word.eq_ignore_ascii_case("distinct") {
                    return None;
                }
                key.push_str(word);
            }
            b'"' => {
                // Quoted identifier, kept verbatim; `""` is an escaped quote.
                let start = i;
                i += 1;
                loop {
                    match b.get(i) {
                        None => return None,
                        Some(b'"') if b.get(i + 1) == Some(&b'"') => i += 2,
                        Some(b'"') => {
                            i += 1;
                            break;
                        }
                        Some(&x) if is_plain(x) => i += 1,
                        Some(_) => return None,
                    }
                }
                if matches!(b.get(i), Some(b'\'' | b'"')) {
                    return None;
                }
                key.push_str(&text[start..i]);
            }
            b'\'' => {
                // Standard string; `''` is an escaped quote. (A backslash, which would
                // depend on standard_conforming_strings, is refused by `is_plain`.)
                i += 1;
                loop {
                    match b.get(i) {
                        None => return None,
                        Some(b'\'') if b.get(i + 1) == Some(&b'\'') => i += 2,
                        Some(b'\'') => {
                            i += 1;
                            break;
                        }
                        Some(&x) if is_plain(x) => i += 1,
                        Some(_) => return None,
                    }
                }
                if matches!(b.get(i), Some(b'"')) {
                    return None;
                }
                key.push(STR);
                literals += 1;
            }
            b'0'..=b'9' => {
                let start = i;
                while i < b.len() && b[i].is_ascii_digit() {
                    i += 1;
                }
                let mut marker = if fits_int4(&text[start..i]) { INT } else { NUM };
                if b.get(i) == Some(&b'.') {
                    // Only `digits.digits`; `1.`, `1.e5`, `1..2` are left to the parser.
                    i += 1;
                    let frac = i;
                    while i < b.len() && b[i].is_ascii_digit() {
                        i += 1;
                    }
                    if i == frac {
                        return None;
                    }
                    marker = NUM;
                }
                // Exponents, PostgreSQL 16 forms (0x1f, 1_000) and trailing junk
                // (`1abc`, read differently by different server versions).
                if b.get(i)
                    .is_some_and(|&x| is_ident_cont(x) || matches!(x, b'.' | b'\'' | b'"'))
                {
                    return None;
                }
                key.push(marker);
                literals += 1;
            }
            b'$' => {
                // A parameter ($1) is kept; anything else is a dollar quote.
                let start = i;
                i += 1;
                while i < b.len() && b[i].is_ascii_digit() {
                    i += 1;
                }
                if i == start + 1 || b.get(i).is_some_and(|&x| is_ident_cont(x) || x == b'.') {
                    return None;
                }
                key.push_str(&text[start..i]);
            }
            b'-' if b.get(i + 1) == Some(&b'-') => return None,
            b'/' if b.get(i + 1) == Some(&b'*') => return None,
            b'.' if b.get(i + 1).is_some_and(u8::is_ascii_digit) => return None,
            b';' => {
                // One statement only; a final `;` may be followed by white space.
                if !b[i + 1..]
                    .iter()
                    .all(|&x| matches!(x, b' ' | b'\t' | b'\n' | b'\r'))
                {
                    return None;
                }
                key.push_str(&text[i..]);
                i = b.len();
            }
            b'\\' => return None,
            _ if is_plain(c) => {
                key.push(c as char);
                i += 1;
            }
            _ => return None,
        }
    }
    (literals > 0).then_some(key)
}

/// Printable ASCII and the usual white space; never a marker, backslash or NUL.
fn is_plain(c: u8) -> bool {
    matches!(c, b' '..=b'~' | b'\t' | b'\n' | b'\r') && c != b'\\'
}

fn is_ident_cont(c: u8) -> bool {
    c.is_ascii_alphanumeric() || c == b'_' || c == b'$'
}

/// PostgreSQL's lexer reads an unsigned integer up to `i32::MAX` as ICONST, a larger
/// one as FCONST: the grammar accepts them in different places.
fn fits_int4(digits: &str) -> bool {
    digits.parse::<u64>().is_ok_and(|v| v <= i32::MAX as u64)
}

/// True when no literal's value can change this classification, so texts that differ
/// only in literals may share it. Deliberately narrow: one plain DML or query statement,
/// no `set_config` (its first argument, a literal, decides flags), no COPY (an empty
/// file name is not a server file), no other flag than those read from the tree's shape.
pub fn literal_independent(statements: &[Statement]) -> bool {
    let [st] = statements else {
        return false;
    };
    st.kinds.iter().all(|k| {
        matches!(
            *k,
            kind::SELECT | kind::INSERT | kind::UPDATE | kind::DELETE
        )
    }) && st.flags.iter().all(|f| {
        matches!(
            *f,
            flag::UPDATE_WITHOUT_WHERE | flag::DELETE_WITHOUT_WHERE | flag::DATA_MODIFYING_CTE
        )
    }) && st.prepared.is_none()
        && !st.functions.iter().any(|f| {
            let base = f.rsplit('.').next().unwrap_or(f);
            base.eq_ignore_ascii_case("set_config")
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn same(a: &str, b: &str) -> bool {
        let (ka, kb) = (normalize(a), normalize(b));
        assert!(ka.is_some() && kb.is_some(), "{a:?} / {b:?}");
        ka == kb
    }

    #[test]
    fn constants_of_one_class_share_a_key() {
        assert!(same(
            "SELECT abalance FROM pgbench_accounts WHERE aid = 57",
            "SELECT abalance FROM pgbench_accounts WHERE aid = 99812"
        ));
        assert!(same(
            "UPDATE pgbench_accounts SET abalance = abalance + -4263 WHERE aid = 1;",
            "UPDATE pgbench_accounts SET abalance = abalance + -12 WHERE aid = 77;"
        ));
        assert!(same(
            "SELECT * FROM t WHERE name = 'bob' AND note = 'it''s'",
            "SELECT * FROM t WHERE name = '' AND note = 'x'"
        ));
        assert!(same("SELECT 1.5 FROM t", "SELECT 20.25 FROM t"));
        assert!(same("SELECT 1 ;  \n", "SELECT 2 ;  \n"));
    }

    #[test]
    fn different_token_classes_never_share_a_key() {
        // int4 (ICONST) vs bigger integer or decimal (both FCONST) vs string.
        assert!(same("SELECT 2147483648", "SELECT 1.5"));
        let keys = [
            "SELECT x FROM t WHERE a = 1 AND z = 0",
            "SELECT x FROM t WHERE a = 2147483648 AND z = 0",
            "SELECT x FROM t WHERE a = '1' AND z = 0",
            "SELECT x FROM t WHERE a = \"b1\" AND z = 0",
            "SELECT x FROM t WHERE a = $1 AND z = 0",
        ]
        .map(normalize);
        for (i, a) in keys.iter().enumerate() {
            for b in &keys[i + 1..] {
                assert_ne!(a, b);
            }
        }
        assert!(!same("SELECT 2147483647", "SELECT 2147483648"));
        // Identifiers, quoted identifiers, parameters and white space are kept.
        assert!(!same(
            "SELECT a FROM t1 WHERE x = 1",
            "SELECT a FROM t2 WHERE x = 1"
        ));
        assert!(!same(
            "SELECT \"1\" FROM t WHERE x = 1",
            "SELECT \"2\" FROM t WHERE x = 1"
        ));
        assert!(!same("SELECT $1 + 1", "SELECT $2 + 1"));
        assert!(!same("SELECT 'a'\n'b'", "SELECT 'a' 'b'"));
        assert!(!same("SELECT 1", "SELECT  1"));
        assert!(!same("SELECT x + 1", "SELECT x + -1"));
        // A string's content is never confused with the text around it.
        assert!(!same("SELECT 'a' FROM t", "SELECT 'a FROM t'"));
    }

    #[test]
    fn anything_unusual_is_left_to_the_parser() {
        for text in [
            "SELECT E'\\x41' FROM t",
            "SELECT e'a' FROM t",
            "SELECT B'101', 1",
            "SELECT X'1f', 1",
            "SELECT N'a', 1",
            "SELECT U&'d\\0061t' , 1",
            "SELECT U&\"a\" , 1",
            "SELECT $$a$$, 1",
            "SELECT $q$a$q$, 1",
            "SELECT 1 -- comment",
            "SELECT 1 /* c */",
            "SELECT 'a\\' , 1",
            "SELECT 'café', 1",
            "SELECT 1; SELECT 2",
            "SELECT 1;--",
            "SELECT .5",
            "SELECT 1.",
            "SELECT 1e5",
            "SELECT 1.5e3",
            "SELECT 0x1f",
            "SELECT 1_000",
            "SELECT 1abc",
            "SELECT 'unterminated",
            "SELECT \"unterminated, 1",
            "SELECT 'a\0b'",
            "SELECT '\u{1}', 1",
            "SELECT 1\u{c}",
            "SELECT x FROM t",
            "SELECT x FROM t WHERE y = $1",
            "SELECT a, b FROM t WHERE c = 1 ORDER BY 2",
            "SELECT a, count(*) FROM t WHERE c = 1 GROUP BY 1",
            "SELECT DISTINCT ON (1) a, b FROM t WHERE c = 1",
            "SELECT a, rank() OVER (order by 1) FROM t",
        ] {
            assert_eq!(normalize(text), None, "{text:?}");
        }
    }

    #[test]
    fn only_literal_independent_results_qualify() {
        let c = |t: &str| super::super::classify(t, 1 << 20).unwrap();
        assert!(literal_independent(&c("SELECT * FROM t WHERE id = 1")));
        assert!(literal_independent(&c("UPDATE t SET a = 1 WHERE id = 2")));
        assert!(literal_independent(&c("DELETE FROM t")));
        assert!(!literal_independent(&c(
            "SELECT set_config('work_mem', '1MB', false)"
        )));
        assert!(!literal_independent(&c(
            "SELECT pg_catalog.set_config('work_mem', '1MB', false) FROM t"
        )));
        assert!(!literal_independent(&c("COPY t FROM ''")));
        assert!(!literal_independent(&c("COPY (SELECT 1) TO STDOUT")));
        assert!(!literal_independent(&c("SET work_mem = '1MB'")));
        assert!(!literal_independent(&c("SELECT 1; SELECT 2")));
        assert!(!literal_independent(&c("SELECT pg_read_file('x')")));
        assert!(!literal_independent(&c(
            "SELECT * INTO x FROM t WHERE a = 1"
        )));
        assert!(!literal_independent(&c("EXPLAIN ANALYZE SELECT 1")));
        assert!(!literal_independent(&c(
            "PREPARE p AS SELECT * FROM t WHERE a = 1"
        )));
    }
}
