//! Values computed from masked columns. A column rule masks a column returned as itself;
//! anything computed from it (`reverse(ssn)`, `ssn::bytea`, `array_agg(ssn)`, `row(t.*)`,
//! `SELECT t FROM t`) would go out in clear. Each protocol's query analysis says, per
//! result value that is *not* a column returned as itself, which columns (or whole rows)
//! it is computed from and through which functions ([`Derivation`]); this decides which of
//! those the active rules forbid. Through a function the rule lists in
//! `non_revealing_functions` (default `count`) passes; anything else is refused, or, when
//! the rule says `on_derived = "withhold"` and the value has a place in the statement's own
//! result ([`Slot`]), sent as NULL ([`WithheldOutput`]).

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
    /// Where the value stands in the statement's own result; `None` when it is not a
    /// column of that result (a clause, a copy, a `*` over computed values) or its place
    /// is not known from the text: such a value can only be refused.
    pub output: Option<Slot>,
}

/// A column's place in a result, counted from whichever end of the select list has no
/// `*` before it (a `*` expands to a number of columns only the catalog knows).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Deserialize, Serialize)]
pub enum Slot {
    FromStart(usize),
    FromEnd(usize),
}

impl Slot {
    /// The column index in a result of `count` columns; `None` when outside it.
    pub fn index(self, count: usize) -> Option<usize> {
        match self {
            Slot::FromStart(i) => (i < count).then_some(i),
            Slot::FromEnd(i) => count.checked_sub(i + 1),
        }
    }
}

/// A result value a rule withholds rather than refuses: where it is, which rule and
/// column rule (indices into the compiled policy), and what it is, for the journal.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WithheldOutput {
    pub slot: Slot,
    pub(super) rule: usize,
    pub(super) matcher: usize,
    /// The masked column it is computed from (`schema.table.column` as far as known).
    pub from: String,
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

/// What the active rules make of one derivation.
enum Judged {
    /// It reveals nothing a rule masks.
    Passes,
    Refused(DerivedHit),
    Withheld(WithheldOutput),
}

impl Masker {
    fn judge_derivation(&self, d: &Derivation) -> Judged {
        let found = self.active_indexed().find_map(|(r, rule)| {
            rule.columns
                .iter()
                .position(|m| match d.column.as_deref() {
                    Some(c) => m
                        .pattern
                        .matches_parts(d.schema.as_deref(), d.table.as_deref(), c),
                    None => m
                        .pattern
                        .matches_relation(d.schema.as_deref(), d.table.as_deref()),
                })
                .map(|m| (r, rule, m))
        });
        let Some((r, rule, m)) = found else {
            return Judged::Passes;
        };
        if passes(&d.through, &rule.non_revealing) {
            return Judged::Passes;
        }
        match d.output {
            Some(slot) if rule.withhold_derived => Judged::Withheld(WithheldOutput {
                slot,
                rule: r,
                matcher: m,
                from: d.source_name(),
                expression: d.expression.clone(),
            }),
            _ => Judged::Refused(DerivedHit {
                rule: rule.name.clone(),
                pattern: rule.columns[m].source.clone(),
                derivation: d.clone(),
            }),
        }
    }

    /// The first derivation that computes a value from a column an active rule masks
    /// without passing through one of that rule's non-revealing functions, and that the
    /// rule does not withhold instead. `None`: every value either is a column as itself
    /// (masked as usual), reveals nothing masked, or is withheld ([`Masker::withheld_outputs`]).
    pub fn derived_from_masked(&self, derivations: &[Derivation]) -> Option<DerivedHit> {
        derivations
            .iter()
            .find_map(|d| match self.judge_derivation(d) {
                Judged::Refused(hit) => Some(hit),
                _ => None,
            })
    }

    /// The result values to send as NULL: computed from a column a rule masks that says
    /// `on_derived = "withhold"`, each with its place in the result.
    pub fn withheld_outputs(&self, derivations: &[Derivation]) -> Vec<WithheldOutput> {
        let mut out: Vec<WithheldOutput> = derivations
            .iter()
            .filter_map(|d| match self.judge_derivation(d) {
                Judged::Withheld(w) => Some(w),
                _ => None,
            })
            .collect();
        out.sort_by_key(|w| w.slot);
        out.dedup_by(|a, b| a.slot == b.slot);
        out
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
            output: Some(Slot::FromStart(1)),
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

    #[test]
    fn a_withholding_rule_withholds_what_has_a_place_and_refuses_the_rest() {
        let rules = PII.replacen(
            "refuse_side_channels = true",
            "refuse_side_channels = true\non_derived = \"withhold\"",
            1,
        );
        let m = crew(&policy(&rules));
        let placed = d(Some("customers"), Some("email"), &["reverse"]);
        assert!(
            m.derived_from_masked(std::slice::from_ref(&placed))
                .is_none()
        );
        let w = m.withheld_outputs(std::slice::from_ref(&placed));
        assert_eq!(w.len(), 1);
        assert_eq!(w[0].slot, Slot::FromStart(1));
        assert_eq!(w[0].from, "customers.email");
        // No place in the result (a clause, a copy, a `*`): refused all the same.
        let unplaced = Derivation {
            output: None,
            ..placed.clone()
        };
        assert!(
            m.derived_from_masked(std::slice::from_ref(&unplaced))
                .is_some()
        );
        assert!(m.withheld_outputs(&[unplaced]).is_empty());
        // Passing through `count` is neither.
        let counted = d(Some("customers"), Some("email"), &["count"]);
        assert!(m.withheld_outputs(&[counted]).is_empty());
        // The default refuses.
        let strict = crew(&policy(PII));
        assert!(
            strict
                .derived_from_masked(std::slice::from_ref(&placed))
                .is_some()
        );
        assert!(strict.withheld_outputs(&[placed]).is_empty());
    }

    #[test]
    fn slots_count_from_either_end() {
        assert_eq!(Slot::FromStart(2).index(3), Some(2));
        assert_eq!(Slot::FromStart(3).index(3), None);
        assert_eq!(Slot::FromEnd(0).index(3), Some(2));
        assert_eq!(Slot::FromEnd(3).index(3), None);
    }
}
