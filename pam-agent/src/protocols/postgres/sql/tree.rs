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
