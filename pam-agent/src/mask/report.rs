//! Per-statement audit counts: which rule masked how many values, how. Never values.

use serde::{Deserialize, Serialize};

use super::strategy::StrategyKind;

/// What masked: a column rule (by the pattern that named the column) or a detector.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Deserialize, Serialize)]
#[serde(tag = "by", rename_all = "snake_case")]
pub enum MaskSource {
    Column {
        pattern: String,
        column: String,
    },
    Detector {
        detector: String,
    },
    /// Table columns sent as NULL because their names were unknown when the result arrived.
    Unresolved,
    /// A view or generated column the database computes from `from`, a column the rule's
    /// `pattern` masks (both empty: a definition that could not be read): sent as NULL.
    Derived {
        pattern: String,
        column: String,
        from: String,
    },
}

#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize)]
pub struct ReportEntry {
    pub rule: String,
    pub source: MaskSource,
    pub strategy: StrategyKind,
    /// Column rules: values masked. Detectors: matches masked.
    pub count: u64,
    /// Values made NULL instead, because the column's type cannot hold the masked form
    /// (e.g. `partial` on an integer column, or a JSON value no longer valid after masking).
    #[serde(default, skip_serializing_if = "is_zero")]
    pub nulled_for_type: u64,
}

fn is_zero(n: &u64) -> bool {
    *n == 0
}

/// Counts for one statement (merge the reports of its result sets).
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize, Serialize)]
pub struct MaskingReport {
    /// Rows that went through the masking engine.
    pub rows: u64,
    pub entries: Vec<ReportEntry>,
}

impl MaskingReport {
    /// Adds an entry, summing with an existing one for the same rule, source and strategy.
    pub fn add(&mut self, e: ReportEntry) {
        match self
            .entries
            .iter_mut()
            .find(|x| x.rule == e.rule && x.source == e.source && x.strategy == e.strategy)
        {
            Some(x) => {
                x.count += e.count;
                x.nulled_for_type += e.nulled_for_type;
            }
            None => self.entries.push(e),
        }
    }

    pub fn merge(&mut self, other: MaskingReport) {
        self.rows += other.rows;
        for e in other.entries {
            self.add(e);
        }
    }

    /// Whether anything was masked.
    pub fn masked_anything(&self) -> bool {
        self.entries.iter().any(|e| e.count + e.nulled_for_type > 0)
    }

    /// Total values (column rules) and matches (detectors) masked, NULLed ones included.
    pub fn total(&self) -> u64 {
        self.entries
            .iter()
            .map(|e| e.count + e.nulled_for_type)
            .sum()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn merges_and_serializes_without_values() {
        let e = |n| ReportEntry {
            rule: "pii".into(),
            source: MaskSource::Detector {
                detector: "email".into(),
            },
            strategy: StrategyKind::Email,
            count: n,
            nulled_for_type: 0,
        };
        let mut a = MaskingReport {
            rows: 2,
            entries: vec![e(3)],
        };
        a.merge(MaskingReport {
            rows: 1,
            entries: vec![e(1)],
        });
        assert_eq!(a.rows, 3);
        assert_eq!(a.entries, vec![e(4)]);
        assert_eq!(a.total(), 4);
        let json = serde_json::to_string(&a).unwrap();
        assert_eq!(
            json,
            r#"{"rows":3,"entries":[{"rule":"pii","source":{"by":"detector","detector":"email"},"strategy":"email","count":4}]}"#
        );
        assert_eq!(serde_json::from_str::<MaskingReport>(&json).unwrap(), a);
    }
}
