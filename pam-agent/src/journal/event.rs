//! What the journal records. One [`Record`] per line/row: a sequence number, a time, the
//! session it belongs to (if any) and the [`Event`].

use std::net::SocketAddr;

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
    /// A redirected connection was accepted and will be relayed.
    SessionOpened {
        principal: Principal,
        resource: ResourceRef,
        /// Where the worker meant to connect.
        destination: SocketAddr,
        /// The worker socket's address as the proxy saw it.
        client: SocketAddr,
    },
    SessionClosed {
        bytes_from_worker: u64,
        bytes_to_worker: u64,
        duration_ms: u64,
        end: SessionEnd,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        detail: Option<String>,
    },
    /// A connection reached the listener that the kernel did not redirect (or whose
    /// record was lost): it is closed unjudged.
    ConnectionRefused {
        client: SocketAddr,
        reason: String,
    },

    // ---- Statement records (postgres branch). Kept in one block so the lead can
    // reconcile them with the decision events of the parallel journal work. The
    // principal is in the session's SessionOpened record. ----
    /// A statement was judged. Written before any byte of it goes upstream; a refused
    /// statement never goes upstream at all.
    Statement {
        /// Number of the statement within its session; completion records refer to it.
        statement: u64,
        /// The statement's text (one statement of a multi-statement query), or a
        /// description for a protocol-level function call.
        text: String,
        /// libpg_query fingerprint (constants removed), when the text parsed.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        fingerprint: Option<String>,
        /// Primary kind first (`select`, `delete`, ...); empty when not understood.
        kinds: Vec<String>,
        #[serde(default, skip_serializing_if = "Vec::is_empty")]
        tables: Vec<String>,
        #[serde(default, skip_serializing_if = "Vec::is_empty")]
        flags: Vec<String>,
        decision: crate::policy::Action,
        rule: String,
        reason: String,
    },
    /// The statement policy was replaced (SIGHUP); sessions use it from their next
    /// statement on.
    PolicyReloaded {
        config: String,
        rules: usize,
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
}
