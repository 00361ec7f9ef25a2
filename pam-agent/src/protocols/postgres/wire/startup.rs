//! Startup-phase packets (F): StartupMessage, SSLRequest, GSSENCRequest, CancelRequest.

use bytes::Bytes;

use super::frame::{Fields, Malformed};

pub const SSL_REQUEST: i32 = 80877103;
pub const GSSENC_REQUEST: i32 = 80877104;
pub const CANCEL_REQUEST: i32 = 80877102;

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Startup {
    Ssl,
    GssEnc,
    Cancel {
        pid: i32,
        secret: Vec<u8>,
    },
    Start {
        /// Major version 3; the minor is relayed (the server negotiates it down).
        version: i32,
        params: Vec<(String, String)>,
    },
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum StartupError {
    #[error(transparent)]
    Malformed(#[from] Malformed),
    #[error("unsupported protocol version {major}.{minor}")]
    Version { major: i32, minor: i32 },
    #[error("startup parameter is not UTF-8")]
    NotUtf8,
    #[error("startup parameter `{0}` is not allowed through pam-agent")]
    Forbidden(String),
    #[error(transparent)]
    Option(#[from] super::options::OptionError),
    #[error("startup message has no `user`")]
    NoUser,
}

/// `body` is the packet after its length word.
pub fn parse(body: &[u8]) -> Result<Startup, StartupError> {
    let mut f = Fields::new(body);
    let code = f.i32()?;
    match code {
        SSL_REQUEST => {
            f.end()?;
            Ok(Startup::Ssl)
        }
        GSSENC_REQUEST => {
            f.end()?;
            Ok(Startup::GssEnc)
        }
        CANCEL_REQUEST => {
            let pid = f.i32()?;
            let secret = f.rest().to_vec();
            if !(4..=256).contains(&secret.len()) {
                return Err(Malformed("cancel key length").into());
            }
            Ok(Startup::Cancel { pid, secret })
        }
        version => {
            let (major, minor) = (version >> 16, version & 0xffff);
            if major != 3 {
                return Err(StartupError::Version { major, minor });
            }
            let mut params = Vec::new();
            loop {
                let k = f.cstr()?;
                if k.is_empty() {
                    break;
                }
                let v = f.cstr()?;
                let k = std::str::from_utf8(k).map_err(|_| StartupError::NotUtf8)?;
                let v = std::str::from_utf8(v).map_err(|_| StartupError::NotUtf8)?;
                params.push((k.to_owned(), v.to_owned()));
            }
            f.end()?;
            Ok(Startup::Start { version, params })
        }
    }
}

/// Parameters that would change, before the first statement, what later statements
/// mean (role, name resolution, lexing) or turn the session into something else: only
/// a short list passes ([`super::options`]).
pub fn check_params(params: &[(String, String)]) -> Result<(), StartupError> {
    if !params.iter().any(|(k, _)| k == "user") {
        return Err(StartupError::NoUser);
    }
    for (k, v) in params {
        // The server matches these four exactly; any other key is a setting.
        match k.as_str() {
            "user" | "database" => {}
            "replication" => {
                if !matches!(
                    v.to_ascii_lowercase().as_str(),
                    "false" | "0" | "off" | "no"
                ) {
                    return Err(StartupError::Forbidden(k.clone()));
                }
            }
            "options" => super::options::check_options(v)?,
            _ => super::options::check_parameter(k, v)?,
        }
    }
    Ok(())
}

/// A StartupMessage body (protocol 3.0, without its length word) carrying `params`.
pub fn startup_message(params: &[(String, String)]) -> Bytes {
    let mut out = Vec::with_capacity(64);
    out.extend_from_slice(&(3i32 << 16).to_be_bytes());
    for (k, v) in params {
        out.extend_from_slice(k.as_bytes());
        out.push(0);
        out.extend_from_slice(v.as_bytes());
        out.push(0);
    }
    out.push(0);
    Bytes::from(out)
}

/// Re-encodes a CancelRequest with the upstream's key.
pub fn cancel_request(pid: i32, secret: &[u8]) -> Bytes {
    let mut out = Vec::with_capacity(12 + secret.len());
    out.extend_from_slice(&((12 + secret.len()) as i32).to_be_bytes());
    out.extend_from_slice(&CANCEL_REQUEST.to_be_bytes());
    out.extend_from_slice(&pid.to_be_bytes());
    out.extend_from_slice(secret);
    Bytes::from(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_each_packet() {
        assert_eq!(parse(&SSL_REQUEST.to_be_bytes()).unwrap(), Startup::Ssl);
        let mut b = 196608i32.to_be_bytes().to_vec();
        b.extend_from_slice(b"user\0bob\0database\0db\0\0");
        let Startup::Start { params, .. } = parse(&b).unwrap() else {
            panic!()
        };
        assert_eq!(params[1], ("database".into(), "db".into()));
        assert!(check_params(&params).is_ok());
        let c = cancel_request(7, &[1, 2, 3, 4]);
        assert_eq!(
            parse(&c[4..]).unwrap(),
            Startup::Cancel {
                pid: 7,
                secret: vec![1, 2, 3, 4]
            }
        );
    }

    #[test]
    fn refuses_bad_packets() {
        assert!(parse(&[0, 1]).is_err());
        assert!(matches!(
            parse(&(2i32 << 16).to_be_bytes()),
            Err(StartupError::Version { .. })
        ));
        let mut b = 196608i32.to_be_bytes().to_vec();
        b.extend_from_slice(b"user\0bob"); // no terminator
        assert!(parse(&b).is_err());
        let p = |k: &str, v: &str| {
            vec![
                ("user".to_owned(), "u".to_owned()),
                (k.to_owned(), v.to_owned()),
            ]
        };
        assert!(check_params(&p("options", "-c role=postgres")).is_err());
        assert!(check_params(&p("client_encoding", "SJIS")).is_err());
        assert!(check_params(&p("client_encoding", "UTF8")).is_ok());
        assert!(check_params(&p("replication", "database")).is_err());
        assert!(check_params(&p("application_name", "x")).is_ok());
    }
}
