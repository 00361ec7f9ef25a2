//! Values computed from masked columns. A column rule masks a column returned as itself;
//! anything computed from it (`reverse(ssn)`, `ssn::bytea`, `array_agg(ssn)`, `row(t.*)`,
//! `SELECT t FROM t`) would go out in clear. Each protocol's query analysis says, per
//! result value that is *not* a column returned as itself, which columns (or whole rows)
//! it is computed from and through which functions ([`Derivation`]); this decides which of
//! those the active rules forbid. Through a function the rule lists in
//! `non_revealing_functions` (default `count`) passes; anything else is refused.

use serde::{Deserialize, Serialize};

use super::engine::Masker;

/// A result value computed from a column, or from a whole row, of a relation. Parts that
/// could not be qualified are `None` and match any rule pattern part (erring towards
/// refusal).
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Deserialize, Serialize)]
pub struct Derivation {
    pub schema: Option<String>,
    pub table: Option<String>,
    /// `None`: the whole row (`SELECT c FROM t c`, `to_json(t)`, `row(t.*)`).
    pub column: Option<String>,
    /// What the value passes through on its way out, innermost first: functions as
    /// written (lower case, qualified when written so), other computations by their
    /// parse-tree node (`TypeCast`, `AExpr`, ...). A non-revealing function first (applied
    /// to the column itself) lets it pass when the rule says so.
    pub through: Vec<String>,
    /// The output expression as written (shortened), for the refusal message.
    pub expression: String,
}

impl Derivation {
    /// `schema.table.column` as far as known; `table.*` for a whole row.
    pub fn source_name(&self) -> String {
        let col = self.column.as_deref().unwrap_or("*");
        [self.schema.as_deref(), self.table.as_deref(), Some(col)]
            .into_iter()
            .flatten()
            .collect::<Vec<_>>()
            .join(".")
    }
}

/// A refused derivation: which rule masks its source, by which pattern.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize)]
pub struct DerivedHit {
    pub rule: String,
    pub pattern: String,
    pub derivation: Derivation,
}

/// Whether the first thing applied to the column is a function `allowed` names:
/// unqualified, or qualified with `pg_catalog` (a function of another schema may be
/// anyone's). Only directly: `count(ssn::int)` fails with the value in its error message.
fn passes(through: &[String], allowed: &[String]) -> bool {
    through.first().is_some_and(|f| {
        let name = match f.rsplit_once('.') {
            Some(("pg_catalog", n)) => n,
            Some(_) => return false,
            None => f.as_str(),
        };
        allowed.iter().any(|a| a == name)
    })
}

impl Masker {
    /// The first derivation that computes a value from a column an active rule masks
    /// without passing through one of that rule's non-revealing functions. `None`: every
    /// value either is a column as itself (masked as usual) or reveals nothing masked.
    pub fn derived_from_masked(&self, derivations: &[Derivation]) -> Option<DerivedHit> {
        derivations.iter().find_map(|d| {
            let (rule, pattern) = self.active_compiled().find_map(|rule| {
                rule.columns
                    .iter()
                    .find(|m| match d.column.as_deref() {
                        Some(c) => {
                            m.pattern
                                .matches_parts(d.schema.as_deref(), d.table.as_deref(), c)
                        }
                        None => m
                            .pattern
                            .matches_relation(d.schema.as_deref(), d.table.as_deref()),
                    })
                    .map(|m| (rule, m))
            })?;
            (!passes(&d.through, &rule.non_revealing)).then(|| DerivedHit {
                rule: rule.name.clone(),
                pattern: pattern.source.clone(),
                derivation: d.clone(),
            })
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::mask::fixtures::{PII, crew, policy};

    fn d(table: Option<&str>, column: Option<&str>, through: &[&str]) -> Derivation {
        Derivation {
            schema: None,
            table: table.map(str::to_owned),
            column: column.map(str::to_owned),
            through: through.iter().map(|s| (*s).to_owned()).collect(),
            expression: "e".into(),
        }
    }

    #[test]
    fn computing_from_a_masked_column_is_refused_naming_rule_and_pattern() {
        let m = crew(&policy(PII));
        let hit = m
            .derived_from_masked(&[d(Some("customers"), Some("email"), &["reverse"])])
            .unwrap();
        assert_eq!(hit.rule, "crew-pii");
        assert_eq!(hit.pattern, "public.customers.email");
        // Unqualified: may be any table's ssn.
        assert!(
            m.derived_from_masked(&[d(None, Some("ssn"), &[])])
                .is_some()
        );
        // A column no rule names passes.
        assert!(
            m.derived_from_masked(&[d(Some("customers"), Some("name"), &["upper"])])
                .is_none()
        );
    }

    #[test]
    fn count_passes_by_default_other_schemas_count_does_not() {
        let m = crew(&policy(PII));
        let ok = |through: &[&str]| {
            m.derived_from_masked(&[d(Some("customers"), Some("email"), through)])
                .is_none()
        };
        assert!(ok(&["count"]));
        assert!(ok(&["pg_catalog.count"]));
        assert!(ok(&["count", "reverse"]));
        // Applied to something computed from the column, not to the column.
        assert!(!ok(&["reverse", "count"]));
        assert!(!ok(&["TypeCast", "count"]));
        assert!(!ok(&["public.count"]));
        assert!(!ok(&["max"]));
        assert!(!ok(&[]));
    }

    #[test]
    fn whole_rows_of_a_table_with_masked_columns_are_refused() {
        let m = crew(&policy(PII));
        assert!(
            m.derived_from_masked(&[d(Some("customers"), None, &["to_json"])])
                .is_some()
        );
        // `*.*.ssn` names a column of every table.
        assert!(
            m.derived_from_masked(&[d(Some("orders"), None, &[])])
                .is_some()
        );
    }

    #[test]
    fn the_non_revealing_list_is_configurable() {
        let rules = PII.replacen(
            "refuse_side_channels = true",
            "refuse_side_channels = true\nnon_revealing_functions = [\"length\"]",
            1,
        );
        let m = crew(&policy(&rules));
        assert!(
            m.derived_from_masked(&[d(Some("customers"), Some("email"), &["length"])])
                .is_none()
        );
        assert!(
            m.derived_from_masked(&[d(Some("customers"), Some("email"), &["count"])])
                .is_some()
        );
    }
}
