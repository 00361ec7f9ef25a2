//! The `[[resources]]` keys only PostgreSQL resources use, flattened into the resource's
//! table (the file format does not change): the names on the certificate shown to workers
//! and TLS toward the server; who completes the worker's login, and the logins the agent
//! uses upstream (credential injection).

use std::{net::IpAddr, path::PathBuf};

use serde::Deserialize;

use crate::{
    credentials::{Login, RawLogin},
    tls::TlsMode,
};

/// Who authenticates the worker.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum WorkerAuth {
    /// The server does, with the worker's own password relayed (the worker holds it).
    #[default]
    Passthrough,
    /// The agent does: the kernel's identity of the process is the authentication, the
    /// worker is never asked for a password (one it sends is discarded), and the agent
    /// logs in upstream with the principal's login from `[[resources.logins]]`.
    None,
    /// As `none`, and the worker must also present a token of the resource's
    /// `worker_oidc` issuer as its password; its subject and groups join the principal's
    /// facts. The token is never forwarded (the agent logs in) and never journaled.
    Oidc,
}

/// How the agent may prove a login's secret to the server.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
pub enum UpstreamAuth {
    /// SCRAM-SHA-256, with channel binding (-PLUS) whenever the agent holds TLS to the
    /// server and the server offers it.
    #[serde(rename = "scram-sha-256")]
    ScramSha256,
    /// md5 (the password's hash can be replayed): only where a resource lists it.
    #[serde(rename = "md5")]
    Md5,
    /// The password in clear (over the connection as it is): only where listed.
    #[serde(rename = "password")]
    Password,
}

impl UpstreamAuth {
    pub fn as_str(self) -> &'static str {
        match self {
            UpstreamAuth::ScramSha256 => "scram-sha-256",
            UpstreamAuth::Md5 => "md5",
            UpstreamAuth::Password => "password",
        }
    }
}

/// The keys as written.
#[derive(Debug, Default, Deserialize)]
pub(crate) struct RawSettings {
    /// Extra names (DNS) for the certificate shown to workers that connect by name;
    /// the destination IP is always in it.
    #[serde(default)]
    pub tls_names: Vec<String>,
    /// TLS from the agent to the server: disable (default), require, verify-full.
    #[serde(default)]
    pub upstream_tls: TlsMode,
    /// CA certificate(s) (PEM) that sign the server's certificate; for verify-full.
    pub upstream_ca: Option<PathBuf>,
    /// The name the server's certificate must carry; the destination IP by default.
    pub upstream_server_name: Option<String>,
    /// `passthrough` (default) or `none` (the agent logs in for the worker).
    #[serde(default)]
    pub worker_auth: WorkerAuth,
    /// The logins the agent uses upstream when `worker_auth = "none"`, first match wins.
    #[serde(default)]
    pub logins: Vec<RawLogin>,
    /// Methods the agent may answer the server with (default: SCRAM-SHA-256 only).
    pub upstream_auth: Option<Vec<UpstreamAuth>>,
    /// The issuer whose tokens workers present (`worker_auth = "oidc"`).
    pub worker_oidc: Option<crate::oidc::RawOidc>,
}

/// The validated keys (all empty or `disable` for a resource of another protocol).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Settings {
    /// Names added to the worker-facing certificate (besides the destination IP).
    pub tls_names: Vec<String>,
    pub upstream_tls: TlsMode,
    pub upstream_ca: Option<PathBuf>,
    pub upstream_server_name: Option<String>,
    pub worker_auth: WorkerAuth,
    pub logins: Vec<Login>,
    pub upstream_auth: Vec<UpstreamAuth>,
    pub worker_oidc: Option<crate::oidc::OidcConfig>,
}

/// Checks a resource's PostgreSQL keys (`postgres`: whether the resource speaks it); the
/// field name returned is relative to the resource (`upstream_ca`), the caller prefixes it.
pub(crate) fn validate(postgres: bool, r: RawSettings) -> Result<Settings, (&'static str, String)> {
    let postgres_only = |f: &'static str| {
        (
            f,
            "only for `protocol = \"postgres\"` (a `tcp` resource is relayed as it is, TLS included)"
                .to_string(),
        )
    };
    if !postgres {
        if !r.tls_names.is_empty() {
            return Err(postgres_only("tls_names"));
        }
        if r.upstream_tls != TlsMode::Disable {
            return Err(postgres_only("upstream_tls"));
        }
        if r.worker_auth != WorkerAuth::Passthrough {
            return Err(postgres_only("worker_auth"));
        }
        if !r.logins.is_empty() {
            return Err(postgres_only("logins"));
        }
    }
    let injects = r.worker_auth != WorkerAuth::Passthrough;
    match (r.worker_auth, r.logins.is_empty()) {
        (WorkerAuth::None | WorkerAuth::Oidc, true) => {
            return Err((
                "logins",
                "`worker_auth = \"none\"` or `\"oidc\"` needs at least one [[resources.logins]] (the role and secret the agent logs in with)".into(),
            ));
        }
        (WorkerAuth::Passthrough, false) => {
            return Err((
                "logins",
                "logins are used only with `worker_auth = \"none\"` (with passthrough the worker logs in itself)".into(),
            ));
        }
        _ => {}
    }
    if r.upstream_auth.is_some() && !injects {
        return Err((
            "upstream_auth",
            "only used with `worker_auth = \"none\"` or `\"oidc\"`".into(),
        ));
    }
    let worker_oidc = match (r.worker_auth, r.worker_oidc) {
        (WorkerAuth::Oidc, None) => {
            return Err((
                "worker_oidc",
                "`worker_auth = \"oidc\"` needs [resources.worker_oidc] (issuer, audience)".into(),
            ));
        }
        (WorkerAuth::Oidc, Some(raw)) => {
            Some(raw.validate("worker_oidc").map_err(|(f, why)| {
                // The field names the section's key; the caller adds `resources[i].`.
                let key: &'static str = match f.rsplit('.').next().unwrap_or("") {
                    "issuer" => "worker_oidc.issuer",
                    "audience" => "worker_oidc.audience",
                    "groups_claim" => "worker_oidc.groups_claim",
                    "ca_file" => "worker_oidc.ca_file",
                    "leeway" => "worker_oidc.leeway",
                    _ => "worker_oidc",
                };
                (key, why)
            })?)
        }
        (_, Some(_)) => {
            return Err((
                "worker_oidc",
                "only used with `worker_auth = \"oidc\"`".into(),
            ));
        }
        (_, None) => None,
    };
    // Passthrough: the worker answers the server itself; no method is the agent's.
    let upstream_auth = match (injects, r.upstream_auth) {
        (false, _) => Vec::new(),
        (true, None) => vec![UpstreamAuth::ScramSha256],
        (true, Some(m)) => m,
    };
    if injects && upstream_auth.is_empty() {
        return Err(("upstream_auth", "must allow at least one method".into()));
    }
    let mut logins = Vec::new();
    for l in r.logins {
        logins.push(l.validate().map_err(|(f, why)| match f {
            "role" => ("logins.role", why),
            "secret_credential" => ("logins.secret_credential", why),
            _ => ("logins.secret_file", why),
        })?);
    }
    for name in &r.tls_names {
        let ok = tokio_rustls::rustls::pki_types::DnsName::try_from(name.as_str()).is_ok()
            || name.parse::<IpAddr>().is_ok();
        if !ok {
            return Err((
                "tls_names",
                format!("`{name}` is neither a DNS name nor an IP address"),
            ));
        }
    }
    match (r.upstream_tls, &r.upstream_ca) {
        (TlsMode::VerifyFull, None) => {
            return Err((
                "upstream_ca",
                "`upstream_tls = \"verify-full\"` needs the CA certificate (PEM) that signs the server's certificate".into(),
            ));
        }
        (TlsMode::VerifyFull, Some(ca)) => {
            crate::tls::load_roots(ca).map_err(|e| ("upstream_ca", e.to_string()))?;
        }
        (mode, Some(_)) => {
            return Err((
                "upstream_ca",
                format!("only used with `upstream_tls = \"verify-full\"` (it is `{mode}`)"),
            ));
        }
        (_, None) => {}
    }
    if let Some(name) = &r.upstream_server_name {
        if r.upstream_tls != TlsMode::VerifyFull {
            return Err((
                "upstream_server_name",
                "only used with `upstream_tls = \"verify-full\"`".into(),
            ));
        }
        if tokio_rustls::rustls::pki_types::ServerName::try_from(name.as_str()).is_err() {
            return Err((
                "upstream_server_name",
                format!("`{name}` is neither a DNS name nor an IP address"),
            ));
        }
    }
    Ok(Settings {
        tls_names: r.tls_names,
        upstream_tls: r.upstream_tls,
        upstream_ca: r.upstream_ca,
        upstream_server_name: r.upstream_server_name,
        worker_auth: r.worker_auth,
        logins,
        upstream_auth,
        worker_oidc,
    })
}

/// A resource named by host name: workers connecting by that name see it on the agent's
/// certificate, and TLS toward the server sends and checks it unless
/// `upstream_server_name` says otherwise.
pub(crate) fn default_names(s: &mut Settings, host: &str) {
    if !s.tls_names.iter().any(|n| n.eq_ignore_ascii_case(host)) {
        s.tls_names.insert(0, host.to_owned());
    }
    if s.upstream_tls != TlsMode::Disable && s.upstream_server_name.is_none() {
        s.upstream_server_name = Some(host.to_owned());
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::tests::{base, err};

    #[test]
    fn resource_tls_fields_are_checked() {
        let dir = tempfile::tempdir().unwrap();
        let ca = dir.path().join("server-ca.pem");
        let ca_pem = crate::tls::AgentCa::generate("db ca").unwrap().cert_pem();
        std::fs::write(&ca, ca_pem).unwrap();
        let not_pem = dir.path().join("junk.pem");
        std::fs::write(&not_pem, "hello").unwrap();
        let res = |extra: &str| {
            base(&format!(
                "[[resources]]\nname=\"db\"\naddress=\"10.0.0.1\"\nport=5432\nprotocol=\"postgres\"\n{extra}\n"
            ))
        };
        let cfg = crate::config::Config::from_toml(
            std::path::Path::new("t.toml"),
            &res(&format!(
                "tls_names = [\"db.internal\", \"10.9.9.9\"]\nupstream_tls = \"verify-full\"\nupstream_ca = \"{}\"\nupstream_server_name = \"db.internal\"",
                ca.display()
            )),
        )
        .unwrap();
        let r = &cfg.resources[0].settings.postgres;
        assert_eq!(r.upstream_tls, TlsMode::VerifyFull);
        assert_eq!(r.tls_names, ["db.internal", "10.9.9.9"]);
        assert_eq!(
            crate::config::Config::from_toml(
                std::path::Path::new("t.toml"),
                &res("upstream_tls = \"require\"")
            )
            .unwrap()
            .resources[0]
                .settings
                .postgres
                .upstream_tls,
            TlsMode::Require
        );

        for (extra, field, says) in [
            (
                "upstream_tls = \"verify-full\"",
                "resources[0].upstream_ca",
                "needs",
            ),
            (
                &format!(
                    "upstream_tls = \"require\"\nupstream_ca = \"{}\"",
                    ca.display()
                ),
                "resources[0].upstream_ca",
                "only used with",
            ),
            (
                &format!(
                    "upstream_tls = \"verify-full\"\nupstream_ca = \"{}\"",
                    not_pem.display()
                ),
                "resources[0].upstream_ca",
                "no PEM certificate",
            ),
            (
                "upstream_tls = \"verify-full\"\nupstream_ca = \"/no/such/ca.pem\"",
                "resources[0].upstream_ca",
                "/no/such/ca.pem",
            ),
            (
                "upstream_server_name = \"db\"",
                "resources[0].upstream_server_name",
                "only used with",
            ),
            (
                "tls_names = [\"not a name\"]",
                "resources[0].tls_names",
                "neither",
            ),
        ] {
            let e = err(&res(extra));
            assert!(e.contains(field) && e.contains(says), "{extra}: {e}");
        }
        let e = err(&res("upstream_tls = \"prefer\""));
        assert!(e.contains("unknown variant `prefer`"), "{e}");
        let e = err(&base(
            "[[resources]]\nname=\"t\"\naddress=\"10.0.0.1\"\nport=22\nupstream_tls = \"require\"\n",
        ));
        assert!(
            e.contains("resources[0].upstream_tls") && e.contains("postgres"),
            "{e}"
        );
    }

    #[test]
    fn a_host_name_resource_names_its_certificates_by_default() {
        let cfg = |extra: &str| {
            crate::config::Config::from_toml(
                std::path::Path::new("t.toml"),
                &base(&format!(
                    "[[resources]]\nname=\"db\"\naddress=\"DB.internal\"\nport=5432\nprotocol=\"postgres\"\n{extra}\n"
                )),
            )
            .unwrap()
            .resources
            .remove(0)
            .settings
            .postgres
        };
        let s = cfg("upstream_tls = \"require\"");
        assert_eq!(s.tls_names, ["db.internal"]);
        assert_eq!(s.upstream_server_name.as_deref(), Some("db.internal"));
        let s = cfg("tls_names = [\"db\"]");
        assert_eq!(s.tls_names, ["db.internal", "db"]);
        assert_eq!(s.upstream_server_name, None, "no TLS toward the server");
    }
}
