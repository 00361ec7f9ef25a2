//! Frontend (F) messages the proxy reads fields from. Every other frontend message is
//! forwarded as its original bytes.

use super::frame::{Fields, Frame, Malformed};

pub const QUERY: u8 = b'Q';
pub const PARSE: u8 = b'P';
pub const BIND: u8 = b'B';
pub const DESCRIBE: u8 = b'D';
pub const EXECUTE: u8 = b'E';
pub const CLOSE: u8 = b'C';
pub const SYNC: u8 = b'S';
pub const FLUSH: u8 = b'H';
pub const FUNCTION_CALL: u8 = b'F';
pub const COPY_DATA: u8 = b'd';
pub const COPY_DONE: u8 = b'c';
pub const COPY_FAIL: u8 = b'f';
pub const TERMINATE: u8 = b'X';
/// PasswordMessage / SASLInitialResponse / SASLResponse / GSSResponse.
pub const AUTH_RESPONSE: u8 = b'p';

/// SQL text as sent. Non-UTF-8 text is kept as `Err` so the caller refuses it.
pub fn text(b: &[u8]) -> Result<&str, Malformed> {
    std::str::from_utf8(b).map_err(|_| Malformed("SQL text is not UTF-8"))
}

fn name(b: &[u8]) -> Result<String, Malformed> {
    std::str::from_utf8(b)
        .map(str::to_owned)
        .map_err(|_| Malformed("name is not UTF-8"))
}

/// Query: the SQL text (NUL-terminated).
pub fn query(f: &Frame) -> Result<&[u8], Malformed> {
    let mut r = Fields::new(f.body());
    let q = r.cstr()?;
    r.end()?;
    Ok(q)
}

pub struct Parse<'a> {
    pub statement: String,
    pub query: &'a [u8],
}

pub fn parse(f: &Frame) -> Result<Parse<'_>, Malformed> {
    let mut r = Fields::new(f.body());
    let statement = name(r.cstr()?)?;
    let query = r.cstr()?;
    // Counts are unsigned 16-bit, as the server reads them (up to 65535 parameters).
    let n = r.i16()? as u16;
    r.bytes(n as usize * 4)?;
    r.end()?;
    Ok(Parse { statement, query })
}

pub struct Bind {
    pub portal: String,
    pub statement: String,
}

/// Bind: only the names are needed; the rest of the body is checked for shape so a
/// lying length cannot pass.
pub fn bind(f: &Frame) -> Result<Bind, Malformed> {
    let mut r = Fields::new(f.body());
    let portal = name(r.cstr()?)?;
    let statement = name(r.cstr()?)?;
    let nfmt = r.i16()? as u16;
    r.bytes(nfmt as usize * 2)?;
    let nparams = r.i16()? as u16;
    for _ in 0..nparams {
        let len = r.i32()?;
        if len >= 0 {
            r.bytes(len as usize)?;
        } else if len != -1 {
            return Err(Malformed("negative parameter length"));
        }
    }
    let nres = r.i16()? as u16;
    r.bytes(nres as usize * 2)?;
    r.end()?;
    Ok(Bind { portal, statement })
}

/// A Bind's parameters: each value's format code (0 text, 1 binary) and bytes (`None`:
/// NULL).
pub struct BindValues<'a> {
    pub values: Vec<(i16, Option<&'a [u8]>)>,
}

/// Bind: the values bound, with their formats (no format codes: all text; one: all of
/// that format; else one per value, as the server reads them).
pub fn bind_values(f: &Frame) -> Result<BindValues<'_>, Malformed> {
    let mut r = Fields::new(f.body());
    r.cstr()?;
    r.cstr()?;
    let nfmt = r.i16()? as u16 as usize;
    let mut formats = Vec::with_capacity(nfmt);
    for _ in 0..nfmt {
        formats.push(r.i16()?);
    }
    let nparams = r.i16()? as u16 as usize;
    let mut values = Vec::with_capacity(nparams);
    for i in 0..nparams {
        let format = match nfmt {
            0 => 0,
            1 => formats[0],
            _ => *formats
                .get(i)
                .ok_or(Malformed("fewer format codes than parameters"))?,
        };
        let len = r.i32()?;
        let value = if len >= 0 {
            Some(r.bytes(len as usize)?)
        } else if len == -1 {
            None
        } else {
            return Err(Malformed("negative parameter length"));
        };
        values.push((format, value));
    }
    Ok(BindValues { values })
}

/// Parse: the parameter types the worker declared (0: unspecified).
pub fn parse_types(f: &Frame) -> Result<Vec<u32>, Malformed> {
    let mut r = Fields::new(f.body());
    r.cstr()?;
    r.cstr()?;
    let n = r.i16()? as u16 as usize;
    let mut out = Vec::with_capacity(n);
    for _ in 0..n {
        out.push(r.i32()? as u32);
    }
    Ok(out)
}

/// Execute: portal name (row limit ignored).
pub fn execute(f: &Frame) -> Result<String, Malformed> {
    let mut r = Fields::new(f.body());
    let portal = name(r.cstr()?)?;
    r.i32()?;
    r.end()?;
    Ok(portal)
}

/// Close / Describe: ('S' statement | 'P' portal, name).
pub fn target(f: &Frame) -> Result<(u8, String), Malformed> {
    let mut r = Fields::new(f.body());
    let kind = r.u8()?;
    if kind != b'S' && kind != b'P' {
        return Err(Malformed("target must be 'S' or 'P'"));
    }
    let n = name(r.cstr()?)?;
    r.end()?;
    Ok((kind, n))
}

/// FunctionCall: the function's OID (arguments are relayed untouched).
pub fn function_call(f: &Frame) -> Result<u32, Malformed> {
    let mut r = Fields::new(f.body());
    Ok(r.i32()? as u32)
}

/// Execute of a portal that cannot exist (`portal` is a name the agent reserved): makes
/// the server fail the current batch (and roll back its implicit transaction) exactly
/// as if a statement had failed there.
pub fn execute_missing_portal(portal: &str) -> Frame {
    execute_message(portal)
}

pub fn flush() -> Frame {
    Frame::build(FLUSH, b"")
}

/// Describe of a portal: the proxy asks for a result's shape where the worker did not.
pub fn describe_portal(portal: &str) -> Frame {
    named(DESCRIBE, b'P', portal)
}

/// Parse of a named statement without parameter types.
pub fn parse_message(statement: &str, sql: &str) -> Frame {
    let mut body = Vec::with_capacity(statement.len() + sql.len() + 4);
    body.extend_from_slice(statement.as_bytes());
    body.push(0);
    body.extend_from_slice(sql.as_bytes());
    body.push(0);
    body.extend_from_slice(&0i16.to_be_bytes());
    Frame::build(PARSE, &body)
}

pub fn describe_statement(statement: &str) -> Frame {
    named(DESCRIBE, b'S', statement)
}

pub fn close_statement(statement: &str) -> Frame {
    named(CLOSE, b'S', statement)
}

/// A simple Query with `sql` (for statements the agent sends itself).
pub fn query_message(sql: &str) -> Frame {
    let mut body = Vec::with_capacity(sql.len() + 1);
    body.extend_from_slice(sql.as_bytes());
    body.push(0);
    Frame::build(QUERY, &body)
}

pub fn sync() -> Frame {
    Frame::build(SYNC, b"")
}

fn named(tag: u8, kind: u8, name: &str) -> Frame {
    let mut body = Vec::with_capacity(name.len() + 2);
    body.push(kind);
    body.extend_from_slice(name.as_bytes());
    body.push(0);
    Frame::build(tag, &body)
}

/// Bind of a named statement to a named portal: no parameters, text results.
pub fn bind_message(portal: &str, statement: &str) -> Frame {
    let mut body = Vec::with_capacity(portal.len() + statement.len() + 8);
    for n in [portal, statement] {
        body.extend_from_slice(n.as_bytes());
        body.push(0);
    }
    body.extend_from_slice(&[0; 6]);
    Frame::build(BIND, &body)
}

/// Bind of a named statement to a named portal with text parameters, text results.
pub fn bind_text_message(portal: &str, statement: &str, params: &[&str]) -> Frame {
    let mut body = Vec::with_capacity(portal.len() + statement.len() + 16);
    for n in [portal, statement] {
        body.extend_from_slice(n.as_bytes());
        body.push(0);
    }
    // No parameter format codes (all text), then the values.
    body.extend_from_slice(&0i16.to_be_bytes());
    body.extend_from_slice(&(params.len() as u16).to_be_bytes());
    for v in params {
        body.extend_from_slice(&(v.len() as i32).to_be_bytes());
        body.extend_from_slice(v.as_bytes());
    }
    // No result format codes (all text).
    body.extend_from_slice(&0i16.to_be_bytes());
    Frame::build(BIND, &body)
}

/// Execute of a portal, all rows.
pub fn execute_message(portal: &str) -> Frame {
    let mut body = Vec::with_capacity(portal.len() + 5);
    body.extend_from_slice(portal.as_bytes());
    body.push(0);
    body.extend_from_slice(&0i32.to_be_bytes());
    Frame::build(EXECUTE, &body)
}

pub fn close_portal(portal: &str) -> Frame {
    named(CLOSE, b'P', portal)
}
