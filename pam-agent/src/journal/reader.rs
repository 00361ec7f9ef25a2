//! Read-only access to a journal for the `audit` commands: filtered queries over the
//! indexed columns, in sequence order. Opening read-only never creates or changes the
//! file, so a member of the journal's read group can use it.

use std::path::{Path, PathBuf};

use rusqlite::{Connection, OpenFlags, Row, ToSql, types::Value};

use super::{JournalError, Record, schema};

/// One stored row: the indexed columns and the canonical JSON.
#[derive(Debug, Clone)]
pub struct StoredRecord {
    pub seq: u64,
    pub ts_us: i64,
    pub kind: String,
    pub session: Option<String>,
    pub uid: Option<u32>,
    pub user: Option<String>,
    pub comm: Option<String>,
    pub exe: Option<String>,
    pub resource: Option<String>,
    pub decision: Option<String>,
    /// The canonical JSON the hash chain covers.
    pub json: String,
}

impl StoredRecord {
    pub const COLUMNS: &'static str =
        "seq, ts_us, kind, session, uid, user, comm, exe, resource, decision, record";

    pub fn from_row(r: &Row) -> rusqlite::Result<Self> {
        Ok(StoredRecord {
            seq: r.get(0)?,
            ts_us: r.get(1)?,
            kind: r.get(2)?,
            session: r.get(3)?,
            uid: r.get(4)?,
            user: r.get(5)?,
            comm: r.get(6)?,
            exe: r.get(7)?,
            resource: r.get(8)?,
            decision: r.get(9)?,
            json: r.get(10)?,
        })
    }

    /// The typed record; `None` when the JSON is not a record this version knows.
    pub fn record(&self) -> Option<Record> {
        serde_json::from_str(&self.json).ok()
    }
}

/// Which records a query returns. Empty filter: all of them.
#[derive(Debug, Clone, Default)]
pub struct Filter {
    pub since_us: Option<i64>,
    pub until_us: Option<i64>,
    pub uid: Option<u32>,
    /// A user name, or the name of a principal (`[[principals]]`): records of the
    /// sessions opened by that principal, and records of that user.
    pub user: Option<String>,
    /// Substring of the command name or executable path.
    pub process: Option<String>,
    pub resource: Option<String>,
    pub session: Option<String>,
    pub decision: Option<String>,
    pub kinds: Vec<String>,
    /// Substring of the record's JSON.
    pub text: Option<String>,
    /// Only records after this seq (for `tail -f`).
    pub after_seq: Option<u64>,
}

impl Filter {
    /// The WHERE clause (with `?` placeholders) and its values.
    fn sql(&self) -> (String, Vec<Value>) {
        let mut clauses: Vec<String> = Vec::new();
        let mut values: Vec<Value> = Vec::new();
        let mut add = |clause: &str, v: Value| {
            clauses.push(clause.to_owned());
            values.push(v);
        };
        if let Some(t) = self.since_us {
            add("ts_us >= ?", Value::Integer(t));
        }
        if let Some(t) = self.until_us {
            add("ts_us < ?", Value::Integer(t));
        }
        if let Some(u) = self.uid {
            add("uid = ?", Value::Integer(u.into()));
        }
        if let Some(r) = &self.resource {
            add("resource = ?", Value::Text(r.clone()));
        }
        if let Some(s) = &self.session {
            add("session = ?", Value::Text(s.clone()));
        }
        if let Some(d) = &self.decision {
            add("decision = ?", Value::Text(d.clone()));
        }
        if let Some(s) = self.after_seq {
            add("seq > ?", Value::Integer(s as i64));
        }
        if let Some(u) = &self.user {
            clauses.push(
                "(user = ? OR session IN (SELECT session FROM records WHERE kind = 'session_opened' \
                 AND json_extract(record, '$.principal.name') = ?))"
                    .into(),
            );
            values.push(Value::Text(u.clone()));
            values.push(Value::Text(u.clone()));
        }
        if let Some(p) = &self.process {
            clauses.push("(instr(comm, ?) > 0 OR instr(exe, ?) > 0)".into());
            values.push(Value::Text(p.clone()));
            values.push(Value::Text(p.clone()));
        }
        if let Some(t) = &self.text {
            clauses.push("instr(record, ?) > 0".into());
            values.push(Value::Text(t.clone()));
        }
        if !self.kinds.is_empty() {
            clauses.push(format!(
                "kind IN ({})",
                vec!["?"; self.kinds.len()].join(", ")
            ));
            values.extend(self.kinds.iter().cloned().map(Value::Text));
        }
        let sql = if clauses.is_empty() {
            String::new()
        } else {
            format!(" WHERE {}", clauses.join(" AND "))
        };
        (sql, values)
    }
}

/// `file:PATH?immutable=1`, with the characters URIs reserve escaped.
fn immutable_uri(path: &Path) -> String {
    let mut uri = String::from("file:");
    for c in path.display().to_string().chars() {
        match c {
            '%' | '?' | '#' => uri.push_str(&format!("%{:02X}", c as u32)),
            c => uri.push(c),
        }
    }
    uri.push_str("?immutable=1");
    uri
}

/// A journal opened for reading.
pub struct Reader {
    conn: Connection,
}

impl Reader {
    pub fn open(path: &Path) -> Result<Self, JournalError> {
        if !path.exists() {
            return Err(JournalError::Schema(format!(
                "{}: no such journal",
                path.display()
            )));
        }
        let flags = OpenFlags::SQLITE_OPEN_READ_ONLY | OpenFlags::SQLITE_OPEN_NO_MUTEX;
        let db = |e: rusqlite::Error| JournalError::Database(e.into());
        let mut conn = Connection::open_with_flags(path, flags).map_err(db)?;
        conn.busy_timeout(std::time::Duration::from_secs(5))
            .map_err(db)?;
        let mut found = schema::exists(&conn);
        // A reader in the journal's group cannot create the -shm file SQLite wants next to
        // a WAL database. With the agent stopped there is no -wal file (it folded it into
        // the database on close), so the file alone is the whole journal: read it as
        // immutable, which needs no -shm.
        let wal = PathBuf::from(format!("{}-wal", path.display()));
        if let Err(e) = &found
            && e.sqlite_error_code() == Some(rusqlite::ErrorCode::ReadOnly)
            && !wal.exists()
        {
            conn = Connection::open_with_flags(
                immutable_uri(path),
                flags | OpenFlags::SQLITE_OPEN_URI,
            )
            .map_err(db)?;
            found = schema::exists(&conn);
        }
        let ok = found.map_err(|e| {
            JournalError::Schema(format!("{} is not a readable journal: {e}", path.display()))
        })?;
        if !ok {
            return Err(JournalError::Schema(format!(
                "{} is not a pam-agent journal (no records table)",
                path.display()
            )));
        }
        Ok(Reader { conn })
    }

    pub fn connection(&self) -> &Connection {
        &self.conn
    }

    /// Calls `each` for every matching record in sequence order (newest `limit` when
    /// `newest_first_limit` is set, still printed oldest first) until it returns false.
    pub fn query(
        &self,
        filter: &Filter,
        limit: Option<u64>,
        mut each: impl FnMut(StoredRecord) -> bool,
    ) -> Result<(), JournalError> {
        let (clause, values) = filter.sql();
        let sql = match limit {
            Some(n) => format!(
                "SELECT * FROM (SELECT {} FROM records{clause} ORDER BY seq DESC LIMIT {n}) ORDER BY seq",
                StoredRecord::COLUMNS
            ),
            None => format!(
                "SELECT {} FROM records{clause} ORDER BY seq",
                StoredRecord::COLUMNS
            ),
        };
        let db = |e: rusqlite::Error| JournalError::Database(e.into());
        let mut stmt = self.conn.prepare(&sql).map_err(db)?;
        let params: Vec<&dyn ToSql> = values.iter().map(|v| v as &dyn ToSql).collect();
        let mut rows = stmt.query(params.as_slice()).map_err(db)?;
        while let Some(row) = rows.next().map_err(db)? {
            if !each(StoredRecord::from_row(row).map_err(db)?) {
                break;
            }
        }
        Ok(())
    }

    /// The journal's meta value for `key`.
    pub fn meta(&self, key: &str) -> Result<Option<String>, JournalError> {
        schema::meta(&self.conn, key).map_err(|e| JournalError::Database(e.into()))
    }
}
