//! SQL-level prepared statements: `PREPARE p AS DELETE ...` is classified as the DELETE
//! it prepares, and a later `EXECUTE p` is judged as that same statement. The session
//! keeps one [`PreparedStatements`] per connection and feeds it what the server did.
//! Protocol-level named statements (Parse with a name) share PostgreSQL's namespace, so
//! the session registers those too ([`PreparedStatements::insert`]).

use std::collections::HashMap;

use super::{
    functions::is_dynamic_sql_function,
    statement::{Prepared, Statement, flag},
};

/// One session's named prepared statements, as classified when prepared.
#[derive(Debug, Default, Clone)]
pub struct PreparedStatements {
    by_name: HashMap<String, Statement>,
}

/// A bound on remembered statements: PostgreSQL has none, but the agent's memory does. A
/// name that is not remembered only makes its EXECUTE unresolved (refused unless allowed).
const MAX_ENTRIES: usize = 10_000;

impl PreparedStatements {
    pub fn new() -> Self {
        Self::default()
    }

    /// Records the effect of `st` once the server has completed it successfully (a
    /// PREPARE that failed, e.g. because the name exists, must not replace the entry).
    pub fn completed(&mut self, st: &Statement) {
        match &st.prepared {
            Some(Prepared::Prepare(name)) => self.insert(name, st.clone()),
            Some(Prepared::Deallocate(Some(name))) => self.remove(name),
            Some(Prepared::Deallocate(None)) => self.by_name.clear(),
            Some(Prepared::Execute(_)) | None => {}
        }
    }

    /// Remembers a protocol-level named statement (Parse with a non-empty name), judged at
    /// Parse, once the server has answered ParseComplete.
    pub fn insert(&mut self, name: &str, st: Statement) {
        if self.by_name.len() >= MAX_ENTRIES && !self.by_name.contains_key(name) {
            return;
        }
        self.by_name.insert(name.to_owned(), st);
    }

    /// Forgets a name (DEALLOCATE, or protocol Close of a statement).
    pub fn remove(&mut self, name: &str) {
        self.by_name.remove(name);
    }

    /// The statement to judge in place of `st` when `st` is `EXECUTE name(...)` of a
    /// remembered statement: the prepared statement's kinds, tables, functions, flags and
    /// columns, plus what the EXECUTE's own arguments do, under the EXECUTE's text and
    /// fingerprint. `None` otherwise: judge `st` itself (kind `execute`, flagged
    /// `dynamic_sql`, so refused unless a rule allows it).
    pub fn resolve(&self, st: &Statement) -> Option<Statement> {
        let Some(Prepared::Execute(name)) = &st.prepared else {
            return None;
        };
        let prepared = self.by_name.get(name)?;
        let mut out = prepared.clone();
        out.text.clone_from(&st.text);
        out.fingerprint.clone_from(&st.fingerprint);
        out.prepared = st.prepared.clone();
        out.tables.extend(st.tables.iter().cloned());
        out.writes.extend(st.writes.iter().cloned());
        out.functions.extend(st.functions.iter().cloned());
        // The EXECUTE's own `dynamic_sql` stood for "unknown statement"; it is known now.
        // Its arguments keep theirs.
        let args_dynamic = st
            .functions
            .iter()
            .any(|f| is_dynamic_sql_function(f.rsplit('.').next().unwrap_or(f)));
        out.flags.extend(
            st.flags
                .iter()
                .copied()
                .filter(|f| *f != flag::DYNAMIC_SQL || args_dynamic),
        );
        out.columns.extend(st.columns.iter().cloned());
        out.columns.sort();
        out.columns.dedup();
        out.derived.extend(st.derived.iter().cloned());
        out.derived.sort();
        out.derived.dedup();
        Some(out)
    }

    pub fn len(&self) -> usize {
        self.by_name.len()
    }

    pub fn is_empty(&self) -> bool {
        self.by_name.is_empty()
    }
}
