//! TLS toward the server, when the resource says so (`upstream_tls`): the agent sends
//! SSLRequest, expects 'S', and hands the connection to [`crate::tls::ClientTls`] for the
//! handshake; startup then continues over TLS. A server that answers 'N' ends the
//! session: never plaintext instead.
//!
//! Independent of the worker's side: a worker in plain text may be sent on over TLS,
//! and a worker's TLS ends at the agent either way.

use std::net::SocketAddr;

use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    net::TcpStream,
};
use tokio_rustls::client::TlsStream;

use super::wire::startup;
use crate::tls::{ClientTls, ClientTlsError};

/// PostgreSQL's ALPN name (servers from 17 on may require it with direct TLS).
pub const ALPN: &[u8] = b"postgresql";

#[derive(Debug, thiserror::Error)]
pub enum UpstreamTlsError {
    #[error("the server does not accept TLS (answered 'N' to SSLRequest)")]
    Refused,
    #[error("the server answered {0:?} to SSLRequest instead of 'S' or 'N'")]
    Unexpected(char),
    #[error("connection error during TLS negotiation: {0}")]
    Io(#[from] std::io::Error),
    #[error(transparent)]
    Tls(#[from] ClientTlsError),
}

/// SSLRequest, 'S', handshake, all within the resource's TLS timeout; then the startup
/// goes over the returned stream.
pub async fn negotiate(
    tls: &ClientTls,
    tcp: TcpStream,
    server: SocketAddr,
) -> Result<TlsStream<TcpStream>, UpstreamTlsError> {
    tokio::time::timeout(tls.timeout(), negotiate_now(tls, tcp, server))
        .await
        .map_err(|_| UpstreamTlsError::Tls(ClientTlsError::Timeout(tls.timeout())))?
}

async fn negotiate_now(
    tls: &ClientTls,
    mut tcp: TcpStream,
    server: SocketAddr,
) -> Result<TlsStream<TcpStream>, UpstreamTlsError> {
    let mut req = [0u8; 8];
    req[..4].copy_from_slice(&8i32.to_be_bytes());
    req[4..].copy_from_slice(&startup::SSL_REQUEST.to_be_bytes());
    tcp.write_all(&req).await?;
    // One byte, read exactly: anything the server sends after it belongs to TLS.
    match tcp.read_u8().await? {
        b'S' => {}
        b'N' => return Err(UpstreamTlsError::Refused),
        other => return Err(UpstreamTlsError::Unexpected(other as char)),
    }
    Ok(tls.handshake(tcp, server).await?)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::tls::{AgentCa, TlsMode};
    use std::{path::Path, time::Duration};
    use tokio::net::TcpListener;

    /// A server that answers SSLRequest with `answer`, then (for 'S') TLS with a leaf
    /// for 127.0.0.1 from `ca`, then echoes one byte.
    async fn server(ca: &AgentCa, answer: u8) -> SocketAddr {
        let acceptor = ca
            .acceptor(&["127.0.0.1".into()], Duration::from_secs(600), ALPN)
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
        mode: TlsMode,
        ca_file: Option<&Path>,
        name: Option<&str>,
        addr: SocketAddr,
    ) -> Result<(), UpstreamTlsError> {
        let tls = ClientTls::new(mode, ca_file, name, Duration::from_secs(10), ALPN)
            .unwrap()
            .unwrap();
        let tcp = TcpStream::connect(addr).await.unwrap();
        let mut s = negotiate(&tls, tcp, addr).await?;
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
        use TlsMode::*;

        try_mode(VerifyFull, Some(&good), None, addr).await.unwrap();
        try_mode(Require, None, None, addr).await.unwrap();
        // Another CA, or a name the certificate does not carry: refused.
        let e = try_mode(VerifyFull, Some(&bad), None, addr)
            .await
            .unwrap_err();
        assert!(
            matches!(e, UpstreamTlsError::Tls(ClientTlsError::Handshake(_))),
            "{e}"
        );
        let e = try_mode(VerifyFull, Some(&good), Some("db.example"), addr)
            .await
            .unwrap_err();
        assert!(e.to_string().contains("certificate"), "{e}");
        // A server without TLS: an error, not plain text.
        let plain = server(&ca, b'N').await;
        let e = try_mode(Require, None, None, plain).await.unwrap_err();
        assert!(matches!(e, UpstreamTlsError::Refused), "{e}");
        assert!(
            ClientTls::new(Disable, None, None, Duration::from_secs(1), ALPN)
                .unwrap()
                .is_none()
        );
        // A server that never answers: a timeout, not a hang.
        let silent = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = silent.local_addr().unwrap();
        let tls = ClientTls::new(Require, None, None, Duration::from_millis(50), ALPN)
            .unwrap()
            .unwrap();
        let tcp = TcpStream::connect(addr).await.unwrap();
        let e = negotiate(&tls, tcp, addr).await.unwrap_err();
        assert!(
            matches!(e, UpstreamTlsError::Tls(ClientTlsError::Timeout(_))),
            "{e}"
        );
    }
}
