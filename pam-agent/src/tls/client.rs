//! TLS toward servers: the agent as a TLS client, per resource (`upstream_tls`,
//! `upstream_ca`, `upstream_server_name`). Protocol-free: a protocol that asks for TLS in
//! its own way (PostgreSQL's SSLRequest) does so first, then hands the TCP stream here.
//! Never a plaintext fallback: every failure is an error the session reports.

use std::{
    net::{IpAddr, SocketAddr},
    path::Path,
    sync::Arc,
    time::Duration,
};

use tokio::net::TcpStream;
use tokio_rustls::{
    TlsConnector,
    client::TlsStream,
    rustls::{
        self, ClientConfig, DigitallySignedStruct, RootCertStore, SignatureScheme,
        client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier},
        crypto::CryptoProvider,
        pki_types::{CertificateDer, ServerName, UnixTime, pem::PemObject},
    },
};

use super::ca::provider;

/// How the agent talks to a resource's server.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum TlsMode {
    /// Plain TCP (the server's own `hostssl` rules decide whether that is accepted).
    #[default]
    Disable,
    /// Encrypted, the server's certificate not checked (libpq's `sslmode=require`).
    Require,
    /// Encrypted, the certificate checked against `upstream_ca` and the server name.
    VerifyFull,
}

impl std::fmt::Display for TlsMode {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            TlsMode::Disable => "disable",
            TlsMode::Require => "require",
            TlsMode::VerifyFull => "verify-full",
        })
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ClientTlsError {
    #[error("TLS handshake with the server failed: {0}")]
    Handshake(std::io::Error),
    #[error("no TLS session with the server within {} ms", .0.as_millis())]
    Timeout(Duration),
    #[error("{0}")]
    Config(String),
}

/// A resource's client TLS settings, built once at startup.
#[derive(Clone)]
pub struct ClientTls {
    pub mode: TlsMode,
    connector: TlsConnector,
    /// The name to verify; the destination IP when `None`.
    server_name: Option<ServerName<'static>>,
    /// Longest wait for 'S' and the handshake (a server that never answers would
    /// otherwise hold the worker forever).
    timeout: Duration,
}

impl ClientTls {
    /// `ca` is required for `verify-full`, `server_name` defaults to the destination IP;
    /// `alpn` is the protocol's ALPN name (e.g. `postgresql`).
    pub fn new(
        mode: TlsMode,
        ca: Option<&Path>,
        server_name: Option<&str>,
        timeout: Duration,
        alpn: &[u8],
    ) -> Result<Option<ClientTls>, ClientTlsError> {
        let builder = ClientConfig::builder_with_provider(provider())
            .with_safe_default_protocol_versions()
            .map_err(|e| ClientTlsError::Config(e.to_string()))?;
        let mut config = match mode {
            TlsMode::Disable => return Ok(None),
            TlsMode::Require => builder
                .dangerous()
                .with_custom_certificate_verifier(Arc::new(NoCertCheck(provider())))
                .with_no_client_auth(),
            TlsMode::VerifyFull => {
                let ca = ca.ok_or_else(|| {
                    ClientTlsError::Config("verify-full needs a CA certificate".into())
                })?;
                builder
                    .with_root_certificates(load_roots(ca)?)
                    .with_no_client_auth()
            }
        };
        config.alpn_protocols = vec![alpn.to_vec()];
        let server_name = server_name
            .map(|n| {
                ServerName::try_from(n.to_owned())
                    .map_err(|_| ClientTlsError::Config(format!("`{n}` is not a server name")))
            })
            .transpose()?;
        Ok(Some(ClientTls {
            mode,
            connector: TlsConnector::from(Arc::new(config)),
            server_name,
            timeout,
        }))
    }

    /// The timeout for a protocol's own TLS prelude plus the handshake.
    pub fn timeout(&self) -> Duration {
        self.timeout
    }

    /// The TLS client handshake on `tcp` (whatever the protocol sent before it is done).
    pub async fn handshake(
        &self,
        tcp: TcpStream,
        server: SocketAddr,
    ) -> Result<TlsStream<TcpStream>, ClientTlsError> {
        let name = match &self.server_name {
            Some(n) => n.clone(),
            None => ServerName::IpAddress(unmapped(server.ip()).into()),
        };
        self.connector
            .connect(name, tcp)
            .await
            .map_err(ClientTlsError::Handshake)
    }
}

fn unmapped(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map(IpAddr::V4).unwrap_or(ip),
        v4 => v4,
    }
}

/// Reads every certificate of a PEM file; at least one is needed.
pub fn load_roots(path: &Path) -> Result<RootCertStore, ClientTlsError> {
    let bad = |reason: String| ClientTlsError::Config(format!("{}: {reason}", path.display()));
    let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(path)
        .map_err(|e| bad(e.to_string()))?
        .collect::<Result<_, _>>()
        .map_err(|e| bad(e.to_string()))?;
    if certs.is_empty() {
        return Err(bad("no PEM certificate in the file".into()));
    }
    let mut roots = RootCertStore::empty();
    for c in certs {
        roots.add(c).map_err(|e| bad(e.to_string()))?;
    }
    Ok(roots)
}

/// `require`: the link is encrypted but the server is not authenticated (as libpq's
/// sslmode=require). Handshake signatures are still checked, so the session keys are
/// bound to whatever certificate was shown.
#[derive(Debug)]
struct NoCertCheck(Arc<CryptoProvider>);

impl ServerCertVerifier for NoCertCheck {
    fn verify_server_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}
