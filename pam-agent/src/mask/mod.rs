//! Inline masking of sensitive values in query results (issue 5): a protocol-free engine.
//!
//! The engine does no I/O and knows no wire format: a protocol tells it what each result
//! column is ([`Column`]: a name if known, and the [`ValueKind`] of its values) and hands
//! it each value; the engine says what to send instead. PostgreSQL's side (RowDescription,
//! DataRow and COPY codecs, type OIDs, the catalog resolver) is
//! `protocols::postgres::masking`. Path of one result set:
//! 1. [`MaskingPolicy::for_subject`] (or [`MaskingPolicy::with_rules`]) picks the active rules
//!    for a connection: a [`Masker`].
//! 2. [`Masker::plan_result`] decides per column: pass, mask with a column rule, scan with
//!    detectors, or withhold: a [`RowPlan`].
//! 3. The protocol's row codec calls [`RowPlan::mask_value`] for each value a column's plan
//!    touches, and [`RowPlan::count_row`] per row.
//! 4. [`RowPlan::take_report`] yields the [`MaskingReport`] for the audit journal (counts only).
//!
//! Layout:
//! - [`rules`]: the `[masking]` config as written (serde) and its [`Selector`].
//! - [`engine`]: compiled rules ([`MaskingPolicy`]) and one connection's active set ([`Masker`]).
//! - [`column`]: result columns as the engine sees them ([`ColumnName`], [`Origin`]).
//! - [`value`]: [`ValueKind`], what a protocol says about a column type's values.
//! - [`plan`]: what to do with each column of one result set ([`RowPlan`]).
//! - [`detect`]: content detectors (one `RegexSet` pre-filter, then checksum confirmation).
//! - [`strategy`]: how a text value is masked (redact, partial, keyed hash, NULL, e-mail).
//! - [`side_channel`]: masked columns a statement filters, sorts, groups or joins on.
//! - [`lineage`]: result values computed from masked columns (refused unless through a
//!   non-revealing function such as `count`).
//! - [`report`]: per-statement audit counts.
//!
//! Architecture invariant: nothing here imports a protocol, the journal or tokio
//! (`tests/architecture.rs` checks it).

pub(crate) mod column;
pub(crate) mod detect;
pub(crate) mod engine;
pub(crate) mod lineage;
pub(crate) mod plan;
pub(crate) mod probe;
pub(crate) mod report;
pub(crate) mod rules;
pub(crate) mod side_channel;
pub(crate) mod strategy;
pub(crate) mod value;

// The seams other modules, the binary and the integration tests use.
pub use column::{ColumnName, ResolvedColumn};
pub use detect::DetectorKind;
pub use engine::{ConfigError, Masker, MaskingPolicy};
pub use lineage::{Derivation, DerivedHit, Slot, WithheldOutput};
pub use plan::RowPlan;
pub use probe::sensitive_value;
pub use report::{MaskSource, MaskingReport, ReportEntry};
pub use rules::{MaskingConfig, OnDerived, Selector, Strategy, Subject};
pub use side_channel::{Clause, ColumnReference, SideChannel};
pub use strategy::StrategyKind;
// What a protocol's codecs use (inside the crate only).
pub(crate) use column::{Column, Origin};
pub(crate) use plan::Outcome;
pub(crate) use value::ValueKind;

#[cfg(test)]
pub(crate) mod fixtures;
#[cfg(test)]
mod tests;
