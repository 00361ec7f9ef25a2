//! TLS material any protocol uses: the agent's own CA and the per-destination leaves it
//! shows workers ([`ca`]), the client side toward servers ([`client`]), and a stream
//! that is plain or TLS ([`stream`]). Knows no protocol: each protocol decides when its
//! own negotiation (PostgreSQL's SSLRequest, ...) hands a socket over.

pub mod ca;
pub mod client;
pub mod stream;

pub use ca::{AgentCa, LeafCache, TlsError};
pub use client::{ClientTls, ClientTlsError, TlsMode, load_roots};
pub use stream::MaybeTls;

/// `[worker_tls]`: the agent CA on disk and the lifetime of the leaves it issues.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WorkerTls {
    pub ca_cert: std::path::PathBuf,
    pub ca_key: std::path::PathBuf,
    pub leaf_validity: std::time::Duration,
}

/// The TLS material the daemon loads once at start.
pub struct Material {
    /// Leaves from the agent CA (`[worker_tls]`); `None`: workers are answered that
    /// TLS is not available (PostgreSQL's 'N').
    pub leaves: Option<LeafCache>,
    /// Per resource (by index, as the kernel records it): client TLS to its server.
    pub upstream: Vec<Option<ClientTls>>,
}
