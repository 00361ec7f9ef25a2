//! The SQLite journal store: one WAL-mode database file, one transaction per group of
//! records (the group commit), hash-chained rows and signed checkpoints in the same
//! transaction. A crash at any moment leaves the file at its last committed group, which
//! is the last group any caller was told about.

use std::{
    fs::{self, OpenOptions},
    os::unix::fs::{OpenOptionsExt, PermissionsExt},
    path::{Path, PathBuf},
    sync::Arc,
    time::{Duration, Instant},
};

use ed25519_dalek::SigningKey;
use jiff::Timestamp;
use rusqlite::{Connection, OpenFlags, OptionalExtension, Transaction, params};

use super::{
    Event, JournalError, JournalStore, Record, SessionId,
    chain::{self, Hash},
    index::{SessionIndex, Undo},
    schema, signing,
};

/// How the store behaves; built from the `[journal]` config section.
#[derive(Debug, Clone)]
pub struct StoreOptions {
    pub path: PathBuf,
    /// Ed25519 key for checkpoints; created on first start.
    pub signing_key: PathBuf,
    /// fsync every commit (`synchronous=FULL`); without it a power loss may lose the last
    /// groups (an agent crash still loses nothing).
    pub fsync: bool,
    /// Without `fsync` (`sync = "interval"`), the segment log is flushed to disk at least
    /// this often: the window of records a power loss may take.
    pub sync_interval: Duration,
    /// A segment of the log (v2) is closed at this size (smaller with `max_bytes`).
    pub segment_bytes: u64,
    /// Build the index behind the log (v2). Off only to measure the log alone: readers
    /// then take every record the index lacks from the log.
    pub build_index: bool,
    /// Sign a checkpoint at least every this many records...
    pub checkpoint_every: u64,
    /// ...and when records wait unsigned for this long.
    pub checkpoint_interval: Duration,
    /// Remove records older than this.
    pub max_age: Option<Duration>,
    /// Keep the database under this many bytes by removing the oldest records.
    pub max_bytes: Option<u64>,
    /// Group that may read the journal (mode 0640).
    pub read_group: Option<u32>,
}

impl StoreOptions {
    /// Defaults for a journal at `path` with its key beside it.
    pub fn new(path: &Path) -> Self {
        StoreOptions {
            path: path.to_owned(),
            signing_key: default_key_path(path),
            fsync: true,
            sync_interval: Duration::from_millis(100),
            segment_bytes: super::segment::SEGMENT_BYTES,
            build_index: true,
            checkpoint_every: 1000,
            checkpoint_interval: Duration::from_secs(10),
            max_age: None,
            max_bytes: None,
            read_group: None,
        }
    }
}

/// `<journal>.key` beside the journal file.
pub fn default_key_path(journal: &Path) -> PathBuf {
    let mut name = journal.file_name().unwrap_or_default().to_owned();
    name.push(".key");
    journal.with_file_name(name)
}

/// How often retention looks at age and size.
const RETENTION_CHECK: Duration = Duration::from_secs(60);
/// Records removed per transaction when pruning, so the WAL stays small.
const PRUNE_CHUNK: u64 = 50_000;
/// Size pruning goes down to this share of `max_bytes`, so it does not run on every write.
const PRUNE_TARGET: f64 = 0.8;

pub struct SqliteStore {
    opts: StoreOptions,
    conn: Connection,
    key: SigningKey,
    public: [u8; 32],
    journal_id: [u8; 16],
    last_seq: u64,
    last_hash: Hash,
    /// Seq of the newest checkpoint (or anchor boundary) and when it was made.
    signed_seq: u64,
    signed_at: Instant,
    /// When a checkpoint was last written to the daemon's log (rate-limited witness).
    witnessed_at: Option<Instant>,
    next_retention: Instant,
    sessions: SessionIndex,
    json: Vec<u8>,
}

fn db_err(e: rusqlite::Error) -> JournalError {
    JournalError::Database(Arc::new(e))
}

impl SqliteStore {
    pub fn open(opts: StoreOptions) -> Result<Self, JournalError> {
        let path = &opts.path;
        if let Some(dir) = path.parent()
            && !dir.as_os_str().is_empty()
        {
            fs::create_dir_all(dir)?;
        }
        // Create the file ourselves so it never exists with SQLite's default 0644.
        OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .mode(0o640)
            .open(path)?;
        set_permissions(path, opts.read_group)?;
        let key = signing::load_or_create(&opts.signing_key)
            .map_err(|e| JournalError::Key(e.to_string()))?;
        let public = key.verifying_key().to_bytes();

        let conn = Connection::open_with_flags(
            path,
            OpenFlags::SQLITE_OPEN_READ_WRITE | OpenFlags::SQLITE_OPEN_NO_MUTEX,
        )
        .map_err(db_err)?;
        let fresh = !schema::exists(&conn).map_err(db_err)?;
        if fresh {
            // Must precede the first table so freed pages can be returned to the OS.
            conn.execute_batch("PRAGMA auto_vacuum = INCREMENTAL;")
                .map_err(db_err)?;
        }
        let mode: String = conn
            .query_row("PRAGMA journal_mode = WAL", [], |r| r.get(0))
            .map_err(db_err)?;
        if !mode.eq_ignore_ascii_case("wal") {
            return Err(JournalError::Schema(format!(
                "cannot switch {} to WAL mode (got {mode})",
                path.display()
            )));
        }
        conn.execute_batch(if opts.fsync {
            "PRAGMA synchronous = FULL;"
        } else {
            "PRAGMA synchronous = NORMAL;"
        })
        .map_err(db_err)?;
        conn.busy_timeout(Duration::from_secs(5)).map_err(db_err)?;
        // Seven indexes take many pages per group: keep them in memory rather than
        // re-reading them from the OS on every commit.
        conn.execute_batch("PRAGMA cache_size = -65536; PRAGMA mmap_size = 268435456;")
            .map_err(db_err)?;
        conn.execute_batch(schema::DDL).map_err(db_err)?;
        schema::upgrade_indexes(&conn).map_err(db_err)?;

        let journal_id = init_meta(&conn, &opts, &public)?;
        // SQLite creates -wal and -shm with the database's mode and owner; fix any left
        // by an older run with other settings.
        for suffix in ["-wal", "-shm"] {
            let side = PathBuf::from(format!("{}{suffix}", path.display()));
            if side.exists() {
                set_permissions(&side, opts.read_group)?;
            }
        }

        let mut store = SqliteStore {
            conn,
            key,
            public,
            journal_id,
            last_seq: 0,
            last_hash: chain::genesis(&journal_id),
            signed_seq: 0,
            signed_at: Instant::now(),
            witnessed_at: None,
            next_retention: Instant::now(),
            sessions: SessionIndex::default(),
            json: Vec::with_capacity(1024),
            opts,
        };
        store.reload_tip()?;
        Ok(store)
    }

    pub fn path(&self) -> &Path {
        &self.opts.path
    }

    pub fn public_key(&self) -> [u8; 32] {
        self.public
    }

    /// Grants made by approvals, not revoked, whose window is still open at `now`: a
    /// restart keeps them. (Each with the approval that made it and who decided.)
    pub fn grants_in_force(
        &self,
        now: Timestamp,
    ) -> Result<Vec<(crate::journal::event::GrantRecord, uuid::Uuid, String)>, JournalError> {
        let db = |e: rusqlite::Error| JournalError::Database(e.into());
        let mut stmt = self
            .conn
            .prepare("SELECT record FROM records WHERE kind = 'approval_decided' ORDER BY seq")
            .map_err(db)?;
        let mut rows = stmt.query([]).map_err(db)?;
        let mut grants: Vec<(crate::journal::event::GrantRecord, uuid::Uuid, String)> = Vec::new();
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
                crate::journal::event::ApprovalOutcome::Revoked => {
                    grants.retain(|(k, _, _)| k.id != g.id)
                }
                _ => grants.push((g, approval, by)),
            }
        }
        grants.retain(|(g, _, _)| g.until > now);
        Ok(grants)
    }

    /// Approval requests on record with no outcome (decided, expired, withdrawn or
    /// abandoned): what a previous run left waiting when it stopped or was killed. Their
    /// statements never ran; the caller journals them as abandoned.
    pub fn unanswered_approvals(
        &self,
    ) -> Result<Vec<(Option<SessionId>, uuid::Uuid)>, JournalError> {
        let db = |e: rusqlite::Error| JournalError::Database(e.into());
        let mut stmt = self
            .conn
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
                } if outcome != crate::journal::event::ApprovalOutcome::Counted
                    && outcome != crate::journal::event::ApprovalOutcome::Revoked =>
                {
                    open.retain(|(_, a)| *a != approval)
                }
                Event::ApprovalExpired { approval } => open.retain(|(_, a)| *a != approval),
                _ => {}
            }
        }
        Ok(open)
    }

    /// Re-reads the newest record and checkpoint from the file: after open, and after a
    /// failed commit whose outcome is unknown.
    fn reload_tip(&mut self) -> Result<(), JournalError> {
        let tip: Option<(u64, Vec<u8>)> = self
            .conn
            .query_row(
                "SELECT seq, hash FROM records ORDER BY seq DESC LIMIT 1",
                [],
                |r| Ok((r.get(0)?, r.get(1)?)),
            )
            .optional()
            .map_err(db_err)?;
        (self.last_seq, self.last_hash) = match tip {
            Some((seq, hash)) => (
                seq,
                chain::from_blob(&hash).ok_or_else(|| {
                    JournalError::Schema(format!("record {seq} has a malformed hash"))
                })?,
            ),
            None => (0, chain::genesis(&self.journal_id)),
        };
        let signed: Option<u64> = self
            .conn
            .query_row(
                "SELECT max(m) FROM (SELECT max(seq) AS m FROM checkpoints UNION ALL SELECT max(first_seq) - 1 FROM anchors)",
                [],
                |r| r.get(0),
            )
            .map_err(db_err)?;
        self.signed_seq = signed.unwrap_or(0);
        Ok(())
    }

    fn insert_checkpoint(&self, tx: &Transaction, seq: u64, hash: &Hash) -> rusqlite::Result<()> {
        let ts_us = Timestamp::now().as_microsecond();
        let sig = signing::sign(
            &self.key,
            &signing::checkpoint_message(&self.journal_id, seq, hash, ts_us),
        );
        tx.prepare_cached(
            "INSERT OR REPLACE INTO checkpoints (seq, hash, ts_us, public_key, signature) VALUES (?1, ?2, ?3, ?4, ?5)",
        )?
        .execute(params![seq, &hash[..], ts_us, &self.public[..], &sig[..]])?;
        Ok(())
    }

    /// Writes the records and any due checkpoint in one transaction.
    fn write(
        &mut self,
        records: &[Record],
        undos: &mut Vec<Undo>,
    ) -> Result<(Hash, Option<(u64, Hash)>), JournalError> {
        let tx = self.conn.unchecked_transaction().map_err(db_err)?;
        let mut prev = self.last_hash;
        let mut signed_seq = self.signed_seq;
        let mut signed = None;
        {
            let mut insert = tx
                .prepare_cached(
                    "INSERT INTO records (seq, ts_us, kind, session, uid, user, comm, exe, resource, decision, record, prev_hash, hash)
                     VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13)",
                )
                .map_err(db_err)?;
            for r in records {
                self.json.clear();
                serde_json::to_writer(&mut self.json, r).map_err(|e| {
                    JournalError::Schema(format!("cannot encode record {}: {e}", r.seq))
                })?;
                let json = std::str::from_utf8(&self.json)
                    .map_err(|e| JournalError::Schema(e.to_string()))?;
                let hash = chain::link(&prev, json.as_bytes());
                let (c, undo) = self.sessions.derive(r);
                undos.push(undo);
                insert
                    .execute(params![
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
                    .map_err(db_err)?;
                prev = hash;
                if r.seq - signed_seq >= self.opts.checkpoint_every {
                    self.insert_checkpoint(&tx, r.seq, &hash).map_err(db_err)?;
                    signed_seq = r.seq;
                    signed = Some((r.seq, hash));
                }
            }
        }
        tx.commit().map_err(db_err)?;
        Ok((prev, signed))
    }

    /// Signs the tip if records wait unsigned for longer than the interval (or `force`).
    fn checkpoint_if_due(&mut self, force: bool) -> Result<(), JournalError> {
        if self.last_seq == self.signed_seq {
            return Ok(());
        }
        if !force && self.signed_at.elapsed() < self.opts.checkpoint_interval {
            return Ok(());
        }
        let tx = self.conn.unchecked_transaction().map_err(db_err)?;
        self.insert_checkpoint(&tx, self.last_seq, &self.last_hash)
            .map_err(db_err)?;
        tx.commit().map_err(db_err)?;
        self.mark_signed(self.last_seq, self.last_hash);
        Ok(())
    }

    fn mark_signed(&mut self, seq: u64, hash: Hash) {
        if seq != self.signed_seq {
            self.signed_seq = seq;
            self.signed_at = Instant::now();
            // A copy outside the file: shipped off the host, the daemon's log is a witness
            // of how far the journal reached (`audit verify --expect-seq`). At most one line
            // per checkpoint interval, so a busy agent does not flood its log.
            if self
                .witnessed_at
                .is_none_or(|t| t.elapsed() >= self.opts.checkpoint_interval)
            {
                self.witnessed_at = Some(Instant::now());
                tracing::info!(
                    seq,
                    hash = %chain::hex(&hash),
                    "journal checkpoint signed"
                );
            }
        }
    }

    /// Removes the oldest records when they are older than `max_age` or the file is over
    /// `max_bytes`, then journals what it removed.
    pub fn enforce_retention(&mut self) -> Result<u64, JournalError> {
        let mut removed = 0;
        if let Some(age) = self.opts.max_age {
            let cutoff = Timestamp::now().as_microsecond()
                - i64::try_from(age.as_micros()).unwrap_or(i64::MAX);
            let through: Option<u64> = self
                .conn
                .query_row(
                    "SELECT seq FROM records WHERE ts_us < ?1 ORDER BY ts_us DESC, seq DESC LIMIT 1",
                    [cutoff],
                    |r| r.get(0),
                )
                .optional()
                .map_err(db_err)?;
            if let Some(through) = through {
                removed += self.prune(through, "max_age")?;
            }
        }
        if let Some(max) = self.opts.max_bytes {
            let used = self.used_bytes()?;
            if used > max {
                let (first, last): (Option<u64>, Option<u64>) = self
                    .conn
                    .query_row("SELECT min(seq), max(seq) FROM records", [], |r| {
                        Ok((r.get(0)?, r.get(1)?))
                    })
                    .map_err(db_err)?;
                if let (Some(first), Some(last)) = (first, last) {
                    let total = last - first + 1;
                    let keep = (total as f64 * PRUNE_TARGET * max as f64 / used as f64) as u64;
                    let drop = total.saturating_sub(keep).max(1);
                    removed += self.prune(first + drop - 1, "max_size")?;
                }
            }
        }
        if removed > 0 {
            // Give the freed pages back to the file system (it returns a row per page).
            let vacuum = self
                .conn
                .prepare("PRAGMA incremental_vacuum")
                .and_then(|mut st| {
                    let mut rows = st.query([])?;
                    while rows.next()?.is_some() {}
                    Ok(())
                });
            if let Err(e) = vacuum {
                tracing::warn!(error = %e, "journal retention could not shrink the file");
            }
        }
        Ok(removed)
    }

    /// Bytes of the database in use (pages not on the free list).
    fn used_bytes(&self) -> Result<u64, JournalError> {
        let q = |p: &str| {
            self.conn
                .query_row(p, [], |r| r.get::<_, u64>(0))
                .map_err(db_err)
        };
        let pages = q("PRAGMA page_count")?;
        let free = q("PRAGMA freelist_count")?;
        Ok(pages.saturating_sub(free) * q("PRAGMA page_size")?)
    }

    /// Removes records up to `through` (never the newest one), anchoring the rest.
    fn prune(&mut self, through: u64, reason: &str) -> Result<u64, JournalError> {
        let through = through.min(self.last_seq.saturating_sub(1));
        let first: Option<u64> = self
            .conn
            .query_row("SELECT min(seq) FROM records", [], |r| r.get(0))
            .map_err(db_err)?;
        let Some(first) = first else { return Ok(0) };
        if through < first {
            return Ok(0);
        }
        let mut start = first;
        while start <= through {
            let end = (start + PRUNE_CHUNK - 1).min(through);
            let tx = self.conn.unchecked_transaction().map_err(db_err)?;
            let hash: Vec<u8> = tx
                .query_row("SELECT hash FROM records WHERE seq = ?1", [end], |r| {
                    r.get(0)
                })
                .map_err(db_err)?;
            let hash = chain::from_blob(&hash).ok_or_else(|| {
                JournalError::Schema(format!("record {end} has a malformed hash"))
            })?;
            let ts_us = Timestamp::now().as_microsecond();
            let sig = signing::sign(
                &self.key,
                &signing::anchor_message(&self.journal_id, end + 1, &hash, ts_us),
            );
            tx.execute(
                "INSERT OR REPLACE INTO anchors (first_seq, prev_hash, ts_us, public_key, signature) VALUES (?1, ?2, ?3, ?4, ?5)",
                params![end + 1, &hash[..], ts_us, &self.public[..], &sig[..]],
            )
            .map_err(db_err)?;
            tx.execute("DELETE FROM records WHERE seq <= ?1", [end])
                .map_err(db_err)?;
            tx.execute("DELETE FROM checkpoints WHERE seq <= ?1", [end])
                .map_err(db_err)?;
            tx.execute("DELETE FROM anchors WHERE first_seq <= ?1", [end])
                .map_err(db_err)?;
            tx.commit().map_err(db_err)?;
            start = end + 1;
        }
        let removed = through - first + 1;
        tracing::info!(
            through,
            removed,
            reason,
            "journal retention removed old records"
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
        Ok(removed)
    }
}

/// Reads (or creates) the journal's id and records the checkpoint policy.
fn init_meta(
    conn: &Connection,
    opts: &StoreOptions,
    public: &[u8; 32],
) -> Result<[u8; 16], JournalError> {
    let version = schema::meta(conn, schema::META_VERSION).map_err(db_err)?;
    match version {
        None => schema::set_meta(
            conn,
            schema::META_VERSION,
            &schema::SCHEMA_VERSION.to_string(),
        )
        .map_err(db_err)?,
        Some(v) if v == schema::SCHEMA_VERSION.to_string() => {}
        Some(v) => {
            return Err(JournalError::Schema(format!(
                "{} has journal schema version {v}; this agent reads version {}",
                opts.path.display(),
                schema::SCHEMA_VERSION
            )));
        }
    }
    let id = match schema::meta(conn, schema::META_JOURNAL_ID).map_err(db_err)? {
        Some(hex) => chain::unhex::<16>(&hex)
            .ok_or_else(|| JournalError::Schema(format!("malformed journal_id {hex}")))?,
        None => {
            let id = *uuid::Uuid::now_v7().as_bytes();
            schema::set_meta(conn, schema::META_JOURNAL_ID, &chain::hex(&id)).map_err(db_err)?;
            id
        }
    };
    // Verify flags gaps between checkpoints wider than this; keep the widest ever used.
    let every = schema::meta(conn, schema::META_CHECKPOINT_EVERY)
        .map_err(db_err)?
        .and_then(|v| v.parse::<u64>().ok())
        .unwrap_or(0)
        .max(opts.checkpoint_every);
    schema::set_meta(conn, schema::META_CHECKPOINT_EVERY, &every.to_string()).map_err(db_err)?;
    let public_hex = chain::hex(public);
    if let Some(old) = schema::meta(conn, schema::META_PUBLIC_KEY).map_err(db_err)?
        && old != public_hex
    {
        tracing::warn!(old, new = %public_hex, "the journal signing key changed; older checkpoints stay signed by the old key");
    }
    schema::set_meta(conn, schema::META_PUBLIC_KEY, &public_hex).map_err(db_err)?;
    Ok(id)
}

/// Mode 0640, group `read_group` when set: the agent writes, the group reads.
fn set_permissions(path: &Path, read_group: Option<u32>) -> Result<(), JournalError> {
    fs::set_permissions(path, fs::Permissions::from_mode(0o640))?;
    if let Some(gid) = read_group {
        nix::unistd::chown(path, None, Some(nix::unistd::Gid::from_raw(gid)))
            .map_err(|e| std::io::Error::from_raw_os_error(e as i32))?;
    }
    Ok(())
}

impl JournalStore for SqliteStore {
    fn last_seq(&self) -> u64 {
        self.last_seq
    }

    fn append(&mut self, records: &[Record]) -> Result<(), JournalError> {
        if records.is_empty() {
            return Ok(());
        }
        let mut undos = Vec::with_capacity(records.len());
        match self.write(records, &mut undos) {
            Ok((hash, signed)) => {
                self.last_seq = records[records.len() - 1].seq;
                self.last_hash = hash;
                if let Some((seq, hash)) = signed {
                    self.mark_signed(seq, hash);
                }
                Ok(())
            }
            Err(e) => {
                self.sessions.undo(undos.into_iter());
                if !self.conn.is_autocommit() {
                    let _ = self.conn.execute_batch("ROLLBACK");
                }
                // A failed COMMIT may still have reached the disk; continue from what is there.
                if let Err(reload) = self.reload_tip() {
                    tracing::error!(error = %reload, "cannot re-read the journal tip after a failed write");
                }
                Err(e)
            }
        }
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
        self.checkpoint_if_due(true)?;
        // Fold the WAL back so the file alone is the whole journal.
        let _ = self.conn.execute_batch("PRAGMA wal_checkpoint(TRUNCATE);");
        Ok(())
    }
}
