//! The local proxy: accepts what the kernel redirected, and runs one session per
//! connection. This file is the accept loop; [`session`] is the path of one connection
//! from accept to its closing audit record, read top to bottom. Names no protocol: what
//! flows inside a session is [`crate::protocols`]'.

pub mod admission;
pub mod refusals;
pub mod session;

use std::{net::SocketAddr, sync::Arc};

use tokio::net::{TcpListener, TcpSocket};
use tokio_util::{sync::CancellationToken, task::TaskTracker};

use crate::{
    config::Config,
    govern::{Approvals, RulesHandle},
    journal::Journal,
    kernel::Redirector,
    protocols, tls,
};

/// Everything a session needs, shared by all of them.
pub struct Shared {
    pub config: Config,
    /// The policy and masking rules in force (replaced on SIGHUP; `config.rules` are
    /// the ones the agent started with).
    pub rules: RulesHandle,
    pub approvals: Approvals,
    pub journal: Journal,
    pub redirector: Redirector,
    /// Parser threads, cancel keys and the like of each protocol.
    pub protocols: protocols::Services,
    /// TLS toward workers and servers.
    pub tls: tls::Material,
    /// Sessions open at once, in all and per principal.
    pub admission: std::sync::Arc<admission::Admission>,
    /// Refused connections, coalesced per principal and reason before the journal.
    pub refusals: std::sync::Arc<refusals::Refusals>,
    /// Bytes of messages all sessions may hold at once.
    pub memory: Arc<crate::memory_budget::Budget>,
}

/// The proxy's listeners: bound before the kernel programs point at them. They are
/// bound to an ephemeral port of the listener addresses, not to the configured port:
/// that port is the redirect target, which the kernel's sk_lookup program delivers to
/// these sockets whoever else binds it, so a squatter can never make the agent's start
/// fail or receive its connections.
pub struct Listeners {
    pub v4: TcpListener,
    /// None when IPv6 is unavailable on this host; IPv6 destinations then fail closed.
    pub v6: Option<TcpListener>,
}

impl Listeners {
    pub fn bind(cfg: &Config) -> std::io::Result<Listeners> {
        let v4 = bind(SocketAddr::new(cfg.listener.ipv4.into(), 0))?;
        let v6 = match bind(SocketAddr::new(cfg.listener.ipv6.into(), 0)) {
            Ok(l) => Some(l),
            Err(e) => {
                tracing::warn!(error = %e, "no IPv6 listener: governed IPv6 connections will be refused");
                None
            }
        };
        Ok(Listeners { v4, v6 })
    }
}

fn bind(addr: SocketAddr) -> std::io::Result<TcpListener> {
    let socket = if addr.is_ipv4() {
        TcpSocket::new_v4()?
    } else {
        TcpSocket::new_v6()?
    };
    socket.set_reuseaddr(true)?;
    socket
        .bind(addr)
        .map_err(|e| std::io::Error::new(e.kind(), format!("cannot listen on {addr}: {e}")))?;
    socket.listen(1024)
}

/// Accepts until `shutdown` fires; every session is tracked so the caller can wait for
/// their closing records.
pub async fn serve(
    listeners: Listeners,
    shared: Arc<Shared>,
    shutdown: CancellationToken,
    sessions: TaskTracker,
) {
    let mut tasks = vec![tokio::spawn(accept_loop(
        listeners.v4,
        shared.clone(),
        shutdown.clone(),
        sessions.clone(),
    ))];
    if let Some(v6) = listeners.v6 {
        tasks.push(tokio::spawn(accept_loop(v6, shared, shutdown, sessions)));
    }
    for t in tasks {
        let _ = t.await;
    }
}

async fn accept_loop(
    listener: TcpListener,
    shared: Arc<Shared>,
    shutdown: CancellationToken,
    sessions: TaskTracker,
) {
    loop {
        let accepted = tokio::select! {
            _ = shutdown.cancelled() => return,
            r = listener.accept() => r,
        };
        match accepted {
            Ok((stream, peer)) => {
                sessions.spawn(session::run(stream, peer, shared.clone(), shutdown.clone()));
            }
            Err(e) => {
                // EMFILE and friends: back off briefly instead of spinning.
                tracing::warn!(error = %e, "accept failed");
                tokio::time::sleep(std::time::Duration::from_millis(50)).await;
            }
        }
    }
}
