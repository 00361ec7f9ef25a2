//! The `[[resources]]` keys only PostgreSQL resources use, flattened into the resource's
//! table (the file format does not change): the names on the certificate shown to workers
//! and TLS toward the server.

use std::{net::IpAddr, path::PathBuf};

use serde::Deserialize;

use crate::tls::TlsMode;

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
}

/// The validated keys (all empty or `disable` for a resource of another protocol).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Settings {
    /// Names added to the worker-facing certificate (besides the destination IP).
    pub tls_names: Vec<String>,
    pub upstream_tls: TlsMode,
    pub upstream_ca: Option<PathBuf>,
    pub upstream_server_name: Option<String>,
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
