//! The provider's signing keys: its discovery document names the JWKS, which is cached.
//! A token whose key id is not in the cache causes one fetch, at most once per
//! `refresh_interval` (so a flood of forged key ids cannot make the agent hammer the
//! provider); keys older than `max_age` are fetched again on their next use. A fetch
//! replaces the whole set, so keys the provider dropped are dropped here too. While the
//! provider cannot be reached, the keys fetched last stay in use.

use std::time::{Duration, Instant};

use jsonwebtoken::jwk::{Jwk, JwkSet};
use serde::Deserialize;

use super::{OidcConfig, OidcError};

/// Discovery documents and key sets are small; anything bigger is refused.
const MAX_DOCUMENT: usize = 1 << 20;

/// The cached key set of one issuer.
pub struct KeyCache {
    issuer: String,
    http: reqwest::Client,
    refresh_interval: Duration,
    max_age: Duration,
    /// Held across a fetch: concurrent misses wait for one fetch instead of starting many.
    state: tokio::sync::Mutex<Cached>,
}

#[derive(Default)]
struct Cached {
    jwks_uri: Option<String>,
    keys: Option<JwkSet>,
    fetched_at: Option<Instant>,
    last_attempt: Option<Instant>,
}

/// What a lookup may do about a key id it does not know.
pub(crate) fn may_fetch(last_attempt: Option<Instant>, now: Instant, interval: Duration) -> bool {
    last_attempt.is_none_or(|t| now.saturating_duration_since(t) >= interval)
}

#[derive(Deserialize)]
struct Discovery {
    issuer: String,
    jwks_uri: String,
}

impl KeyCache {
    pub fn new(cfg: &OidcConfig, http: reqwest::Client) -> KeyCache {
        KeyCache {
            issuer: cfg.issuer.clone(),
            http,
            refresh_interval: cfg.jwks_refresh_interval,
            max_age: cfg.jwks_max_age,
            state: tokio::sync::Mutex::new(Cached::default()),
        }
    }

    /// The key `kid`, fetching the set when it is not known (rate-limited) or old.
    pub async fn key(&self, kid: &str) -> Result<Jwk, OidcError> {
        let mut st = self.state.lock().await;
        let now = Instant::now();
        let old = st
            .fetched_at
            .is_none_or(|t| now.saturating_duration_since(t) >= self.max_age);
        let known = st.keys.as_ref().and_then(|k| k.find(kid)).is_some();
        if (old || !known) && may_fetch(st.last_attempt, now, self.refresh_interval) {
            st.last_attempt = Some(now);
            match self.fetch(&mut st).await {
                Ok(keys) => {
                    st.keys = Some(keys);
                    st.fetched_at = Some(now);
                }
                // The provider is unreachable: the keys fetched last stay in use.
                Err(e) if st.keys.is_some() => {
                    tracing::warn!(issuer = %self.issuer, error = %e, "JWKS refresh failed");
                }
                Err(e) => return Err(e),
            }
        }
        st.keys
            .as_ref()
            .and_then(|k| k.find(kid))
            .cloned()
            .ok_or_else(|| OidcError::UnknownKey(kid.to_owned()))
    }

    /// Fetches now (at start, so the first token does not wait for it).
    pub async fn prefetch(&self) -> Result<usize, OidcError> {
        let mut st = self.state.lock().await;
        let now = Instant::now();
        st.last_attempt = Some(now);
        let keys = self.fetch(&mut st).await?;
        let n = keys.keys.len();
        st.keys = Some(keys);
        st.fetched_at = Some(now);
        Ok(n)
    }

    async fn fetch(&self, st: &mut Cached) -> Result<JwkSet, OidcError> {
        let uri = match &st.jwks_uri {
            Some(u) => u.clone(),
            None => {
                let url = format!(
                    "{}/.well-known/openid-configuration",
                    self.issuer.trim_end_matches('/')
                );
                let d: Discovery = self.get_json(&url).await?;
                // The document must be the issuer's own (OIDC Discovery 1.0, 4.3).
                if d.issuer != self.issuer {
                    return Err(OidcError::Provider(format!(
                        "discovery document names issuer `{}`, not `{}`",
                        d.issuer, self.issuer
                    )));
                }
                if !super::config::is_trusted_url(&d.jwks_uri) {
                    return Err(OidcError::Provider(format!(
                        "jwks_uri `{}` is not https (or loopback http)",
                        d.jwks_uri
                    )));
                }
                st.jwks_uri = Some(d.jwks_uri.clone());
                d.jwks_uri
            }
        };
        self.get_json(&uri).await
    }

    async fn get_json<T: serde::de::DeserializeOwned>(&self, url: &str) -> Result<T, OidcError> {
        let fail = |e: String| OidcError::Provider(format!("{url}: {e}"));
        let mut resp = self
            .http
            .get(url)
            .send()
            .await
            .map_err(|e| fail(e.to_string()))?;
        if !resp.status().is_success() {
            return Err(fail(format!("HTTP {}", resp.status())));
        }
        let mut body = Vec::new();
        while let Some(chunk) = resp.chunk().await.map_err(|e| fail(e.to_string()))? {
            body.extend_from_slice(&chunk);
            if body.len() > MAX_DOCUMENT {
                return Err(fail("document too large".into()));
            }
        }
        serde_json::from_slice(&body).map_err(|e| fail(e.to_string()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unknown_key_ids_fetch_at_most_once_per_interval() {
        let t0 = Instant::now();
        let i = Duration::from_secs(30);
        assert!(may_fetch(None, t0, i), "the first miss fetches");
        assert!(!may_fetch(Some(t0), t0 + Duration::from_secs(29), i));
        assert!(may_fetch(Some(t0), t0 + i, i));
        // A zero interval (tests, or an operator's choice) fetches on every miss.
        assert!(may_fetch(Some(t0), t0, Duration::ZERO));
    }
}
