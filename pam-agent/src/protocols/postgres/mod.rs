//! PostgreSQL (protocol v3) sessions between a worker and a server, every statement
//! judged by the gate and journaled before it goes upstream.
//!
//! The path of one connection, top to bottom, is [`serve`]:
//! 1. [`handshake`]: startup packets (TLS toward the worker, GSSENC refused, cancel
//!    requests mapped to the right backend, parameters checked), TLS toward the server
//!    when the resource asks for it ([`upstream_tls`]), then authentication relayed
//!    until the server's first ReadyForQuery; BackendKeyData is replaced by a key minted
//!    in [`cancel`].
//! 2. Two halves run together:
//!    - [`client`] reads the worker: Query, Parse and FunctionCall become
//!      [`crate::govern::Request`]s judged by the [`crate::govern::Gate`]; the extended
//!      protocol's batches go through the sans-IO [`batch`] machine (held until Sync,
//!      refused in order, held for approval); on a masked session it injects what the
//!      server half needs to plan results ([`inject`]);
//!    - [`server`] reads the server: forwards its messages, masks result rows
//!      ([`masking`]), completes each execution's audit, and slots refusals in at the
//!      right place.
//!
//!    The halves speak through [`notes`], always before the bytes concerned go up.
//!
//! [`wire`] knows no SQL or policy; [`sql`] is what a statement does; only [`client`]
//! calls the gate.

mod answers;
mod batch;
mod cancel;
mod client;
pub mod config;
mod handshake;
mod inject;
mod io;
mod known_functions;
mod login;
mod login_record;
pub mod masking;
mod names;
mod notes;
mod params;
mod refusal;
mod server;
pub mod sql;
mod txn;
pub(crate) mod upstream_tls;
pub mod wire;
mod worker_token;

use std::sync::{
    Arc,
    atomic::{AtomicBool, AtomicU64, Ordering},
};

use tokio::net::TcpStream;
use tokio_rustls::TlsAcceptor;
use tokio_util::sync::CancellationToken;

pub use cancel::CancelRegistry;

use self::sql::{Classifier, PreparedStatements};
use super::{Dialer, Dispatch, Outcome};
use crate::{
    govern::{Gate, Session},
    journal::event::SessionEnd,
    policy::Limits,
    tls::ClientTls,
};

/// Frames from the server may be as large as PostgreSQL allows a value to be.
const UPSTREAM_MAX_MESSAGE: usize = 1 << 30;

/// What one session needs to know and use.
#[derive(Clone)]
pub struct Context {
    pub session: Arc<Session>,
    pub limits: Limits,
    /// Long messages, both directions, are read within the agent's memory budget.
    pub memory: crate::memory_budget::SessionMemory,
    pub classifier: Classifier,
    pub cancels: Arc<CancelRegistry>,
    /// TLS toward the worker; `None` answers SSLRequest with 'N'.
    pub tls: Option<TlsAcceptor>,
    /// TLS toward the server; `None`: plain TCP.
    pub upstream_tls: Option<ClientTls>,
    /// `worker_auth = "none"`: the logins the agent completes the worker's login with.
    pub injection: Option<login::Injection>,
    /// `worker_auth = "oidc"`: the verifier of the worker's token, and the principals
    /// (which token subjects each may carry).
    pub worker_token: Option<worker_token::TokenCheck>,
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

/// What the two halves share.
#[derive(Default)]
struct Shared {
    from_worker: AtomicU64,
    to_worker: AtomicU64,
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
    prepared: std::sync::Mutex<PreparedStatements>,
    /// The open transaction's writes (see [`txn`]).
    txn: std::sync::Mutex<txn::Transaction>,
    /// Parameter types of the worker's statements as the server described them: name →
    /// (the worker half's parse generation of that name, type OIDs).
    param_types: std::sync::Mutex<std::collections::HashMap<String, (u64, Vec<u32>)>>,
    /// What the server last reported of the settings [`io::REPORTED`] names.
    reported: std::sync::Mutex<std::collections::BTreeMap<String, String>>,
}

/// What all PostgreSQL sessions of the daemon share: parser threads and cache, cancel
/// keys. Started once by the daemon, before it accepts connections.
#[derive(Clone)]
pub struct Services {
    pub classifier: Classifier,
    pub cancels: Arc<CancelRegistry>,
    /// Per resource with `worker_auth = "oidc"`: its issuer's verifier (one JWKS cache
    /// for all its sessions).
    pub verifiers: std::collections::HashMap<String, Arc<crate::oidc::Verifier>>,
}

impl Services {
    /// `resources`: each resource's name and settings (the verifiers of its worker tokens).
    pub fn start<'a>(
        limits: &Limits,
        resources: impl IntoIterator<Item = (&'a str, &'a super::config::ResourceSettings)>,
    ) -> std::io::Result<Services> {
        let classifier = Classifier::start(sql::ClassifierConfig {
            max_statement_bytes: limits.max_statement_bytes,
            ..Default::default()
        })?;
        let mut verifiers = std::collections::HashMap::new();
        for (name, settings) in resources {
            if let Some(cfg) = &settings.postgres.worker_oidc {
                let http = crate::oidc::verifier::client(cfg).map_err(|e| {
                    std::io::Error::other(format!("resource `{name}`: worker_oidc: {e}"))
                })?;
                verifiers.insert(
                    name.to_owned(),
                    Arc::new(crate::oidc::Verifier::new(cfg.clone(), http)),
                );
            }
        }
        Ok(Services {
            classifier,
            cancels: Arc::new(CancelRegistry::default()),
            verifiers,
        })
    }
}

/// A governed connection to a `postgres` resource: its TLS leaf (naming the address the
/// worker dialed, so `verify-full` holds), its gate, then [`serve`].
pub async fn open(d: Dispatch<'_>) -> Outcome {
    let tls = match d.worker_tls {
        None => None,
        Some(leaves) => match leaves.acceptor(
            &d.session.resource,
            d.destination.ip(),
            &d.settings.postgres.tls_names,
            upstream_tls::ALPN,
        ) {
            Ok(a) => Some(a),
            Err(e) => {
                let detail = format!("cannot issue a certificate for the worker: {e}");
                tracing::error!(session = %d.session.id, error = %detail);
                return Outcome {
                    from_worker: 0,
                    to_worker: 0,
                    end: SessionEnd::Error,
                    detail: Some(detail),
                };
            }
        },
    };
    let gate = Gate::new(d.session.clone(), d.rules.clone(), d.approvals.clone());
    let worker_token = d
        .services
        .postgres
        .verifiers
        .get(&d.session.resource)
        .map(|v| worker_token::TokenCheck {
            verifier: v.clone(),
            principals: d.rules.current().principals.clone(),
        });
    let ctx = Context {
        session: d.session,
        limits: d.limits,
        memory: d.memory,
        classifier: d.services.postgres.classifier.clone(),
        cancels: d.services.postgres.cancels.clone(),
        tls,
        upstream_tls: d.upstream_tls,
        injection: (d.settings.postgres.worker_auth != config::WorkerAuth::Passthrough).then(
            || login::Injection {
                logins: d.settings.postgres.logins.clone(),
                methods: d.settings.postgres.upstream_auth.clone(),
            },
        ),
        worker_token,
    };
    serve(d.worker, d.upstream, ctx, gate, d.shutdown).await
}

/// Answers a connection that may not open a session (too many sessions): its startup
/// packet read (TLS declined), then FATAL 53300, as the server answers when full. A
/// worker that sends nothing is closed after the startup deadline.
pub async fn refuse_at_startup(worker: TcpStream, reason: &str) {
    handshake::refuse(worker, reason).await
}

/// Runs one session to its end. `upstream` reaches the server the worker meant to
/// reach (dialed once the worker's startup packet is in); `gate` judges its statements.
pub async fn serve(
    worker: TcpStream,
    upstream: Dialer,
    ctx: Context,
    gate: Gate,
    shutdown: &CancellationToken,
) -> Outcome {
    let shared = Arc::new(Shared {
        mask_stale: AtomicBool::new(gate.masker().is_some()),
        ..Shared::default()
    });
    // Small messages in both directions: never wait for Nagle.
    let _ = worker.set_nodelay(true);
    let result = tokio::select! {
        r = run(worker, upstream, &ctx, gate, &shared) => r,
        _ = shutdown.cancelled() => Ok(Ended::Shutdown),
    };
    let (end, detail) = match result {
        Ok(Ended::Closed(detail)) => (SessionEnd::Closed, detail),
        Ok(Ended::Unreachable(detail)) => (SessionEnd::UpstreamUnreachable, Some(detail)),
        Ok(Ended::Shutdown) => (SessionEnd::AgentShutdown, None),
        Err(e) => (SessionEnd::Error, Some(e.to_string())),
    };
    if let Some(d) = &detail {
        tracing::debug!(session = %ctx.session.id, detail = %d, "postgres session ended");
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
    /// The server could not be reached once the worker's startup arrived.
    Unreachable(String),
    Shutdown,
}

async fn run(
    worker: TcpStream,
    upstream: Dialer,
    ctx: &Context,
    gate: Gate,
    shared: &Arc<Shared>,
) -> Result<Ended, SessionError> {
    let ready = match handshake::handshake(worker, upstream, ctx, shared).await? {
        handshake::Handshake::Done(detail) => return Ok(Ended::Closed(Some(detail))),
        handshake::Handshake::Unreachable(detail) => return Ok(Ended::Unreachable(detail)),
        handshake::Handshake::Ready(r) => *r,
    };
    login_record::journal(ctx, &ready, shared).await?;
    let mut gate = gate;
    gate.set_login(ready.database.clone(), ready.role.clone());
    gate.set_token(ready.token.clone());
    let (notes, rx) = tokio::sync::mpsc::channel(1024);
    let done = CancellationToken::new();
    let masker = gate.masker().cloned();
    let server = server::Server::new(
        ready.upstream_reader,
        ready.worker_writer,
        rx,
        ready.status,
        masker,
        ctx,
        shared.clone(),
    );
    let cancelled = ready
        .registration
        .as_ref()
        .map(|r| r.cancelled.clone())
        .unwrap_or_default();
    let client = client::Client::new(
        ready.worker_reader,
        ready.upstream_writer,
        notes,
        ctx,
        gate,
        shared.clone(),
        cancelled,
    );
    let worker_half = async {
        let r = client.run(&done).await;
        if r.is_err() {
            done.cancel();
        }
        r
    };
    let server_half = async {
        let r = server.run(&done).await;
        done.cancel();
        r
    };
    let (w, s) = tokio::join!(worker_half, server_half);
    drop(ready.registration);
    // The worker's error is the cause when both failed (the server half ends after
    // writing the worker's fatal error).
    let detail = match (w, s) {
        (Err(e), _) | (Ok(_), Err(e)) => return Err(e),
        (Ok(a), Ok(b)) => a.or(b),
    };
    Ok(Ended::Closed(detail))
}
