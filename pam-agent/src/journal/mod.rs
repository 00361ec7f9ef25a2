//! The audit journal: every session and decision the agent makes is written here before
//! the traffic it describes moves on.
//!
//! The interface is [`Journal`], a cheap-to-clone handle whose [`Journal::record`]
//! returns only once the record is stored (per the store's durability setting). Records
//! are numbered and written by whichever caller finds the store free, taking every record
//! queued meanwhile in one group ([`append`]): a statement's record costs its session one
//! `write`, with no hand-off to another thread, and many sessions share one write and
//! one fsync (group commit). The storage format lives
//! behind [`JournalStore`]; the agent uses [`log::LogStore`] (format v2: hash-chained
//! segment files, SQLite index behind them; docs/journal.md). [`sqlite::SqliteStore`] is
//! the format v1 store (SQLite only), kept to read, verify and migrate v1 journals.
//!
//! Layout:
//! - [`append`]: who writes a group (the callers in turn) and the upkeep thread.
//! - [`event`]: the record model, every kind of event.
//! - [`chain`]: the hash chain over records' canonical JSON.
//! - [`signing`]: the ed25519 key and what checkpoints and anchors sign.
//! - [`schema`]: the SQLite tables.
//! - [`index`]: the indexed columns derived from a record.
//! - [`segment`]: the segment file format (v2): header and frames.
//! - [`log`]: the v2 store: appends groups to segments, syncs, recovers a torn tail,
//!   closes abandoned sessions, retention by whole segments.
//! - [`indexer`]: the SQLite index built behind the log (a thread), and its catch-up.
//! - [`migrate`]: a v1 journal into segments.
//! - [`sqlite`]: the v1 store: group commit in SQLite, checkpoints, retention.
//! - [`reader`]: read-only access and filtered queries (the `audit` CLI): the index,
//!   then the log's records the index does not hold yet.
//! - [`verify`]: walks a journal and reports what was changed, and where;
//!   [`verify_log`]: the segments' chain, in parallel.

pub mod append;
pub mod chain;
pub mod event;
pub mod index;
pub mod indexer;
pub mod log;
pub mod migrate;
pub mod reader;
pub mod schema;
pub mod segment;
pub mod signing;
pub mod sqlite;
pub mod verify;
pub mod verify_log;

use std::{sync::Arc, thread, time::Duration};

use tokio::sync::oneshot;

pub use event::{Event, Record, SessionId};

/// Upper bound on records written in one group; keeps one slow group from starving acks.
const MAX_BATCH: usize = 4096;

#[derive(Debug, Clone, thiserror::Error)]
pub enum JournalError {
    #[error("journal write failed: {0}")]
    Write(Arc<std::io::Error>),
    #[error("journal is closed")]
    Closed,
    /// SQLite refused: the text says why ("database or disk is full", an I/O error...).
    #[error("journal database error: {0}")]
    Database(Arc<rusqlite::Error>),
    #[error("journal signing key: {0}")]
    Key(String),
    #[error("journal format: {0}")]
    Schema(String),
    #[error("journal file {path} is corrupt at line {line}: {reason}")]
    Corrupt {
        path: String,
        line: usize,
        reason: String,
    },
}

impl From<std::io::Error> for JournalError {
    fn from(e: std::io::Error) -> Self {
        JournalError::Write(Arc::new(e))
    }
}

/// Where a record's acknowledgement goes: its seq once stored, or why not.
pub type AckSender = oneshot::Sender<Result<u64, JournalError>>;

/// A storage backend. Called by one appender at a time (see [`append`]), with records in
/// sequence order.
pub trait JournalStore: Send + 'static {
    /// Sequence number of the last record already stored (0 when empty).
    fn last_seq(&self) -> u64;
    /// Stores the records (in the operating system at least: they survive the agent's
    /// death) or fails without partial success being reported as success.
    fn append(&mut self, records: &[Record]) -> Result<(), JournalError>;
    /// Answers the acknowledgements of a group [`JournalStore::append`] stored, once its
    /// records are as durable as the store promises. The default answers at once; a
    /// store that flushes to disk behind the appender (the v2 log with `sync = "always"`)
    /// answers after that flush, so the next group is written while this one syncs.
    fn acknowledge(&mut self, acks: Vec<(AckSender, u64)>) {
        for (ack, seq) in acks {
            let _ = ack.send(Ok(seq));
        }
    }
    /// Periodic upkeep (time-based checkpoints, retention); may append records of its own,
    /// so the appender re-reads [`JournalStore::last_seq`] afterwards.
    fn tick(&mut self) -> Result<(), JournalError> {
        Ok(())
    }
    /// Takes a stored group's records once they are acknowledged, for work that goes on
    /// behind the log (the v2 store's index).
    fn written(&mut self, _records: Vec<Record>) {}
    /// Called once when the last handle is gone and everything is written.
    fn close(&mut self) -> Result<(), JournalError> {
        Ok(())
    }
}

/// Upkeep settings.
#[derive(Debug, Clone, Copy)]
pub struct WriterOptions {
    /// How often [`JournalStore::tick`] runs.
    pub tick: Duration,
}

impl Default for WriterOptions {
    fn default() -> Self {
        WriterOptions {
            tick: Duration::from_secs(1),
        }
    }
}

/// The acknowledgement of a [`Journal::submit`]ted record.
pub struct Ack(oneshot::Receiver<Result<u64, JournalError>>);

impl Ack {
    /// Waits until the record is stored (durably, if the journal syncs); its seq.
    pub async fn stored(self) -> Result<u64, JournalError> {
        self.0.await.map_err(|_| JournalError::Closed)?
    }

    /// The outcome if it is known already (`None`: not yet stored).
    pub fn outcome(&mut self) -> Option<Result<u64, JournalError>> {
        match self.0.try_recv() {
            Ok(r) => Some(r),
            Err(oneshot::error::TryRecvError::Empty) => None,
            Err(oneshot::error::TryRecvError::Closed) => Some(Err(JournalError::Closed)),
        }
    }
}

/// Handle used by every part of the agent that produces audit records.
#[derive(Clone)]
pub struct Journal {
    appender: Arc<append::Appender>,
    /// Dropped with the last handle: that tells the upkeep thread to close the store.
    _alive: std::sync::mpsc::Sender<()>,
}

impl Journal {
    /// Opens the journal over `store`, with an upkeep thread that ends (closing the store)
    /// when every handle is dropped; join the returned handle to be sure all is written.
    pub fn start<S: JournalStore>(store: S) -> (Journal, thread::JoinHandle<()>) {
        Self::start_with(store, WriterOptions::default())
    }

    /// [`Journal::start`] with explicit upkeep options.
    pub fn start_with<S: JournalStore>(
        store: S,
        opts: WriterOptions,
    ) -> (Journal, thread::JoinHandle<()>) {
        let appender = Arc::new(append::Appender::new(Box::new(store)));
        let (alive, gone) = std::sync::mpsc::channel();
        let handle = {
            let appender = appender.clone();
            thread::Builder::new()
                .name("pam-journal".into())
                .spawn(move || append::upkeep(&appender, &gone, opts))
                .expect("spawning the journal thread")
        };
        (
            Journal {
                appender,
                _alive: alive,
            },
            handle,
        )
    }

    /// Appends one record and waits until it is stored. Returns its sequence number.
    pub async fn record(
        &self,
        session: Option<SessionId>,
        event: Event,
    ) -> Result<u64, JournalError> {
        self.submit(session, event).await?.stored().await
    }

    /// Queues a record without waiting for it to be stored, so a caller can have several
    /// in flight (they share a write); records are stored in the order submitted.
    ///
    /// The caller writes the group itself when no one else is writing (no hand-off to
    /// another thread on the path of a statement); otherwise the one writing takes it.
    pub async fn submit(
        &self,
        session: Option<SessionId>,
        event: Event,
    ) -> Result<Ack, JournalError> {
        Ok(Ack(self.appender.submit(session, event)?))
    }

    /// Blocking form of [`Journal::record`] for code outside the runtime.
    pub fn record_blocking(
        &self,
        session: Option<SessionId>,
        event: Event,
    ) -> Result<u64, JournalError> {
        self.appender
            .submit(session, event)?
            .blocking_recv()
            .map_err(|_| JournalError::Closed)?
    }
}
