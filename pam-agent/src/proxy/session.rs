//! One redirected connection, from accept to its closing audit record.
//!
//! identify (kernel record) -> resource -> principal (facts, then its `[[principals]]`
//! name) -> journal "opened" (before any
//! byte moves) -> the resource's protocol (which dials the original destination when
//! it is ready to) -> journal "closed". Any step that fails closes the worker's connection; nothing is
//! relayed unaudited.

use std::{net::SocketAddr, sync::Arc, time::Instant};

use tokio::net::TcpStream;
use tokio_util::sync::CancellationToken;

use super::{Shared, refusals};
use crate::{
    govern::Session,
    journal::{Event, SessionId, event::ResourceRef},
    principal::Principal,
    protocols::{self, Dialer, Dispatch, Outcome},
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
            let key = refusals::Key {
                reason: e.class(),
                principal: None,
            };
            shared.refusals.refuse(key, peer, e.to_string()).await;
            return;
        }
    };
    let c = redirected.captured;
    let Some(resource) = shared.config.resource(redirected.resource_id) else {
        let reason = format!(
            "redirect names resource #{} which the running config does not have",
            redirected.resource_id
        );
        let key = refusals::Key {
            reason: "unknown_resource",
            principal: Some((c.uid, c.cgroup_id)),
        };
        shared.refusals.refuse(key, peer, reason).await;
        return;
    };

    // Admitted before anything else is spent on it (no /proc reads, no dial).
    let _ticket = match shared.admission.admit((c.uid, c.cgroup_id)) {
        Ok(t) => t,
        Err(refused) => {
            let reason = format!(
                "{refused}: uid {} cgroup id {} pid {}",
                c.uid, c.cgroup_id, c.pid
            );
            let key = refusals::Key {
                reason: refused.class(),
                principal: Some((c.uid, c.cgroup_id)),
            };
            shared.refusals.refuse(key, peer, reason).await;
            protocols::refuse(resource.protocol, worker, &refused.to_string()).await;
            return;
        }
    };
    let mut principal = Principal::from_captured(redirected.captured);
    shared.rules.current().principals.name(&mut principal);
    let session = Arc::new(Session {
        id: SessionId::new(),
        principal,
        resource: resource.name.clone(),
        journal: shared.journal.clone(),
        parameters: shared.config.journal.parameters,
    });
    let opened = Event::SessionOpened {
        principal: session.principal.clone(),
        resource: ResourceRef {
            name: resource.name.clone(),
            protocol: resource.protocol.to_string(),
        },
        destination: redirected.destination,
        client: peer,
    };
    // Write-ahead: no byte reaches the resource before the session is on record.
    if let Err(e) = shared.journal.record(Some(session.id), opened).await {
        tracing::error!(session = %session.id, error = %e, "cannot journal session; closing it");
        return;
    }
    let _ = worker.set_nodelay(true);

    let upstream = Dialer {
        addr: redirected.upstream(),
        timeout: shared.config.listener.upstream_connect_timeout,
    };
    tracing::debug!(session = %session.id, resource = %resource.name, upstream = %upstream.addr, "session open");

    let outcome = protocols::serve(Dispatch {
        worker,
        upstream,
        session: session.clone(),
        protocol: resource.protocol,
        settings: &resource.settings,
        destination: redirected.destination,
        rules: &shared.rules,
        approvals: &shared.approvals,
        limits: shared.config.limits,
        memory: shared.memory.session(),
        services: &shared.protocols,
        worker_tls: shared.tls.leaves.as_ref(),
        upstream_tls: shared
            .tls
            .upstream
            .get(redirected.resource_id as usize)
            .cloned()
            .flatten(),
        tcp_relay: shared.redirector.sock_relay(),
        shutdown: &shutdown,
    })
    .await;
    close(&shared, session.id, started, outcome).await;
}

async fn close(shared: &Shared, session: SessionId, started: Instant, o: Outcome) {
    let event = Event::SessionClosed {
        bytes_from_worker: o.from_worker,
        bytes_to_worker: o.to_worker,
        duration_ms: started.elapsed().as_millis() as u64,
        end: o.end,
        detail: o.detail,
    };
    if let Err(e) = shared.journal.record(Some(session), event).await {
        tracing::error!(%session, error = %e, "cannot journal session close");
    }
}
