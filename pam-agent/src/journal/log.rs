//! The journal store of format v2: records are appended to hash-chained segment files
//! (`segment`), one `write` per group, so what a caller awaits is a sequential append
//! (plus, with `sync = "always"`, one `fdatasync` shared by the group). The SQLite
//! database at the journal's path is an index built behind the log by
//! [`super::indexer`]; the log is what `audit verify` trusts.
//!
//! Crash recovery (at open): the last segment is walked; a torn tail (a frame cut by a
//! crash, or garbage after the last whole frame) is cut off, kept beside the segment as
//! `*.torn-<time>` and journaled; sessions that were open when the previous writer died
//! get a `session_closed` record with `end = abandoned`.

use std::{
    fs::{self, File, OpenOptions},
    io::Write,
    os::unix::fs::{OpenOptionsExt, PermissionsExt},
    path::{Path, PathBuf},
    sync::{
        Arc, Mutex,
        atomic::{AtomicBool, Ordering},
        mpsc,
    },
    thread,
    time::{Duration, Instant},
};

use ed25519_dalek::SigningKey;
use jiff::Timestamp;
use nix::fcntl::{Flock, FlockArg};

use super::{
    AckSender, Event, JournalError, JournalStore, Record, SessionId,
    chain::{self, Hash},
    event::SessionEnd,
    indexer::{self, Group, Index},
    schema,
    segment::{self, Frame, Header, Signed},
    signing,
    sqlite::StoreOptions,
};

/// One record of a group, for the indexer: where its JSON sits in the group's bytes.
pub struct Written {
    pub json: std::ops::Range<usize>,
    pub prev: Hash,
    pub hash: Hash,
}

/// The open segment being appended to.
struct Current {
    file: Arc<File>,
    len: u64,
}

pub struct LogStore {
    opts: StoreOptions,
    dir: PathBuf,
    _lock: Flock<File>,
    key: SigningKey,
    public: [u8; 32],
    journal_id: [u8; 16],
    checkpoint_every: u64,
    segment_bytes: u64,
    current: Current,
    last_seq: u64,
    last_hash: Hash,
    signed_seq: u64,
    signed_at: Instant,
    witnessed_at: Option<Instant>,
    next_retention: Instant,
    /// The group being written: frames, and what the indexer needs of them.
    buf: Vec<u8>,
    written: Vec<Written>,
    signed_frames: Vec<(u8, Signed)>,
    index: Option<Index>,
    syncer: Option<Syncer>,
}

/// Retention looks at age and size this often.
const RETENTION_CHECK: Duration = Duration::from_secs(60);

fn io(e: std::io::Error) -> JournalError {
    JournalError::Write(Arc::new(e))
}

fn schema_err(m: impl Into<String>) -> JournalError {
    JournalError::Schema(m.into())
}

impl LogStore {
    /// Opens (or creates) the journal at `opts.path`: segments beside it, the index at it.
    /// A v1 journal (SQLite only) is migrated: its records, checkpoints and anchors are
    /// written to a first segment as they are (their hashes do not change).
    pub fn open(opts: StoreOptions) -> Result<LogStore, JournalError> {
        let path = opts.path.clone();
        if let Some(parent) = path.parent()
            && !parent.as_os_str().is_empty()
        {
            fs::create_dir_all(parent)?;
        }
        let dir = segment::dir_of(&path);
        if !dir.exists() {
            fs::create_dir(&dir).map_err(io)?;
        }
        set_mode(&dir, 0o750, opts.read_group)?;
        let lock_file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .mode(0o600)
            .open(dir.join(".lock"))?;
        let lock = Flock::lock(lock_file, FlockArg::LockExclusiveNonblock).map_err(|_| {
            schema_err(format!(
                "journal {} is in use by another process",
                path.display()
            ))
        })?;
        let key = signing::load_or_create(&opts.signing_key)
            .map_err(|e| JournalError::Key(e.to_string()))?;
        let public = key.verifying_key().to_bytes();

        let mut segments = segment::list(&dir)?;
        let mut notes: Vec<Event> = Vec::new();
        if segments.is_empty() {
            if indexer::holds_v1_journal(&path)? {
                super::migrate::v1_to_segments(&path, &dir, opts.read_group)?;
                tracing::info!(path = %path.display(), "journal migrated from format v1 to segments (v2)");
            } else if indexer::holds_v2_index(&path)? {
                return Err(schema_err(format!(
                    "{} is the index of a v2 journal but its segments ({}) are gone; \
                     refusing to start a new chain over it",
                    path.display(),
                    dir.display()
                )));
            } else {
                let id = *uuid::Uuid::now_v7().as_bytes();
                let header = Header {
                    journal_id: id,
                    first_seq: 1,
                    checkpoint_every: opts.checkpoint_every,
                    prev_hash: chain::genesis(&id),
                };
                create_segment(&dir, &header, opts.read_group)?;
            }
            segments = segment::list(&dir)?;
            if segments.is_empty() {
                return Err(schema_err("no segment after creating the journal"));
            }
        }
        // A segment whose creation a crash cut short (shorter than its header) holds no
        // record: it is set aside, and the one before it is the last.
        if segments.len() > 1
            && let Some((_, p)) = segments.last()
            && fs::metadata(p)?.len() < segment::HEADER_LEN as u64
        {
            let aside = p.with_extension(format!("seg.torn-{}", Timestamp::now().as_second()));
            fs::rename(p, &aside)?;
            tracing::warn!(segment = %p.display(), "journal: set aside a segment whose creation was cut short");
            segments.pop();
        }
        let (last_first, last_path) = segments.last().cloned().expect("not empty");
        let bytes = fs::read(&last_path)?;
        let header = Header::decode(&bytes).ok_or_else(|| {
            schema_err(format!(
                "{}: not a journal segment (bad header)",
                last_path.display()
            ))
        })?;
        if header.first_seq != last_first {
            return Err(schema_err(format!(
                "{}: header says it starts at seq {}",
                last_path.display(),
                header.first_seq
            )));
        }
        let tip = recover_tail(&bytes, &header);
        if tip.end < bytes.len() {
            let cut = bytes.len() - tip.end;
            let torn =
                last_path.with_extension(format!("seg.torn-{}", Timestamp::now().as_second()));
            crate::secret_file::write_new(&torn, &bytes[tip.end..], 0o640)?;
            set_mode(&torn, 0o640, opts.read_group)?;
            let f = OpenOptions::new().write(true).open(&last_path)?;
            f.set_len(tip.end as u64)?;
            f.sync_all()?;
            tracing::warn!(
                segment = %last_path.display(),
                offset = tip.end,
                bytes = cut,
                kept_in = %torn.display(),
                "journal: cut a torn tail left by a crash"
            );
            notes.push(Event::Error {
                component: "journal".into(),
                message: format!(
                    "recovery cut a torn tail of {cut} bytes ({}) at offset {} of segment {} \
                     after seq {}; the bytes are kept in {}",
                    tip.stop_reason,
                    tip.end,
                    last_path.file_name().unwrap_or_default().to_string_lossy(),
                    tip.last_seq,
                    torn.file_name().unwrap_or_default().to_string_lossy()
                ),
            });
        }
        let file = OpenOptions::new().append(true).open(&last_path)?;
        let checkpoint_every = opts.checkpoint_every;
        // Retention removes whole segments: keep them small against a small bound.
        let segment_bytes = match opts.max_bytes {
            Some(max) => (max / 8).clamp(64 << 10, opts.segment_bytes),
            None => opts.segment_bytes,
        };
        let index = Index::open(&path, &dir, header.journal_id, &public, &opts)?;
        let syncer = Some(Syncer::start(if opts.fsync {
            None
        } else {
            Some(opts.sync_interval)
        }));
        let mut store = LogStore {
            dir,
            _lock: lock,
            key,
            public,
            journal_id: header.journal_id,
            checkpoint_every,
            segment_bytes,
            current: Current {
                file: Arc::new(file),
                len: tip.end as u64,
            },
            last_seq: tip.last_seq,
            last_hash: tip.last_hash,
            signed_seq: tip.signed_seq.unwrap_or(header.first_seq.saturating_sub(1)),
            signed_at: Instant::now(),
            witnessed_at: None,
            next_retention: Instant::now(),
            buf: Vec::with_capacity(1 << 20),
            written: Vec::new(),
            signed_frames: Vec::new(),
            index: Some(index),
            syncer,
            opts,
        };
        if let Some(s) = &store.syncer {
            s.follow(store.current.file.clone());
        }
        // The index catches up with the log before anyone reads from it here.
        store.index_mut()?.catch_up()?;
        let mut records = Vec::new();
        let mut next = store.last_seq + 1;
        for event in notes {
            records.push(Record::new(next, None, event));
            next += 1;
        }
        for session in store.index_mut()?.open_sessions()? {
            records.push(Record::new(
                next,
                Some(session),
                Event::SessionClosed {
                    bytes_from_worker: 0,
                    bytes_to_worker: 0,
                    duration_ms: 0,
                    end: SessionEnd::Abandoned,
                    detail: Some(
                        "the writer stopped without closing this session (killed or crashed); \
                         closed at the next start"
                            .into(),
                    ),
                },
            ));
            next += 1;
        }
        if store.opts.build_index {
            store.index_mut()?.start();
        } else {
            store.index = None;
        }
        if !records.is_empty() {
            store.append(&records)?;
            store.written(records);
        }
        Ok(store)
    }

    fn index_mut(&mut self) -> Result<&mut Index, JournalError> {
        self.index
            .as_mut()
            .ok_or_else(|| schema_err("the journal index is closed"))
    }

    pub fn path(&self) -> &Path {
        &self.opts.path
    }

    pub fn public_key(&self) -> [u8; 32] {
        self.public
    }

    /// Grants in force at `now` (see [`super::sqlite::SqliteStore::grants_in_force`]).
    pub fn grants_in_force(
        &self,
        now: Timestamp,
    ) -> Result<Vec<(super::event::GrantRecord, uuid::Uuid, String)>, JournalError> {
        let index = self
            .index
            .as_ref()
            .ok_or_else(|| schema_err("the journal index is closed"))?;
        indexer::grants_in_force(index.connection(), now)
    }

    /// Approval requests a previous run left unanswered.
    pub fn unanswered_approvals(
        &self,
    ) -> Result<Vec<(Option<SessionId>, uuid::Uuid)>, JournalError> {
        let index = self
            .index
            .as_ref()
            .ok_or_else(|| schema_err("the journal index is closed"))?;
        indexer::unanswered_approvals(index.connection())
    }

    fn sign(&self, seq: u64, hash: Hash, anchor: bool) -> Signed {
        let ts_us = Timestamp::now().as_microsecond();
        let msg = if anchor {
            signing::anchor_message(&self.journal_id, seq, &hash, ts_us)
        } else {
            signing::checkpoint_message(&self.journal_id, seq, &hash, ts_us)
        };
        Signed {
            seq,
            hash,
            ts_us,
            public_key: self.public,
            signature: signing::sign(&self.key, &msg),
        }
    }

    /// Writes `self.buf` to the current segment as one write; the syncer flushes it to
    /// disk (and, with `sync = "always"`, only then are its records acknowledged). On a
    /// failed write the segment is cut back to where it was: nothing of the group stays.
    /// After a failed flush every later write is refused (fail closed until a restart
    /// re-reads the log): the kernel may have dropped pages it could not write.
    fn flush_buf(&mut self) -> Result<(), JournalError> {
        if self.buf.is_empty() {
            return Ok(());
        }
        if let Some(e) = self.syncer.as_ref().and_then(Syncer::failed) {
            return Err(JournalError::Write(e));
        }
        let mut file: &File = &self.current.file;
        if let Err(e) = file.write_all(&self.buf) {
            if let Err(cut) = file.set_len(self.current.len) {
                tracing::error!(error = %cut, "journal: cannot cut a failed write back; the next start will");
            }
            return Err(io(e));
        }
        self.current.len += self.buf.len() as u64;
        if let Some(s) = &self.syncer {
            s.dirty();
        }
        Ok(())
    }

    /// Closes the current segment (signing its end) and starts the next at `first_seq`.
    fn rotate(&mut self) -> Result<(), JournalError> {
        if self.last_seq > self.signed_seq {
            let cp = self.sign(self.last_seq, self.last_hash, false);
            let mut b = Vec::with_capacity(segment::SIGNED_FRAME_LEN);
            segment::encode_checkpoint(&mut b, &cp);
            (&*self.current.file).write_all(&b)?;
            self.current.len += b.len() as u64;
            self.mark_signed(cp.seq, cp.hash);
            if let Some(index) = &self.index {
                index.send(Group {
                    buf: Vec::new(),
                    records: Vec::new(),
                    written: Vec::new(),
                    signed: vec![(b'C', cp)],
                });
            }
        }
        self.current.file.sync_all()?;
        let header = Header {
            journal_id: self.journal_id,
            first_seq: self.last_seq + 1,
            checkpoint_every: self.checkpoint_every,
            prev_hash: self.last_hash,
        };
        let (file, _) = create_segment(&self.dir, &header, self.opts.read_group)?;
        self.current = Current {
            file: Arc::new(file),
            len: segment::HEADER_LEN as u64,
        };
        if let Some(s) = &self.syncer {
            s.follow(self.current.file.clone());
        }
        Ok(())
    }

    fn mark_signed(&mut self, seq: u64, hash: Hash) {
        if seq != self.signed_seq {
            self.signed_seq = seq;
            self.signed_at = Instant::now();
            if self
                .witnessed_at
                .is_none_or(|t| t.elapsed() >= self.opts.checkpoint_interval)
            {
                self.witnessed_at = Some(Instant::now());
                tracing::info!(seq, hash = %chain::hex(&hash), "journal checkpoint signed");
            }
        }
    }

    /// Signs the tip when records wait unsigned longer than the interval (or `force`).
    fn checkpoint_if_due(&mut self, force: bool) -> Result<(), JournalError> {
        if self.last_seq == self.signed_seq
            || (!force && self.signed_at.elapsed() < self.opts.checkpoint_interval)
        {
            return Ok(());
        }
        let cp = self.sign(self.last_seq, self.last_hash, false);
        self.buf.clear();
        segment::encode_checkpoint(&mut self.buf, &cp);
        self.flush_buf()?;
        self.mark_signed(cp.seq, cp.hash);
        if let Some(index) = &self.index {
            index.send(Group {
                buf: Vec::new(),
                records: Vec::new(),
                written: Vec::new(),
                signed: vec![(b'C', cp)],
            });
        }
        Ok(())
    }

    /// Removes whole segments older than `max_age` or beyond `max_bytes` (never the one
    /// being written), signs an anchor for the first record kept, and journals it.
    /// Returns the number of records removed.
    pub fn enforce_retention(&mut self) -> Result<u64, JournalError> {
        let segments = segment::list(&self.dir)?;
        let cutoff = self.opts.max_age.map(|age| {
            Timestamp::now().as_microsecond() - i64::try_from(age.as_micros()).unwrap_or(i64::MAX)
        });
        let mut total: u64 = segments
            .iter()
            .filter_map(|(_, p)| fs::metadata(p).ok().map(|m| m.len()))
            .sum();
        let mut drop_through: Option<(u64, u64, &'static str)> = None; // (through, next first, reason)
        for win in segments.windows(2) {
            let ((_, path), (next_first, _)) = (&win[0], &win[1]);
            let len = fs::metadata(path).map(|m| m.len()).unwrap_or(0);
            let by_size = self
                .opts
                .max_bytes
                .is_some_and(|max| total > (max as f64 * 0.8) as u64);
            let by_age = cutoff.is_some_and(|c| last_ts_us(path).is_some_and(|ts| ts < c));
            if !(by_size || by_age) {
                break;
            }
            drop_through = Some((
                next_first - 1,
                *next_first,
                if by_age { "max_age" } else { "max_size" },
            ));
            total -= len;
        }
        let Some((through, next_first, reason)) = drop_through else {
            return Ok(0);
        };
        let first = segments[0].0;
        let next_path = self.dir.join(segment::file_name(next_first));
        let next_header = Header::decode(&fs::read(&next_path)?)
            .ok_or_else(|| schema_err(format!("{}: bad header", next_path.display())))?;
        // The anchor first (in the log), then the files go.
        let anchor = self.sign(next_first, next_header.prev_hash, true);
        self.buf.clear();
        segment::encode_anchor(&mut self.buf, &anchor);
        self.flush_buf()?;
        self.current.file.sync_data()?;
        for (f, p) in &segments {
            if *f < next_first {
                fs::remove_file(p)?;
            }
        }
        if let Some(index) = &self.index {
            index.send(Group {
                buf: Vec::new(),
                records: Vec::new(),
                written: Vec::new(),
                signed: vec![(b'A', anchor)],
            });
        }
        let removed = through + 1 - first;
        tracing::info!(
            through,
            removed,
            reason,
            "journal retention removed old segments"
        );
        let record = Record::new(
            self.last_seq + 1,
            None,
            Event::JournalPruned {
                through_seq: through,
                records: removed,
                reason: reason.into(),
            },
        );
        self.append(std::slice::from_ref(&record))?;
        self.written(vec![record]);
        Ok(removed)
    }
}

/// The last record's time in a segment (retention by age).
fn last_ts_us(path: &Path) -> Option<i64> {
    let bytes = fs::read(path).ok()?;
    let mut last = None;
    for (_, f) in segment::Frames::new(&bytes) {
        if let Frame::Record { json, .. } = f {
            last = Some(json);
        }
    }
    let r: Record = serde_json::from_slice(last?).ok()?;
    Some(r.ts.as_microsecond())
}

/// What the recovery walk of the last segment found.
struct Tip {
    end: usize,
    last_seq: u64,
    last_hash: Hash,
    signed_seq: Option<u64>,
    stop_reason: &'static str,
}

/// Walks a segment while its frames are whole and chained; where they stop is the end.
fn recover_tail(bytes: &[u8], header: &Header) -> Tip {
    let mut tip = Tip {
        end: segment::HEADER_LEN,
        last_seq: header.first_seq - 1,
        last_hash: header.prev_hash,
        signed_seq: None,
        stop_reason: "clean",
    };
    let mut frames = segment::Frames::new(bytes);
    while let Some((_, frame)) = frames.next() {
        match frame {
            Frame::Record { prev, json, hash } => {
                if *prev != tip.last_hash
                    || segment::seq_of(json) != Some(tip.last_seq + 1)
                    || chain::link(prev, json) != *hash
                {
                    tip.stop_reason = "a record that does not check out";
                    return tip;
                }
                tip.last_seq += 1;
                tip.last_hash = *hash;
            }
            Frame::Checkpoint(c) => {
                if c.seq != tip.last_seq
                    || c.hash != tip.last_hash
                    || !signing::verify(
                        &c.public_key,
                        &signing::checkpoint_message(&header.journal_id, c.seq, &c.hash, c.ts_us),
                        &c.signature,
                    )
                {
                    tip.stop_reason = "a checkpoint that does not check out";
                    return tip;
                }
                tip.signed_seq = Some(c.seq);
            }
            Frame::Anchor(_) => {}
        }
        tip.end = frames.pos();
    }
    tip.stop_reason = match frames.stop {
        Some((_, segment::Stop::Incomplete)) => "an incomplete frame",
        Some((_, segment::Stop::BadTag(_))) => "bytes that start no frame",
        None => "clean",
    };
    tip
}

/// Creates a segment file with its header, durably (file and directory entry).
fn create_segment(
    dir: &Path,
    header: &Header,
    read_group: Option<u32>,
) -> Result<(File, PathBuf), JournalError> {
    let path = dir.join(segment::file_name(header.first_seq));
    let mut file = OpenOptions::new()
        .append(true)
        .create_new(true)
        .mode(0o640)
        .open(&path)?;
    set_mode(&path, 0o640, read_group)?;
    let mut b = Vec::with_capacity(segment::HEADER_LEN);
    header.encode(&mut b);
    file.write_all(&b)?;
    file.sync_all()?;
    File::open(dir)?.sync_all()?;
    Ok((file, path))
}

/// Mode `mode`, group `read_group` when set.
pub(crate) fn set_mode(
    path: &Path,
    mode: u32,
    read_group: Option<u32>,
) -> Result<(), JournalError> {
    fs::set_permissions(path, fs::Permissions::from_mode(mode))?;
    if let Some(gid) = read_group {
        nix::unistd::chown(path, None, Some(nix::unistd::Gid::from_raw(gid)))
            .map_err(|e| std::io::Error::from_raw_os_error(e as i32))?;
    }
    Ok(())
}

impl JournalStore for LogStore {
    fn last_seq(&self) -> u64 {
        self.last_seq
    }

    fn append(&mut self, records: &[Record]) -> Result<(), JournalError> {
        if records.is_empty() {
            return Ok(());
        }
        if self.current.len > segment::HEADER_LEN as u64 && self.current.len >= self.segment_bytes {
            self.rotate()?;
        }
        self.buf.clear();
        self.written.clear();
        self.signed_frames.clear();
        let mut prev = self.last_hash;
        let mut signed_seq = self.signed_seq;
        for r in records {
            // 'R' | len (patched below) | prev | json | hash
            let start = self.buf.len();
            self.buf.push(b'R');
            self.buf.extend_from_slice(&[0; 4]);
            self.buf.extend_from_slice(&prev);
            let json_start = self.buf.len();
            serde_json::to_writer(&mut self.buf, r)
                .map_err(|e| schema_err(format!("cannot encode record {}: {e}", r.seq)))?;
            let json_end = self.buf.len();
            let len = u32::try_from(json_end - json_start)
                .map_err(|_| schema_err(format!("record {} is over 4 GiB", r.seq)))?;
            self.buf[start + 1..start + 5].copy_from_slice(&len.to_be_bytes());
            let hash = chain::link(&prev, &self.buf[json_start..json_end]);
            self.buf.extend_from_slice(&hash);
            self.written.push(Written {
                json: json_start..json_end,
                prev,
                hash,
            });
            prev = hash;
            if r.seq - signed_seq >= self.checkpoint_every {
                let cp = self.sign(r.seq, hash, false);
                segment::encode_checkpoint(&mut self.buf, &cp);
                self.signed_frames.push((b'C', cp));
                signed_seq = r.seq;
            }
        }
        self.flush_buf()?;
        self.last_seq = records[records.len() - 1].seq;
        self.last_hash = prev;
        if signed_seq != self.signed_seq {
            let hash = self
                .signed_frames
                .last()
                .map(|(_, c)| c.hash)
                .unwrap_or(prev);
            self.mark_signed(signed_seq, hash);
        }
        Ok(())
    }

    fn acknowledge(&mut self, acks: Vec<(AckSender, u64)>) {
        match &self.syncer {
            Some(s) if s.waits() => s.after_flush(acks),
            _ => {
                for (ack, seq) in acks {
                    let _ = ack.send(Ok(seq));
                }
            }
        }
    }

    fn written(&mut self, records: Vec<Record>) {
        let Some(index) = &self.index else { return };
        if records.len() != self.written.len() {
            return;
        }
        // Only the group's bytes: the buffer (1 MiB and more) stays for the next group.
        // Handing it over whole cost every queued group its capacity's touched pages.
        let buf = self.buf.clone();
        self.buf.clear();
        index.send(Group {
            buf,
            records,
            written: std::mem::take(&mut self.written),
            signed: std::mem::take(&mut self.signed_frames),
        });
    }

    fn tick(&mut self) -> Result<(), JournalError> {
        self.checkpoint_if_due(false)?;
        if (self.opts.max_age.is_some() || self.opts.max_bytes.is_some())
            && Instant::now() >= self.next_retention
        {
            self.next_retention = Instant::now() + RETENTION_CHECK;
            self.enforce_retention()?;
        }
        Ok(())
    }

    fn close(&mut self) -> Result<(), JournalError> {
        let signed = self.checkpoint_if_due(true);
        let synced = self.current.file.sync_all().map_err(io);
        if let Some(s) = self.syncer.take() {
            s.stop();
        }
        if let Some(index) = self.index.take() {
            index.close(self.last_seq);
        }
        signed.and(synced)
    }
}

impl Drop for LogStore {
    fn drop(&mut self) {
        if let Some(s) = self.syncer.take() {
            s.stop();
        }
        if let Some(index) = self.index.take() {
            index.close(self.last_seq);
        }
    }
}

/// The thread that flushes the log to disk behind the appender.
///
/// `sync = "interval"`: `fdatasync` at most `interval` after a write, so a power loss
/// loses at most that window; records are acknowledged once written.
/// `sync = "always"`: acknowledgements wait here until a flush that covers them: one
/// `fdatasync` answers every group written before it started, and the appender writes
/// the next groups meanwhile (pipelined group commit).
struct Syncer {
    file: Arc<Mutex<Option<Arc<File>>>>,
    dirty: Arc<AtomicBool>,
    failed: Arc<Mutex<Option<Arc<std::io::Error>>>>,
    always: bool,
    tx: mpsc::Sender<SyncMsg>,
    thread: Option<thread::JoinHandle<()>>,
}

enum SyncMsg {
    /// Answer these once a flush started after their write has finished.
    Acks(Vec<(AckSender, u64)>),
    Stop,
}

impl Syncer {
    /// `interval`: `None` for `sync = "always"`.
    fn start(interval: Option<Duration>) -> Syncer {
        let file: Arc<Mutex<Option<Arc<File>>>> = Arc::new(Mutex::new(None));
        let dirty = Arc::new(AtomicBool::new(false));
        let failed: Arc<Mutex<Option<Arc<std::io::Error>>>> = Arc::new(Mutex::new(None));
        let (tx, rx) = mpsc::channel::<SyncMsg>();
        let thread = {
            let (file, dirty, failed) = (file.clone(), dirty.clone(), failed.clone());
            thread::Builder::new()
                .name("pam-journal-sync".into())
                .spawn(move || sync_loop(interval, &rx, &file, &dirty, &failed))
                .expect("spawning the journal sync thread")
        };
        Syncer {
            file,
            dirty,
            failed,
            always: interval.is_none(),
            tx,
            thread: Some(thread),
        }
    }

    fn follow(&self, f: Arc<File>) {
        if let Ok(mut g) = self.file.lock() {
            *g = Some(f);
        }
    }

    fn dirty(&self) {
        self.dirty.store(true, Ordering::Release);
    }

    /// Whether acknowledgements wait for a flush (`sync = "always"`).
    fn waits(&self) -> bool {
        self.always
    }

    /// The error of a flush that failed (every later write is refused).
    fn failed(&self) -> Option<Arc<std::io::Error>> {
        self.failed.lock().ok().and_then(|g| g.clone())
    }

    fn after_flush(&self, acks: Vec<(AckSender, u64)>) {
        if let Err(mpsc::SendError(SyncMsg::Acks(acks))) = self.tx.send(SyncMsg::Acks(acks)) {
            for (ack, _) in acks {
                let _ = ack.send(Err(JournalError::Closed));
            }
        }
    }

    fn stop(mut self) {
        let _ = self.tx.send(SyncMsg::Stop);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

fn sync_loop(
    interval: Option<Duration>,
    rx: &mpsc::Receiver<SyncMsg>,
    file: &Mutex<Option<Arc<File>>>,
    dirty: &AtomicBool,
    failed: &Mutex<Option<Arc<std::io::Error>>>,
) {
    let flush = || -> Result<(), Arc<std::io::Error>> {
        if let Ok(g) = failed.lock()
            && let Some(e) = g.clone()
        {
            return Err(e);
        }
        if !dirty.swap(false, Ordering::AcqRel) {
            return Ok(());
        }
        let f = file.lock().ok().and_then(|g| g.clone());
        match f.map(|f| f.sync_data()) {
            Some(Err(e)) => {
                tracing::error!(error = %e, "journal: fdatasync failed; the journal refuses every record until a restart");
                let e = Arc::new(e);
                if let Ok(mut g) = failed.lock() {
                    *g = Some(e.clone());
                }
                Err(e)
            }
            _ => Ok(()),
        }
    };
    let mut acks: Vec<(AckSender, u64)> = Vec::new();
    loop {
        let msg = match interval {
            Some(i) => match rx.recv_timeout(i) {
                Ok(m) => Some(m),
                Err(mpsc::RecvTimeoutError::Timeout) => None,
                Err(mpsc::RecvTimeoutError::Disconnected) => Some(SyncMsg::Stop),
            },
            None => Some(rx.recv().unwrap_or(SyncMsg::Stop)),
        };
        let mut stop = false;
        // Everything that queued during the last flush shares this one.
        for m in msg
            .into_iter()
            .chain(std::iter::from_fn(|| rx.try_recv().ok()))
        {
            match m {
                SyncMsg::Acks(a) => acks.extend(a),
                SyncMsg::Stop => stop = true,
            }
        }
        let result = flush();
        for (ack, seq) in acks.drain(..) {
            let _ = ack.send(result.clone().map(|()| seq).map_err(JournalError::Write));
        }
        if stop {
            return;
        }
    }
}

/// Whether `path` names a v2 journal (its segment directory exists).
pub fn is_v2(path: &Path) -> bool {
    segment::dir_of(path).is_dir()
}

/// The meta keys of the index that say which journal it indexes.
pub(crate) fn meta_matches(
    conn: &rusqlite::Connection,
    journal_id: &[u8; 16],
) -> Result<bool, JournalError> {
    let id = schema::meta(conn, schema::META_JOURNAL_ID)
        .map_err(|e| JournalError::Database(e.into()))?;
    Ok(id.is_none_or(|h| h == chain::hex(journal_id)))
}
