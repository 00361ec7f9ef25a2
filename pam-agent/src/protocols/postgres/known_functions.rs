//! What the session's server says its functions are, so a call is judged by the function
//! the server will run, not by the name as written.
//!
//! Before a statement that calls functions is judged, the names it calls that the
//! session does not know yet are looked up in `pg_proc` (one injected group, like the
//! masking preload; every schema's functions of those names), together with the
//! session's effective search path (`current_schemas(true)`, so the implicit `pg_catalog`
//! is in it) and role. A call then resolves as the server resolves it:
//!
//! - `schema.f`: the functions `f` in `schema`;
//! - `f`: the functions `f` in every schema of the path, in order; one is dropped only
//!   when an earlier schema has one with the same argument types (the server ignores
//!   the later one then), so a user function that could win overload resolution over a
//!   built-in (other argument types, defaults, variadic) counts as called.
//!
//! The request names the resolved `schema.f` (built-ins as `pg_catalog.f`) and carries
//! the flags of what it may run: `volatile_function` (any candidate volatile),
//! `user_function` (any candidate not built in: OID at or above 16384, the first the
//! server gives to objects made after initdb), `security_definer`. A call that resolves
//! to nothing (made in the same message, or unknown to the server) reads as a volatile
//! user function. Knowledge is dropped after anything that can change what a name
//! resolves to (DDL, DO, CALL, session statements, a role or search path change, the end
//! of a transaction that had one) and after [`MAX_AGE`] (functions other sessions
//! create); statements later in the same message or open batch then read their calls as
//! unknown, since a lookup could not see the change yet.

use std::{
    collections::{BTreeSet, HashMap},
    time::{Duration, Instant},
};

use super::{
    masking::datarow,
    notes::Injected,
    sql::{Statement, flag, is_dynamic_sql_function, is_side_effect_function, kind, quote_part},
    wire::{frame::Frame, frontend},
};
use crate::govern::Flag;

/// Looked-up functions are looked up again after this long, so functions other sessions
/// create (a shadow earlier on the path) are seen.
pub const MAX_AGE: Duration = Duration::from_secs(60);

/// Every schema's functions named in `$1` (a text array), one row per schema and name,
/// and one row with the search path and role. Built in: an OID below 16384
/// (`FirstNormalObjectId`, the first the server gives after initdb). Operators and types are schema-qualified
/// so a worker's search path cannot change what this query does.
const LOOKUP_SQL: &str = "WITH f AS (\
  SELECT n.nspname AS s, p.proname AS name, \
    pg_catalog.bool_or(p.provolatile OPERATOR(pg_catalog.=) 'v') AS v, \
    pg_catalog.bool_or(p.prosecdef) AS d, \
    pg_catalog.bool_or(p.oid OPERATOR(pg_catalog.>=) 16384::pg_catalog.oid) AS u, \
    pg_catalog.bool_or(p.pronargdefaults OPERATOR(pg_catalog.>) 0 \
      OR p.provariadic OPERATOR(pg_catalog.<>) 0::pg_catalog.oid) AS x, \
    pg_catalog.string_agg(DISTINCT l.lanname::pg_catalog.text, ',') AS lang, \
    pg_catalog.string_agg(p.proargtypes::pg_catalog.text, ';') AS sig \
  FROM pg_catalog.pg_proc p \
  JOIN pg_catalog.pg_namespace n ON n.oid OPERATOR(pg_catalog.=) p.pronamespace \
  JOIN pg_catalog.pg_language l ON l.oid OPERATOR(pg_catalog.=) p.prolang \
  WHERE p.proname OPERATOR(pg_catalog.=) ANY ($1::pg_catalog.name[]) \
  GROUP BY 1, 2) \
SELECT 'f', f.s, f.name, \
  CASE WHEN f.v THEN 'v' ELSE '' END OPERATOR(pg_catalog.||) \
  CASE WHEN f.d THEN 's' ELSE '' END OPERATOR(pg_catalog.||) \
  CASE WHEN f.u THEN 'u' ELSE '' END OPERATOR(pg_catalog.||) \
  CASE WHEN f.x THEN 'x' ELSE '' END, f.lang, f.sig FROM f \
UNION ALL \
SELECT 'p', pg_catalog.array_to_string(pg_catalog.current_schemas(true), ','), \
  CURRENT_USER::pg_catalog.text, '', '', ''";

/// The one function with OID `$1` (a FunctionCall names its function by OID), as one
/// row of [`LOOKUP_SQL`]'s shape; no row when no function has it.
const OID_LOOKUP_SQL: &str = "SELECT 'f', n.nspname, p.proname, \
  CASE WHEN p.provolatile OPERATOR(pg_catalog.=) 'v' THEN 'v' ELSE '' END OPERATOR(pg_catalog.||) \
  CASE WHEN p.prosecdef THEN 's' ELSE '' END OPERATOR(pg_catalog.||) \
  CASE WHEN p.oid OPERATOR(pg_catalog.>=) 16384::pg_catalog.oid THEN 'u' ELSE '' END, \
  l.lanname::pg_catalog.text, p.proargtypes::pg_catalog.text \
  FROM pg_catalog.pg_proc p \
  JOIN pg_catalog.pg_namespace n ON n.oid OPERATOR(pg_catalog.=) p.pronamespace \
  JOIN pg_catalog.pg_language l ON l.oid OPERATOR(pg_catalog.=) p.prolang \
  WHERE p.oid OPERATOR(pg_catalog.=) $1::pg_catalog.oid";

/// Why a lookup's answer cannot be used.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum LookupError {
    /// The server answered the lookup with an error of its own (a worker's cancel that
    /// landed on it, the worker's aborted transaction, a timeout): the ErrorResponse.
    #[error(
        "the server failed the function lookup ({})",
        super::wire::backend::error_code(.0).unwrap_or_default()
    )]
    Failed(Frame),
    #[error("function lookup row is not what the query returns")]
    Malformed,
    #[error("the session ended before the function lookup was answered")]
    Ended,
    /// Sent inside the worker's open batch after one of its messages had failed: the
    /// server skipped it (and skips the worker's messages too, until Sync).
    #[error("the server skipped the function lookup (the batch had already failed)")]
    Skipped,
}

/// One schema's functions of one name.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Group {
    pub schema: String,
    pub volatile: bool,
    pub security_definer: bool,
    /// Any of them is not built in.
    pub user: bool,
    /// Any of them has defaults or is variadic (could match other argument counts).
    pub flexible: bool,
    pub languages: Vec<String>,
    /// Argument type OIDs of each (as the server prints an oidvector).
    pub signatures: Vec<String>,
}

/// One row of the lookup's answer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Row {
    Function {
        name: String,
        group: Group,
    },
    /// The effective search path (implicit schemas included) and the current role.
    Path {
        schemas: Vec<String>,
        role: String,
    },
}

impl Row {
    /// One DataRow body of the lookup (text format, six columns).
    pub fn from_data_row(body: &[u8]) -> Result<Row, LookupError> {
        let values = datarow::values(body).map_err(|_| LookupError::Malformed)?;
        if values.len() != 6 {
            return Err(LookupError::Malformed);
        }
        let text = |i: usize| -> Result<&str, LookupError> {
            match values[i] {
                None => Ok(""),
                Some(v) => std::str::from_utf8(v).map_err(|_| LookupError::Malformed),
            }
        };
        let list = |s: &str, sep: char| -> Vec<String> {
            s.split(sep)
                .filter(|x| !x.is_empty())
                .map(str::to_owned)
                .collect()
        };
        match text(0)? {
            "p" => Ok(Row::Path {
                schemas: list(text(1)?, ','),
                role: text(2)?.to_owned(),
            }),
            "f" => {
                let marks = text(3)?;
                Ok(Row::Function {
                    name: text(2)?.to_owned(),
                    group: Group {
                        schema: text(1)?.to_owned(),
                        volatile: marks.contains('v'),
                        security_definer: marks.contains('s'),
                        user: marks.contains('u'),
                        flexible: marks.contains('x'),
                        languages: list(text(4)?, ','),
                        signatures: list(text(5)?, ';'),
                    },
                })
            }
            _ => Err(LookupError::Malformed),
        }
    }
}

/// The group that looks up `names` (see [`LOOKUP_SQL`]) as statement and portal `name`
/// (the session's reserved one), and the note that announces it.
pub fn lookup_group(names: &[String], name: &str) -> (Injected, Vec<u8>) {
    let mut bytes = lookup_messages(names, name);
    bytes.extend_from_slice(&frontend::sync().raw);
    (Injected::Functions, bytes)
}

/// The group that looks up the function with OID `oid` (see [`OID_LOOKUP_SQL`]), as
/// statement and portal `name`; answered like [`lookup_group`].
pub fn oid_lookup_group(oid: u32, name: &str) -> (Injected, Vec<u8>) {
    let oid = oid.to_string();
    let mut bytes = Vec::with_capacity(OID_LOOKUP_SQL.len() + 128);
    for f in [
        frontend::close_statement(name),
        frontend::parse_message(name, OID_LOOKUP_SQL),
        frontend::bind_text_message(name, name, &[&oid]),
        frontend::execute_message(name),
        frontend::close_portal(name),
        frontend::close_statement(name),
        frontend::sync(),
    ] {
        bytes.extend_from_slice(&f.raw);
    }
    (Injected::Functions, bytes)
}

/// A FunctionCall's function from the answer to [`oid_lookup_group`]: `schema.name`
/// with its flags, or an unknown call named `oid:<n>` when no function has that OID.
pub fn resolve_oid(oid: u32, rows: &[Row]) -> Resolved {
    let found = rows.iter().find_map(|r| match r {
        Row::Function { name, group } => Some((name, group)),
        Row::Path { .. } => None,
    });
    let Some((name, g)) = found else {
        return unknown(&format!("oid:{oid}"));
    };
    let mut r = Resolved {
        names: vec![format!("{}.{}", quote_part(&g.schema), quote_part(name))],
        flags: BTreeSet::new(),
    };
    // What the classifier flags by name for a call written in SQL (`lo_import`,
    // `pg_read_file`, ...), by the same name.
    if is_side_effect_function(name) {
        r.flags.insert(flag::SIDE_EFFECT_FUNCTION);
    }
    if is_dynamic_sql_function(name) {
        r.flags.insert(flag::DYNAMIC_SQL);
    }
    if g.volatile {
        r.flags.insert(flag::VOLATILE_FUNCTION);
    }
    if g.user {
        r.flags.insert(flag::USER_FUNCTION);
    }
    if g.security_definer {
        r.flags.insert(flag::SECURITY_DEFINER);
    }
    r
}

/// The same lookup sent inside the worker's open batch (after some of its messages went
/// upstream, before its Sync), ending with Flush instead of Sync so the worker's batch
/// and implicit transaction go on around it. It only reads the catalog; the server
/// half tells its answers apart by counting ([`super::answers`]).
pub fn inline_lookup(names: &[String], name: &str) -> Vec<u8> {
    let mut bytes = lookup_messages(names, name);
    bytes.extend_from_slice(&frontend::flush().raw);
    bytes
}

/// Close (a statement left by a lookup that failed half way would make the next Parse
/// fail; closing a missing one is no error), Parse, Bind, Execute, Close, Close.
fn lookup_messages(names: &[String], name: &str) -> Vec<u8> {
    let array = text_array(names);
    let mut bytes = Vec::with_capacity(LOOKUP_SQL.len() + array.len() + 128);
    for f in [
        frontend::close_statement(name),
        frontend::parse_message(name, LOOKUP_SQL),
        frontend::bind_text_message(name, name, &[&array]),
        frontend::execute_message(name),
        frontend::close_portal(name),
        frontend::close_statement(name),
    ] {
        bytes.extend_from_slice(&f.raw);
    }
    bytes
}

/// A text[] literal of `items`, each quoted (array syntax, independent of the session's
/// string settings).
fn text_array(items: &[String]) -> String {
    let mut out = String::from("{");
    for (i, item) in items.iter().enumerate() {
        if i > 0 {
            out.push(',');
        }
        out.push('"');
        for c in item.chars() {
            if c == '"' || c == '\\' {
                out.push('\\');
            }
            out.push(c);
        }
        out.push('"');
    }
    out.push('}');
    out
}

/// What a call resolved to.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Resolved {
    /// `schema.name` of every function the call may run (as written when none).
    pub names: Vec<String>,
    pub flags: BTreeSet<Flag>,
}

/// What the session knows of its server's functions.
#[derive(Debug, Default)]
pub struct KnownFunctions {
    /// The effective search path when last looked up; `None`: not looked up since the
    /// last change.
    path: Option<Vec<String>>,
    role: String,
    /// Name → every schema's functions of that name (empty: none exists).
    names: HashMap<String, Vec<Group>>,
    loaded_at: Option<Instant>,
    /// A statement that can change resolution was forwarded in the worker's open batch:
    /// a lookup now would not see its effect.
    changed_in_batch: bool,
    /// A transaction that changed resolution may still be open (its end may undo it).
    changed_in_txn: bool,
    /// The role and search path last put on record.
    recorded: Option<(String, Vec<String>)>,
}

impl KnownFunctions {
    pub fn new() -> Self {
        Self::default()
    }

    /// The names of `statements`' calls that must be looked up before they can be
    /// resolved (none when everything needed is known, or when a lookup would not see
    /// a change in the open batch).
    pub fn missing(&mut self, statements: &[Statement]) -> Vec<String> {
        if self.loaded_at.is_some_and(|t| t.elapsed() > MAX_AGE) {
            self.forget();
        }
        let mut out = BTreeSet::new();
        for st in statements {
            for f in &st.functions {
                let Some(parts) = split_name(f) else { continue };
                if let Some(base) = parts.last()
                    && (self.path.is_none() || !self.names.contains_key(base))
                {
                    out.insert(base.clone());
                }
            }
            if changes_resolution(st) {
                break;
            }
        }
        if out.is_empty() {
            return Vec::new();
        }
        // A lookup needs the path too; keep asking for what is already known so one
        // answer covers them.
        out.into_iter().collect()
    }

    /// Whether a lookup now would see every change the worker made.
    pub fn can_look_up(&self) -> bool {
        !self.changed_in_batch
    }

    /// The answer to a lookup of `asked`.
    pub fn absorb(&mut self, asked: &[String], rows: Vec<Row>) {
        let mut path = None;
        for a in asked {
            self.names.insert(a.clone(), Vec::new());
        }
        for r in rows {
            match r {
                Row::Path { schemas, role } => {
                    path = Some(schemas);
                    self.role = role;
                }
                Row::Function { name, group } => {
                    self.names.entry(name).or_default().push(group);
                }
            }
        }
        if path.is_some() && self.path != path {
            // Names known before were resolved against another path: keep their
            // groups (they do not depend on it), the path is what changes.
            self.path = path;
        }
        if self.loaded_at.is_none() {
            self.loaded_at = Some(Instant::now());
        }
    }

    /// The effective role and search path, when they differ from those last put on
    /// record (which they then are).
    pub fn settings_changed(&mut self) -> Option<(String, Vec<String>)> {
        let now = (self.role.clone(), self.path.clone()?);
        if self.recorded.as_ref() == Some(&now) {
            return None;
        }
        self.recorded = Some(now.clone());
        Some(now)
    }

    /// Drops what is known (it may no longer hold).
    pub fn forget(&mut self) {
        self.path = None;
        self.names.clear();
        self.loaded_at = None;
    }

    /// `statements` were forwarded upstream: those that change resolution drop what is
    /// known; `in_batch`: they went into the worker's open extended batch.
    pub fn forwarded(&mut self, statements: &[&Statement], in_batch: bool) {
        for st in statements {
            let ends_txn = st.kind() == kind::TRANSACTION;
            if changes_resolution(st) || (ends_txn && self.changed_in_txn) {
                self.forget();
                self.changed_in_batch |= in_batch;
                self.changed_in_txn |= !ends_txn;
            }
        }
    }

    /// The worker's batch ended (Sync) or none was open: what it changed is on the
    /// server before anything injected after it.
    pub fn batch_closed(&mut self) {
        self.changed_in_batch = false;
    }

    /// `statements` with each call resolved (see the module docs). A statement after
    /// one that changes resolution, or any statement when `certain` is false, reads its
    /// calls as unknown.
    pub fn resolve_all(&self, statements: &[Statement], certain: bool) -> Vec<Statement> {
        let mut certain = certain && self.path.is_some();
        statements
            .iter()
            .map(|st| {
                let mut st = st.clone();
                self.resolve_statement(&mut st, certain);
                if changes_resolution(&st) {
                    certain = false;
                }
                st
            })
            .collect()
    }

    fn resolve_statement(&self, st: &mut Statement, certain: bool) {
        let called = std::mem::take(&mut st.functions);
        for f in called {
            let mut r = if certain {
                self.resolve(&f)
            } else {
                unknown(&f)
            };
            if st.harmless_set_config && r.names == ["pg_catalog.set_config"] {
                // The built-in alone (no shadow): it changes a harmless setting only.
                r.flags.remove(&flag::VOLATILE_FUNCTION);
            }
            st.functions.extend(r.names);
            st.flags.extend(r.flags);
        }
    }

    /// One call, as written (`f`, `s.f`, parts with dots quoted).
    pub fn resolve(&self, written: &str) -> Resolved {
        let (Some(path), Some(parts)) = (&self.path, split_name(written)) else {
            return unknown(written);
        };
        let Some(base) = parts.last() else {
            return unknown(written);
        };
        let Some(groups) = self.names.get(base) else {
            return unknown(written);
        };
        let chosen: Vec<&Group> = match parts.as_slice() {
            [_] => {
                let mut seen: Vec<&str> = Vec::new();
                let mut out = Vec::new();
                for schema in path.iter().filter(|s| !s.starts_with("pg_temp")) {
                    let Some(g) = groups.iter().find(|g| &g.schema == schema) else {
                        continue;
                    };
                    let hidden = !g.flexible
                        && !g.signatures.is_empty()
                        && g.signatures.iter().all(|s| seen.contains(&s.as_str()));
                    if !hidden {
                        out.push(g);
                    }
                    if !g.flexible {
                        seen.extend(g.signatures.iter().map(String::as_str));
                    }
                }
                out
            }
            [schema, _] => groups.iter().filter(|g| &g.schema == schema).collect(),
            _ => Vec::new(),
        };
        if chosen.is_empty() {
            return unknown(written);
        }
        let mut r = Resolved::default();
        for g in chosen {
            r.names
                .push(format!("{}.{}", quote_part(&g.schema), quote_part(base)));
            if g.volatile {
                r.flags.insert(flag::VOLATILE_FUNCTION);
            }
            if g.user {
                r.flags.insert(flag::USER_FUNCTION);
            }
            if g.security_definer {
                r.flags.insert(flag::SECURITY_DEFINER);
            }
        }
        r
    }
}

/// A call nothing is known of: it may run anything.
pub fn unknown(written: &str) -> Resolved {
    Resolved {
        names: vec![written.to_owned()],
        flags: [flag::VOLATILE_FUNCTION, flag::USER_FUNCTION]
            .into_iter()
            .collect(),
    }
}

/// Whether a statement can change what a function name resolves to (or which functions
/// exist): DDL, DCL, DO, CALL, session statements other than a plain SHOW (SET, RESET
/// ALL, DISCARD ALL, ...), role and search path changes anywhere (`set_config`).
pub fn changes_resolution(st: &Statement) -> bool {
    let session = st.kinds.contains(&kind::SESSION) && {
        let t = st.text.trim_start();
        !t.get(..5).is_some_and(|w| w.eq_ignore_ascii_case("show "))
    };
    session
        || st
            .kinds
            .iter()
            .any(|k| matches!(*k, kind::DDL | kind::DCL | kind::DO | kind::CALL))
        || st.flags.contains(&flag::ROLE_CHANGE)
        || st.flags.contains(&flag::SEARCH_PATH_CHANGE)
}

/// A name's parts, as the classifier writes them (`a.b`, a part with a dot or quote in
/// double quotes); `None` if it is not such a name (an OID call).
pub fn split_name(name: &str) -> Option<Vec<String>> {
    if name.starts_with("oid:") {
        return None;
    }
    let mut parts = Vec::new();
    let mut cur = String::new();
    let mut chars = name.chars().peekable();
    let mut quoted = false;
    while let Some(c) = chars.next() {
        match (c, quoted) {
            ('"', false) if cur.is_empty() => quoted = true,
            ('"', true) if chars.peek() == Some(&'"') => {
                chars.next();
                cur.push('"');
            }
            ('"', true) => quoted = false,
            ('.', false) => parts.push(std::mem::take(&mut cur)),
            (c, _) => cur.push(c),
        }
    }
    if quoted {
        return None;
    }
    parts.push(cur);
    Some(parts)
}

#[cfg(test)]
mod tests;
