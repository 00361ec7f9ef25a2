//! What flows inside a governed connection, one module per protocol. The proxy hands
//! each session to its resource's protocol ([`serve`]); a protocol reads its wire
//! format, turns what the worker asks into [`crate::govern::Request`]s, and acts on the
//! gate's verdicts. Adding a protocol: one folder here, one arm in [`serve`] and in
//! [`crate::config::Protocol`], one config section.

pub mod config;
pub mod postgres;
pub mod tcp;

pub use config::{Protocol, ResourceSettings};

use std::{net::SocketAddr, sync::Arc};

use tokio::net::TcpStream;
use tokio_util::sync::CancellationToken;

use crate::{
    govern::{Approvals, RulesHandle, Session, Vocabulary},
    journal::event::SessionEnd,
    policy::Limits,
    tls,
};

/// How a session went, for its closing journal record.
#[derive(Debug)]
pub struct Outcome {
    pub from_worker: u64,
    pub to_worker: u64,
    pub end: SessionEnd,
    pub detail: Option<String>,
}

/// What the protocols' sessions share, started once by the daemon before it accepts
/// connections.
pub struct Services {
    pub postgres: postgres::Services,
}

impl Services {
    /// `resources`: each protected resource's name and protocol settings.
    pub fn start<'a>(
        limits: &Limits,
        resources: impl IntoIterator<Item = (&'a str, &'a ResourceSettings)>,
    ) -> std::io::Result<Services> {
        Ok(Services {
            postgres: postgres::Services::start(limits, resources)?,
        })
    }
}

/// How a protocol reaches the resource: the original destination, dialed when the
/// protocol is ready for it (PostgreSQL: only once the worker's startup packet arrived,
/// so connections that never finish their startup cost the database nothing).
#[derive(Debug, Clone)]
pub struct Dialer {
    pub addr: SocketAddr,
    pub timeout: std::time::Duration,
}

impl Dialer {
    /// The agent itself is never redirected, so this reaches the resource.
    pub async fn dial(&self) -> Result<TcpStream, String> {
        match tokio::time::timeout(self.timeout, TcpStream::connect(self.addr)).await {
            Ok(Ok(s)) => {
                let _ = s.set_nodelay(true);
                Ok(s)
            }
            Ok(Err(e)) => Err(format!("{}: {e}", self.addr)),
            Err(_) => Err(format!(
                "{}: no answer within {} ms",
                self.addr,
                self.timeout.as_millis()
            )),
        }
    }
}

/// One governed connection, handed by the proxy to its resource's protocol: the
/// worker's socket, how to reach the resource, the session on record, and what judging
/// it needs.
pub struct Dispatch<'a> {
    pub worker: TcpStream,
    pub upstream: Dialer,
    pub session: Arc<Session>,
    pub protocol: Protocol,
    /// The resource's own keys, per protocol.
    pub settings: &'a ResourceSettings,
    /// Where the worker meant to connect (TLS leaves name it).
    pub destination: SocketAddr,
    pub rules: &'a RulesHandle,
    pub approvals: &'a Approvals,
    pub limits: Limits,
    /// This session's use of the agent's memory budget for messages.
    pub memory: crate::memory_budget::SessionMemory,
    pub services: &'a Services,
    /// TLS toward the worker, and this resource's client TLS toward its server.
    pub worker_tls: Option<&'a tls::LeafCache>,
    pub upstream_tls: Option<tls::ClientTls>,
    /// The in-kernel relay for `tcp` resources (None: splice).
    pub tcp_relay: Option<&'a crate::kernel::SockRelay>,
    pub shutdown: &'a CancellationToken,
}

/// The client TLS toward a resource's server, as its protocol's keys ask (`None`: plain
/// TCP); `timeout` bounds the protocol's TLS prelude and handshake.
pub fn upstream_tls(
    protocol: Protocol,
    settings: &ResourceSettings,
    timeout: std::time::Duration,
) -> Result<Option<tls::ClientTls>, tls::ClientTlsError> {
    match protocol {
        Protocol::Tcp => Ok(None),
        Protocol::Postgres => {
            let s = &settings.postgres;
            tls::ClientTls::new(
                s.upstream_tls,
                s.upstream_ca.as_deref(),
                s.upstream_server_name.as_deref(),
                timeout,
                postgres::upstream_tls::ALPN,
            )
        }
    }
}

/// One line on a resource's protocol settings for `pam-agent check` (empty: nothing).
pub fn describe(protocol: Protocol, settings: &ResourceSettings) -> String {
    match protocol {
        Protocol::Tcp => String::new(),
        Protocol::Postgres => {
            let pg = &settings.postgres;
            let mut out = match pg.upstream_tls {
                tls::TlsMode::Disable => String::new(),
                mode => format!(", TLS to the server: {mode}"),
            };
            if pg.worker_auth == postgres::config::WorkerAuth::None {
                // Where each secret is kept, never the secret.
                let logins: Vec<String> = pg
                    .logins
                    .iter()
                    .map(|l| {
                        let who = l
                            .principals
                            .as_ref()
                            .map_or("every principal".to_owned(), |p| p.join(", "));
                        format!("{who} as {} (secret: {})", l.role, l.source)
                    })
                    .collect();
                out.push_str(&format!(", the agent logs in: {}", logins.join("; ")));
            }
            out
        }
    }
}

/// What a text sent to a resource of `protocol` asks, read as its sessions read it (for
/// `pam-agent policy explain`): the requests, or why the text cannot be read (a session
/// refuses such a text). The outer error: the reader itself failed.
pub fn requests_of(
    protocol: Protocol,
    text: &str,
    limits: &Limits,
) -> std::io::Result<Result<Vec<crate::govern::Request>, String>> {
    match protocol {
        Protocol::Tcp => Ok(Err("`tcp` resources carry no statements to judge".into())),
        Protocol::Postgres => postgres::sql::requests_of(text, limits.max_statement_bytes),
    }
}

/// Turns a connection away in the protocol's own terms (PostgreSQL: FATAL 53300 once
/// the startup packet is in, as the server says "too many clients"; tcp: closed).
pub async fn refuse(protocol: Protocol, worker: TcpStream, reason: &str) {
    match protocol {
        Protocol::Tcp => drop(worker),
        Protocol::Postgres => postgres::refuse_at_startup(worker, reason).await,
    }
}

/// Runs the session under its resource's protocol, to its end.
pub async fn serve(d: Dispatch<'_>) -> Outcome {
    match d.protocol {
        Protocol::Tcp => match d.upstream.dial().await {
            Ok(upstream) => tcp::relay(d.worker, upstream, d.tcp_relay, d.shutdown).await,
            Err(detail) => Outcome {
                from_worker: 0,
                to_worker: 0,
                end: SessionEnd::UpstreamUnreachable,
                detail: Some(detail),
            },
        },
        Protocol::Postgres => postgres::open(d).await,
    }
}

/// The kinds and flags requests of every protocol can have: what policy rules may name.
/// (`tcp` sessions make no requests.)
pub fn vocabulary() -> Vocabulary {
    postgres::sql::VOCABULARY
}

/// The ALPN name a protocol's TLS offers (empty: none).
pub fn alpn(protocol: Protocol) -> &'static [u8] {
    match protocol {
        Protocol::Tcp => b"",
        Protocol::Postgres => postgres::upstream_tls::ALPN,
    }
}
