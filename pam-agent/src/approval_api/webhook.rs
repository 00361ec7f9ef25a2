//! Webhook notices of approval requests and decisions. Each is a JSON POST with a
//! Slack-compatible `text`, a link to the request in the HTTP API, and an HMAC-SHA256
//! signature over `TIMESTAMP.BODY` in `X-Pam-Agent-Signature: sha256=HEX` (the
//! timestamp in `X-Pam-Agent-Timestamp`, so a receiver can refuse replays). A failed
//! delivery is retried with doubling waits. Notices come from the broker's broadcast,
//! after the journal has them: a slow or dead receiver delays nothing but itself.

use std::time::Duration;

use hmac::{Hmac, Mac};
use serde_json::json;
use sha2::Sha256;
use tokio::sync::broadcast::{Receiver, error::RecvError};
use tokio_util::sync::CancellationToken;

use super::WebhookConfig;
use crate::govern::approval::Notice;

/// Deliveries in flight (with their retries) before new notices are dropped.
const MAX_IN_FLIGHT: usize = 256;
/// The longest wait between two attempts.
const MAX_BACKOFF: Duration = Duration::from_secs(300);

/// A webhook with its secret and client.
pub struct Hook {
    cfg: WebhookConfig,
    secret: Secret,
    http: reqwest::Client,
}

/// Never printed.
struct Secret(Vec<u8>);

impl std::fmt::Debug for Secret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Secret(..)")
    }
}

#[derive(Debug, thiserror::Error)]
pub enum WebhookError {
    #[error("webhook secret {path}: {reason}")]
    Secret { path: String, reason: String },
    #[error("webhook {url}: {reason}")]
    Client { url: String, reason: String },
}

impl Hook {
    pub fn load(cfg: &WebhookConfig) -> Result<Hook, WebhookError> {
        let secret_err = |reason: String| WebhookError::Secret {
            path: cfg.secret_file.display().to_string(),
            reason,
        };
        let raw = std::fs::read(&cfg.secret_file).map_err(|e| secret_err(e.to_string()))?;
        let secret = raw.trim_ascii().to_vec();
        if secret.len() < 16 {
            return Err(secret_err("shorter than 16 bytes".into()));
        }
        let client_err = |reason: String| WebhookError::Client {
            url: cfg.url.clone(),
            reason,
        };
        let mut b = reqwest::Client::builder()
            .redirect(reqwest::redirect::Policy::none())
            .connect_timeout(cfg.timeout)
            .timeout(cfg.timeout)
            .no_proxy();
        if let Some(path) = &cfg.ca_file {
            let pem = std::fs::read(path).map_err(|e| client_err(e.to_string()))?;
            let certs = reqwest::Certificate::from_pem_bundle(&pem)
                .map_err(|e| client_err(e.to_string()))?;
            b = b.tls_certs_only(certs);
        }
        Ok(Hook {
            cfg: cfg.clone(),
            secret: Secret(secret),
            http: b.build().map_err(|e| client_err(e.to_string()))?,
        })
    }
}

/// `sha256=HEX` of HMAC-SHA256(secret, `TIMESTAMP.BODY`).
pub fn signature(secret: &[u8], timestamp: i64, body: &[u8]) -> String {
    let mut mac = Hmac::<Sha256>::new_from_slice(secret).expect("HMAC takes any key length");
    mac.update(timestamp.to_string().as_bytes());
    mac.update(b".");
    mac.update(body);
    let hex: String = mac
        .finalize()
        .into_bytes()
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect();
    format!("sha256={hex}")
}

/// The JSON a receiver gets.
pub fn payload(n: &Notice, link: Option<&str>) -> serde_json::Value {
    let r = &n.request;
    let who = format!(
        "{} (uid {})",
        r.principal.user.as_deref().unwrap_or("?"),
        r.principal.uid
    );
    let link = link.map(|base| format!("{base}/v1/approvals/{}", r.id));
    let text = match n.event {
        "approval_requested" => format!(
            "pam-agent: {who} on {} waits for approval of `{}` (rule {}, request {}, until {}){}",
            r.resource,
            r.text,
            r.rule,
            r.id,
            r.expires_at,
            link.as_deref()
                .map(|l| format!(" — {l}"))
                .unwrap_or_default()
        ),
        _ => format!(
            "pam-agent: request {} ({who} on {}: `{}`) {} by {}{}",
            r.id,
            r.resource,
            r.text,
            n.outcome.unwrap_or("decided"),
            n.by.as_deref().unwrap_or("?"),
            n.reason
                .as_deref()
                .map(|r| format!(": {r}"))
                .unwrap_or_default()
        ),
    };
    json!({
        "text": text,
        "event": n.event,
        "approval": r,
        "outcome": n.outcome,
        "by": n.by,
        "reason": n.reason,
        "link": link,
    })
}

/// Sends each notice to every hook until `shutdown`.
pub async fn dispatch(
    mut notices: Receiver<Notice>,
    hooks: Vec<Hook>,
    link: Option<String>,
    shutdown: CancellationToken,
) {
    let hooks: Vec<std::sync::Arc<Hook>> = hooks.into_iter().map(std::sync::Arc::new).collect();
    // Dropped at shutdown: deliveries still retrying end with it.
    let mut deliveries = tokio::task::JoinSet::new();
    loop {
        let notice = tokio::select! {
            _ = shutdown.cancelled() => return,
            n = notices.recv() => match n {
                Ok(n) => n,
                Err(RecvError::Lagged(missed)) => {
                    tracing::warn!(missed, "webhooks fell behind; some notices were not sent");
                    continue;
                }
                Err(RecvError::Closed) => return,
            },
        };
        while deliveries.try_join_next().is_some() {}
        let body = match serde_json::to_vec(&payload(&notice, link.as_deref())) {
            Ok(b) => bytes::Bytes::from(b),
            Err(e) => {
                tracing::error!(error = %e, "webhook notice not serializable");
                continue;
            }
        };
        for hook in &hooks {
            if deliveries.len() >= MAX_IN_FLIGHT {
                tracing::warn!(url = %hook.cfg.url, "too many webhook deliveries in flight; notice dropped");
                continue;
            }
            deliveries.spawn(deliver(hook.clone(), notice.event, body.clone()));
        }
    }
}

/// One notice to one hook, retried with doubling waits.
async fn deliver(hook: std::sync::Arc<Hook>, event: &'static str, body: bytes::Bytes) {
    let delivery = uuid::Uuid::now_v7().to_string();
    let mut wait = hook.cfg.retry_after;
    for attempt in 1..=hook.cfg.max_attempts {
        let ts = jiff::Timestamp::now().as_second();
        let sent = hook
            .http
            .post(&hook.cfg.url)
            .header(reqwest::header::CONTENT_TYPE, "application/json")
            .header("X-Pam-Agent-Event", event)
            .header("X-Pam-Agent-Delivery", &delivery)
            .header("X-Pam-Agent-Timestamp", ts.to_string())
            .header(
                "X-Pam-Agent-Signature",
                signature(&hook.secret.0, ts, &body),
            )
            .body(body.clone())
            .send()
            .await;
        let failure = match sent {
            Ok(r) if r.status().is_success() => return,
            Ok(r) => format!("HTTP {}", r.status()),
            Err(e) => e.to_string(),
        };
        if attempt == hook.cfg.max_attempts {
            tracing::error!(url = %hook.cfg.url, %delivery, attempts = attempt, error = %failure, "webhook delivery given up");
            return;
        }
        tracing::warn!(url = %hook.cfg.url, %delivery, attempt, error = %failure, retry_in = ?wait, "webhook delivery failed");
        tokio::time::sleep(wait).await;
        wait = (wait * 2).min(MAX_BACKOFF);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_signature_covers_timestamp_and_body() {
        // RFC 4231 test case 2's key and data, as `TIMESTAMP.BODY` = "what do ya want for nothing?"
        // is not expressible; check the construction instead: HMAC(key, "12.{}").
        let s = signature(b"0123456789abcdef", 12, b"{}");
        let mut mac = Hmac::<Sha256>::new_from_slice(b"0123456789abcdef").unwrap();
        mac.update(b"12.{}");
        let want: String = mac
            .finalize()
            .into_bytes()
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect();
        assert_eq!(s, format!("sha256={want}"));
        assert_ne!(s, signature(b"0123456789abcdef", 13, b"{}"));
        assert_ne!(s, signature(b"0123456789abcdeF", 12, b"{}"));
    }
}
