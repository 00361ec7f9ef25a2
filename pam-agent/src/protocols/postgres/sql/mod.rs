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
//! - `plpgsql`: DO blocks and PL/pgSQL function bodies, statement by statement.
//! - [`PreparedStatements`]: judging SQL-level `EXECUTE name` as what was prepared.
//!
//! Architecture invariant: nothing here knows about the wire protocol or the policy.

mod classify;
mod columns;
mod copy;
mod normalize;
mod plpgsql;
mod pool;
mod prepared;

pub use classify::{Flag, Kind, Prepared, Statement, Unclassifiable, classify};
pub use columns::{Clause, ColumnReference};
pub use copy::{CopyOut, CopyOutError, copy_out};
pub use pool::{Classified, Classifier, ClassifierConfig};
pub use prepared::PreparedStatements;
