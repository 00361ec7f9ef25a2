//! Remote approval channels: an HTTP API for approvers elsewhere ([`http`]: TLS from the
//! agent CA, OIDC bearer tokens checked by [`crate::oidc`]), and webhook notices of
//! requests and decisions ([`webhook`]: signed JSON, retried, never in the way of a
//! decision). Both reach the same broker as the local socket ([`crate::control`]).

pub mod config;
pub mod http;
pub mod webhook;

pub use config::{HttpConfig, RawHttp, RawWebhook, WebhookConfig};

use tokio_util::sync::CancellationToken;

use crate::{govern::approval::Broker, journal::Journal};

/// Starts what `[approvals.http]` and `[[approvals.webhooks]]` ask for. Errors here stop
/// the agent before it is ready (a CA or secret that cannot be read).
pub async fn start(
    http: Option<&HttpConfig>,
    webhooks: &[WebhookConfig],
    ca: Option<&crate::tls::WorkerTls>,
    broker: &Broker,
    journal: &Journal,
    shutdown: &CancellationToken,
) -> anyhow::Result<()> {
    use anyhow::Context;
    if let Some(h) = http {
        let ca = ca.context(
            "[approvals.http] needs [worker_tls]: its certificate is issued by the agent CA",
        )?;
        let api = http::Api::new(h, ca, broker.clone(), journal.clone())
            .context("starting the approvals HTTP API")?;
        let listener = tokio::net::TcpListener::bind(h.listen)
            .await
            .with_context(|| format!("binding the approvals HTTP API on {}", h.listen))?;
        tracing::info!(listen = %h.listen, issuer = %h.oidc.issuer, "approvals: HTTP API open");
        tokio::spawn(api.serve(listener, shutdown.clone()));
    }
    if !webhooks.is_empty() {
        let link = http.map(|h| h.public_url.clone());
        let hooks = webhooks
            .iter()
            .map(webhook::Hook::load)
            .collect::<Result<Vec<_>, _>>()
            .context("loading the webhooks' secrets")?;
        tracing::info!(webhooks = hooks.len(), "approvals: webhooks on");
        tokio::spawn(webhook::dispatch(
            broker.notices(),
            hooks,
            link,
            shutdown.clone(),
        ));
    }
    Ok(())
}
