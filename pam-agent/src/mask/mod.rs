//! Inline masking of sensitive values in PostgreSQL results (issue 5).
//!
//! The PostgreSQL session calls this engine; the engine does no I/O on the wire and knows
//! nothing about sockets. Path of one result set:
//! 1. [`MaskingPolicy::for_subject`] (or [`MaskingPolicy::with_rules`]) picks the active rules
//!    for a connection: a [`Masker`].
//! 2. At RowDescription, [`ColumnResolver`] names each column (table OID + attnum →
//!    schema.table.column; one catalog query per batch of unknown pairs, cached per connection).
//! 3. [`Masker::plan`] decides per column: pass, mask with a column rule, or scan with detectors.
//! 4. [`RowPlan::rewrite_data_row`] / [`RowPlan::rewrite_copy_text_row`] rewrite each row.
//! 5. [`RowPlan::take_report`] yields the [`MaskingReport`] for the audit journal (counts only).
//!
//! Layout:
//! - [`rules`]: the `[masking]` config as written (serde) and its [`Selector`].
//! - [`engine`]: compiled rules ([`MaskingPolicy`]) and one connection's active set ([`Masker`]).
//! - [`resolve`]: column names from the catalog, and their cache.
//! - [`row_description`]: the RowDescription fields masking needs, and Bind's result formats.
//! - [`plan`]: what to do with each column of one result set ([`RowPlan`]).
//! - [`detect`]: content detectors (one `RegexSet` pre-filter, then checksum confirmation).
//! - [`strategy`]: how a text value is masked (redact, partial, keyed hash, NULL, e-mail).
//! - [`pgtype`]: which PostgreSQL types can hold a masked value, per wire format.
//! - [`datarow`]: rewriting one DataRow message.
//! - [`copy_text`]: rewriting one COPY TO STDOUT text row.
//! - [`side_channel`]: masked columns a statement filters, sorts, groups or joins on.
//! - [`report`]: per-statement audit counts.

pub mod copy_text;
pub mod datarow;
pub mod detect;
pub mod engine;
pub mod pgtype;
pub mod plan;
pub mod report;
pub mod resolve;
pub mod row_description;
pub mod rules;
pub mod side_channel;
pub mod strategy;

pub use copy_text::{CopyRowError, CopyTextOptions};
pub use datarow::DataRowError;
pub use detect::DetectorKind;
pub use engine::{ConfigError, Masker, MaskingPolicy};
pub use plan::{FieldInfo, PlanError, PlannedColumn, RowPlan};
pub use report::{MaskSource, MaskingReport, ReportEntry};
pub use resolve::{
    CatalogRow, ColumnName, ColumnResolver, FieldSource, ResolveError, ResolvedColumn,
};
pub use row_description::RowDescriptionError;
pub use rules::{MaskingConfig, Selector, Strategy, Subject};
pub use side_channel::{Clause, ColumnReference, SideChannel};
pub use strategy::StrategyKind;

#[cfg(test)]
mod tests;
