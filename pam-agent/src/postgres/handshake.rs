//! Step 1 of a session: startup packets and authentication.
//!
//! - SSLRequest: TLS toward the worker when configured ('S'), else 'N'.
//! - GSSENCRequest: 'N' (the client then continues in clear or with TLS).
//! - CancelRequest: mapped to the server's key and sent on the new upstream
//!   connection when the worker-visible key is known (no reply, as PostgreSQL does).
//! - StartupMessage: parameters checked, then forwarded as sent; authentication
//!   messages then flow untouched both ways until the server's ReadyForQuery.

use std::sync::{Arc, atomic::Ordering};

use bytes::BytesMut;
use tokio::{
    io::{AsyncWriteExt, ReadHalf, WriteHalf},
    net::{
        TcpStream,
        tcp::{OwnedReadHalf, OwnedWriteHalf},
    },
};

use super::{
    Context, SessionError, Shared, UPSTREAM_MAX_MESSAGE,
    backend::{self, Severity, sqlstate},
    cancel::{Registration, Upstream},
    frame::{Frame, FrameReader, read_startup},
    frontend,
    startup::{self, Startup},
    stream::WorkerStream,
};

pub enum Handshake {
    /// The session is over already (cancel request, failed login, early close).
    Done(String),
    Ready(Ready),
}

pub struct Ready {
    pub worker_reader: FrameReader<ReadHalf<WorkerStream>>,
    pub worker_writer: WriteHalf<WorkerStream>,
    pub upstream_reader: FrameReader<OwnedReadHalf>,
    pub upstream_writer: OwnedWriteHalf,
    /// Transaction status of the first ReadyForQuery.
    pub status: u8,
    pub registration: Option<Registration>,
}

pub async fn handshake(
    worker: TcpStream,
    mut upstream: TcpStream,
    ctx: &Context,
    shared: &Arc<Shared>,
) -> Result<Handshake, SessionError> {
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
                return Ok(Handshake::Done(cancel(upstream, ctx, pid, &secret).await));
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

    // Forward the startup message as the worker sent it.
    let mut packet = BytesMut::with_capacity(startup_body.len() + 4);
    packet.extend_from_slice(&((startup_body.len() + 4) as i32).to_be_bytes());
    packet.extend_from_slice(&startup_body);
    upstream.write_all(&packet).await?;

    let server = upstream.peer_addr()?;
    let (wr, mut ww) = tokio::io::split(worker);
    let (ur, mut uw) = upstream.into_split();
    let mut wreader = FrameReader::new(wr, ctx.limits.max_message_bytes);
    let mut ureader = FrameReader::new(ur, UPSTREAM_MAX_MESSAGE);
    let mut registration = None;
    let mut out = Vec::new();

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
                uw.write_all(&f.raw).await?;
            }
        }
    }
}

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
/// resource and server. Answers nothing to the worker (PostgreSQL doesn't either).
async fn cancel(mut upstream: TcpStream, ctx: &Context, pid: i32, secret: &[u8]) -> String {
    let Some(target) = ctx.cancels.lookup(pid, secret) else {
        return "cancel request with an unknown key: ignored".into();
    };
    let server = upstream.peer_addr().ok();
    if target.resource != ctx.resource || server != Some(target.server) {
        return format!(
            "cancel request for resource `{}` arrived on a connection to `{}`: ignored",
            target.resource, ctx.resource
        );
    }
    let req = startup::cancel_request(target.pid, &target.secret);
    match upstream.write_all(&req).await {
        Ok(()) => {
            let _ = upstream.shutdown().await;
            format!("cancel request forwarded to backend pid {}", target.pid)
        }
        Err(e) => format!("cancel request could not be sent: {e}"),
    }
}
