//! The SQLite schema of the journal, documented for people in docs/journal.md. Plain
//! tables and TEXT JSON (no JSONB) so the sqlite3 CLI 3.40 in Debian 12 reads everything.

use rusqlite::{Connection, OptionalExtension};

/// Bumped when a change needs a migration; a journal with another version is refused.
pub const SCHEMA_VERSION: i64 = 1;

/// Tables and indexes. `records.record` is the canonical JSON the hash covers; every other
/// column of `records` is derived from it (and from the session's opening record) for
/// indexed queries, and `audit verify` checks that they agree.
pub const DDL: &str = "
CREATE TABLE IF NOT EXISTS meta (
    key   TEXT PRIMARY KEY,
    value TEXT NOT NULL
) STRICT;

CREATE TABLE IF NOT EXISTS records (
    seq       INTEGER PRIMARY KEY,
    ts_us     INTEGER NOT NULL,
    kind      TEXT NOT NULL,
    session   TEXT,
    uid       INTEGER,
    user      TEXT,
    comm      TEXT,
    exe       TEXT,
    resource  TEXT,
    decision  TEXT,
    record    TEXT NOT NULL,
    prev_hash BLOB NOT NULL,
    hash      BLOB NOT NULL
) STRICT;

CREATE INDEX IF NOT EXISTS records_ts       ON records (ts_us);
CREATE INDEX IF NOT EXISTS records_kind     ON records (kind, ts_us);
CREATE INDEX IF NOT EXISTS records_decision ON records (decision, ts_us) WHERE decision IS NOT NULL;
CREATE TABLE IF NOT EXISTS checkpoints (
    seq        INTEGER PRIMARY KEY,
    hash       BLOB NOT NULL,
    ts_us      INTEGER NOT NULL,
    public_key BLOB NOT NULL,
    signature  BLOB NOT NULL
) STRICT;

CREATE TABLE IF NOT EXISTS anchors (
    first_seq  INTEGER PRIMARY KEY,
    prev_hash  BLOB NOT NULL,
    ts_us      INTEGER NOT NULL,
    public_key BLOB NOT NULL,
    signature  BLOB NOT NULL
) STRICT;

CREATE VIEW IF NOT EXISTS journal AS
    SELECT seq,
           strftime('%Y-%m-%dT%H:%M:%fZ', ts_us / 1000000.0, 'unixepoch') AS time,
           kind, session, uid, user, comm, exe, resource, decision, record
    FROM records;
";

/// The indexes on sessions and principal columns. Separate from [`DDL`] because
/// changing them on a large journal takes minutes (2.5 on 10M records): the index
/// thread applies them behind the log ([`upgrade_indexes`]) rather than the agent's
/// start waiting for them. Queries are correct under the old layout too, only slower.
pub const INDEX_LAYOUT: &str = "
CREATE INDEX IF NOT EXISTS records_session_ts ON records (session, ts_us) WHERE session IS NOT NULL;
-- Who and what a record is about are indexed where they are first said: a session's
-- opening record and records outside any session. A session's later records (most of a
-- journal: statements and their completions) are found through their session, so each
-- of them costs three fewer index entries to write.
DROP INDEX IF EXISTS records_session;
DROP INDEX IF EXISTS records_uid;
DROP INDEX IF EXISTS records_user;
DROP INDEX IF EXISTS records_resource;
CREATE INDEX IF NOT EXISTS records_uid_first      ON records (uid, ts_us)
    WHERE uid IS NOT NULL AND (session IS NULL OR kind = 'session_opened');
CREATE INDEX IF NOT EXISTS records_user_first     ON records (user, ts_us)
    WHERE user IS NOT NULL AND (session IS NULL OR kind = 'session_opened');
CREATE INDEX IF NOT EXISTS records_resource_first ON records (resource, ts_us)
    WHERE resource IS NOT NULL AND (session IS NULL OR kind = 'session_opened');
";

/// Applies [`INDEX_LAYOUT`] in one transaction (readers keep the old indexes until it
/// commits). `true` when it changed anything.
pub fn upgrade_indexes(conn: &Connection) -> rusqlite::Result<bool> {
    let before = index_names(conn)?;
    conn.execute_batch(&format!("BEGIN; {INDEX_LAYOUT} COMMIT;"))
        .inspect_err(|_| {
            let _ = conn.execute_batch("ROLLBACK");
        })?;
    Ok(index_names(conn)? != before)
}

fn index_names(conn: &Connection) -> rusqlite::Result<Vec<String>> {
    let mut st =
        conn.prepare("SELECT name FROM sqlite_schema WHERE type = 'index' ORDER BY name")?;
    st.query_map([], |r| r.get(0))?.collect()
}

/// Meta keys.
pub const META_VERSION: &str = "schema_version";
pub const META_JOURNAL_ID: &str = "journal_id";
pub const META_CHECKPOINT_EVERY: &str = "checkpoint_every";
pub const META_PUBLIC_KEY: &str = "public_key";

pub fn meta(conn: &Connection, key: &str) -> rusqlite::Result<Option<String>> {
    conn.query_row("SELECT value FROM meta WHERE key = ?1", [key], |r| r.get(0))
        .optional()
}

pub fn set_meta(conn: &Connection, key: &str, value: &str) -> rusqlite::Result<()> {
    conn.execute(
        "INSERT INTO meta (key, value) VALUES (?1, ?2)
         ON CONFLICT (key) DO UPDATE SET value = excluded.value",
        [key, value],
    )?;
    Ok(())
}

/// Whether the file already holds a journal (has the `records` table).
pub fn exists(conn: &Connection) -> rusqlite::Result<bool> {
    conn.query_row(
        "SELECT count(*) FROM sqlite_schema WHERE type = 'table' AND name = 'records'",
        [],
        |r| r.get::<_, i64>(0),
    )
    .map(|n| n > 0)
}
