//! `[approvals.http]` and `[[approvals.webhooks]]`.

use std::{collections::BTreeMap, net::SocketAddr, path::PathBuf, time::Duration};

use serde::Deserialize;

use crate::oidc::{OidcConfig, RawOidc};

/// `[approvals.http]` as written.
#[derive(Debug, Clone, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct RawHttp {
    /// Address and port the API listens on (TLS only).
    pub listen: SocketAddr,
    /// Names (DNS or IP) on the API's certificate besides the listen address.
    #[serde(default)]
    pub tls_names: Vec<String>,
    /// How approvers reach the API, for links in notices (default `https://LISTEN`).
    pub public_url: Option<String>,
    /// Token groups admitted to the API at all; empty: any valid token (the rules'
    /// `approvers` still decide who may approve what).
    #[serde(default)]
    pub groups: Vec<String>,
    /// Subjects that are local accounts: `"subject" = "user"`. Such an approver counts
    /// as that user (its uid): it cannot approve that user's own requests, and one
    /// person approving by socket and by token counts once.
    #[serde(default)]
    pub users: BTreeMap<String, String>,
    pub oidc: RawOidc,
}

/// `[approvals.http]`, checked.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HttpConfig {
    pub listen: SocketAddr,
    pub tls_names: Vec<String>,
    pub public_url: String,
    pub groups: Vec<String>,
    /// subject → (user, uid), resolved at load.
    pub users: BTreeMap<String, (String, u32)>,
    pub oidc: OidcConfig,
}

impl RawHttp {
    /// Errors are (field, reason).
    pub fn validate(self) -> Result<HttpConfig, (String, String)> {
        let public_url = self
            .public_url
            .unwrap_or_else(|| format!("https://{}", self.listen))
            .trim_end_matches('/')
            .to_owned();
        if !public_url.starts_with("https://") {
            return Err((
                "approvals.http.public_url".into(),
                "must be an https:// URL".into(),
            ));
        }
        let mut users = BTreeMap::new();
        for (subject, user) in self.users {
            match nix::unistd::User::from_name(&user) {
                Ok(Some(u)) => {
                    users.insert(subject, (user, u.uid.as_raw()));
                }
                _ => {
                    return Err((
                        "approvals.http.users".into(),
                        format!("no user named `{user}` (for subject `{subject}`)"),
                    ));
                }
            }
        }
        Ok(HttpConfig {
            listen: self.listen,
            tls_names: self.tls_names,
            public_url,
            groups: self.groups,
            users,
            oidc: self.oidc.validate("approvals.http.oidc")?,
        })
    }
}

/// One `[[approvals.webhooks]]` as written.
#[derive(Debug, Clone, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct RawWebhook {
    /// Where notices are POSTed (https://, or http:// on loopback).
    pub url: String,
    /// A file holding the HMAC-SHA256 key (read at start, never logged).
    pub secret_file: PathBuf,
    /// Deliveries tried before a notice is given up (default 5).
    pub max_attempts: Option<u32>,
    /// Wait before the first retry, doubled each time up to 5m (default "2s").
    pub retry_after: Option<String>,
    /// One attempt's time limit (default "10s").
    pub timeout: Option<String>,
    /// CA certificates (PEM) to trust for the receiver instead of the system's.
    pub ca_file: Option<PathBuf>,
}

/// A checked webhook.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WebhookConfig {
    pub url: String,
    pub secret_file: PathBuf,
    pub max_attempts: u32,
    pub retry_after: Duration,
    pub timeout: Duration,
    pub ca_file: Option<PathBuf>,
}

impl RawWebhook {
    pub fn validate(self, i: usize) -> Result<WebhookConfig, (String, String)> {
        let field = |f: &str| format!("approvals.webhooks[{i}].{f}");
        if !crate::oidc::config::is_trusted_url(&self.url) {
            return Err((
                field("url"),
                "must be an https:// URL (http:// only on a loopback address)".into(),
            ));
        }
        if !self.secret_file.is_absolute() {
            return Err((field("secret_file"), "must be an absolute path".into()));
        }
        let max_attempts = self.max_attempts.unwrap_or(5);
        if !(1..=20).contains(&max_attempts) {
            return Err((field("max_attempts"), "between 1 and 20".into()));
        }
        let d = crate::oidc::config::duration;
        Ok(WebhookConfig {
            url: self.url,
            secret_file: self.secret_file,
            max_attempts,
            retry_after: d(&self.retry_after, Duration::from_secs(2), false)
                .map_err(|e| (field("retry_after"), e))?,
            timeout: d(&self.timeout, Duration::from_secs(10), false)
                .map_err(|e| (field("timeout"), e))?,
            ca_file: self.ca_file,
        })
    }
}
