//! Step 1 of a session: startup packets and authentication.
//!
//! - SSLRequest: TLS toward the worker when configured ('S'), else 'N'.
//! - GSSENCRequest: 'N' (the client then continues in clear or with TLS).
//! - CancelRequest: mapped to the server's key and sent on the new upstream
//!   connection when the worker-visible key is known (no reply, as PostgreSQL does).
//! - StartupMessage: parameters checked; TLS toward the server negotiated when the
//!   resource asks for it (FATAL 08006 if the server refuses); then forwarded as sent.
//!   Authentication messages then flow untouched both ways until the server's
//!   ReadyForQuery, except SCRAM channel binding, which cannot pass a TLS-terminating
//!   proxy: not offered to clear-text workers, refused with a clear FATAL otherwise.
//! - With `worker_auth = "none"` ([`super::login`]) the startup goes out rewritten (the
//!   login's role, a tagged application_name) and the agent answers the server's
//!   authentication itself; the worker sees only AuthenticationOk.

use std::{
    net::SocketAddr,
    sync::{Arc, atomic::Ordering},
};

use bytes::{Bytes, BytesMut};
use tokio::{
    io::{AsyncWriteExt, ReadHalf, WriteHalf},
    net::TcpStream,
};

use super::{
    super::Dialer,
    Context, SessionError, Shared, UPSTREAM_MAX_MESSAGE,
    cancel::{Registration, Upstream},
    io::{watch_parameter, write_out},
    wire::{
        backend::{self, Severity, sqlstate},
        frame::{Frame, FrameReader, read_startup},
        frontend,
        startup::{self, Startup},
    },
};
use crate::tls::stream::{UpstreamStream, WorkerStream};

pub enum Handshake {
    /// The session is over already (cancel request, failed login, early close).
    Done(String),
    /// The server could not be reached (the worker was told).
    Unreachable(String),
    Ready(Box<Ready>),
}

/// How long a worker has to send its startup packet (and finish TLS): a connection that
/// says nothing, or half a packet, is closed then, having cost the database nothing.
const STARTUP_DEADLINE: std::time::Duration = std::time::Duration::from_secs(15);

pub struct Ready {
    pub worker_reader: FrameReader<ReadHalf<WorkerStream>>,
    pub worker_writer: WriteHalf<WorkerStream>,
    pub upstream_reader: FrameReader<ReadHalf<UpstreamStream>>,
    pub upstream_writer: WriteHalf<UpstreamStream>,
    /// Transaction status of the first ReadyForQuery.
    pub status: u8,
    /// The database and role the worker logged in with (the database defaults to the
    /// role's name, as the server does).
    pub database: Option<String>,
    pub role: Option<String>,
    /// The worker's verified token (`worker_auth = "oidc"`).
    pub token: Option<crate::principal::WorkerToken>,
    /// The application_name the worker's startup packet gave.
    pub application_name: Option<String>,
    pub registration: Option<Registration>,
}

pub async fn handshake(
    worker: TcpStream,
    dialer: Dialer,
    ctx: &Context,
    shared: &Arc<Shared>,
) -> Result<Handshake, SessionError> {
    let opening = tokio::time::timeout(STARTUP_DEADLINE, worker_startup(worker, ctx, shared))
        .await
        .unwrap_or_else(|_| {
            Ok(Opening::Closed(format!(
                "no complete startup packet within {} s",
                STARTUP_DEADLINE.as_secs()
            )))
        })?;
    // Only now is the server dialed: nothing the worker has not finished asking for
    // costs it a backend.
    let (mut worker, startup_body, params) = match opening {
        Opening::Login {
            worker,
            body,
            params,
        } => (worker, body, params),
        Opening::Cancel { pid, secret } => {
            let detail = match dialer.dial().await {
                Ok(upstream) => cancel(upstream, dialer.addr, ctx, pid, &secret).await,
                Err(e) => format!("cancel request not sent: {e}"),
            };
            return Ok(Handshake::Done(detail));
        }
        Opening::Closed(detail) => return Ok(Handshake::Done(detail)),
    };
    // A worker token (`worker_auth = "oidc"`): asked for, verified and journaled before
    // anything else; refused, the worker gets FATAL 28000 and the server is not dialed.
    let token = match &ctx.worker_token {
        None => None,
        Some(check) => {
            use super::worker_token::{REFUSED, TokenError, authenticate};
            match authenticate(&mut worker, check, &ctx.session).await {
                Ok(t) => Some(t),
                Err(TokenError::Refused(msg)) => {
                    fatal(&mut worker, REFUSED, &msg).await;
                    return Ok(Handshake::Done(format!("login refused: {msg}")));
                }
                Err(TokenError::Io(e)) => {
                    return Ok(Handshake::Done(format!(
                        "worker left during token authentication: {e}"
                    )));
                }
                Err(TokenError::Journal(e)) => {
                    let msg = "pam-agent: audit journal unavailable";
                    fatal(&mut worker, sqlstate::CONNECTION_FAILURE, msg).await;
                    return Err(SessionError::Io(std::io::Error::other(format!(
                        "cannot journal the worker's token: {e}"
                    ))));
                }
            }
        }
    };
    // Credential injection: the login is chosen, checked and its secret read before
    // the server is dialed; a worker that may not log in costs the server nothing.
    let (startup_body, plan) = match &ctx.injection {
        None => (startup_body, None),
        Some(injection) => {
            match super::login::plan(
                injection,
                &ctx.session.principal,
                &ctx.session.resource,
                &params,
            ) {
                Ok(plan) => (startup::startup_message(&plan.params), Some(plan)),
                Err(refusal) => {
                    fatal(&mut worker, refusal.code, &refusal.message).await;
                    return Ok(Handshake::Done(format!(
                        "login refused: {}",
                        refusal.message
                    )));
                }
            }
        }
    };
    let upstream = match dialer.dial().await {
        Ok(s) => s,
        Err(e) => {
            let msg = format!(
                "pam-agent: resource \"{}\" cannot be reached: {e}",
                ctx.session.resource
            );
            fatal(&mut worker, sqlstate::CONNECTION_FAILURE, &msg).await;
            return Ok(Handshake::Unreachable(e));
        }
    };
    let server = dialer.addr;
    let upstream = server_startup(upstream, server, &mut worker, &startup_body, ctx).await?;
    let (role, login) = match plan {
        Some(mut plan) => {
            if let Some(cert) = upstream.peer_certificate() {
                plan.login.bind_to(&cert);
            }
            (Some(plan.role), Some(plan.login))
        }
        None => (None, None),
    };
    let mut done = relay_auth(worker, upstream, server, ctx, shared, login).await?;
    if let Handshake::Ready(r) = &mut done {
        let param = |k: &str| params.iter().find(|(n, _)| n == k).map(|(_, v)| v.clone());
        r.role = role.or_else(|| param("user"));
        r.token = token;
        r.database = param("database").or_else(|| param("user"));
        r.application_name = param("application_name");
    }
    Ok(done)
}

/// Reads the worker's startup (declining TLS) and answers FATAL 53300 with `reason`.
pub async fn refuse(worker: TcpStream, reason: &str) {
    let mut worker = WorkerStream::Plain(worker);
    let answered = tokio::time::timeout(STARTUP_DEADLINE, async {
        loop {
            let Ok(Some(body)) = read_startup(&mut worker).await else {
                return;
            };
            match startup::parse(&body) {
                Ok(Startup::Ssl | Startup::GssEnc) => {
                    if worker.write_all(b"N").await.is_err() {
                        return;
                    }
                }
                Ok(Startup::Cancel { .. }) | Err(_) => return,
                Ok(Startup::Start { .. }) => {
                    let msg = format!("pam-agent: {reason}");
                    fatal(&mut worker, sqlstate::TOO_MANY_CONNECTIONS, &msg).await;
                    return;
                }
            }
        }
    });
    let _ = answered.await;
}

/// How the worker opened the connection.
enum Opening {
    /// A StartupMessage (its body and parameters), over TLS if the worker asked for it.
    Login {
        worker: WorkerStream,
        body: Bytes,
        params: Vec<(String, String)>,
    },
    Cancel {
        pid: i32,
        secret: Vec<u8>,
    },
    Closed(String),
}

/// Phase 1: the worker's startup packets, until a StartupMessage or CancelRequest.
async fn worker_startup(
    worker: TcpStream,
    ctx: &Context,
    shared: &Shared,
) -> Result<Opening, SessionError> {
    let mut worker = WorkerStream::Plain(worker);
    let mut ssl_asked = false;
    let mut gss_asked = false;
    loop {
        let body = match read_startup(&mut worker).await {
            Ok(Some(b)) => b,
            Ok(None) => return Ok(Opening::Closed("worker closed before startup".into())),
            Err(e) => {
                let msg = format!("pam-agent: invalid startup packet: {e}");
                fatal(&mut worker, sqlstate::PROTOCOL_VIOLATION, &msg).await;
                return Err(SessionError::Worker(e));
            }
        };
        shared
            .from_worker
            .fetch_add(body.len() as u64 + 4, Ordering::Relaxed);
        let packet = match startup::parse(&body) {
            Ok(p) => p,
            Err(e) => {
                let msg = format!("pam-agent: invalid startup packet: {e}");
                fatal(&mut worker, sqlstate::PROTOCOL_VIOLATION, &msg).await;
                return Err(e.into());
            }
        };
        match packet {
            Startup::Ssl if !ssl_asked && !worker.is_tls() => {
                ssl_asked = true;
                worker = match (&ctx.tls, worker) {
                    (Some(acceptor), WorkerStream::Plain(mut tcp)) => {
                        tcp.write_all(b"S").await?;
                        let tls = acceptor.accept(tcp).await.map_err(SessionError::Tls)?;
                        WorkerStream::Tls(Box::new(tls))
                    }
                    (_, mut w) => {
                        w.write_all(b"N").await?;
                        w
                    }
                };
            }
            Startup::GssEnc if !gss_asked && !worker.is_tls() => {
                gss_asked = true;
                worker.write_all(b"N").await?;
            }
            Startup::Ssl | Startup::GssEnc => {
                let msg = "pam-agent: encryption was already negotiated";
                fatal(&mut worker, sqlstate::PROTOCOL_VIOLATION, msg).await;
                return Err(SessionError::Protocol(msg.into()));
            }
            Startup::Cancel { pid, secret } => return Ok(Opening::Cancel { pid, secret }),
            Startup::Start { params, .. } => {
                if let Err(e) = startup::check_params(&params) {
                    let msg = format!("pam-agent: {e}");
                    fatal(&mut worker, sqlstate::REFUSED, &msg).await;
                    return Err(e.into());
                }
                return Ok(Opening::Login {
                    worker,
                    body,
                    params,
                });
            }
        }
    }
}

/// Phase 2: TLS toward the server first, when the resource asks for it (a server that
/// refuses it ends the session, never plaintext instead); then the startup message as
/// the worker sent it.
async fn server_startup(
    upstream: TcpStream,
    server: SocketAddr,
    worker: &mut WorkerStream,
    startup_body: &[u8],
    ctx: &Context,
) -> Result<UpstreamStream, SessionError> {
    let mut upstream = match &ctx.upstream_tls {
        None => UpstreamStream::Plain(upstream),
        Some(tls) => match super::upstream_tls::negotiate(tls, upstream, server).await {
            Ok(s) => UpstreamStream::Tls(Box::new(s)),
            Err(source) => {
                let msg = format!(
                    "pam-agent: resource \"{}\" requires TLS to the server (upstream_tls = \"{}\"), but {server}: {source}",
                    ctx.session.resource, tls.mode
                );
                fatal(worker, sqlstate::CONNECTION_FAILURE, &msg).await;
                return Err(SessionError::UpstreamTls {
                    mode: tls.mode,
                    source,
                });
            }
        },
    };
    let mut packet = BytesMut::with_capacity(startup_body.len() + 4);
    packet.extend_from_slice(&((startup_body.len() + 4) as i32).to_be_bytes());
    packet.extend_from_slice(startup_body);
    upstream.write_all(&packet).await?;
    Ok(upstream)
}

/// The authentication exchange in flight.
struct Auth<'a> {
    ctx: &'a Context,
    server: SocketAddr,
    worker_tls: bool,
    registration: Option<Registration>,
    /// Bytes for the worker, written when the server has nothing more buffered.
    out: Vec<u8>,
    /// Set by AuthenticationSASL: the worker's next message names its mechanism.
    sasl_pending: bool,
    /// Credential injection: the agent answers the server's authentication itself.
    login: Option<super::login::UpstreamLogin>,
    /// Bytes for the server (the agent's authentication answers).
    to_server: Vec<u8>,
}

/// What a message of the exchange leads to.
enum Step {
    Continue,
    /// ReadyForQuery with this transaction status: the session is ready.
    Ready(u8),
    /// The exchange ended the session (written to the worker already).
    Done(String),
}

/// Phase 3: authentication, relayed. The server speaks first and ends with
/// ReadyForQuery (or an ErrorResponse, after which it closes).
async fn relay_auth(
    worker: WorkerStream,
    upstream: UpstreamStream,
    server: SocketAddr,
    ctx: &Context,
    shared: &Arc<Shared>,
    login: Option<super::login::UpstreamLogin>,
) -> Result<Handshake, SessionError> {
    let mut auth = Auth {
        ctx,
        server,
        worker_tls: worker.is_tls(),
        registration: None,
        out: Vec::new(),
        sasl_pending: false,
        login,
        to_server: Vec::new(),
    };
    let (wr, mut ww) = tokio::io::split(worker);
    let (ur, mut uw) = tokio::io::split(upstream);
    let mut wreader =
        FrameReader::new(wr, ctx.limits.max_message_bytes).budgeted(ctx.memory.clone());
    let mut ureader = FrameReader::new(ur, UPSTREAM_MAX_MESSAGE).budgeted(ctx.memory.clone());
    loop {
        let step = tokio::select! {
            f = ureader.next() => {
                let f = f.map_err(SessionError::Upstream)?.ok_or_else(|| {
                    SessionError::UpstreamProtocol("server closed during startup".into())
                })?;
                let step = auth.server_message(f, shared)?;
                if !ureader.has_frame() || !matches!(step, Step::Continue) {
                    write_out(&mut ww, &mut auth.out, shared).await?;
                }
                if !auth.to_server.is_empty() {
                    uw.write_all(&auth.to_server).await?;
                    auth.to_server.clear();
                }
                step
            }
            f = wreader.next() => {
                let step = auth.worker_message(f, &mut uw).await;
                if !auth.out.is_empty() {
                    let _ = write_out(&mut ww, &mut auth.out, shared).await;
                }
                step?
            }
        };
        match step {
            Step::Continue => {}
            Step::Done(detail) => return Ok(Handshake::Done(detail)),
            Step::Ready(status) => {
                return Ok(Handshake::Ready(Box::new(Ready {
                    worker_reader: wreader,
                    worker_writer: ww,
                    upstream_reader: ureader,
                    upstream_writer: uw,
                    status,
                    registration: auth.registration,
                    database: None,
                    role: None,
                    token: None,
                    application_name: None,
                })));
            }
        }
    }
}

impl Auth<'_> {
    fn server_message(&mut self, f: Frame, shared: &Shared) -> Result<Step, SessionError> {
        let bad = |e: super::wire::frame::Malformed| SessionError::UpstreamProtocol(e.to_string());
        match f.tag {
            backend::BACKEND_KEY_DATA => {
                let (pid, secret) = backend::backend_key(&f).map_err(bad)?;
                let upstream = Upstream {
                    resource: self.ctx.session.resource.clone(),
                    server: self.server,
                    pid,
                    secret,
                };
                let (wpid, wkey, reg) = self
                    .ctx
                    .cancels
                    .register(upstream)
                    .map_err(|e| SessionError::Io(std::io::Error::other(e.to_string())))?;
                self.registration = Some(reg);
                self.out
                    .extend_from_slice(&backend::backend_key_data(wpid, &wkey).raw);
            }
            backend::READY_FOR_QUERY => {
                let status = backend::ready_status(&f).map_err(bad)?;
                self.out.extend_from_slice(&f.raw);
                return Ok(Step::Ready(status));
            }
            backend::ERROR_RESPONSE => {
                self.out.extend_from_slice(&f.raw);
                let code = backend::error_code(&f).unwrap_or_default();
                return Ok(Step::Done(format!("server refused the login ({code})")));
            }
            backend::PARAMETER_STATUS => {
                watch_parameter(&f, shared);
                self.out.extend_from_slice(&f.raw);
            }
            backend::AUTHENTICATION if self.login.is_some() => {
                let login = self.login.as_mut().expect("checked");
                match login.answer(&f) {
                    Ok(super::login::Answer::Send(bytes)) => {
                        self.to_server.extend_from_slice(&bytes)
                    }
                    Ok(super::login::Answer::Wait) => {}
                    Ok(super::login::Answer::Accepted) => {
                        // The worker's whole authentication: it was never asked for a
                        // password. The secret is no longer needed.
                        tracing::info!(
                            session = %self.ctx.session.id,
                            resource = %self.ctx.session.resource,
                            method = login.method.unwrap_or("trust"),
                            "logged in upstream for the worker"
                        );
                        self.login = None;
                        self.out.extend_from_slice(&f.raw);
                    }
                    Err(refusal) => {
                        self.fatal(refusal.code, &refusal.message);
                        return Ok(Step::Done(format!("login failed: {}", refusal.message)));
                    }
                }
            }
            backend::AUTHENTICATION => {
                self.sasl_pending = backend::auth_code(&f) == Ok(AUTH_SASL);
                if self.sasl_pending && !self.worker_tls {
                    // A server on TLS offers channel binding; a worker in clear text
                    // (libpq) refuses such an offer. It could not bind anyway.
                    self.out.extend_from_slice(&without_scram_plus(&f).raw);
                } else {
                    self.out.extend_from_slice(&f.raw);
                }
            }
            _ => self.out.extend_from_slice(&f.raw),
        }
        Ok(Step::Continue)
    }

    async fn worker_message(
        &mut self,
        f: Result<Option<Frame>, super::wire::frame::FrameError>,
        upstream: &mut WriteHalf<UpstreamStream>,
    ) -> Result<Step, SessionError> {
        let f = match f {
            Ok(Some(f)) => f,
            Ok(None) => return Ok(Step::Done("worker closed during authentication".into())),
            Err(e) => {
                self.fatal(sqlstate::PROTOCOL_VIOLATION, &format!("pam-agent: {e}"));
                return Err(SessionError::Worker(e));
            }
        };
        if f.tag == frontend::AUTH_RESPONSE && self.login.is_some() {
            // The agent logs in: a password the worker sends anyway is discarded,
            // never forwarded.
            return Ok(Step::Continue);
        }
        if f.tag != frontend::AUTH_RESPONSE {
            let msg = format!(
                "pam-agent: unexpected message '{}' during authentication",
                f.tag.escape_ascii()
            );
            self.fatal(sqlstate::PROTOCOL_VIOLATION, &msg);
            return Err(SessionError::Protocol(msg));
        }
        if std::mem::take(&mut self.sasl_pending) && f.body().starts_with(SCRAM_PLUS) {
            // Channel binding ties SCRAM to the TLS certificate the worker saw: the
            // agent's, not the server's. The server would refuse the proof; say why.
            self.fatal(sqlstate::INVALID_AUTHORIZATION, CHANNEL_BINDING);
            return Ok(Step::Done(
                "worker chose SCRAM-SHA-256-PLUS (channel binding), which cannot pass through the agent".into(),
            ));
        }
        upstream.write_all(&f.raw).await?;
        Ok(Step::Continue)
    }

    fn fatal(&mut self, code: &str, msg: &str) {
        let f = backend::error(Severity::Fatal, code, msg, None, None);
        self.out.extend_from_slice(&f.raw);
    }
}

const CHANNEL_BINDING: &str = "pam-agent: SCRAM channel binding cannot pass through the agent \
     (the worker's TLS ends at the agent, so the binding names the agent's certificate, not \
     the server's); connect with channel_binding=disable";

/// AuthenticationSASL without SCRAM-SHA-256-PLUS (the same frame if it is not offered).
fn without_scram_plus(f: &Frame) -> Frame {
    let body = f.body();
    let plus = &SCRAM_PLUS[..SCRAM_PLUS.len() - 1];
    // Body: Int32 10, then NUL-terminated mechanism names, then an empty name.
    let Some(names) = body.get(4..) else {
        return f.clone();
    };
    if !names.split(|b| *b == 0).any(|n| n == plus) {
        return f.clone();
    }
    let mut out = body[..4].to_vec();
    for name in names
        .split(|b| *b == 0)
        .filter(|n| !n.is_empty() && *n != plus)
    {
        out.extend_from_slice(name);
        out.push(0);
    }
    out.push(0);
    Frame::build(backend::AUTHENTICATION, &out)
}

/// AuthenticationSASL: the server lists its mechanisms.
const AUTH_SASL: i32 = 10;

/// The mechanism name at the start of a SASLInitialResponse, NUL-terminated.
const SCRAM_PLUS: &[u8] = b"SCRAM-SHA-256-PLUS\0";

async fn fatal(worker: &mut WorkerStream, code: &str, message: &str) {
    let f: Frame = backend::error(Severity::Fatal, code, message, None, None);
    let _ = worker.write_all(&f.raw).await;
    let _ = worker.flush().await;
}

/// Sends the cancel upstream when the key is one this agent minted for the same
/// resource and server, over TLS when the resource asks for it (the key is a secret).
/// Answers nothing to the worker (PostgreSQL doesn't either).
async fn cancel(
    mut upstream: TcpStream,
    server: SocketAddr,
    ctx: &Context,
    pid: i32,
    secret: &[u8],
) -> String {
    let Some(target) = ctx.cancels.lookup(pid, secret) else {
        return "cancel request with an unknown key: ignored".into();
    };
    if target.resource != ctx.session.resource || server != target.server {
        return format!(
            "cancel request for resource `{}` arrived on a connection to `{}`: ignored",
            target.resource, ctx.session.resource
        );
    }
    let req = startup::cancel_request(target.pid, &target.secret);
    let sent = match &ctx.upstream_tls {
        Some(tls) => match super::upstream_tls::negotiate(tls, upstream, server).await {
            Ok(mut s) => send_and_close(&mut s, &req).await,
            Err(e) => return format!("cancel request not sent: TLS to the server: {e}"),
        },
        None => send_and_close(&mut upstream, &req).await,
    };
    match sent {
        Ok(()) => format!("cancel request forwarded to backend pid {}", target.pid),
        Err(e) => format!("cancel request could not be sent: {e}"),
    }
}

async fn send_and_close<S: tokio::io::AsyncWrite + Unpin>(
    s: &mut S,
    bytes: &[u8],
) -> std::io::Result<()> {
    s.write_all(bytes).await?;
    let _ = s.shutdown().await;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn scram_plus_is_removed_from_the_offer() {
        let mut body = 10i32.to_be_bytes().to_vec();
        body.extend_from_slice(b"SCRAM-SHA-256-PLUS\0SCRAM-SHA-256\0\0");
        let f = Frame::build(backend::AUTHENTICATION, &body);
        let mut want = 10i32.to_be_bytes().to_vec();
        want.extend_from_slice(b"SCRAM-SHA-256\0\0");
        assert_eq!(without_scram_plus(&f).body(), &want[..]);
        let plain = Frame::build(backend::AUTHENTICATION, &want);
        assert_eq!(without_scram_plus(&plain).raw, plain.raw);
    }
}
