//! TLS toward the server, when the resource says so (`upstream_tls`): the agent sends
//! SSLRequest, expects 'S', and runs a TLS client handshake; startup then continues
//! over TLS. A server that answers 'N' ends the session: never plaintext instead.
//!
//! Independent of the worker's side: a worker in plain text may be sent on over TLS,
//! and a worker's TLS ends at the agent either way.

use std::{
    net::{IpAddr, SocketAddr},
    path::Path,
    sync::Arc,
    time::Duration,
};

use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    net::TcpStream,
};
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

use super::{startup, tls::provider};

/// How the agent talks to the server of a `postgres` resource.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum UpstreamTlsMode {
    /// Plain TCP (the server's own `hostssl` rules decide whether that is accepted).
    #[default]
    Disable,
    /// Encrypted, the server's certificate not checked (libpq's `sslmode=require`).
    Require,
    /// Encrypted, the certificate checked against `upstream_ca` and the server name.
    VerifyFull,
}

impl std::fmt::Display for UpstreamTlsMode {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            UpstreamTlsMode::Disable => "disable",
            UpstreamTlsMode::Require => "require",
            UpstreamTlsMode::VerifyFull => "verify-full",
        })
    }
}

#[derive(Debug, thiserror::Error)]
pub enum UpstreamTlsError {
    #[error("the server does not accept TLS (answered 'N' to SSLRequest)")]
    Refused,
    #[error("the server answered {0:?} to SSLRequest instead of 'S' or 'N'")]
    Unexpected(char),
    #[error("TLS handshake with the server failed: {0}")]
    Handshake(std::io::Error),
    #[error("connection error during TLS negotiation: {0}")]
    Io(#[from] std::io::Error),
    #[error("no TLS session with the server within {} ms", .0.as_millis())]
    Timeout(Duration),
    #[error("{0}")]
    Config(String),
}

/// A resource's client TLS settings, built once at startup.
#[derive(Clone)]
pub struct UpstreamTls {
    pub mode: UpstreamTlsMode,
    connector: TlsConnector,
    /// The name to verify; the destination IP when `None`.
    server_name: Option<ServerName<'static>>,
    /// Longest wait for 'S' and the handshake (a server that never answers would
    /// otherwise hold the worker forever).
    timeout: Duration,
}

impl UpstreamTls {
    /// `ca` is required for `verify-full`, `server_name` defaults to the destination IP.
    pub fn new(
        mode: UpstreamTlsMode,
        ca: Option<&Path>,
        server_name: Option<&str>,
        timeout: Duration,
    ) -> Result<Option<UpstreamTls>, UpstreamTlsError> {
        let builder = ClientConfig::builder_with_provider(provider())
            .with_safe_default_protocol_versions()
            .map_err(|e| UpstreamTlsError::Config(e.to_string()))?;
        let mut config = match mode {
            UpstreamTlsMode::Disable => return Ok(None),
            UpstreamTlsMode::Require => builder
                .dangerous()
                .with_custom_certificate_verifier(Arc::new(NoCertCheck(provider())))
                .with_no_client_auth(),
            UpstreamTlsMode::VerifyFull => {
                let ca = ca.ok_or_else(|| {
                    UpstreamTlsError::Config("verify-full needs a CA certificate".into())
                })?;
                builder
                    .with_root_certificates(load_roots(ca)?)
                    .with_no_client_auth()
            }
        };
        config.alpn_protocols = vec![b"postgresql".to_vec()];
        let server_name = server_name
            .map(|n| {
                ServerName::try_from(n.to_owned())
                    .map_err(|_| UpstreamTlsError::Config(format!("`{n}` is not a server name")))
            })
            .transpose()?;
        Ok(Some(UpstreamTls {
            mode,
            connector: TlsConnector::from(Arc::new(config)),
            server_name,
            timeout,
        }))
    }

    /// SSLRequest, 'S', handshake; then the startup goes over the returned stream.
    pub async fn negotiate(
        &self,
        tcp: TcpStream,
        server: SocketAddr,
    ) -> Result<TlsStream<TcpStream>, UpstreamTlsError> {
        tokio::time::timeout(self.timeout, self.negotiate_now(tcp, server))
            .await
            .map_err(|_| UpstreamTlsError::Timeout(self.timeout))?
    }

    async fn negotiate_now(
        &self,
        mut tcp: TcpStream,
        server: SocketAddr,
    ) -> Result<TlsStream<TcpStream>, UpstreamTlsError> {
        let mut req = [0u8; 8];
        req[..4].copy_from_slice(&8i32.to_be_bytes());
        req[4..].copy_from_slice(&startup::SSL_REQUEST.to_be_bytes());
        tcp.write_all(&req).await?;
        // One byte, read exactly: anything the server sends after it belongs to TLS.
        let answer = tcp.read_u8().await?;
        match answer {
            b'S' => {}
            b'N' => return Err(UpstreamTlsError::Refused),
            other => return Err(UpstreamTlsError::Unexpected(other as char)),
        }
        let name = match &self.server_name {
            Some(n) => n.clone(),
            None => ServerName::IpAddress(unmapped(server.ip()).into()),
        };
        self.connector
            .connect(name, tcp)
            .await
            .map_err(UpstreamTlsError::Handshake)
    }
}

fn unmapped(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map(IpAddr::V4).unwrap_or(ip),
        v4 => v4,
    }
}

/// Reads every certificate of a PEM file; at least one is needed.
pub fn load_roots(path: &Path) -> Result<RootCertStore, UpstreamTlsError> {
    let bad = |reason: String| UpstreamTlsError::Config(format!("{}: {reason}", path.display()));
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::postgres::tls::AgentCa;
    use tokio::net::TcpListener;

    /// A server that answers SSLRequest with `answer`, then (for 'S') TLS with a leaf
    /// for 127.0.0.1 from `ca`, then echoes one byte.
    async fn server(ca: &AgentCa, answer: u8) -> SocketAddr {
        let acceptor = ca
            .acceptor(&["127.0.0.1".into()], Duration::from_secs(600))
            .unwrap();
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move {
            while let Ok((mut s, _)) = listener.accept().await {
                let mut req = [0u8; 8];
                s.read_exact(&mut req).await.unwrap();
                assert_eq!(&req[4..], &startup::SSL_REQUEST.to_be_bytes());
                s.write_all(&[answer]).await.unwrap();
                if answer == b'S'
                    && let Ok(mut tls) = acceptor.accept(s).await
                {
                    let b = tls.read_u8().await.unwrap();
                    tls.write_all(&[b]).await.unwrap();
                    tls.flush().await.unwrap();
                }
            }
        });
        addr
    }

    async fn try_mode(
        mode: UpstreamTlsMode,
        ca_file: Option<&Path>,
        name: Option<&str>,
        addr: SocketAddr,
    ) -> Result<(), UpstreamTlsError> {
        let tls = UpstreamTls::new(mode, ca_file, name, Duration::from_secs(10))
            .unwrap()
            .unwrap();
        let tcp = TcpStream::connect(addr).await.unwrap();
        let mut s = tls.negotiate(tcp, addr).await?;
        s.write_all(b"x").await?;
        s.flush().await?;
        assert_eq!(s.read_u8().await?, b'x');
        Ok(())
    }

    #[tokio::test]
    async fn verify_full_checks_the_ca_and_the_name_and_never_falls_back() {
        let dir = tempfile::tempdir().unwrap();
        let ca = AgentCa::generate("server CA").unwrap();
        let other = AgentCa::generate("other CA").unwrap();
        let (good, bad) = (dir.path().join("good.pem"), dir.path().join("bad.pem"));
        std::fs::write(&good, ca.cert_pem()).unwrap();
        std::fs::write(&bad, other.cert_pem()).unwrap();
        let addr = server(&ca, b'S').await;
        use UpstreamTlsMode::*;

        try_mode(VerifyFull, Some(&good), None, addr).await.unwrap();
        try_mode(Require, None, None, addr).await.unwrap();
        // Another CA, or a name the certificate does not carry: refused.
        let e = try_mode(VerifyFull, Some(&bad), None, addr)
            .await
            .unwrap_err();
        assert!(matches!(e, UpstreamTlsError::Handshake(_)), "{e}");
        let e = try_mode(VerifyFull, Some(&good), Some("db.example"), addr)
            .await
            .unwrap_err();
        assert!(e.to_string().contains("certificate"), "{e}");
        // A server without TLS: an error, not plain text.
        let plain = server(&ca, b'N').await;
        let e = try_mode(Require, None, None, plain).await.unwrap_err();
        assert!(matches!(e, UpstreamTlsError::Refused), "{e}");
        assert!(
            UpstreamTls::new(Disable, None, None, Duration::from_secs(1))
                .unwrap()
                .is_none()
        );
        // A server that never answers: a timeout, not a hang.
        let silent = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = silent.local_addr().unwrap();
        let tls = UpstreamTls::new(Require, None, None, Duration::from_millis(50))
            .unwrap()
            .unwrap();
        let tcp = TcpStream::connect(addr).await.unwrap();
        let e = tls.negotiate(tcp, addr).await.unwrap_err();
        assert!(matches!(e, UpstreamTlsError::Timeout(_)), "{e}");
    }
}
