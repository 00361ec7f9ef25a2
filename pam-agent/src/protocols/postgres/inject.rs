//! What the worker's half sends the server on its own on a masked session, between the
//! worker's groups, so the server's half can plan every result: the column-name preload
//! and a COPY's describe. Extended protocol with a named statement and portal, so the
//! worker's unnamed ones survive; the server's half swallows every answer.

use std::time::{Duration, Instant};

use super::masking::CopyTextOptions;
use super::{
    notes::{Catalog, Injected},
    sql::CopyOut,
    wire::frontend,
};

/// Column names are reloaded at least this often on a masked session, so columns other
/// sessions add or rename are followed (tables they create are caught by the horizon).
const PRELOAD_MAX_AGE: Duration = Duration::from_secs(60);

/// When the column names must be loaded again.
#[derive(Debug)]
pub struct Preload {
    /// The catalog query naming every column a masking rule can name.
    sql: String,
    /// The statement and portal it runs as (reserved, per session).
    name: String,
    loaded_at: Option<Instant>,
    /// DDL was sent since the last transaction statement.
    ddl_in_txn: bool,
}

impl Preload {
    pub fn new(sql: String, name: String) -> Preload {
        Preload {
            sql,
            name,
            loaded_at: None,
            ddl_in_txn: false,
        }
    }

    /// Whether a preload is due before a message with this tag, given that the server's
    /// half asked for one (`stale`). Only messages that start work count.
    pub fn due(&self, tag: u8, stale: bool) -> bool {
        let starts_work = matches!(
            tag,
            frontend::QUERY
                | frontend::PARSE
                | frontend::BIND
                | frontend::DESCRIBE
                | frontend::EXECUTE
                | frontend::FUNCTION_CALL
        );
        let old = self
            .loaded_at
            .is_some_and(|t| t.elapsed() > PRELOAD_MAX_AGE);
        starts_work && (stale || old)
    }

    /// The group to send now (and the note that announces it).
    pub fn group(&mut self) -> (Injected, Vec<u8>) {
        self.loaded_at = Some(Instant::now());
        let mut bytes = Vec::with_capacity(self.sql.len() + 128);
        for f in [
            frontend::parse_message(&self.name, &self.sql),
            frontend::bind_message(&self.name, &self.name),
            frontend::execute_message(&self.name),
            frontend::close_portal(&self.name),
            frontend::close_statement(&self.name),
            frontend::sync(),
        ] {
            bytes.extend_from_slice(&f.raw);
        }
        (Injected::Preload, bytes)
    }

    /// Whether a forwarded statement makes the column names stale: DDL, and the end of
    /// a transaction that had DDL.
    pub fn stale_after(&mut self, catalog: Catalog) -> bool {
        match catalog {
            Catalog::Ddl => {
                self.ddl_in_txn = true;
                true
            }
            Catalog::Transaction if self.ddl_in_txn => {
                self.ddl_in_txn = false;
                true
            }
            _ => false,
        }
    }
}

/// A describe of the columns of a COPY TO STDOUT about to run, so the server's half can
/// plan its rows. `name`: the session's reserved statement name.
pub fn copy_describe(copy: CopyOut, name: &str) -> (Injected, Vec<u8>) {
    let mut bytes = Vec::with_capacity(copy.describe.len() + 64);
    for f in [
        frontend::parse_message(name, &copy.describe),
        frontend::describe_statement(name),
        frontend::close_statement(name),
        frontend::sync(),
    ] {
        bytes.extend_from_slice(&f.raw);
    }
    let options = CopyTextOptions {
        delimiter: copy.delimiter,
        null: copy.null.into_bytes(),
        whole_table: copy.whole_table,
    };
    (Injected::CopyDescribe(options), bytes)
}
