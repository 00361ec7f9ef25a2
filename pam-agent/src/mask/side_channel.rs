//! Side channels: a masked column used in WHERE, ORDER BY, GROUP BY, HAVING or a JOIN
//! condition leaks its values through which rows come back and in what order
//! (`WHERE ssn LIKE '5%'` bisects a masked SSN). Rules with `refuse_side_channels = true`
//! ask the policy engine to refuse such statements; this reports the uses it should refuse.
//! The references come from `sql::Statement::columns`.

use serde::{Deserialize, Serialize};

use super::engine::Masker;

/// The column references come from the SQL classifier, which owns their types
/// ([`crate::protocols::postgres::sql::ColumnReference`], [`crate::protocols::postgres::sql::Clause`]); masking decides which of
/// them hit masked columns.
pub use crate::protocols::postgres::sql::{Clause, ColumnReference};

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
                        .find(|m| {
                            m.pattern.matches_parts(
                                r.schema.as_deref(),
                                r.table.as_deref(),
                                &r.column,
                            )
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
