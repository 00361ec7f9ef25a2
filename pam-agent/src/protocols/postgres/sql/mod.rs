//! What a SQL text does, as far as policy is concerned: PostgreSQL's own parser
//! (libpg_query, through `pg_query`) behind one function, [`classify`].
//!
//! - [`classify`]: text -> one [`Statement`] per statement, or [`Unclassifiable`].
//!   Pure; no I/O. Deep ASTs need a big stack: call it on a [`Classifier`] thread.
//! - [`Classifier`]: a small pool of parser threads with a known stack size, and a
//!   bounded cache of results keyed by the exact statement text, and one keyed by the
//!   text with its literals replaced, for results no literal can change (`normalize`).
//! - [`copy_out`]: the columns and row format of a `COPY ... TO STDOUT`, for masking.
//! - `columns`: the [`ColumnReference`]s a statement filters, joins, sorts or groups on
//!   (for the masking side-channel guard, which re-exports these types).
//! - `lineage`: the result values a statement computes from columns or whole rows rather
//!   than returning a column as itself (for the masking lineage guard).
//! - `plpgsql`: DO blocks and PL/pgSQL function bodies, statement by statement.
//! - [`PreparedStatements`]: judging SQL-level `EXECUTE name` as what was prepared.
//!
//! Architecture invariant: nothing here knows about the wire protocol or the policy.

mod classify;
mod columns;
mod copy;
mod functions;
mod lineage;
mod normalize;
mod plpgsql;
mod pool;
mod prepared;
mod scope;
mod statement;
mod tree;

pub use crate::govern::{Flag, Kind, Request};
pub use classify::classify;
pub use columns::{Clause, ColumnReference};
pub use copy::{CopyOut, CopyOutError, copy_out};
pub use functions::{is_dynamic_sql_function, is_side_effect_function, quote_part};
pub use lineage::{DefinedOutput, DefinedRef, defined_outputs};
pub use pool::{Classified, Classifier, ClassifierConfig};
pub use prepared::PreparedStatements;
pub use statement::{Prepared, Statement, Unclassifiable, flag, kind};

/// The kinds and flags PostgreSQL statements can have: what policy rules may name.
pub const VOCABULARY: crate::govern::Vocabulary = crate::govern::Vocabulary {
    kinds: kind::ALL,
    flags: flag::ALL,
};

/// A text's requests as a session reads them, parsed on a thread with the parser
/// threads' stack size (for tools). The inner error: why the text cannot be read.
pub fn requests_of(text: &str, max: usize) -> std::io::Result<Result<Vec<Request>, String>> {
    let text = text.to_owned();
    let classified = std::thread::Builder::new()
        .stack_size(ClassifierConfig::default().stack_bytes)
        .spawn(move || classify(&text, max))?
        .join()
        .map_err(|_| std::io::Error::other("the SQL parser failed"))?;
    Ok(classified
        .map(|sts| sts.into_iter().map(|s| offline(s.request)).collect())
        .map_err(|e| e.to_string()))
}

/// Without a session there is no catalog to resolve calls against: an unqualified call
/// reads as the built-in `pg_catalog.name` (what the default search path finds when no
/// other schema has that name), and no catalog flag is set. A session resolves it on
/// its server (see `known_functions`).
fn offline(mut r: Request) -> Request {
    r.functions = std::mem::take(&mut r.functions)
        .into_iter()
        .map(|f| {
            if f.starts_with("oid:") || f.contains('.') {
                f
            } else {
                format!("pg_catalog.{f}")
            }
        })
        .collect();
    r
}

#[cfg(test)]
mod policy_tests;
