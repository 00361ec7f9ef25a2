//! What both halves of a session (and the handshake before them) do alike: write what
//! they gathered for the worker, counting it, and watch the server's settings for ones
//! under which the agent's parser would read SQL differently than the server.

use std::sync::atomic::Ordering;

use tokio::io::AsyncWriteExt;

use super::{
    Shared,
    wire::{backend, frame::Frame, options::dangerous_encoding},
};

/// ParameterStatus settings the login record keeps.
pub const REPORTED: &[&str] = &[
    "application_name",
    "is_superuser",
    "server_version",
    "session_authorization",
];

/// Writes and flushes `out` to the worker, then empties it.
pub async fn write_out<W: tokio::io::AsyncWrite + Unpin>(
    w: &mut W,
    out: &mut Vec<u8>,
    shared: &Shared,
) -> std::io::Result<()> {
    if out.is_empty() {
        return Ok(());
    }
    w.write_all(out).await?;
    w.flush().await?;
    shared
        .to_worker
        .fetch_add(out.len() as u64, Ordering::Relaxed);
    out.clear();
    Ok(())
}

/// Notes settings under which the proxy's parser and the server would lex SQL
/// differently.
pub fn watch_parameter(f: &Frame, shared: &Shared) {
    if let Ok((k, v)) = backend::parameter_status(f) {
        let unsafe_now = match k.as_str() {
            "client_encoding" => dangerous_encoding(&v),
            "standard_conforming_strings" => !v.eq_ignore_ascii_case("on"),
            _ => false,
        };
        if unsafe_now {
            shared.lexer_unsafe.store(true, Ordering::Relaxed);
        }
        if REPORTED.contains(&k.as_str()) {
            shared
                .reported
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .insert(k, v);
        }
    }
}
