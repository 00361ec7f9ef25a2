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
