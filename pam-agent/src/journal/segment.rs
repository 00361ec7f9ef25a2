//! The segment file format (journal format v2, docs/journal.md): the journal's records as
//! an append-only, hash-chained byte stream split into files of at most
//! [`SEGMENT_BYTES`]. A segment is a fixed header, then frames: records (`R`), signed
//! checkpoints (`C`) and signed retention anchors (`A`). Integers are big-endian.
//!
//! ```text
//! header  "PAMJSEG2" | journal_id 16 | first_seq u64 | checkpoint_every u64 | prev_hash 32
//! R frame 'R' | len u32 | prev_hash 32 | record (len bytes of canonical JSON) | hash 32
//! C frame 'C' | seq u64 | hash 32 | ts_us i64 | public_key 32 | signature 64
//! A frame 'A' | first_seq u64 | prev_hash 32 | ts_us i64 | public_key 32 | signature 64
//! ```
//!
//! `hash` is the v1 chain formula ([`super::chain::link`]) over `prev_hash` and the record,
//! so records keep their hashes when a v1 journal is migrated. Files are named
//! `<first_seq, 20 digits>.seg` in the directory `<journal path>.segments`.

use std::{
    fs,
    path::{Path, PathBuf},
};

use super::chain::Hash;

pub const MAGIC: &[u8; 8] = b"PAMJSEG2";
pub const HEADER_LEN: usize = 72;
/// Fixed size of a `C` or `A` frame, tag included.
pub const SIGNED_FRAME_LEN: usize = 1 + 8 + 32 + 8 + 32 + 64;
/// Bytes of an `R` frame besides its record.
pub const RECORD_OVERHEAD: usize = 1 + 4 + 32 + 32;
/// A segment is closed and a new one started once it is this large.
pub const SEGMENT_BYTES: u64 = 64 << 20;

/// The directory holding the segments of the journal at `path`.
pub fn dir_of(journal: &Path) -> PathBuf {
    let mut name = journal.file_name().unwrap_or_default().to_owned();
    name.push(".segments");
    journal.with_file_name(name)
}

/// `<first_seq>.seg`, zero-padded so names sort by number.
pub fn file_name(first_seq: u64) -> String {
    format!("{first_seq:020}.seg")
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Header {
    pub journal_id: [u8; 16],
    pub first_seq: u64,
    pub checkpoint_every: u64,
    pub prev_hash: Hash,
}

impl Header {
    pub fn encode(&self, out: &mut Vec<u8>) {
        out.extend_from_slice(MAGIC);
        out.extend_from_slice(&self.journal_id);
        out.extend_from_slice(&self.first_seq.to_be_bytes());
        out.extend_from_slice(&self.checkpoint_every.to_be_bytes());
        out.extend_from_slice(&self.prev_hash);
    }

    pub fn decode(bytes: &[u8]) -> Option<Header> {
        if bytes.len() < HEADER_LEN || &bytes[..8] != MAGIC {
            return None;
        }
        Some(Header {
            journal_id: bytes[8..24].try_into().ok()?,
            first_seq: u64::from_be_bytes(bytes[24..32].try_into().ok()?),
            checkpoint_every: u64::from_be_bytes(bytes[32..40].try_into().ok()?),
            prev_hash: bytes[40..72].try_into().ok()?,
        })
    }
}

/// A signed statement about the chain: a checkpoint ("record `seq` has hash `hash`") or
/// an anchor ("record `seq` follows `hash`").
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Signed {
    pub seq: u64,
    pub hash: Hash,
    pub ts_us: i64,
    pub public_key: [u8; 32],
    pub signature: [u8; 64],
}

impl Signed {
    fn encode(&self, tag: u8, out: &mut Vec<u8>) {
        out.push(tag);
        out.extend_from_slice(&self.seq.to_be_bytes());
        out.extend_from_slice(&self.hash);
        out.extend_from_slice(&self.ts_us.to_be_bytes());
        out.extend_from_slice(&self.public_key);
        out.extend_from_slice(&self.signature);
    }

    fn decode(b: &[u8]) -> Option<Signed> {
        Some(Signed {
            seq: u64::from_be_bytes(b[0..8].try_into().ok()?),
            hash: b[8..40].try_into().ok()?,
            ts_us: i64::from_be_bytes(b[40..48].try_into().ok()?),
            public_key: b[48..80].try_into().ok()?,
            signature: b[80..144].try_into().ok()?,
        })
    }
}

/// Appends an `R` frame; returns the range of the record's JSON within `out`.
pub fn encode_record(
    out: &mut Vec<u8>,
    prev: &Hash,
    json: &[u8],
    hash: &Hash,
) -> std::ops::Range<usize> {
    out.push(b'R');
    out.extend_from_slice(&(json.len() as u32).to_be_bytes());
    out.extend_from_slice(prev);
    let start = out.len();
    out.extend_from_slice(json);
    let end = out.len();
    out.extend_from_slice(hash);
    start..end
}

pub fn encode_checkpoint(out: &mut Vec<u8>, c: &Signed) {
    c.encode(b'C', out)
}

pub fn encode_anchor(out: &mut Vec<u8>, a: &Signed) {
    a.encode(b'A', out)
}

/// One frame read from a segment, borrowing its bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Frame<'a> {
    Record {
        prev: &'a [u8; 32],
        json: &'a [u8],
        hash: &'a [u8; 32],
    },
    Checkpoint(Signed),
    Anchor(Signed),
}

/// Why the frames of a segment stop before its end.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Stop {
    /// The file ends inside a frame (a torn write).
    Incomplete,
    /// A byte that starts no frame.
    BadTag(u8),
}

/// Walks the frames after the header. `next` yields `(offset, frame)`; when it returns
/// `None`, [`Frames::stop`] says whether the bytes ended cleanly.
pub struct Frames<'a> {
    bytes: &'a [u8],
    pos: usize,
    pub stop: Option<(usize, Stop)>,
}

impl<'a> Frames<'a> {
    /// Frames of a whole segment file (header included in `bytes`).
    pub fn new(bytes: &'a [u8]) -> Frames<'a> {
        Frames {
            bytes,
            pos: HEADER_LEN.min(bytes.len()),
            stop: None,
        }
    }

    /// Frames starting at `pos` (a frame boundary).
    pub fn at(bytes: &'a [u8], pos: usize) -> Frames<'a> {
        Frames {
            bytes,
            pos,
            stop: None,
        }
    }

    /// Offset of the next frame (after the last one returned).
    pub fn pos(&self) -> usize {
        self.pos
    }
}

impl<'a> Iterator for Frames<'a> {
    type Item = (usize, Frame<'a>);

    fn next(&mut self) -> Option<Self::Item> {
        let b = self.bytes;
        let at = self.pos;
        if self.stop.is_some() || at >= b.len() {
            return None;
        }
        let rest = &b[at..];
        let (frame, len) = match rest[0] {
            b'R' => {
                if rest.len() < 5 {
                    self.stop = Some((at, Stop::Incomplete));
                    return None;
                }
                let n = u32::from_be_bytes(rest[1..5].try_into().ok()?) as usize;
                let total = RECORD_OVERHEAD + n;
                if rest.len() < total {
                    self.stop = Some((at, Stop::Incomplete));
                    return None;
                }
                let frame = Frame::Record {
                    prev: rest[5..37].try_into().ok()?,
                    json: &rest[37..37 + n],
                    hash: rest[37 + n..total].try_into().ok()?,
                };
                (frame, total)
            }
            tag @ (b'C' | b'A') => {
                if rest.len() < SIGNED_FRAME_LEN {
                    self.stop = Some((at, Stop::Incomplete));
                    return None;
                }
                let s = Signed::decode(&rest[1..SIGNED_FRAME_LEN])?;
                let frame = if tag == b'C' {
                    Frame::Checkpoint(s)
                } else {
                    Frame::Anchor(s)
                };
                (frame, SIGNED_FRAME_LEN)
            }
            other => {
                self.stop = Some((at, Stop::BadTag(other)));
                return None;
            }
        };
        self.pos = at + len;
        Some((at, frame))
    }
}

/// Reads a segment file a frame at a time, so a reader (the index's catch-up) holds one
/// frame, not the segment (up to [`SEGMENT_BYTES`]): it stops where [`Frames`] stops
/// (the end, a torn tail, an unknown tag).
pub struct FileFrames {
    file: std::io::BufReader<fs::File>,
    /// Bytes of the file not read yet (a torn record's length cannot make it allocate
    /// more than the file holds).
    left: u64,
    buf: Vec<u8>,
}

impl FileFrames {
    pub fn open(path: &Path) -> std::io::Result<FileFrames> {
        use std::io::Read;
        let file = fs::File::open(path)?;
        let len = file.metadata()?.len();
        let mut file = std::io::BufReader::with_capacity(256 << 10, file);
        let mut header = [0u8; HEADER_LEN];
        let left = match file.read_exact(&mut header) {
            Ok(()) => len - HEADER_LEN as u64,
            Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => 0,
            Err(e) => return Err(e),
        };
        Ok(FileFrames {
            file,
            left,
            buf: Vec::new(),
        })
    }

    /// The next frame; `None` where [`Frames`] would stop.
    pub fn next_frame(&mut self) -> std::io::Result<Option<Frame<'_>>> {
        use std::io::Read;
        let total = match self.peek_len()? {
            Some(t) => t,
            None => return Ok(None),
        };
        let have = self.buf.len();
        self.buf.resize(total, 0);
        self.file.read_exact(&mut self.buf[have..])?;
        self.left -= (total - have) as u64;
        Ok(Frames::at(&self.buf, 0).next().map(|(_, f)| f))
    }

    /// Reads the next frame's tag (and a record's length) into `buf`: the frame's whole
    /// length, or `None` at the end or where the file cannot hold the frame.
    fn peek_len(&mut self) -> std::io::Result<Option<usize>> {
        use std::io::Read;
        self.buf.clear();
        let head = match self.left {
            0 => return Ok(None),
            n if n < 5 => 1,
            _ => 5,
        };
        self.buf.resize(head, 0);
        self.file.read_exact(&mut self.buf)?;
        self.left -= head as u64;
        let total = match self.buf[0] {
            b'R' if head == 5 => {
                let n = u32::from_be_bytes([self.buf[1], self.buf[2], self.buf[3], self.buf[4]]);
                RECORD_OVERHEAD + n as usize
            }
            b'C' | b'A' => SIGNED_FRAME_LEN,
            _ => return Ok(None),
        };
        if total < head || (total - head) as u64 > self.left {
            return Ok(None);
        }
        Ok(Some(total))
    }
}

/// The seq a canonical record's JSON starts with (`{"seq":N,`): read without parsing the
/// rest, so verification need not parse records.
pub fn seq_of(json: &[u8]) -> Option<u64> {
    let digits = json.strip_prefix(b"{\"seq\":")?;
    let end = digits.iter().position(|c| !c.is_ascii_digit())?;
    if end == 0 || end > 20 || digits[end] != b',' {
        return None;
    }
    std::str::from_utf8(&digits[..end]).ok()?.parse().ok()
}

/// The segment files of a journal in order: `(first_seq from the name, path)`. Files
/// that are not segments (`*.torn`, stray files) are left out.
pub fn list(dir: &Path) -> std::io::Result<Vec<(u64, PathBuf)>> {
    let mut out = Vec::new();
    for entry in fs::read_dir(dir)? {
        let entry = entry?;
        let name = entry.file_name();
        let Some(name) = name.to_str() else { continue };
        let Some(stem) = name.strip_suffix(".seg") else {
            continue;
        };
        if stem.len() == 20
            && stem.bytes().all(|c| c.is_ascii_digit())
            && let Ok(first) = stem.parse::<u64>()
        {
            out.push((first, entry.path()));
        }
    }
    out.sort();
    Ok(out)
}

/// Files a crash recovery cut from a torn tail (kept for inspection).
pub fn torn_files(dir: &Path) -> Vec<PathBuf> {
    let mut out: Vec<PathBuf> = fs::read_dir(dir)
        .into_iter()
        .flatten()
        .flatten()
        .map(|e| e.path())
        .filter(|p| p.to_string_lossy().contains(".torn-"))
        .collect();
    out.sort();
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn frames_round_trip_and_a_torn_tail_is_incomplete() {
        let mut b = Vec::new();
        Header {
            journal_id: [1; 16],
            first_seq: 7,
            checkpoint_every: 10,
            prev_hash: [2; 32],
        }
        .encode(&mut b);
        assert_eq!(b.len(), HEADER_LEN);
        let json = br#"{"seq":7,"kind":"x"}"#;
        encode_record(&mut b, &[2; 32], json, &[3; 32]);
        let cp = Signed {
            seq: 7,
            hash: [3; 32],
            ts_us: -5,
            public_key: [4; 32],
            signature: [5; 64],
        };
        encode_checkpoint(&mut b, &cp);
        let frames: Vec<_> = Frames::new(&b).map(|(_, f)| f).collect();
        assert_eq!(frames.len(), 2);
        assert!(matches!(frames[0], Frame::Record { json: j, .. } if j == json));
        assert_eq!(frames[1], Frame::Checkpoint(cp));
        assert_eq!(seq_of(json), Some(7));
        assert_eq!(seq_of(b"{\"seq\":,"), None);
        let mut it = Frames::new(&b[..b.len() - 1]);
        assert_eq!(it.by_ref().count(), 1);
        assert!(matches!(it.stop, Some((_, Stop::Incomplete))));
        assert_eq!(Header::decode(&b).unwrap().first_seq, 7);
    }

    /// Read from a file a frame at a time, a segment gives the frames [`Frames`] gives,
    /// and stops where it stops (a torn tail, a length the file cannot hold).
    #[test]
    fn file_frames_are_the_frames_of_the_bytes() {
        let dir = std::env::temp_dir().join(format!("pam-seg-{}", std::process::id()));
        fs::create_dir_all(&dir).unwrap();
        let mut b = Vec::new();
        Header {
            journal_id: [1; 16],
            first_seq: 1,
            checkpoint_every: 10,
            prev_hash: [2; 32],
        }
        .encode(&mut b);
        for seq in 1..=50u64 {
            let json = format!(
                r#"{{"seq":{seq},"kind":"{}"}}"#,
                "x".repeat(seq as usize * 97)
            );
            encode_record(&mut b, &[2; 32], json.as_bytes(), &[3; 32]);
            if seq % 20 == 0 {
                let cp = Signed {
                    seq,
                    hash: [3; 32],
                    ts_us: 1,
                    public_key: [4; 32],
                    signature: [5; 64],
                };
                encode_checkpoint(&mut b, &cp);
            }
        }
        let cases: [(&str, &[u8]); 4] = [
            ("whole", &b),
            ("torn", &b[..b.len() - 40]),
            ("header only", &b[..HEADER_LEN]),
            ("short header", &b[..10]),
        ];
        for (name, bytes) in cases {
            let path = dir.join(format!("{}.seg", name.replace(' ', "-")));
            fs::write(&path, bytes).unwrap();
            let want: Vec<Frame<'_>> = Frames::new(bytes).map(|(_, f)| f).collect();
            let mut got = Vec::new();
            let mut frames = FileFrames::open(&path).unwrap();
            while let Some(f) = frames.next_frame().unwrap() {
                got.push(format!("{f:?}"));
            }
            let want: Vec<String> = want.iter().map(|f| format!("{f:?}")).collect();
            assert_eq!(got, want, "{name}");
        }
        // A record length larger than the file: no frame, no allocation of it.
        let mut lying = b[..HEADER_LEN].to_vec();
        lying.extend_from_slice(&[b'R', 0xff, 0xff, 0xff, 0xff, 0]);
        let path = dir.join("lying.seg");
        fs::write(&path, &lying).unwrap();
        assert!(
            FileFrames::open(&path)
                .unwrap()
                .next_frame()
                .unwrap()
                .is_none()
        );
        fs::remove_dir_all(&dir).unwrap();
    }
}
