//! The `[masking]` config as written. Compiled and validated by [`super::MaskingPolicy::compile`].
//!
//! ```toml
//! [masking]
//! hash_key = "5f2b…"                      # hex, ≥ 16 bytes; or hash_key_file = "/etc/pam-agent/mask.key"
//!
//! [[masking.rules]]
//! name = "crew-pii"
//! refuse_side_channels = true             # refuse statements that filter/sort on masked columns
//! on_derived = "withhold"                 # values computed from masked columns: NULL, not refused
//! when = { users = ["crew"], resources = ["orders-db"] }
//!
//! [[masking.rules.columns]]
//! columns = ["public.customers.email"]
//! strategy = { kind = "email" }           # j***@example.com
//!
//! [[masking.rules.columns]]
//! columns = ["*.*.ssn", "public.customers.card_number"]
//! strategy = { kind = "partial", keep_last = 4 }
//!
//! [[masking.rules.content]]               # values that no column rule names
//! detectors = ["email", "payment_card", "us_ssn", "iban", "jwt", "aws_access_key"]
//! patterns = [{ name = "employee-id", regex = "EMP-[0-9]{6}" }]
//! strategy = { kind = "keyed_hash", length = 16 }
//! ```

use std::path::PathBuf;

use serde::{Deserialize, Serialize};

use super::detect::DetectorKind;
use crate::glob;

/// The whole `[masking]` section.
#[derive(Debug, Clone, Default, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct MaskingConfig {
    /// Hex-encoded key for `keyed_hash`. Required (or `hash_key_file`) when a rule hashes.
    pub hash_key: Option<String>,
    /// File holding the hex-encoded key, so the key stays out of the main config.
    pub hash_key_file: Option<PathBuf>,
    #[serde(default)]
    pub rules: Vec<MaskRule>,
}

/// One named rule: who it applies to, and what it masks.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct MaskRule {
    /// Named in audit reports and side-channel refusals.
    pub name: String,
    /// Which connections the rule applies to; an empty selector applies to all.
    #[serde(default)]
    pub when: Selector,
    /// Ask the policy engine to refuse statements that filter, sort, group or join on a column
    /// this rule masks (an agent could otherwise recover values with `WHERE ssn LIKE '1%'`).
    #[serde(default)]
    pub refuse_side_channels: bool,
    /// Functions whose result reveals nothing of a masked column given to them (`count`):
    /// a result computed through one passes. Any other computation from a masked column is
    /// refused or withheld, as `on_derived` says (see `mask::lineage`). Names are matched unqualified or `pg_catalog.`-qualified.
    #[serde(default = "default_non_revealing")]
    pub non_revealing_functions: Vec<String>,
    /// What happens to a statement returning a value computed from a column this rule
    /// masks: refused before it runs (the default), or run with that value withheld (sent
    /// as NULL) where the analysis can place it in the result (see `mask::lineage`).
    #[serde(default)]
    pub on_derived: OnDerived,
    #[serde(default)]
    pub columns: Vec<ColumnRule>,
    #[serde(default)]
    pub content: Vec<ContentRule>,
}

/// A rule's answer to a result value computed from a column it masks.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum OnDerived {
    /// The statement is refused before it runs (42501, flag `derived_from_masked`).
    #[default]
    Refuse,
    /// The statement runs and that value is sent as NULL (journaled as withheld); values
    /// the analysis cannot place in the result, and copies, are still refused.
    Withhold,
}

/// Who a rule applies to. Each field present must match (a list matches if any entry does);
/// absent fields match everything. Patterns use `*` wildcards.
///
/// Kept a plain struct so the policy engine can evaluate it with its own principal type;
/// [`Selector::matches`] is the reference evaluation.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct Selector {
    /// Principal names (`[[principals]]`), exactly.
    pub principals: Option<Vec<String>>,
    pub uids: Option<Vec<u32>>,
    pub users: Option<Vec<String>>,
    pub cgroups: Option<Vec<String>>,
    pub exes: Option<Vec<String>>,
    pub resources: Option<Vec<String>>,
}

/// The connection a selector is evaluated against. Unknown facts are `None` and never match a
/// selector field that asks about them.
#[derive(Debug, Clone, Copy, Default)]
pub struct Subject<'a> {
    /// The principal's name, when the config names principals.
    pub principal: Option<&'a str>,
    pub uid: Option<u32>,
    pub user: Option<&'a str>,
    pub cgroup: Option<&'a str>,
    pub exe: Option<&'a str>,
    pub resource: Option<&'a str>,
}

impl Selector {
    pub fn matches(&self, s: &Subject<'_>) -> bool {
        fn any(patterns: &Option<Vec<String>>, value: Option<&str>) -> bool {
            match patterns {
                None => true,
                Some(list) => value.is_some_and(|v| list.iter().any(|p| glob::matches(p, v))),
            }
        }
        let uid_ok = match &self.uids {
            None => true,
            Some(list) => s.uid.is_some_and(|u| list.contains(&u)),
        };
        let principal_ok = match &self.principals {
            None => true,
            Some(list) => s.principal.is_some_and(|p| list.iter().any(|n| n == p)),
        };
        uid_ok
            && principal_ok
            && any(&self.users, s.user)
            && any(&self.cgroups, s.cgroup)
            && any(&self.exes, s.exe)
            && any(&self.resources, s.resource)
    }
}

/// Mask the named columns with one strategy.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct ColumnRule {
    /// `schema.table.column`, each part a `*` pattern matched against catalog names.
    pub columns: Vec<String>,
    pub strategy: Strategy,
}

/// Scan values no column rule names, and mask what the detectors find.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct ContentRule {
    #[serde(default)]
    pub detectors: Vec<DetectorKind>,
    #[serde(default)]
    pub patterns: Vec<CustomPattern>,
    pub strategy: Strategy,
}

/// A site-specific detector: a regular expression (Rust `regex` syntax) with a name for reports.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct CustomPattern {
    pub name: String,
    pub regex: String,
}

/// How a value is masked.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize)]
#[serde(tag = "kind", rename_all = "snake_case", deny_unknown_fields)]
pub enum Strategy {
    /// Replace with fixed text.
    Redact {
        #[serde(default = "default_redaction")]
        text: String,
    },
    /// Keep the last `keep_last` characters (never more than half the value), mask the rest.
    Partial {
        #[serde(default = "default_keep_last")]
        keep_last: usize,
        #[serde(default = "default_mask_char")]
        mask_char: char,
    },
    /// HMAC-SHA256 with the configured key, hex, truncated to `length` characters: equal values
    /// stay equal (joins and GROUP BY in the client still work), values stay unreadable.
    KeyedHash {
        #[serde(default = "default_hash_length")]
        length: usize,
    },
    /// Replace with SQL NULL. (Empty braces: a unit variant would not refuse unknown fields.)
    Null {},
    /// `john.doe@example.com` → `j***@example.com`; anything not shaped like an e-mail → `***`.
    Email {},
}

/// `count` tells how many values there are, never what they are.
fn default_non_revealing() -> Vec<String> {
    vec!["count".to_string()]
}

fn default_redaction() -> String {
    "***".to_string()
}
fn default_keep_last() -> usize {
    4
}
fn default_mask_char() -> char {
    '*'
}
fn default_hash_length() -> usize {
    16
}

#[cfg(test)]
mod tests {
    use super::*;

    const EXAMPLE: &str = r#"
hash_key = "00112233445566778899aabbccddeeff"

[[rules]]
name = "crew-pii"
refuse_side_channels = true
when = { users = ["crew"], resources = ["orders-db"] }

[[rules.columns]]
columns = ["public.customers.email"]
strategy = { kind = "email" }

[[rules.columns]]
columns = ["*.*.ssn"]
strategy = { kind = "partial", keep_last = 4 }

[[rules.content]]
detectors = ["email", "payment_card", "iban"]
patterns = [{ name = "employee-id", regex = "EMP-[0-9]{6}" }]
strategy = { kind = "keyed_hash" }
"#;

    #[test]
    fn parses_the_documented_example() {
        let cfg: MaskingConfig = toml::from_str(EXAMPLE).unwrap();
        let rule = &cfg.rules[0];
        assert_eq!(rule.name, "crew-pii");
        assert!(rule.refuse_side_channels);
        assert_eq!(
            rule.columns[1].strategy,
            Strategy::Partial {
                keep_last: 4,
                mask_char: '*'
            }
        );
        assert_eq!(rule.content[0].strategy, Strategy::KeyedHash { length: 16 });
        assert_eq!(rule.content[0].detectors[1], DetectorKind::PaymentCard);
    }

    #[test]
    fn unknown_fields_are_refused() {
        let typo = EXAMPLE.replace("refuse_side_channels", "refuse_side_channel");
        assert!(toml::from_str::<MaskingConfig>(&typo).is_err());
        let bad_strategy =
            EXAMPLE.replace(r#"{ kind = "email" }"#, r#"{ kind = "email", keep = 1 }"#);
        assert!(toml::from_str::<MaskingConfig>(&bad_strategy).is_err());
        let bad_partial = EXAMPLE.replace("keep_last = 4", "keep = 4");
        assert!(toml::from_str::<MaskingConfig>(&bad_partial).is_err());
        let bad_kind = EXAMPLE.replace(r#"{ kind = "email" }"#, r#"{ kind = "scramble" }"#);
        assert!(toml::from_str::<MaskingConfig>(&bad_kind).is_err());
        let bad_detector = EXAMPLE.replace(r#""iban""#, r#""passport""#);
        assert!(toml::from_str::<MaskingConfig>(&bad_detector).is_err());
    }

    #[test]
    fn selector_fields_all_must_match() {
        let sel = Selector {
            users: Some(vec!["crew".into()]),
            cgroups: Some(vec!["/crew.slice/*".into()]),
            ..Selector::default()
        };
        let mut s = Subject {
            user: Some("crew"),
            cgroup: Some("/crew.slice/w1.service"),
            ..Subject::default()
        };
        assert!(sel.matches(&s));
        s.cgroup = Some("/other.slice/w1.service");
        assert!(!sel.matches(&s));
        s.cgroup = None;
        assert!(
            !sel.matches(&s),
            "an unknown fact never satisfies a selector field"
        );
        assert!(Selector::default().matches(&Subject::default()));
        let by_uid = Selector {
            uids: Some(vec![1001]),
            ..Selector::default()
        };
        assert!(by_uid.matches(&Subject {
            uid: Some(1001),
            ..Subject::default()
        }));
        assert!(!by_uid.matches(&Subject {
            uid: Some(0),
            ..Subject::default()
        }));
    }
}
