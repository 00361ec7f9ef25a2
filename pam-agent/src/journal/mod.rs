//! The audit journal: every session and decision the agent makes is written here before
//! the traffic it describes moves on.
//!
//! The interface is [`Journal`], a cheap-to-clone handle whose [`Journal::record`]
//! returns only once the record is stored (per the store's durability setting). Records
//! are numbered and written by one writer thread that drains the queue in groups, so
//! many sessions share one write and one fsync (group commit). The storage format lives
//! behind [`JournalStore`]; the agent uses [`log::LogStore`] (format v2: hash-chained
//! segment files, SQLite index behind them; docs/journal.md). [`sqlite::SqliteStore`] is
//! the format v1 store (SQLite only), kept to read, verify and migrate v1 journals.
//!
//! Layout:
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

use std::{
    collections::HashSet,
    sync::Arc,
    thread,
    time::{Duration, Instant},
};

use tokio::sync::{mpsc, oneshot};

pub use event::{Event, Record, SessionId};

/// Upper bound on records written in one group; keeps one slow batch from starving acks.
const MAX_BATCH: usize = 4096;
/// Queue depth before `record` waits: back-pressure instead of unbounded memory.
const QUEUE_DEPTH: usize = 8192;

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

/// A storage backend. Called from the writer thread only, with records in sequence order.
pub trait JournalStore: Send + 'static {
    /// Sequence number of the last record already stored (0 when empty).
    fn last_seq(&self) -> u64;
    /// Stores the records durably (as configured) or fails without partial success
    /// being reported as success.
    fn append(&mut self, records: &[Record]) -> Result<(), JournalError>;
    /// Periodic upkeep (time-based checkpoints, retention); may append records of its own,
    /// so the writer re-reads [`JournalStore::last_seq`] afterwards.
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

/// How the writer groups records.
#[derive(Debug, Clone, Copy)]
pub struct WriterOptions {
    /// How long the first record of a group may wait for others before the commit.
    /// Zero commits as soon as the writer is free (records that arrived meanwhile still
    /// share the commit); more trades latency for fewer fsyncs under light load.
    pub commit_interval: Duration,
    /// How often [`JournalStore::tick`] runs.
    pub tick: Duration,
    /// How long a group made only of `statement_completed` records (which no data path
    /// waits for) may wait for another record before the commit, when their sessions
    /// had an awaited record in the group before (simple-protocol sessions, which send
    /// a statement record per execution). Such a session's next statement then shares
    /// the commit of the previous one's completion instead of queueing behind it: one
    /// commit per statement on the critical path instead of two. Sessions that only
    /// execute prepared statements never wait (their completions come back to back).
    /// Off (zero) by default: records a session queues behind such a completion
    /// (`masking_applied`) land up to this much later, after the worker has its answer.
    pub completion_wait: Duration,
}

impl Default for WriterOptions {
    fn default() -> Self {
        WriterOptions {
            commit_interval: Duration::ZERO,
            tick: Duration::from_secs(1),
            completion_wait: Duration::ZERO,
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
        Self::start_with(store, WriterOptions::default())
    }

    /// [`Journal::start`] with explicit grouping options.
    pub fn start_with<S: JournalStore>(
        store: S,
        opts: WriterOptions,
    ) -> (Journal, thread::JoinHandle<()>) {
        let (tx, rx) = mpsc::channel(QUEUE_DEPTH);
        let handle = thread::Builder::new()
            .name("pam-journal".into())
            .spawn(move || writer(store, rx, opts))
            .expect("spawning the journal thread");
        (Journal { tx }, handle)
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
    /// in flight (they share a commit); records are stored in the order submitted.
    pub async fn submit(
        &self,
        session: Option<SessionId>,
        event: Event,
    ) -> Result<Ack, JournalError> {
        let (ack, done) = oneshot::channel();
        self.tx
            .send(Pending {
                session,
                event,
                ack,
            })
            .await
            .map_err(|_| JournalError::Closed)?;
        Ok(Ack(done))
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

fn writer<S: JournalStore>(store: S, rx: mpsc::Receiver<Pending>, opts: WriterOptions) {
    // A small runtime of its own, only for timed waits on the queue.
    let rt = match tokio::runtime::Builder::new_current_thread()
        .enable_time()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            tracing::error!(error = %e, "cannot start the journal writer's timer");
            return;
        }
    };
    rt.block_on(write_loop(store, rx, opts));
}

async fn write_loop<S: JournalStore>(
    mut store: S,
    mut rx: mpsc::Receiver<Pending>,
    opts: WriterOptions,
) {
    let mut next_seq = store.last_seq() + 1;
    let mut batch: Vec<Pending> = Vec::with_capacity(MAX_BATCH);
    let mut records: Vec<Record> = Vec::with_capacity(MAX_BATCH);
    let mut acks: Vec<oneshot::Sender<Result<u64, JournalError>>> = Vec::with_capacity(MAX_BATCH);
    let mut next_tick = Instant::now() + opts.tick;
    // Sessions with an awaited record in the last group.
    let mut awaited_last: HashSet<SessionId> = HashSet::new();
    loop {
        let wait = next_tick.saturating_duration_since(Instant::now());
        let first = match tokio::time::timeout(wait, rx.recv()).await {
            Ok(Some(p)) => p,
            Ok(None) => break,
            Err(_) => {
                if let Err(e) = store.tick() {
                    tracing::error!(error = %e, "audit journal upkeep failed");
                }
                next_seq = store.last_seq() + 1;
                next_tick = Instant::now() + opts.tick;
                continue;
            }
        };
        batch.push(first);
        if !opts.commit_interval.is_zero() {
            let deadline = tokio::time::Instant::now() + opts.commit_interval;
            while batch.len() < MAX_BATCH {
                match tokio::time::timeout_at(deadline, rx.recv()).await {
                    Ok(Some(p)) => batch.push(p),
                    _ => break,
                }
            }
        }
        while batch.len() < MAX_BATCH {
            match rx.try_recv() {
                Ok(p) => batch.push(p),
                Err(_) => break,
            }
        }
        let likely_followed = |p: &Pending| {
            p.event.is_completion() && p.session.is_some_and(|s| awaited_last.contains(&s))
        };
        if !opts.completion_wait.is_zero() && batch.iter().all(likely_followed) {
            let deadline = tokio::time::Instant::now() + opts.completion_wait;
            while batch.len() < MAX_BATCH {
                match tokio::time::timeout_at(deadline, rx.recv()).await {
                    Ok(Some(p)) => {
                        let awaited = !p.event.is_completion();
                        batch.push(p);
                        if awaited {
                            break;
                        }
                    }
                    _ => break,
                }
            }
            while batch.len() < MAX_BATCH {
                match rx.try_recv() {
                    Ok(p) => batch.push(p),
                    Err(_) => break,
                }
            }
        }
        awaited_last.clear();
        awaited_last.extend(
            batch
                .iter()
                .filter(|p| !p.event.is_completion())
                .filter_map(|p| p.session),
        );
        // The events move into the records (no copy); the acks stay to answer.
        records.clear();
        acks.clear();
        for (i, p) in batch.drain(..).enumerate() {
            records.push(Record::new(next_seq + i as u64, p.session, p.event));
            acks.push(p.ack);
        }
        match store.append(&records) {
            Ok(()) => {
                for (ack, r) in acks.drain(..).zip(&records) {
                    let _ = ack.send(Ok(r.seq));
                }
                next_seq += records.len() as u64;
                store.written(std::mem::replace(
                    &mut records,
                    Vec::with_capacity(MAX_BATCH),
                ));
            }
            Err(e) => {
                // Nothing in this group is acknowledged. Numbering continues after what
                // the store holds, so the next successful group leaves no gap.
                tracing::error!(error = %e, records = records.len(), "audit journal write failed; the work it describes is refused");
                for ack in acks.drain(..) {
                    let _ = ack.send(Err(e.clone()));
                }
                next_seq = store.last_seq() + 1;
            }
        }
        if Instant::now() >= next_tick {
            if let Err(e) = store.tick() {
                tracing::error!(error = %e, "audit journal upkeep failed");
            }
            next_seq = store.last_seq() + 1;
            next_tick = Instant::now() + opts.tick;
        }
    }
    if let Err(e) = store.close() {
        tracing::error!(error = %e, "closing the audit journal failed");
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Mutex;

    use super::*;

    /// Remembers the size of every group it is given.
    struct Groups(Arc<Mutex<Vec<usize>>>, u64);

    impl JournalStore for Groups {
        fn last_seq(&self) -> u64 {
            self.1
        }
        fn append(&mut self, records: &[Record]) -> Result<(), JournalError> {
            self.0.lock().unwrap().push(records.len());
            self.1 += records.len() as u64;
            Ok(())
        }
    }

    fn completion() -> Event {
        Event::StatementCompleted {
            statement: 1,
            duration_ms: 0,
            rows: Some(1),
            error: None,
        }
    }

    fn stopped() -> Event {
        Event::AgentStopped {
            reason: "test".into(),
        }
    }

    fn long_wait() -> WriterOptions {
        WriterOptions {
            // Long enough that only another record can end a wait.
            completion_wait: Duration::from_secs(600),
            ..Default::default()
        }
    }

    #[test]
    fn a_completion_shares_the_commit_of_its_sessions_next_statement() {
        let groups = Arc::new(Mutex::new(Vec::new()));
        let (j, h) = Journal::start_with(Groups(groups.clone(), 0), long_wait());
        let s = Some(SessionId::new());
        // A simple-protocol session: statement record, then completion, then the next.
        j.record_blocking(s, stopped()).unwrap();
        let send = |event| {
            let (ack, done) = oneshot::channel();
            j.tx.blocking_send(Pending {
                session: s,
                event,
                ack,
            })
            .unwrap();
            done
        };
        let first = send(completion());
        let second = send(stopped());
        assert_eq!(first.blocking_recv().unwrap().unwrap(), 2);
        assert_eq!(second.blocking_recv().unwrap().unwrap(), 3);
        assert_eq!(*groups.lock().unwrap(), vec![1, 2]);
        drop(j);
        h.join().unwrap();
    }

    #[test]
    fn completions_of_prepared_executions_do_not_wait() {
        let groups = Arc::new(Mutex::new(Vec::new()));
        let (j, h) = Journal::start_with(Groups(groups.clone(), 0), long_wait());
        let s = Some(SessionId::new());
        // Back-to-back completions, no statement record between them.
        assert_eq!(j.record_blocking(s, completion()).unwrap(), 1);
        assert_eq!(j.record_blocking(s, completion()).unwrap(), 2);
        assert_eq!(j.record_blocking(None, completion()).unwrap(), 3);
        assert_eq!(*groups.lock().unwrap(), vec![1, 1, 1]);
        drop(j);
        h.join().unwrap();
    }
}
