//! The indexed columns of a stored record, derived from the record itself and, for
//! records inside a session, from the session's opening record (so "everything alice
//! did" is one index lookup). The writer and `audit verify` derive them the same way.

use std::collections::HashMap;

use super::{Event, Record, SessionId};

/// Who and what a session is about, remembered from its `session_opened` record.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct SessionInfo {
    pub uid: Option<u32>,
    pub user: Option<String>,
    pub comm: Option<String>,
    pub exe: Option<String>,
    pub resource: Option<String>,
}

/// The derived columns of one record.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Columns {
    pub ts_us: i64,
    pub kind: &'static str,
    pub session: Option<String>,
    pub info: SessionInfo,
    pub decision: Option<&'static str>,
}

/// Open sessions, so later records of a session get its principal and resource.
#[derive(Debug, Default)]
pub struct SessionIndex {
    open: HashMap<SessionId, SessionInfo>,
}

/// How to take back what [`SessionIndex::derive`] changed, when the write fails.
pub enum Undo {
    Nothing,
    Remove(SessionId),
    Restore(SessionId, SessionInfo),
}

impl SessionIndex {
    /// Derives the columns of `record` and updates the index (an opening record adds the
    /// session, a closing one removes it).
    pub fn derive(&mut self, record: &Record) -> (Columns, Undo) {
        let mut undo = Undo::Nothing;
        let info = match (&record.event, record.session) {
            (
                Event::SessionOpened {
                    principal,
                    resource,
                    ..
                },
                session,
            ) => {
                let info = SessionInfo {
                    uid: Some(principal.uid),
                    user: principal.user.clone(),
                    comm: Some(principal.comm.clone()),
                    exe: principal.exe.clone(),
                    resource: Some(resource.name.clone()),
                };
                if let Some(s) = session {
                    undo = match self.open.insert(s, info.clone()) {
                        Some(old) => Undo::Restore(s, old),
                        None => Undo::Remove(s),
                    };
                }
                info
            }
            (Event::SessionClosed { .. }, Some(s)) => match self.open.remove(&s) {
                Some(info) => {
                    undo = Undo::Restore(s, info.clone());
                    info
                }
                None => SessionInfo::default(),
            },
            (_, Some(s)) => self.open.get(&s).cloned().unwrap_or_default(),
            (_, None) => SessionInfo::default(),
        };
        let cols = Columns {
            ts_us: record.ts.as_microsecond(),
            kind: record.event.kind(),
            session: record.session.map(|s| s.to_string()),
            info,
            decision: record.event.decision(),
        };
        (cols, undo)
    }

    /// Takes back changes, newest first.
    pub fn undo(&mut self, undos: impl DoubleEndedIterator<Item = Undo>) {
        for u in undos.rev() {
            match u {
                Undo::Nothing => {}
                Undo::Remove(s) => {
                    self.open.remove(&s);
                }
                Undo::Restore(s, info) => {
                    self.open.insert(s, info);
                }
            }
        }
    }

    /// Remembers a session opened before the records being derived (read back from the
    /// index when the writer starts in the middle of the journal).
    pub fn remember(&mut self, session: SessionId, info: SessionInfo) {
        self.open.insert(session, info);
    }

    /// Whether the index knows `session` (it does not for sessions opened before the
    /// oldest record retention kept).
    pub fn knows(&self, session: &SessionId) -> bool {
        self.open.contains_key(session)
    }
}
