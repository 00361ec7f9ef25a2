//! A PostgreSQL (protocol v3) session between a worker and a server, with every
//! statement judged by policy and journaled before it goes upstream.
//!
//! The path of one connection, top to bottom, is [`serve`]:
//! 1. [`handshake`]: startup packets (TLS toward the worker, GSSENC refused, cancel
//!    requests mapped to the right backend, parameters checked), then authentication
//!    relayed untouched until the server's first ReadyForQuery; BackendKeyData is
//!    replaced by a key minted in [`cancel`]. TLS toward the server, when the resource
//!    asks for it, is negotiated before the startup message goes up ([`upstream_tls`]).
//! 2. Two halves run together:
//!    - [`judge`] reads the worker: Query, Parse and FunctionCall are judged (the rest
//!      of an extended-protocol batch waits for Sync/Flush), decisions are journaled,
//!      allowed messages go upstream, refused ones are answered in order;
//!    - [`respond`] reads the server: forwards its messages, completes the audit of
//!      each execution (rows, duration), and slots the refusals in at the right place.
//!
//! Wire files ([`frame`], [`startup`], [`frontend`], [`backend`]) know no SQL or
//! policy; [`judge`] calls [`super::sql`] and [`crate::policy`] and nothing else does.

pub mod cancel;
pub mod config;
mod handshake;
mod judge;
pub mod masking;
mod respond;
pub mod sql;
pub mod upstream_tls;
pub mod wire;

use std::sync::{
    Arc,
    atomic::{AtomicBool, Ordering},
};

use tokio::net::TcpStream;
use tokio_rustls::TlsAcceptor;
use tokio_util::sync::CancellationToken;

pub use cancel::CancelRegistry;

use self::sql::Classifier;
use crate::{
    journal::{Journal, SessionId, event::SessionEnd},
    policy::{Limits, PolicyHandle},
    principal::Principal,
};

/// Frames from the server may be as large as PostgreSQL allows a value to be.
const UPSTREAM_MAX_MESSAGE: usize = 1 << 30;

/// What one session needs to know and use.
#[derive(Clone)]
pub struct Context {
    pub session: SessionId,
    pub principal: Principal,
    /// The resource's configured name.
    pub resource: String,
    pub journal: Journal,
    /// Read per statement: a reload applies to open sessions' next statements.
    pub policy: PolicyHandle,
    pub limits: Limits,
    pub classifier: Classifier,
    pub cancels: Arc<CancelRegistry>,
    /// TLS toward the worker; `None` answers SSLRequest with 'N'.
    pub tls: Option<TlsAcceptor>,
    /// The masking rules for this worker and resource; `None` when none apply.
    pub masker: Option<crate::mask::Masker>,
    /// TLS toward the server; `None`: plain TCP.
    pub upstream_tls: Option<crate::tls::ClientTls>,
}

/// How the session went, for its closing journal record.
#[derive(Debug)]
pub struct Outcome {
    pub from_worker: u64,
    pub to_worker: u64,
    pub end: SessionEnd,
    pub detail: Option<String>,
}

#[derive(Debug, thiserror::Error)]
pub enum SessionError {
    #[error("worker: {0}")]
    Worker(wire::frame::FrameError),
    #[error("server: {0}")]
    Upstream(wire::frame::FrameError),
    #[error("worker broke the protocol: {0}")]
    Protocol(String),
    #[error("server broke the protocol: {0}")]
    UpstreamProtocol(String),
    #[error("startup refused: {0}")]
    Startup(#[from] wire::startup::StartupError),
    #[error("TLS handshake with the worker failed: {0}")]
    Tls(std::io::Error),
    #[error("TLS to the server ({mode}): {source}")]
    UpstreamTls {
        mode: crate::tls::TlsMode,
        source: upstream_tls::UpstreamTlsError,
    },
    #[error("audit journal unavailable: {0}")]
    Journal(#[from] crate::journal::JournalError),
    #[error("connection error: {0}")]
    Io(#[from] std::io::Error),
}

/// Byte counts and the lexer-safety flag, shared by the two halves.
#[derive(Default)]
struct Shared {
    from_worker: std::sync::atomic::AtomicU64,
    to_worker: std::sync::atomic::AtomicU64,
    /// Set when the server reports a client_encoding or standard_conforming_strings
    /// under which the proxy's parser would read text differently than the server:
    /// from then on every statement is refused.
    lexer_unsafe: AtomicBool,
    /// Masking: the column names must be (re)loaded before the worker's next group
    /// (set at the start and after DDL; taken by the worker half when it injects the
    /// preload).
    mask_stale: AtomicBool,
    /// SQL-level prepared statements the server holds: updated by the server half when a
    /// PREPARE / DEALLOCATE completes, read by the worker half to judge `EXECUTE name`.
    prepared: std::sync::Mutex<self::sql::PreparedStatements>,
}

/// Runs one session to its end. `upstream` is a connection to the server the worker
/// meant to reach (already dialed by the caller).
pub async fn serve(
    worker: TcpStream,
    upstream: TcpStream,
    ctx: Context,
    shutdown: &CancellationToken,
) -> Outcome {
    let shared = Arc::new(Shared {
        mask_stale: AtomicBool::new(ctx.masker.is_some()),
        ..Shared::default()
    });
    // Small messages in both directions: never wait for Nagle.
    let _ = worker.set_nodelay(true);
    let _ = upstream.set_nodelay(true);
    let result = tokio::select! {
        r = run(worker, upstream, &ctx, &shared) => r,
        _ = shutdown.cancelled() => Ok(Ended::Shutdown),
    };
    let (end, detail) = match result {
        Ok(Ended::Closed(detail)) => (SessionEnd::Closed, detail),
        Ok(Ended::Shutdown) => (SessionEnd::AgentShutdown, None),
        Err(e) => (SessionEnd::Error, Some(e.to_string())),
    };
    if let Some(d) = &detail {
        tracing::debug!(session = %ctx.session, detail = %d, "postgres session ended");
    }
    Outcome {
        from_worker: shared.from_worker.load(Ordering::Relaxed),
        to_worker: shared.to_worker.load(Ordering::Relaxed),
        end,
        detail,
    }
}

enum Ended {
    Closed(Option<String>),
    Shutdown,
}

async fn run(
    worker: TcpStream,
    upstream: TcpStream,
    ctx: &Context,
    shared: &Arc<Shared>,
) -> Result<Ended, SessionError> {
    let ready = match handshake::handshake(worker, upstream, ctx, shared).await? {
        handshake::Handshake::Done(detail) => return Ok(Ended::Closed(Some(detail))),
        handshake::Handshake::Ready(r) => r,
    };
    let handshake::Ready {
        worker_reader,
        worker_writer,
        upstream_reader,
        upstream_writer,
        status,
        registration,
    } = ready;

    let (notes, rx) = tokio::sync::mpsc::channel(1024);
    let done = CancellationToken::new();
    let judge = judge::Judge::new(worker_reader, upstream_writer, notes, ctx, shared.clone());
    let respond = respond::Respond::new(
        upstream_reader,
        worker_writer,
        rx,
        status,
        ctx,
        shared.clone(),
    );
    let worker_half = async {
        let r = judge.run(&done).await;
        if r.is_err() {
            done.cancel();
        }
        r
    };
    let server_half = async {
        let r = respond.run(&done).await;
        done.cancel();
        r
    };
    let (w, s) = tokio::join!(worker_half, server_half);
    drop(registration);
    // The worker's error is the cause when both failed (the server half ends after
    // writing the worker's fatal error).
    let detail = match (w, s) {
        (Err(e), _) | (Ok(_), Err(e)) => return Err(e),
        (Ok(a), Ok(b)) => a.or(b),
    };
    Ok(Ended::Closed(detail))
}

/// What all postgres sessions of the daemon share: parser threads and cache, cancel
/// keys. Started once by the daemon, before it accepts connections.
pub struct Services {
    pub classifier: Classifier,
    pub cancels: Arc<CancelRegistry>,
}

impl Services {
    pub fn start(limits: &Limits) -> std::io::Result<Services> {
        let classifier = Classifier::start(self::sql::ClassifierConfig {
            max_statement_bytes: limits.max_statement_bytes,
            ..Default::default()
        })?;
        Ok(Services {
            classifier,
            cancels: Arc::new(CancelRegistry::default()),
        })
    }
}
