//! Who writes a group: the callers themselves, one at a time (flat combining).
//!
//! A record is queued, then its caller tries to take the store. Whoever holds it writes
//! everything queued as one group (numbering, one `write`), answers the group's
//! acknowledgements and looks at the queue again; a caller that finds the store taken
//! leaves its record to the holder and waits for its acknowledgement. At one session a
//! statement's record therefore costs that session one `write` on its own thread, with
//! no wake-up of a writer thread and none back; under load, groups form from what queues
//! during a write. Every holder looks at the queue again after letting go, so a record
//! queued while the store was held is never left behind.
//!
//! The upkeep thread runs [`JournalStore::tick`] on a timer and closes the store when the
//! last [`super::Journal`] handle is gone.

use std::{
    sync::{Mutex, MutexGuard, TryLockError, mpsc},
    time::{Duration, Instant},
};

use tokio::sync::oneshot;

use super::{AckSender, Event, JournalError, JournalStore, MAX_BATCH, Record, SessionId};

struct Pending {
    session: Option<SessionId>,
    event: Event,
    ack: AckSender,
}

/// The store, and the number the next record gets.
struct Writer {
    store: Box<dyn JournalStore>,
    next_seq: u64,
    closed: bool,
}

pub(super) struct Appender {
    queue: Mutex<Vec<Pending>>,
    writer: Mutex<Writer>,
}

/// A poisoned lock means a store call panicked; the journal is then unusable, which
/// [`JournalError::Closed`] says to every caller (fail closed).
fn lock<T>(m: &Mutex<T>) -> Option<MutexGuard<'_, T>> {
    m.lock().ok()
}

impl Appender {
    pub(super) fn new(store: Box<dyn JournalStore>) -> Appender {
        let next_seq = store.last_seq() + 1;
        Appender {
            queue: Mutex::new(Vec::new()),
            writer: Mutex::new(Writer {
                store,
                next_seq,
                closed: false,
            }),
        }
    }

    /// Queues a record and writes what is queued if the store is free.
    pub(super) fn submit(
        &self,
        session: Option<SessionId>,
        event: Event,
    ) -> Result<oneshot::Receiver<Result<u64, JournalError>>, JournalError> {
        let (ack, done) = oneshot::channel();
        lock(&self.queue)
            .ok_or(JournalError::Closed)?
            .push(Pending {
                session,
                event,
                ack,
            });
        self.drain();
        Ok(done)
    }

    /// Writes what is queued unless someone else holds the store (they will).
    fn drain(&self) {
        loop {
            let mut w = match self.writer.try_lock() {
                Ok(w) => w,
                Err(TryLockError::WouldBlock) => return,
                Err(TryLockError::Poisoned(_)) => return self.refuse_queued(),
            };
            self.write_queued(&mut w);
            drop(w);
            // Someone may have queued while we held the store and left it to us.
            if lock(&self.queue).is_none_or(|q| q.is_empty()) {
                return;
            }
        }
    }

    /// The store is held: write groups until the queue is empty.
    fn write_queued(&self, w: &mut Writer) {
        loop {
            let batch = match lock(&self.queue) {
                Some(mut q) if !q.is_empty() => {
                    let n = q.len().min(MAX_BATCH);
                    q.drain(..n).collect::<Vec<_>>()
                }
                _ => return,
            };
            w.write_group(batch);
        }
    }

    /// A store call panicked earlier: answer everything queued with an error.
    fn refuse_queued(&self) {
        if let Some(mut q) = lock(&self.queue) {
            for p in q.drain(..) {
                let _ = p.ack.send(Err(JournalError::Closed));
            }
        }
    }

    /// Runs the store's upkeep (blocking until the store is free).
    fn tick(&self) {
        if let Some(mut w) = lock(&self.writer)
            && !w.closed
        {
            if let Err(e) = w.store.tick() {
                tracing::error!(error = %e, "audit journal upkeep failed");
            }
            w.next_seq = w.store.last_seq() + 1;
        }
        self.drain();
    }

    /// Writes what is left and closes the store; later records are refused.
    fn close(&self) {
        let Some(mut w) = lock(&self.writer) else {
            return self.refuse_queued();
        };
        self.write_queued(&mut w);
        if let Err(e) = w.store.close() {
            tracing::error!(error = %e, "closing the audit journal failed");
        }
        w.closed = true;
        drop(w);
        self.refuse_queued();
    }
}

impl Writer {
    fn write_group(&mut self, batch: Vec<Pending>) {
        if self.closed {
            for p in batch {
                let _ = p.ack.send(Err(JournalError::Closed));
            }
            return;
        }
        let mut records = Vec::with_capacity(batch.len());
        let mut acks = Vec::with_capacity(batch.len());
        for (i, p) in batch.into_iter().enumerate() {
            let seq = self.next_seq + i as u64;
            records.push(Record::new(seq, p.session, p.event));
            acks.push((p.ack, seq));
        }
        match self.store.append(&records) {
            Ok(()) => {
                self.next_seq += records.len() as u64;
                self.store.acknowledge(acks);
                self.store.written(records);
            }
            Err(e) => {
                // Nothing in this group is acknowledged. Numbering continues after what
                // the store holds, so the next successful group leaves no gap.
                tracing::error!(error = %e, records = records.len(), "audit journal write failed; the work it describes is refused");
                for (ack, _) in acks {
                    let _ = ack.send(Err(e.clone()));
                }
                self.next_seq = self.store.last_seq() + 1;
            }
        }
    }
}

/// The upkeep thread: ticks until every handle is gone (`gone` disconnects), then closes.
pub(super) fn upkeep(appender: &Appender, gone: &mpsc::Receiver<()>, opts: super::WriterOptions) {
    let mut next = Instant::now() + opts.tick;
    loop {
        let wait = next.saturating_duration_since(Instant::now());
        match gone.recv_timeout(wait.max(Duration::from_millis(1))) {
            Err(mpsc::RecvTimeoutError::Disconnected) => break,
            Ok(()) => continue,
            Err(mpsc::RecvTimeoutError::Timeout) => {
                appender.tick();
                next = Instant::now() + opts.tick;
            }
        }
    }
    appender.close();
}

#[cfg(test)]
mod tests {
    use std::sync::{Arc, Mutex};

    use super::super::{Journal, JournalError, JournalStore, Record, SessionId, event::Event};

    /// Remembers every group it is given; fails the groups holding `fail_kind`.
    struct Groups {
        groups: Arc<Mutex<Vec<Vec<u64>>>>,
        last: u64,
        fail_kind: Option<&'static str>,
    }

    impl JournalStore for Groups {
        fn last_seq(&self) -> u64 {
            self.last
        }
        fn append(&mut self, records: &[Record]) -> Result<(), JournalError> {
            if records
                .iter()
                .any(|r| Some(r.event.kind()) == self.fail_kind)
            {
                return Err(JournalError::Schema("refused by the test store".into()));
            }
            self.groups
                .lock()
                .unwrap()
                .push(records.iter().map(|r| r.seq).collect());
            self.last += records.len() as u64;
            Ok(())
        }
    }

    fn stopped() -> Event {
        Event::AgentStopped {
            reason: "test".into(),
        }
    }

    fn store(fail_kind: Option<&'static str>) -> (Groups, Arc<Mutex<Vec<Vec<u64>>>>) {
        let groups = Arc::new(Mutex::new(Vec::new()));
        (
            Groups {
                groups: groups.clone(),
                last: 41,
                fail_kind,
            },
            groups,
        )
    }

    #[test]
    fn records_are_numbered_after_what_the_store_holds_in_the_order_submitted() {
        let (s, groups) = store(None);
        let (j, h) = Journal::start(s);
        let sid = Some(SessionId::new());
        assert_eq!(j.record_blocking(sid, stopped()).unwrap(), 42);
        assert_eq!(j.record_blocking(None, stopped()).unwrap(), 43);
        drop(j);
        h.join().unwrap();
        assert_eq!(*groups.lock().unwrap(), vec![vec![42], vec![43]]);
    }

    #[test]
    fn a_failed_group_is_refused_and_leaves_no_gap() {
        let (s, groups) = store(Some("agent_started"));
        let (j, h) = Journal::start(s);
        let bad = Event::AgentStarted {
            version: "x".into(),
            config: "y".into(),
            governed: vec![],
            resources: vec![],
        };
        assert!(j.record_blocking(None, bad).is_err());
        assert_eq!(j.record_blocking(None, stopped()).unwrap(), 42);
        drop(j);
        h.join().unwrap();
        assert_eq!(*groups.lock().unwrap(), vec![vec![42]]);
    }

    /// Many threads at once: every record is acknowledged with a distinct number, the
    /// numbers are dense, and no record queued while another thread wrote is left behind.
    #[test]
    fn concurrent_callers_share_groups_and_nothing_is_left_behind() {
        let (s, groups) = store(None);
        let (j, h) = Journal::start(s);
        let threads: Vec<_> = (0..8)
            .map(|_| {
                let j = j.clone();
                std::thread::spawn(move || {
                    (0..2000)
                        .map(|_| j.record_blocking(None, stopped()).unwrap())
                        .collect::<Vec<_>>()
                })
            })
            .collect();
        let mut seqs: Vec<u64> = threads
            .into_iter()
            .flat_map(|t| t.join().unwrap())
            .collect();
        seqs.sort_unstable();
        assert_eq!(seqs, (42..42 + 16_000).collect::<Vec<_>>());
        drop(j);
        h.join().unwrap();
        let written: Vec<u64> = groups.lock().unwrap().iter().flatten().copied().collect();
        assert_eq!(written, (42..42 + 16_000).collect::<Vec<_>>());
    }

    #[test]
    fn records_after_close_are_refused() {
        let (s, _groups) = store(None);
        let (j, h) = Journal::start(s);
        let j2 = j.clone();
        drop(j);
        // The upkeep thread only closes once every handle is gone.
        assert_eq!(j2.record_blocking(None, stopped()).unwrap(), 42);
        let appender = j2.appender.clone();
        drop(j2);
        h.join().unwrap();
        let r = appender.submit(None, stopped()).unwrap().blocking_recv();
        assert!(matches!(r, Ok(Err(JournalError::Closed))));
    }
}
