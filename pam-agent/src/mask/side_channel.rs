//! Side channels: a masked column used in WHERE, ORDER BY, GROUP BY, HAVING or a JOIN
//! condition leaks its values through which rows come back and in what order
//! (`WHERE ssn LIKE '5%'` bisects a masked SSN). Rules with `refuse_side_channels = true`
//! ask the gate to refuse such statements; this reports the uses it should refuse.
//! Masking owns the types of the references ([`ColumnReference`], [`Clause`]); each
//! protocol's query analysis produces them (PostgreSQL: `sql::Statement::columns`).

use serde::{Deserialize, Serialize};

use super::engine::Masker;

/// Where a statement uses a column.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Deserialize, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Clause {
    /// WHERE (also UPDATE/DELETE WHERE, aggregate FILTER, MERGE WHEN ... AND, ON CONFLICT
    /// WHERE), and the select list of a sub-select compared in a WHERE.
    Where,
    /// JOIN ... ON / USING, MERGE ... ON.
    Join,
    /// ORDER BY (also ordinals and output aliases, and aggregate ORDER BY).
    OrderBy,
    GroupBy,
    Having,
    /// Window PARTITION BY / ORDER BY.
    Window,
    /// SELECT DISTINCT ON (...).
    DistinctOn,
}

/// A column a statement filters, joins, sorts, groups or partitions on. Parts that could
/// not be qualified are `None` and match any rule pattern part (erring towards refusal).
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Deserialize, Serialize)]
pub struct ColumnReference {
    pub schema: Option<String>,
    pub table: Option<String>,
    /// `None`: any column of the table (`FROM t AS x(a, b)` renames them by position).
    pub column: Option<String>,
    pub clause: Clause,
}

/// A refused use: which rule masks the referenced column, by which pattern.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize)]
pub struct SideChannel {
    pub rule: String,
    pub pattern: String,
    pub reference: ColumnReference,
}

impl Masker {
    /// The references that hit a column masked by an active rule with
    /// `refuse_side_channels = true`. Empty: nothing to refuse.
    pub fn side_channels(&self, refs: &[ColumnReference]) -> Vec<SideChannel> {
        let mut out = Vec::new();
        for r in refs {
            let hit = self
                .active_compiled()
                .filter(|rule| rule.refuse_side_channels)
                .find_map(|rule| {
                    rule.columns
                        .iter()
                        .find(|m| match r.column.as_deref() {
                            Some(c) => {
                                m.pattern
                                    .matches_parts(r.schema.as_deref(), r.table.as_deref(), c)
                            }
                            None => m
                                .pattern
                                .matches_relation(r.schema.as_deref(), r.table.as_deref()),
                        })
                        .map(|m| (rule.name.clone(), m.source.clone()))
                });
            if let Some((rule, pattern)) = hit {
                out.push(SideChannel {
                    rule,
                    pattern,
                    reference: r.clone(),
                });
            }
        }
        out
    }
}
