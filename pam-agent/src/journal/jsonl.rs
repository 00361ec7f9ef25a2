//! JSON-lines journal store: one [`Record`] per line, appended, fsynced per group.
//!
//! On open, a torn last line (the agent died mid-write) is cut off so the file again ends
//! with a whole record, and numbering continues after the last whole one.

use std::{
    fs::{self, File, OpenOptions},
    io::{BufRead, BufReader, Seek, SeekFrom, Write},
    os::unix::fs::OpenOptionsExt,
    path::{Path, PathBuf},
};

use super::{JournalError, JournalStore, Record};

pub struct JsonlStore {
    path: PathBuf,
    file: File,
    fsync: bool,
    last_seq: u64,
    buf: Vec<u8>,
}

impl JsonlStore {
    pub fn open(path: &Path, fsync: bool) -> Result<Self, JournalError> {
        if let Some(dir) = path.parent()
            && !dir.as_os_str().is_empty()
        {
            fs::create_dir_all(dir)?;
        }
        let mut file = OpenOptions::new()
            .read(true)
            .append(true)
            .create(true)
            .mode(0o640)
            .open(path)?;
        let (last_seq, whole_len) = scan(path, &file)?;
        let len = file.metadata()?.len();
        if whole_len < len {
            tracing::warn!(
                path = %path.display(),
                cut = len - whole_len,
                "journal ended with a partial record; truncating it"
            );
            file.set_len(whole_len)?;
            file.sync_all()?;
        }
        file.seek(SeekFrom::End(0))?;
        Ok(JsonlStore {
            path: path.to_owned(),
            file,
            fsync,
            last_seq,
            buf: Vec::with_capacity(64 * 1024),
        })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }
}

/// Returns the last sequence number and the byte length of the whole lines.
fn scan(path: &Path, file: &File) -> Result<(u64, u64), JournalError> {
    let mut reader = BufReader::new(file.try_clone()?);
    reader.seek(SeekFrom::Start(0))?;
    let mut last_seq = 0;
    let mut whole = 0u64;
    let mut line = Vec::new();
    let mut n = 0usize;
    loop {
        line.clear();
        let read = reader.read_until(b'\n', &mut line)?;
        if read == 0 {
            break;
        }
        n += 1;
        if line.last() != Some(&b'\n') {
            break; // torn tail
        }
        let rec: Record = serde_json::from_slice(&line).map_err(|e| JournalError::Corrupt {
            path: path.display().to_string(),
            line: n,
            reason: e.to_string(),
        })?;
        last_seq = rec.seq;
        whole += read as u64;
    }
    Ok((last_seq, whole))
}

impl JournalStore for JsonlStore {
    fn last_seq(&self) -> u64 {
        self.last_seq
    }

    fn append(&mut self, records: &[Record]) -> Result<(), JournalError> {
        self.buf.clear();
        for r in records {
            serde_json::to_writer(&mut self.buf, r).map_err(std::io::Error::other)?;
            self.buf.push(b'\n');
        }
        let before = self.file.metadata()?.len();
        let result = self.file.write_all(&self.buf).and_then(|()| {
            if self.fsync {
                self.file.sync_data()
            } else {
                Ok(())
            }
        });
        if let Err(e) = result {
            // Take back a partial write so the file still ends with a whole record.
            let _ = self.file.set_len(before);
            return Err(e.into());
        }
        if let Some(last) = records.last() {
            self.last_seq = last.seq;
        }
        Ok(())
    }
}

/// Reads every record of a JSON-lines journal (for the CLI and tests).
pub fn read_all(path: &Path) -> Result<Vec<Record>, JournalError> {
    let file = File::open(path)?;
    let mut out = Vec::new();
    for (i, line) in BufReader::new(file).lines().enumerate() {
        let line = line?;
        if line.is_empty() {
            continue;
        }
        out.push(
            serde_json::from_str(&line).map_err(|e| JournalError::Corrupt {
                path: path.display().to_string(),
                line: i + 1,
                reason: e.to_string(),
            })?,
        );
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::journal::{Event, Journal};

    fn stopped(reason: &str) -> Event {
        Event::AgentStopped {
            reason: reason.into(),
        }
    }

    #[test]
    fn numbers_continue_across_reopen_and_torn_tail_is_cut() {
        let dir = std::env::temp_dir().join(format!("pam-jsonl-{}", std::process::id()));
        let _ = fs::remove_dir_all(&dir);
        let path = dir.join("j.jsonl");
        {
            let (j, h) = Journal::start(JsonlStore::open(&path, true).unwrap());
            assert_eq!(j.record_blocking(None, stopped("a")).unwrap(), 1);
            assert_eq!(j.record_blocking(None, stopped("b")).unwrap(), 2);
            drop(j);
            h.join().unwrap();
        }
        // Simulate a crash mid-write.
        let mut f = OpenOptions::new().append(true).open(&path).unwrap();
        f.write_all(b"{\"seq\":3,\"ts\":\"20").unwrap();
        drop(f);
        {
            let (j, h) = Journal::start(JsonlStore::open(&path, true).unwrap());
            assert_eq!(j.record_blocking(None, stopped("c")).unwrap(), 3);
            drop(j);
            h.join().unwrap();
        }
        let all = read_all(&path).unwrap();
        assert_eq!(all.iter().map(|r| r.seq).collect::<Vec<_>>(), vec![1, 2, 3]);
        assert_eq!(all[2].event, stopped("c"));
        fs::remove_dir_all(&dir).unwrap();
    }
}
