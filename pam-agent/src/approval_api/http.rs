//! The approvals HTTP API: what `pam-agent approvals` does over the local socket, for
//! approvers elsewhere. TLS with a certificate from the agent CA; every request carries
//! an OIDC bearer token, and the approver is whom the token names (subject, groups from
//! the configured claim). Any token problem is answered 401 and journaled; it never
//! reaches the broker.
//!
//! `GET /v1/approvals`, `GET /v1/approvals/{id}`, `POST /v1/approvals/{id}/approve`
//! (`{"for": "15m", "reason": "..."}`, both optional), `POST /v1/approvals/{id}/deny`
//! (`{"reason": "..."}`), `GET /v1/grants`, `DELETE /v1/grants/{id}`. Answers are the
//! control socket's JSON ([`crate::control::Response`]).

use std::{net::SocketAddr, sync::Arc, time::Duration};

use axum::{
    Extension, Json, Router,
    body::Bytes,
    extract::{Path, Request, State},
    http::{HeaderMap, StatusCode, header},
    middleware::{self, Next},
    response::{IntoResponse, Response as HttpResponse},
    routing::{delete, get, post},
};
use serde::Deserialize;
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

use super::HttpConfig;
use crate::{
    control::Response,
    govern::approval::{ApprovalError, Approver, Broker},
    journal::{Event, Journal},
    oidc::{Identity, Verifier},
    tls::{AgentCa, LeafCache},
};

/// The channel name decisions are journaled with.
pub const CHANNEL: &str = "http";
/// A client that does not finish its TLS handshake in this time is dropped.
const HANDSHAKE: Duration = Duration::from_secs(10);
/// Open connections at once; more wait in the kernel's backlog.
const MAX_CONNECTIONS: usize = 256;

/// The API, ready to serve.
pub struct Api {
    inner: Arc<Inner>,
}

struct Inner {
    cfg: HttpConfig,
    verifier: Verifier,
    broker: Broker,
    journal: Journal,
    leaves: LeafCache,
}

/// The TCP peer of a request, for the journal.
#[derive(Clone, Copy)]
struct Peer(SocketAddr);

impl Api {
    /// Loads the agent CA (made already by the daemon's TLS setup) for the API's own
    /// certificates, and the verifier for `cfg.oidc`.
    pub fn new(
        cfg: &HttpConfig,
        ca: &crate::tls::WorkerTls,
        broker: Broker,
        journal: Journal,
    ) -> anyhow::Result<Api> {
        use anyhow::Context;
        let agent_ca = AgentCa::load(&ca.ca_cert, &ca.ca_key).context("loading the agent CA")?;
        let http = crate::oidc::verifier::client(&cfg.oidc)
            .map_err(anyhow::Error::msg)
            .context("the identity provider's HTTP client")?;
        Ok(Api {
            inner: Arc::new(Inner {
                verifier: Verifier::new(cfg.oidc.clone(), http),
                cfg: cfg.clone(),
                broker,
                journal,
                leaves: LeafCache::new(agent_ca, ca.leaf_validity),
            }),
        })
    }

    /// Serves until `shutdown`; open connections are dropped then.
    pub async fn serve(self, listener: tokio::net::TcpListener, shutdown: CancellationToken) {
        let inner = self.inner;
        {
            let inner = inner.clone();
            tokio::spawn(async move {
                match inner.verifier.prefetch().await {
                    Ok(n) => tracing::info!(keys = n, "approvals: identity provider's keys loaded"),
                    Err(e) => {
                        tracing::warn!(error = %e, "approvals: identity provider's keys not loaded yet")
                    }
                }
            });
        }
        let mut conns = tokio::task::JoinSet::new();
        loop {
            let (tcp, peer) = tokio::select! {
                _ = shutdown.cancelled() => return,
                a = listener.accept() => match a {
                    Ok(a) => a,
                    Err(e) => {
                        tracing::warn!(error = %e, "approvals HTTP API: accept failed");
                        tokio::time::sleep(Duration::from_millis(50)).await;
                        continue;
                    }
                },
            };
            while conns.try_join_next().is_some() {}
            if conns.len() >= MAX_CONNECTIONS {
                continue;
            }
            let local = match tcp.local_addr() {
                Ok(a) => a.ip(),
                Err(_) => continue,
            };
            let acceptor = match inner.leaves.acceptor(
                "approvals-http",
                local,
                &inner.cfg.tls_names,
                b"http/1.1",
            ) {
                Ok(a) => a,
                Err(e) => {
                    tracing::error!(error = %e, "approvals HTTP API: no certificate");
                    continue;
                }
            };
            let inner = inner.clone();
            conns.spawn(async move {
                let tls = match tokio::time::timeout(HANDSHAKE, acceptor.accept(tcp)).await {
                    Ok(Ok(tls)) => tls,
                    _ => return,
                };
                let service = hyper_util::service::TowerToHyperService::new(router(inner, peer));
                // A client that trickles its headers is dropped (slowloris).
                let _ = hyper::server::conn::http1::Builder::new()
                    .timer(hyper_util::rt::TokioTimer::new())
                    .header_read_timeout(HANDSHAKE)
                    .serve_connection(hyper_util::rt::TokioIo::new(tls), service)
                    .await;
            });
        }
    }
}

fn router(inner: Arc<Inner>, peer: SocketAddr) -> Router {
    Router::new()
        .route("/v1/approvals", get(list))
        .route("/v1/approvals/{id}", get(show))
        .route("/v1/approvals/{id}/approve", post(approve))
        .route("/v1/approvals/{id}/deny", post(deny))
        .route("/v1/grants", get(grants))
        .route("/v1/grants/{id}", delete(revoke))
        .layer(middleware::from_fn_with_state(inner.clone(), authenticate))
        .layer(Extension(Peer(peer)))
        .with_state(inner)
}

/// Every route: a valid token of an admitted group, or 401 (and a journal record).
async fn authenticate(
    State(api): State<Arc<Inner>>,
    Extension(Peer(peer)): Extension<Peer>,
    mut req: Request,
    next: Next,
) -> HttpResponse {
    let refused = match bearer(req.headers()) {
        None => "no bearer token".to_owned(),
        Some(token) => match api.verifier.verify(token).await {
            Err(e) => format!("token refused ({}): {e}", e.code()),
            Ok(id) if !admitted(&api.cfg.groups, &id) => format!(
                "subject `{}` is in none of the API's groups ({})",
                id.subject,
                api.cfg.groups.join(", ")
            ),
            Ok(id) => {
                req.extensions_mut().insert(approver(&api.cfg, id));
                return next.run(req).await;
            }
        },
    };
    let event = Event::Error {
        component: "approvals-http".into(),
        message: format!(
            "{} {} from {peer}: {refused}",
            req.method(),
            req.uri().path()
        ),
    };
    if let Err(e) = api.journal.record(None, event).await {
        tracing::error!(error = %e, "cannot journal a refused approvals API request");
    }
    let mut r = error(StatusCode::UNAUTHORIZED, "invalid or missing bearer token");
    r.headers_mut().insert(
        header::WWW_AUTHENTICATE,
        header::HeaderValue::from_static("Bearer error=\"invalid_token\""),
    );
    r
}

fn bearer(h: &HeaderMap) -> Option<&str> {
    let v = h.get(header::AUTHORIZATION)?.to_str().ok()?;
    let (scheme, token) = v.split_once(' ')?;
    (scheme.eq_ignore_ascii_case("bearer") && !token.trim().is_empty()).then(|| token.trim())
}

fn admitted(groups: &[String], id: &Identity) -> bool {
    groups.is_empty() || id.groups.iter().any(|g| groups.contains(g))
}

/// The approver a token names: a configured local account, or the subject itself
/// (`oidc:SUBJECT`, so it never passes for a local user of the same name).
fn approver(cfg: &HttpConfig, id: Identity) -> Approver {
    let (uid, user) = match cfg.users.get(&id.subject) {
        Some((user, uid)) => (Some(*uid), user.clone()),
        None => (None, format!("oidc:{}", id.subject)),
    };
    Approver {
        uid,
        subject: Some(id.subject),
        user,
        groups: id.groups,
        channel: CHANNEL.into(),
    }
}

fn error(status: StatusCode, message: &str) -> HttpResponse {
    (
        status,
        Json(Response::Error {
            message: message.to_owned(),
        }),
    )
        .into_response()
}

fn failed(e: ApprovalError) -> HttpResponse {
    let status = match e {
        ApprovalError::Unknown(_) | ApprovalError::UnknownGrant(_) => StatusCode::NOT_FOUND,
        ApprovalError::SelfApproval | ApprovalError::NotAnApprover(..) => StatusCode::FORBIDDEN,
        ApprovalError::AlreadyApproved(_) => StatusCode::CONFLICT,
        ApprovalError::Journal(_) => StatusCode::SERVICE_UNAVAILABLE,
    };
    error(status, &e.to_string())
}

async fn list(State(api): State<Arc<Inner>>) -> Json<Response> {
    Json(Response::Requests {
        requests: api.broker.list(),
    })
}

async fn show(State(api): State<Arc<Inner>>, Path(id): Path<Uuid>) -> HttpResponse {
    match api.broker.show(id) {
        Some(r) => Json(Response::Request {
            request: Box::new(r),
        })
        .into_response(),
        None => failed(ApprovalError::Unknown(id)),
    }
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct Decision {
    /// A grant's window (`"15m"`), approvals only.
    #[serde(rename = "for")]
    grant_for: Option<String>,
    reason: Option<String>,
}

/// An empty body is an empty decision.
fn decision(body: &Bytes) -> Result<Decision, String> {
    if body.iter().all(u8::is_ascii_whitespace) {
        return Ok(Decision::default());
    }
    serde_json::from_slice(body).map_err(|e| format!("bad request: {e}"))
}

async fn approve(
    State(api): State<Arc<Inner>>,
    Extension(who): Extension<Approver>,
    Path(id): Path<Uuid>,
    body: Bytes,
) -> HttpResponse {
    let d = match decision(&body) {
        Ok(d) => d,
        Err(e) => return error(StatusCode::BAD_REQUEST, &e),
    };
    let grant = match &d.grant_for {
        None => None,
        Some(f) => match crate::oidc::config::duration(&Some(f.clone()), Duration::ZERO, false) {
            Ok(g) => Some(g),
            Err(e) => return error(StatusCode::BAD_REQUEST, &e),
        },
    };
    match api.broker.approve(id, &who, grant, d.reason).await {
        Ok(decided) => Json(Response::Decided { decided }).into_response(),
        Err(e) => failed(e),
    }
}

async fn deny(
    State(api): State<Arc<Inner>>,
    Extension(who): Extension<Approver>,
    Path(id): Path<Uuid>,
    body: Bytes,
) -> HttpResponse {
    let d = match decision(&body) {
        Ok(d) => d,
        Err(e) => return error(StatusCode::BAD_REQUEST, &e),
    };
    if d.grant_for.is_some() {
        return error(StatusCode::BAD_REQUEST, "a denial grants nothing");
    }
    match api.broker.deny(id, &who, d.reason).await {
        Ok(decided) => Json(Response::Decided { decided }).into_response(),
        Err(e) => failed(e),
    }
}

async fn grants(State(api): State<Arc<Inner>>) -> Json<Response> {
    Json(Response::Grants {
        grants: api.broker.grants(),
    })
}

async fn revoke(
    State(api): State<Arc<Inner>>,
    Extension(who): Extension<Approver>,
    Path(id): Path<Uuid>,
) -> HttpResponse {
    match api.broker.revoke(id, &who).await {
        Ok(()) => Json(Response::Done).into_response(),
        Err(e) => failed(e),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_bearer_authorization_carries_a_token() {
        let mut h = HeaderMap::new();
        assert_eq!(bearer(&h), None);
        h.insert(header::AUTHORIZATION, "Basic YTpi".parse().unwrap());
        assert_eq!(bearer(&h), None);
        h.insert(header::AUTHORIZATION, "Bearer ".parse().unwrap());
        assert_eq!(bearer(&h), None);
        h.insert(header::AUTHORIZATION, "bearer abc.def.ghi".parse().unwrap());
        assert_eq!(bearer(&h), Some("abc.def.ghi"));
    }

    #[test]
    fn a_subject_is_a_local_user_only_when_configured() {
        let mut cfg = HttpConfig {
            listen: "127.0.0.1:1".parse().unwrap(),
            tls_names: vec![],
            public_url: "https://x".into(),
            groups: vec!["secops".into()],
            users: Default::default(),
            oidc: crate::oidc::RawOidc {
                issuer: "https://idp".into(),
                audience: vec!["a".into()],
                groups_claim: None,
                ca_file: None,
                leeway: None,
                jwks_refresh_interval: None,
                jwks_max_age: None,
            }
            .validate("o")
            .unwrap(),
        };
        let id = Identity {
            issuer: "https://idp".into(),
            subject: "root".into(),
            groups: vec!["secops".into()],
            expires_at: None,
        };
        assert!(admitted(&cfg.groups, &id));
        assert!(!admitted(
            &cfg.groups,
            &Identity {
                groups: vec![],
                ..id.clone()
            }
        ));
        let a = approver(&cfg, id.clone());
        assert_eq!((a.uid, a.user.as_str()), (None, "oidc:root"));
        cfg.users.insert("root".into(), ("alice".into(), 1000));
        let a = approver(&cfg, id);
        assert_eq!((a.uid, a.user.as_str()), (Some(1000), "alice"));
        assert_eq!(a.channel, "http");
    }
}
