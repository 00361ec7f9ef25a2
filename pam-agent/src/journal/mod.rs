//! The audit journal: every session and decision the agent makes is written here before
//! the traffic it describes moves on.
//!
//! The interface is [`Journal`], a cheap-to-clone handle whose [`Journal::record`]
//! returns only once the record is stored (per the store's durability setting). Records
//! are numbered and written by one writer thread that drains the queue in groups, so
//! many sessions share one fsync (group commit). The storage format lives behind
//! [`JournalStore`]; [`jsonl::JsonlStore`] is the current one.

pub mod event;
pub mod jsonl;

use std::{sync::Arc, thread};

use tokio::sync::{mpsc, oneshot};

pub use event::{Event, Record, SessionId};

/// Upper bound on records written in one group; keeps one slow batch from starving acks.
const MAX_BATCH: usize = 1024;
/// Queue depth before `record` waits: back-pressure instead of unbounded memory.
const QUEUE_DEPTH: usize = 8192;

#[derive(Debug, Clone, thiserror::Error)]
pub enum JournalError {
    #[error("journal write failed: {0}")]
    Write(Arc<std::io::Error>),
    #[error("journal is closed")]
    Closed,
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

/// A storage backend. Called from the writer thread only, with records in sequence order.
pub trait JournalStore: Send + 'static {
    /// Sequence number of the last record already stored (0 when empty).
    fn last_seq(&self) -> u64;
    /// Stores the records durably (as configured) or fails without partial success
    /// being reported as success.
    fn append(&mut self, records: &[Record]) -> Result<(), JournalError>;
}

struct Pending {
    session: Option<SessionId>,
    event: Event,
    ack: oneshot::Sender<Result<u64, JournalError>>,
}

/// Handle used by every part of the agent that produces audit records.
#[derive(Clone)]
pub struct Journal {
    tx: mpsc::Sender<Pending>,
}

impl Journal {
    /// Starts the writer thread over `store`. The thread ends when every handle is dropped
    /// and the queue is drained; join the returned handle to be sure all is written.
    pub fn start<S: JournalStore>(store: S) -> (Journal, thread::JoinHandle<()>) {
        let (tx, rx) = mpsc::channel(QUEUE_DEPTH);
        let handle = thread::Builder::new()
            .name("pam-journal".into())
            .spawn(move || writer(store, rx))
            .expect("spawning the journal thread");
        (Journal { tx }, handle)
    }

    /// Appends one record and waits until it is stored. Returns its sequence number.
    pub async fn record(
        &self,
        session: Option<SessionId>,
        event: Event,
    ) -> Result<u64, JournalError> {
        let (ack, done) = oneshot::channel();
        self.tx
            .send(Pending {
                session,
                event,
                ack,
            })
            .await
            .map_err(|_| JournalError::Closed)?;
        done.await.map_err(|_| JournalError::Closed)?
    }

    /// Blocking form of [`Journal::record`] for code outside the runtime.
    pub fn record_blocking(
        &self,
        session: Option<SessionId>,
        event: Event,
    ) -> Result<u64, JournalError> {
        let (ack, done) = oneshot::channel();
        self.tx
            .blocking_send(Pending {
                session,
                event,
                ack,
            })
            .map_err(|_| JournalError::Closed)?;
        done.blocking_recv().map_err(|_| JournalError::Closed)?
    }
}

fn writer<S: JournalStore>(mut store: S, mut rx: mpsc::Receiver<Pending>) {
    let mut next_seq = store.last_seq() + 1;
    let mut batch: Vec<Pending> = Vec::with_capacity(MAX_BATCH);
    let mut records: Vec<Record> = Vec::with_capacity(MAX_BATCH);
    while let Some(first) = rx.blocking_recv() {
        batch.push(first);
        while batch.len() < MAX_BATCH {
            match rx.try_recv() {
                Ok(p) => batch.push(p),
                Err(_) => break,
            }
        }
        records.clear();
        for (i, p) in batch.iter().enumerate() {
            records.push(Record::new(next_seq + i as u64, p.session, p.event.clone()));
        }
        match store.append(&records) {
            Ok(()) => {
                for (p, r) in batch.drain(..).zip(&records) {
                    let _ = p.ack.send(Ok(r.seq));
                }
                next_seq += records.len() as u64;
            }
            Err(e) => {
                // Nothing in this group is acknowledged; the sequence is not advanced,
                // so the next successful group continues without a gap.
                tracing::error!(error = %e, records = batch.len(), "audit journal write failed");
                for p in batch.drain(..) {
                    let _ = p.ack.send(Err(e.clone()));
                }
            }
        }
    }
}
