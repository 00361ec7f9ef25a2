//! `transfer` (client) and `serve-sink` (server): a one-shot exchange that exercises a
//! half-close and checks every byte both ways.
//!
//! The client sends a 16-byte header (reply length, seed), then its payload (a
//! pseudo-random stream from the seed), then half-closes. The server checks each byte
//! against the same stream as it arrives; only after the client's end it answers with
//! one JSON line (`{"count":N,"intact":bool}`) and the reply (the stream of the seed's
//! complement), then closes. The client checks the reply the same way.

use std::{
    io::{BufRead, Read, Write},
    net::{Shutdown, SocketAddr, TcpStream},
};

const CHUNK: usize = 256 * 1024;

/// The test stream: splitmix64 words from a seed, cut to any length.
struct Stream {
    state: u64,
    buf: Vec<u8>,
    at: usize,
}

impl Stream {
    fn new(seed: u64) -> Stream {
        Stream {
            state: seed,
            buf: Vec::new(),
            at: 0,
        }
    }

    fn fill(&mut self, out: &mut [u8]) {
        let mut i = 0;
        while i < out.len() {
            if self.at == self.buf.len() {
                self.buf.clear();
                for _ in 0..CHUNK / 8 {
                    self.state = self.state.wrapping_add(0x9e37_79b9_7f4a_7c15);
                    let mut z = self.state;
                    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
                    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
                    self.buf.extend_from_slice(&(z ^ (z >> 31)).to_le_bytes());
                }
                self.at = 0;
            }
            let n = (out.len() - i).min(self.buf.len() - self.at);
            out[i..i + n].copy_from_slice(&self.buf[self.at..self.at + n]);
            self.at += n;
            i += n;
        }
    }
}

/// Reads `r` to its end, comparing with the stream; returns (bytes, all equal).
fn check<R: Read>(r: &mut R, seed: u64) -> std::io::Result<(u64, bool)> {
    let mut stream = Stream::new(seed);
    let mut got = vec![0u8; CHUNK];
    let mut want = vec![0u8; CHUNK];
    let (mut count, mut intact) = (0u64, true);
    loop {
        let n = r.read(&mut got)?;
        if n == 0 {
            return Ok((count, intact));
        }
        stream.fill(&mut want[..n]);
        intact &= got[..n] == want[..n];
        count += n as u64;
    }
}

pub fn serve(mut s: TcpStream) {
    let mut header = [0u8; 16];
    if s.read_exact(&mut header).is_err() {
        return;
    }
    let reply = u64::from_le_bytes(header[..8].try_into().unwrap());
    let seed = u64::from_le_bytes(header[8..].try_into().unwrap());
    let Ok((count, intact)) = check(&mut s, seed) else {
        return;
    };
    let line = serde_json::json!({"count": count, "intact": intact}).to_string() + "\n";
    if s.write_all(line.as_bytes()).is_err() {
        return;
    }
    let mut stream = Stream::new(!seed);
    let mut buf = vec![0u8; CHUNK];
    let mut left = reply;
    while left > 0 {
        let n = left.min(CHUNK as u64) as usize;
        stream.fill(&mut buf[..n]);
        if s.write_all(&buf[..n]).is_err() {
            return;
        }
        left -= n as u64;
    }
    let _ = s.shutdown(Shutdown::Write);
}

/// `transfer ADDR SEND REPLY [HOLD_AT]`: with HOLD_AT, prints `{"held":true}` once
/// that many payload bytes are written and waits for a line on stdin before going on.
pub fn client(args: &[String]) {
    let addr: SocketAddr = args[0].parse().expect("address");
    let send: u64 = args[1].parse().expect("bytes to send");
    let reply: u64 = args[2].parse().expect("bytes of reply");
    let hold: Option<u64> = args.get(3).map(|h| h.parse().expect("hold offset"));
    let seed = 0x5eed_0000_0000_0000 ^ u64::from(std::process::id());
    let pid = std::process::id();
    let mut s = match TcpStream::connect(addr) {
        Ok(s) => s,
        Err(e) => {
            println!(
                "{}",
                serde_json::json!({"pid": pid, "error": e.to_string(), "errno": e.raw_os_error()})
            );
            std::process::exit(1);
        }
    };
    let mut sent = 0u64;
    let write_result = (|| -> std::io::Result<()> {
        let mut header = [0u8; 16];
        header[..8].copy_from_slice(&reply.to_le_bytes());
        header[8..].copy_from_slice(&seed.to_le_bytes());
        s.write_all(&header)?;
        sent += 16;
        let mut stream = Stream::new(seed);
        let mut buf = vec![0u8; CHUNK];
        let mut left = send;
        let mut payload = 0u64;
        while left > 0 {
            let mut n = left.min(CHUNK as u64) as usize;
            if let Some(h) = hold.filter(|h| payload < *h) {
                n = n.min((h - payload) as usize);
            }
            stream.fill(&mut buf[..n]);
            s.write_all(&buf[..n])?;
            sent += n as u64;
            payload += n as u64;
            left -= n as u64;
            if hold == Some(payload) {
                println!("{}", serde_json::json!({"held": true, "pid": pid}));
                std::io::stdout().flush()?;
                let mut line = String::new();
                std::io::stdin().lock().read_line(&mut line)?;
            }
        }
        s.shutdown(Shutdown::Write)
    })();
    // The answer: a JSON line, then the reply stream.
    let mut reader = std::io::BufReader::new(&s);
    let mut line = String::new();
    let read_line = reader.read_line(&mut line);
    let server: Option<serde_json::Value> = serde_json::from_str(line.trim()).ok();
    let checked = if server.is_some() {
        check(&mut reader, !seed)
    } else {
        Ok((0, false))
    };
    let (reply_bytes, reply_intact) = checked.as_ref().map_or((0, false), |c| *c);
    let error = write_result
        .err()
        .or(read_line.err())
        .or(checked.err())
        .map(|e| e.to_string());
    println!(
        "{}",
        serde_json::json!({
            "pid": pid,
            "sent": sent,
            "received": line.len() as u64 + reply_bytes,
            "server": server,
            "reply_bytes": reply_bytes,
            "reply_intact": reply_intact && reply_bytes == reply,
            "error": error,
        })
    );
}
