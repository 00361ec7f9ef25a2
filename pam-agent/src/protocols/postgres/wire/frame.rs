//! Framing of protocol v3 messages, both directions. Knows no message semantics.
//!
//! A regular message is `tag:u8, len:i32 (includes itself), body`; a startup-phase
//! packet has no tag. Two steps, as in mini-redis: [`parse_frame`] looks at the buffer
//! and answers "a frame", "need more bytes" or an error; [`FrameReader`] feeds it.
//! A [`Frame`] keeps its original bytes: frames not rewritten are forwarded unchanged.
//! A frame longer than [`UNCOUNTED_MESSAGE_BYTES`] is read into its own buffer once the
//! agent's memory budget has its length reserved; the reservation goes with its bytes.

use bytes::{Buf, Bytes, BytesMut};
use tokio::io::{AsyncRead, AsyncReadExt};

use crate::memory_budget::{Charge, OverBudget, SessionMemory, UNCOUNTED_MESSAGE_BYTES};

/// PostgreSQL's own limit for startup packets.
pub const MAX_STARTUP_PACKET: usize = 10_000;

#[derive(Debug, thiserror::Error)]
pub enum FrameError {
    #[error("connection error: {0}")]
    Io(#[from] std::io::Error),
    #[error("connection closed in the middle of a message")]
    Truncated,
    #[error("message length {0} is invalid")]
    BadLength(i64),
    #[error("message of {len} bytes exceeds the limit of {max} bytes")]
    TooLarge { len: usize, max: usize },
    #[error("{0}")]
    OverBudget(#[from] OverBudget),
}

/// One tagged message, with its original bytes (tag and length included).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Frame {
    pub tag: u8,
    pub raw: Bytes,
}

impl Frame {
    pub fn body(&self) -> &[u8] {
        &self.raw[5..]
    }

    /// Builds a frame from a tag and body (for messages the proxy writes itself).
    pub fn build(tag: u8, body: &[u8]) -> Frame {
        let mut raw = BytesMut::with_capacity(5 + body.len());
        raw.extend_from_slice(&[tag]);
        raw.extend_from_slice(&((body.len() + 4) as i32).to_be_bytes());
        raw.extend_from_slice(body);
        Frame {
            tag,
            raw: raw.freeze(),
        }
    }
}

/// The whole length (tag + length + body) of the frame at the front of `buf`, once
/// its header is in; checked against `max`.
fn frame_len(buf: &[u8], max: usize) -> Result<Option<usize>, FrameError> {
    if buf.len() < 5 {
        return Ok(None);
    }
    let len = i32::from_be_bytes([buf[1], buf[2], buf[3], buf[4]]);
    if len < 4 {
        return Err(FrameError::BadLength(len.into()));
    }
    let total = len as usize + 1;
    if total > max {
        return Err(FrameError::TooLarge { len: total, max });
    }
    Ok(Some(total))
}

/// Takes one complete tagged frame off the front of `buf`, if there is one.
/// `max` bounds the whole frame (tag + length + body).
pub fn parse_frame(buf: &mut BytesMut, max: usize) -> Result<Option<Frame>, FrameError> {
    let Some(total) = frame_len(buf, max)? else {
        return Ok(None);
    };
    if buf.len() < total {
        buf.reserve(total - buf.len());
        return Ok(None);
    }
    let raw = buf.split_to(total).freeze();
    Ok(Some(Frame { tag: raw[0], raw }))
}

/// Least free buffer space a read is given, and how much is added when there is less.
const MIN_READ: usize = 16 * 1024;
const READ_SIZE: usize = 64 * 1024;

/// Reads frames from one side of the connection.
pub struct FrameReader<R> {
    inner: R,
    buf: BytesMut,
    max: usize,
    /// The memory budget long frames are reserved from (`None`: not counted).
    memory: Option<SessionMemory>,
    /// A long frame being read, into its own buffer.
    long: Option<LongFrame>,
    /// The length of a frame refused unread (over the memory budget), at the front.
    refused: Option<usize>,
    /// Bytes read so far (for the session's closing record).
    pub bytes: u64,
}

/// A frame longer than [`UNCOUNTED_MESSAGE_BYTES`], with its reservation.
struct LongFrame {
    /// Filled up to `total` (its capacity, reserved at once).
    data: Vec<u8>,
    total: usize,
    charge: Charge,
}

/// The bytes of a long frame, owned by the frame's [`Bytes`]: the reservation is given
/// back when the last reference to them goes.
struct Charged {
    data: Vec<u8>,
    _charge: Charge,
}

impl AsRef<[u8]> for Charged {
    fn as_ref(&self) -> &[u8] {
        &self.data
    }
}

impl<R: AsyncRead + Unpin> FrameReader<R> {
    pub fn new(inner: R, max: usize) -> Self {
        FrameReader {
            inner,
            buf: BytesMut::with_capacity(16 * 1024),
            max,
            memory: None,
            long: None,
            refused: None,
            bytes: 0,
        }
    }

    /// Frames longer than [`UNCOUNTED_MESSAGE_BYTES`] are read only once `memory` has
    /// their length reserved.
    pub fn budgeted(mut self, memory: SessionMemory) -> Self {
        self.memory = Some(memory);
        self
    }

    /// The next frame; `None` on a clean end of stream between frames.
    /// Cancel-safe: bytes read before cancellation stay in the buffer.
    pub async fn next(&mut self) -> Result<Option<Frame>, FrameError> {
        loop {
            if let Some(long) = &mut self.long {
                if long.data.len() == long.total {
                    let LongFrame { data, charge, .. } = self.long.take().expect("long frame");
                    let tag = data[0];
                    let raw = Bytes::from_owner(Charged {
                        data,
                        _charge: charge,
                    });
                    return Ok(Some(Frame { tag, raw }));
                }
                let want = long.total - long.data.len();
                let n = (&mut self.inner)
                    .take(want as u64)
                    .read_buf(&mut long.data)
                    .await?;
                if n == 0 {
                    return Err(FrameError::Truncated);
                }
                self.bytes += n as u64;
                continue;
            }
            if let Some(memory) = &self.memory
                && let Some(total) = frame_len(&self.buf, self.max)?
                && total > UNCOUNTED_MESSAGE_BYTES
            {
                // Nothing more is read from this side until the bytes are reserved.
                let charge = match memory.reserve(total).await {
                    Ok(c) => c,
                    Err(e) => {
                        self.refused = Some(total);
                        return Err(e.into());
                    }
                };
                // Capacity only: pages are touched as bytes arrive, so a lying
                // length costs what was sent, not what was claimed.
                let mut data = Vec::with_capacity(total);
                let have = self.buf.len().min(total);
                data.extend_from_slice(&self.buf[..have]);
                self.buf.advance(have);
                self.long = Some(LongFrame {
                    data,
                    total,
                    charge,
                });
                continue;
            }
            if let Some(f) = parse_frame(&mut self.buf, self.max)? {
                return Ok(Some(f));
            }
            // Room for a large read: a result streams as many small frames, and a read
            // into a nearly full buffer would fetch only a few of them per syscall.
            if self.buf.capacity() - self.buf.len() < MIN_READ {
                self.buf.reserve(READ_SIZE);
            }
            let n = self.inner.read_buf(&mut self.buf).await?;
            if n == 0 {
                return if self.buf.is_empty() {
                    Ok(None)
                } else {
                    Err(FrameError::Truncated)
                };
            }
            self.bytes += n as u64;
        }
    }

    /// Reads and drops the frame refused for the memory budget, a chunk at a time, so
    /// the peer has sent all of it and reads the refusal rather than a reset.
    pub async fn discard_refused(&mut self) -> Result<(), FrameError> {
        let Some(total) = self.refused.take() else {
            return Ok(());
        };
        let have = self.buf.len().min(total);
        self.buf.advance(have);
        let mut left = total - have;
        let mut scratch = vec![0u8; 64 * 1024];
        while left > 0 {
            let want = left.min(scratch.len());
            let n = self.inner.read(&mut scratch[..want]).await?;
            if n == 0 {
                return Err(FrameError::Truncated);
            }
            self.bytes += n as u64;
            left -= n;
        }
        Ok(())
    }

    /// The next frame if it is already buffered and has tag `tag`: taken without
    /// waiting (a result's rows are handled in a run, not one wakeup each).
    pub fn next_buffered(&mut self, tag: u8) -> Result<Option<Frame>, FrameError> {
        // A long message being read comes first; it is taken by `next`.
        if self.long.is_some() || self.buf.first() != Some(&tag) || !self.has_frame() {
            return Ok(None);
        }
        parse_frame(&mut self.buf, self.max)
    }

    /// True when another complete frame is already buffered (so output can wait).
    pub fn has_frame(&self) -> bool {
        if let Some(long) = &self.long {
            return long.data.len() == long.total;
        }
        self.buf.len() >= 5 && {
            let len = i32::from_be_bytes([self.buf[1], self.buf[2], self.buf[3], self.buf[4]]);
            len >= 4 && self.buf.len() > len as usize
        }
    }
}

/// Reads one untagged startup-phase packet, taking exactly its bytes from the stream
/// (nothing is read ahead: bytes after an SSLRequest belong to the TLS handshake).
/// Returns the body after the length, or `None` on end of stream before any byte.
pub async fn read_startup<R: AsyncRead + Unpin>(r: &mut R) -> Result<Option<Bytes>, FrameError> {
    let mut len = [0u8; 4];
    match r.read_exact(&mut len).await {
        Ok(_) => {}
        Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => return Ok(None),
        Err(e) => return Err(e.into()),
    }
    let len = i32::from_be_bytes(len);
    if len < 8 {
        return Err(FrameError::BadLength(len.into()));
    }
    if len as usize > MAX_STARTUP_PACKET {
        return Err(FrameError::TooLarge {
            len: len as usize,
            max: MAX_STARTUP_PACKET,
        });
    }
    let mut body = vec![0u8; len as usize - 4];
    r.read_exact(&mut body).await.map_err(|e| {
        if e.kind() == std::io::ErrorKind::UnexpectedEof {
            FrameError::Truncated
        } else {
            e.into()
        }
    })?;
    Ok(Some(Bytes::from(body)))
}

/// A cursor over a message body with checked reads: every field a message has is
/// read through here, so a short or lying body is an error, never a panic.
pub struct Fields<'a> {
    buf: &'a [u8],
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("message body is malformed: {0}")]
pub struct Malformed(pub &'static str);

impl<'a> Fields<'a> {
    pub fn new(buf: &'a [u8]) -> Self {
        Fields { buf }
    }

    pub fn remaining(&self) -> usize {
        self.buf.len()
    }

    pub fn u8(&mut self) -> Result<u8, Malformed> {
        if self.buf.is_empty() {
            return Err(Malformed("truncated byte"));
        }
        Ok(self.buf.get_u8())
    }

    pub fn i16(&mut self) -> Result<i16, Malformed> {
        if self.buf.len() < 2 {
            return Err(Malformed("truncated int16"));
        }
        Ok(self.buf.get_i16())
    }

    pub fn i32(&mut self) -> Result<i32, Malformed> {
        if self.buf.len() < 4 {
            return Err(Malformed("truncated int32"));
        }
        Ok(self.buf.get_i32())
    }

    pub fn bytes(&mut self, n: usize) -> Result<&'a [u8], Malformed> {
        if self.buf.len() < n {
            return Err(Malformed("truncated field"));
        }
        let (a, b) = self.buf.split_at(n);
        self.buf = b;
        Ok(a)
    }

    /// A NUL-terminated string, as raw bytes without the NUL.
    pub fn cstr(&mut self) -> Result<&'a [u8], Malformed> {
        let Some(end) = self.buf.iter().position(|b| *b == 0) else {
            return Err(Malformed("string without terminator"));
        };
        let s = &self.buf[..end];
        self.buf = &self.buf[end + 1..];
        Ok(s)
    }

    pub fn rest(&mut self) -> &'a [u8] {
        std::mem::take(&mut self.buf)
    }

    pub fn end(&self) -> Result<(), Malformed> {
        if self.buf.is_empty() {
            Ok(())
        } else {
            Err(Malformed("trailing bytes"))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn frames_split_and_wait() {
        let mut buf = BytesMut::new();
        buf.extend_from_slice(b"Q\0\0\0\x08abc\0");
        buf.extend_from_slice(b"S\0\0");
        let f = parse_frame(&mut buf, 1024).unwrap().unwrap();
        assert_eq!(f.tag, b'Q');
        assert_eq!(f.body(), b"abc\0");
        assert!(parse_frame(&mut buf, 1024).unwrap().is_none());
        buf.extend_from_slice(b"\0\x04");
        assert_eq!(parse_frame(&mut buf, 1024).unwrap().unwrap().tag, b'S');
    }

    #[test]
    fn bad_lengths_are_errors() {
        let mut buf = BytesMut::from(&b"Q\0\0\0\x03"[..]);
        assert!(matches!(
            parse_frame(&mut buf, 1024),
            Err(FrameError::BadLength(3))
        ));
        let mut buf = BytesMut::from(&b"Q\xff\xff\xff\xff"[..]);
        assert!(matches!(
            parse_frame(&mut buf, 1024),
            Err(FrameError::BadLength(-1))
        ));
        let mut buf = BytesMut::from(&b"Q\0\x10\0\0"[..]);
        assert!(matches!(
            parse_frame(&mut buf, 1024),
            Err(FrameError::TooLarge { .. })
        ));
    }

    fn long_query(body: usize) -> Vec<u8> {
        let mut m = vec![b'Q'];
        m.extend_from_slice(&((body + 4) as i32).to_be_bytes());
        m.extend(std::iter::repeat_n(b'x', body));
        m
    }

    #[tokio::test]
    async fn a_long_frame_holds_its_reservation_until_its_bytes_go() {
        let budget = crate::memory_budget::Budget::new(1 << 20);
        let mut input = long_query(300_000);
        input.extend_from_slice(b"S\0\0\0\x04");
        let mut r = FrameReader::new(&input[..], 1 << 20).budgeted(budget.session());
        let f = r.next().await.unwrap().unwrap();
        assert_eq!((f.tag, f.raw.len()), (b'Q', 300_005));
        assert_eq!(f.raw[..], input[..300_005]);
        assert!(budget.in_use() >= 300_005);
        let copy = f.raw.slice(10..20);
        drop(f);
        assert!(
            budget.in_use() > 0,
            "a slice keeps the bytes, and so the reservation"
        );
        drop(copy);
        assert_eq!(budget.in_use(), 0);
        assert_eq!(r.next().await.unwrap().unwrap().tag, b'S');
        assert!(r.next().await.unwrap().is_none());
    }

    #[tokio::test]
    async fn a_frame_larger_than_the_budget_is_refused_unread() {
        let budget = crate::memory_budget::Budget::new(1 << 20);
        let input = long_query(2 << 20);
        let mut r = FrameReader::new(&input[..], 64 << 20).budgeted(budget.session());
        assert!(matches!(
            r.next().await,
            Err(FrameError::OverBudget(
                crate::memory_budget::OverBudget::Never { .. }
            ))
        ));
        assert!(r.bytes < 1 << 20, "read {} bytes of it", r.bytes);
        r.discard_refused().await.unwrap();
        assert!(
            r.next().await.unwrap().is_none(),
            "the refused frame is gone"
        );
        assert_eq!(budget.in_use(), 0);
    }

    #[test]
    fn fields_are_checked() {
        let mut f = Fields::new(b"ab\0\0\0");
        assert_eq!(f.cstr().unwrap(), b"ab");
        assert!(f.i32().is_err());
        let mut f = Fields::new(b"ab");
        assert!(f.cstr().is_err());
    }
}
