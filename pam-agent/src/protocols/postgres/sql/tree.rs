//! Reading libpg_query's parse tree (its JSON form): the node helpers every walk shares.

use serde_json::{Map, Value};

/// `{"node": {"SelectStmt": {...}}}` or `{"SelectStmt": {...}}` -> ("SelectStmt", {...}).
pub(super) fn node_of(v: &Value) -> Option<(&str, &Map<String, Value>)> {
    node_of_map(v.as_object()?)
}

pub(super) fn node_of_map(map: &Map<String, Value>) -> Option<(&str, &Map<String, Value>)> {
    let map = match map.get("node") {
        Some(Value::Object(inner)) if map.len() == 1 => inner,
        _ => map,
    };
    if map.len() != 1 {
        return None;
    }
    let (k, v) = map.iter().next()?;
    if !k.starts_with(|c: char| c.is_ascii_uppercase()) {
        return None;
    }
    Some((k.as_str(), v.as_object()?))
}

/// The `sval`s of a list of String nodes (qualified names, column aliases).
pub(super) fn strings(v: Option<&Value>) -> Vec<&str> {
    items(v)
        .filter_map(node_of)
        .filter_map(|(t, s)| (t == "String").then(|| s.get("sval")?.as_str()).flatten())
        .collect()
}

/// A list's items (none when absent or not a list).
pub(super) fn items(v: Option<&Value>) -> impl Iterator<Item = &Value> {
    v.and_then(Value::as_array).into_iter().flatten()
}

pub(super) fn str_field<'a>(m: &'a Map<String, Value>, k: &str) -> &'a str {
    m.get(k).and_then(Value::as_str).unwrap_or("")
}

pub(super) fn int_field(m: &Map<String, Value>, k: &str) -> i64 {
    m.get(k).and_then(Value::as_i64).unwrap_or(0)
}

pub(super) fn non_empty(s: &str) -> Option<String> {
    (!s.is_empty()).then(|| s.to_owned())
}

/// A ColumnRef's name parts (`None` for `*`).
pub(super) fn column_fields(cr: &Map<String, Value>) -> Vec<Option<&str>> {
    items(cr.get("fields"))
        .map(|f| {
            node_of(f).and_then(|(t, s)| (t == "String").then(|| s.get("sval")?.as_str()).flatten())
        })
        .collect()
}

/// The name PostgreSQL gives an unnamed select-list item: the column or function name.
pub(super) fn output_name(val: &Value) -> String {
    match node_of(val) {
        Some(("ColumnRef", cr)) => strings(cr.get("fields"))
            .last()
            .map(|s| (*s).to_owned())
            .unwrap_or_default(),
        Some(("FuncCall", fc)) => strings(fc.get("funcname"))
            .last()
            .map(|s| (*s).to_owned())
            .unwrap_or_default(),
        Some(("TypeCast", tc)) => tc.get("arg").map(output_name).unwrap_or_default(),
        _ => "?column?".to_owned(),
    }
}

/// `t.*` / `*` as a value: its qualifier (empty for a bare `*`), if it is one.
pub(super) fn star_of(val: &Value) -> Option<Vec<&str>> {
    let (ty, cr) = node_of(val)?;
    if ty != "ColumnRef" {
        return None;
    }
    let last_star = items(cr.get("fields"))
        .last()
        .and_then(node_of)
        .is_some_and(|(t, _)| t == "AStar");
    last_star.then(|| strings(cr.get("fields")))
}

/// The RETURNING list of an INSERT, UPDATE, DELETE or MERGE: PostgreSQL 18's parser keeps
/// it in a `returning_clause` (with `WITH (OLD AS ...)` options), older ones as a list.
pub(super) fn returning_list(st: &Map<String, Value>) -> Option<&Value> {
    st.get("returning_clause")
        .and_then(|r| r.get("exprs"))
        .or_else(|| st.get("returning_list"))
}
