//! Backend (B) messages the proxy reads or writes. Every other backend message is
//! forwarded as its original bytes.

use super::frame::{Fields, Frame, Malformed};

pub const AUTHENTICATION: u8 = b'R';
pub const BACKEND_KEY_DATA: u8 = b'K';
pub const READY_FOR_QUERY: u8 = b'Z';
pub const ERROR_RESPONSE: u8 = b'E';
pub const PARAMETER_STATUS: u8 = b'S';
pub const COMMAND_COMPLETE: u8 = b'C';
pub const EMPTY_QUERY: u8 = b'I';
pub const PORTAL_SUSPENDED: u8 = b's';
pub const DATA_ROW: u8 = b'D';
pub const ROW_DESCRIPTION: u8 = b'T';
pub const NO_DATA: u8 = b'n';
pub const PARAMETER_DESCRIPTION: u8 = b't';
pub const COPY_OUT_RESPONSE: u8 = b'H';
pub const COPY_BOTH_RESPONSE: u8 = b'W';
pub const COPY_DATA: u8 = b'd';
pub const COPY_DONE: u8 = b'c';
pub const FUNCTION_CALL_RESPONSE: u8 = b'V';
pub const NOTICE_RESPONSE: u8 = b'N';
pub const NOTIFICATION_RESPONSE: u8 = b'A';

/// SQLSTATEs the proxy uses.
pub mod sqlstate {
    /// insufficient_privilege: a policy refusal.
    pub const REFUSED: &str = "42501";
    /// syntax_error: the refusal of a text that does not parse (the server's parser,
    /// which the agent's is, would have answered so).
    pub const SYNTAX_ERROR: &str = "42601";
    /// protocol_violation.
    pub const PROTOCOL_VIOLATION: &str = "08P01";
    /// program_limit_exceeded.
    pub const TOO_LARGE: &str = "54000";
    /// connection_failure (audit unavailable).
    pub const CONNECTION_FAILURE: &str = "08006";
    /// invalid_cursor_name: what the server answers to our missing-portal Execute.
    pub const INVALID_CURSOR_NAME: &str = "34000";
    /// Too many connections (the server's own code when it is full).
    pub const TOO_MANY_CONNECTIONS: &str = "53300";
    /// invalid_authorization_specification: a login the agent will not make.
    pub const INVALID_AUTHORIZATION: &str = "28000";
    /// A notice that a statement waits for approval (warning class: drivers log it).
    pub const HELD: &str = "01000";
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Severity {
    Error,
    Fatal,
    /// For NoticeResponse.
    Notice,
}

/// ErrorResponse with the fields libpq and drivers show: severity, SQLSTATE, message,
/// and optional detail and hint.
pub fn error(
    severity: Severity,
    code: &str,
    message: &str,
    detail: Option<&str>,
    hint: Option<&str>,
) -> Frame {
    let sev = match severity {
        Severity::Error => "ERROR",
        Severity::Fatal => "FATAL",
        Severity::Notice => "NOTICE",
    };
    let mut body = Vec::with_capacity(64 + message.len());
    let mut field = |t: u8, v: &str| {
        body.push(t);
        // NUL would end the field early: strip it.
        body.extend(v.bytes().filter(|b| *b != 0));
        body.push(0);
    };
    field(b'S', sev);
    field(b'V', sev);
    field(b'C', code);
    field(b'M', message);
    if let Some(d) = detail {
        field(b'D', d);
    }
    if let Some(h) = hint {
        field(b'H', h);
    }
    body.push(0);
    let tag = match severity {
        Severity::Notice => NOTICE_RESPONSE,
        _ => ERROR_RESPONSE,
    };
    Frame::build(tag, &body)
}

/// NoticeResponse (psql prints it; drivers log it) with a SQLSTATE, message and hint.
pub fn notice(code: &str, message: &str, detail: Option<&str>, hint: Option<&str>) -> Frame {
    error(Severity::Notice, code, message, detail, hint)
}

pub fn ready_for_query(status: u8) -> Frame {
    Frame::build(READY_FOR_QUERY, &[status])
}

/// ReadyForQuery's transaction status ('I', 'T' or 'E').
pub fn ready_status(f: &Frame) -> Result<u8, Malformed> {
    let mut r = Fields::new(f.body());
    let s = r.u8()?;
    r.end()?;
    if !matches!(s, b'I' | b'T' | b'E') {
        return Err(Malformed("unknown transaction status"));
    }
    Ok(s)
}

/// ParameterDescription: the type OID of each parameter of a described statement.
pub fn parameter_types(f: &Frame) -> Result<Vec<u32>, Malformed> {
    let mut r = Fields::new(f.body());
    let n = r.i16()? as u16 as usize;
    let mut out = Vec::with_capacity(n);
    for _ in 0..n {
        out.push(r.i32()? as u32);
    }
    r.end()?;
    Ok(out)
}

/// The SQLSTATE of an ErrorResponse.
pub fn error_code(f: &Frame) -> Option<String> {
    error_field(f, b'C')
}

/// One field of an ErrorResponse or NoticeResponse (`b'M'`: the message), lossily
/// decoded.
pub fn error_field(f: &Frame, field: u8) -> Option<String> {
    let mut r = Fields::new(f.body());
    loop {
        let t = r.u8().ok()?;
        if t == 0 {
            return None;
        }
        let v = r.cstr().ok()?;
        if t == field {
            return Some(String::from_utf8_lossy(v).into_owned());
        }
    }
}

/// The fields of an ErrorResponse that point into the statement it answers (position,
/// internal position and query, context): meaningless for another statement's text.
const STATEMENT_FIELDS: &[u8] = b"PpqW";

/// An ErrorResponse the server gave the agent's own statement, shown in place of a
/// worker's statement: every field kept but those pointing into the agent's text.
/// `None` if it is not a well-formed ErrorResponse.
pub fn error_for_another_statement(f: &Frame) -> Option<Frame> {
    if f.tag != ERROR_RESPONSE {
        return None;
    }
    let mut r = Fields::new(f.body());
    let mut body = Vec::with_capacity(f.body().len());
    loop {
        let t = r.u8().ok()?;
        if t == 0 {
            break;
        }
        let v = r.cstr().ok()?;
        if !STATEMENT_FIELDS.contains(&t) {
            body.push(t);
            body.extend_from_slice(v);
            body.push(0);
        }
    }
    body.push(0);
    Some(Frame::build(ERROR_RESPONSE, &body))
}

/// Rows reported by a CommandComplete tag: the last number of `INSERT 0 5`,
/// `SELECT 3`, `UPDATE 2`, `COPY 10`...; `None` for tags without a count.
pub fn command_rows(f: &Frame) -> Option<u64> {
    let mut r = Fields::new(f.body());
    let tag = std::str::from_utf8(r.cstr().ok()?).ok()?;
    let mut words = tag.split(' ');
    let first = words.next()?;
    if !matches!(
        first,
        "INSERT" | "SELECT" | "UPDATE" | "DELETE" | "MERGE" | "COPY" | "FETCH" | "MOVE"
    ) {
        return None;
    }
    tag.rsplit(' ').next()?.parse().ok()
}

/// BackendKeyData: (process id, secret key). The key is 4 bytes in protocol 3.0 and
/// up to 256 in 3.2.
pub fn backend_key(f: &Frame) -> Result<(i32, Vec<u8>), Malformed> {
    let mut r = Fields::new(f.body());
    let pid = r.i32()?;
    let key = r.rest();
    if !(4..=256).contains(&key.len()) {
        return Err(Malformed("cancel key length"));
    }
    Ok((pid, key.to_vec()))
}

pub fn backend_key_data(pid: i32, key: &[u8]) -> Frame {
    let mut body = pid.to_be_bytes().to_vec();
    body.extend_from_slice(key);
    Frame::build(BACKEND_KEY_DATA, &body)
}

/// ParameterStatus: (name, value).
pub fn parameter_status(f: &Frame) -> Result<(String, String), Malformed> {
    let mut r = Fields::new(f.body());
    let k = String::from_utf8_lossy(r.cstr()?).into_owned();
    let v = String::from_utf8_lossy(r.cstr()?).into_owned();
    Ok((k, v))
}

/// Authentication request code (0 = ok).
pub fn auth_code(f: &Frame) -> Result<i32, Malformed> {
    Fields::new(f.body()).i32()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rows_from_tags() {
        let c = |t: &str| Frame::build(COMMAND_COMPLETE, format!("{t}\0").as_bytes());
        assert_eq!(command_rows(&c("INSERT 0 5")), Some(5));
        assert_eq!(command_rows(&c("SELECT 3")), Some(3));
        assert_eq!(command_rows(&c("COPY 10")), Some(10));
        assert_eq!(command_rows(&c("CREATE TABLE")), None);
    }

    #[test]
    fn error_round_trip() {
        let e = error(Severity::Error, "42501", "no", Some("d"), None);
        assert_eq!(error_code(&e).as_deref(), Some("42501"));
    }

    #[test]
    fn another_statements_error_loses_only_its_positions() {
        let body = b"SERROR\0C57014\0Mcanceling statement due to user request\0P12\0\
                     Wwhile scanning\0q\x53ELECT 1\0p3\0Rfile.c\0\0";
        let e = Frame::build(ERROR_RESPONSE, body);
        let shown = error_for_another_statement(&e).expect("well formed");
        assert_eq!(
            shown.body(),
            b"SERROR\0C57014\0Mcanceling statement due to user request\0Rfile.c\0\0"
        );
        assert_eq!(error_code(&shown).as_deref(), Some("57014"));
        let truncated = Frame::build(ERROR_RESPONSE, b"SERROR\0C570");
        assert_eq!(error_for_another_statement(&truncated), None);
    }
}
