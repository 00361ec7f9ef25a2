//! PL/pgSQL bodies (DO blocks, CREATE FUNCTION / PROCEDURE ... LANGUAGE plpgsql): judged by
//! what they can do. libpg_query's PL/pgSQL compiler gives every embedded SQL statement and
//! expression with the grammar mode the server will parse it in; each is classified like
//! top-level SQL and merged into the enclosing statement. SQL built at run time (EXECUTE,
//! FOR ... IN EXECUTE, RETURN QUERY EXECUTE, OPEN ... FOR EXECUTE) cannot be seen and is
//! flagged `dynamic_sql`. Anything not understood makes the whole statement unclassifiable.

use serde_json::Value;

use super::{
    Kind,
    statement::{Statement, Unclassifiable, flag, kind},
};

/// Classifies an embedded statement or expression in the given grammar mode (the
/// caller's classifier, one level deeper): procedural code is judged by the same rules
/// as top-level SQL without this module knowing them.
pub(super) type Fragment<'a> = dyn FnMut(&str, i32) -> Result<Vec<Statement>, Unclassifiable> + 'a;

/// Nesting of procedural code in procedural code (a DO that runs a DO...).
pub(super) const MAX_DEPTH: usize = 8;

/// Statement kinds of the PL/pgSQL tree that are understood; any other is refused.
const KNOWN: &[&str] = &[
    "PLpgSQL_stmt_block",
    "PLpgSQL_stmt_assign",
    "PLpgSQL_stmt_if",
    "PLpgSQL_stmt_case",
    "PLpgSQL_stmt_loop",
    "PLpgSQL_stmt_while",
    "PLpgSQL_stmt_fori",
    "PLpgSQL_stmt_fors",
    "PLpgSQL_stmt_forc",
    "PLpgSQL_stmt_foreach_a",
    "PLpgSQL_stmt_exit",
    "PLpgSQL_stmt_return",
    "PLpgSQL_stmt_return_next",
    "PLpgSQL_stmt_return_query",
    "PLpgSQL_stmt_raise",
    "PLpgSQL_stmt_assert",
    "PLpgSQL_stmt_execsql",
    "PLpgSQL_stmt_dynexecute",
    "PLpgSQL_stmt_dynfors",
    "PLpgSQL_stmt_getdiag",
    "PLpgSQL_stmt_open",
    "PLpgSQL_stmt_fetch",
    "PLpgSQL_stmt_close",
    "PLpgSQL_stmt_perform",
    "PLpgSQL_stmt_call",
    "PLpgSQL_stmt_commit",
    "PLpgSQL_stmt_rollback",
];

/// Classifies the PL/pgSQL body of `stmt_text` (one DO or CREATE FUNCTION statement whose
/// language is plpgsql, checked by the caller) and merges what it does into `st`.
pub(super) fn merge_body(
    stmt_text: &str,
    body: &str,
    st: &mut Statement,
    depth: usize,
    fragment: &mut Fragment<'_>,
) -> Result<(), Unclassifiable> {
    if depth >= MAX_DEPTH {
        return Err(Unclassifiable::Unsupported(
            "procedural code nested too deep".into(),
        ));
    }
    let parsed = pg_query::parse_plpgsql(stmt_text).map_err(|e| {
        Unclassifiable::Syntax(match e {
            pg_query::Error::Parse(m) => format!("PL/pgSQL: {m}"),
            other => other.to_string(),
        })
    })?;
    let funcs = parsed.as_array().map(Vec::as_slice).unwrap_or_default();
    let [func] = funcs else {
        return Err(Unclassifiable::Unsupported(format!(
            "{} PL/pgSQL bodies in one statement",
            funcs.len()
        )));
    };
    let Some(f) = func
        .get("PLpgSQL_function")
        .filter(|f| f.get("action").is_some())
    else {
        return Err(Unclassifiable::Unsupported(
            "PL/pgSQL body without code".into(),
        ));
    };
    let mut walk = BodyWalk {
        st,
        fragment,
        var_defaults: 0,
    };
    walk.value(f)?;
    // libpg_query does not expose the DEFAULT of a record variable
    // (`r record := (SELECT ...)`): SQL the walk never saw. Count the defaults written in
    // DECLARE sections; more than the walk saw means something is hidden.
    if declared_defaults(body)? > walk.var_defaults {
        return Err(Unclassifiable::Unsupported(
            "PL/pgSQL DECLARE default that cannot be analysed".into(),
        ));
    }
    Ok(())
}

struct BodyWalk<'a, 'f> {
    st: &'a mut Statement,
    fragment: &'a mut Fragment<'f>,
    /// Variable defaults seen in `datums`.
    var_defaults: usize,
}

impl BodyWalk<'_, '_> {
    fn value(&mut self, v: &Value) -> Result<(), Unclassifiable> {
        match v {
            Value::Array(items) => items.iter().try_for_each(|i| self.value(i)),
            Value::Object(map) => {
                for (k, v) in map {
                    match k.as_str() {
                        "PLpgSQL_expr" => {
                            self.expr(v)?;
                            continue;
                        }
                        "PLpgSQL_var" if v.get("default_val").is_some() => {
                            self.var_defaults += 1;
                        }
                        "PLpgSQL_stmt_dynexecute" | "PLpgSQL_stmt_dynfors" => {
                            self.st.flags.insert(flag::DYNAMIC_SQL);
                        }
                        "PLpgSQL_stmt_return_query" | "PLpgSQL_stmt_open"
                            if v.get("dynquery").is_some() =>
                        {
                            self.st.flags.insert(flag::DYNAMIC_SQL);
                        }
                        "PLpgSQL_stmt_commit" | "PLpgSQL_stmt_rollback" => {
                            add_kind(self.st, kind::TRANSACTION);
                        }
                        s if s.starts_with("PLpgSQL_stmt_") && !KNOWN.contains(&s) => {
                            return Err(Unclassifiable::Unsupported(s.to_owned()));
                        }
                        _ => {}
                    }
                    self.value(v)?;
                }
                Ok(())
            }
            _ => Ok(()),
        }
    }

    /// One embedded statement or expression, parsed in the mode the server will use.
    fn expr(&mut self, e: &Value) -> Result<(), Unclassifiable> {
        let query = e.get("query").and_then(Value::as_str).ok_or_else(|| {
            Unclassifiable::Unsupported("PL/pgSQL expression without text".into())
        })?;
        let mode = e.get("parseMode").and_then(Value::as_i64).unwrap_or(0);
        let mode = i32::try_from(mode)
            .ok()
            .filter(|m| (0..=5).contains(m) && *m != 1)
            .ok_or_else(|| Unclassifiable::Unsupported(format!("PL/pgSQL parse mode {mode}")))?;
        for inner in (self.fragment)(query, mode)? {
            merge(self.st, inner, mode == 0);
        }
        Ok(())
    }
}

fn add_kind(st: &mut Statement, k: Kind) {
    if !st.kinds.contains(&k) {
        st.kinds.push(k);
    }
}

/// Adds what `inner` does to `st`. An expression (`IF x > 1`, `x := y + 1`) is evaluated as
/// a SELECT by the server, but counts as one only when it reads a table.
pub(super) fn merge(st: &mut Statement, inner: Statement, whole_statement: bool) {
    for (i, k) in inner.kinds.iter().enumerate() {
        if i > 0 || whole_statement || !inner.tables.is_empty() {
            add_kind(st, *k);
        }
    }
    let inner = inner.request;
    st.tables.extend(inner.tables);
    st.writes.extend(inner.writes);
    st.functions.extend(inner.functions);
    st.flags.extend(inner.flags);
    st.columns.extend(inner.columns);
    st.columns.sort();
    st.columns.dedup();
    st.derived.extend(inner.derived);
    st.derived.sort();
    st.derived.dedup();
}

/// Declarations with a default value (`:=`, `=` or DEFAULT) in the DECLARE sections of a
/// PL/pgSQL body, from the SQL lexer's tokens (the PL/pgSQL lexer is the same scanner).
fn declared_defaults(body: &str) -> Result<usize, Unclassifiable> {
    let scanned = pg_query::scan(body).map_err(|e| Unclassifiable::Syntax(e.to_string()))?;
    let mut count = 0;
    let mut in_declare = false;
    // Within the current declaration: a default operator seen; CURSOR seen before it.
    let (mut has_default, mut cursor) = (false, false);
    for t in &scanned.tokens {
        let (Ok(start), Ok(end)) = (usize::try_from(t.start), usize::try_from(t.end)) else {
            continue;
        };
        let Some(text) = body.get(start..end) else {
            continue;
        };
        if text.starts_with("--") || text.starts_with("/*") {
            continue;
        }
        let word = text.to_ascii_lowercase();
        match word.as_str() {
            "declare" => in_declare = true,
            "begin" if in_declare => {
                in_declare = false;
                (has_default, cursor) = (false, false);
            }
            _ if !in_declare => {}
            ";" => {
                if has_default && !cursor {
                    count += 1;
                }
                (has_default, cursor) = (false, false);
            }
            ":=" | "=" | "default" if !has_default => has_default = true,
            "cursor" if !has_default => cursor = true,
            _ => {}
        }
    }
    Ok(count)
}
