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
CREATE INDEX IF NOT EXISTS records_session  ON records (session) WHERE session IS NOT NULL;
CREATE INDEX IF NOT EXISTS records_uid      ON records (uid, ts_us) WHERE uid IS NOT NULL;
CREATE INDEX IF NOT EXISTS records_user     ON records (user, ts_us) WHERE user IS NOT NULL;
CREATE INDEX IF NOT EXISTS records_resource ON records (resource, ts_us) WHERE resource IS NOT NULL;
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
