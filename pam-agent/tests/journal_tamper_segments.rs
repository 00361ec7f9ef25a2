//! Tampering with the segment files of a format 2 journal (the log itself, what the
//! journal is), as someone with write access to them would, and checking that
//! `pam-agent audit verify` finds it, names the record, and exits 1. The segments are
//! parsed and forged with the test's own reading of the documented layout
//! (`common::format`), never with the product's code.

mod common;

use std::path::{Path, PathBuf};

use common::*;
use pam_agent::journal::{Event, SessionId};

/// 50 records (checkpoints every 10) in one segment; returns (journal, segment).
fn journal(dir: &Scratch) -> (PathBuf, PathBuf) {
    let path = dir.path("journal.db");
    let (j, h) = open(options(&path));
    let s = SessionId::new();
    let events = every_kind(s);
    j.record_blocking(Some(s), events[2].1.clone()).unwrap();
    for i in 0..49 {
        let mut e = events[3].1.clone();
        if let Event::Statement { rows, .. } = &mut e {
            *rows = Some(i);
        }
        j.record_blocking(Some(s), e).unwrap();
    }
    drop(j);
    h.join().unwrap();
    let ok = audit(&path, &["verify"]);
    assert!(ok.status.success(), "fresh journal: {}", stdout(&ok));
    let seg = dir.path("journal.db.segments/00000000000000000001.seg");
    (path, seg)
}

fn assert_detected(path: &Path, args: &[&str], needle: &str) {
    let mut a = vec!["verify"];
    a.extend_from_slice(args);
    let o = audit(path, &a);
    let out = stdout(&o);
    assert_eq!(
        o.status.code(),
        Some(1),
        "verify passed a tampered journal:\n{out}{}",
        stderr(&o)
    );
    assert!(out.contains(needle), "expected `{needle}` in:\n{out}");
}

/// The segment's header and frames; `write` puts them back.
struct Seg {
    path: PathBuf,
    header: Vec<u8>,
    frames: Vec<format::RawFrame>,
}

impl Seg {
    fn read(path: &Path) -> Seg {
        let (header, frames) = format::split_segment(&std::fs::read(path).unwrap());
        Seg {
            path: path.to_owned(),
            header,
            frames,
        }
    }

    fn write(&self) {
        let mut b = self.header.clone();
        for (_, f) in &self.frames {
            b.extend_from_slice(f);
        }
        std::fs::write(&self.path, b).unwrap();
    }

    /// Index of the record frame of `seq`.
    fn record(&self, seq: u64) -> usize {
        self.frames
            .iter()
            .position(|(t, f)| {
                *t == b'R' && {
                    let (_, json, _) = format::record_parts(f);
                    serde_json::from_slice::<serde_json::Value>(&json).unwrap()["seq"] == seq
                }
            })
            .unwrap()
    }

    fn checkpoint(&self, seq: u64) -> usize {
        self.frames
            .iter()
            .position(|(t, f)| *t == b'C' && u64::from_be_bytes(f[1..9].try_into().unwrap()) == seq)
            .unwrap()
    }

    /// Replaces the record text of `seq`, keeping its stored hashes.
    fn edit(&mut self, seq: u64, from: &str, to: &str) {
        let i = self.record(seq);
        let (prev, json, hash) = format::record_parts(&self.frames[i].1);
        let json = String::from_utf8(json).unwrap();
        assert!(json.contains(from));
        self.frames[i].1 = format::record_frame(&prev, json.replace(from, to).as_bytes(), &hash);
    }

    /// Recomputes every record's prev_hash and hash from frame `from` on.
    fn rechain_from(&mut self, seq: u64) {
        let start = self.record(seq);
        let before = self.record(seq - 1);
        let (_, _, mut prev) = format::record_parts(&self.frames[before].1);
        for (t, f) in self.frames[start..].iter_mut() {
            if *t != b'R' {
                continue;
            }
            let (_, json, _) = format::record_parts(f);
            let hash = format::link(&prev, &json);
            *f = format::record_frame(&prev, &json, &hash);
            prev = hash;
        }
    }
}

#[test]
fn edited_record_in_a_segment() {
    let dir = Scratch::new("seg-edit");
    let (path, seg) = journal(&dir);
    let mut s = Seg::read(&seg);
    s.edit(23, "\"rows\":21", "\"rows\":0");
    s.write();
    assert_detected(&path, &[], "seq 23: record edited");
    // The index still holds the original: it no longer matches the log either way.
}

#[test]
fn deleted_record_frame() {
    let dir = Scratch::new("seg-delete");
    let (path, seg) = journal(&dir);
    let mut s = Seg::read(&seg);
    let i = s.record(17);
    s.frames.remove(i);
    s.write();
    assert_detected(&path, &[], "seq 17: record missing");
}

#[test]
fn reordered_record_frames() {
    let dir = Scratch::new("seg-reorder");
    let (path, seg) = journal(&dir);
    let mut s = Seg::read(&seg);
    let (a, b) = (s.record(12), s.record(13));
    s.frames.swap(a, b);
    s.write();
    assert_detected(&path, &[], "seq 12: holds the content of record 13");
}

#[test]
fn rewritten_chain_fails_at_the_signed_checkpoint() {
    let dir = Scratch::new("seg-rechain");
    let (path, seg) = journal(&dir);
    let mut s = Seg::read(&seg);
    s.edit(23, "\"rows\":21", "\"rows\":0");
    s.rechain_from(23);
    s.write();
    assert_detected(
        &path,
        &[],
        "seq 30: chain differs from the signed checkpoint: a record in 21..=30 was altered",
    );
}

#[test]
fn forged_checkpoint_signature() {
    let dir = Scratch::new("seg-signature");
    let (path, seg) = journal(&dir);
    let mut s = Seg::read(&seg);
    let i = s.checkpoint(20);
    let len = s.frames[i].1.len();
    s.frames[i].1[len - 64..].fill(0);
    s.write();
    assert_detected(&path, &[], "seq 20: checkpoint signature invalid");
}

#[test]
fn cut_tail_is_caught_by_the_index_or_a_witness() {
    let dir = Scratch::new("seg-truncate");
    let (path, seg) = journal(&dir);
    let mut s = Seg::read(&seg);
    // Cut right after the checkpoint at 40: what remains is signed and chained.
    let i = s.checkpoint(40);
    s.frames.truncate(i + 1);
    s.write();
    // The index (built while the records existed) still names them...
    assert_detected(
        &path,
        &[],
        "seq 41: the index holds a record the log does not",
    );
    // ...and with the index rebuilt to match, a witness of the last seq catches the cut.
    rusqlite::Connection::open(&path)
        .unwrap()
        .execute_batch(
            "DELETE FROM records WHERE seq > 40; DELETE FROM checkpoints WHERE seq > 40;",
        )
        .unwrap();
    assert_detected(&path, &["--expect-seq", "50"], "journal truncated");
}

#[test]
fn garbage_inside_a_segment_is_named_with_its_offset() {
    let dir = Scratch::new("seg-garbage");
    let (path, seg) = journal(&dir);
    let mut s = Seg::read(&seg);
    let i = s.record(30);
    s.frames.insert(i, (b'X', b"Xjunk".to_vec()));
    s.write();
    assert_detected(&path, &[], "starts no frame");
}

#[test]
fn deleted_segments_are_missing_records() {
    let dir = Scratch::new("seg-files");
    let path = dir.path("journal.db");
    let mut opts = options(&path);
    opts.segment_bytes = 2048;
    let (j, h) = open(opts);
    let s = SessionId::new();
    for (session, event) in every_kind(s).into_iter().cycle().take(60) {
        j.record_blocking(session, event).unwrap();
    }
    drop(j);
    h.join().unwrap();
    let segs: Vec<PathBuf> = {
        let mut v: Vec<PathBuf> = std::fs::read_dir(dir.path("journal.db.segments"))
            .unwrap()
            .map(|e| e.unwrap().path())
            .filter(|p| p.extension().is_some_and(|e| e == "seg"))
            .collect();
        v.sort();
        v
    };
    assert!(segs.len() >= 4, "{segs:?}");
    let ok = audit(&path, &["verify"]);
    assert!(ok.status.success(), "{}", stdout(&ok));
    // A segment in the middle: its records are missing.
    let middle = &segs[2];
    let first_of = |p: &Path| -> u64 { p.file_stem().unwrap().to_str().unwrap().parse().unwrap() };
    std::fs::remove_file(middle).unwrap();
    assert_detected(&path, &[], &format!("seq {}..=", first_of(middle)));
    // The first one, without a signed anchor: the journal's start is gone.
    std::fs::remove_file(&segs[0]).unwrap();
    assert_detected(
        &path,
        &[],
        &format!(
            "seq {}: the journal starts here but no signed anchor",
            first_of(&segs[1])
        ),
    );
}

/// Rewritten and re-signed with the attacker's own key (documented formulas only): only a
/// pinned key tells, and verify names the foreign key it saw.
#[test]
fn rewritten_and_resigned_with_a_foreign_key() {
    let dir = Scratch::new("seg-resign");
    let (path, seg) = journal(&dir);
    let genuine: String = rusqlite::Connection::open(&path)
        .unwrap()
        .query_row("SELECT value FROM meta WHERE key = 'public_key'", [], |r| {
            r.get(0)
        })
        .unwrap();
    let mut s = Seg::read(&seg);
    let id: [u8; 16] = s.header[8..24].try_into().unwrap();
    s.edit(23, "\"rows\":21", "\"rows\":0");
    s.rechain_from(23);
    let seed = [0x5a; 32];
    let foreign = ed25519_dalek::SigningKey::from_bytes(&seed)
        .verifying_key()
        .to_bytes();
    let mut last_hash = [0u8; 32];
    for (t, f) in s.frames.iter_mut() {
        if *t == b'R' {
            last_hash = format::record_parts(f).2;
            continue;
        }
        let seq = u64::from_be_bytes(f[1..9].try_into().unwrap());
        let ts = i64::from_be_bytes(f[41..49].try_into().unwrap());
        let sig = format::sign(&seed, &format::checkpoint_message(&id, seq, &last_hash, ts));
        *f = format::signed_frame(b'C', seq, &last_hash, ts, &foreign, &sig);
    }
    s.write();
    assert_detected(
        &path,
        &["--trusted-key", &genuine],
        "seq 10: checkpoint signature invalid or by an unexpected key",
    );
    let o = audit(&path, &["verify"]);
    assert!(
        stdout(&o).contains(&format!("signed by ed25519 key {}", format::hex(&foreign))),
        "{}",
        stdout(&o)
    );
}
