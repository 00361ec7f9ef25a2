//! Read-only access to a journal for the `audit` commands: filtered queries over the
//! indexed columns, in sequence order. Opening read-only never creates or changes the
//! file, so a member of the journal's read group can use it.

use std::path::{Path, PathBuf};

use rusqlite::{Connection, OpenFlags, OptionalExtension, Row, ToSql, types::Value};

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

/// The partial indexes' condition on principal columns (schema.rs): repeated word for
/// word in queries, which is how SQLite knows it may use them.
const FIRST: &str = "(session IS NULL OR kind = 'session_opened')";

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
    /// Whether a record matches (for the log's records the index does not hold yet).
    pub fn matches(&self, r: &StoredRecord) -> bool {
        let has =
            |hay: &Option<String>, needle: &str| hay.as_deref().is_some_and(|h| h.contains(needle));
        self.since_us.is_none_or(|t| r.ts_us >= t)
            && self.until_us.is_none_or(|t| r.ts_us < t)
            && self.uid.is_none_or(|u| r.uid == Some(u))
            && self
                .user
                .as_ref()
                .is_none_or(|u| r.user.as_ref() == Some(u))
            && self
                .resource
                .as_ref()
                .is_none_or(|x| r.resource.as_ref() == Some(x))
            && self
                .session
                .as_ref()
                .is_none_or(|x| r.session.as_ref() == Some(x))
            && self
                .decision
                .as_ref()
                .is_none_or(|x| r.decision.as_ref() == Some(x))
            && self.after_seq.is_none_or(|s| r.seq > s)
            && self
                .process
                .as_ref()
                .is_none_or(|p| has(&r.comm, p) || has(&r.exe, p))
            && self
                .text
                .as_ref()
                .is_none_or(|t| r.json.contains(t.as_str()))
            && (self.kinds.is_empty() || self.kinds.contains(&r.kind))
    }

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
        if let Some(s) = &self.session {
            add("session = ?", Value::Text(s.clone()));
        }
        if let Some(d) = &self.decision {
            add("decision = ?", Value::Text(d.clone()));
        }
        if let Some(s) = self.after_seq {
            add("seq > ?", Value::Integer(s as i64));
        }
        // A principal column is indexed only where it is first said (see schema.rs):
        // records outside sessions carry it, a session's records are found through the
        // session that said it.
        let first = |column: &str| {
            format!(
                "(({column} = ? AND {FIRST}) OR session IN \
                 (SELECT session FROM records WHERE {column} = ? AND {FIRST} AND kind = 'session_opened'))"
            )
        };
        if let Some(u) = self.uid {
            clauses.push(first("uid"));
            values.extend([Value::Integer(u.into()), Value::Integer(u.into())]);
        }
        if let Some(r) = &self.resource {
            clauses.push(first("resource"));
            values.extend([Value::Text(r.clone()), Value::Text(r.clone())]);
        }
        if let Some(u) = &self.user {
            clauses.push(format!(
                "(((user = ? AND {FIRST}) OR session IN \
                 (SELECT session FROM records WHERE user = ? AND {FIRST} AND kind = 'session_opened')) \
                 OR session IN (SELECT session FROM records WHERE kind = 'session_opened' \
                 AND json_extract(record, '$.principal.name') = ?))"
            ));
            values.extend([0, 1, 2].map(|_| Value::Text(u.clone())));
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
    /// Format 2: the segment directory (the log); the database is its index.
    segments: Option<PathBuf>,
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
        let dir = super::segment::dir_of(path);
        let segments = dir.is_dir().then_some(dir);
        Ok(Reader { conn, segments })
    }

    pub fn connection(&self) -> &Connection {
        &self.conn
    }

    /// The segment directory of a format 2 journal.
    pub fn segments(&self) -> Option<&Path> {
        self.segments.as_deref()
    }

    /// The newest seq in the journal (the log's, for format 2).
    pub fn last_seq(&self) -> Result<Option<u64>, JournalError> {
        let db = |e: rusqlite::Error| JournalError::Database(e.into());
        let indexed: Option<u64> = self
            .conn
            .query_row("SELECT max(seq) FROM records", [], |r| r.get(0))
            .map_err(db)?;
        let tail = self.tail(indexed.unwrap_or(0))?;
        Ok(tail.last().map(|r| r.seq).or(indexed))
    }

    /// Format 2: the log's records after `after` (those the index does not hold yet),
    /// with their columns derived as the index would.
    fn tail(&self, after: u64) -> Result<Vec<StoredRecord>, JournalError> {
        use super::segment::{self, Frame};
        let Some(dir) = &self.segments else {
            return Ok(Vec::new());
        };
        let segments = segment::list(dir)?;
        let start = segments
            .iter()
            .rposition(|(first, _)| *first <= after + 1)
            .unwrap_or(0);
        let mut sessions = super::index::SessionIndex::default();
        let mut out = Vec::new();
        let mut expect = after + 1;
        'segments: for (_, path) in &segments[start..] {
            let bytes = std::fs::read(path)?;
            for (_, frame) in segment::Frames::new(&bytes) {
                let Frame::Record { json, .. } = frame else {
                    continue;
                };
                let Some(seq) = segment::seq_of(json) else {
                    break 'segments;
                };
                if seq < expect {
                    continue;
                }
                if seq != expect {
                    break 'segments;
                }
                expect += 1;
                let text = String::from_utf8_lossy(json).into_owned();
                out.push(self.stored_from_log(seq, text, &mut sessions)?);
            }
        }
        Ok(out)
    }

    fn stored_from_log(
        &self,
        seq: u64,
        json: String,
        sessions: &mut super::index::SessionIndex,
    ) -> Result<StoredRecord, JournalError> {
        let Ok(record) = serde_json::from_str::<Record>(&json) else {
            let v: serde_json::Value = serde_json::from_str(&json).unwrap_or_default();
            return Ok(StoredRecord {
                seq,
                ts_us: v["ts"]
                    .as_str()
                    .and_then(|t| t.parse::<jiff::Timestamp>().ok())
                    .map_or(0, |t| t.as_microsecond()),
                kind: v["kind"].as_str().unwrap_or("unknown").to_owned(),
                session: v["session"].as_str().map(str::to_owned),
                uid: None,
                user: None,
                comm: None,
                exe: None,
                resource: None,
                decision: None,
                json,
            });
        };
        if let Some(s) = record.session
            && !sessions.knows(&s)
            && !matches!(record.event, super::Event::SessionOpened { .. })
        {
            let info = self
                .conn
                .query_row(
                    "SELECT uid, user, comm, exe, resource FROM records WHERE session = ?1 AND kind = 'session_opened' LIMIT 1",
                    [s.to_string()],
                    |r| {
                        Ok(super::index::SessionInfo {
                            uid: r.get(0)?,
                            user: r.get(1)?,
                            comm: r.get(2)?,
                            exe: r.get(3)?,
                            resource: r.get(4)?,
                        })
                    },
                )
                .optional()
                .map_err(|e| JournalError::Database(e.into()))?;
            if let Some(info) = info {
                sessions.remember(s, info);
            }
        }
        let (c, _) = sessions.derive(&record);
        Ok(StoredRecord {
            seq,
            ts_us: c.ts_us,
            kind: c.kind.to_owned(),
            session: c.session,
            uid: c.info.uid,
            user: c.info.user,
            comm: c.info.comm,
            exe: c.info.exe,
            resource: c.info.resource,
            decision: c.decision.map(str::to_owned),
            json,
        })
    }

    /// Calls `each` for every matching record in sequence order (newest `limit` when
    /// `newest_first_limit` is set, still printed oldest first) until it returns false.
    pub fn query(
        &self,
        filter: &Filter,
        limit: Option<u64>,
        mut each: impl FnMut(StoredRecord) -> bool,
    ) -> Result<(), JournalError> {
        let db = |e: rusqlite::Error| JournalError::Database(e.into());
        let (mut clause, mut values) = filter.sql();
        // Format 2: the index up to its tip, then the log after it (read in that order,
        // so a record the index takes meanwhile is not read twice).
        let indexed: Option<u64> = if self.segments.is_some() {
            let tip: Option<u64> = self
                .conn
                .query_row("SELECT max(seq) FROM records", [], |r| r.get(0))
                .map_err(db)?;
            let tip = tip.unwrap_or(0);
            clause = if clause.is_empty() {
                " WHERE seq <= ?".into()
            } else {
                format!("{clause} AND seq <= ?")
            };
            values.push(Value::Integer(tip as i64));
            Some(tip)
        } else {
            None
        };
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
        let tail: Vec<StoredRecord> = match indexed {
            Some(tip) => self
                .tail(tip)?
                .into_iter()
                .filter(|r| filter.matches(r))
                .collect(),
            None => Vec::new(),
        };
        let mut stmt = self.conn.prepare(&sql).map_err(db)?;
        let params: Vec<&dyn ToSql> = values.iter().map(|v| v as &dyn ToSql).collect();
        let mut rows = stmt.query(params.as_slice()).map_err(db)?;
        // With a limit, the newest `n` of both parts.
        if let Some(n) = limit
            && !tail.is_empty()
        {
            let mut from_index = Vec::new();
            while let Some(row) = rows.next().map_err(db)? {
                from_index.push(StoredRecord::from_row(row).map_err(db)?);
            }
            let skip = (from_index.len() + tail.len()).saturating_sub(n as usize);
            for r in from_index.into_iter().chain(tail).skip(skip) {
                if !each(r) {
                    break;
                }
            }
            return Ok(());
        }
        while let Some(row) = rows.next().map_err(db)? {
            if !each(StoredRecord::from_row(row).map_err(db)?) {
                return Ok(());
            }
        }
        for r in tail {
            if !each(r) {
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

#[cfg(test)]
mod tests {
    use super::*;

    /// SQLite's plan for a filter's query, one line per step.
    fn plan(filter: &Filter) -> Vec<String> {
        let conn = Connection::open_in_memory().unwrap();
        conn.execute_batch(schema::DDL).unwrap();
        assert!(schema::upgrade_indexes(&conn).unwrap());
        assert!(!schema::upgrade_indexes(&conn).unwrap());
        let (clause, values) = filter.sql();
        let sql = format!(
            "EXPLAIN QUERY PLAN SELECT {} FROM records{clause} ORDER BY seq",
            StoredRecord::COLUMNS
        );
        let mut st = conn.prepare(&sql).unwrap();
        st.query_map(rusqlite::params_from_iter(values), |r| {
            r.get::<_, String>(3)
        })
        .unwrap()
        .collect::<Result<_, _>>()
        .unwrap()
    }

    /// A principal's records are found through indexes, on any journal size: the
    /// partial indexes are usable only if the query repeats their condition, so a
    /// wording change here would silently turn every such query into a full scan.
    #[test]
    fn principal_and_resource_queries_never_scan_the_whole_journal() {
        let day = |f: Filter| Filter {
            since_us: Some(1),
            until_us: Some(2),
            ..f
        };
        let filters = [
            day(Filter {
                user: Some("alice".into()),
                ..Default::default()
            }),
            day(Filter {
                uid: Some(1001),
                ..Default::default()
            }),
            day(Filter {
                resource: Some("orders-db".into()),
                ..Default::default()
            }),
            Filter {
                uid: Some(1001),
                resource: Some("orders-db".into()),
                ..Default::default()
            },
        ];
        for f in filters {
            let plan = plan(&f);
            let scans: Vec<_> = plan
                .iter()
                .filter(|l| l.starts_with("SCAN records") && !l.contains("INDEX"))
                .collect();
            assert!(scans.is_empty(), "{f:?} scans the journal: {plan:#?}");
            assert!(
                plan.iter().any(|l| l.contains("_first")),
                "{f:?} does not use a principal index: {plan:#?}"
            );
        }
        // Control: a filter the indexes cannot serve is a scan, as the check would see.
        let plan = plan(&Filter {
            text: Some("x".into()),
            ..Default::default()
        });
        assert!(
            plan.iter().any(|l| l.starts_with("SCAN records")),
            "{plan:#?}"
        );
    }
    /// The seqs a filter selects on `conn`.
    fn seqs(conn: &Connection, filter: &Filter) -> Vec<i64> {
        let (clause, values) = filter.sql();
        let mut st = conn
            .prepare(&format!("SELECT seq FROM records{clause} ORDER BY seq"))
            .unwrap();
        st.query_map(rusqlite::params_from_iter(values), |r| r.get(0))
            .unwrap()
            .collect::<Result<_, _>>()
            .unwrap()
    }

    fn index_names(conn: &Connection) -> Vec<String> {
        let mut st = conn
            .prepare("SELECT name FROM sqlite_schema WHERE type = 'index' AND name LIKE 'records%' ORDER BY name")
            .unwrap();
        st.query_map([], |r| r.get(0))
            .unwrap()
            .collect::<Result<_, _>>()
            .unwrap()
    }

    /// A journal indexed by an earlier version answers the same before and after the
    /// index thread moves it to this layout, and the same as a plain comparison of the
    /// derived columns (every record of a session carries its principal's columns).
    #[test]
    fn the_index_layout_upgrade_keeps_every_answer() {
        let conn = Connection::open_in_memory().unwrap();
        conn.execute_batch(schema::DDL).unwrap();
        conn.execute_batch(
            "CREATE INDEX records_session  ON records (session) WHERE session IS NOT NULL;
             CREATE INDEX records_uid      ON records (uid, ts_us) WHERE uid IS NOT NULL;
             CREATE INDEX records_user     ON records (user, ts_us) WHERE user IS NOT NULL;
             CREATE INDEX records_resource ON records (resource, ts_us) WHERE resource IS NOT NULL;",
        )
        .unwrap();
        // (kind, session, uid, user, resource): two sessions, records outside sessions.
        type Row<'a> = (
            &'a str,
            Option<&'a str>,
            Option<u32>,
            Option<&'a str>,
            Option<&'a str>,
        );
        let rows: &[Row] = &[
            ("agent_started", None, None, None, None),
            (
                "session_opened",
                Some("a"),
                Some(1001),
                Some("alice"),
                Some("orders-db"),
            ),
            (
                "statement",
                Some("a"),
                Some(1001),
                Some("alice"),
                Some("orders-db"),
            ),
            (
                "session_opened",
                Some("b"),
                Some(1002),
                Some("bob"),
                Some("crm-db"),
            ),
            (
                "statement",
                Some("b"),
                Some(1002),
                Some("bob"),
                Some("crm-db"),
            ),
            (
                "connection_refused",
                None,
                Some(1001),
                Some("alice"),
                Some("crm-db"),
            ),
            (
                "statement_completed",
                Some("a"),
                Some(1001),
                Some("alice"),
                Some("orders-db"),
            ),
            (
                "session_closed",
                Some("b"),
                Some(1002),
                Some("bob"),
                Some("crm-db"),
            ),
            (
                "session_closed",
                Some("a"),
                Some(1001),
                Some("alice"),
                Some("orders-db"),
            ),
        ];
        for (i, (kind, session, uid, user, resource)) in rows.iter().enumerate() {
            conn.execute(
                "INSERT INTO records (seq, ts_us, kind, session, uid, user, resource, record, prev_hash, hash)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, '{}', x'00', x'00')",
                rusqlite::params![i as i64 + 1, 1000 + i as i64, kind, session, uid, user, resource],
            )
            .unwrap();
        }
        let filters = [
            Filter {
                user: Some("alice".into()),
                ..Default::default()
            },
            Filter {
                uid: Some(1002),
                ..Default::default()
            },
            Filter {
                resource: Some("crm-db".into()),
                ..Default::default()
            },
            Filter {
                user: Some("alice".into()),
                since_us: Some(1002),
                until_us: Some(1007),
                ..Default::default()
            },
        ];
        let plain = |f: &Filter| -> Vec<i64> {
            let (column, value) = match (&f.user, f.uid, &f.resource) {
                (Some(u), _, _) => ("user", rusqlite::types::Value::Text(u.clone())),
                (_, Some(u), _) => ("uid", rusqlite::types::Value::Integer(u.into())),
                (_, _, Some(r)) => ("resource", rusqlite::types::Value::Text(r.clone())),
                _ => unreachable!(),
            };
            let mut st = conn
                .prepare(&format!(
                    "SELECT seq FROM records WHERE {column} = ?1 AND ts_us >= ?2 AND ts_us < ?3 ORDER BY seq"
                ))
                .unwrap();
            st.query_map(
                rusqlite::params![
                    value,
                    f.since_us.unwrap_or(0),
                    f.until_us.unwrap_or(i64::MAX)
                ],
                |r| r.get(0),
            )
            .unwrap()
            .collect::<Result<_, _>>()
            .unwrap()
        };
        let expected: Vec<Vec<i64>> = filters.iter().map(plain).collect();
        assert_eq!(expected[0], vec![2, 3, 6, 7, 9]);
        assert_eq!(expected[3], vec![3, 6, 7]);
        let before: Vec<Vec<i64>> = filters.iter().map(|f| seqs(&conn, f)).collect();
        assert_eq!(before, expected, "old layout");
        assert!(schema::upgrade_indexes(&conn).unwrap());
        let after: Vec<Vec<i64>> = filters.iter().map(|f| seqs(&conn, f)).collect();
        assert_eq!(after, expected, "new layout");
        assert_eq!(
            index_names(&conn),
            [
                "records_decision",
                "records_kind",
                "records_resource_first",
                "records_session_ts",
                "records_ts",
                "records_uid_first",
                "records_user_first"
            ]
        );
    }
}
