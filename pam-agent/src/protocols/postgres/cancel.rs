//! Cancel keys. The worker sees a key minted here, never the server's: a cancel
//! arrives on a new (redirected) connection carrying that key, and is sent upstream
//! with the server's key only when the key is known and the new connection goes to
//! the same resource and server as the session that minted it.

use std::{
    collections::HashMap,
    net::SocketAddr,
    sync::{Arc, Mutex},
};

use tokio::sync::Notify;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Upstream {
    pub resource: String,
    pub server: SocketAddr,
    pub pid: i32,
    pub secret: Vec<u8>,
}

type Key = (i32, Vec<u8>);

#[derive(Default)]
pub struct CancelRegistry {
    keys: Mutex<HashMap<Key, (Upstream, Arc<Notify>)>>,
}

/// Removes its key from the registry when the session ends.
pub struct Registration {
    registry: Arc<CancelRegistry>,
    key: Key,
    /// Woken when a cancel request with this session's key arrives: a statement the
    /// agent holds (for approval) is withdrawn, since the server has nothing to cancel.
    pub cancelled: Arc<Notify>,
}

impl Drop for Registration {
    fn drop(&mut self) {
        if let Ok(mut keys) = self.registry.keys.lock() {
            keys.remove(&self.key);
        }
    }
}

impl CancelRegistry {
    /// Mints a worker-visible secret (same length as the server's) for `upstream`. The
    /// process id stays the backend's own: clients use it to terminate their backend
    /// (`pg_terminate_backend`) and to recognise their own notifications.
    pub fn register(
        self: &Arc<Self>,
        upstream: Upstream,
    ) -> Result<(i32, Vec<u8>, Registration), getrandom::Error> {
        let mut keys = self.keys.lock().unwrap_or_else(|p| p.into_inner());
        let pid = upstream.pid;
        loop {
            let mut secret = vec![0u8; upstream.secret.len()];
            getrandom::fill(&mut secret)?;
            let key = (pid, secret.clone());
            if secret != upstream.secret && !keys.contains_key(&key) {
                let cancelled = Arc::new(Notify::new());
                keys.insert(key.clone(), (upstream, cancelled.clone()));
                return Ok((
                    pid,
                    secret,
                    Registration {
                        registry: self.clone(),
                        key,
                        cancelled,
                    },
                ));
            }
        }
    }

    /// The server-side key of a session, by its worker-visible key. Wakes whatever that
    /// session holds for approval (see [`Registration::cancelled`]).
    pub fn lookup(&self, pid: i32, secret: &[u8]) -> Option<Upstream> {
        let keys = self.keys.lock().ok()?;
        let (upstream, cancelled) = keys.get(&(pid, secret.to_vec()))?;
        // Only a statement waiting now is withdrawn; no permit is kept for later ones.
        cancelled.notify_waiters();
        Some(upstream.clone())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn register_lookup_forget() {
        let reg = Arc::new(CancelRegistry::default());
        let up = Upstream {
            resource: "db".into(),
            server: "127.0.0.1:5432".parse().unwrap(),
            pid: 42,
            secret: vec![9; 4],
        };
        let (pid, secret, guard) = reg.register(up.clone()).unwrap();
        assert_eq!(pid, 42, "the backend's own process id");
        assert_eq!(secret.len(), 4);
        assert_ne!(secret, vec![9; 4], "the secret is minted");
        assert_eq!(reg.lookup(pid, &secret), Some(up));
        assert_eq!(
            reg.lookup(42, &[9; 4]),
            None,
            "the server's key is not accepted"
        );
        drop(guard);
        assert_eq!(reg.lookup(pid, &secret), None);
    }
}
