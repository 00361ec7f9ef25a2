//! Statement classification over the parse tree.
//!
//! The tree is walked generically (every field of every node, through the serialized
//! form of the protobuf tree), so no node kind is skipped by omission: a function call
//! inside a VALUES list, a DEFAULT, a sub-select in ORDER BY or a CTE is seen like any
//! other. Only the node kinds that matter to policy are interpreted.

use std::collections::BTreeSet;

use serde_json::{Map, Value};

use super::{
    Flag, Kind, Request, columns,
    functions::{is_dynamic_sql_function, is_side_effect_function, quote_part},
    lineage, plpgsql,
    statement::{Prepared, Statement, Unclassifiable, flag, kind},
    tree::{node_of, node_of_map},
};
use crate::protocols::postgres::wire::options::harmless_setting;

/// Parses `text` and describes each of its statements. An empty text (or only
/// comments) yields no statements.
///
/// Call it on a thread with a large stack (see [`super::Classifier`]): the tree
/// conversion and walk recurse as deep as the statement nests.
pub fn classify(text: &str, max_len: usize) -> Result<Vec<Statement>, Unclassifiable> {
    classify_at(text, max_len, 0, 0)
}

/// An SQL statement or expression embedded in procedural code, parsed in the grammar
/// mode the server uses for it (`pg_query::ParserOptions`: 0 statement, 2 expression,
/// 3-5 assignment). `depth` counts enclosing procedural bodies.
pub(super) fn classify_fragment(
    text: &str,
    max_len: usize,
    mode: i32,
    depth: usize,
) -> Result<Vec<Statement>, Unclassifiable> {
    classify_at(text, max_len, mode, depth)
}

fn classify_at(
    text: &str,
    max_len: usize,
    mode: i32,
    depth: usize,
) -> Result<Vec<Statement>, Unclassifiable> {
    if text.len() > max_len {
        return Err(Unclassifiable::TooLong {
            len: text.len(),
            max: max_len,
        });
    }
    if text.as_bytes().contains(&0) {
        return Err(Unclassifiable::Nul);
    }
    let parsed = pg_query::parse(text, mode).map_err(|e| {
        if depth == 0 && mode == 0 {
            Unclassifiable::Grammar(error_text(e))
        } else {
            Unclassifiable::Syntax(error_text(e))
        }
    })?;
    let mut out = Vec::with_capacity(parsed.protobuf.stmts.len());
    for raw in &parsed.protobuf.stmts {
        let stmt_text = slice(text, raw.stmt_location, raw.stmt_len);
        let Some(node) = raw.stmt.as_ref() else {
            return Err(Unclassifiable::Unsupported("empty node".into()));
        };
        let value = serde_json::to_value(node.as_ref())
            .map_err(|e| Unclassifiable::Internal(e.to_string()))?;
        // Fingerprints group top-level executions; embedded fragments need none.
        let fingerprint = if depth == 0 && mode == 0 {
            pg_query::fingerprint(stmt_text, 0, 0)
                .map(|f| f.hex)
                .map_err(|e| Unclassifiable::Syntax(error_text(e)))?
        } else {
            String::new()
        };
        let mut st = Statement {
            request: Request {
                text: stmt_text.to_owned(),
                fingerprint,
                ..Request::default()
            },
            prepared: None,
            commits: false,
            harmless_set_config: false,
            reserved_name: None,
        };
        let (ty, inner) = node_of(&value)
            .ok_or_else(|| Unclassifiable::Unsupported("statement without a node".into()))?;
        let primary = top_kind(ty, inner, &mut st.flags)?;
        st.kinds.push(primary);
        st.prepared = prepared_of(ty, inner);
        st.reserved_name = reserved_name_of(ty, inner);
        st.commits = ty == "TransactionStmt"
            && inner.get("kind").and_then(Value::as_i64)
                == Some(pg_query::protobuf::TransactionStmtKind::TransStmtCommit as i64);
        let mut walk = Walk {
            st: &mut st,
            ddl: primary == kind::DDL
                || primary == kind::DCL
                || primary == kind::ADMIN
                || primary == kind::MAINTENANCE,
            set_config: None,
        };
        walk.value(&value, &[]);
        // Only a plain SELECT: no procedural body merged in below.
        st.harmless_set_config = primary == kind::SELECT && walk.set_config == Some(true);
        st.columns = columns::references(&value);
        // Inside a procedural body every value is kept (variables, RETURN), never masked.
        st.derived = lineage::derivations(&value, text, depth > 0);
        procedural(ty, inner, stmt_text, &mut st, max_len, depth)?;
        out.push(st);
    }
    Ok(out)
}

/// The SQL-level prepared statement a statement names, if any.
fn prepared_of(ty: &str, inner: &Map<String, Value>) -> Option<Prepared> {
    let name = || inner.get("name").and_then(Value::as_str).map(str::to_owned);
    match ty {
        "PrepareStmt" => name().map(Prepared::Prepare),
        "ExecuteStmt" => name().map(Prepared::Execute),
        "DeallocateStmt" => Some(Prepared::Deallocate(
            name().filter(|n| !n.is_empty() && !bool_field(inner, "isall")),
        )),
        "DiscardStmt" => Some(Prepared::Deallocate(None)),
        _ => None,
    }
}

/// The cursor or SQL-level prepared statement a statement names, when the name is one
/// the agent keeps for itself (names are case-folded by the parser already).
fn reserved_name_of(ty: &str, inner: &Map<String, Value>) -> Option<String> {
    let field = match ty {
        "PrepareStmt" | "ExecuteStmt" | "DeallocateStmt" => "name",
        "DeclareCursorStmt" | "FetchStmt" | "ClosePortalStmt" => "portalname",
        _ => return None,
    };
    inner
        .get(field)
        .and_then(Value::as_str)
        .filter(|n| crate::protocols::postgres::names::is_reserved(n))
        .map(str::to_owned)
}

/// DO blocks and function bodies: PL/pgSQL is analysed statement by statement, SQL bodies
/// are classified, other languages are not understood (DO: refused; CREATE FUNCTION:
/// flagged `dynamic_sql`, as what the body does is not visible).
fn procedural(
    ty: &str,
    inner: &Map<String, Value>,
    stmt_text: &str,
    st: &mut Statement,
    max_len: usize,
    depth: usize,
) -> Result<(), Unclassifiable> {
    let (options, is_do) = match ty {
        "DoStmt" => (inner.get("args"), true),
        "CreateFunctionStmt" => (inner.get("options"), false),
        _ => return Ok(()),
    };
    let mut language = None;
    let mut body = None;
    for (name, arg) in options
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .filter_map(node_of)
        .filter(|(t, _)| *t == "DefElem")
        .map(|(_, d)| (d.get("defname").and_then(Value::as_str), d.get("arg")))
    {
        match name {
            Some("language") => language = arg.and_then(string_node),
            // DO: a String; CREATE FUNCTION: a List of one String (or two for C: file, symbol).
            Some("as") => {
                body = arg.and_then(string_node).or_else(|| {
                    arg.and_then(node_of)
                        .filter(|(t, _)| *t == "List")
                        .and_then(|(_, l)| l.get("items")?.as_array()?.last().and_then(string_node))
                });
            }
            _ => {}
        }
    }
    // The server compares language names exactly (identifiers are already lower-cased).
    match (language.as_deref(), body.as_deref()) {
        (Some("plpgsql") | None, Some(body)) => {
            let mut fragment = |q: &str, mode| classify_fragment(q, max_len, mode, depth + 1);
            plpgsql::merge_body(stmt_text, body, st, depth, &mut fragment)
        }
        (Some("sql"), Some(body)) if !is_do => {
            if depth + 1 >= plpgsql::MAX_DEPTH {
                return Err(Unclassifiable::Unsupported(
                    "SQL function nested too deep".into(),
                ));
            }
            for inner in classify_fragment(body, max_len, 0, depth + 1)? {
                plpgsql::merge(st, inner, true);
            }
            Ok(())
        }
        // BEGIN ATOMIC / RETURN bodies are part of the parse tree and already walked.
        (Some("sql"), None) if !is_do => Ok(()),
        (lang, _) if is_do => Err(Unclassifiable::Unsupported(format!(
            "DO block in language {}",
            lang.unwrap_or("?")
        ))),
        _ => {
            st.flags.insert(flag::DYNAMIC_SQL);
            Ok(())
        }
    }
}

fn string_node(v: &Value) -> Option<String> {
    node_of(v)
        .filter(|(t, _)| *t == "String")
        .and_then(|(_, s)| s.get("sval")?.as_str().map(str::to_owned))
}

fn error_text(e: pg_query::Error) -> String {
    match e {
        pg_query::Error::Parse(m) => m,
        other => other.to_string(),
    }
}

/// The statement's own text; location/len are byte offsets, len 0 meaning "to the end".
fn slice(text: &str, location: i32, len: i32) -> &str {
    let start = usize::try_from(location).unwrap_or(0).min(text.len());
    let end = if len <= 0 {
        text.len()
    } else {
        start.saturating_add(len as usize).min(text.len())
    };
    text.get(start..end).unwrap_or(text).trim()
}

fn inner_node<'a>(
    map: &'a Map<String, Value>,
    field: &str,
) -> Option<(&'a str, &'a Map<String, Value>)> {
    map.get(field).and_then(node_of)
}

/// The primary kind of a top-level statement node.
fn top_kind(
    ty: &str,
    inner: &Map<String, Value>,
    flags: &mut BTreeSet<Flag>,
) -> Result<Kind, Unclassifiable> {
    Ok(match ty {
        "SelectStmt" => {
            if has(inner, "into_clause") {
                flags.insert(flag::CREATE_TABLE_AS);
                kind::DDL
            } else {
                kind::SELECT
            }
        }
        "InsertStmt" => kind::INSERT,
        "UpdateStmt" => kind::UPDATE,
        "DeleteStmt" => kind::DELETE,
        "MergeStmt" => kind::MERGE,
        "CopyStmt" => {
            if bool_field(inner, "is_from") {
                kind::COPY_IN
            } else {
                kind::COPY_OUT
            }
        }
        "ExplainStmt" => {
            let analyze = inner
                .get("options")
                .and_then(Value::as_array)
                .into_iter()
                .flatten()
                .filter_map(node_of)
                .any(|(t, d)| {
                    t == "DefElem" && d.get("defname").and_then(Value::as_str) == Some("analyze")
                });
            if analyze {
                flags.insert(flag::EXPLAIN_ANALYZE);
            }
            // EXPLAIN is judged as what it explains (conservative even without
            // ANALYZE: planning can evaluate functions).
            let (t, i) = inner_node(inner, "query")
                .ok_or_else(|| Unclassifiable::Unsupported("EXPLAIN without query".into()))?;
            top_kind(t, i, flags)?
        }
        "PrepareStmt" | "DeclareCursorStmt" => {
            let (t, i) = inner_node(inner, "query")
                .ok_or_else(|| Unclassifiable::Unsupported(format!("{ty} without query")))?;
            top_kind(t, i, flags)?
        }
        "CreateTableAsStmt" => {
            flags.insert(flag::CREATE_TABLE_AS);
            kind::DDL
        }
        "TransactionStmt" => kind::TRANSACTION,
        "VariableSetStmt" => {
            let name = inner.get("name").and_then(Value::as_str).unwrap_or("");
            match name {
                "role" | "session_authorization" => {
                    flags.insert(flag::ROLE_CHANGE);
                }
                "search_path" => {
                    flags.insert(flag::SEARCH_PATH_CHANGE);
                }
                "client_encoding" | "standard_conforming_strings" => {
                    flags.insert(flag::LEXER_CHANGE);
                }
                // RESET ALL / SET SESSION CHARACTERISTICS etc. carry no name; RESET ALL
                // returns to the authenticated role and default path, which is safe.
                _ => {}
            }
            kind::SESSION
        }
        "VariableShowStmt" | "DiscardStmt" | "DeallocateStmt" | "ListenStmt" | "UnlistenStmt"
        | "NotifyStmt" | "ConstraintsSetStmt" => kind::SESSION,
        "FetchStmt" | "ClosePortalStmt" => kind::CURSOR,
        "LockStmt" => kind::LOCK,
        "VacuumStmt" | "ClusterStmt" | "ReindexStmt" | "CheckPointStmt" | "RefreshMatViewStmt" => {
            kind::MAINTENANCE
        }
        "AlterSystemStmt"
        | "LoadStmt"
        | "CreatedbStmt"
        | "DropdbStmt"
        | "AlterDatabaseStmt"
        | "AlterDatabaseSetStmt"
        | "AlterDatabaseRefreshCollStmt"
        | "CreateTableSpaceStmt"
        | "DropTableSpaceStmt"
        | "AlterTableSpaceOptionsStmt"
        | "CreateExtensionStmt"
        | "AlterExtensionStmt"
        | "AlterExtensionContentsStmt"
        | "CreateSubscriptionStmt"
        | "AlterSubscriptionStmt"
        | "DropSubscriptionStmt"
        | "CreatePublicationStmt"
        | "AlterPublicationStmt"
        | "CreateFdwStmt"
        | "AlterFdwStmt"
        | "CreateForeignServerStmt"
        | "AlterForeignServerStmt"
        | "CreateUserMappingStmt"
        | "AlterUserMappingStmt"
        | "DropUserMappingStmt"
        | "ImportForeignSchemaStmt"
        | "CreateEventTrigStmt"
        | "AlterEventTrigStmt"
        | "CreatePLangStmt" => kind::ADMIN,
        "GrantStmt"
        | "GrantRoleStmt"
        | "CreateRoleStmt"
        | "AlterRoleStmt"
        | "AlterRoleSetStmt"
        | "DropRoleStmt"
        | "AlterDefaultPrivilegesStmt"
        | "ReassignOwnedStmt"
        | "DropOwnedStmt"
        | "CreatePolicyStmt"
        | "AlterPolicyStmt"
        | "AlterOwnerStmt" => kind::DCL,
        "CallStmt" => kind::CALL,
        // The body is analysed by `procedural`.
        "DoStmt" => kind::DO,
        // A PL/pgSQL assignment (`x := expr`, only from procedural code) evaluates a SELECT.
        "PlassignStmt" => kind::SELECT,
        "ExecuteStmt" => {
            flags.insert(flag::DYNAMIC_SQL);
            kind::EXECUTE
        }
        t if t.ends_with("Stmt")
            && (t.starts_with("Create")
                || t.starts_with("Alter")
                || t.starts_with("Drop")
                || t.starts_with("Define")
                || t.starts_with("Rename")
                || t.starts_with("Comment")
                || t.starts_with("SecLabel")
                || t.starts_with("Truncate")
                || t.starts_with("Index")
                || t.starts_with("View")
                || t.starts_with("Rule")
                || t.starts_with("Composite")
                || t.starts_with("Stats")) =>
        {
            kind::DDL
        }
        other => return Err(Unclassifiable::Unsupported(other.to_owned())),
    })
}

fn has(map: &Map<String, Value>, field: &str) -> bool {
    !matches!(map.get(field), None | Some(Value::Null))
}

fn bool_field(map: &Map<String, Value>, field: &str) -> bool {
    map.get(field).and_then(Value::as_bool).unwrap_or(false)
}

struct Walk<'a> {
    st: &'a mut Statement,
    /// Every relation of a DDL/DCL/admin statement counts as written.
    ddl: bool,
    /// set_config calls seen: `Some(true)` while each names a harmless setting.
    set_config: Option<bool>,
}

impl Walk<'_> {
    /// `scope`: CTE names visible here (references to them are not tables).
    fn value(&mut self, v: &Value, scope: &[String]) {
        match v {
            Value::Array(items) => {
                for i in items {
                    self.value(i, scope);
                }
            }
            Value::Object(map) => self.object(map, scope),
            _ => {}
        }
    }

    fn object(&mut self, map: &Map<String, Value>, scope: &[String]) {
        if let Some((ty, inner)) = node_of_map(map) {
            self.node(ty, inner, scope);
            return;
        }
        // Typed (not Node-wrapped) fields: recognise the structs that matter.
        if map.contains_key("relname") && map.contains_key("schemaname") {
            self.range_var(map, scope, false);
        }
        if map.contains_key("funcname") && map.contains_key("funcformat") {
            self.func_call(map);
        }
        self.fields(map, scope);
    }

    fn fields(&mut self, map: &Map<String, Value>, scope: &[String]) {
        let mut scope_owned;
        let mut scope = scope;
        if let Some(with) = map.get("with_clause").and_then(Value::as_object) {
            let recursive = bool_field(with, "recursive");
            let ctes: Vec<&Value> = with
                .get("ctes")
                .and_then(Value::as_array)
                .map(|a| a.iter().collect())
                .unwrap_or_default();
            let names: Vec<String> = ctes
                .iter()
                .filter_map(|c| node_of(c))
                .filter_map(|(_, c)| c.get("ctename").and_then(Value::as_str))
                .map(str::to_owned)
                .collect();
            // Each CTE body sees the CTEs before it (all of them when RECURSIVE).
            for (i, cte) in ctes.iter().enumerate() {
                let mut visible = scope.to_vec();
                let upto = if recursive { names.len() } else { i };
                visible.extend(names[..upto].iter().cloned());
                if let Some((_, c)) = node_of(cte)
                    && let Some((qt, _)) = inner_node(c, "ctequery")
                    && matches!(qt, "InsertStmt" | "UpdateStmt" | "DeleteStmt" | "MergeStmt")
                {
                    self.st.flags.insert(flag::DATA_MODIFYING_CTE);
                }
                self.value(cte, &visible);
            }
            scope_owned = scope.to_vec();
            scope_owned.extend(names);
            scope = &scope_owned;
        }
        for (k, v) in map {
            if k == "with_clause" {
                continue;
            }
            self.value(v, scope);
        }
    }

    fn node(&mut self, ty: &str, inner: &Map<String, Value>, scope: &[String]) {
        match ty {
            "RangeVar" => self.range_var(inner, scope, false),
            "FuncCall" => self.func_call(inner),
            "InsertStmt" | "UpdateStmt" | "DeleteStmt" | "MergeStmt" => {
                let kind = match ty {
                    "InsertStmt" => kind::INSERT,
                    "UpdateStmt" => kind::UPDATE,
                    "DeleteStmt" => kind::DELETE,
                    _ => kind::MERGE,
                };
                if !self.st.kinds.contains(&kind) {
                    self.st.kinds.push(kind);
                }
                if ty == "UpdateStmt" && !has(inner, "where_clause") {
                    self.st.flags.insert(flag::UPDATE_WITHOUT_WHERE);
                }
                if ty == "DeleteStmt" && !has(inner, "where_clause") {
                    self.st.flags.insert(flag::DELETE_WITHOUT_WHERE);
                }
                if let Some(rel) = inner.get("relation").and_then(Value::as_object) {
                    self.range_var(rel, scope, true);
                }
            }
            "SelectStmt" if has(inner, "into_clause") => {
                self.st.flags.insert(flag::CREATE_TABLE_AS);
                if let Some(rel) = inner
                    .get("into_clause")
                    .and_then(Value::as_object)
                    .and_then(|i| i.get("rel"))
                    .and_then(Value::as_object)
                {
                    self.range_var(rel, scope, true);
                }
            }
            "CreateTableAsStmt" => {
                if let Some(rel) = inner
                    .get("into")
                    .and_then(Value::as_object)
                    .and_then(|i| i.get("rel"))
                    .and_then(Value::as_object)
                {
                    self.range_var(rel, scope, true);
                }
            }
            "CopyStmt" => {
                if bool_field(inner, "is_program") {
                    self.st.flags.insert(flag::COPY_PROGRAM);
                } else if inner
                    .get("filename")
                    .and_then(Value::as_str)
                    .is_some_and(|f| !f.is_empty())
                {
                    self.st.flags.insert(flag::SERVER_FILE);
                }
                if let Some(rel) = inner.get("relation").and_then(Value::as_object) {
                    self.range_var(rel, scope, bool_field(inner, "is_from"));
                }
            }
            "TruncateStmt" => {
                for r in inner
                    .get("relations")
                    .and_then(Value::as_array)
                    .into_iter()
                    .flatten()
                {
                    if let Some(("RangeVar", rel)) = node_of(r) {
                        self.range_var(rel, scope, true);
                    }
                }
            }
            "ExecuteStmt" => {
                self.st.flags.insert(flag::DYNAMIC_SQL);
            }
            "VariableSetStmt" => match inner.get("name").and_then(Value::as_str) {
                Some("role" | "session_authorization") => {
                    self.st.flags.insert(flag::ROLE_CHANGE);
                }
                Some("search_path") => {
                    self.st.flags.insert(flag::SEARCH_PATH_CHANGE);
                }
                Some("client_encoding" | "standard_conforming_strings") => {
                    self.st.flags.insert(flag::LEXER_CHANGE);
                }
                _ => {}
            },
            _ => {}
        }
        self.fields(inner, scope);
    }

    fn range_var(&mut self, rv: &Map<String, Value>, scope: &[String], written: bool) {
        let s = |k: &str| rv.get(k).and_then(Value::as_str).unwrap_or("");
        let (catalog, schema, rel) = (s("catalogname"), s("schemaname"), s("relname"));
        if rel.is_empty() {
            return;
        }
        if schema.is_empty() && catalog.is_empty() && scope.iter().any(|c| c == rel) {
            return;
        }
        let schema = if !schema.is_empty() {
            schema
        } else if rel.starts_with("pg_") {
            "pg_catalog"
        } else {
            "public"
        };
        let name = if catalog.is_empty() {
            format!("{schema}.{rel}")
        } else {
            format!("{catalog}.{schema}.{rel}")
        };
        if written || self.ddl {
            self.st.writes.insert(name.clone());
        }
        self.st.tables.insert(name);
    }

    fn func_call(&mut self, fc: &Map<String, Value>) {
        let parts: Vec<&str> = fc
            .get("funcname")
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
            .filter_map(|n| node_of(n))
            .filter_map(|(t, s)| (t == "String").then(|| s.get("sval")?.as_str()).flatten())
            .collect();
        if parts.is_empty() {
            return;
        }
        // A part with a dot in it is quoted, so the name splits back exactly.
        let name = parts
            .iter()
            .map(|p| quote_part(p))
            .collect::<Vec<_>>()
            .join(".");
        let base = parts[parts.len() - 1];
        if is_side_effect_function(base) {
            self.st.flags.insert(flag::SIDE_EFFECT_FUNCTION);
        }
        if is_dynamic_sql_function(base) {
            self.st.flags.insert(flag::DYNAMIC_SQL);
        }
        if base == "set_config" {
            // set_config('role' | 'session_authorization' | 'search_path', ...): judged by
            // its first argument when it is a literal; any other first argument could be
            // one of them.
            let first = fc
                .get("args")
                .and_then(Value::as_array)
                .and_then(|a| a.first())
                .and_then(node_of)
                .and_then(|(t, c)| (t == "AConst").then_some(c))
                .and_then(|c| c.get("val")?.get("Sval")?.get("sval"))
                .and_then(Value::as_str)
                .map(str::to_ascii_lowercase);
            let harmless = first.as_deref().is_some_and(harmless_setting);
            self.set_config = Some(self.set_config.unwrap_or(true) && harmless);
            match first.as_deref() {
                Some("role" | "session_authorization") => {
                    self.st.flags.insert(flag::ROLE_CHANGE);
                }
                Some("search_path") => {
                    self.st.flags.insert(flag::SEARCH_PATH_CHANGE);
                }
                Some("client_encoding" | "standard_conforming_strings") => {
                    self.st.flags.insert(flag::LEXER_CHANGE);
                }
                Some(_) => {}
                None => {
                    self.st.flags.insert(flag::ROLE_CHANGE);
                    self.st.flags.insert(flag::SEARCH_PATH_CHANGE);
                    self.st.flags.insert(flag::LEXER_CHANGE);
                }
            }
        }
        self.st.functions.insert(name);
    }
}

#[cfg(test)]
mod tests;
