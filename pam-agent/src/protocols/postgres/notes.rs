//! What the worker's half tells the server's half, always before the bytes concerned go
//! upstream (so the server half knows of them before any answer arrives).

use std::{sync::Arc, time::Instant};

use super::masking::CopyTextOptions;
use super::{
    known_functions::{LookupError, Row},
    sql::Statement,
    wire::frame::Frame,
};
use crate::mask::WithheldOutput;

/// One execution whose completion the server half audits.
#[derive(Debug, Clone)]
pub struct Exec {
    /// The statement's number in the journal (0: nothing to record).
    pub statement: u64,
    pub started: Instant,
    pub catalog: Catalog,
    /// A SQL-level PREPARE / DEALLOCATE / DISCARD: applied to the session's prepared
    /// statements once the server completes it (a failed PREPARE changes nothing).
    pub prepares: Option<Arc<Statement>>,
    /// Values of its result computed from masked columns, to send as NULL (a rule with
    /// `on_derived = "withhold"`).
    pub withhold: Option<Arc<[WithheldOutput]>>,
}

/// What an execution may change in the catalog, which the masking column names follow.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Catalog {
    #[default]
    Unchanged,
    /// DDL, or procedural code (DO, CALL) that may run it: OIDs and attribute numbers
    /// may now name other columns.
    Ddl,
    /// BEGIN / COMMIT / ROLLBACK / SAVEPOINT: may undo or publish earlier DDL.
    Transaction,
}

/// A group of messages the proxy sends upstream on its own, at a point where no batch
/// of the worker's is open; the server half swallows every answer to it.
#[derive(Debug, Clone, PartialEq)]
pub enum Injected {
    /// The catalog query naming every column a masking rule can name.
    Preload,
    /// A describe of a COPY's columns, planned for its rows in this text format.
    CopyDescribe(CopyTextOptions),
    /// ROLLBACK of the transaction whose COMMIT was held and not approved.
    Rollback,
    /// A lookup of functions by name (see [`super::known_functions`]).
    Functions,
}

/// Where the answer to a function lookup goes (dropped unanswered if the session ends).
pub type LookupAnswer = tokio::sync::oneshot::Sender<Result<Vec<Row>, LookupError>>;

#[derive(Debug)]
pub enum Note {
    /// Executions now sent upstream, in order.
    Execs(Vec<Exec>),
    /// The message that ends the current group (Query, Sync, FunctionCall) is sent:
    /// one ReadyForQuery will answer it.
    Close,
    /// Show this refusal instead of the server's error to the agent's own failing
    /// message just sent in the current group: an Execute of a missing portal (see
    /// [`super::batch`]) or a CLOSE of a missing cursor (a refused Query).
    Replace(Frame),
    /// A refusal answered by the proxy, once every group sent before it is answered.
    Refuse(Frame),
    /// A ReadyForQuery answered by the proxy (after a refusal), in the same order.
    Ready,
    /// Describe messages now sent upstream, in order: `true` for one the proxy added
    /// (its RowDescription / NoData is not shown to the worker).
    Describes(Vec<bool>),
    /// Describe messages of statements now sent upstream, in order (name, parse
    /// generation): their ParameterDescriptions go to [`super::Shared::param_types`].
    StatementDescribes(Vec<(String, u64)>),
    /// An injected group is about to be sent (between the worker's groups).
    Inject(Injected),
    /// The next injected [`Injected::Functions`] group's rows go here.
    Lookup(LookupAnswer),
    /// Worker messages now sent upstream in the open group whose answers close this
    /// many of them (see [`super::answers`]).
    Sent(usize),
    /// A function lookup is about to be sent inside the open group, after everything
    /// sent so far ([`super::known_functions::inline_lookup`]); its answers, told apart
    /// by counting, go here and are never shown to the worker.
    InlineLookup(LookupAnswer),
    /// The server failed the open group on the agent's own message (an inline lookup):
    /// show the worker this error now, in its place; the server skips to Sync.
    Failed(Frame),
    /// Show this NoticeResponse now (asynchronous, outside the answers' order).
    Notice(Frame),
    /// End the session with this error.
    Fatal(Frame),
}
