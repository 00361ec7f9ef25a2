//! Who may run what, where: rules from the config, a decision per statement, and an
//! explanation of that decision for operators (`pam-agent policy explain`).
//!
//! Rules are tried in order; the first that matches decides. When none matches, the
//! resource's default applies, and the default default is `deny`.
//!
//! A rule matches a statement when every condition it sets holds:
//! - principal: `users`, `uids`, `cgroups`, `exes` (each a list; any entry may match);
//! - `resources`: resource names;
//! - `kinds`: every kind of the statement is listed (a SELECT with a deleting CTE has
//!   kinds `select` and `delete`);
//! - `tables`: every table the statement touches matches a pattern (`*` wildcard);
//! - `functions`: every function it calls matches a pattern;
//! - `if_flags`: the statement has at least one of these flags;
//! - allow rules only: the statement has no flag outside `permit_flags`. Risky
//!   features (see [`Flag`]) are thus allowed only where a rule names them.
//!   `dynamic_sql` (SQL built at run time in a DO block or function body, an unresolved
//!   SQL-level EXECUTE) is one of them: it ships denied unless a rule permits it.
//!
//! A DO block is judged by what its body does: kind `do` plus the kinds, tables, functions
//! and flags of every statement in it (so `kinds = ["do", "select"]` with `tables` allows
//! read-only blocks over those tables).
//!
//! Architecture invariant: policy does no I/O and never sees the wire.

mod config;
use crate::glob;

pub use config::{Limits, RawPolicy, RawRule};
use serde::Serialize;

use crate::{
    principal::Principal,
    protocols::postgres::sql::{Flag, Kind, Statement, Unclassifiable},
};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Action {
    Allow,
    Deny,
    RequireApproval,
}

impl Action {
    pub fn as_str(self) -> &'static str {
        match self {
            Action::Allow => "allow",
            Action::Deny => "deny",
            Action::RequireApproval => "require_approval",
        }
    }
}

impl std::fmt::Display for Action {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The rule name recorded when a resource's default decided.
pub const DEFAULT_RULE: &str = "default";
/// The rule name recorded when a statement could not be understood.
pub const UNCLASSIFIABLE_RULE: &str = "unclassifiable";

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Decision {
    pub action: Action,
    /// The deciding rule's name, [`DEFAULT_RULE`] or [`UNCLASSIFIABLE_RULE`].
    pub rule: String,
    /// A sentence for the worker and the journal.
    pub reason: String,
}

impl Decision {
    pub fn allowed(&self) -> bool {
        self.action == Action::Allow
    }

    pub fn unclassifiable(e: &Unclassifiable) -> Decision {
        Decision {
            action: Action::Deny,
            rule: UNCLASSIFIABLE_RULE.into(),
            reason: format!("not understood: {e}"),
        }
    }
}

/// The policy in force, shared by the daemon and every session: a reload replaces it,
/// and open sessions judge their next statement by the new one (no session drops).
#[derive(Debug, Clone)]
pub struct PolicyHandle(std::sync::Arc<std::sync::RwLock<std::sync::Arc<Policy>>>);

impl PolicyHandle {
    pub fn new(policy: std::sync::Arc<Policy>) -> Self {
        PolicyHandle(std::sync::Arc::new(std::sync::RwLock::new(policy)))
    }

    pub fn current(&self) -> std::sync::Arc<Policy> {
        self.0.read().unwrap_or_else(|p| p.into_inner()).clone()
    }

    pub fn replace(&self, policy: std::sync::Arc<Policy>) {
        *self.0.write().unwrap_or_else(|p| p.into_inner()) = policy;
    }
}

#[derive(Debug, Clone)]
pub struct Policy {
    pub default: Action,
    pub resource_defaults: Vec<(String, Action)>,
    pub rules: Vec<Rule>,
    /// What a principal may see: the compiled `[masking]` rules, reloaded with the rest.
    pub masking: crate::mask::MaskingPolicy,
}

impl Default for Policy {
    fn default() -> Self {
        Policy {
            default: Action::Deny,
            resource_defaults: Vec::new(),
            rules: Vec::new(),
            masking: crate::mask::MaskingPolicy::none(),
        }
    }
}

#[derive(Debug, Clone, PartialEq)]
pub struct Rule {
    pub name: String,
    pub action: Action,
    pub message: Option<String>,
    pub resources: Option<Vec<String>>,
    pub users: Option<Vec<String>>,
    pub uids: Option<Vec<u32>>,
    pub cgroups: Option<Vec<String>>,
    pub exes: Option<Vec<String>>,
    pub kinds: Option<Vec<Kind>>,
    pub tables: Option<Vec<String>>,
    pub functions: Option<Vec<String>>,
    pub if_flags: Option<Vec<Flag>>,
    pub permit_flags: Vec<Flag>,
}

impl Policy {
    pub fn default_for(&self, resource: &str) -> Action {
        self.resource_defaults
            .iter()
            .find(|(r, _)| r == resource)
            .map(|(_, a)| *a)
            .unwrap_or(self.default)
    }

    /// The decision for one statement.
    pub fn decide(&self, who: &Principal, resource: &str, st: &Statement) -> Decision {
        for rule in &self.rules {
            if rule.mismatch(who, resource, st).is_none() {
                return rule.decision(st);
            }
        }
        let action = self.default_for(resource);
        Decision {
            action,
            rule: DEFAULT_RULE.into(),
            reason: format!(
                "no rule matches this {} statement; resource `{resource}` defaults to {action}",
                st.kind()
            ),
        }
    }

    /// The decision for a whole text: every statement is judged and the first one not
    /// allowed refuses the text (none of it runs). An empty text is allowed.
    pub fn decide_all(
        &self,
        who: &Principal,
        resource: &str,
        classified: &Result<Vec<Statement>, Unclassifiable>,
    ) -> Decision {
        let statements = match classified {
            Ok(s) => s,
            Err(e) => return Decision::unclassifiable(e),
        };
        let mut allowed: Option<Decision> = None;
        for st in statements {
            let d = self.decide(who, resource, st);
            if !d.allowed() {
                return d;
            }
            allowed.get_or_insert(d);
        }
        allowed.unwrap_or(Decision {
            action: Action::Allow,
            rule: "empty".into(),
            reason: "empty statement".into(),
        })
    }

    /// A protocol-level FunctionCall (by OID): judged as a statement of kind
    /// `function_call` calling `oid:<n>`, so only a rule naming that kind allows it.
    pub fn function_call_statement(oid: u32) -> Statement {
        Statement {
            text: format!("<FunctionCall oid {oid}>"),
            fingerprint: String::new(),
            kinds: vec![Kind::FunctionCall],
            tables: Default::default(),
            writes: Default::default(),
            functions: [format!("oid:{oid}")].into_iter().collect(),
            flags: Default::default(),
            columns: Vec::new(),
            prepared: None,
        }
    }

    /// Every rule considered, why it did or did not match, and the decision.
    pub fn explain(
        &self,
        who: &Principal,
        resource: &str,
        classified: &Result<Vec<Statement>, Unclassifiable>,
    ) -> String {
        use std::fmt::Write;
        let mut out = String::new();
        let statements = match classified {
            Ok(s) => s,
            Err(e) => {
                let d = Decision::unclassifiable(e);
                let _ = writeln!(
                    out,
                    "decision: {} (rule: {})\n  {}",
                    d.action, d.rule, d.reason
                );
                return out;
            }
        };
        for (i, st) in statements.iter().enumerate() {
            let _ = writeln!(out, "statement {}: {}", i + 1, st.text);
            let kinds: Vec<&str> = st.kinds.iter().map(|k| k.as_str()).collect();
            let _ = writeln!(out, "  kinds:     {}", kinds.join(", "));
            let _ = writeln!(out, "  tables:    {}", join(st.tables.iter()));
            let _ = writeln!(out, "  writes:    {}", join(st.writes.iter()));
            let _ = writeln!(out, "  functions: {}", join(st.functions.iter()));
            let _ = writeln!(
                out,
                "  flags:     {}",
                join(st.flags.iter().map(|f| f.as_str()))
            );
            let mut decided = false;
            for rule in &self.rules {
                match rule.mismatch(who, resource, st) {
                    Some(why) => {
                        let _ = writeln!(
                            out,
                            "  rule {:?} ({}): no match: {why}",
                            rule.name, rule.action
                        );
                    }
                    None => {
                        let _ = writeln!(out, "  rule {:?} ({}): MATCH", rule.name, rule.action);
                        decided = true;
                        break;
                    }
                }
            }
            if !decided {
                let _ = writeln!(
                    out,
                    "  no rule matched: resource default is {}",
                    self.default_for(resource)
                );
            }
        }
        let d = self.decide_all(who, resource, classified);
        let _ = writeln!(
            out,
            "decision: {} (rule: {})\n  {}",
            d.action, d.rule, d.reason
        );
        out
    }
}

fn join<I: IntoIterator<Item = S>, S: AsRef<str>>(items: I) -> String {
    let v: Vec<String> = items.into_iter().map(|s| s.as_ref().to_owned()).collect();
    if v.is_empty() {
        "-".into()
    } else {
        v.join(", ")
    }
}

impl Rule {
    fn decision(&self, st: &Statement) -> Decision {
        let reason = match (&self.message, self.action) {
            (Some(m), _) => m.clone(),
            (None, Action::Allow) => format!("allowed by rule \"{}\"", self.name),
            (None, Action::Deny) => {
                format!("{} statement denied by rule \"{}\"", st.kind(), self.name)
            }
            (None, Action::RequireApproval) => format!(
                "approval required by rule \"{}\" for this {} statement (approvals are not available yet)",
                self.name,
                st.kind()
            ),
        };
        Decision {
            action: self.action,
            rule: self.name.clone(),
            reason,
        }
    }

    /// `None` when the rule matches, else the first condition that fails.
    pub fn mismatch(&self, who: &Principal, resource: &str, st: &Statement) -> Option<String> {
        if let Some(rs) = &self.resources
            && !rs.iter().any(|r| r == resource)
        {
            return Some(format!("resource `{resource}` not listed"));
        }
        if let Some(us) = &self.users
            && !who.user.as_ref().is_some_and(|u| us.contains(u))
        {
            return Some(format!(
                "user {:?} not listed",
                who.user.as_deref().unwrap_or("?")
            ));
        }
        if let Some(uids) = &self.uids
            && !uids.contains(&who.uid)
        {
            return Some(format!("uid {} not listed", who.uid));
        }
        if let Some(cg) = &self.cgroups
            && !who
                .cgroup
                .as_ref()
                .is_some_and(|c| cg.iter().any(|p| glob::matches(p, c)))
        {
            return Some(format!(
                "cgroup {:?} not listed",
                who.cgroup.as_deref().unwrap_or("?")
            ));
        }
        if let Some(ex) = &self.exes
            && !who
                .exe
                .as_ref()
                .is_some_and(|e| ex.iter().any(|p| glob::matches(p, e)))
        {
            return Some(format!(
                "exe {:?} not listed",
                who.exe.as_deref().unwrap_or("?")
            ));
        }
        if let Some(kinds) = &self.kinds
            && let Some(k) = st.kinds.iter().find(|k| !kinds.contains(k))
        {
            return Some(format!("kind {k} not listed"));
        }
        if let Some(pats) = &self.tables
            && let Some(t) = st
                .tables
                .iter()
                .find(|t| !pats.iter().any(|p| glob::matches(p, t)))
        {
            return Some(format!("table {t} not covered"));
        }
        if let Some(pats) = &self.functions
            && let Some(f) = st
                .functions
                .iter()
                .find(|f| !pats.iter().any(|p| glob::matches(p, f)))
        {
            return Some(format!("function {f} not covered"));
        }
        if let Some(flags) = &self.if_flags
            && !st.flags.iter().any(|f| flags.contains(f))
        {
            return Some("statement has none of if_flags".into());
        }
        if self.action == Action::Allow
            && let Some(f) = st.flags.iter().find(|f| !self.permit_flags.contains(f))
        {
            return Some(format!("flag {f} not in permit_flags"));
        }
        None
    }
}

#[cfg(test)]
mod tests;
