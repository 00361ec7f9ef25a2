//! Just-in-time approval of one held request: the broker. A request a rule sends to
//! approval waits here, in the worker's live session, until enough approvers decide,
//! its deadline passes, or the worker withdraws it (Ctrl-C, disconnect). Approvers reach
//! the broker through a channel that authenticates them ([`crate::control`]: a local
//! socket, SO_PEERCRED); every step is journaled with who and how.
//!
//! Grants: an approver may approve for a window, letting the same principal run the same
//! statement fingerprint on the same resource again without a new request until it ends.
//!
//! Without a broker (`Approvals::unavailable`) every hold is denied at once, so a
//! `require_approval` rule refuses, through the same Hold path.

use std::{
    collections::HashMap,
    sync::{Arc, Mutex},
    time::Duration,
};

use jiff::Timestamp;
use serde::{Deserialize, Serialize};
use tokio::sync::oneshot;
use uuid::Uuid;

use super::Session;
use crate::{
    journal::{
        Event,
        event::{ApprovalOutcome, GrantRecord},
    },
    policy::{Action, Decision},
};

/// Why requests are denied while no approval broker runs.
pub const UNAVAILABLE: &str = "approvals are not available yet";

/// What a `require_approval` rule asks of its approvals.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Requirement {
    /// How long a request may wait for its approvals.
    pub timeout: Duration,
    /// Distinct approvers needed.
    pub min_approvals: u32,
    /// Who may approve: user names, or `group:NAME`. Empty: anyone the channel admits.
    pub approvers: Vec<String>,
}

impl Default for Requirement {
    fn default() -> Self {
        Requirement {
            timeout: Duration::from_secs(15 * 60),
            min_approvals: 1,
            approvers: Vec::new(),
        }
    }
}

/// What is held, as approvers see it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Summary {
    pub id: Uuid,
    pub session: String,
    /// uid, user, unit, cgroup, exe of the requester.
    pub principal: crate::principal::Principal,
    pub resource: String,
    pub rule: String,
    pub reason: String,
    pub text: String,
    pub fingerprint: String,
    pub kinds: Vec<String>,
    pub tables: Vec<String>,
    pub flags: Vec<String>,
    /// The statement records (numbers within the session) this request holds.
    pub statements: Vec<u64>,
    /// What else approvers should see (the transaction a COMMIT ends, ...).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub context: Vec<String>,
    pub requested_at: Timestamp,
    pub expires_at: Timestamp,
    pub min_approvals: u32,
    /// Who approved so far.
    pub approved_by: Vec<String>,
}

/// A window in which the same principal may run the same fingerprint on the same
/// resource without a new request.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Grant {
    pub id: Uuid,
    /// The request it was granted on.
    pub approval: Uuid,
    pub uid: u32,
    pub cgroup: Option<String>,
    pub exe: Option<String>,
    pub resource: String,
    pub fingerprint: String,
    pub until: Timestamp,
    pub by: String,
}

impl Grant {
    /// As the journal keeps it.
    pub fn record(&self) -> GrantRecord {
        GrantRecord {
            id: self.id,
            uid: self.uid,
            cgroup: self.cgroup.clone(),
            exe: self.exe.clone(),
            resource: self.resource.clone(),
            fingerprint: self.fingerprint.clone(),
            until: self.until,
        }
    }

    /// Rebuilt from the journal at a start (the approval and approver are in the record
    /// that made it).
    pub fn from_record(r: GrantRecord, approval: Uuid, by: String) -> Grant {
        Grant {
            id: r.id,
            approval,
            uid: r.uid,
            cgroup: r.cgroup,
            exe: r.exe,
            resource: r.resource,
            fingerprint: r.fingerprint,
            until: r.until,
            by,
        }
    }
}

/// An approver, as the channel authenticated them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Approver {
    /// The local account: the kernel's word (SO_PEERCRED), or the one a remote
    /// subject is configured to be. `None`: a remote approver with no local account.
    pub uid: Option<u32>,
    /// The identity provider's subject, when a token authenticated the approver.
    pub subject: Option<String>,
    pub user: String,
    pub groups: Vec<String>,
    /// `cli`, `http`, ...
    pub channel: String,
}

impl Approver {
    fn named(&self) -> String {
        match (self.uid, &self.subject) {
            (Some(uid), None) => format!("{} (uid {uid}, {})", self.user, self.channel),
            (Some(uid), Some(s)) => {
                format!("{} (uid {uid}, subject {s}, {})", self.user, self.channel)
            }
            (None, Some(s)) => format!("{} (subject {s}, {})", self.user, self.channel),
            (None, None) => format!("{} ({})", self.user, self.channel),
        }
    }

    /// The same person, whatever channel: same local account or same subject.
    fn same_as(&self, other: &Approver) -> bool {
        (self.uid.is_some() && self.uid == other.uid)
            || (self.subject.is_some() && self.subject == other.subject)
    }

    fn admitted_by(&self, approvers: &[String]) -> bool {
        approvers.is_empty()
            || approvers.iter().any(|a| match a.strip_prefix("group:") {
                Some(g) => self.groups.iter().any(|mine| mine == g),
                None => *a == self.user,
            })
    }
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ApprovalError {
    #[error("no pending approval request {0}")]
    Unknown(Uuid),
    #[error("the requester cannot approve its own request")]
    SelfApproval,
    #[error("{0} is not among the approvers of rule `{1}`")]
    NotAnApprover(String, String),
    #[error("{0} already approved this request")]
    AlreadyApproved(String),
    #[error("no grant {0}")]
    UnknownGrant(Uuid),
    #[error("the audit journal is unavailable: {0}")]
    Journal(String),
}

/// What a decision did.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Decided {
    /// Enough approvals: the statement runs.
    Approved,
    /// Counted; more approvals are needed.
    Counted {
        have: u32,
        need: u32,
    },
    Denied,
}

/// The seam the gate holds requests through.
#[derive(Clone, Default)]
pub struct Approvals {
    broker: Option<Broker>,
}

impl std::fmt::Debug for Approvals {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(if self.broker.is_some() {
            "Approvals(broker)"
        } else {
            "Approvals(unavailable)"
        })
    }
}

/// What the gate hands over for a held request.
pub struct HoldRequest<'a> {
    pub session: &'a Arc<Session>,
    pub decision: Decision,
    pub requirement: Requirement,
    pub text: String,
    pub fingerprint: String,
    pub kinds: Vec<String>,
    pub tables: Vec<String>,
    pub flags: Vec<String>,
    pub statements: Vec<u64>,
    pub context: Vec<String>,
}

impl Approvals {
    /// Every hold denied at once.
    pub fn unavailable() -> Approvals {
        Approvals { broker: None }
    }

    pub fn with_broker(broker: Broker) -> Approvals {
        Approvals {
            broker: Some(broker),
        }
    }

    pub fn broker(&self) -> Option<&Broker> {
        self.broker.as_ref()
    }

    /// Files a request. A journal failure is returned: nothing may run then.
    pub async fn request(&self, r: HoldRequest<'_>) -> Result<Held, crate::journal::JournalError> {
        match &self.broker {
            Some(b) => b.request(r).await,
            None => {
                let (tx, rx) = oneshot::channel();
                let _ = tx.send(Resolution::Denied(UNAVAILABLE.into()));
                Ok(Held::new(r.decision, rx))
            }
        }
    }
}

/// The broker: pending requests and grants, shared by the sessions and the channels.
#[derive(Clone)]
pub struct Broker {
    inner: Arc<Mutex<State>>,
    journal: crate::journal::Journal,
    /// Requests and decisions, for whoever listens (webhooks). Sending never waits: a
    /// listener that falls behind loses notices, the decision path never slows.
    notices: tokio::sync::broadcast::Sender<Notice>,
}

/// Told to listeners once a request or decision is on record.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Notice {
    /// `approval_requested` or `approval_decided`.
    pub event: &'static str,
    pub request: Summary,
    /// For decisions: `approved`, `counted`, `rejected`, `expired`, `withdrawn`,
    /// `abandoned`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub outcome: Option<&'static str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub by: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
}

impl Notice {
    fn requested(request: Summary) -> Notice {
        Notice {
            event: "approval_requested",
            request,
            outcome: None,
            by: None,
            reason: None,
        }
    }

    fn decided(
        request: Summary,
        outcome: &'static str,
        by: String,
        reason: Option<String>,
    ) -> Notice {
        Notice {
            event: "approval_decided",
            request,
            outcome: Some(outcome),
            by: Some(by),
            reason,
        }
    }
}

/// Notices a slow listener may fall behind by before it loses some.
const NOTICE_BACKLOG: usize = 1024;

#[derive(Default)]
struct State {
    pending: HashMap<Uuid, Pending>,
    grants: Vec<Grant>,
}

struct Pending {
    summary: Summary,
    requirement: Requirement,
    answer: oneshot::Sender<Resolution>,
    approvals: Vec<Approver>,
    /// The deadline's timer: stopped once the request is decided, so nothing outlives
    /// it (the timer holds the journal, which must close at shutdown).
    expiry: Option<ExpiryTimer>,
}

/// Stops the deadline's timer when dropped (unless disarmed: the timer itself).
struct ExpiryTimer(Option<tokio::task::AbortHandle>);

impl Drop for ExpiryTimer {
    fn drop(&mut self) {
        if let Some(h) = self.0.take() {
            h.abort();
        }
    }
}

impl Broker {
    /// `grants`: those still in force from earlier runs (see
    /// [`crate::journal::sqlite::SqliteStore::grants_in_force`]).
    pub fn new(journal: crate::journal::Journal, grants: Vec<Grant>) -> Broker {
        Broker {
            inner: Arc::new(Mutex::new(State {
                grants,
                ..State::default()
            })),
            journal,
            notices: tokio::sync::broadcast::channel(NOTICE_BACKLOG).0,
        }
    }

    /// Requests and decisions from now on.
    pub fn notices(&self) -> tokio::sync::broadcast::Receiver<Notice> {
        self.notices.subscribe()
    }

    fn notify(&self, n: Notice) {
        // No listener is not an error.
        let _ = self.notices.send(n);
    }

    fn state(&self) -> std::sync::MutexGuard<'_, State> {
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    async fn request(&self, r: HoldRequest<'_>) -> Result<Held, crate::journal::JournalError> {
        let p = &r.session.principal;
        let now = Timestamp::now();
        let id = Uuid::now_v7();
        let (tx, rx) = oneshot::channel();
        let grant = {
            let mut st = self.state();
            st.grants.retain(|g| g.until > now);
            st.grants
                .iter()
                .find(|g| {
                    g.uid == p.uid
                        && g.cgroup == p.cgroup
                        && g.exe == p.exe
                        && g.resource == r.session.resource
                        && !r.fingerprint.is_empty()
                        && g.fingerprint == r.fingerprint
                })
                .cloned()
        };
        let expires_at = now
            .checked_add(r.requirement.timeout)
            .unwrap_or(Timestamp::MAX);
        let summary = Summary {
            id,
            session: r.session.id.to_string(),
            principal: p.clone(),
            resource: r.session.resource.clone(),
            rule: r.decision.rule.clone(),
            reason: r.decision.reason.clone(),
            text: r.text,
            fingerprint: r.fingerprint,
            kinds: r.kinds,
            tables: r.tables,
            flags: r.flags,
            statements: r.statements,
            context: r.context,
            requested_at: now,
            expires_at,
            min_approvals: r.requirement.min_approvals.max(1),
            approved_by: Vec::new(),
        };
        if let Some(g) = grant {
            // A grant in force answers at once; the decision is on record as the grant's.
            let by = format!("grant {} by {}", g.id, g.by);
            let reason = format!("within the grant until {}", g.until);
            self.journal
                .record(
                    Some(r.session.id),
                    Event::ApprovalDecided {
                        approval: id,
                        outcome: ApprovalOutcome::Approved,
                        by: by.clone(),
                        reason: Some(reason.clone()),
                        grant: None,
                    },
                )
                .await?;
            self.notify(Notice::decided(summary, "approved", by, Some(reason)));
            let _ = tx.send(Resolution::Approved);
            return Ok(Held::new(r.decision, rx));
        }
        // On record before anyone can decide it.
        self.journal
            .record(
                Some(r.session.id),
                Event::ApprovalRequested {
                    approval: id,
                    rule: summary.rule.clone(),
                    request: summary.text.clone(),
                    approvers: r.requirement.approvers.clone(),
                    expires_at,
                },
            )
            .await?;
        let broker = self.clone();
        let session = r.session.id;
        let timeout = r.requirement.timeout;
        let expiry = tokio::spawn(async move {
            tokio::time::sleep(timeout).await;
            broker.expire(id, session).await;
        });
        self.state().pending.insert(
            id,
            Pending {
                summary: summary.clone(),
                requirement: r.requirement.clone(),
                answer: tx,
                approvals: Vec::new(),
                expiry: Some(ExpiryTimer(Some(expiry.abort_handle()))),
            },
        );
        self.notify(Notice::requested(summary.clone()));
        let withdraw = Withdraw {
            broker: self.clone(),
            id,
            session,
        };
        Ok(Held::pending(r.decision, rx, summary, withdraw))
    }

    /// Pending requests, oldest first.
    pub fn list(&self) -> Vec<Summary> {
        let mut v: Vec<Summary> = self
            .state()
            .pending
            .values()
            .map(|p| p.summary.clone())
            .collect();
        v.sort_by_key(|s| s.requested_at);
        v
    }

    pub fn show(&self, id: Uuid) -> Option<Summary> {
        self.state().pending.get(&id).map(|p| p.summary.clone())
    }

    pub fn grants(&self) -> Vec<Grant> {
        let now = Timestamp::now();
        let mut st = self.state();
        st.grants.retain(|g| g.until > now);
        st.grants.clone()
    }

    /// An approval; with `grant_for`, also a window for the same fingerprint. The
    /// decision is journaled before the statement is released (if it cannot be, the
    /// statement is refused).
    pub async fn approve(
        &self,
        id: Uuid,
        who: &Approver,
        grant_for: Option<Duration>,
        reason: Option<String>,
    ) -> Result<Decided, ApprovalError> {
        let (summary, decided, done) = {
            let mut st = self.state();
            let p = st.pending.get_mut(&id).ok_or(ApprovalError::Unknown(id))?;
            if who.uid == Some(p.summary.principal.uid) {
                return Err(ApprovalError::SelfApproval);
            }
            if !who.admitted_by(&p.requirement.approvers) {
                return Err(ApprovalError::NotAnApprover(
                    who.user.clone(),
                    p.summary.rule.clone(),
                ));
            }
            if p.approvals.iter().any(|a| a.same_as(who)) {
                return Err(ApprovalError::AlreadyApproved(who.user.clone()));
            }
            p.approvals.push(who.clone());
            p.summary.approved_by.push(who.named());
            let have = p.approvals.len() as u32;
            let need = p.summary.min_approvals;
            let summary = p.summary.clone();
            if have < need {
                (summary, Decided::Counted { have, need }, None)
            } else {
                (summary, Decided::Approved, st.pending.remove(&id))
            }
        };
        let grant = match (&done, grant_for) {
            (Some(p), Some(d)) => Some(Grant {
                id: Uuid::now_v7(),
                approval: id,
                uid: p.summary.principal.uid,
                cgroup: p.summary.principal.cgroup.clone(),
                exe: p.summary.principal.exe.clone(),
                resource: p.summary.resource.clone(),
                fingerprint: p.summary.fingerprint.clone(),
                until: Timestamp::now().checked_add(d).unwrap_or(Timestamp::MAX),
                by: who.named(),
            }),
            _ => None,
        };
        let reason = match (&grant, reason) {
            (Some(g), r) => Some(format!(
                "{}grant {} until {}",
                r.map(|r| format!("{r}; ")).unwrap_or_default(),
                g.id,
                g.until
            )),
            (None, r) => r,
        };
        let outcome = match decided {
            Decided::Counted { .. } => ApprovalOutcome::Counted,
            _ => ApprovalOutcome::Approved,
        };
        let event = Event::ApprovalDecided {
            approval: id,
            outcome,
            by: who.named(),
            reason: reason.clone(),
            grant: grant.as_ref().map(Grant::record),
        };
        let recorded = self.journal_for(&summary.session, event).await;
        if recorded.is_ok() {
            self.notify(Notice::decided(
                summary,
                outcome.as_str(),
                who.named(),
                reason,
            ));
        }
        if let Some(p) = done {
            match &recorded {
                Ok(()) => {
                    if let Some(g) = grant {
                        self.state().grants.push(g);
                    }
                    let _ = p.answer.send(Resolution::Approved);
                }
                Err(e) => {
                    let _ = p.answer.send(Resolution::Denied(format!(
                        "the approval could not be journaled ({e}); nothing ran"
                    )));
                }
            }
        }
        recorded.map(|()| decided)
    }

    /// A denial (by an approver, or by the requester itself), journaled before the
    /// worker is told.
    pub async fn deny(
        &self,
        id: Uuid,
        who: &Approver,
        reason: Option<String>,
    ) -> Result<Decided, ApprovalError> {
        let p = {
            let mut st = self.state();
            let p = st.pending.get(&id).ok_or(ApprovalError::Unknown(id))?;
            if !who.admitted_by(&p.requirement.approvers)
                && who.uid != Some(p.summary.principal.uid)
            {
                return Err(ApprovalError::NotAnApprover(
                    who.user.clone(),
                    p.summary.rule.clone(),
                ));
            }
            st.pending.remove(&id).expect("present")
        };
        let why = format!(
            "denied by {}{}",
            who.user,
            reason
                .as_deref()
                .map(|r| format!(": {r}"))
                .unwrap_or_default()
        );
        let event = Event::ApprovalDecided {
            approval: id,
            outcome: ApprovalOutcome::Rejected,
            by: who.named(),
            reason: reason.clone(),
            grant: None,
        };
        let recorded = self.journal_for(&p.summary.session, event).await;
        if recorded.is_ok() {
            self.notify(Notice::decided(
                p.summary.clone(),
                "rejected",
                who.named(),
                reason,
            ));
        }
        let _ = p.answer.send(Resolution::Denied(why));
        recorded.map(|()| Decided::Denied)
    }

    pub async fn revoke(&self, grant: Uuid, who: &Approver) -> Result<(), ApprovalError> {
        let g = {
            let mut st = self.state();
            let i = st
                .grants
                .iter()
                .position(|g| g.id == grant)
                .ok_or(ApprovalError::UnknownGrant(grant))?;
            st.grants.remove(i)
        };
        let event = Event::ApprovalDecided {
            approval: g.approval,
            outcome: ApprovalOutcome::Revoked,
            by: who.named(),
            reason: Some(format!("grant {} revoked", g.id)),
            grant: Some(g.record()),
        };
        self.journal
            .record(None, event)
            .await
            .map(drop)
            .map_err(|e| ApprovalError::Journal(e.to_string()))
    }

    async fn expire(&self, id: Uuid, session: crate::journal::SessionId) {
        let Some(mut p) = self.state().pending.remove(&id) else {
            return;
        };
        // This is the timer itself: it must finish its own work, not abort it.
        if let Some(t) = p.expiry.as_mut() {
            t.0 = None;
        }
        // On record before the worker hears of it.
        if let Err(e) = self
            .journal
            .record(Some(session), Event::ApprovalExpired { approval: id })
            .await
        {
            tracing::error!(error = %e, "cannot journal an expired approval");
        }
        self.notify(Notice::decided(
            p.summary.clone(),
            "expired",
            "pam-agent".into(),
            Some("nobody decided in time".into()),
        ));
        let _ = p.answer.send(Resolution::Denied(format!(
            "approval request {id} expired at {} with no decision",
            p.summary.expires_at
        )));
    }

    /// The agent is stopping: every pending request is abandoned (its statement never
    /// runs) and on record as such.
    pub async fn shutdown(&self) {
        let pending: Vec<Pending> = self.state().pending.drain().map(|(_, p)| p).collect();
        for p in pending {
            let event = Event::ApprovalDecided {
                approval: p.summary.id,
                outcome: ApprovalOutcome::Abandoned,
                by: "pam-agent".into(),
                reason: Some(
                    "the agent stopped before a decision; the statement did not run".into(),
                ),
                grant: None,
            };
            if let Err(e) = self.journal_for(&p.summary.session, event).await {
                tracing::error!(error = %e, "cannot journal an abandoned approval");
            }
            let _ = p
                .answer
                .send(Resolution::Denied("the agent is stopping".into()));
        }
    }

    /// The worker went away (disconnect, cancel, session end) before a decision.
    async fn withdraw(&self, id: Uuid, session: crate::journal::SessionId) {
        let Some(p) = self.state().pending.remove(&id) else {
            return;
        };
        let event = Event::ApprovalDecided {
            approval: id,
            outcome: ApprovalOutcome::Withdrawn,
            by: "the requesting session".into(),
            reason: Some("the worker withdrew the statement before a decision".into()),
            grant: None,
        };
        if let Err(e) = self.journal.record(Some(session), event).await {
            tracing::error!(error = %e, "cannot journal a withdrawn approval");
        }
        self.notify(Notice::decided(
            p.summary,
            "withdrawn",
            "the requesting session".into(),
            None,
        ));
    }

    async fn journal_for(&self, session: &str, event: Event) -> Result<(), ApprovalError> {
        let id = session.parse().ok().map(crate::journal::SessionId);
        self.journal
            .record(id, event)
            .await
            .map(drop)
            .map_err(|e| ApprovalError::Journal(e.to_string()))
    }
}

/// Withdraws a pending request when its holder goes away undecided.
pub struct Withdraw {
    broker: Broker,
    id: Uuid,
    session: crate::journal::SessionId,
}

impl Drop for Withdraw {
    fn drop(&mut self) {
        let (broker, id, session) = (self.broker.clone(), self.id, self.session);
        if broker.state().pending.contains_key(&id)
            && let Ok(rt) = tokio::runtime::Handle::try_current()
        {
            rt.spawn(async move { broker.withdraw(id, session).await });
        }
    }
}

/// A request waiting for approval.
pub struct Held {
    /// The rule that asked for approval, and why.
    pub decision: Decision,
    answer: oneshot::Receiver<Resolution>,
    /// The broker's request (absent when it was answered at once); dropping the hold
    /// undecided withdraws it.
    pending: Option<Box<(Summary, Withdraw)>>,
}

impl std::fmt::Debug for Held {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Held")
            .field("decision", &self.decision)
            .field("request", &self.pending.as_ref().map(|p| p.0.id))
            .finish()
    }
}

/// How a held request ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Resolution {
    Approved,
    /// Denied, expired or withdrawn: the reason is shown to the worker.
    Denied(String),
}

impl Held {
    /// A hold answered already (or to be answered without a request to show).
    pub fn new(decision: Decision, answer: oneshot::Receiver<Resolution>) -> Held {
        Held {
            decision,
            answer,
            pending: None,
        }
    }

    /// A hold filed with the broker as `summary`.
    pub fn pending(
        decision: Decision,
        answer: oneshot::Receiver<Resolution>,
        summary: Summary,
        withdraw: Withdraw,
    ) -> Held {
        Held {
            decision,
            answer,
            pending: Some(Box::new((summary, withdraw))),
        }
    }

    /// The request approvers see, when one waits.
    pub fn request(&self) -> Option<&Summary> {
        self.pending.as_ref().map(|p| &p.0)
    }

    /// Waits for the decision. A request whose decider went away is denied.
    pub async fn resolution(self) -> (Decision, Resolution) {
        let Held {
            decision,
            answer,
            pending,
        } = self;
        let r = answer
            .await
            .unwrap_or_else(|_| Resolution::Denied("the approval request was abandoned".into()));
        drop(pending);
        (decision, r)
    }
}

/// The refusal a denied request gets: the rule that held it, and why it did not run.
pub fn denied(held: Decision, why: &str) -> Decision {
    Decision {
        action: Action::RequireApproval,
        rule: held.rule,
        reason: format!("{} ({why})", held.reason),
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Mutex as StdMutex;

    use super::*;
    use crate::{
        journal::{Journal, JournalError, JournalStore, Record, SessionId},
        policy::Action,
        principal::Principal,
    };

    /// A store that keeps what it is given, to assert the journal's side of each step.
    struct Recorder(Arc<StdMutex<Vec<Event>>>, u64);

    impl JournalStore for Recorder {
        fn last_seq(&self) -> u64 {
            self.1
        }
        fn append(&mut self, records: &[Record]) -> Result<(), JournalError> {
            self.1 += records.len() as u64;
            let mut v = self.0.lock().unwrap();
            v.extend(records.iter().map(|r| r.event.clone()));
            Ok(())
        }
    }

    fn worker(uid: u32) -> Principal {
        Principal {
            pid: 10,
            tid: 10,
            uid,
            gid: uid,
            cgroup_id: 7,
            comm: "python3".into(),
            user: Some(format!("u{uid}")),
            exe: Some("/usr/bin/python3".into()),
            cgroup: Some("/crew.slice/w1.service".into()),
            unit: Some("w1.service".into()),
            ..Default::default()
        }
    }

    fn approver(uid: u32, groups: &[&str]) -> Approver {
        Approver {
            uid: Some(uid),
            subject: None,
            user: format!("a{uid}"),
            groups: groups.iter().map(|g| g.to_string()).collect(),
            channel: "cli".into(),
        }
    }

    struct Setup {
        broker: Broker,
        approvals: Approvals,
        session: Arc<Session>,
        events: Arc<StdMutex<Vec<Event>>>,
    }

    fn setup() -> Setup {
        let events = Arc::new(StdMutex::new(Vec::new()));
        let (journal, _writer) = Journal::start(Recorder(events.clone(), 0));
        let broker = Broker::new(journal.clone(), Vec::new());
        Setup {
            approvals: Approvals::with_broker(broker.clone()),
            broker,
            session: Arc::new(Session {
                id: SessionId::new(),
                principal: worker(1001),
                resource: "db".into(),
                journal,
                parameters: Default::default(),
            }),
            events,
        }
    }

    fn hold<'a>(s: &'a Setup, req: Requirement, fingerprint: &str) -> HoldRequest<'a> {
        HoldRequest {
            session: &s.session,
            decision: Decision {
                action: Action::RequireApproval,
                rule: "deletes".into(),
                reason: "approval required".into(),
            },
            requirement: req,
            text: "DELETE FROM orders WHERE id = 1".into(),
            fingerprint: fingerprint.into(),
            kinds: vec!["delete".into()],
            tables: vec!["public.orders".into()],
            flags: vec![],
            statements: vec![3],
            context: vec![],
        }
    }

    fn kinds(s: &Setup) -> Vec<String> {
        s.events
            .lock()
            .unwrap()
            .iter()
            .map(|e| match e {
                Event::ApprovalDecided { outcome, .. } => format!("decided:{}", outcome.as_str()),
                other => other.kind().to_owned(),
            })
            .collect()
    }

    #[tokio::test]
    async fn a_request_is_on_record_and_waits_until_approved_by_someone_else() {
        let s = setup();
        let held = s
            .approvals
            .request(hold(&s, Requirement::default(), "fp1"))
            .await
            .unwrap();
        let id = held.request().expect("a pending request").id;
        assert_eq!(kinds(&s), ["approval_requested"]);
        assert_eq!(s.broker.list().len(), 1);
        assert_eq!(s.broker.show(id).unwrap().statements, [3]);
        // The requester cannot approve its own request, whatever channel.
        let me = approver(1001, &[]);
        assert_eq!(
            s.broker.approve(id, &me, None, None).await,
            Err(ApprovalError::SelfApproval)
        );
        let other = approver(2000, &[]);
        assert_eq!(
            s.broker.approve(id, &other, None, None).await,
            Ok(Decided::Approved)
        );
        let (_, r) = held.resolution().await;
        assert_eq!(r, Resolution::Approved);
        assert!(s.broker.list().is_empty());
        assert_eq!(kinds(&s), ["approval_requested", "decided:approved"]);
        assert_eq!(
            s.broker.approve(id, &other, None, None).await,
            Err(ApprovalError::Unknown(id)),
            "decided once"
        );
    }

    #[tokio::test]
    async fn two_approvals_need_two_distinct_approvers_of_the_rules_groups() {
        let s = setup();
        let req = Requirement {
            min_approvals: 2,
            approvers: vec!["group:secops".into(), "carol".into()],
            ..Requirement::default()
        };
        let held = s.approvals.request(hold(&s, req, "fp")).await.unwrap();
        let id = held.request().unwrap().id;
        let outsider = approver(3000, &["dev"]);
        assert!(matches!(
            s.broker.approve(id, &outsider, None, None).await,
            Err(ApprovalError::NotAnApprover(..))
        ));
        let alice = approver(2000, &["secops"]);
        assert_eq!(
            s.broker.approve(id, &alice, None, None).await,
            Ok(Decided::Counted { have: 1, need: 2 })
        );
        assert!(matches!(
            s.broker.approve(id, &alice, None, None).await,
            Err(ApprovalError::AlreadyApproved(_))
        ));
        let carol = Approver {
            user: "carol".into(),
            ..approver(2001, &[])
        };
        assert_eq!(
            s.broker.approve(id, &carol, None, None).await,
            Ok(Decided::Approved)
        );
        assert_eq!(held.resolution().await.1, Resolution::Approved);
        assert_eq!(
            kinds(&s),
            ["approval_requested", "decided:counted", "decided:approved"]
        );
    }

    #[tokio::test]
    async fn a_denial_names_the_approver_and_the_reason() {
        let s = setup();
        let held = s
            .approvals
            .request(hold(&s, Requirement::default(), "fp"))
            .await
            .unwrap();
        let id = held.request().unwrap().id;
        s.broker
            .deny(id, &approver(2000, &[]), Some("not today".into()))
            .await
            .unwrap();
        let (_, r) = held.resolution().await;
        assert_eq!(r, Resolution::Denied("denied by a2000: not today".into()));
        assert_eq!(kinds(&s), ["approval_requested", "decided:rejected"]);
    }

    #[tokio::test]
    async fn an_undecided_request_expires_at_its_deadline() {
        let s = setup();
        let req = Requirement {
            timeout: Duration::from_millis(100),
            ..Requirement::default()
        };
        let held = s.approvals.request(hold(&s, req, "fp")).await.unwrap();
        let (_, r) = held.resolution().await;
        let Resolution::Denied(why) = r else {
            panic!("approved?")
        };
        assert!(why.contains("expired"), "{why}");
        assert!(s.broker.list().is_empty());
        assert_eq!(kinds(&s), ["approval_requested", "approval_expired"]);
    }

    #[tokio::test]
    async fn a_grant_lets_the_same_fingerprint_through_and_nothing_else() {
        let s = setup();
        let held = s
            .approvals
            .request(hold(&s, Requirement::default(), "fp-delete"))
            .await
            .unwrap();
        let id = held.request().unwrap().id;
        s.broker
            .approve(
                id,
                &approver(2000, &[]),
                Some(Duration::from_secs(600)),
                None,
            )
            .await
            .unwrap();
        held.resolution().await;
        assert_eq!(s.broker.grants().len(), 1);
        // Same principal, resource and fingerprint: answered at once, on record.
        let again = s
            .approvals
            .request(hold(&s, Requirement::default(), "fp-delete"))
            .await
            .unwrap();
        assert!(again.request().is_none(), "no new request");
        assert_eq!(again.resolution().await.1, Resolution::Approved);
        // Another fingerprint waits.
        let other = s
            .approvals
            .request(hold(&s, Requirement::default(), "fp-drop"))
            .await
            .unwrap();
        assert!(other.request().is_some());
        // Revoked: the same fingerprint waits again.
        let g = s.broker.grants()[0].id;
        s.broker.revoke(g, &approver(2000, &[])).await.unwrap();
        let after = s
            .approvals
            .request(hold(&s, Requirement::default(), "fp-delete"))
            .await
            .unwrap();
        assert!(after.request().is_some());
        let k = kinds(&s);
        assert_eq!(
            k.iter().filter(|k| *k == "decided:approved").count(),
            2,
            "{k:?}"
        );
        assert!(k.contains(&"decided:revoked".to_owned()), "{k:?}");
    }

    #[tokio::test]
    async fn a_person_counts_once_whatever_the_channel_and_a_mapped_subject_is_its_user() {
        let s = setup();
        let req = Requirement {
            min_approvals: 3,
            ..Requirement::default()
        };
        let held = s.approvals.request(hold(&s, req, "fp")).await.unwrap();
        let id = held.request().unwrap().id;
        let remote = |uid: Option<u32>, sub: &str| Approver {
            uid,
            subject: Some(sub.into()),
            user: format!("oidc:{sub}"),
            groups: vec![],
            channel: "http".into(),
        };
        // A subject mapped to the worker's own user is the requester.
        assert_eq!(
            s.broker
                .approve(id, &remote(Some(1001), "crewbot"), None, None)
                .await,
            Err(ApprovalError::SelfApproval)
        );
        // alice by socket, then alice by token (mapped to her uid): counted once.
        s.broker
            .approve(id, &approver(2000, &[]), None, None)
            .await
            .unwrap();
        assert!(matches!(
            s.broker
                .approve(id, &remote(Some(2000), "alice"), None, None)
                .await,
            Err(ApprovalError::AlreadyApproved(_))
        ));
        // An unmapped subject is someone else, once.
        assert_eq!(
            s.broker.approve(id, &remote(None, "bob"), None, None).await,
            Ok(Decided::Counted { have: 2, need: 3 })
        );
        assert!(matches!(
            s.broker.approve(id, &remote(None, "bob"), None, None).await,
            Err(ApprovalError::AlreadyApproved(_))
        ));
        assert_eq!(
            s.broker
                .approve(id, &remote(None, "carol"), None, None)
                .await,
            Ok(Decided::Approved)
        );
        assert_eq!(held.resolution().await.1, Resolution::Approved);
    }

    #[tokio::test]
    async fn listeners_hear_of_requests_and_decisions_once_on_record() {
        let s = setup();
        let mut notices = s.broker.notices();
        let held = s
            .approvals
            .request(hold(&s, Requirement::default(), "fp"))
            .await
            .unwrap();
        let id = held.request().unwrap().id;
        let n = notices.recv().await.unwrap();
        assert_eq!(
            (n.event, n.request.id, n.outcome),
            ("approval_requested", id, None)
        );
        assert_eq!(kinds(&s), ["approval_requested"], "on record first");
        s.broker
            .approve(
                id,
                &approver(2000, &[]),
                Some(Duration::from_secs(60)),
                Some("ok".into()),
            )
            .await
            .unwrap();
        let n = notices.recv().await.unwrap();
        assert_eq!((n.event, n.outcome), ("approval_decided", Some("approved")));
        assert_eq!(n.by.as_deref(), Some("a2000 (uid 2000, cli)"));
        held.resolution().await;
        // A use of the grant is a decision too.
        let again = s
            .approvals
            .request(hold(&s, Requirement::default(), "fp"))
            .await
            .unwrap();
        assert!(again.request().is_none());
        let n = notices.recv().await.unwrap();
        assert_eq!(n.outcome, Some("approved"));
        assert!(n.by.unwrap().starts_with("grant "));
        // A listener that never reads does not hold anything up.
        let _deaf = s.broker.notices();
        for i in 0..(NOTICE_BACKLOG + 10) {
            let h = s
                .approvals
                .request(hold(&s, Requirement::default(), &format!("other{i}")))
                .await
                .unwrap();
            let id = h.request().unwrap().id;
            s.broker.deny(id, &approver(2000, &[]), None).await.unwrap();
        }
    }

    #[tokio::test]
    async fn dropping_an_undecided_hold_withdraws_it() {
        let s = setup();
        let held = s
            .approvals
            .request(hold(&s, Requirement::default(), "fp"))
            .await
            .unwrap();
        let id = held.request().unwrap().id;
        drop(held);
        for _ in 0..100 {
            if s.broker.show(id).is_none() && kinds(&s).len() == 2 {
                break;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        assert!(s.broker.show(id).is_none());
        assert_eq!(kinds(&s), ["approval_requested", "decided:withdrawn"]);
    }

    #[tokio::test]
    async fn without_a_broker_every_hold_is_denied_at_once() {
        let s = setup();
        let held = Approvals::unavailable()
            .request(hold(&s, Requirement::default(), "fp"))
            .await
            .unwrap();
        assert!(held.request().is_none());
        assert_eq!(
            held.resolution().await.1,
            Resolution::Denied(UNAVAILABLE.into())
        );
    }
}
