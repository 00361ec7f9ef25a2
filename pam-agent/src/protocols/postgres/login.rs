//! Credential injection (`worker_auth = "none"`): the agent completes the worker's login
//! itself and logs in upstream with the principal's login, so the worker never holds
//! the database's secret.
//!
//! - [`plan`]: before the server is dialed, the principal's login is chosen, the role
//!   the worker asked for is checked against it (the role is the login's, or the libpq
//!   default, the worker's own user name; any other role is refused, FATAL 28000), the
//!   secret is read, and the startup parameters are rewritten: `user` becomes the
//!   login's role, `application_name` carries `pam-agent/<principal>`.
//! - [`UpstreamLogin`]: answers the server's authentication requests with the secret:
//!   SCRAM-SHA-256 (with channel binding, -PLUS, when the agent holds the upstream TLS
//!   and the server offers it), and md5 or clear text only where the resource lists them.
//!   The server's final SCRAM message is verified: a server that cannot prove it knows
//!   the password (someone in the middle) ends the session.

use bytes::BytesMut;
use postgres_protocol::{
    authentication::{
        md5_hash,
        sasl::{ChannelBinding, SCRAM_SHA_256, SCRAM_SHA_256_PLUS, ScramSha256},
    },
    message::frontend as pg_frontend,
};

use super::{
    config::UpstreamAuth,
    wire::{backend::sqlstate, frame::Frame},
};
use crate::{
    credentials::{self, Login, Secret},
    principal::Principal,
};

/// What a resource with `worker_auth = "none"` logs in with.
#[derive(Debug, Clone)]
pub struct Injection {
    pub logins: Vec<Login>,
    pub methods: Vec<UpstreamAuth>,
}

/// The login of one session, ready to send.
pub struct Plan {
    pub role: String,
    /// The startup parameters to send the server (the worker's, rewritten).
    pub params: Vec<(String, String)>,
    pub login: UpstreamLogin,
}

/// Why the worker may not log in: the SQLSTATE and message it gets, and the detail
/// journaled with the session's close (never the secret).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Refusal {
    pub code: &'static str,
    pub message: String,
}

/// The longest application_name the server keeps (NAMEDATALEN - 1).
const MAX_APPLICATION_NAME: usize = 63;

/// The principal's name in the server's own views (`pg_stat_activity`).
pub fn principal_tag(who: &Principal) -> String {
    let name = who
        .name
        .clone()
        .or_else(|| who.user.clone())
        .unwrap_or_else(|| format!("uid:{}", who.uid));
    format!("pam-agent/{name}")
}

pub fn plan(
    injection: &Injection,
    who: &Principal,
    resource: &str,
    params: &[(String, String)],
) -> Result<Plan, Refusal> {
    let principal = who
        .name
        .clone()
        .or_else(|| who.user.clone())
        .unwrap_or_else(|| format!("uid {}", who.uid));
    let refuse = |message: String| Refusal {
        code: sqlstate::INVALID_AUTHORIZATION,
        message,
    };
    let Some(login) = credentials::choose(&injection.logins, who) else {
        return Err(refuse(format!(
            "pam-agent: principal \"{principal}\" has no login on resource \"{resource}\""
        )));
    };
    let asked = params
        .iter()
        .find(|(k, _)| k == "user")
        .map(|(_, v)| v.as_str())
        .unwrap_or_default();
    if asked != login.role && Some(asked) != who.user.as_deref() {
        return Err(refuse(format!(
            "pam-agent: principal \"{principal}\" logs in to resource \"{resource}\" as role \"{}\", not \"{asked}\"",
            login.role
        )));
    }
    let secret = login.secret().map_err(|e| {
        tracing::error!(resource, principal, role = %login.role, error = %e, "login secret unavailable");
        refuse(format!(
            "pam-agent: the login of principal \"{principal}\" on resource \"{resource}\" is unavailable (see the agent's log)"
        ))
    })?;
    let tag = principal_tag(who);
    let mut out: Vec<(String, String)> = Vec::with_capacity(params.len() + 1);
    let mut tagged = false;
    for (k, v) in params {
        match k.as_str() {
            "user" => out.push((k.clone(), login.role.clone())),
            "application_name" => {
                tagged = true;
                let mut name = if v.is_empty() {
                    tag.clone()
                } else {
                    format!("{tag} {v}")
                };
                truncate(&mut name, MAX_APPLICATION_NAME);
                out.push((k.clone(), name));
            }
            _ => out.push((k.clone(), v.clone())),
        }
    }
    if !tagged {
        let mut name = tag;
        truncate(&mut name, MAX_APPLICATION_NAME);
        out.push(("application_name".into(), name));
    }
    Ok(Plan {
        role: login.role.clone(),
        params: out,
        login: UpstreamLogin {
            role: login.role.clone(),
            secret,
            methods: injection.methods.clone(),
            scram: None,
            method: None,
            binding: None,
        },
    })
}

fn truncate(s: &mut String, max: usize) {
    if s.len() > max {
        let mut at = max;
        while !s.is_char_boundary(at) {
            at -= 1;
        }
        s.truncate(at);
    }
}

/// The agent's side of the server's authentication exchange.
pub struct UpstreamLogin {
    role: String,
    secret: Secret,
    methods: Vec<UpstreamAuth>,
    scram: Option<ScramSha256>,
    /// The method the server asked for and got (for the log).
    pub method: Option<&'static str>,
    /// `tls-server-end-point` data of the server's certificate, when the agent holds
    /// TLS to the server.
    binding: Option<Vec<u8>>,
}

/// What to do with one authentication request of the server.
#[derive(Debug, PartialEq, Eq)]
pub enum Answer {
    /// Send these bytes to the server and wait for its next message.
    Send(Vec<u8>),
    /// The server accepted the login (AuthenticationOk): tell the worker.
    Accepted,
    /// Nothing to send (SASLFinal verified): wait for AuthenticationOk.
    Wait,
}

/// Authentication request codes (AuthenticationXxx).
const AUTH_OK: i32 = 0;
const AUTH_CLEARTEXT: i32 = 3;
const AUTH_MD5: i32 = 5;
const AUTH_SASL: i32 = 10;
const AUTH_SASL_CONTINUE: i32 = 11;
const AUTH_SASL_FINAL: i32 = 12;

impl UpstreamLogin {
    /// Channel binding for SCRAM-SHA-256-PLUS: the server certificate the agent's TLS
    /// connection to it presented (DER).
    pub fn bind_to(&mut self, server_cert_der: &[u8]) {
        self.binding = end_point_hash(server_cert_der);
    }

    /// The answer to one Authentication message; `Err` ends the session with a refusal.
    pub fn answer(&mut self, f: &Frame) -> Result<Answer, Refusal> {
        let body = f.body();
        let code = body
            .get(..4)
            .map(|b| i32::from_be_bytes([b[0], b[1], b[2], b[3]]))
            .ok_or_else(|| self.broken("a short authentication message"))?;
        let data = &body[4..];
        let mut buf = BytesMut::new();
        match code {
            AUTH_OK => return Ok(Answer::Accepted),
            AUTH_CLEARTEXT => {
                self.allowed(UpstreamAuth::Password, "a clear-text password")?;
                self.method = Some("password");
                let mut pw = self.secret.expose().to_vec();
                pw.push(0);
                let r = pg_frontend::password_message(&pw, &mut buf);
                zeroize::Zeroize::zeroize(&mut pw);
                r.map_err(|_| self.broken("a password with a NUL byte"))?;
            }
            AUTH_MD5 => {
                self.allowed(UpstreamAuth::Md5, "md5")?;
                let salt: [u8; 4] = data
                    .get(..4)
                    .and_then(|s| s.try_into().ok())
                    .ok_or_else(|| self.broken("an md5 request without salt"))?;
                self.method = Some("md5");
                let mut hashed = md5_hash(self.role.as_bytes(), self.secret.expose(), salt);
                hashed.push('\0');
                let r = pg_frontend::password_message(hashed.as_bytes(), &mut buf);
                zeroize::Zeroize::zeroize(&mut hashed);
                r.map_err(|_| self.broken("an md5 answer"))?;
            }
            AUTH_SASL => {
                self.allowed(UpstreamAuth::ScramSha256, "SASL")?;
                let offered: Vec<&[u8]> =
                    data.split(|b| *b == 0).filter(|m| !m.is_empty()).collect();
                let offers = |m: &str| offered.contains(&m.as_bytes());
                let (mechanism, binding) = match &self.binding {
                    Some(hash) if offers(SCRAM_SHA_256_PLUS) => (
                        SCRAM_SHA_256_PLUS,
                        ChannelBinding::tls_server_end_point(hash.clone()),
                    ),
                    Some(_) if offers(SCRAM_SHA_256) => {
                        (SCRAM_SHA_256, ChannelBinding::unrequested())
                    }
                    None if offers(SCRAM_SHA_256) => (SCRAM_SHA_256, ChannelBinding::unsupported()),
                    _ => {
                        return Err(self.refusal(format!(
                            "the server offers no SASL mechanism the agent speaks ({})",
                            offered
                                .iter()
                                .map(|m| String::from_utf8_lossy(m).into_owned())
                                .collect::<Vec<_>>()
                                .join(", ")
                        )));
                    }
                };
                self.method = Some(mechanism);
                let scram = ScramSha256::new(self.secret.expose(), binding);
                pg_frontend::sasl_initial_response(mechanism, scram.message(), &mut buf)
                    .map_err(|_| self.broken("SASL"))?;
                self.scram = Some(scram);
            }
            AUTH_SASL_CONTINUE => {
                let scram = self
                    .scram
                    .as_mut()
                    .ok_or_else(|| Refusal::server("SASLContinue before SASL"))?;
                scram
                    .update(data)
                    .map_err(|e| Refusal::server(&format!("SCRAM: {e}")))?;
                pg_frontend::sasl_response(scram.message(), &mut buf)
                    .map_err(|_| Refusal::server("SCRAM"))?;
            }
            AUTH_SASL_FINAL => {
                let scram = self
                    .scram
                    .take()
                    .ok_or_else(|| Refusal::server("SASLFinal before SASL"))?;
                // The server proves it knows the password too; one that cannot is not
                // the server the secret belongs to.
                let mut scram = scram;
                scram.finish(data).map_err(|e| Refusal {
                    code: sqlstate::INVALID_AUTHORIZATION,
                    message: format!(
                        "pam-agent: the server's SCRAM signature is wrong ({e}): it does not know the login's secret; not continuing"
                    ),
                })?;
                return Ok(Answer::Wait);
            }
            other => {
                return Err(self.refusal(format!(
                    "the server asks for authentication method {other}, which the agent does not speak"
                )));
            }
        }
        Ok(Answer::Send(buf.to_vec()))
    }

    fn allowed(&self, method: UpstreamAuth, what: &str) -> Result<(), Refusal> {
        if self.methods.contains(&method) {
            return Ok(());
        }
        let allowed: Vec<&str> = self.methods.iter().map(|m| m.as_str()).collect();
        Err(self.refusal(format!(
            "the server asks for {what}, but the resource allows only {} (upstream_auth)",
            allowed.join(", ")
        )))
    }

    fn refusal(&self, why: String) -> Refusal {
        Refusal {
            code: sqlstate::INVALID_AUTHORIZATION,
            message: format!("pam-agent: cannot log in as role \"{}\": {why}", self.role),
        }
    }

    fn broken(&self, what: &str) -> Refusal {
        Refusal::server(what)
    }
}

impl Refusal {
    fn server(what: &str) -> Refusal {
        Refusal {
            code: sqlstate::PROTOCOL_VIOLATION,
            message: format!("pam-agent: the server's authentication is broken: {what}"),
        }
    }
}

/// RFC 5929 `tls-server-end-point`: the certificate's hash with its signature's hash
/// algorithm (SHA-256 for MD5 and SHA-1 signatures).
fn end_point_hash(der: &[u8]) -> Option<Vec<u8>> {
    use sha2::Digest;
    use x509_parser::prelude::{FromDer, X509Certificate};
    let (_, cert) = X509Certificate::from_der(der).ok()?;
    let oid = cert.signature_algorithm.algorithm.to_id_string();
    Some(match oid.as_str() {
        // sha384WithRSAEncryption, ecdsa-with-SHA384
        "1.2.840.113549.1.1.12" | "1.2.840.10045.4.3.3" => sha2::Sha384::digest(der).to_vec(),
        // sha512WithRSAEncryption, ecdsa-with-SHA512
        "1.2.840.113549.1.1.13" | "1.2.840.10045.4.3.4" => sha2::Sha512::digest(der).to_vec(),
        // Ed25519 and RSA-PSS name no single hash: RFC 5929 gives no binding for them.
        "1.3.101.112" | "1.2.840.113549.1.1.10" => return None,
        _ => sha2::Sha256::digest(der).to_vec(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::credentials::SecretSource;

    fn injection() -> Injection {
        // SAFETY: tests in this module are the only users of this variable.
        unsafe { std::env::set_var("PAM_AGENT_TEST_LOGIN_SECRET", "pw") };
        Injection {
            logins: vec![Login {
                principals: Some(vec!["orders".into()]),
                role: "crew_reader".into(),
                source: SecretSource::Env("PAM_AGENT_TEST_LOGIN_SECRET".into()),
            }],
            methods: vec![UpstreamAuth::ScramSha256],
        }
    }

    fn who(name: &str) -> Principal {
        Principal {
            name: Some(name.into()),
            user: Some("crew".into()),
            ..Default::default()
        }
    }

    fn params(user: &str) -> Vec<(String, String)> {
        vec![
            ("user".into(), user.into()),
            ("database".into(), "orders".into()),
        ]
    }

    #[test]
    fn the_role_becomes_the_logins_and_the_application_name_names_the_principal() {
        for asked in ["crew", "crew_reader"] {
            let p = plan(&injection(), &who("orders"), "db", &params(asked))
                .ok()
                .unwrap();
            assert_eq!(p.role, "crew_reader");
            assert_eq!(
                p.params,
                vec![
                    ("user".to_owned(), "crew_reader".to_owned()),
                    ("database".to_owned(), "orders".to_owned()),
                    ("application_name".to_owned(), "pam-agent/orders".to_owned()),
                ]
            );
        }
        let mut with_app = params("crew");
        with_app.push(("application_name".into(), "x".repeat(100)));
        let p = plan(&injection(), &who("orders"), "db", &with_app)
            .ok()
            .unwrap();
        let app = &p.params[2].1;
        assert!(
            app.starts_with("pam-agent/orders x") && app.len() == 63,
            "{app}"
        );
    }

    #[test]
    fn another_role_or_an_unmapped_principal_is_refused() {
        let e = plan(&injection(), &who("orders"), "db", &params("postgres"))
            .err()
            .unwrap();
        assert_eq!(e.code, "28000");
        assert!(
            e.message.contains("\"orders\"") && e.message.contains("not \"postgres\""),
            "{}",
            e.message
        );
        let e = plan(&injection(), &who("billing"), "db", &params("crew"))
            .err()
            .unwrap();
        assert_eq!(e.code, "28000");
        assert!(e.message.contains("has no login"), "{}", e.message);
        assert!(!e.message.contains("pw"));
    }

    #[test]
    fn methods_the_resource_does_not_list_are_refused() {
        let mut login = plan(&injection(), &who("orders"), "db", &params("crew"))
            .ok()
            .unwrap()
            .login;
        let md5 = Frame::build(b'R', &[0, 0, 0, 5, 1, 2, 3, 4]);
        let e = login.answer(&md5).unwrap_err();
        assert!(
            e.message.contains("allows only scram-sha-256"),
            "{}",
            e.message
        );
        let clear = Frame::build(b'R', &[0, 0, 0, 3]);
        assert!(login.answer(&clear).is_err());
        let ok = Frame::build(b'R', &[0, 0, 0, 0]);
        assert_eq!(login.answer(&ok).unwrap(), Answer::Accepted);
        // SASL without a mechanism the agent speaks.
        let sasl = Frame::build(b'R', b"\0\0\0\x0aSCRAM-SHA-1\0\0");
        assert!(
            login
                .answer(&sasl)
                .unwrap_err()
                .message
                .contains("SCRAM-SHA-1")
        );
        let sasl = Frame::build(b'R', b"\0\0\0\x0aSCRAM-SHA-256\0\0");
        let Answer::Send(first) = login.answer(&sasl).unwrap() else {
            panic!("no SASLInitialResponse")
        };
        assert_eq!(first[0], b'p');
        assert!(first.windows(13).any(|w| w == b"SCRAM-SHA-256"));
        // Plain SCRAM without TLS: gs2 header "n,,", and no secret on the wire.
        assert!(first.windows(3).any(|w| w == b"n,,"));
    }
}
