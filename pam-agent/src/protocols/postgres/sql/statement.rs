//! What a statement is, in PostgreSQL's terms: its [`kind`]s and [`flag`]s (the
//! vocabulary policy rules name), the [`Statement`] (a neutral request plus PostgreSQL's
//! own facts), and why a text may not be classifiable. Types only.

use serde::Serialize;

use super::Request;

/// What a statement is, for policy: PostgreSQL's [`Kind`](crate::govern::Kind)s. A
/// statement can have several kinds (a SELECT whose CTE deletes has `select` and
/// `delete`); the first is its primary kind.
pub mod kind {
    use crate::govern::Kind;

    pub const SELECT: Kind = Kind::new("select");
    pub const INSERT: Kind = Kind::new("insert");
    pub const UPDATE: Kind = Kind::new("update");
    pub const DELETE: Kind = Kind::new("delete");
    pub const MERGE: Kind = Kind::new("merge");
    /// COPY ... FROM (writes a table).
    pub const COPY_IN: Kind = Kind::new("copy_in");
    /// COPY ... TO (reads a table or query).
    pub const COPY_OUT: Kind = Kind::new("copy_out");
    /// CREATE / ALTER / DROP / TRUNCATE / COMMENT and other schema changes.
    pub const DDL: Kind = Kind::new("ddl");
    /// GRANT / REVOKE / roles.
    pub const DCL: Kind = Kind::new("dcl");
    /// BEGIN / COMMIT / ROLLBACK / SAVEPOINT / PREPARE TRANSACTION.
    pub const TRANSACTION: Kind = Kind::new("transaction");
    /// SET / SHOW / RESET / DISCARD / DEALLOCATE / LISTEN / NOTIFY / UNLISTEN.
    pub const SESSION: Kind = Kind::new("session");
    /// FETCH / MOVE / CLOSE of a cursor.
    pub const CURSOR: Kind = Kind::new("cursor");
    /// LOCK TABLE.
    pub const LOCK: Kind = Kind::new("lock");
    /// VACUUM / ANALYZE / CLUSTER / REINDEX / CHECKPOINT / REFRESH MATERIALIZED VIEW.
    pub const MAINTENANCE: Kind = Kind::new("maintenance");
    /// ALTER SYSTEM, LOAD, CREATE/DROP DATABASE, tablespaces, extensions.
    pub const ADMIN: Kind = Kind::new("admin");
    /// CALL procedure.
    pub const CALL: Kind = Kind::new("call");
    /// DO block; its PL/pgSQL body's statements add their kinds.
    pub const DO: Kind = Kind::new("do");
    /// SQL-level EXECUTE of a prepared statement (its text is not seen here; see
    /// [`super::PreparedStatements::resolve`]).
    pub const EXECUTE: Kind = Kind::new("execute");
    /// Protocol-level FunctionCall message (by function OID).
    pub const FUNCTION_CALL: Kind = Kind::new("function_call");

    /// Every kind, for validating policy rules.
    pub const ALL: &[Kind] = &[
        SELECT,
        INSERT,
        UPDATE,
        DELETE,
        MERGE,
        COPY_IN,
        COPY_OUT,
        DDL,
        DCL,
        TRANSACTION,
        SESSION,
        CURSOR,
        LOCK,
        MAINTENANCE,
        ADMIN,
        CALL,
        DO,
        EXECUTE,
        FUNCTION_CALL,
    ];
}

/// PostgreSQL's risky features ([`Flag`](crate::govern::Flag)s). An allow rule matches a
/// statement with a flag only when it names that flag in `permit_flags`: risky features
/// are never allowed by accident of a broad rule.
pub mod flag {
    use crate::govern::Flag;

    pub const UPDATE_WITHOUT_WHERE: Flag = Flag::new("update_without_where");
    pub const DELETE_WITHOUT_WHERE: Flag = Flag::new("delete_without_where");
    /// INSERT/UPDATE/DELETE/MERGE inside WITH.
    pub const DATA_MODIFYING_CTE: Flag = Flag::new("data_modifying_cte");
    /// EXPLAIN ANALYZE: the explained statement runs.
    pub const EXPLAIN_ANALYZE: Flag = Flag::new("explain_analyze");
    /// Creates a table from a query (CREATE TABLE AS, SELECT INTO).
    pub const CREATE_TABLE_AS: Flag = Flag::new("create_table_as");
    /// COPY ... PROGRAM: runs a shell command on the database server.
    pub const COPY_PROGRAM: Flag = Flag::new("copy_program");
    /// COPY to or from a file on the database server.
    pub const SERVER_FILE: Flag = Flag::new("server_file");
    /// SET ROLE, SET SESSION AUTHORIZATION, set_config('role', ...).
    pub const ROLE_CHANGE: Flag = Flag::new("role_change");
    /// SET search_path or set_config('search_path', ...): changes what names mean.
    pub const SEARCH_PATH_CHANGE: Flag = Flag::new("search_path_change");
    /// SET client_encoding / standard_conforming_strings (or set_config of them):
    /// changes how the server reads SQL text, which the proxy's parser could then read
    /// differently.
    pub const LEXER_CHANGE: Flag = Flag::new("lexer_change");
    /// SQL whose text is not visible to the parser: EXECUTE of a string in PL/pgSQL (DO
    /// blocks, function bodies), SQL-level EXECUTE of an unknown prepared statement,
    /// query_to_xml(...), and function bodies in languages other than plpgsql and sql.
    pub const DYNAMIC_SQL: Flag = Flag::new("dynamic_sql");
    /// A function with effects outside the statement: files, large objects, dblink,
    /// signalling backends, reloading configuration, replication slots.
    pub const SIDE_EFFECT_FUNCTION: Flag = Flag::new("side_effect_function");
    /// Calls a function the server marks volatile (it may write or differ per row:
    /// `nextval`, `random`, most user functions), or one the session could not learn.
    /// Set by sessions from the catalog (`policy explain` has none).
    pub const VOLATILE_FUNCTION: Flag = Flag::new("volatile_function");
    /// Calls a function that is not built in (made after initdb: user functions,
    /// extensions), or one the session could not learn. Set by sessions from the catalog.
    pub const USER_FUNCTION: Flag = Flag::new("user_function");
    /// Calls a SECURITY DEFINER function (it runs with its owner's rights). Set by
    /// sessions from the catalog.
    pub const SECURITY_DEFINER: Flag = Flag::new("security_definer");

    /// Every flag, for validating policy rules.
    pub const ALL: &[Flag] = &[
        UPDATE_WITHOUT_WHERE,
        DELETE_WITHOUT_WHERE,
        DATA_MODIFYING_CTE,
        EXPLAIN_ANALYZE,
        CREATE_TABLE_AS,
        COPY_PROGRAM,
        SERVER_FILE,
        ROLE_CHANGE,
        SEARCH_PATH_CHANGE,
        LEXER_CHANGE,
        DYNAMIC_SQL,
        SIDE_EFFECT_FUNCTION,
        VOLATILE_FUNCTION,
        USER_FUNCTION,
        SECURITY_DEFINER,
    ];
}

/// One statement: the neutral [`Request`] policy, masking and the journal see (tables as
/// `schema.name`, unqualified names resolved as the default search_path would: `pg_*` to
/// `pg_catalog`, others to `public`; functions as written), plus what only PostgreSQL
/// sessions need.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct Statement {
    #[serde(flatten)]
    pub request: Request,
    /// PREPARE / EXECUTE / DEALLOCATE at the SQL level: the name involved, so a session
    /// can judge an EXECUTE by what was prepared ([`super::PreparedStatements`]).
    pub prepared: Option<Prepared>,
    /// COMMIT (or END, COMMIT AND CHAIN): makes the open transaction's writes stand, so a
    /// session can judge it by what the transaction wrote.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub commits: bool,
    /// A plain SELECT whose every `set_config` call names, as a literal, a setting a
    /// worker may choose at startup (`jit`, `statement_timeout`, ...): the built-in's
    /// volatility then means only that setting changes, so it is not counted as a
    /// volatile function (asyncpg turns `jit` off this way around its introspection).
    #[serde(skip)]
    pub harmless_set_config: bool,
    /// A cursor or SQL-level prepared statement named with the agent's reserved prefix
    /// (DECLARE, FETCH, MOVE, CLOSE, PREPARE, EXECUTE, DEALLOCATE): refused, as such
    /// names are in the protocol's own messages (see [`crate::protocols::postgres::names`]).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reserved_name: Option<String>,
}

/// A statement is its request plus PostgreSQL's own facts: read it as one.
impl std::ops::Deref for Statement {
    type Target = Request;
    fn deref(&self) -> &Request {
        &self.request
    }
}

impl std::ops::DerefMut for Statement {
    fn deref_mut(&mut self) -> &mut Request {
        &mut self.request
    }
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

/// Why a text cannot be judged. Such text is always refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Unclassifiable {
    #[error("statement is {len} bytes, over the {max}-byte limit for analysis")]
    TooLong { len: usize, max: usize },
    #[error("statement contains a NUL byte")]
    Nul,
    /// The message's text itself does not parse: the server's parser (which the
    /// agent's is) would reject it too, with a syntax error.
    #[error("statement does not parse: {0}")]
    Grammar(String),
    /// Something inside it does not parse (a procedural body, a fragment of one).
    #[error("statement does not parse: {0}")]
    Syntax(String),
    #[error("statement of type {0} is not understood")]
    Unsupported(String),
    #[error("parser unavailable: {0}")]
    Internal(String),
}
