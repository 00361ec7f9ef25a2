//! What flows inside a governed connection, one module per protocol. The proxy hands
//! each session to its resource's protocol ([`serve`]); a protocol reads its wire
//! format, turns what the worker asks into [`crate::govern::Request`]s, and acts on the
//! gate's verdicts. Adding a protocol: one folder here, one arm in [`serve`] and in
//! [`crate::config::Protocol`], one config section.

pub mod config;
pub mod postgres;
pub mod tcp;

use crate::config::Protocol;

/// The ALPN name a protocol's TLS offers (empty: none).
pub fn alpn(protocol: Protocol) -> &'static [u8] {
    match protocol {
        Protocol::Tcp => b"",
        Protocol::Postgres => postgres::upstream_tls::ALPN,
    }
}
