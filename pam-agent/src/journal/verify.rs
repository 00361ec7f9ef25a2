//! `audit verify`: walks a journal in sequence order and checks, for every record, that it
//! follows its predecessor's hash, that its hash matches its content, that its content
//! is the record its position says, and that its indexed columns agree with its content;
//! then that every checkpoint and anchor is signed and matches the chain, and that no
//! checkpoint is missing. Each problem names the record (seq) where it was found.

use std::{collections::BTreeMap, fmt};

use super::{
    Record,
    chain::{self, Hash},
    index::SessionIndex,
    reader::Reader,
    schema, signing,
};

/// What verification found wrong, with the seq where it shows.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Problem {
    /// SQLite could not read the file (truncated or overwritten pages).
    Unreadable { reason: String },
    /// The journal does not start at seq 1 and no signed anchor explains why.
    MissingStart { first_seq: u64 },
    /// The anchor the remaining records start from is not validly signed or not followed.
    BadAnchor {
        first_seq: u64,
        reason: &'static str,
    },
    /// Records in `from..=to` are absent.
    Missing { from: u64, to: u64 },
    /// The record's content does not match its stored hash.
    Edited { seq: u64 },
    /// The row at `seq` holds the content of record `holds`.
    Misplaced { seq: u64, holds: u64 },
    /// The record does not follow its predecessor: the predecessor was changed (with its
    /// hash recomputed), or records were inserted or removed here.
    ChainBroken { seq: u64 },
    /// An indexed column disagrees with the record's content.
    ColumnMismatch { seq: u64, column: &'static str },
    /// The content is not a record at all.
    Unparsable { seq: u64 },
    /// A checkpoint's signature is invalid, or it is signed by an unexpected key.
    BadSignature { seq: u64 },
    /// The chain at a signed checkpoint differs from what was signed: a record after the
    /// previous good checkpoint was changed and the hashes after it recomputed.
    CheckpointMismatch { seq: u64, since: u64 },
    /// A signed checkpoint names a record beyond the last one: the tail was removed.
    Truncated { last_seq: u64, signed_seq: u64 },
    /// More records without a checkpoint than the journal's policy allows: checkpoints
    /// were removed (often with records at the tail).
    CheckpointGap { after: u64, until: u64, every: u64 },
    /// A segment file (v2) is damaged at `offset`: bytes that are no frame, a cut frame,
    /// a header that does not fit.
    SegmentCorrupt {
        segment: String,
        offset: usize,
        reason: String,
    },
    /// The index row of `seq` is not the log's record (v2).
    IndexDiffers { seq: u64 },
    /// The index holds a record `seq` the log does not (v2): the log lost its tail.
    IndexAhead { seq: u64 },
    /// A problem found in the index (v2), which is what queries read.
    InIndex(Box<Problem>),
}

impl fmt::Display for Problem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Problem::Unreadable { reason } => write!(f, "the database cannot be read: {reason}"),
            Problem::MissingStart { first_seq } => write!(
                f,
                "seq {first_seq}: the journal starts here but no signed anchor accounts for records 1..{}: they were deleted",
                first_seq - 1
            ),
            Problem::BadAnchor { first_seq, reason } => {
                write!(f, "seq {first_seq}: retention anchor {reason}")
            }
            Problem::Missing { from, to } if from == to => {
                write!(f, "seq {from}: record missing (deleted)")
            }
            Problem::Missing { from, to } => {
                write!(
                    f,
                    "seq {from}..={to}: {} records missing (deleted)",
                    to - from + 1
                )
            }
            Problem::Edited { seq } => {
                write!(
                    f,
                    "seq {seq}: record edited (content does not match its hash)"
                )
            }
            Problem::Misplaced { seq, holds } => write!(
                f,
                "seq {seq}: holds the content of record {holds} (records reordered or renumbered)"
            ),
            Problem::ChainBroken { seq } => write!(
                f,
                "seq {seq}: does not follow the record before it (that record was rewritten, or records were inserted or removed here)"
            ),
            Problem::ColumnMismatch { seq, column } => write!(
                f,
                "seq {seq}: indexed column `{column}` disagrees with the record (edited to mislead queries)"
            ),
            Problem::Unparsable { seq } => write!(f, "seq {seq}: content is not a journal record"),
            Problem::BadSignature { seq } => {
                write!(
                    f,
                    "seq {seq}: checkpoint signature invalid or by an unexpected key"
                )
            }
            Problem::CheckpointMismatch { seq, since } => write!(
                f,
                "seq {seq}: chain differs from the signed checkpoint: a record in {}..={seq} was altered and the hashes after it recomputed",
                since + 1
            ),
            Problem::Truncated {
                last_seq,
                signed_seq,
            } => write!(
                f,
                "seq {}: journal truncated: records end at {last_seq} but a checkpoint signed seq {signed_seq} (or a witness saw it)",
                last_seq + 1
            ),
            Problem::CheckpointGap {
                after,
                until,
                every,
            } => write!(
                f,
                "seq {}..={until}: no checkpoint, though the journal signs one every {every} records (checkpoints removed; the tail may be truncated)",
                after + 1
            ),
            Problem::SegmentCorrupt {
                segment,
                offset,
                reason,
            } => write!(f, "segment {segment} at byte {offset}: {reason}"),
            Problem::IndexDiffers { seq } => write!(
                f,
                "seq {seq}: the index row is not the log's record (the index was edited)"
            ),
            Problem::IndexAhead { seq } => write!(
                f,
                "seq {seq}: the index holds a record the log does not (the log's tail was removed)"
            ),
            Problem::InIndex(p) => write!(f, "in the index (what queries read): {p}"),
        }
    }
}

/// The outcome of a verification.
#[derive(Debug, Default)]
pub struct Report {
    pub records: u64,
    pub first_seq: Option<u64>,
    pub last_seq: Option<u64>,
    pub checkpoints: u64,
    /// The newest checkpoint that verified.
    pub last_signed: Option<u64>,
    /// Keys that signed checkpoints or anchors.
    pub keys: Vec<[u8; 32]>,
    /// Records whose kind this version does not know: hash-checked, columns not checked.
    pub unknown_kinds: u64,
    pub problems: Vec<Problem>,
    /// Format 2: the segments were verified (and the index against them).
    pub segments: bool,
    /// Rows of the index checked (format 2).
    pub index_records: u64,
    /// Torn tails crash recovery cut and kept (format 2), for inspection.
    pub torn: Vec<String>,
}

impl Report {
    pub fn ok(&self) -> bool {
        self.problems.is_empty()
    }
}

/// What to trust.
#[derive(Debug, Default, Clone)]
pub struct VerifyOptions {
    /// When not empty, checkpoints and anchors must be signed by one of these keys.
    pub trusted_keys: Vec<[u8; 32]>,
    /// The journal must reach at least this seq (from a witness outside the file).
    pub expect_seq: Option<u64>,
}

pub(crate) struct Signed {
    pub hash: Vec<u8>,
    pub good: bool,
}

pub(crate) fn check_sig(
    opts: &VerifyOptions,
    keys: &mut Vec<[u8; 32]>,
    public: &[u8],
    msg: &[u8],
    sig: &[u8],
) -> bool {
    let Ok(pk): Result<[u8; 32], _> = public.try_into() else {
        return false;
    };
    if !opts.trusted_keys.is_empty() && !opts.trusted_keys.contains(&pk) {
        return false;
    }
    if !keys.contains(&pk) {
        keys.push(pk);
    }
    signing::verify(&pk, msg, sig)
}

/// Verifies the journal behind `reader`: format 1, its SQLite file; format 2, its
/// segments (what the journal is), then its index against them.
pub fn verify(reader: &Reader, opts: &VerifyOptions) -> Report {
    let mut report = Report::default();
    let Some(dir) = reader.segments() else {
        if let Err(reason) = walk(reader, opts, &mut report, None) {
            report.problems.push(Problem::Unreadable {
                reason: reason.to_string(),
            });
        }
        return report;
    };
    report.segments = true;
    super::verify_log::verify_segments(dir, opts, &mut report);
    // The index: its own chain and columns (v1 checks), and each row against the log.
    // It may lag the log (it is built behind it), so a witness's seq is the log's to meet.
    let mut index = Report::default();
    let index_opts = VerifyOptions {
        trusted_keys: opts.trusted_keys.clone(),
        expect_seq: None,
    };
    let mut cursor = super::verify_log::LogCursor::new(dir);
    if let Err(reason) = walk(reader, &index_opts, &mut index, Some(&mut cursor)) {
        index.problems.push(Problem::Unreadable {
            reason: reason.to_string(),
        });
    }
    report.index_records = index.records;
    for k in index.keys {
        if !report.keys.contains(&k) {
            report.keys.push(k);
        }
    }
    report.unknown_kinds = index.unknown_kinds;
    report
        .problems
        .extend(index.problems.into_iter().map(|p| match p {
            p @ (Problem::IndexDiffers { .. } | Problem::IndexAhead { .. }) => p,
            p => Problem::InIndex(Box::new(p)),
        }));
    report
}

fn walk(
    reader: &Reader,
    opts: &VerifyOptions,
    report: &mut Report,
    mut log: Option<&mut super::verify_log::LogCursor>,
) -> rusqlite::Result<()> {
    let mut peeked = None;
    let conn = reader.connection();
    let id_hex = schema::meta(conn, schema::META_JOURNAL_ID)?.unwrap_or_default();
    let Some(journal_id) = chain::unhex::<16>(&id_hex) else {
        report.problems.push(Problem::Unreadable {
            reason: format!("meta.journal_id is missing or malformed ({id_hex:?})"),
        });
        return Ok(());
    };
    let every: u64 = schema::meta(conn, schema::META_CHECKPOINT_EVERY)?
        .and_then(|v| v.parse().ok())
        .unwrap_or(0);

    // Checkpoints: signature first, chain agreement during the walk.
    let checkpoints = read_checkpoints(conn, &journal_id, opts, report)?;
    report.checkpoints = checkpoints.len() as u64;

    let first_seq: Option<u64> =
        conn.query_row("SELECT min(seq) FROM records", [], |r| r.get(0))?;
    let Some(first_seq) = first_seq else {
        let beyond = checkpoints.last_key_value().map(|(s, _)| *s);
        if let Some(seq) = beyond.max(opts.expect_seq.filter(|&e| e > 0)) {
            report.problems.push(Problem::Truncated {
                last_seq: 0,
                signed_seq: seq,
            });
        }
        return Ok(());
    };

    // Where the chain starts: genesis, or a signed retention anchor.
    let mut expected_prev = chain_start(conn, &journal_id, first_seq, opts, report);

    let mut sessions = SessionIndex::default();
    let mut expected_seq = first_seq;
    let mut last_good_signed = first_seq - 1;
    let mut stmt = conn.prepare(
        "SELECT seq, ts_us, kind, session, uid, user, comm, exe, resource, decision, record, prev_hash, hash
         FROM records ORDER BY seq",
    )?;
    let mut rows = stmt.query([])?;
    while let Some(r) = rows.next()? {
        let seq: u64 = r.get(0)?;
        report.records += 1;
        report.last_seq = Some(seq);
        if seq != expected_seq {
            report.problems.push(Problem::Missing {
                from: expected_seq,
                to: seq - 1,
            });
        }
        let prev: Vec<u8> = r.get(11)?;
        let stored: Vec<u8> = r.get(12)?;
        let json = r.get_ref(10)?.as_str().unwrap_or("");
        if seq == expected_seq && prev[..] != expected_prev[..] {
            report.problems.push(Problem::ChainBroken { seq });
        }
        let prev = chain::from_blob(&prev).unwrap_or([0; 32]);
        let computed = chain::link(&prev, json.as_bytes());
        if stored[..] != computed[..] {
            report.problems.push(Problem::Edited { seq });
        }
        if let Some(log) = log.as_deref_mut() {
            match log.hash_of(seq, &mut peeked) {
                Some(h) if h[..] == stored[..] => {}
                Some(_) => report.problems.push(Problem::IndexDiffers { seq }),
                None => report.problems.push(Problem::IndexAhead { seq }),
            }
        }
        // Continue from the stored hash so one edit is reported once.
        expected_prev = chain::from_blob(&stored).unwrap_or(computed);
        expected_seq = seq + 1;

        check_record(r, seq, json, &mut sessions, report)?;

        if let Some(cp) = checkpoints.get(&seq) {
            if cp.hash[..] != computed[..] || cp.hash[..] != stored[..] {
                report.problems.push(Problem::CheckpointMismatch {
                    seq,
                    since: last_good_signed,
                });
            } else if cp.good {
                last_good_signed = seq;
                report.last_signed = Some(seq);
            }
        }
    }
    report.first_seq = Some(first_seq);
    let last_seq = report.last_seq.unwrap_or(0);

    check_tail(&checkpoints, first_seq, last_seq, every, opts, report);
    Ok(())
}
/// Every checkpoint, its signature checked (chain agreement is checked during the walk).
fn read_checkpoints(
    conn: &rusqlite::Connection,
    journal_id: &[u8; 16],
    opts: &VerifyOptions,
    report: &mut Report,
) -> rusqlite::Result<BTreeMap<u64, Signed>> {
    let mut checkpoints: BTreeMap<u64, Signed> = BTreeMap::new();
    let mut stmt = conn
        .prepare("SELECT seq, hash, ts_us, public_key, signature FROM checkpoints ORDER BY seq")?;
    let mut rows = stmt.query([])?;
    while let Some(r) = rows.next()? {
        let seq: u64 = r.get(0)?;
        let hash: Vec<u8> = r.get(1)?;
        let ts_us: i64 = r.get(2)?;
        let public: Vec<u8> = r.get(3)?;
        let sig: Vec<u8> = r.get(4)?;
        let good = chain::from_blob(&hash).is_some_and(|h| {
            let msg = signing::checkpoint_message(journal_id, seq, &h, ts_us);
            check_sig(opts, &mut report.keys, &public, &msg, &sig)
        });
        if !good {
            report.problems.push(Problem::BadSignature { seq });
        }
        checkpoints.insert(seq, Signed { hash, good });
    }
    Ok(checkpoints)
}

/// The hash the first record must follow: genesis, or a signed retention anchor's.
fn chain_start(
    conn: &rusqlite::Connection,
    journal_id: &[u8; 16],
    first_seq: u64,
    opts: &VerifyOptions,
    report: &mut Report,
) -> Hash {
    let mut expected_prev: Hash = chain::genesis(journal_id);
    if first_seq > 1 {
        let anchor = conn
            .query_row(
                "SELECT prev_hash, ts_us, public_key, signature FROM anchors WHERE first_seq = ?1",
                [first_seq],
                |r| {
                    Ok((
                        r.get::<_, Vec<u8>>(0)?,
                        r.get::<_, i64>(1)?,
                        r.get::<_, Vec<u8>>(2)?,
                        r.get::<_, Vec<u8>>(3)?,
                    ))
                },
            )
            .ok();
        match anchor {
            None => report.problems.push(Problem::MissingStart { first_seq }),
            Some((prev, ts_us, public, sig)) => match chain::from_blob(&prev) {
                Some(prev)
                    if check_sig(
                        opts,
                        &mut report.keys,
                        &public,
                        &signing::anchor_message(journal_id, first_seq, &prev, ts_us),
                        &sig,
                    ) =>
                {
                    expected_prev = prev
                }
                _ => report.problems.push(Problem::BadAnchor {
                    first_seq,
                    reason: "signature is invalid or by an unexpected key",
                }),
            },
        }
    }
    expected_prev
}

/// A record's JSON: where it claims to sit, and whether the indexed columns agree with
/// it (so a query cannot be misled by an edited column).
fn check_record(
    r: &rusqlite::Row<'_>,
    seq: u64,
    json: &str,
    sessions: &mut SessionIndex,
    report: &mut Report,
) -> rusqlite::Result<()> {
    match serde_json::from_str::<Record>(json) {
        Ok(record) => {
            if record.seq != seq {
                report.problems.push(Problem::Misplaced {
                    seq,
                    holds: record.seq,
                });
            }
            let known = record.session.is_none_or(|s| sessions.knows(&s))
                || matches!(record.event, super::Event::SessionOpened { .. });
            let (cols, _) = sessions.derive(&record);
            let mut mismatch = |column: &'static str, same: bool| {
                if !same {
                    report
                        .problems
                        .push(Problem::ColumnMismatch { seq, column });
                }
            };
            mismatch("ts_us", r.get::<_, i64>(1)? == cols.ts_us);
            mismatch("kind", r.get_ref(2)?.as_str().ok() == Some(cols.kind));
            mismatch("session", r.get::<_, Option<String>>(3)? == cols.session);
            mismatch(
                "decision",
                r.get_ref(9)?.as_str_or_null().ok().flatten() == cols.decision,
            );
            if known {
                mismatch("uid", r.get::<_, Option<u32>>(4)? == cols.info.uid);
                mismatch("user", r.get::<_, Option<String>>(5)? == cols.info.user);
                mismatch("comm", r.get::<_, Option<String>>(6)? == cols.info.comm);
                mismatch("exe", r.get::<_, Option<String>>(7)? == cols.info.exe);
                mismatch(
                    "resource",
                    r.get::<_, Option<String>>(8)? == cols.info.resource,
                );
            }
        }
        Err(_) => match serde_json::from_str::<serde_json::Value>(json) {
            Ok(v) if v.get("seq").and_then(|s| s.as_u64()).is_some() => {
                report.unknown_kinds += 1;
                let holds = v["seq"].as_u64().unwrap_or(seq);
                if holds != seq {
                    report.problems.push(Problem::Misplaced { seq, holds });
                }
            }
            _ => report.problems.push(Problem::Unparsable { seq }),
        },
    }
    Ok(())
}

/// Checkpoints beyond the last record (truncation), and runs of records longer than the
/// checkpoint interval without one.
pub(crate) fn check_tail(
    checkpoints: &BTreeMap<u64, Signed>,
    first_seq: u64,
    last_seq: u64,
    every: u64,
    opts: &VerifyOptions,
    report: &mut Report,
) {
    let beyond = checkpoints
        .range(last_seq + 1..)
        .next_back()
        .map(|(s, _)| *s);
    if let Some(signed_seq) = beyond.max(opts.expect_seq.filter(|&e| e > last_seq)) {
        report.problems.push(Problem::Truncated {
            last_seq,
            signed_seq,
        });
    }
    if every > 0 {
        let mut after = first_seq - 1;
        for &seq in checkpoints.range(first_seq..=last_seq).map(|(s, _)| s) {
            if seq - after > every {
                report.problems.push(Problem::CheckpointGap {
                    after,
                    until: seq - 1,
                    every,
                });
            }
            after = seq;
        }
        if last_seq - after >= every {
            report.problems.push(Problem::CheckpointGap {
                after,
                until: last_seq,
                every,
            });
        }
    }
}
