//! Who may run what, where: rules from the config, a decision per request, and an
//! explanation of that decision for operators (`pam-agent policy explain`). Policy reads
//! the neutral [`Request`]: it knows no protocol, no SQL, no masking and does no I/O.
//!
//! Rules are tried in order; the first that matches decides. When none matches, the
//! resource's default applies, and the default default is `deny`.
//!
//! A rule matches a statement when every condition it sets holds:
//! - `principals`: the connection's principal name (`[[principals]]`). When the config
//!   names principals, a connection none of them selects is `unknown`, and allow and
//!   approval rules match it only if they list `unknown` (deny rules match it anyway);
//! - process facts: `users`, `uids`, `cgroups`, `exes` (each a list; any entry may match);
//! - `token_subjects` (globs), `token_groups`: the worker's verified identity-provider
//!   token (`worker_auth = "oidc"`); a session without one satisfies neither;
//! - `resources`: resource names;
//! - `databases`, `roles`: the database and role the session logged in with (globs);
//! - `kinds`: every kind of the statement is listed (a SELECT with a deleting CTE has
//!   kinds `select` and `delete`);
//! - `tables`: every table the statement touches matches a pattern (`*` wildcard); a
//!   statement that touches none satisfies it;
//! - `functions`: every function it calls matches a pattern (none called: satisfied);
//! - `any_tables` / `any_functions`: at least one table / function it uses matches a
//!   pattern (none used: not satisfied). For deny rules: "refuse if any of these is
//!   used" (`any_functions = ["nextval", "setval"]` refuses
//!   `SELECT count(*), nextval('s')`, which `functions` would not);
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
    govern::{Flag, Kind, Request},
    principal::Principal,
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

/// Who asks, where: the facts about a session rules match besides the request itself.
#[derive(Debug, Clone, Copy)]
pub struct Subject<'a> {
    pub principal: &'a Principal,
    /// The resource's configured name.
    pub resource: &'a str,
    /// The database the session logged in to, and the role it logged in as, when the
    /// protocol has them (unknown never satisfies a rule that asks for one).
    pub database: Option<&'a str>,
    pub role: Option<&'a str>,
    /// The worker's verified identity-provider token, when it presented one.
    pub token: Option<&'a crate::principal::WorkerToken>,
}

impl<'a> Subject<'a> {
    pub fn new(principal: &'a Principal, resource: &'a str) -> Subject<'a> {
        Subject {
            principal,
            resource,
            database: None,
            role: None,
            token: None,
        }
    }
}

/// Allow rules whose failed condition a default refusal names, at most.
const MAX_MISSES: usize = 3;

/// The rule name recorded when a resource's default decided.
pub const DEFAULT_RULE: &str = "default";

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

    /// The decision for a message with no statement in it.
    pub fn empty() -> Decision {
        Decision {
            action: Action::Allow,
            rule: "empty".into(),
            reason: "empty statement".into(),
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
}

impl Default for Policy {
    fn default() -> Self {
        Policy {
            default: Action::Deny,
            resource_defaults: Vec::new(),
            rules: Vec::new(),
        }
    }
}

#[derive(Debug, Clone, PartialEq)]
pub struct Rule {
    pub name: String,
    pub action: Action,
    pub message: Option<String>,
    pub resources: Option<Vec<String>>,
    /// Database names the session logged in to (`*` wildcard).
    pub databases: Option<Vec<String>>,
    /// Roles the session logged in as (`*` wildcard).
    pub roles: Option<Vec<String>>,
    /// Principal names, exactly (`unknown` included only when written).
    pub principals: Option<Vec<String>>,
    /// Subjects (globs) of the worker's verified token; no token: not satisfied.
    pub token_subjects: Option<Vec<String>>,
    /// Groups of the worker's verified token, any of them (exact).
    pub token_groups: Option<Vec<String>>,
    pub users: Option<Vec<String>>,
    pub uids: Option<Vec<u32>>,
    pub cgroups: Option<Vec<String>>,
    pub exes: Option<Vec<String>>,
    pub kinds: Option<Vec<Kind>>,
    pub tables: Option<Vec<String>>,
    pub functions: Option<Vec<String>>,
    pub any_tables: Option<Vec<String>>,
    pub any_functions: Option<Vec<String>>,
    pub if_flags: Option<Vec<Flag>>,
    pub permit_flags: Vec<Flag>,
    /// `require_approval` rules: what their approvals need.
    pub approval: Option<ApprovalRule>,
}

/// What a `require_approval` rule asks of its approvals.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ApprovalRule {
    /// How long a request may wait (`approval_timeout`, default 15 minutes).
    pub timeout: std::time::Duration,
    /// Distinct approvers needed (`min_approvals`, default 1).
    pub min_approvals: u32,
    /// Who may approve: user names or `group:NAME` (`approvers`; empty: anyone the
    /// approval channel admits).
    pub approvers: Vec<String>,
}

impl Policy {
    pub fn default_for(&self, resource: &str) -> Action {
        self.resource_defaults
            .iter()
            .find(|(r, _)| r == resource)
            .map(|(_, a)| *a)
            .unwrap_or(self.default)
    }

    /// The decision for one request. A refusal by the default says why the allow rules
    /// did not match (each one's first failed condition, as `policy explain` shows).
    pub fn decide(&self, who: &Subject<'_>, st: &Request) -> Decision {
        let resource = who.resource;
        let mut missed: Vec<(&str, String)> = Vec::new();
        for rule in &self.rules {
            match rule.mismatch(who, st) {
                None => return rule.decision(st),
                Some(why) if rule.action == Action::Allow && missed.len() < MAX_MISSES => {
                    missed.push((&rule.name, why))
                }
                Some(_) => {}
            }
        }
        let action = self.default_for(resource);
        let why = if missed.is_empty() || action == Action::Allow {
            String::new()
        } else {
            let parts: Vec<String> = missed
                .iter()
                .map(|(name, why)| format!("rule \"{name}\": {why}"))
                .collect();
            format!(" ({})", parts.join("; "))
        };
        Decision {
            action,
            rule: DEFAULT_RULE.into(),
            reason: format!(
                "no rule matches this {} statement{why}; resource `{resource}` defaults to {action}",
                st.kind()
            ),
        }
    }

    /// The decision for a whole message: every request is judged and the first one not
    /// allowed refuses the message (none of it runs). An empty message is allowed.
    pub fn decide_all<'r>(
        &self,
        who: &Subject<'_>,
        requests: impl IntoIterator<Item = &'r Request>,
    ) -> Decision {
        match self.decide_each(who, requests) {
            Ok(each) => each.into_iter().next().unwrap_or_else(Decision::empty),
            Err(refusal) => refusal,
        }
    }

    /// Each request's own decision when the policy allows them all (each is recorded
    /// with its own rule), or the first one's that it does not allow.
    pub fn decide_each<'r>(
        &self,
        who: &Subject<'_>,
        requests: impl IntoIterator<Item = &'r Request>,
    ) -> Result<Vec<Decision>, Decision> {
        let mut each = Vec::new();
        for st in requests {
            let d = self.decide(who, st);
            if !d.allowed() {
                return Err(d);
            }
            each.push(d);
        }
        Ok(each)
    }

    /// The approval settings of the rule named `rule`, if it asks for approval.
    pub fn approval(&self, rule: &str) -> Option<&ApprovalRule> {
        self.rules
            .iter()
            .find(|r| r.name == rule)
            .and_then(|r| r.approval.as_ref())
    }

    /// Every rule considered, why it did or did not match, and the decision.
    pub fn explain(&self, who: &Subject<'_>, requests: &[&Request]) -> String {
        let resource = who.resource;
        use std::fmt::Write;
        let mut out = String::new();
        for (i, st) in requests.iter().enumerate() {
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
                match rule.mismatch(who, st) {
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
        let d = self.decide_all(who, requests.iter().copied());
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
    fn decision(&self, st: &Request) -> Decision {
        let reason = match (&self.message, self.action) {
            (Some(m), _) => m.clone(),
            (None, Action::Allow) => format!("allowed by rule \"{}\"", self.name),
            (None, Action::Deny) => {
                format!("{} statement denied by rule \"{}\"", st.kind(), self.name)
            }
            (None, Action::RequireApproval) => format!(
                "approval required by rule \"{}\" for this {} statement",
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
    pub fn mismatch(&self, subject: &Subject<'_>, st: &Request) -> Option<String> {
        self.subject_mismatch(subject)
            .or_else(|| self.request_mismatch(st))
    }

    /// The first condition on who asks, and where, that fails.
    fn subject_mismatch(&self, subject: &Subject<'_>) -> Option<String> {
        let (who, resource) = (subject.principal, subject.resource);
        if let Some(name) = who.name.as_deref() {
            let listed = self
                .principals
                .as_ref()
                .is_some_and(|ps| ps.iter().any(|p| p == name));
            if self.principals.is_some() && !listed {
                return Some(format!("principal `{name}` not listed"));
            }
            if name == crate::principal::UNKNOWN && self.action != Action::Deny && !listed {
                return Some(
                    "the principal is unknown (no [[principals]] entry selects it) and the rule does not list `unknown`".into(),
                );
            }
        } else if self.principals.is_some() {
            return Some("no principal name (the config declares no [[principals]])".into());
        }
        if let Some(rs) = &self.resources
            && !rs.iter().any(|r| r == resource)
        {
            return Some(format!("resource `{resource}` not listed"));
        }
        if let Some(dbs) = &self.databases
            && !subject
                .database
                .is_some_and(|d| dbs.iter().any(|p| glob::matches(p, d)))
        {
            return Some(format!(
                "database {:?} not listed",
                subject.database.unwrap_or("?")
            ));
        }
        if let Some(roles) = &self.roles
            && !subject
                .role
                .is_some_and(|r| roles.iter().any(|p| glob::matches(p, r)))
        {
            return Some(format!("role {:?} not listed", subject.role.unwrap_or("?")));
        }
        if let Some(subjects) = &self.token_subjects {
            match subject.token {
                None => return Some("no worker token".into()),
                Some(t) if !subjects.iter().any(|p| glob::matches(p, &t.subject)) => {
                    return Some(format!("token subject {:?} not listed", t.subject));
                }
                Some(_) => {}
            }
        }
        if let Some(groups) = &self.token_groups {
            match subject.token {
                None => return Some("no worker token".into()),
                Some(t) if !t.groups.iter().any(|g| groups.contains(g)) => {
                    return Some("token has none of token_groups".into());
                }
                Some(_) => {}
            }
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
        None
    }

    /// The first condition on what the request does that fails.
    fn request_mismatch(&self, st: &Request) -> Option<String> {
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
        let any = |pats: &[String], used: &std::collections::BTreeSet<String>| {
            used.iter()
                .any(|u| pats.iter().any(|p| glob::matches(p, u)))
        };
        if let Some(pats) = &self.any_tables
            && !any(pats, &st.tables)
        {
            return Some("uses none of any_tables".into());
        }
        if let Some(pats) = &self.any_functions
            && !any(pats, &st.functions)
        {
            return Some("calls none of any_functions".into());
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
