//! The identity provider an OIDC verifier trusts, as configured.

use std::{path::PathBuf, time::Duration};

use serde::Deserialize;

/// An OIDC issuer as written in the config (`[approvals.http.oidc]`, ...).
#[derive(Debug, Clone, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct RawOidc {
    /// The issuer URL, exactly as the provider's tokens and discovery document say it.
    pub issuer: String,
    /// Accepted `aud` values (at least one must be in the token's).
    pub audience: Vec<String>,
    /// The claim holding the subject's groups (an array of strings, or one string);
    /// dots walk into objects (`realm_access.roles`). Default `groups`.
    pub groups_claim: Option<String>,
    /// CA certificates (PEM) to trust for the provider instead of the system's.
    pub ca_file: Option<PathBuf>,
    /// Clock skew allowed on `exp` and `nbf` (default 30s, at most 5m).
    pub leeway: Option<String>,
    /// Least time between two JWKS fetches caused by unknown key ids (default 30s).
    pub jwks_refresh_interval: Option<String>,
    /// Keys are fetched again when older than this, on the next use (default 1h).
    pub jwks_max_age: Option<String>,
}

/// A checked issuer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OidcConfig {
    pub issuer: String,
    pub audience: Vec<String>,
    pub groups_claim: String,
    pub ca_file: Option<PathBuf>,
    pub leeway: Duration,
    pub jwks_refresh_interval: Duration,
    pub jwks_max_age: Duration,
}

const MAX_LEEWAY: Duration = Duration::from_secs(300);

impl RawOidc {
    /// `prefix` names the section in errors (`approvals.http.oidc`); errors are
    /// (field, reason).
    pub fn validate(self, prefix: &str) -> Result<OidcConfig, (String, String)> {
        let field = |f: &str| format!("{prefix}.{f}");
        let issuer = self.issuer;
        if !is_trusted_url(&issuer) {
            return Err((
                field("issuer"),
                "must be an https:// URL (http:// only on a loopback address)".into(),
            ));
        }
        if self.audience.is_empty() || self.audience.iter().any(String::is_empty) {
            return Err((
                field("audience"),
                "name at least one non-empty audience".into(),
            ));
        }
        let groups_claim = self.groups_claim.unwrap_or_else(|| "groups".into());
        if groups_claim.is_empty() || groups_claim.split('.').any(str::is_empty) {
            return Err((field("groups_claim"), "must be a claim name".into()));
        }
        let leeway = duration(&self.leeway, Duration::from_secs(30), true)
            .map_err(|e| (field("leeway"), e))?;
        if leeway > MAX_LEEWAY {
            return Err((field("leeway"), "at most 5m".into()));
        }
        Ok(OidcConfig {
            issuer,
            audience: self.audience,
            groups_claim,
            ca_file: self.ca_file,
            leeway,
            jwks_refresh_interval: duration(
                &self.jwks_refresh_interval,
                Duration::from_secs(30),
                true,
            )
            .map_err(|e| (field("jwks_refresh_interval"), e))?,
            jwks_max_age: duration(&self.jwks_max_age, Duration::from_secs(3600), false)
                .map_err(|e| (field("jwks_max_age"), e))?,
        })
    }
}

/// A duration as the config writes them ("30s", "15m", "1h").
pub fn duration(v: &Option<String>, default: Duration, zero_ok: bool) -> Result<Duration, String> {
    let Some(t) = v else { return Ok(default) };
    t.parse::<jiff::SignedDuration>()
        .ok()
        .and_then(|d| Duration::try_from(d).ok())
        .filter(|d| zero_ok || !d.is_zero())
        .ok_or_else(|| format!("`{t}` is not a duration (e.g. \"30s\", \"15m\", \"1h\")"))
}

/// Keys and tokens only come over TLS, except from this host itself.
pub(crate) fn is_trusted_url(url: &str) -> bool {
    let Ok(u) = reqwest::Url::parse(url) else {
        return false;
    };
    match (u.scheme(), u.host_str()) {
        ("https", Some(_)) => true,
        ("http", Some("localhost")) => true,
        ("http", Some(h)) => h
            .trim_start_matches('[')
            .trim_end_matches(']')
            .parse::<std::net::IpAddr>()
            .is_ok_and(|a| a.is_loopback()),
        _ => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn raw(issuer: &str) -> RawOidc {
        RawOidc {
            issuer: issuer.into(),
            audience: vec!["pam".into()],
            groups_claim: None,
            ca_file: None,
            leeway: None,
            jwks_refresh_interval: None,
            jwks_max_age: None,
        }
    }

    #[test]
    fn issuers_are_https_or_loopback_only() {
        assert!(
            raw("https://idp.example.com/realms/x")
                .validate("o")
                .is_ok()
        );
        assert!(raw("http://127.0.0.1:8080").validate("o").is_ok());
        assert!(raw("http://[::1]:8080").validate("o").is_ok());
        let (f, _) = raw("http://idp.example.com").validate("o").unwrap_err();
        assert_eq!(f, "o.issuer");
        assert!(raw("ftp://idp").validate("o").is_err());
        assert!(raw("not a url").validate("o").is_err());
    }

    #[test]
    fn defaults_and_bounds() {
        let c = raw("https://idp").validate("o").unwrap();
        assert_eq!(c.groups_claim, "groups");
        assert_eq!(c.leeway, Duration::from_secs(30));
        assert_eq!(c.jwks_refresh_interval, Duration::from_secs(30));
        let mut r = raw("https://idp/");
        r.leeway = Some("10m".into());
        assert_eq!(r.validate("o").unwrap_err().0, "o.leeway");
        let mut r = raw("https://idp/");
        r.audience.clear();
        assert_eq!(r.validate("o").unwrap_err().0, "o.audience");
        let mut r = raw("https://idp/");
        r.groups_claim = Some("realm_access..roles".into());
        assert_eq!(r.validate("o").unwrap_err().0, "o.groups_claim");
        // The issuer is compared with `iss` exactly: kept as written.
        assert_eq!(
            raw("https://idp/").validate("o").unwrap().issuer,
            "https://idp/"
        );
    }
}
