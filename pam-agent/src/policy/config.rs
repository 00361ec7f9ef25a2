//! The `[policy]` section as written, and its validation into a [`Policy`].
//!
//! ```toml
//! [policy]
//! default = "deny"                  # every resource without its own default
//! max_statement_bytes = 1048576     # longer SQL texts are refused unparsed
//! max_message_bytes = 67108864      # longer protocol messages end the connection
//! [policy.resource_defaults]
//! scratch-db = "allow"
//!
//! [[policy.rules]]
//! name = "crew-reads-orders"
//! action = "allow"                  # allow | deny | require_approval
//! resources = ["orders-db"]
//! users = ["crew"]
//! kinds = ["select"]
//! tables = ["public.*"]
//! ```

use serde::Deserialize;

use super::{Action, ApprovalRule, Policy, Rule};
use crate::govern::Vocabulary;

pub const DEFAULT_MAX_STATEMENT_BYTES: usize = 1 << 20;
pub const DEFAULT_MAX_MESSAGE_BYTES: usize = 64 << 20;

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawPolicy {
    pub default: Option<Action>,
    pub max_statement_bytes: Option<usize>,
    pub max_message_bytes: Option<usize>,
    #[serde(default)]
    pub resource_defaults: std::collections::BTreeMap<String, Action>,
    #[serde(default)]
    pub rules: Vec<RawRule>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawRule {
    pub name: String,
    pub action: Action,
    pub message: Option<String>,
    pub resources: Option<Vec<String>>,
    pub databases: Option<Vec<String>>,
    pub roles: Option<Vec<String>>,
    /// Principal names (`[[principals]]`; `unknown` for connections none names).
    pub principals: Option<Vec<String>>,
    pub token_subjects: Option<Vec<String>>,
    pub token_groups: Option<Vec<String>>,
    pub users: Option<Vec<String>>,
    pub uids: Option<Vec<u32>>,
    pub cgroups: Option<Vec<String>>,
    pub exes: Option<Vec<String>>,
    pub kinds: Option<Vec<String>>,
    pub tables: Option<Vec<String>>,
    pub functions: Option<Vec<String>>,
    pub any_tables: Option<Vec<String>>,
    pub any_functions: Option<Vec<String>>,
    /// `require_approval` rules: how long a request waits (`15m`, `1h`, ...).
    pub approval_timeout: Option<String>,
    pub min_approvals: Option<u32>,
    pub approvers: Option<Vec<String>>,
    pub if_flags: Option<Vec<String>>,
    pub permit_flags: Option<Vec<String>>,
}

/// Limits that come with the policy section.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    pub max_statement_bytes: usize,
    pub max_message_bytes: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_statement_bytes: DEFAULT_MAX_STATEMENT_BYTES,
            max_message_bytes: DEFAULT_MAX_MESSAGE_BYTES,
        }
    }
}

impl RawPolicy {
    /// Validates against the configured resource names and the kinds and flags the
    /// protocols can produce. Errors are (field, reason).
    pub fn validate(
        self,
        resources: &[&str],
        vocabulary: &Vocabulary,
    ) -> Result<(Policy, Limits), (String, String)> {
        let limits = Limits {
            max_statement_bytes: self
                .max_statement_bytes
                .unwrap_or(DEFAULT_MAX_STATEMENT_BYTES),
            max_message_bytes: self.max_message_bytes.unwrap_or(DEFAULT_MAX_MESSAGE_BYTES),
        };
        if limits.max_statement_bytes == 0 {
            return Err((
                "policy.max_statement_bytes".into(),
                "must be greater than 0".into(),
            ));
        }
        if !(1024..=(1 << 30)).contains(&limits.max_message_bytes) {
            return Err((
                "policy.max_message_bytes".into(),
                "must be between 1024 and 1073741824".into(),
            ));
        }
        let mut resource_defaults = Vec::new();
        for (r, a) in self.resource_defaults {
            if !resources.contains(&r.as_str()) {
                return Err((
                    format!("policy.resource_defaults.{r}"),
                    format!("no resource is named `{r}`"),
                ));
            }
            resource_defaults.push((r, a));
        }
        let mut rules = Vec::new();
        for (i, raw) in self.rules.into_iter().enumerate() {
            let rule = validate_rule(i, raw, &rules, resources, vocabulary)?;
            rules.push(rule);
        }
        Ok((
            Policy {
                default: self.default.unwrap_or(Action::Deny),
                resource_defaults,
                rules,
            },
            limits,
        ))
    }
}

/// One rule, checked against the rules before it, the resources and the vocabulary.
fn validate_rule(
    i: usize,
    raw: RawRule,
    earlier: &[Rule],
    resources: &[&str],
    vocabulary: &Vocabulary,
) -> Result<Rule, (String, String)> {
    let field = |f: &str| format!("policy.rules[{i}].{f}");
    if raw.name.trim().is_empty() {
        return Err((field("name"), "must not be empty".into()));
    }
    if earlier.iter().any(|r: &Rule| r.name == raw.name) {
        return Err((
            field("name"),
            format!("`{}` is used by another rule", raw.name),
        ));
    }
    let approval = approval_settings(&field, &raw)?;
    if let Some(rs) = &raw.resources {
        for r in rs {
            if !resources.contains(&r.as_str()) {
                return Err((field("resources"), format!("no resource is named `{r}`")));
            }
        }
    }
    let kinds = raw
        .kinds
        .map(|ks| {
            ks.iter()
                .map(|k| {
                    vocabulary.kind(k).ok_or_else(|| {
                        let all: Vec<&str> = vocabulary.kinds.iter().map(|k| k.as_str()).collect();
                        (
                            field("kinds"),
                            format!("unknown kind `{k}` (one of {})", all.join(", ")),
                        )
                    })
                })
                .collect::<Result<Vec<_>, _>>()
        })
        .transpose()?;
    let flags = |name: &str, v: Option<Vec<String>>| {
        v.map(|fs| {
            fs.iter()
                .map(|f| {
                    vocabulary.flag(f).ok_or_else(|| {
                        let all: Vec<&str> = vocabulary.flags.iter().map(|k| k.as_str()).collect();
                        (
                            field(name),
                            format!("unknown flag `{f}` (one of {})", all.join(", ")),
                        )
                    })
                })
                .collect::<Result<Vec<_>, _>>()
        })
        .transpose()
    };
    let if_flags = flags("if_flags", raw.if_flags)?;
    let permit_flags = flags("permit_flags", raw.permit_flags)?;
    if permit_flags.is_some() && raw.action != Action::Allow {
        return Err((
            field("permit_flags"),
            "only allow rules permit flags; use if_flags to target flagged statements".into(),
        ));
    }
    Ok(Rule {
        name: raw.name,
        action: raw.action,
        message: raw.message,
        resources: raw.resources,
        databases: raw.databases,
        roles: raw.roles,
        principals: raw.principals,
        token_subjects: raw.token_subjects,
        token_groups: raw.token_groups,
        users: raw.users,
        uids: raw.uids,
        cgroups: raw.cgroups,
        exes: raw.exes,
        kinds,
        tables: raw.tables,
        functions: raw.functions,
        any_tables: raw.any_tables,
        any_functions: raw.any_functions,
        approval,
        if_flags,
        permit_flags: permit_flags.unwrap_or_default(),
    })
}

/// The approval settings of a `require_approval` rule (refused on other rules).
fn approval_settings(
    field: &dyn Fn(&str) -> String,
    raw: &RawRule,
) -> Result<Option<ApprovalRule>, (String, String)> {
    let given =
        raw.approval_timeout.is_some() || raw.min_approvals.is_some() || raw.approvers.is_some();
    if raw.action != Action::RequireApproval {
        if given {
            return Err((
                field("approval_timeout"),
                "approval settings are only for require_approval rules".into(),
            ));
        }
        return Ok(None);
    }
    let timeout = match &raw.approval_timeout {
        None => std::time::Duration::from_secs(15 * 60),
        Some(t) => t
            .parse::<jiff::SignedDuration>()
            .ok()
            .and_then(|d| std::time::Duration::try_from(d).ok())
            .filter(|d| !d.is_zero())
            .ok_or_else(|| {
                (
                    field("approval_timeout"),
                    format!("`{t}` is not a positive duration (e.g. \"15m\", \"1h\")"),
                )
            })?,
    };
    let min_approvals = raw.min_approvals.unwrap_or(1);
    if min_approvals == 0 {
        return Err((field("min_approvals"), "must be at least 1".into()));
    }
    Ok(Some(ApprovalRule {
        timeout,
        min_approvals,
        approvers: raw.approvers.clone().unwrap_or_default(),
    }))
}
