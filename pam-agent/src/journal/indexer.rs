//! The SQLite index of a v2 journal, built behind the log: a thread receives each
//! stored group and inserts its rows (the v1 `records` table with its indexed columns,
//! `checkpoints`, `anchors`) in one transaction every [`COMMIT_EVERY`], so queries see
//! a record within a second. The index can always be rebuilt from the segments: at open
//! and after any failure it catches up from the log (`catch_up`). Nothing waits for it;
//! readers take the records it does not hold yet from the log.
//!
//! Groups wait in an [`Inbox`] the thread empties on its own clock: a statement's append
//! never wakes it (a wake-up per group cost more CPU than the insert), except the first
//! group after it went idle and a full inbox.

use std::{
    fs::{self, OpenOptions},
    os::unix::fs::OpenOptionsExt,
    path::{Path, PathBuf},
    sync::{Arc, Condvar, Mutex, MutexGuard},
    thread,
    time::{Duration, Instant},
};

use jiff::Timestamp;
use rusqlite::{Connection, OpenFlags, OptionalExtension, Transaction, params};

use super::{
    Event, JournalError, Record, SessionId,
    chain::{self, Hash},
    event::{ApprovalOutcome, GrantRecord},
    index::{SessionIndex, SessionInfo},
    log::{Written, set_mode},
    schema,
    segment::{self, Frame, Signed},
    sqlite::StoreOptions,
};

/// The index commits what it received at least this often.
const COMMIT_EVERY: Duration = Duration::from_millis(200);
/// ... or when this many records wait.
const COMMIT_RECORDS: usize = 50_000;
/// After a failure (a full disk), the index retries no more often than this.
const RETRY: Duration = Duration::from_secs(1);

/// One stored group, as the log wrote it.
pub struct Group {
    /// The group's frames; each record's JSON is a range of it.
    pub buf: Vec<u8>,
    pub records: Vec<Record>,
    pub written: Vec<Written>,
    /// Checkpoints (`b'C'`) and anchors (`b'A'`) written with or after the group.
    pub signed: Vec<(u8, Signed)>,
}

/// Groups waiting for the index thread.
#[derive(Default)]
struct Inbox {
    state: Mutex<InboxState>,
    wake: Condvar,
}

#[derive(Default)]
struct InboxState {
    groups: Vec<Group>,
    records: usize,
    /// The groups' record bytes (see [`MAX_QUEUED_BYTES`]).
    bytes: usize,
    /// The thread waits without a deadline (nothing queued): the next group wakes it.
    idle: bool,
    /// Stop: `Some(last)` indexes up to the log's last seq first; `None` (the index was
    /// dropped) stops after what is queued.
    close: Option<Option<u64>>,
    /// The last seq of groups left to the log because the inbox was full. The thread
    /// must catch up through it even when nothing follows them: a gap is otherwise
    /// found only by the next group, and a burst's tail would stay unindexed.
    dropped: Option<u64>,
}

impl Inbox {
    fn lock(&self) -> MutexGuard<'_, InboxState> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn push(&self, group: Group) {
        let mut s = self.lock();
        s.records += group.records.len();
        s.bytes += 2 * group.buf.len();
        s.groups.push(group);
        if s.idle || s.records >= COMMIT_RECORDS {
            s.idle = false;
            self.wake.notify_one();
        }
    }

    /// A group was left to the log: wakes the thread, which catches up through `last`.
    fn dropped(&self, last: u64) {
        let mut s = self.lock();
        s.dropped = Some(s.dropped.map_or(last, |d| d.max(last)));
        s.idle = false;
        self.wake.notify_one();
    }

    fn close(&self, last: Option<u64>) {
        self.lock().close = Some(last);
        self.wake.notify_one();
    }

    /// What queued, once [`COMMIT_EVERY`] has passed (or `retry` when the index is
    /// behind), the inbox is full, a group was dropped, or the index closes.
    fn take(&self, retry: Option<Duration>) -> Taken {
        let mut s = self.lock();
        let deadline = Instant::now() + retry.unwrap_or(COMMIT_EVERY);
        loop {
            // Behind, the retry's catch-up reads dropped groups anyway: no wake per group.
            if s.close.is_some()
                || s.records >= COMMIT_RECORDS
                || (s.dropped.is_some() && retry.is_none())
            {
                break;
            }
            if s.groups.is_empty() && retry.is_none() {
                s.idle = true;
                s = self.wake.wait(s).unwrap_or_else(|p| p.into_inner());
                continue;
            }
            let now = Instant::now();
            if now >= deadline {
                break;
            }
            s = self
                .wake
                .wait_timeout(s, deadline - now)
                .unwrap_or_else(|p| p.into_inner())
                .0;
        }
        s.idle = false;
        let taken = Queued {
            records: std::mem::take(&mut s.records),
            bytes: std::mem::take(&mut s.bytes),
        };
        Taken {
            groups: std::mem::take(&mut s.groups),
            queued: taken,
            dropped: s.dropped.take(),
            close: s.close,
        }
    }
}

/// What one [`Inbox::take`] hands the thread.
struct Taken {
    groups: Vec<Group>,
    queued: Queued,
    /// Groups through this seq were left to the log (see [`InboxState::dropped`]).
    dropped: Option<u64>,
    close: Option<Option<u64>>,
}

/// Records queued for the thread beyond which groups are not queued but left for a
/// catch-up from the log: memory stays bounded when appends outrun the index. A queued
/// record takes about 2.5 KB (its frame and its parsed form); the log is the source
/// either way, so a smaller queue costs only re-reading from the log.
const MAX_QUEUED: usize = COMMIT_RECORDS;
/// The same bound on the queued records' bytes (their JSON and parsed form): records
/// carrying bound parameters are kilobytes each, and a burst of them (a large
/// `executemany`) outran the index by 100 MB before.
const MAX_QUEUED_BYTES: usize = 16 << 20;

/// What is queued for the index thread.
#[derive(Debug, Default)]
struct Queued {
    records: usize,
    bytes: usize,
}

/// [`Queued`], shared by the log (adding) and the index thread (taking).
#[derive(Debug, Default)]
struct QueuedCount {
    records: std::sync::atomic::AtomicUsize,
    bytes: std::sync::atomic::AtomicUsize,
}

fn db(e: rusqlite::Error) -> JournalError {
    JournalError::Database(Arc::new(e))
}

/// The index writer: a connection, the sessions seen, and where the log is.
pub struct IndexDb {
    conn: Connection,
    sessions: SessionIndex,
    tip: u64,
    dir: PathBuf,
}

/// The index: synchronous until the first group is sent, then a thread.
pub struct Index {
    db: Option<IndexDb>,
    worker: Option<(Arc<Inbox>, thread::JoinHandle<()>)>,
    read: Connection,
    queued: Arc<QueuedCount>,
}

/// Whether `path` is a v1 journal (SQLite, `schema_version` 1, no segments).
pub fn holds_v1_journal(path: &Path) -> Result<bool, JournalError> {
    Ok(meta_version(path)?.as_deref() == Some("1"))
}

/// Whether `path` is the index of a v2 journal.
pub fn holds_v2_index(path: &Path) -> Result<bool, JournalError> {
    Ok(meta_version(path)?.as_deref() == Some("2"))
}

fn meta_version(path: &Path) -> Result<Option<String>, JournalError> {
    if fs::metadata(path).map(|m| m.len()).unwrap_or(0) == 0 {
        return Ok(None);
    }
    let conn = Connection::open_with_flags(path, OpenFlags::SQLITE_OPEN_READ_WRITE).map_err(db)?;
    if !schema::exists(&conn).map_err(db)? {
        return Ok(None);
    }
    schema::meta(&conn, schema::META_VERSION).map_err(db)
}

impl Index {
    pub fn open(
        path: &Path,
        dir: &Path,
        journal_id: [u8; 16],
        public: &[u8; 32],
        opts: &StoreOptions,
    ) -> Result<Index, JournalError> {
        OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .mode(0o640)
            .open(path)?;
        set_mode(path, 0o640, opts.read_group)?;
        let conn = Connection::open_with_flags(
            path,
            OpenFlags::SQLITE_OPEN_READ_WRITE | OpenFlags::SQLITE_OPEN_NO_MUTEX,
        )
        .map_err(db)?;
        let mode: String = conn
            .query_row("PRAGMA journal_mode = WAL", [], |r| r.get(0))
            .map_err(db)?;
        if !mode.eq_ignore_ascii_case("wal") {
            return Err(JournalError::Schema(format!(
                "cannot switch {} to WAL mode (got {mode})",
                path.display()
            )));
        }
        // The index is rebuilt from the log after a power loss: no fsync per commit.
        conn.execute_batch(
            "PRAGMA synchronous = NORMAL; PRAGMA cache_size = -16384; PRAGMA mmap_size = 268435456; PRAGMA temp_store = MEMORY;",
        )
        .map_err(db)?;
        conn.busy_timeout(Duration::from_secs(5)).map_err(db)?;
        conn.execute_batch(schema::DDL).map_err(db)?;
        if !super::log::meta_matches(&conn, &journal_id)? {
            return Err(JournalError::Schema(format!(
                "{} indexes another journal than the segments beside it",
                path.display()
            )));
        }
        schema::set_meta(&conn, schema::META_VERSION, "2").map_err(db)?;
        schema::set_meta(&conn, schema::META_JOURNAL_ID, &chain::hex(&journal_id)).map_err(db)?;
        let every = schema::meta(&conn, schema::META_CHECKPOINT_EVERY)
            .map_err(db)?
            .and_then(|v| v.parse::<u64>().ok())
            .unwrap_or(0)
            .max(opts.checkpoint_every);
        schema::set_meta(&conn, schema::META_CHECKPOINT_EVERY, &every.to_string()).map_err(db)?;
        schema::set_meta(&conn, schema::META_PUBLIC_KEY, &chain::hex(public)).map_err(db)?;
        for suffix in ["-wal", "-shm"] {
            let side = PathBuf::from(format!("{}{suffix}", path.display()));
            if side.exists() {
                set_mode(&side, 0o640, opts.read_group)?;
            }
        }
        let tip = tip(&conn)?;
        let read = Connection::open_with_flags(
            path,
            OpenFlags::SQLITE_OPEN_READ_ONLY | OpenFlags::SQLITE_OPEN_NO_MUTEX,
        )
        .map_err(db)?;
        read.busy_timeout(Duration::from_secs(5)).map_err(db)?;
        Ok(Index {
            db: Some(IndexDb {
                conn,
                sessions: SessionIndex::default(),
                tip,
                dir: dir.to_owned(),
            }),
            worker: None,
            read,
            queued: Arc::default(),
        })
    }

    /// A read-only connection to the index.
    pub fn connection(&self) -> &Connection {
        &self.read
    }

    fn db(&mut self) -> Result<&mut IndexDb, JournalError> {
        self.db
            .as_mut()
            .ok_or_else(|| JournalError::Schema("the index thread owns the index".into()))
    }

    /// Indexes what the log holds beyond the index (synchronously, before the thread).
    pub fn catch_up(&mut self) -> Result<u64, JournalError> {
        self.db()?.catch_up()
    }

    /// Sessions opened since the last `agent_started` record (or ever, without one) that
    /// have no `session_closed` record: what a writer that died left open.
    pub fn open_sessions(&mut self) -> Result<Vec<SessionId>, JournalError> {
        let conn = &self.db()?.conn;
        let since: Option<u64> = conn
            .query_row(
                "SELECT max(seq) FROM records WHERE kind = 'agent_started'",
                [],
                |r| r.get(0),
            )
            .map_err(db)?;
        let mut st = conn
            .prepare(
                "SELECT o.session FROM records o WHERE o.kind = 'session_opened' AND o.seq > ?1
                   AND o.session IS NOT NULL
                   AND NOT EXISTS (SELECT 1 FROM records c WHERE c.session = o.session
                                   AND c.kind = 'session_closed')
                 ORDER BY o.seq",
            )
            .map_err(db)?;
        let rows = st
            .query_map([since.unwrap_or(0)], |r| r.get::<_, String>(0))
            .map_err(db)?;
        let mut out = Vec::new();
        for s in rows {
            if let Ok(id) = s.map_err(db)?.parse() {
                out.push(SessionId(id));
            }
        }
        Ok(out)
    }

    /// Hands a stored group to the index thread (started on the first call).
    pub fn send(&self, group: Group) {
        use std::sync::atomic::Ordering;
        if let Some((inbox, _)) = &self.worker {
            let n = group.records.len();
            // A queued record costs its JSON and, about as much again, its parsed form.
            let bytes = 2 * group.buf.len();
            let q = &self.queued;
            if let Some(last) = group.records.last()
                && (q.records.load(Ordering::Relaxed) + n > MAX_QUEUED
                    || q.bytes.load(Ordering::Relaxed) + bytes > MAX_QUEUED_BYTES)
            {
                inbox.dropped(last.seq); // the thread reads these from the log
                return;
            }
            q.records.fetch_add(n, Ordering::Relaxed);
            q.bytes.fetch_add(bytes, Ordering::Relaxed);
            inbox.push(group);
        }
    }

    /// Starts the thread; later groups are indexed behind the log.
    pub fn start(&mut self) {
        if self.worker.is_some() {
            return;
        }
        let Some(db) = self.db.take() else { return };
        let inbox = Arc::new(Inbox::default());
        let queued = self.queued.clone();
        let theirs = inbox.clone();
        match thread::Builder::new()
            .name("pam-journal-index".into())
            .spawn(move || db.run(&theirs, &queued))
        {
            Ok(handle) => self.worker = Some((inbox, handle)),
            Err(e) => {
                tracing::error!(error = %e, "cannot start the journal index thread; queries read the log")
            }
        }
    }

    /// Indexes everything sent, then stops the thread.
    pub fn close(mut self, log_last_seq: u64) {
        if let Some((inbox, handle)) = self.worker.take() {
            inbox.close(Some(log_last_seq));
            let _ = handle.join();
        } else if let Some(mut db) = self.db.take() {
            let _ = db.catch_up();
            db.fold_wal();
        }
    }
}

impl Drop for Index {
    /// Dropped without [`Index::close`]: the thread indexes what is queued and stops.
    fn drop(&mut self) {
        if let Some((inbox, _)) = &self.worker {
            inbox.close(None);
        }
    }
}

fn tip(conn: &Connection) -> Result<u64, JournalError> {
    let t: Option<u64> = conn
        .query_row("SELECT max(seq) FROM records", [], |r| r.get(0))
        .map_err(db)?;
    Ok(t.unwrap_or(0))
}

impl IndexDb {
    fn run(mut self, inbox: &Inbox, queued: &QueuedCount) {
        use std::sync::atomic::Ordering;
        let started = Instant::now();
        match schema::upgrade_indexes(&self.conn) {
            Ok(true) => tracing::info!(
                seconds = started.elapsed().as_secs_f64(),
                "journal index: indexes reorganised for this version"
            ),
            Ok(false) => {}
            Err(e) => {
                tracing::warn!(error = %e, "journal index: cannot reorganise its indexes; queries stay correct but slower")
            }
        }
        let mut behind = false;
        let mut retry_at = Instant::now();
        // Groups through this seq were left to the log; the index must reach it.
        let mut dropped_through = 0;
        loop {
            let retry = behind.then(|| retry_at.saturating_duration_since(Instant::now()));
            let Taken {
                groups,
                queued: taken,
                dropped,
                close,
            } = inbox.take(retry);
            queued.records.fetch_sub(taken.records, Ordering::Relaxed);
            queued.bytes.fetch_sub(taken.bytes, Ordering::Relaxed);
            dropped_through = dropped_through.max(dropped.unwrap_or(0));
            let closing = close.is_some();
            if behind && (closing || Instant::now() >= retry_at) {
                // The groups are in the log; catching up reads them from there.
                match self.catch_up() {
                    Ok(_) => behind = false,
                    Err(e) => {
                        tracing::error!(error = %e, "journal index cannot catch up with the log; queries read the log meanwhile");
                        retry_at = Instant::now() + RETRY;
                    }
                }
            } else if !behind
                && !groups.is_empty()
                && let Err(e) = self.commit(groups)
            {
                tracing::error!(error = %e, "journal index write failed; it will catch up from the log");
                behind = true;
                retry_at = Instant::now() + RETRY;
            }
            if !behind && self.tip < dropped_through {
                // A catch-up reads the log as it was when it began (one that waited on a
                // lock may have begun long before): groups dropped since are still due.
                behind = true;
                retry_at = Instant::now();
            }
            if let Some(last) = close {
                if behind || last.is_some_and(|last| last > self.tip) {
                    let _ = self.catch_up();
                }
                self.fold_wal();
                return;
            }
        }
    }

    /// Fold the WAL back so the file alone is the whole index (readers without write
    /// access to the directory need that once the agent stopped).
    fn fold_wal(&mut self) {
        let _ = self.conn.execute_batch("PRAGMA wal_checkpoint(TRUNCATE);");
    }

    /// Inserts groups that follow the index's tip; a gap (groups lost to an earlier
    /// failure) sends it to the log instead.
    fn commit(&mut self, groups: Vec<Group>) -> Result<(), JournalError> {
        let tx = self.conn.unchecked_transaction().map_err(db)?;
        let mut tip = self.tip;
        let mut undo = Vec::new();
        let mut gap = false;
        let result = (|| -> Result<(), JournalError> {
            for g in &groups {
                for (r, w) in g.records.iter().zip(&g.written) {
                    if r.seq <= tip {
                        continue; // a catch-up already indexed it
                    }
                    if r.seq != tip + 1 {
                        gap = true;
                        return Ok(());
                    }
                    let json = std::str::from_utf8(&g.buf[w.json.clone()])
                        .map_err(|e| JournalError::Schema(e.to_string()))?;
                    insert_record(
                        &tx,
                        &mut self.sessions,
                        &mut undo,
                        r,
                        json,
                        &w.prev,
                        &w.hash,
                    )?;
                    tip = r.seq;
                }
                for (tag, s) in &g.signed {
                    insert_signed(&tx, *tag, s)?;
                }
            }
            Ok(())
        })();
        if gap {
            drop(tx);
            self.sessions.undo(undo.into_iter());
            if !self.conn.is_autocommit() {
                let _ = self.conn.execute_batch("ROLLBACK");
            }
            return self.catch_up().map(|_| ());
        }
        match result.and_then(|()| tx.commit().map_err(db)) {
            Ok(()) => {
                self.tip = tip;
                Ok(())
            }
            Err(e) => {
                self.sessions.undo(undo.into_iter());
                if !self.conn.is_autocommit() {
                    let _ = self.conn.execute_batch("ROLLBACK");
                }
                self.tip = self::tip(&self.conn).unwrap_or(self.tip);
                Err(e)
            }
        }
    }

    /// Indexes the log's records after the tip, reading the segments, in transactions
    /// of at most [`COMMIT_RECORDS`] records.
    fn catch_up(&mut self) -> Result<u64, JournalError> {
        self.tip = tip(&self.conn)?;
        let segments = segment::list(&self.dir)?;
        let start = segments
            .iter()
            .rposition(|(first, _)| *first <= self.tip + 1)
            .unwrap_or(0);
        let before = self.tip;
        for (_, path) in &segments[start..] {
            // A frame at a time: a segment is up to 64 MiB, more than the agent may hold.
            let mut frames = segment::FileFrames::open(path)?;
            while self.index_frames(&mut frames)? {}
        }
        Ok(self.tip - before)
    }

    /// Indexes frames in one transaction until [`COMMIT_RECORDS`] went in (`true`: more
    /// may follow), the frames end, or a record is not the next seq (`false`).
    fn index_frames(&mut self, frames: &mut segment::FileFrames) -> Result<bool, JournalError> {
        let tx = self.conn.unchecked_transaction().map_err(db)?;
        let mut undo = Vec::new();
        let mut tip = self.tip;
        let mut n = 0usize;
        let mut walk = || -> Result<bool, JournalError> {
            while let Some(frame) = frames.next_frame()? {
                match frame {
                    Frame::Record { prev, json, hash } => {
                        let Some(seq) = segment::seq_of(json) else {
                            continue;
                        };
                        if seq <= tip {
                            continue;
                        }
                        if seq != tip + 1 {
                            return Ok(false);
                        }
                        let text = std::str::from_utf8(json)
                            .map_err(|e| JournalError::Schema(e.to_string()))?;
                        match serde_json::from_str::<Record>(text) {
                            Ok(record) => insert_record(
                                &tx,
                                &mut self.sessions,
                                &mut undo,
                                &record,
                                text,
                                prev,
                                hash,
                            )?,
                            Err(_) => insert_unknown(&tx, seq, text, prev, hash)?,
                        }
                        tip = seq;
                        n += 1;
                    }
                    Frame::Checkpoint(c) => insert_signed(&tx, b'C', &c)?,
                    Frame::Anchor(a) => insert_signed(&tx, b'A', &a)?,
                }
                if n >= COMMIT_RECORDS {
                    return Ok(true);
                }
            }
            Ok(false)
        };
        let more = walk();
        match more.and_then(|more| tx.commit().map_err(db).map(|()| more)) {
            Ok(more) => {
                self.tip = tip;
                Ok(more)
            }
            Err(e) => {
                self.sessions.undo(undo.into_iter());
                Err(e)
            }
        }
    }
}

/// One row of `records`, its columns derived like the v1 store's.
fn insert_record(
    tx: &Transaction,
    sessions: &mut SessionIndex,
    undo: &mut Vec<super::index::Undo>,
    r: &Record,
    json: &str,
    prev: &Hash,
    hash: &Hash,
) -> Result<(), JournalError> {
    if let Some(s) = r.session
        && !sessions.knows(&s)
        && !matches!(r.event, Event::SessionOpened { .. })
    {
        // Remembered even when absent (its opening record went with retention): asked
        // again for each of the session's records, the lookup made indexing quadratic.
        let info = opened_info(tx, &s)?.unwrap_or_default();
        sessions.remember(s, info);
    }
    let (c, u) = sessions.derive(r);
    undo.push(u);
    tx.prepare_cached(
        "INSERT OR REPLACE INTO records (seq, ts_us, kind, session, uid, user, comm, exe, resource, decision, record, prev_hash, hash)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13)",
    )
    .and_then(|mut st| {
        st.execute(params![
            r.seq,
            c.ts_us,
            c.kind,
            c.session,
            c.info.uid,
            c.info.user,
            c.info.comm,
            c.info.exe,
            c.info.resource,
            c.decision,
            json,
            &prev[..],
            &hash[..],
        ])
    })
    .map_err(db)?;
    Ok(())
}

/// A record of a kind this version does not know: its text and hashes only.
fn insert_unknown(
    tx: &Transaction,
    seq: u64,
    json: &str,
    prev: &Hash,
    hash: &Hash,
) -> Result<(), JournalError> {
    let v: serde_json::Value = serde_json::from_str(json).unwrap_or_default();
    let kind = v["kind"].as_str().unwrap_or("unknown").to_owned();
    let ts_us = v["ts"]
        .as_str()
        .and_then(|t| t.parse::<Timestamp>().ok())
        .map_or(0, |t| t.as_microsecond());
    tx.execute(
        "INSERT OR REPLACE INTO records (seq, ts_us, kind, session, record, prev_hash, hash)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)",
        params![
            seq,
            ts_us,
            kind,
            v["session"].as_str(),
            json,
            &prev[..],
            &hash[..]
        ],
    )
    .map_err(db)?;
    Ok(())
}

fn insert_signed(tx: &Transaction, tag: u8, s: &Signed) -> Result<(), JournalError> {
    if tag == b'C' {
        tx.prepare_cached(
            "INSERT OR REPLACE INTO checkpoints (seq, hash, ts_us, public_key, signature) VALUES (?1, ?2, ?3, ?4, ?5)",
        )
        .and_then(|mut st| {
            st.execute(params![s.seq, &s.hash[..], s.ts_us, &s.public_key[..], &s.signature[..]])
        })
        .map_err(db)?;
    } else {
        // Retention: the records before the anchor are gone from the log.
        let through = s.seq.saturating_sub(1);
        tx.execute("DELETE FROM records WHERE seq <= ?1", [through])
            .map_err(db)?;
        tx.execute("DELETE FROM checkpoints WHERE seq <= ?1", [through])
            .map_err(db)?;
        tx.execute("DELETE FROM anchors WHERE first_seq <= ?1", [through])
            .map_err(db)?;
        tx.execute(
            "INSERT OR REPLACE INTO anchors (first_seq, prev_hash, ts_us, public_key, signature) VALUES (?1, ?2, ?3, ?4, ?5)",
            params![s.seq, &s.hash[..], s.ts_us, &s.public_key[..], &s.signature[..]],
        )
        .map_err(db)?;
    }
    Ok(())
}

/// The principal and resource of `session`, from its `session_opened` row.
fn opened_info(tx: &Transaction, session: &SessionId) -> Result<Option<SessionInfo>, JournalError> {
    tx.prepare_cached(
        "SELECT uid, user, comm, exe, resource FROM records WHERE session = ?1 AND kind = 'session_opened' LIMIT 1",
    )
    .and_then(|mut st| {
        st.query_row([session.to_string()], |r| {
            Ok(SessionInfo {
                uid: r.get(0)?,
                user: r.get(1)?,
                comm: r.get(2)?,
                exe: r.get(3)?,
                resource: r.get(4)?,
            })
        })
        .optional()
    })
    .map_err(db)
}

/// Grants made by approvals, not revoked, whose window is still open at `now`.
pub fn grants_in_force(
    conn: &Connection,
    now: Timestamp,
) -> Result<Vec<(GrantRecord, uuid::Uuid, String)>, JournalError> {
    let mut stmt = conn
        .prepare("SELECT record FROM records WHERE kind = 'approval_decided' ORDER BY seq")
        .map_err(db)?;
    let mut rows = stmt.query([]).map_err(db)?;
    let mut grants: Vec<(GrantRecord, uuid::Uuid, String)> = Vec::new();
    while let Some(row) = rows.next().map_err(db)? {
        let json: String = row.get(0).map_err(db)?;
        let Ok(Record {
            event:
                Event::ApprovalDecided {
                    approval,
                    outcome,
                    by,
                    grant: Some(g),
                    ..
                },
            ..
        }) = serde_json::from_str::<Record>(&json)
        else {
            continue;
        };
        match outcome {
            ApprovalOutcome::Revoked => grants.retain(|(k, _, _)| k.id != g.id),
            _ => grants.push((g, approval, by)),
        }
    }
    grants.retain(|(g, _, _)| g.until > now);
    Ok(grants)
}

/// Approval requests with no outcome: what a previous run left waiting.
pub fn unanswered_approvals(
    conn: &Connection,
) -> Result<Vec<(Option<SessionId>, uuid::Uuid)>, JournalError> {
    let mut stmt = conn
        .prepare(
            "SELECT record FROM records WHERE kind IN \
             ('approval_requested', 'approval_decided', 'approval_expired') ORDER BY seq",
        )
        .map_err(db)?;
    let mut rows = stmt.query([]).map_err(db)?;
    let mut open: Vec<(Option<SessionId>, uuid::Uuid)> = Vec::new();
    while let Some(row) = rows.next().map_err(db)? {
        let json: String = row.get(0).map_err(db)?;
        let Ok(r) = serde_json::from_str::<Record>(&json) else {
            continue;
        };
        match r.event {
            Event::ApprovalRequested { approval, .. } => open.push((r.session, approval)),
            Event::ApprovalDecided {
                approval, outcome, ..
            } if outcome != ApprovalOutcome::Counted && outcome != ApprovalOutcome::Revoked => {
                open.retain(|(_, a)| *a != approval)
            }
            Event::ApprovalExpired { approval } => open.retain(|(_, a)| *a != approval),
            _ => {}
        }
    }
    Ok(open)
}
