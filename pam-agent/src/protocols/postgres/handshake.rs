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

use std::sync::{Arc, atomic::Ordering};

use bytes::BytesMut;
use tokio::{
    io::{AsyncWriteExt, ReadHalf, WriteHalf},
    net::TcpStream,
};

use super::{
    Context, SessionError, Shared, UPSTREAM_MAX_MESSAGE,
    cancel::{Registration, Upstream},
    wire::backend::{self, Severity, sqlstate},
    wire::frame::{Frame, FrameReader, read_startup},
    wire::frontend,
    wire::startup::{self, Startup},
};
use crate::tls::stream::{UpstreamStream, WorkerStream};

pub enum Handshake {
    /// The session is over already (cancel request, failed login, early close).
    Done(String),
    Ready(Ready),
}

pub struct Ready {
    pub worker_reader: FrameReader<ReadHalf<WorkerStream>>,
    pub worker_writer: WriteHalf<WorkerStream>,
    pub upstream_reader: FrameReader<ReadHalf<UpstreamStream>>,
    pub upstream_writer: WriteHalf<UpstreamStream>,
    /// Transaction status of the first ReadyForQuery.
    pub status: u8,
    pub registration: Option<Registration>,
}

pub async fn handshake(
    worker: TcpStream,
    upstream: TcpStream,
    ctx: &Context,
    shared: &Arc<Shared>,
) -> Result<Handshake, SessionError> {
    let server = upstream.peer_addr()?;
    let mut worker = WorkerStream::Plain(worker);
    let mut ssl_asked = false;
    let mut gss_asked = false;
    let startup_body = loop {
        let body = match read_startup(&mut worker).await {
            Ok(Some(b)) => b,
            Ok(None) => return Ok(Handshake::Done("worker closed before startup".into())),
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
                match (&ctx.tls, worker) {
                    (Some(acceptor), WorkerStream::Plain(mut tcp)) => {
                        tcp.write_all(b"S").await?;
                        let tls = acceptor.accept(tcp).await.map_err(SessionError::Tls)?;
                        worker = WorkerStream::Tls(Box::new(tls));
                    }
                    (_, mut w) => {
                        w.write_all(b"N").await?;
                        worker = w;
                    }
                }
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
            Startup::Cancel { pid, secret } => {
                return Ok(Handshake::Done(
                    cancel(upstream, server, ctx, pid, &secret).await,
                ));
            }
            Startup::Start { params, .. } => {
                if let Err(e) = startup::check_params(&params) {
                    let msg = format!("pam-agent: {e}");
                    fatal(&mut worker, sqlstate::REFUSED, &msg).await;
                    return Err(e.into());
                }
                break body;
            }
        }
    };

    // TLS toward the server first, when the resource asks for it; a server that
    // refuses it ends the session (never plaintext instead).
    let mut upstream = match &ctx.upstream_tls {
        None => UpstreamStream::Plain(upstream),
        Some(tls) => match super::upstream_tls::negotiate(tls, upstream, server).await {
            Ok(s) => UpstreamStream::Tls(Box::new(s)),
            Err(source) => {
                let msg = format!(
                    "pam-agent: resource \"{}\" requires TLS to the server (upstream_tls = \"{}\"), but {server}: {source}",
                    ctx.resource, tls.mode
                );
                fatal(&mut worker, sqlstate::CONNECTION_FAILURE, &msg).await;
                return Err(SessionError::UpstreamTls {
                    mode: tls.mode,
                    source,
                });
            }
        },
    };

    // Forward the startup message as the worker sent it.
    let mut packet = BytesMut::with_capacity(startup_body.len() + 4);
    packet.extend_from_slice(&((startup_body.len() + 4) as i32).to_be_bytes());
    packet.extend_from_slice(&startup_body);
    upstream.write_all(&packet).await?;

    let worker_tls = worker.is_tls();
    let (wr, mut ww) = tokio::io::split(worker);
    let (ur, mut uw) = tokio::io::split(upstream);
    let mut wreader = FrameReader::new(wr, ctx.limits.max_message_bytes);
    let mut ureader = FrameReader::new(ur, UPSTREAM_MAX_MESSAGE);
    let mut registration = None;
    let mut out = Vec::new();
    // Set by AuthenticationSASL: the worker's next message names its mechanism.
    let mut sasl_pending = false;

    // Authentication, relayed. The server speaks first and ends with ReadyForQuery
    // (or an ErrorResponse, after which it closes).
    loop {
        tokio::select! {
            f = ureader.next() => {
                let f = f.map_err(SessionError::Upstream)?.ok_or_else(|| {
                    SessionError::UpstreamProtocol("server closed during startup".into())
                })?;
                match f.tag {
                    backend::BACKEND_KEY_DATA => {
                        let (pid, secret) = backend::backend_key(&f)
                            .map_err(|e| SessionError::UpstreamProtocol(e.to_string()))?;
                        let (wpid, wkey, reg) = ctx
                            .cancels
                            .register(Upstream { resource: ctx.resource.clone(), server, pid, secret })
                            .map_err(|e| SessionError::Io(std::io::Error::other(e.to_string())))?;
                        registration = Some(reg);
                        out.extend_from_slice(&backend::backend_key_data(wpid, &wkey).raw);
                    }
                    backend::READY_FOR_QUERY => {
                        let status = backend::ready_status(&f)
                            .map_err(|e| SessionError::UpstreamProtocol(e.to_string()))?;
                        out.extend_from_slice(&f.raw);
                        write_out(&mut ww, &mut out, shared).await?;
                        return Ok(Handshake::Ready(Ready {
                            worker_reader: wreader,
                            worker_writer: ww,
                            upstream_reader: ureader,
                            upstream_writer: uw,
                            status,
                            registration,
                        }));
                    }
                    backend::ERROR_RESPONSE => {
                        out.extend_from_slice(&f.raw);
                        write_out(&mut ww, &mut out, shared).await?;
                        let code = backend::error_code(&f).unwrap_or_default();
                        return Ok(Handshake::Done(format!("server refused the login ({code})")));
                    }
                    backend::PARAMETER_STATUS => {
                        super::respond::watch_parameter(&f, shared);
                        out.extend_from_slice(&f.raw);
                    }
                    backend::AUTHENTICATION => {
                        sasl_pending = backend::auth_code(&f) == Ok(AUTH_SASL);
                        if sasl_pending && !worker_tls {
                            // A server on TLS offers channel binding; a worker in clear
                            // text (libpq) refuses such an offer. It could not bind anyway.
                            out.extend_from_slice(&without_scram_plus(&f).raw);
                        } else {
                            out.extend_from_slice(&f.raw);
                        }
                    }
                    _ => out.extend_from_slice(&f.raw),
                }
                if !ureader.has_frame() {
                    write_out(&mut ww, &mut out, shared).await?;
                }
            }
            f = wreader.next() => {
                let f = match f {
                    Ok(Some(f)) => f,
                    Ok(None) => return Ok(Handshake::Done("worker closed during authentication".into())),
                    Err(e) => {
                        let msg = format!("pam-agent: {e}");
                        out.extend_from_slice(&backend::error(Severity::Fatal, sqlstate::PROTOCOL_VIOLATION, &msg, None, None).raw);
                        let _ = write_out(&mut ww, &mut out, shared).await;
                        return Err(SessionError::Worker(e));
                    }
                };
                if f.tag != frontend::AUTH_RESPONSE {
                    let msg = format!("pam-agent: unexpected message '{}' during authentication", f.tag.escape_ascii());
                    out.extend_from_slice(&backend::error(Severity::Fatal, sqlstate::PROTOCOL_VIOLATION, &msg, None, None).raw);
                    let _ = write_out(&mut ww, &mut out, shared).await;
                    return Err(SessionError::Protocol(msg));
                }
                if std::mem::take(&mut sasl_pending) && f.body().starts_with(SCRAM_PLUS) {
                    // Channel binding ties SCRAM to the TLS certificate the worker saw:
                    // the agent's, not the server's. The server would refuse the proof;
                    // say why instead.
                    let msg = "pam-agent: SCRAM channel binding cannot pass through the agent (the worker's TLS ends at the agent, so the binding names the agent's certificate, not the server's); connect with channel_binding=disable";
                    out.extend_from_slice(&backend::error(Severity::Fatal, INVALID_AUTHORIZATION, msg, None, None).raw);
                    let _ = write_out(&mut ww, &mut out, shared).await;
                    return Ok(Handshake::Done(
                        "worker chose SCRAM-SHA-256-PLUS (channel binding), which cannot pass through the agent".into(),
                    ));
                }
                uw.write_all(&f.raw).await?;
            }
        }
    }
}

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
const INVALID_AUTHORIZATION: &str = "28000";

pub async fn write_out<W: tokio::io::AsyncWrite + Unpin>(
    w: &mut W,
    out: &mut Vec<u8>,
    shared: &Shared,
) -> std::io::Result<()> {
    if out.is_empty() {
        return Ok(());
    }
    w.write_all(out).await?;
    w.flush().await?;
    shared
        .to_worker
        .fetch_add(out.len() as u64, Ordering::Relaxed);
    out.clear();
    Ok(())
}

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
    server: std::net::SocketAddr,
    ctx: &Context,
    pid: i32,
    secret: &[u8],
) -> String {
    let Some(target) = ctx.cancels.lookup(pid, secret) else {
        return "cancel request with an unknown key: ignored".into();
    };
    if target.resource != ctx.resource || server != target.server {
        return format!(
            "cancel request for resource `{}` arrived on a connection to `{}`: ignored",
            target.resource, ctx.resource
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
