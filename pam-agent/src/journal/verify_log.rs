//! `audit verify` for a v2 journal's segments: the chain over every record frame, the
//! seq each frame claims against its position, the segments' headers against each
//! other, and every checkpoint and anchor signature. Records are not parsed: the seq is
//! read from the canonical JSON's prefix, the hash covers the rest. Each segment is
//! scanned once for frame boundaries, then its hashes and signatures are checked on
//! every core.

use std::{collections::BTreeMap, path::Path};

use super::{
    chain::{self, Hash},
    segment::{self, Frame, Header, Signed},
    signing,
    verify::{Problem, Report, Signed as CheckedSigned, VerifyOptions, check_sig, check_tail},
};

/// What the sequential scan of a segment leaves for the parallel checks.
enum Task<'a> {
    /// Position (seq), and the frame's parts.
    Record {
        seq: u64,
        prev: &'a [u8; 32],
        json: &'a [u8],
        hash: &'a [u8; 32],
    },
    Checkpoint(Signed),
}

/// Outcome of the parallel checks of one task.
enum Checked {
    Record { edited: bool },
    Checkpoint { good: bool, key: [u8; 32] },
}

/// Verifies the segments in `dir` (the journal's records, checkpoints and anchors).
pub fn verify_segments(dir: &Path, opts: &VerifyOptions, report: &mut Report) {
    let segments = match segment::list(dir) {
        Ok(s) if !s.is_empty() => s,
        Ok(_) => {
            report.problems.push(Problem::Unreadable {
                reason: format!("{}: no segments", dir.display()),
            });
            return;
        }
        Err(e) => {
            report.problems.push(Problem::Unreadable {
                reason: format!("{}: {e}", dir.display()),
            });
            return;
        }
    };
    let threads = std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(1)
        .clamp(1, 8);
    let mut journal_id: Option<[u8; 16]> = None;
    let mut every = 0u64;
    // The previous segment's end: last seq and stored hash.
    let mut last: Option<(u64, Hash)> = None;
    let mut first_seq = None;
    let mut checkpoints: BTreeMap<u64, CheckedSigned> = BTreeMap::new();
    let mut anchors: Vec<Signed> = Vec::new();
    let mut last_good_signed = 0u64;
    let mut chain_start: Option<(u64, Hash)> = None;
    for (i, (named, path)) in segments.iter().enumerate() {
        let name = path
            .file_name()
            .unwrap_or_default()
            .to_string_lossy()
            .into_owned();
        let bytes = match std::fs::read(path) {
            Ok(b) => b,
            Err(e) => {
                report.problems.push(Problem::SegmentCorrupt {
                    segment: name,
                    offset: 0,
                    reason: e.to_string(),
                });
                continue;
            }
        };
        let Some(header) = Header::decode(&bytes) else {
            report.problems.push(Problem::SegmentCorrupt {
                segment: name,
                offset: 0,
                reason: "not a segment header".into(),
            });
            continue;
        };
        if *journal_id.get_or_insert(header.journal_id) != header.journal_id {
            report.problems.push(Problem::SegmentCorrupt {
                segment: name.clone(),
                offset: 8,
                reason: "belongs to another journal".into(),
            });
        }
        if header.first_seq != *named {
            report.problems.push(Problem::SegmentCorrupt {
                segment: name.clone(),
                offset: 24,
                reason: format!("header says it starts at seq {}", header.first_seq),
            });
        }
        every = every.max(header.checkpoint_every);
        match last {
            None => {
                first_seq = Some(header.first_seq);
                chain_start = Some((header.first_seq, header.prev_hash));
            }
            Some((last_seq, last_hash)) => {
                if header.first_seq > last_seq + 1 {
                    report.problems.push(Problem::Missing {
                        from: last_seq + 1,
                        to: header.first_seq - 1,
                    });
                } else if header.prev_hash != last_hash || header.first_seq != last_seq + 1 {
                    report.problems.push(Problem::ChainBroken {
                        seq: header.first_seq,
                    });
                }
            }
        }
        // Sequential: frame boundaries, positions, links between neighbours.
        let mut frames: Vec<Frame> = Vec::new();
        let mut walk = segment::Frames::new(&bytes);
        for (_, f) in walk.by_ref() {
            frames.push(f);
        }
        if let Some((offset, stop)) = walk.stop {
            report.problems.push(Problem::SegmentCorrupt {
                segment: name.clone(),
                offset,
                reason: match stop {
                    segment::Stop::Incomplete if i + 1 == segments.len() => {
                        "ends inside a frame (a torn write the agent has not recovered yet, or a cut)".into()
                    }
                    segment::Stop::Incomplete => "ends inside a frame (cut)".into(),
                    segment::Stop::BadTag(t) => format!("byte {t:#04x} starts no frame"),
                },
            });
        }
        let mut tasks: Vec<Task> = Vec::with_capacity(frames.len());
        let mut pos = header.first_seq;
        let mut prev_hash = header.prev_hash;
        let mut last_record: Option<(u64, Hash)> = last;
        let record_seqs: Vec<Option<u64>> = frames
            .iter()
            .map(|f| match f {
                Frame::Record { json, .. } => segment::seq_of(json),
                _ => None,
            })
            .collect();
        let mut next_records =
            record_seqs
                .iter()
                .enumerate()
                .filter_map(|(i, s)| match frames[i] {
                    Frame::Record { .. } => Some(*s),
                    _ => None,
                });
        next_records.next();
        for (idx, f) in frames.iter().enumerate() {
            match f {
                Frame::Record { prev, json, hash } => {
                    let claimed = record_seqs[idx];
                    let following = next_records.next().flatten();
                    report.records += 1;
                    let mut missing = false;
                    match claimed {
                        None => report.problems.push(Problem::Unparsable { seq: pos }),
                        Some(c) if c > pos && following.is_none_or(|n| n == c + 1) => {
                            // Records before this one are gone: report the gap, go on
                            // from what the frame says.
                            report.problems.push(Problem::Missing {
                                from: pos,
                                to: c - 1,
                            });
                            pos = c;
                            missing = true;
                        }
                        Some(c) if c != pos => report
                            .problems
                            .push(Problem::Misplaced { seq: pos, holds: c }),
                        Some(_) => {}
                    }
                    if !missing && **prev != prev_hash {
                        report.problems.push(Problem::ChainBroken { seq: pos });
                    }
                    tasks.push(Task::Record {
                        seq: pos,
                        prev,
                        json,
                        hash,
                    });
                    prev_hash = **hash;
                    last_record = Some((pos, **hash));
                    report.last_seq = Some(pos);
                    pos += 1;
                }
                Frame::Checkpoint(c) => tasks.push(Task::Checkpoint(*c)),
                Frame::Anchor(a) => anchors.push(*a),
            }
        }
        // Parallel: every hash and signature.
        let id = header.journal_id;
        let chunk = tasks.len().div_ceil(threads).max(1);
        let checked: Vec<Checked> = std::thread::scope(|s| {
            let handles: Vec<_> = tasks
                .chunks(chunk)
                .map(|part| {
                    s.spawn(move || {
                        let mut h = blake3::Hasher::new_derive_key(chain::RECORD_CONTEXT);
                        part.iter()
                            .map(|t| match t {
                                Task::Record {
                                    prev, json, hash, ..
                                } => {
                                    h.reset();
                                    h.update(&prev[..]);
                                    h.update(&(json.len() as u64).to_be_bytes());
                                    h.update(json);
                                    Checked::Record {
                                        edited: h.finalize().as_bytes() != *hash,
                                    }
                                }
                                Task::Checkpoint(c) => Checked::Checkpoint {
                                    good: signing::verify(
                                        &c.public_key,
                                        &signing::checkpoint_message(&id, c.seq, &c.hash, c.ts_us),
                                        &c.signature,
                                    ),
                                    key: c.public_key,
                                },
                            })
                            .collect::<Vec<_>>()
                    })
                })
                .collect();
            handles
                .into_iter()
                .flat_map(|h| h.join().unwrap_or_default())
                .collect()
        });
        // Sequential again: results in order, checkpoints against the record before them.
        let mut before: Option<(u64, Hash)> = last;
        for (t, c) in tasks.iter().zip(checked) {
            match (t, c) {
                (Task::Record { seq, hash, .. }, Checked::Record { edited }) => {
                    if edited {
                        report.problems.push(Problem::Edited { seq: *seq });
                    }
                    before = Some((*seq, **hash));
                }
                (Task::Checkpoint(cp), Checked::Checkpoint { good, key }) => {
                    report.checkpoints += 1;
                    let trusted = opts.trusted_keys.is_empty() || opts.trusted_keys.contains(&key);
                    if !report.keys.contains(&key) {
                        report.keys.push(key);
                    }
                    let good = good && trusted;
                    if !good {
                        report.problems.push(Problem::BadSignature { seq: cp.seq });
                    }
                    let matches = before.is_some_and(|(s, h)| s == cp.seq && h == cp.hash);
                    if !matches {
                        report.problems.push(Problem::CheckpointMismatch {
                            seq: cp.seq,
                            since: last_good_signed,
                        });
                    } else if good {
                        last_good_signed = cp.seq;
                        report.last_signed = Some(cp.seq);
                    }
                    checkpoints.insert(
                        cp.seq,
                        CheckedSigned {
                            hash: cp.hash.to_vec(),
                            good,
                        },
                    );
                }
                _ => {}
            }
        }
        last = last_record.or(Some((header.first_seq - 1, header.prev_hash)));
    }
    let Some(journal_id) = journal_id else { return };
    // Where the chain starts: genesis, or a signed retention anchor.
    if let Some((first, prev)) = chain_start {
        if first == 1 {
            if prev != chain::genesis(&journal_id) {
                report.problems.push(Problem::ChainBroken { seq: 1 });
            }
        } else {
            match anchors.iter().rev().find(|a| a.seq == first) {
                None => report
                    .problems
                    .push(Problem::MissingStart { first_seq: first }),
                Some(a) => {
                    let ok = check_sig(
                        opts,
                        &mut report.keys,
                        &a.public_key,
                        &signing::anchor_message(&journal_id, a.seq, &a.hash, a.ts_us),
                        &a.signature,
                    );
                    if !ok || a.hash != prev {
                        report.problems.push(Problem::BadAnchor {
                            first_seq: first,
                            reason: if ok {
                                "does not match the first segment"
                            } else {
                                "signature is invalid or by an unexpected key"
                            },
                        });
                    }
                }
            }
        }
    }
    report.first_seq = first_seq;
    if report.records == 0 {
        report.first_seq = None;
        if let Some(seq) = checkpoints
            .last_key_value()
            .map(|(s, _)| *s)
            .max(opts.expect_seq.filter(|&e| e > 0))
        {
            report.problems.push(Problem::Truncated {
                last_seq: 0,
                signed_seq: seq,
            });
        }
        return;
    }
    let first = first_seq.unwrap_or(1);
    let last_seq = report.last_seq.unwrap_or(0);
    check_tail(&checkpoints, first, last_seq, every, opts, report);
    report.torn = segment::torn_files(dir)
        .into_iter()
        .map(|p| p.display().to_string())
        .collect();
}

/// The stored hash of each record frame, in order, reading the segments one at a time
/// (the index check compares each index row with the log's record).
pub struct LogCursor {
    segments: std::vec::IntoIter<(u64, std::path::PathBuf)>,
    bytes: Vec<u8>,
    pos: usize,
}

impl LogCursor {
    pub fn new(dir: &Path) -> LogCursor {
        LogCursor {
            segments: segment::list(dir).unwrap_or_default().into_iter(),
            bytes: Vec::new(),
            pos: 0,
        }
    }

    /// The next record frame: (seq it claims, stored hash).
    pub fn next_record(&mut self) -> Option<(u64, Hash)> {
        loop {
            if self.pos < self.bytes.len() {
                let mut frames = segment::Frames::at(&self.bytes, self.pos);
                let found = frames.by_ref().find_map(|(_, f)| match f {
                    Frame::Record { json, hash, .. } => Some((segment::seq_of(json)?, *hash)),
                    _ => None,
                });
                self.pos = if found.is_some() && frames.stop.is_none() {
                    frames.pos()
                } else {
                    self.bytes.len()
                };
                if found.is_some() {
                    return found;
                }
            }
            let (_, path) = self.segments.next()?;
            self.bytes = std::fs::read(path).ok()?;
            self.pos = segment::HEADER_LEN;
        }
    }

    /// The stored hash of record `seq`, if the log holds it (records are visited in
    /// order; asking for a lower seq than before finds nothing).
    pub fn hash_of(&mut self, seq: u64, peeked: &mut Option<(u64, Hash)>) -> Option<Hash> {
        loop {
            match *peeked {
                Some((s, h)) if s == seq => return Some(h),
                Some((s, _)) if s > seq => return None,
                _ => {}
            }
            *peeked = Some(self.next_record()?);
        }
    }
}
