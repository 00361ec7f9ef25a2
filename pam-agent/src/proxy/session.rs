//! One redirected connection, from accept to its closing audit record.
//!
//! identify (kernel record) -> resource -> principal -> journal "opened" (before any
//! byte moves) -> dial the original destination -> relay -> journal "closed".
//! Any step that fails closes the worker's connection; nothing is relayed unaudited.

use std::{net::SocketAddr, sync::Arc, time::Instant};

use tokio::net::TcpStream;
use tokio_util::sync::CancellationToken;

use super::{Shared, relay};
use crate::{
    config::Protocol,
    journal::{
        Event, SessionId,
        event::{ResourceRef, SessionEnd},
    },
    postgres,
    principal::Principal,
};

pub async fn run(
    worker: TcpStream,
    peer: SocketAddr,
    shared: Arc<Shared>,
    shutdown: CancellationToken,
) {
    let started = Instant::now();

    // Identify: only connections the kernel redirected have a record, found by the
    // cookie of the socket at the far end (an unknown local address fails the lookup).
    let local = worker
        .local_addr()
        .unwrap_or(SocketAddr::from(([0, 0, 0, 0], 0)));
    let redirected = match shared.redirector.lookup(peer, local) {
        Ok(r) => r,
        Err(e) => {
            tracing::warn!(%peer, error = %e, "refusing connection");
            refuse(&shared, peer, e.to_string()).await;
            return;
        }
    };
    let Some(resource) = shared.config.resource(redirected.resource_id) else {
        let reason = format!(
            "redirect names resource #{} which the running config does not have",
            redirected.resource_id
        );
        refuse(&shared, peer, reason).await;
        return;
    };

    let principal = Principal::from_captured(redirected.captured);
    let session = SessionId::new();
    let opened = Event::SessionOpened {
        principal: principal.clone(),
        resource: ResourceRef {
            name: resource.name.clone(),
            protocol: resource.protocol.to_string(),
        },
        destination: redirected.destination,
        client: peer,
    };
    // Write-ahead: no byte reaches the resource before the session is on record.
    if let Err(e) = shared.journal.record(Some(session), opened).await {
        tracing::error!(%session, error = %e, "cannot journal session; closing it");
        return;
    }
    let _ = worker.set_nodelay(true);

    let upstream_addr = redirected.upstream();
    let timeout = shared.config.listener.upstream_connect_timeout;
    let upstream = match tokio::time::timeout(timeout, TcpStream::connect(upstream_addr)).await {
        Ok(Ok(s)) => s,
        Ok(Err(e)) => {
            close(
                &shared,
                session,
                started,
                0,
                0,
                SessionEnd::UpstreamUnreachable,
                Some(format!("{upstream_addr}: {e}")),
            )
            .await;
            return;
        }
        Err(_) => {
            let detail = format!(
                "{upstream_addr}: no answer within {} ms",
                timeout.as_millis()
            );
            close(
                &shared,
                session,
                started,
                0,
                0,
                SessionEnd::UpstreamUnreachable,
                Some(detail),
            )
            .await;
            return;
        }
    };
    let _ = upstream.set_nodelay(true);
    tracing::debug!(%session, resource = %resource.name, %upstream_addr, "session open");

    let outcome = match resource.protocol {
        Protocol::Tcp => relay::relay(worker, upstream, &shutdown).await,
        Protocol::Postgres => {
            // Statement-aware session: judged by the policy, journaled per statement.
            let services = &shared.postgres;
            let masker = masker_for(&shared, &principal, &resource.name);
            // The leaf names the address the worker dialed, so verify-full holds.
            let tls = match &shared.tls.leaves {
                None => None,
                Some(leaves) => match leaves.acceptor(
                    &resource.name,
                    redirected.destination.ip(),
                    &resource.tls_names,
                ) {
                    Ok(a) => Some(a),
                    Err(e) => {
                        let detail = format!("cannot issue a certificate for the worker: {e}");
                        tracing::error!(%session, error = %detail);
                        close(
                            &shared,
                            session,
                            started,
                            0,
                            0,
                            SessionEnd::Error,
                            Some(detail),
                        )
                        .await;
                        return;
                    }
                },
            };
            let upstream_tls = shared
                .tls
                .upstream
                .get(redirected.resource_id as usize)
                .cloned()
                .flatten();
            let ctx = postgres::Context {
                session,
                principal,
                resource: resource.name.clone(),
                journal: shared.journal.clone(),
                policy: shared.policy.clone(),
                limits: shared.config.limits,
                classifier: services.classifier.clone(),
                cancels: services.cancels.clone(),
                tls,
                upstream_tls,
                masker,
            };
            let o = postgres::serve(worker, upstream, ctx, &shutdown).await;
            relay::Outcome {
                from_worker: o.from_worker,
                to_worker: o.to_worker,
                end: o.end,
                detail: o.detail,
            }
        }
    };
    close(
        &shared,
        session,
        started,
        outcome.from_worker,
        outcome.to_worker,
        outcome.end,
        outcome.detail,
    )
    .await;
}

async fn refuse(shared: &Shared, client: SocketAddr, reason: String) {
    if let Err(e) = shared
        .journal
        .record(None, Event::ConnectionRefused { client, reason })
        .await
    {
        tracing::error!(error = %e, "cannot journal refused connection");
    }
}

async fn close(
    shared: &Shared,
    session: SessionId,
    started: Instant,
    bytes_from_worker: u64,
    bytes_to_worker: u64,
    end: SessionEnd,
    detail: Option<String>,
) {
    let event = Event::SessionClosed {
        bytes_from_worker,
        bytes_to_worker,
        duration_ms: started.elapsed().as_millis() as u64,
        end,
        detail,
    };
    if let Err(e) = shared.journal.record(Some(session), event).await {
        tracing::error!(%session, error = %e, "cannot journal session close");
    }
}

/// The masking rules that apply to this worker and resource (chosen once per session).
fn masker_for(
    shared: &Shared,
    principal: &Principal,
    resource: &str,
) -> Option<crate::mask::Masker> {
    let subject = crate::mask::Subject {
        uid: Some(principal.uid),
        user: principal.user.as_deref(),
        cgroup: principal.cgroup.as_deref(),
        exe: principal.exe.as_deref(),
        resource: Some(resource),
    };
    let masker = shared.policy.current().masking.for_subject(&subject);
    (!masker.is_noop()).then_some(masker)
}
