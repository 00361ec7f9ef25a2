//! PostgreSQL result columns → the engine's neutral [`Column`]s: names from the
//! [`ColumnResolver`] (table OID + attnum), value kinds from type OIDs and format codes.

use super::pgtype::{self, Format};
use super::resolve::{ColumnResolver, FieldSource};
use crate::mask::{Column, Masker, Origin, ResolvedColumn, RowPlan};

/// One RowDescription field, as far as masking cares.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FieldInfo {
    pub source: FieldSource,
    pub type_oid: u32,
    /// 0 = text, 1 = binary.
    pub format: i16,
}

/// A column whose name the caller already knows (COPY has no RowDescription).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PlannedColumn {
    pub name: Option<ResolvedColumn>,
    pub type_oid: u32,
    pub format: i16,
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum PlanError {
    #[error(
        "column {index} (table OID {table_oid}, attnum {attnum}) is not resolved yet: run the catalog query first"
    )]
    Unresolved {
        index: usize,
        table_oid: u32,
        attnum: i16,
    },
    #[error("column {index} has format code {code}, neither text (0) nor binary (1)")]
    Format { index: usize, code: i16 },
}

/// Planning PostgreSQL results with a [`Masker`] (an extension of the neutral engine).
pub trait PlanResults {
    /// Plans a result set from its RowDescription fields. Every table column must have been
    /// through `resolver` (see [`ColumnResolver::unresolved`]); columns the catalog did not
    /// know, and expressions, are scanned by content detectors (if any are active).
    fn plan(&self, fields: &[FieldInfo], resolver: &ColumnResolver) -> Result<RowPlan, PlanError>;

    /// Like [`PlanResults::plan`], but fails closed instead of failing: a table column the
    /// resolver cannot name is withheld (sent as NULL, counted in the report) rather than an
    /// error. For a session that cannot ask the catalog mid-stream.
    fn plan_or_withhold(
        &self,
        fields: &[FieldInfo],
        resolver: &ColumnResolver,
    ) -> Result<RowPlan, PlanError>;

    /// Plans a result set whose column names are already known.
    fn plan_columns(&self, cols: &[PlannedColumn]) -> Result<RowPlan, PlanError>;

    /// [`ColumnResolver::preload_query`] for this connection's rules; `None` when no active
    /// rule names columns (then nothing needs resolving at all).
    fn preload_query(&self) -> Option<String>;
}

impl PlanResults for Masker {
    fn plan(&self, fields: &[FieldInfo], resolver: &ColumnResolver) -> Result<RowPlan, PlanError> {
        let mut origins = Vec::with_capacity(fields.len());
        for (index, f) in fields.iter().enumerate() {
            origins.push(match origin(f.source, resolver) {
                Origin::Withheld => {
                    return Err(PlanError::Unresolved {
                        index,
                        table_oid: f.source.table_oid,
                        attnum: f.source.attnum,
                    });
                }
                o => o,
            });
        }
        plan(self, fields, origins)
    }

    fn plan_or_withhold(
        &self,
        fields: &[FieldInfo],
        resolver: &ColumnResolver,
    ) -> Result<RowPlan, PlanError> {
        let origins = fields.iter().map(|f| origin(f.source, resolver)).collect();
        plan(self, fields, origins)
    }

    fn plan_columns(&self, cols: &[PlannedColumn]) -> Result<RowPlan, PlanError> {
        let mut columns = Vec::with_capacity(cols.len());
        for (index, c) in cols.iter().enumerate() {
            columns.push(Column {
                origin: c.name.clone().map_or(Origin::Unnamed, Origin::Named),
                kind: kind(index, c.type_oid, c.format)?,
            });
        }
        Ok(self.plan_result(&columns))
    }

    fn preload_query(&self) -> Option<String> {
        ColumnResolver::preload_query(self.column_patterns())
    }
}

/// A table column the resolver cannot name yet is withheld; one the catalog does not know
/// (dropped meanwhile), like an expression, has no name a rule could match.
fn origin(source: FieldSource, resolver: &ColumnResolver) -> Origin {
    if !source.is_table_column() {
        return Origin::Unnamed;
    }
    match resolver.lookup(source) {
        Some(Some(found)) => Origin::Named(found.clone()),
        Some(None) => Origin::Unnamed,
        None => Origin::Withheld,
    }
}

fn plan(masker: &Masker, fields: &[FieldInfo], origins: Vec<Origin>) -> Result<RowPlan, PlanError> {
    let mut columns = Vec::with_capacity(fields.len());
    for (index, (f, origin)) in fields.iter().zip(origins).enumerate() {
        columns.push(Column {
            origin,
            kind: kind(index, f.type_oid, f.format)?,
        });
    }
    Ok(masker.plan_result(&columns))
}

fn kind(index: usize, type_oid: u32, code: i16) -> Result<&'static pgtype::PgValue, PlanError> {
    let format = Format::from_code(code).ok_or(PlanError::Format { index, code })?;
    Ok(pgtype::value_kind(type_oid, format))
}
