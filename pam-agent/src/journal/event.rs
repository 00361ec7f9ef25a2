//! What the journal records. One [`Record`] per row: a sequence number, a time, the
//! session it belongs to (if any) and the [`Event`]. The record's JSON form (serde, field
//! order as declared) is what the hash chain covers, so it is part of the on-disk format.

use std::net::{IpAddr, SocketAddr};

use jiff::Timestamp;
use serde::{Deserialize, Serialize};
use uuid::Uuid;

use crate::principal::Principal;

/// Ties a connection's records together. UUIDv7: unique across restarts, sorts by time.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(transparent)]
pub struct SessionId(pub Uuid);

impl SessionId {
    pub fn new() -> Self {
        SessionId(Uuid::now_v7())
    }
}

impl Default for SessionId {
    fn default() -> Self {
        Self::new()
    }
}

impl std::fmt::Display for SessionId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        self.0.fmt(f)
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Record {
    pub seq: u64,
    pub ts: Timestamp,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub session: Option<SessionId>,
    #[serde(flatten)]
    pub event: Event,
}

impl Record {
    pub fn new(seq: u64, session: Option<SessionId>, event: Event) -> Self {
        Record {
            seq,
            ts: Timestamp::now(),
            session,
            event,
        }
    }
}

/// The resource a session was for, as configured.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ResourceRef {
    pub name: String,
    pub protocol: String,
}

/// Everything the agent journals. The `kind` tag names the variant in snake case; it is
/// also the `kind` column of the store, so names are part of the on-disk format: add
/// variants and optional fields, never rename.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Event {
    AgentStarted {
        version: String,
        config: String,
        governed: Vec<String>,
        resources: Vec<String>,
    },
    AgentStopped {
        reason: String,
    },
    /// The configuration was re-read (SIGHUP or the control API); `ok: false` when the new
    /// file was refused and the old one stays in force.
    ConfigReloaded {
        config: String,
        ok: bool,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        detail: Option<String>,
    },
    /// A redirected connection was accepted and will be relayed.
    SessionOpened {
        principal: Principal,
        resource: ResourceRef,
        /// Where the worker meant to connect.
        destination: SocketAddr,
        /// The worker socket's address as the proxy saw it.
        client: SocketAddr,
    },
    /// What a session logged in as, once its protocol's login is done and before its
    /// first request: what the worker asked for, and what the server reported.
    SessionLogin {
        #[serde(default, skip_serializing_if = "Option::is_none")]
        database: Option<String>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        role: Option<String>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        application_name: Option<String>,
        /// Settings the server reported (PostgreSQL: ParameterStatus such as
        /// `session_authorization`, `application_name`, `server_version`).
        #[serde(default, skip_serializing_if = "std::collections::BTreeMap::is_empty")]
        reported: std::collections::BTreeMap<String, String>,
    },
    /// The session's effective role and search path as the server last gave them, when
    /// they changed since the session's previous record of them.
    SessionSettings {
        #[serde(default, skip_serializing_if = "Option::is_none")]
        role: Option<String>,
        #[serde(default, skip_serializing_if = "Vec::is_empty")]
        search_path: Vec<String>,
    },
    SessionClosed {
        bytes_from_worker: u64,
        bytes_to_worker: u64,
        duration_ms: u64,
        end: SessionEnd,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        detail: Option<String>,
    },
    /// The token a worker presented (`worker_auth = "oidc"`), accepted or refused: who
    /// the issuer says it is, never the token itself.
    WorkerToken {
        accepted: bool,
        /// The resource's configured issuer.
        issuer: String,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        subject: Option<String>,
        #[serde(default, skip_serializing_if = "Vec::is_empty")]
        groups: Vec<String>,
        /// `exp`, seconds since the epoch.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        expires_at: Option<i64>,
        /// Why it was refused.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        reason: Option<String>,
    },
    /// A connection reached the listener that the kernel did not redirect (or whose
    /// record was lost), or was over a session limit: it is closed unjudged. Refusals of
    /// one principal for one reason are coalesced: the first is written at once, the
    /// rest of its interval follow in one record with their `count`.
    ConnectionRefused {
        /// The (last) refused connection's address as the proxy saw it.
        client: SocketAddr,
        reason: String,
        /// How many refusals this record stands for (absent: one).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        count: Option<u64>,
        /// When the first of them happened (absent: at `ts`).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        since: Option<Timestamp>,
    },
    /// A host-name resource's addresses were resolved at start or changed: from now on
    /// the kernel protects exactly `addresses` (on its port) for it.
    ResourceResolved {
        resource: String,
        host: String,
        addresses: Vec<IpAddr>,
        #[serde(default, skip_serializing_if = "Vec::is_empty")]
        added: Vec<IpAddr>,
        #[serde(default, skip_serializing_if = "Vec::is_empty")]
        removed: Vec<IpAddr>,
    },
    /// One statement judged by a protocol inspector, written before any byte of it goes
    /// upstream (a refused statement never goes upstream at all). `duration_ms`/`rows`
    /// are then absent and follow in a `StatementCompleted` record.
    Statement {
        /// Number of the statement within its session; completion records refer to it.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        statement: Option<u64>,
        /// Full text, when the config records text; absent when it records fingerprints only.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        text: Option<String>,
        /// Normalised form with constants removed, so repeated statements group together.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        fingerprint: Option<String>,
        /// Statement kinds, primary first (`select`, `delete`, ...); empty when not understood.
        #[serde(default, skip_serializing_if = "Vec::is_empty")]
        kinds: Vec<String>,
        #[serde(default, skip_serializing_if = "Vec::is_empty")]
        tables: Vec<String>,
        /// Functions it calls, as the session resolved them on the server
        /// (`pg_catalog.upper`; as written when they resolve to nothing).
        #[serde(default, skip_serializing_if = "Vec::is_empty")]
        functions: Vec<String>,
        /// Risk flags the classifier raised (`update_without_where`, `dynamic_sql`, ...).
        #[serde(default, skip_serializing_if = "Vec::is_empty")]
        flags: Vec<String>,
        decision: Decision,
        /// The policy rule that decided, when one matched.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        rule: Option<String>,
        /// Why, in words (shown to the worker on refusal).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        reason: Option<String>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        duration_ms: Option<u64>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        rows: Option<u64>,
        /// The upstream's error (e.g. SQLSTATE and message) when the statement failed.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        error: Option<String>,
    },
    /// One execution of a prepared statement (PostgreSQL: Bind + Execute), written
    /// before it goes upstream, with the values bound to it as the config says
    /// (`journal.parameters`).
    Execution {
        /// The statement record (number within the session) it executes.
        statement: u64,
        #[serde(default, skip_serializing_if = "Vec::is_empty")]
        parameters: Vec<Parameter>,
        /// Parameters bound beyond those listed (the record keeps the first ones).
        #[serde(default, skip_serializing_if = "is_zero")]
        more: u64,
    },
    /// An allowed statement finished upstream (one per execution).
    StatementCompleted {
        statement: u64,
        duration_ms: u64,
        /// From CommandComplete (`INSERT 0 5`, `SELECT 3`, `COPY 10`...), when it says.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        rows: Option<u64>,
        /// SQLSTATE when the server reported an error instead.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        error: Option<String>,
    },
    /// The statement policy was replaced (SIGHUP); sessions use it from their next
    /// statement on.
    PolicyReloaded {
        config: String,
        rules: usize,
    },
    /// A statement (or other action) waits for a human decision.
    ApprovalRequested {
        approval: Uuid,
        rule: String,
        /// What is to be approved, as shown to the approver (text or fingerprint).
        request: String,
        #[serde(default, skip_serializing_if = "Vec::is_empty")]
        approvers: Vec<String>,
        expires_at: Timestamp,
    },
    ApprovalDecided {
        approval: Uuid,
        outcome: ApprovalOutcome,
        /// Who decided (as authenticated by the approval channel).
        by: String,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        reason: Option<String>,
        /// The grant an approval made, or a revocation ended: what a restart rebuilds.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        grant: Option<GrantRecord>,
    },
    /// Nobody decided in time; the request was refused.
    ApprovalExpired {
        approval: Uuid,
    },
    /// Result values were masked before reaching the worker. Names and counts only: the
    /// journal never holds the values themselves.
    MaskingApplied {
        #[serde(default, skip_serializing_if = "Option::is_none")]
        rule: Option<String>,
        columns: Vec<MaskedColumn>,
        /// Rows of the statement's results that went through masking.
        rows: u64,
        /// The statement (number within the session) whose results were masked.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        statement: Option<u64>,
    },
    /// Something failed that an auditor should see (a policy could not load, an upstream
    /// misbehaved, the agent lost a kernel record).
    Error {
        component: String,
        message: String,
    },
    /// Retention removed the records up to `through_seq`; the chain goes on from a signed
    /// anchor, so what remains still verifies.
    JournalPruned {
        through_seq: u64,
        records: u64,
        reason: String,
    },
}

impl Event {
    /// An execution's completion: journaled off the data path, nothing waits for it.
    pub fn is_completion(&self) -> bool {
        matches!(self, Event::StatementCompleted { .. })
    }

    /// Every `kind` value, for validating filters.
    pub const KINDS: &'static [&'static str] = &[
        "agent_started",
        "agent_stopped",
        "config_reloaded",
        "session_opened",
        "session_login",
        "session_settings",
        "session_closed",
        "worker_token",
        "connection_refused",
        "statement",
        "statement_completed",
        "execution",
        "policy_reloaded",
        "approval_requested",
        "approval_decided",
        "approval_expired",
        "masking_applied",
        "error",
        "journal_pruned",
        "resource_resolved",
    ];

    /// The `kind` tag of this event.
    pub fn kind(&self) -> &'static str {
        match self {
            Event::AgentStarted { .. } => "agent_started",
            Event::AgentStopped { .. } => "agent_stopped",
            Event::ConfigReloaded { .. } => "config_reloaded",
            Event::SessionOpened { .. } => "session_opened",
            Event::SessionLogin { .. } => "session_login",
            Event::SessionSettings { .. } => "session_settings",
            Event::SessionClosed { .. } => "session_closed",
            Event::WorkerToken { .. } => "worker_token",
            Event::ConnectionRefused { .. } => "connection_refused",
            Event::Statement { .. } => "statement",
            Event::StatementCompleted { .. } => "statement_completed",
            Event::Execution { .. } => "execution",
            Event::PolicyReloaded { .. } => "policy_reloaded",
            Event::ApprovalRequested { .. } => "approval_requested",
            Event::ApprovalDecided { .. } => "approval_decided",
            Event::ApprovalExpired { .. } => "approval_expired",
            Event::MaskingApplied { .. } => "masking_applied",
            Event::Error { .. } => "error",
            Event::JournalPruned { .. } => "journal_pruned",
            Event::ResourceResolved { .. } => "resource_resolved",
        }
    }

    /// The value of the store's `decision` column: what was decided about the work this
    /// event describes, when it decides anything.
    pub fn decision(&self) -> Option<&'static str> {
        match self {
            Event::Statement { decision, .. } => Some(decision.as_str()),
            Event::ApprovalRequested { .. } => Some("pending"),
            Event::ApprovalDecided { outcome, .. } => Some(outcome.as_str()),
            Event::ApprovalExpired { .. } => Some("expired"),
            Event::ConnectionRefused { .. } => Some("refused"),
            Event::WorkerToken {
                accepted: false, ..
            } => Some("refused"),
            _ => None,
        }
    }

    /// Every value the `decision` column can hold, for validating filters.
    pub const DECISIONS: &'static [&'static str] = &[
        "allow",
        "deny",
        "require_approval",
        "pending",
        "approved",
        "rejected",
        "expired",
        "refused",
    ];
}

/// A policy verdict on a statement.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Decision {
    Allow,
    Deny,
    /// Held until a human approves (see the approval events with the same session).
    RequireApproval,
}

impl Decision {
    pub fn as_str(self) -> &'static str {
        match self {
            Decision::Allow => "allow",
            Decision::Deny => "deny",
            Decision::RequireApproval => "require_approval",
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ApprovalOutcome {
    Approved,
    Rejected,
    /// One approval of several needed; the request still waits.
    Counted,
    /// The worker went away (cancel, disconnect) before a decision.
    Withdrawn,
    /// The agent stopped while the request waited; the statement never ran.
    Abandoned,
    /// A grant was withdrawn before its end.
    Revoked,
}

impl ApprovalOutcome {
    pub fn as_str(self) -> &'static str {
        match self {
            ApprovalOutcome::Approved => "approved",
            ApprovalOutcome::Rejected => "rejected",
            ApprovalOutcome::Counted => "counted",
            ApprovalOutcome::Withdrawn => "withdrawn",
            ApprovalOutcome::Abandoned => "abandoned",
            ApprovalOutcome::Revoked => "revoked",
        }
    }
}

/// A grant as the journal keeps it: the same principal (uid, cgroup, executable) may run
/// statements with this fingerprint on this resource until `until` without a request.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct GrantRecord {
    pub id: Uuid,
    pub uid: u32,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cgroup: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub exe: Option<String>,
    pub resource: String,
    pub fingerprint: String,
    pub until: Timestamp,
}

/// One masked result column and how many of its values were masked.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct MaskedColumn {
    /// `schema.table.column` for a column rule, the detector's name for content.
    pub name: String,
    /// How values were masked (`redact`, `keyed_hash`, `partial`, ...), as the rule says.
    pub method: String,
    /// Values masked (column rules) or matches masked (detectors).
    pub values: u64,
    /// `column`, `detector`, `withheld` (a column whose name was unknown, sent as NULL), or
    /// `derived` (a value computed from a masked column, sent as NULL).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub by: Option<String>,
    /// The masking rule.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rule: Option<String>,
    /// The rule's column pattern that named the column.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pattern: Option<String>,
    /// Values sent as NULL instead, because the type cannot hold the masked form (or the
    /// column was withheld).
    #[serde(default, skip_serializing_if = "is_zero")]
    pub nulled: u64,
}

/// One bound parameter value as the journal keeps it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Parameter {
    /// The type it was read as (`int4`, `text`, `oid:1234`), when known.
    #[serde(rename = "type", default, skip_serializing_if = "Option::is_none")]
    pub ty: Option<String>,
    /// The value as text (cut at a bound, with `…`); absent for NULL and when withheld.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub value: Option<String>,
    /// Why the value is withheld (`masked table public.customers`, `detector email`,
    /// `not recorded`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub redacted: Option<String>,
}

fn is_zero(n: &u64) -> bool {
    *n == 0
}

/// How a session ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum SessionEnd {
    /// Both sides closed in order.
    Closed,
    /// The resource could not be reached.
    UpstreamUnreachable,
    /// A socket error (reset, broken pipe) on either side.
    Error,
    /// The agent shut down while the session was open.
    AgentShutdown,
    /// The writer died (killed, crashed) while the session was open; written by the
    /// journal at the next start.
    Abandoned,
}
