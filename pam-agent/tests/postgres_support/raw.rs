//! A minimal protocol client for tests that send messages no driver sends on its own
//! (a batch left open, a FunctionCall of a chosen OID). It logs in as `trusty`
//! (trusted from 127.0.0.1, see [`super::PgServer::start`]).

use std::{
    io::{Read, Write},
    net::TcpStream,
    time::Duration,
};

use super::Proxy;

pub struct Raw {
    s: TcpStream,
}

impl Raw {
    pub fn login(proxy: &Proxy) -> Raw {
        let s = TcpStream::connect(("127.0.0.1", proxy.port)).unwrap();
        // Only so a broken proxy fails the test instead of hanging it.
        s.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
        let mut r = Raw { s };
        let mut body = 196608i32.to_be_bytes().to_vec();
        for part in ["user", "trusty", "database", "postgres", ""] {
            body.extend_from_slice(part.as_bytes());
            body.push(0);
        }
        let mut p = ((body.len() + 4) as i32).to_be_bytes().to_vec();
        p.extend_from_slice(&body);
        r.s.write_all(&p).unwrap();
        while r.frame().expect("login answer").0 != b'Z' {}
        r
    }

    /// The next message (tag, body); `None` when the connection ended.
    pub fn frame(&mut self) -> Option<(u8, Vec<u8>)> {
        let mut head = [0u8; 5];
        self.s.read_exact(&mut head).ok()?;
        let len = i32::from_be_bytes([head[1], head[2], head[3], head[4]]) as usize;
        let mut body = vec![0u8; len - 4];
        self.s.read_exact(&mut body).ok()?;
        Some((head[0], body))
    }

    pub fn send(&mut self, frames: &[Vec<u8>]) {
        self.s.write_all(&frames.concat()).unwrap();
    }

    /// Messages up to and including ReadyForQuery.
    pub fn until_ready(&mut self) -> Vec<(u8, Vec<u8>)> {
        let mut out = Vec::new();
        loop {
            let f = self.frame().expect("an answer before ReadyForQuery");
            let done = f.0 == b'Z';
            out.push(f);
            if done {
                return out;
            }
        }
    }
}

/// One message: tag, length, body.
pub fn frame(tag: u8, body: &[u8]) -> Vec<u8> {
    let mut f = vec![tag];
    f.extend_from_slice(&((body.len() + 4) as i32).to_be_bytes());
    f.extend_from_slice(body);
    f
}

/// A FunctionCall of `oid` without arguments, text result.
pub fn function_call(oid: u32) -> Vec<u8> {
    let mut body = oid.to_be_bytes().to_vec();
    body.extend_from_slice(&[0, 0, 0, 0, 0, 0]);
    frame(b'F', &body)
}

/// The SQLSTATE of an ErrorResponse body.
pub fn sqlstate(body: &[u8]) -> String {
    field(body, b'C')
}

/// One field of an ErrorResponse body (`b'M'`: the message).
pub fn field(body: &[u8], code: u8) -> String {
    body.split(|b| *b == 0)
        .find_map(|f| f.strip_prefix(&[code]))
        .map(|c| String::from_utf8_lossy(c).into_owned())
        .unwrap_or_default()
}
