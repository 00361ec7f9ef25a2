//! The one place a request is judged: policy, the masking guard, the session's own
//! safety, a protocol's veto; then one `statement` record per request, written before
//! the verdict is returned (write-ahead: nothing is forwarded that is not on record).

use std::sync::Arc;

use super::{
    Approvals, Request,
    approval::{HoldRequest, Requirement},
    rules::RulesHandle,
    verdict::Verdict,
};
use crate::{
    journal::{Event, Journal, JournalError, SessionId, event},
    mask::{ColumnReference, Masker, Subject},
    policy::{Action, Decision, Subject as PolicySubject},
    principal::Principal,
};

/// The rule name recorded when a request could not be understood.
pub const UNCLASSIFIABLE_RULE: &str = "unclassifiable";
/// The rule name of refusals made so that no value escapes masking.
pub const MASKING_RULE: &str = "masking";
/// The flag journaled on a statement refused for returning a value computed from a masked
/// column.
pub const DERIVED_FROM_MASKED: &str = "derived_from_masked";
/// The flag journaled on a statement allowed to run with values computed from a masked
/// column withheld (sent as NULL), by a rule with `on_derived = "withhold"`.
pub const DERIVED_WITHHELD: &str = "derived_withheld";
/// Request text kept in a journal record.
const MAX_AUDIT_TEXT: usize = 16 * 1024;

/// One governed session, as every part of the agent names it.
#[derive(Clone)]
pub struct Session {
    pub id: SessionId,
    pub principal: Principal,
    /// The resource's configured name.
    pub resource: String,
    pub journal: Journal,
    /// What execution records keep of bound values (`journal.parameters`).
    pub parameters: super::ParameterRecording,
}

/// The refusal of a text the protocol could not read.
pub fn unreadable(why: &dyn std::fmt::Display) -> Decision {
    Decision {
        action: Action::Deny,
        rule: UNCLASSIFIABLE_RULE.into(),
        reason: format!("not understood: {why}"),
    }
}

/// A refusal by masking (not by a policy rule).
pub fn masking_refusal(reason: String) -> Decision {
    Decision {
        action: Action::Deny,
        rule: MASKING_RULE.into(),
        reason,
    }
}

/// What one message of the worker's asks.
pub struct Ask<'a> {
    /// The message's text as sent (journaled when it could not be read).
    pub text: &'a str,
    /// The requests it makes, or why it could not be read (then it is refused).
    pub requests: Result<&'a [&'a Request], String>,
    /// A protocol's own refusal of requests policy would allow (e.g. a form its masking
    /// cannot follow); checked after policy and the masking guard.
    pub veto: Option<Decision>,
    /// What approvers should see besides the requests (e.g. the statements of the
    /// transaction a COMMIT ends, with their row counts).
    pub context: Vec<String>,
}

/// The verdict, and the numbers the requests were journaled under (in order).
#[derive(Debug)]
pub struct Judged {
    pub verdict: Verdict,
    pub statements: Vec<u64>,
}

/// Judges the requests of one session.
pub struct Gate {
    session: Arc<Session>,
    rules: RulesHandle,
    approvals: Approvals,
    masker: Option<Masker>,
    next_statement: u64,
    /// Set when the session's settings make requests ambiguous: everything is refused.
    unsafe_reason: Option<String>,
    /// The database and role the session logged in with, once the protocol knows them.
    database: Option<String>,
    role: Option<String>,
    /// The worker's verified token, when it presented one.
    token: Option<crate::principal::WorkerToken>,
}

impl Gate {
    /// The masking rules are chosen once per session, from the rules in force now.
    pub fn new(session: Arc<Session>, rules: RulesHandle, approvals: Approvals) -> Gate {
        let p = &session.principal;
        let subject = Subject {
            principal: p.name.as_deref(),
            uid: Some(p.uid),
            user: p.user.as_deref(),
            cgroup: p.cgroup.as_deref(),
            exe: p.exe.as_deref(),
            resource: Some(&session.resource),
        };
        let masker = rules.current().masking.for_subject(&subject);
        Gate {
            masker: (!masker.is_noop()).then_some(masker),
            session,
            rules,
            approvals,
            next_statement: 1,
            unsafe_reason: None,
            database: None,
            role: None,
            token: None,
        }
    }

    /// The database and role the session logged in with (rules may match them).
    pub fn set_login(&mut self, database: Option<String>, role: Option<String>) {
        self.database = database;
        self.role = role;
    }

    /// The worker's verified token (rules may match its subject and groups).
    pub fn set_token(&mut self, token: Option<crate::principal::WorkerToken>) {
        self.token = token;
    }

    fn subject(&self) -> PolicySubject<'_> {
        PolicySubject {
            principal: &self.session.principal,
            resource: &self.session.resource,
            database: self.database.as_deref(),
            role: self.role.as_deref(),
            token: self.token.as_ref(),
        }
    }

    pub fn session(&self) -> &Arc<Session> {
        &self.session
    }

    /// The masking rules for this session; `None` when none apply.
    pub fn masker(&self) -> Option<&Masker> {
        self.masker.as_ref()
    }

    /// From now on every request is refused with `reason`.
    pub fn mark_unsafe(&mut self, reason: &str) {
        self.unsafe_reason.get_or_insert_with(|| reason.to_owned());
    }

    /// Judges a message's requests and journals one record per request (one for an
    /// unreadable text) before returning. A journal failure is an error: the caller
    /// must not forward anything.
    pub async fn judge(&mut self, ask: Ask<'_>) -> Result<Judged, JournalError> {
        let rules = self.rules.current();
        // Set when masking refuses a value computed from a masked column: journaled as a flag.
        let mut derived_flag = None;
        // Each request's own decision when the policy allows the message (decided once).
        let mut own = Vec::new();
        let decision = match (&self.unsafe_reason, &ask.requests) {
            (Some(why), _) => Decision {
                action: Action::Deny,
                rule: UNCLASSIFIABLE_RULE.into(),
                reason: why.clone(),
            },
            (None, Err(why)) => unreadable(why),
            (None, Ok(requests)) => {
                let subject = self.subject();
                let mut d = match rules.policy.decide_each(&subject, requests.iter().copied()) {
                    Ok(each) => {
                        let d = each.first().cloned().unwrap_or_else(Decision::empty);
                        own = each;
                        d
                    }
                    Err(refusal) => refusal,
                };
                if d.allowed()
                    && let Some(refusal) = self.masking_guard(requests)
                {
                    d = refusal;
                }
                if d.allowed()
                    && let Some(refusal) = self.lineage_guard(requests)
                {
                    d = refusal;
                    derived_flag = Some(DERIVED_FROM_MASKED);
                }
                match ask.veto {
                    Some(veto) if d.allowed() => veto,
                    _ => d,
                }
            }
        };
        let mut statements = Vec::new();
        match (&self.unsafe_reason, &ask.requests) {
            (None, Ok(requests)) => {
                let mut own = own.into_iter();
                for r in requests.iter() {
                    // Each allowed request is recorded with its own rule; a refused
                    // message with the refusing decision throughout.
                    let own = match own.next() {
                        Some(d) if decision.allowed() => d,
                        _ => decision.clone(),
                    };
                    let flag = derived_flag.or_else(|| {
                        (decision.allowed() && self.withholds(r)).then_some(DERIVED_WITHHELD)
                    });
                    statements.push(self.record(ask.text, Some(r), &own, flag).await?);
                }
            }
            _ => {
                self.record(ask.text, None, &decision, None).await?;
            }
        }
        let verdict = match decision.action {
            Action::Allow => Verdict::Forward,
            Action::Deny => Verdict::Refuse(decision),
            Action::RequireApproval => {
                let requirement = rules
                    .policy
                    .approval(&decision.rule)
                    .map(|a| Requirement {
                        timeout: a.timeout,
                        min_approvals: a.min_approvals,
                        approvers: a.approvers.clone(),
                    })
                    .unwrap_or_default();
                let requests: &[&Request] = match &ask.requests {
                    Ok(r) => r,
                    Err(_) => &[],
                };
                let strings = |f: &dyn Fn(&Request) -> Vec<String>| {
                    let mut v: Vec<String> = requests.iter().flat_map(|r| f(r)).collect();
                    v.sort();
                    v.dedup();
                    v
                };
                let hold = HoldRequest {
                    session: &self.session,
                    requirement,
                    text: audit_text(ask.text),
                    fingerprint: requests
                        .iter()
                        .map(|r| r.fingerprint.as_str())
                        .collect::<Vec<_>>()
                        .join(";"),
                    kinds: strings(&|r| r.kinds.iter().map(|k| k.to_string()).collect()),
                    tables: strings(&|r| r.tables.iter().cloned().collect()),
                    flags: strings(&|r| r.flags.iter().map(|f| f.to_string()).collect()),
                    statements: statements.clone(),
                    context: ask.context,
                    decision,
                };
                Verdict::Hold(self.approvals.request(hold).await?)
            }
        };
        Ok(Judged {
            verdict,
            statements,
        })
    }

    /// Refuses what the protocol itself will not forward (a malformed message, a
    /// reserved name) with `d`, journaled like any refusal: one record with `text`.
    pub async fn refuse(&mut self, text: &str, d: Decision) -> Result<Judged, JournalError> {
        let n = self.record(text, None, &d, None).await?;
        Ok(Judged {
            verdict: Verdict::Refuse(d),
            statements: vec![n],
        })
    }

    /// A request that filters, joins, sorts or groups on a column a rule masks with
    /// `refuse_side_channels` could reveal its values: refused, naming the rule.
    fn masking_guard(&self, requests: &[&Request]) -> Option<Decision> {
        let masker = self.masker.as_ref()?;
        let hit = requests
            .iter()
            .find_map(|r| masker.side_channels(&r.columns).into_iter().next())?;
        let r = &hit.reference;
        Some(Decision {
            action: Action::Deny,
            rule: hit.rule.clone(),
            reason: format!(
                "{} is masked (pattern {}); using it in {:?} could reveal its values",
                column_name(r),
                hit.pattern,
                r.clause
            ),
        })
    }

    /// A request whose result holds a value computed from a column an active rule masks
    /// (not through one of its non-revealing functions) would send it in clear: refused,
    /// naming the column, the rule and the expression.
    fn lineage_guard(&self, requests: &[&Request]) -> Option<Decision> {
        let masker = self.masker.as_ref()?;
        let hit = requests
            .iter()
            .find_map(|r| masker.derived_from_masked(&r.derived))?;
        let d = &hit.derivation;
        let what = if d.column.is_some() {
            "is computed from"
        } else {
            "holds whole rows of"
        };
        // A row-deciding clause (`WHERE clause`): a cast or function there can fail with
        // the value in its error message.
        if d.expression.ends_with(" clause") {
            return Some(Decision {
                action: Action::Deny,
                rule: hit.rule.clone(),
                reason: format!(
                    "the {} casts or calls a function on {}, which rule {} masks (pattern {}); \
                     it could fail with the value in its error message",
                    d.expression,
                    d.source_name(),
                    hit.rule,
                    hit.pattern
                ),
            });
        }
        Some(Decision {
            action: Action::Deny,
            rule: hit.rule.clone(),
            reason: format!(
                "the result `{}` {what} {}, which rule {} masks (pattern {}); only the column \
                 itself (masked) or a non-revealing function applied to it directly may be returned",
                d.expression,
                d.source_name(),
                hit.rule,
                hit.pattern
            ),
        })
    }

    /// Whether some value of the request's result is withheld rather than refused.
    fn withholds(&self, request: &Request) -> bool {
        self.masker
            .as_ref()
            .is_some_and(|m| !m.withheld_outputs(&request.derived).is_empty())
    }

    /// The one place a statement record is built.
    async fn record(
        &mut self,
        text: &str,
        request: Option<&Request>,
        d: &Decision,
        extra_flag: Option<&str>,
    ) -> Result<u64, JournalError> {
        let n = self.next_statement;
        self.next_statement += 1;
        let strings = |it: &mut dyn Iterator<Item = &str>| it.map(str::to_owned).collect();
        let event = Event::Statement {
            statement: Some(n),
            text: Some(audit_text(request.map_or(text, |r| r.text.as_str()))),
            fingerprint: request
                .filter(|r| !r.fingerprint.is_empty())
                .map(|r| r.fingerprint.clone()),
            kinds: request
                .map(|r| strings(&mut r.kinds.iter().map(|k| k.as_str())))
                .unwrap_or_default(),
            tables: request
                .map(|r| r.tables.iter().cloned().collect())
                .unwrap_or_default(),
            functions: request
                .map(|r| r.functions.iter().cloned().collect())
                .unwrap_or_default(),
            flags: request
                .map(|r| strings(&mut r.flags.iter().map(|f| f.as_str()).chain(extra_flag)))
                .unwrap_or_default(),
            decision: d.action.into(),
            rule: Some(d.rule.clone()),
            reason: Some(d.reason.clone()),
            duration_ms: None,
            rows: None,
            error: None,
        };
        self.session
            .journal
            .record(Some(self.session.id), event)
            .await?;
        Ok(n)
    }
}

fn column_name(r: &ColumnReference) -> String {
    [
        r.schema.as_deref(),
        r.table.as_deref(),
        Some(r.column.as_deref().unwrap_or("*")),
    ]
    .into_iter()
    .flatten()
    .collect::<Vec<_>>()
    .join(".")
}

fn audit_text(text: &str) -> String {
    if text.len() <= MAX_AUDIT_TEXT {
        return text.to_owned();
    }
    let mut end = MAX_AUDIT_TEXT;
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}... [{} bytes]", &text[..end], text.len())
}

/// The journal's decision vocabulary mirrors the policy's actions.
impl From<Action> for event::Decision {
    fn from(a: Action) -> Self {
        match a {
            Action::Allow => event::Decision::Allow,
            Action::Deny => event::Decision::Deny,
            Action::RequireApproval => event::Decision::RequireApproval,
        }
    }
}
