//! A JSON-lines journal store for the session tests: one record per line, appended, so a
//! test reads what the session journaled without the agent's SQLite store (its signing
//! key, checkpoints and retention are tested on their own). Test code: panics on bad files.

use std::{
    fs::{File, OpenOptions},
    io::{BufRead, BufReader, Write},
    path::Path,
};

use pam_agent::journal::{JournalError, JournalStore, Record};

pub struct JsonlStore {
    file: File,
    last_seq: u64,
}

impl JsonlStore {
    /// Opens (or creates) the file; numbering continues after its last record.
    pub fn open(path: &Path) -> std::io::Result<Self> {
        let last_seq = if path.exists() {
            read_all(path).last().map_or(0, |r| r.seq)
        } else {
            0
        };
        let file = OpenOptions::new().append(true).create(true).open(path)?;
        Ok(JsonlStore { file, last_seq })
    }
}

impl JournalStore for JsonlStore {
    fn last_seq(&self) -> u64 {
        self.last_seq
    }

    fn append(&mut self, records: &[Record]) -> Result<(), JournalError> {
        let mut buf = Vec::new();
        for r in records {
            serde_json::to_writer(&mut buf, r).map_err(std::io::Error::other)?;
            buf.push(b'\n');
        }
        self.file.write_all(&buf)?;
        if let Some(last) = records.last() {
            self.last_seq = last.seq;
        }
        Ok(())
    }
}

/// Every record of the file, in order.
pub fn read_all(path: &Path) -> Vec<Record> {
    let file = File::open(path).expect("journal file");
    BufReader::new(file)
        .lines()
        .map(|l| l.expect("journal line"))
        .filter(|l| !l.is_empty())
        .map(|l| serde_json::from_str(&l).expect("a journal record"))
        .collect()
}
