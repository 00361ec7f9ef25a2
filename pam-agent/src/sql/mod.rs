//! What a SQL text does, as far as policy is concerned: PostgreSQL's own parser
//! (libpg_query, through `pg_query`) behind one function, [`classify`].
//!
//! - [`classify`]: text -> one [`Statement`] per statement, or [`Unclassifiable`].
//!   Pure; no I/O. Deep ASTs need a big stack: call it on a [`Classifier`] thread.
//! - [`Classifier`]: a small pool of parser threads with a known stack size, and a
//!   bounded cache of results keyed by the exact statement text, and one keyed by the
//!   text with its literals replaced, for results no literal can change (`normalize`).
//!
//! Architecture invariant: nothing here knows about the wire protocol or the policy.

mod classify;
mod normalize;
mod pool;

pub use classify::{Flag, Kind, Statement, Unclassifiable, classify};
pub use pool::{Classified, Classifier, ClassifierConfig};
