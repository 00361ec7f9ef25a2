//! Masking in a session's server half: the rules active for this worker, the names of
//! the columns they can mask, and the plan of the result streaming now.
//!
//! Column names come from one catalog query (the *preload*) that the worker half
//! injects before the session's first statement and again after DDL; its answer is
//! swallowed by the server half and absorbed here. Until it is absorbed (or after DDL
//! invalidated it), a table column whose name is unknown is withheld: sent as NULL,
//! never unmasked. Every DataRow is rewritten against the plan of the RowDescription
//! before it: the worker half makes sure one precedes every Execute (injecting a
//! Describe of the portal when the worker did not send one). COPY TO STDOUT rows are
//! rewritten against a plan from an injected describe of the COPY's columns.
//!
//! Everything PostgreSQL of masking lives here; the engine (`crate::mask`) knows no
//! protocol:
//! - [`resolve`]: column names from RowDescription's table OID + attnum via one catalog
//!   query, cached, invalidated on DDL; the preload query.
//! - [`defined`]: views and generated columns the database defines, followed through
//!   their definitions to the stored columns behind them.
//! - [`row_description`]: the RowDescription fields masking needs, and Bind's result formats.
//! - [`plan`]: fields → the engine's neutral columns ([`PlanResults`] on `Masker`).
//! - [`pgtype`]: which PostgreSQL types can hold a masked value, per wire format (the
//!   engine's `ValueKind`s).
//! - [`datarow`]: rewriting one DataRow message; [`copy_text`]: one COPY TO STDOUT text row
//!   ([`RewriteRows`] on `RowPlan`).

pub mod copy_text;
pub mod datarow;
pub(crate) mod defined;
pub(crate) mod pgtype;
pub(crate) mod plan;
pub(crate) mod resolve;
pub mod row_description;
mod search;

#[cfg(test)]
mod tests;

use bytes::Buf;

pub use copy_text::{CopyRowError, CopyTextOptions};
pub use datarow::DataRowError;
pub use defined::Definition;
pub use plan::{FieldInfo, PlanError, PlanResults, PlannedColumn};
pub use resolve::{CatalogRow, ColumnResolver, FieldSource, ResolveError};
pub use row_description::RowDescriptionError;

use super::{SessionError, wire::frame::Frame};
use crate::mask::{Masker, MaskingReport, RowPlan, WithheldOutput};

/// Rewriting PostgreSQL rows with a plan (an extension of the neutral engine).
pub trait RewriteRows {
    /// [`datarow::rewrite_data_row`]: appends the rewritten DataRow message to `out`.
    fn rewrite_data_row(&mut self, body: &[u8], out: &mut Vec<u8>) -> Result<(), DataRowError>;

    /// [`copy_text::rewrite_copy_text_row`]: appends the rewritten row (newline included).
    fn rewrite_copy_text_row(
        &mut self,
        row: &[u8],
        opts: &CopyTextOptions,
        out: &mut Vec<u8>,
    ) -> Result<(), CopyRowError>;
}

impl RewriteRows for RowPlan {
    fn rewrite_data_row(&mut self, body: &[u8], out: &mut Vec<u8>) -> Result<(), DataRowError> {
        datarow::rewrite_data_row(body, self, out)
    }

    fn rewrite_copy_text_row(
        &mut self,
        row: &[u8],
        opts: &CopyTextOptions,
        out: &mut Vec<u8>,
    ) -> Result<(), CopyRowError> {
        copy_text::rewrite_copy_text_row(row, self, opts, out)
    }
}

pub(crate) struct ResultMasking {
    masker: Masker,
    resolver: ColumnResolver,
    /// The current result set's plan, from the RowDescription before it.
    plan: Option<RowPlan>,
    /// From an injected describe, for the next CopyOutResponse.
    copy_next: Option<(RowPlan, CopyTextOptions)>,
    /// The COPY TO STDOUT streaming now.
    copy: Option<(RowPlan, CopyTextOptions)>,
    /// Counts since the last completed execution.
    report: MaskingReport,
    /// The preload's horizon row, applied when the preload is absorbed.
    horizon: Option<u32>,
    /// The preload's views and generated columns, linked when it is absorbed.
    definitions: Vec<Definition>,
    /// Some active rule names columns (else no column needs a name, ever).
    names_columns: bool,
}

impl ResultMasking {
    pub fn new(masker: Masker) -> Self {
        let mut resolver = ColumnResolver::new();
        let names_columns = masker.column_patterns().next().is_some();
        if !names_columns {
            resolver.absorb_preload([]);
        }
        ResultMasking {
            masker,
            resolver,
            plan: None,
            copy_next: None,
            copy: None,
            report: MaskingReport::default(),
            horizon: None,
            definitions: Vec::new(),
            names_columns,
        }
    }

    /// The preload's answer: every column an active rule can name.
    pub fn absorb_preload(&mut self, rows: Vec<CatalogRow>) {
        self.resolver.absorb_preload(rows);
        self.resolver
            .link_definitions(&std::mem::take(&mut self.definitions));
        if let Some(h) = self.horizon.take() {
            self.resolver.set_horizon(h);
        }
    }

    /// A kind `d` row of the preload (a view's or generated column's definition).
    pub fn add_definition(&mut self, d: Definition) {
        self.definitions.push(d);
    }

    /// A preload that failed: its definitions are not linked to anything.
    pub fn discard_definitions(&mut self) {
        self.definitions.clear();
    }

    /// The preload's horizon row: relations created after it (by any session) are not
    /// known to be unnamed, so their columns are withheld until the next preload.
    pub fn set_horizon(&mut self, oid: u32) {
        self.horizon = Some(oid);
    }

    /// After DDL (or a rollback that may undo it): table OIDs and attribute numbers may
    /// mean other columns now; unknown ones are withheld until the next preload.
    pub fn invalidate(&mut self) {
        if self.names_columns {
            self.resolver.invalidate_all();
        }
    }

    /// Plans the result this RowDescription announces, with `withhold`: values its
    /// statement computes from masked columns, sent as NULL. Returns true when some
    /// column had to be withheld for want of its name: the names need reloading.
    pub fn row_description(
        &mut self,
        f: &Frame,
        withhold: &[WithheldOutput],
    ) -> Result<bool, SessionError> {
        self.finish_result();
        let mut plan = self.plan_for(f)?;
        let withheld = plan.withheld_columns() > 0;
        if !withhold.is_empty() {
            plan.withhold(withhold);
        }
        self.plan = Some(plan);
        Ok(withheld)
    }

    fn plan_for(&self, f: &Frame) -> Result<RowPlan, SessionError> {
        let fields = row_description::parse(f.body()).map_err(upstream)?;
        self.masker
            .plan_or_withhold(&fields, &self.resolver)
            .map_err(upstream)
    }

    /// Appends the DataRow, masked, to `out`.
    pub fn data_row(&mut self, f: &Frame, out: &mut Vec<u8>) -> Result<(), SessionError> {
        match &mut self.plan {
            Some(p) if p.is_passthrough() => {
                out.extend_from_slice(&f.raw);
                Ok(())
            }
            Some(p) => p.rewrite_data_row(f.body(), out).map_err(upstream),
            None => Err(SessionError::UpstreamProtocol(
                "a DataRow came without a RowDescription on a masked connection".into(),
            )),
        }
    }

    /// The end of a result set (CommandComplete, PortalSuspended, an error, NoData).
    pub fn finish_result(&mut self) {
        if let Some(mut p) = self.plan.take() {
            self.report.merge(p.take_report());
        }
    }

    /// The answer to an injected describe of a COPY's columns.
    pub fn copy_described(
        &mut self,
        f: &Frame,
        options: CopyTextOptions,
    ) -> Result<(), SessionError> {
        let plan = if options.whole_table {
            // COPY of a table sends no generated column: plan the others.
            let mut fields = row_description::parse(f.body()).map_err(upstream)?;
            fields.retain(|field| !self.resolver.is_generated(field.source));
            self.masker
                .plan_or_withhold(&fields, &self.resolver)
                .map_err(upstream)?
        } else {
            self.plan_for(f)?
        };
        self.copy_next = Some((plan, options));
        Ok(())
    }

    pub fn copy_out_response(&mut self, f: &Frame) -> Result<(), SessionError> {
        let mut body = f.body();
        if body.remaining() < 3 {
            return Err(upstream("CopyOutResponse is too short"));
        }
        let format = body.get_i8();
        let columns = body.get_i16();
        let Some((plan, options)) = self.copy_next.take() else {
            return Err(SessionError::UpstreamProtocol(
                "COPY TO STDOUT without a described column list on a masked connection".into(),
            ));
        };
        if format != 0 || usize::try_from(columns).ok() != Some(plan.column_count()) {
            return Err(SessionError::UpstreamProtocol(format!(
                "COPY sends {columns} columns in format {format}; its description has {} in text",
                plan.column_count()
            )));
        }
        self.copy = Some((plan, options));
        Ok(())
    }

    /// Appends the CopyData message, masked, to `out`.
    pub fn copy_data(&mut self, f: &Frame, out: &mut Vec<u8>) -> Result<(), SessionError> {
        let Some((plan, options)) = &mut self.copy else {
            return Err(SessionError::UpstreamProtocol(
                "CopyData outside COPY TO STDOUT on a masked connection".into(),
            ));
        };
        if plan.is_passthrough() {
            out.extend_from_slice(&f.raw);
            return Ok(());
        }
        let start = out.len();
        out.push(b'd');
        out.extend_from_slice(&[0; 4]);
        if let Err(e) = plan.rewrite_copy_text_row(f.body(), options, out) {
            out.truncate(start);
            return Err(upstream(e));
        }
        let len = i32::try_from(out.len() - start - 1)
            .map_err(|_| upstream("masked COPY row is too large"))?;
        out[start + 1..start + 5].copy_from_slice(&len.to_be_bytes());
        Ok(())
    }

    pub fn copy_done(&mut self) {
        if let Some((mut p, _)) = self.copy.take() {
            self.report.merge(p.take_report());
        }
    }

    /// The counts of the execution that just completed, if anything was masked.
    pub fn take_report(&mut self) -> Option<MaskingReport> {
        self.finish_result();
        let r = std::mem::take(&mut self.report);
        r.masked_anything().then_some(r)
    }
}

fn upstream(e: impl std::fmt::Display) -> SessionError {
    SessionError::UpstreamProtocol(format!("masking: {e}"))
}
