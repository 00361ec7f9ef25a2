//! Format v1 → v2: a v1 journal (records, checkpoints and anchors in SQLite) becomes the
//! first segment of a v2 journal, record by record as stored (same JSON, same
//! `prev_hash` and `hash`: the chain formula did not change), its checkpoints and anchors
//! as signed frames. The SQLite file stays where it is and becomes the v2 index, so
//! nothing is re-signed and `audit verify --trusted-key` still pins the old key.

use std::{
    fs::{self, OpenOptions},
    io::Write,
    os::unix::fs::OpenOptionsExt,
    path::Path,
    sync::Arc,
};

use rusqlite::{Connection, OpenFlags};

use super::{
    JournalError,
    chain::{self, Hash},
    log::set_mode,
    schema,
    segment::{self, Header, Signed},
};

fn db(e: rusqlite::Error) -> JournalError {
    JournalError::Database(Arc::new(e))
}

fn bad(m: String) -> JournalError {
    JournalError::Schema(m)
}

fn signed_rows(conn: &Connection, sql: &str) -> Result<Vec<Signed>, JournalError> {
    let mut st = conn.prepare(sql).map_err(db)?;
    let rows = st
        .query_map([], |r| {
            Ok((
                r.get::<_, u64>(0)?,
                r.get::<_, Vec<u8>>(1)?,
                r.get::<_, i64>(2)?,
                r.get::<_, Vec<u8>>(3)?,
                r.get::<_, Vec<u8>>(4)?,
            ))
        })
        .map_err(db)?;
    let mut out = Vec::new();
    for row in rows {
        let (seq, hash, ts_us, key, sig) = row.map_err(db)?;
        out.push(Signed {
            seq,
            hash: hash
                .try_into()
                .map_err(|_| bad(format!("signed row {seq}: malformed hash")))?,
            ts_us,
            public_key: key
                .try_into()
                .map_err(|_| bad(format!("signed row {seq}: malformed key")))?,
            signature: sig
                .try_into()
                .map_err(|_| bad(format!("signed row {seq}: malformed signature")))?,
        });
    }
    Ok(out)
}

/// Writes the v1 journal at `path` as the first segment in `dir`; returns its id.
pub fn v1_to_segments(
    path: &Path,
    dir: &Path,
    read_group: Option<u32>,
) -> Result<[u8; 16], JournalError> {
    let conn = Connection::open_with_flags(path, OpenFlags::SQLITE_OPEN_READ_WRITE).map_err(db)?;
    let id_hex = schema::meta(&conn, schema::META_JOURNAL_ID)
        .map_err(db)?
        .unwrap_or_default();
    let journal_id = chain::unhex::<16>(&id_hex)
        .ok_or_else(|| bad(format!("{}: malformed journal_id", path.display())))?;
    let every = schema::meta(&conn, schema::META_CHECKPOINT_EVERY)
        .map_err(db)?
        .and_then(|v| v.parse().ok())
        .unwrap_or(0);
    let first: Option<u64> = conn
        .query_row("SELECT min(seq) FROM records", [], |r| r.get(0))
        .map_err(db)?;
    let first = first.unwrap_or(1);
    let anchors = signed_rows(
        &conn,
        "SELECT first_seq, prev_hash, ts_us, public_key, signature FROM anchors ORDER BY first_seq",
    )?;
    let checkpoints = signed_rows(
        &conn,
        "SELECT seq, hash, ts_us, public_key, signature FROM checkpoints ORDER BY seq",
    )?;
    let prev_hash: Hash = anchors
        .iter()
        .find(|a| a.seq == first)
        .map(|a| a.hash)
        .unwrap_or_else(|| chain::genesis(&journal_id));
    let mut buf = Vec::new();
    Header {
        journal_id,
        first_seq: first,
        checkpoint_every: every,
        prev_hash,
    }
    .encode(&mut buf);
    for a in &anchors {
        segment::encode_anchor(&mut buf, a);
    }
    // Checkpoints of records retention removed are not carried over.
    let mut cps = checkpoints.iter().filter(|c| c.seq >= first).peekable();
    let mut st = conn
        .prepare("SELECT seq, record, prev_hash, hash FROM records ORDER BY seq")
        .map_err(db)?;
    let mut rows = st.query([]).map_err(db)?;
    while let Some(r) = rows.next().map_err(db)? {
        let seq: u64 = r.get(0).map_err(db)?;
        let json: String = r.get(1).map_err(db)?;
        let prev: Vec<u8> = r.get(2).map_err(db)?;
        let hash: Vec<u8> = r.get(3).map_err(db)?;
        let (Some(prev), Some(hash)) = (chain::from_blob(&prev), chain::from_blob(&hash)) else {
            return Err(bad(format!("record {seq}: malformed hash")));
        };
        segment::encode_record(&mut buf, &prev, json.as_bytes(), &hash);
        while let Some(c) = cps.next_if(|c| c.seq <= seq) {
            segment::encode_checkpoint(&mut buf, c);
        }
    }
    if let Some(c) = cps.next() {
        return Err(bad(format!(
            "{}: a checkpoint signs seq {} beyond the last record: the v1 journal looks \
             truncated; run `pam-agent audit verify` on it before migrating",
            path.display(),
            c.seq
        )));
    }
    drop(rows);
    drop(st);
    // Written aside, then renamed: a crash leaves either no segment or the whole one.
    let name = segment::file_name(first);
    let tmp = dir.join(format!("{name}.migrating"));
    let _ = fs::remove_file(&tmp);
    let mut f = OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o640)
        .open(&tmp)?;
    f.write_all(&buf)?;
    f.sync_all()?;
    set_mode(&tmp, 0o640, read_group)?;
    fs::rename(&tmp, dir.join(&name))?;
    fs::File::open(dir)?.sync_all()?;
    schema::set_meta(&conn, schema::META_VERSION, "2").map_err(db)?;
    Ok(journal_id)
}
