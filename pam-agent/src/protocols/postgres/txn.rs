//! The open transaction's writes, as the session has seen them: what a COMMIT makes
//! stand, so a rule can hold a COMMIT by what its transaction wrote and its approvers see
//! the statements with their row counts. Filled by the worker's half as statements go
//! up, completed with rows by the server's half, emptied when the server reports the
//! transaction over.

use std::collections::BTreeSet;

/// One statement of the open transaction that writes.
#[derive(Debug, Clone)]
pub struct Write {
    pub statement: u64,
    pub text: String,
    pub tables: BTreeSet<String>,
    /// From its completion (`None` until the server answered).
    pub rows: Option<u64>,
}

#[derive(Debug, Default)]
pub struct Transaction {
    writes: Vec<Write>,
}

/// Statements kept at most (a longer transaction shows its first ones, and says so).
const MAX_KEPT: usize = 256;

impl Transaction {
    pub fn wrote(&mut self, w: Write) {
        if self.writes.len() < MAX_KEPT {
            self.writes.push(w);
        }
    }

    pub fn completed(&mut self, statement: u64, rows: Option<u64>) {
        if let Some(w) = self.writes.iter_mut().find(|w| w.statement == statement) {
            w.rows = rows;
        }
    }

    /// The server reported no transaction open.
    pub fn ended(&mut self) {
        self.writes.clear();
    }

    /// Every table written so far.
    pub fn tables(&self) -> BTreeSet<String> {
        self.writes
            .iter()
            .flat_map(|w| w.tables.iter().cloned())
            .collect()
    }

    /// One line per write, for approvers.
    pub fn lines(&self) -> Vec<String> {
        let mut out: Vec<String> = self
            .writes
            .iter()
            .map(|w| match w.rows {
                Some(n) => format!("#{} {} -> {n} row(s)", w.statement, w.text),
                None => format!("#{} {}", w.statement, w.text),
            })
            .collect();
        if self.writes.len() >= MAX_KEPT {
            out.push(format!("(only the first {MAX_KEPT} writes are shown)"));
        }
        out
    }
}
