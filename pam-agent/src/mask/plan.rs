//! What to do with each column of one result set, decided once before its first row, and
//! the per-value work every protocol's row rewriter shares ([`RowPlan::mask_value`]).

use super::column::{Column, ColumnName, Origin, ResolvedColumn};
use super::detect::DetectScratch;
use super::engine::Masker;
use super::report::{MaskSource, MaskingReport, ReportEntry};
use super::strategy::{self, Masked};
use super::value::ValueKind;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Action {
    Pass,
    /// Column rule `matcher` of active rule `rule` (indices into the compiled policy).
    Mask {
        rule: usize,
        matcher: usize,
        strategy: usize,
    },
    /// Content detectors read each value from byte `from` on (the kind's prefix skipped).
    Scan {
        from: usize,
    },
    /// Content detectors read the kind's search text of each value (arrays, records,
    /// bytea, numbers); a finding makes the whole value NULL.
    ScanWhole,
    /// A table column whose name could not be learned in time (after DDL, or when the
    /// catalog query failed): it might be one a rule names, so it is sent as NULL.
    Withhold,
    /// A view or generated column the database computes from a column that column rule
    /// `hit` (rule, matcher) masks, or (`None`) whose definition could not be read: it is
    /// not the masked column itself, so it is sent as NULL (withheld, with the reason).
    Derived {
        hit: Option<(usize, usize)>,
    },
}

#[derive(Debug, Clone)]
pub(super) struct ColumnPlan {
    pub action: Action,
    pub kind: &'static dyn ValueKind,
    pub name: Option<ColumnName>,
    /// [`Action::Derived`]: the masked column the value is computed from.
    pub from: Option<String>,
    /// [`Action::Derived`] of a value the statement computes: its expression.
    pub label: Option<String>,
}

/// What [`RowPlan::mask_value`] did with one value.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
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
    pub codec: CodecScratch,
}

/// Buffers a protocol's row codec may keep in the plan, so that rewriting rows allocates
/// nothing once they have grown (a text row format: field boundaries, one field unescaped,
/// and its masked form).
#[derive(Debug, Default)]
pub struct CodecScratch {
    pub fields: Vec<(usize, usize)>,
    pub unescaped: Vec<u8>,
    pub masked: Vec<u8>,
}

/// The plan for one result set; holds its own counters until [`RowPlan::take_report`].
#[derive(Debug)]
pub struct RowPlan {
    masker: Masker,
    columns: Vec<ColumnPlan>,
    /// No column is masked or scanned: rows are validated and copied.
    passthrough: bool,
    /// Per column: values masked as configured, values made NULL because the type cannot hold
    /// the masked form.
    column_counts: Vec<[u64; 2]>,
    /// Per detector id: the same, for matches.
    detector_counts: Vec<[u64; 2]>,
    rows: u64,
    scratch: Scratch,
}

impl Masker {
    /// Plans a result set: per column, pass it, mask it with the first active column rule
    /// naming it, scan it with the active detectors, or withhold it.
    pub fn plan_result(&self, cols: &[Column]) -> RowPlan {
        let scanning = self.scans_content();
        let mut columns = Vec::with_capacity(cols.len());
        for c in cols {
            let mut from = None;
            let (action, name) = match &c.origin {
                Origin::Withheld => (Action::Withhold, None),
                Origin::Named(n) => match self.column_rule(n) {
                    Some((rule, matcher, strategy)) => (
                        Action::Mask {
                            rule,
                            matcher,
                            strategy,
                        },
                        Some(n.name.clone()),
                    ),
                    None => match self.derived_rule(n) {
                        Some((hit, source)) => {
                            from = source.as_ref().map(ToString::to_string);
                            (Action::Derived { hit }, Some(n.name.clone()))
                        }
                        None => (scan_or_pass(scanning, c.kind), Some(n.name.clone())),
                    },
                },
                Origin::Unnamed => (scan_or_pass(scanning, c.kind), None),
            };
            columns.push(ColumnPlan {
                action,
                kind: c.kind,
                name,
                from,
                label: None,
            });
        }
        let passthrough = columns.iter().all(|c| c.action == Action::Pass);
        RowPlan {
            column_counts: vec![[0; 2]; columns.len()],
            detector_counts: vec![[0; 2]; self.compiled().detectors.len()],
            masker: self.clone(),
            columns,
            passthrough,
            rows: 0,
            scratch: Scratch::default(),
        }
    }
}

impl Masker {
    /// A view or generated column computed from a column an active rule masks: that rule
    /// and column; `(None, None)` when its definition could not be read.
    #[allow(clippy::type_complexity)]
    fn derived_rule(
        &self,
        col: &ResolvedColumn,
    ) -> Option<(Option<(usize, usize)>, Option<ColumnName>)> {
        if col.unreadable {
            return Some((None, None));
        }
        col.derived.iter().find_map(|d| {
            let plain = ResolvedColumn {
                name: d.clone(),
                ..ResolvedColumn::default()
            };
            self.column_rule(&plain)
                .map(|(rule, matcher, _)| (Some((rule, matcher)), Some(d.clone())))
        })
    }
}

/// The report entry of a withheld derived column: which column, from which masked one.
fn derived_entry(
    compiled: &super::engine::Compiled,
    col: &ColumnPlan,
    hit: Option<(usize, usize)>,
    nulled: u64,
) -> ReportEntry {
    let (rule, pattern) = match hit {
        Some((r, m)) => (
            compiled.rules[r].name.clone(),
            compiled.rules[r].columns[m].source.clone(),
        ),
        None => (String::new(), String::new()),
    };
    ReportEntry {
        rule,
        source: MaskSource::Derived {
            pattern,
            column: col
                .name
                .as_ref()
                .map(ToString::to_string)
                .or_else(|| col.label.clone())
                .unwrap_or_default(),
            from: col
                .from
                .clone()
                .unwrap_or_else(|| "an unreadable definition".to_owned()),
        },
        strategy: strategy::StrategyKind::Null,
        count: 0,
        nulled_for_type: nulled,
    }
}

/// A column no rule names: scanned when detectors are active and look inside its values.
fn scan_or_pass(scanning: bool, kind: &dyn ValueKind) -> Action {
    match kind.scan_from() {
        Some(from) if scanning => Action::Scan { from },
        None if scanning && kind.searched_whole() => Action::ScanWhole,
        _ => Action::Pass,
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

    /// Whether `column` passes unchanged: a codec may copy its bytes without looking.
    pub fn passes(&self, column: usize) -> bool {
        self.columns
            .get(column)
            .is_none_or(|c| c.action == Action::Pass)
    }

    /// Counts one rewritten row, for the report.
    pub fn count_row(&mut self) {
        self.rows += 1;
    }

    /// The codec's buffers (see [`CodecScratch`]).
    pub fn codec_scratch(&mut self) -> &mut CodecScratch {
        &mut self.scratch.codec
    }

    /// Sends these values the statement computes from masked columns as NULL (a rule
    /// with `on_derived = "withhold"`). A place outside the result means the statement
    /// and its result do not line up: every column is withheld then.
    pub fn withhold(&mut self, outputs: &[super::WithheldOutput]) {
        let count = self.columns.len();
        for w in outputs {
            let targets: Vec<usize> = match w.slot.index(count) {
                Some(i) => vec![i],
                None => (0..count).collect(),
            };
            for i in targets {
                let col = &mut self.columns[i];
                col.action = Action::Derived {
                    hit: Some((w.rule, w.matcher)),
                };
                col.name = None;
                col.from = Some(w.from.clone());
                col.label = Some(w.expression.clone());
            }
        }
        self.passthrough = self.columns.iter().all(|c| c.action == Action::Pass);
    }

    /// Columns sent as NULL because their names were unknown ([`Origin::Withheld`]).
    pub fn withheld_columns(&self) -> usize {
        self.columns
            .iter()
            .filter(|c| c.action == Action::Withhold)
            .count()
    }

    /// Masks one (non-NULL) value of `column`, appending to `out` unless the outcome says
    /// otherwise. A column outside the plan passes unchanged (codecs check the column
    /// count of every row first).
    pub fn mask_value(&mut self, column: usize, value: &[u8], out: &mut Vec<u8>) -> Outcome {
        let Some(col) = self.columns.get(column) else {
            return Outcome::Unchanged;
        };
        let compiled = self.masker.compiled();
        match col.action {
            Action::Pass => Outcome::Unchanged,
            Action::Withhold | Action::Derived { .. } => {
                self.column_counts[column][1] += 1;
                Outcome::Null
            }
            Action::Mask { strategy, .. } => {
                let strategy = &compiled.strategies[strategy];
                let r = col.kind.write_masked(
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
            Action::ScanWhole => {
                let text = &mut self.scratch.tmp;
                text.clear();
                col.kind.search_text(value, text);
                compiled
                    .detectors
                    .find(text, self.masker.detectors_on(), &mut self.scratch.detect);
                let found = &self.scratch.detect.found;
                if found.is_empty() {
                    return Outcome::Unchanged;
                }
                for f in found {
                    if let Some(c) = self.detector_counts.get_mut(f.detector) {
                        c[1] += 1;
                    }
                }
                Outcome::Null
            }
            Action::Scan { from: offset } => {
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
                let invalid = !nulls && !col.kind.still_valid_after_scan(&out[start + offset..]);
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
            if let Action::Derived { hit } = col.action {
                if nulled > 0 {
                    report.add(derived_entry(compiled, col, hit, nulled));
                }
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
