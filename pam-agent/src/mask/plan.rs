//! What to do with each column of one result set, decided once at RowDescription, and the
//! per-value work the row rewriters share.

use super::detect::DetectScratch;
use super::engine::Masker;
use super::pgtype::{self, Format, TypeClass};
use super::report::{MaskSource, MaskingReport, ReportEntry};
use super::resolve::{ColumnName, ColumnResolver, FieldSource, ResolvedColumn};
use super::strategy::{self, Masked};

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

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Action {
    Pass,
    /// Column rule `matcher` of active rule `rule` (indices into the compiled policy).
    Mask {
        rule: usize,
        matcher: usize,
        strategy: usize,
    },
    Scan,
    /// A table column whose name could not be learned in time (after DDL, or when the
    /// catalog query failed): it might be one a rule names, so it is sent as NULL.
    Withhold,
}

#[derive(Debug, Clone)]
pub(super) struct ColumnPlan {
    pub action: Action,
    pub class: TypeClass,
    pub format: Format,
    pub name: Option<ColumnName>,
}

/// Per-value result.
pub(super) enum Outcome {
    /// Copy the original bytes.
    Unchanged,
    /// The masked value was appended to the output.
    Written,
    /// The value becomes NULL; nothing was appended.
    Null,
}

/// Scratch buffers reused across rows.
#[derive(Debug, Default)]
pub(super) struct Scratch {
    pub detect: DetectScratch,
    pub tmp: Vec<u8>,
    /// COPY: one field unescaped, and its masked form.
    pub unescaped: Vec<u8>,
    pub masked: Vec<u8>,
    /// COPY: field boundaries of the current row.
    pub fields: Vec<(usize, usize)>,
}

/// The plan for one result set; holds its own counters until [`RowPlan::take_report`].
#[derive(Debug)]
pub struct RowPlan {
    pub(super) masker: Masker,
    pub(super) columns: Vec<ColumnPlan>,
    /// No column is masked or scanned: rows are validated and copied.
    pub(super) passthrough: bool,
    /// Per column: values masked as configured, values made NULL because the type cannot hold
    /// the masked form.
    pub(super) column_counts: Vec<[u64; 2]>,
    /// Per detector id: the same, for matches.
    pub(super) detector_counts: Vec<[u64; 2]>,
    pub(super) rows: u64,
    pub(super) scratch: Scratch,
}

impl Masker {
    /// Plans a result set from its RowDescription fields. Every table column must have been
    /// through `resolver` (see [`ColumnResolver::unresolved`]); columns the catalog did not
    /// know, and expressions, are scanned by content detectors (if any are active).
    pub fn plan(
        &self,
        fields: &[FieldInfo],
        resolver: &ColumnResolver,
    ) -> Result<RowPlan, PlanError> {
        let mut cols = Vec::with_capacity(fields.len());
        for (index, f) in fields.iter().enumerate() {
            let name = if f.source.is_table_column() {
                match resolver.lookup(f.source) {
                    Some(found) => found.cloned(),
                    None => {
                        return Err(PlanError::Unresolved {
                            index,
                            table_oid: f.source.table_oid,
                            attnum: f.source.attnum,
                        });
                    }
                }
            } else {
                None
            };
            cols.push(PlannedColumn {
                name,
                type_oid: f.type_oid,
                format: f.format,
            });
        }
        self.plan_columns(&cols)
    }

    /// Like [`Masker::plan`], but fails closed instead of failing: a table column the
    /// resolver cannot name is withheld (sent as NULL, counted in the report) rather than an
    /// error. For a session that cannot ask the catalog mid-stream.
    pub fn plan_or_withhold(
        &self,
        fields: &[FieldInfo],
        resolver: &ColumnResolver,
    ) -> Result<RowPlan, PlanError> {
        let mut cols = Vec::with_capacity(fields.len());
        let mut withheld = Vec::new();
        for (index, f) in fields.iter().enumerate() {
            let name = if f.source.is_table_column() {
                match resolver.lookup(f.source) {
                    Some(found) => found.cloned(),
                    None => {
                        withheld.push(index);
                        None
                    }
                }
            } else {
                None
            };
            cols.push(PlannedColumn {
                name,
                type_oid: f.type_oid,
                format: f.format,
            });
        }
        let mut plan = self.plan_columns(&cols)?;
        for i in withheld {
            plan.columns[i].action = Action::Withhold;
            plan.passthrough = false;
        }
        Ok(plan)
    }

    /// Plans a result set whose column names are already known.
    pub fn plan_columns(&self, cols: &[PlannedColumn]) -> Result<RowPlan, PlanError> {
        let scanning = self.scans_content();
        let mut columns = Vec::with_capacity(cols.len());
        for (index, c) in cols.iter().enumerate() {
            let format = Format::from_code(c.format).ok_or(PlanError::Format {
                index,
                code: c.format,
            })?;
            let class = pgtype::class_of(c.type_oid);
            let rule = c.name.as_ref().and_then(|n| self.column_rule(n));
            let action = match rule {
                Some((rule, matcher, strategy)) => Action::Mask {
                    rule,
                    matcher,
                    strategy,
                },
                None if scanning && class.scannable() => Action::Scan,
                None => Action::Pass,
            };
            columns.push(ColumnPlan {
                action,
                class,
                format,
                name: c.name.as_ref().map(|n| n.name.clone()),
            });
        }
        let passthrough = columns.iter().all(|c| c.action == Action::Pass);
        Ok(RowPlan {
            column_counts: vec![[0; 2]; columns.len()],
            detector_counts: vec![[0; 2]; self.compiled().detectors.len()],
            masker: self.clone(),
            columns,
            passthrough,
            rows: 0,
            scratch: Scratch::default(),
        })
    }
}

impl RowPlan {
    /// Whether rows pass unchanged (the session may forward the original frames).
    pub fn is_passthrough(&self) -> bool {
        self.passthrough
    }

    pub fn column_count(&self) -> usize {
        self.columns.len()
    }

    /// Columns sent as NULL because their names were unknown ([`Masker::plan_or_withhold`]).
    pub fn withheld_columns(&self) -> usize {
        self.columns
            .iter()
            .filter(|c| c.action == Action::Withhold)
            .count()
    }

    /// Masks one value of `column` (a valid index), appending to `out` unless the outcome says
    /// otherwise.
    pub(super) fn mask_value(&mut self, column: usize, value: &[u8], out: &mut Vec<u8>) -> Outcome {
        let col = &self.columns[column];
        let compiled = self.masker.compiled();
        match col.action {
            Action::Pass => Outcome::Unchanged,
            Action::Withhold => {
                self.column_counts[column][1] += 1;
                Outcome::Null
            }
            Action::Mask { strategy, .. } => {
                let strategy = &compiled.strategies[strategy];
                let r = pgtype::write_masked(
                    col.class,
                    col.format,
                    strategy,
                    value,
                    compiled.hasher.as_ref(),
                    &mut self.scratch.tmp,
                    out,
                );
                let fell_back =
                    r == Masked::Null && strategy.kind() != strategy::StrategyKind::Null;
                self.column_counts[column][usize::from(fell_back)] += 1;
                match r {
                    Masked::Text => Outcome::Written,
                    Masked::Null => Outcome::Null,
                }
            }
            Action::Scan => {
                let offset = col.class.text_offset(col.format);
                let Some(text) = value.get(offset..) else {
                    return Outcome::Unchanged;
                };
                compiled
                    .detectors
                    .find(text, self.masker.detectors_on(), &mut self.scratch.detect);
                let found = &self.scratch.detect.found;
                if found.is_empty() {
                    return Outcome::Unchanged;
                }
                let strategy_of = |d: usize| {
                    self.masker
                        .content_strategy(d)
                        .map(|s| &compiled.strategies[s])
                };
                let nulls = found.iter().any(|f| {
                    strategy_of(f.detector).is_none_or(|s| s.kind() == strategy::StrategyKind::Null)
                });
                let start = out.len();
                if !nulls {
                    out.extend_from_slice(&value[..offset]);
                    let mut pos = 0;
                    for f in found {
                        out.extend_from_slice(&text[pos..f.start]);
                        if let Some(s) = strategy_of(f.detector) {
                            strategy::write_text(
                                s,
                                &text[f.start..f.end],
                                compiled.hasher.as_ref(),
                                out,
                            );
                        }
                        pos = f.end;
                    }
                    out.extend_from_slice(&text[pos..]);
                }
                let json = matches!(col.class, TypeClass::Json | TypeClass::Jsonb);
                let invalid = json && !nulls && !pgtype::json_still_valid(&out[start + offset..]);
                for f in found {
                    let fell_back = invalid;
                    if let Some(c) = self.detector_counts.get_mut(f.detector) {
                        c[usize::from(fell_back)] += 1;
                    }
                }
                if nulls || invalid {
                    out.truncate(start);
                    Outcome::Null
                } else {
                    Outcome::Written
                }
            }
        }
    }

    /// The counts since the plan was made (or last taken), for the statement's audit record.
    pub fn take_report(&mut self) -> MaskingReport {
        let mut report = MaskingReport {
            rows: std::mem::take(&mut self.rows),
            entries: Vec::new(),
        };
        let compiled = self.masker.compiled();
        for (col, counts) in self.columns.iter().zip(self.column_counts.iter_mut()) {
            let [masked, nulled] = std::mem::take(counts);
            if col.action == Action::Withhold && nulled > 0 {
                report.add(ReportEntry {
                    rule: String::new(),
                    source: MaskSource::Unresolved,
                    strategy: strategy::StrategyKind::Null,
                    count: 0,
                    nulled_for_type: nulled,
                });
                continue;
            }
            let Action::Mask {
                rule,
                matcher,
                strategy,
            } = col.action
            else {
                continue;
            };
            if masked + nulled == 0 {
                continue;
            }
            let r = &compiled.rules[rule];
            report.add(ReportEntry {
                rule: r.name.clone(),
                source: MaskSource::Column {
                    pattern: r.columns[matcher].source.clone(),
                    column: col
                        .name
                        .as_ref()
                        .map(ToString::to_string)
                        .unwrap_or_default(),
                },
                strategy: compiled.strategies[strategy].kind(),
                count: masked,
                nulled_for_type: nulled,
            });
        }
        for (detector, counts) in self.detector_counts.iter_mut().enumerate() {
            let [masked, nulled] = std::mem::take(counts);
            if masked + nulled == 0 {
                continue;
            }
            let (strategy, rule) = match self.masker.content_source(detector) {
                Some((s, r)) => (
                    compiled.strategies[s].kind(),
                    compiled.rules[r].name.clone(),
                ),
                None => (strategy::StrategyKind::Null, String::new()),
            };
            report.add(ReportEntry {
                rule,
                source: MaskSource::Detector {
                    detector: compiled.detectors.name(detector).to_string(),
                },
                strategy,
                count: masked,
                nulled_for_type: nulled,
            });
        }
        report
    }
}
