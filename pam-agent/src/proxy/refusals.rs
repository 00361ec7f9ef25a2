//! Refused connections on record without a flood: one worker looping on connect-and-close
//! must not write thousands of records (and log lines) a second.
//!
//! Refusals are counted per principal (when the kernel identified one) and reason. The
//! first of a window is journaled at once (count 1), so an auditor sees it without delay;
//! the ones after it are counted, and a timer writes them as one record with their count
//! when the window ends (then a continuing flood opens the next window straight away, so
//! it costs one record per interval). Nothing counted is lost for want of a later event:
//! the timer flushes, and so does the shutdown ([`Refusals::flush`]), before
//! `agent_stopped`. Log lines follow the records, so they are bounded the same way.

use std::{
    collections::HashMap,
    net::SocketAddr,
    sync::{Arc, Mutex},
    time::Duration,
};

use jiff::Timestamp;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use super::admission::PrincipalKey;
use crate::journal::{Event, Journal};

/// Refusals of one principal and reason within this long share one record.
pub const REPORT_EVERY: Duration = Duration::from_secs(10);
/// Windows kept at most; past this a refusal is journaled on its own (memory stays bounded
/// whatever the principals).
const MAX_WINDOWS: usize = 4096;

/// What refusals are counted together by: why (a short, fixed name) and who, when known.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Key {
    pub reason: &'static str,
    pub principal: Option<PrincipalKey>,
}

struct Window {
    started: Instant,
    /// Refusals counted since the last record, the first one's time, and the latest one.
    pending: u64,
    since: Option<Timestamp>,
    client: SocketAddr,
    reason: String,
}

pub struct Refusals {
    journal: Journal,
    every: Duration,
    windows: Mutex<HashMap<Key, Window>>,
}

impl Refusals {
    pub fn new(journal: Journal, every: Duration) -> Arc<Refusals> {
        Arc::new(Refusals {
            journal,
            every,
            windows: Mutex::new(HashMap::new()),
        })
    }

    fn windows(&self) -> std::sync::MutexGuard<'_, HashMap<Key, Window>> {
        self.windows.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Counts a refusal, and journals it now when it opens a window.
    pub async fn refuse(&self, key: Key, client: SocketAddr, reason: String) {
        if let Some(event) = self.count(key, client, reason, Instant::now()) {
            self.write(event).await;
        }
    }

    /// The record to write now, if this refusal opens a window (or none can be kept).
    fn count(&self, key: Key, client: SocketAddr, reason: String, now: Instant) -> Option<Event> {
        let mut windows = self.windows();
        if let Some(w) = windows.get_mut(&key) {
            if w.pending == 0 {
                w.since = Some(Timestamp::now());
            }
            w.pending += 1;
            w.client = client;
            w.reason = reason;
            return None;
        }
        if windows.len() < MAX_WINDOWS {
            windows.insert(
                key,
                Window {
                    started: now,
                    pending: 0,
                    since: None,
                    client,
                    reason: reason.clone(),
                },
            );
        }
        Some(Event::ConnectionRefused {
            client,
            reason,
            count: Some(1),
            since: None,
        })
    }

    /// The counts of windows that have ended (all of them when `all`): each becomes one
    /// record. An ended window with nothing counted goes; one with counts starts over,
    /// so a flood that goes on is one record per interval.
    fn take(&self, now: Instant, all: bool) -> Vec<Event> {
        let mut out = Vec::new();
        self.windows().retain(|_, w| {
            if !all && now.duration_since(w.started) < self.every {
                return true;
            }
            if w.pending == 0 {
                return false;
            }
            out.push(Event::ConnectionRefused {
                client: w.client,
                reason: w.reason.clone(),
                count: Some(w.pending),
                since: w.since.take(),
            });
            w.pending = 0;
            w.started = now;
            !all
        });
        out
    }

    async fn write(&self, event: Event) {
        if let Event::ConnectionRefused {
            client,
            reason,
            count,
            ..
        } = &event
        {
            tracing::warn!(%client, count = count.unwrap_or(1), %reason, "connection refused");
        }
        if let Err(e) = self.journal.record(None, event).await {
            tracing::error!(error = %e, "cannot journal refused connections");
        }
    }

    /// Writes the counts of ended windows, every tick, until `shutdown`.
    pub async fn run(self: Arc<Self>, shutdown: CancellationToken) {
        let tick = (self.every / 4).max(Duration::from_millis(10));
        loop {
            tokio::select! {
                _ = shutdown.cancelled() => return,
                _ = tokio::time::sleep(tick) => {}
            }
            for event in self.take(Instant::now(), false) {
                self.write(event).await;
            }
        }
    }

    /// Writes every count not yet on record (at shutdown, once nothing more is accepted).
    pub async fn flush(&self) {
        for event in self.take(Instant::now(), true) {
            self.write(event).await;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn refusals() -> (Arc<Refusals>, tempfile::TempDir) {
        let dir = tempfile::tempdir().unwrap();
        let store =
            crate::journal::sqlite::SqliteStore::open(crate::journal::sqlite::StoreOptions {
                fsync: false,
                ..crate::journal::sqlite::StoreOptions::new(&dir.path().join("j.db"))
            })
            .unwrap();
        let (journal, _writer) = Journal::start_with(store, Default::default());
        (Refusals::new(journal, Duration::from_secs(10)), dir)
    }

    fn counts(events: &[Event]) -> Vec<u64> {
        events
            .iter()
            .map(|e| match e {
                Event::ConnectionRefused { count, .. } => count.unwrap(),
                _ => unreachable!(),
            })
            .collect()
    }

    const CLIENT: &str = "127.0.0.1:40000";

    #[test]
    fn a_burst_is_its_first_refusal_then_one_count_and_the_trailing_count_is_kept() {
        let (r, _dir) = refusals();
        let key = Key {
            reason: "not_redirected",
            principal: None,
        };
        let t0 = Instant::now();
        let client: SocketAddr = CLIENT.parse().unwrap();
        let first = r.count(key, client, "why".into(), t0);
        assert_eq!(counts(&[first.unwrap()]), [1]);
        for _ in 0..999 {
            assert!(r.count(key, client, "why".into(), t0).is_none());
        }
        // Another principal, or another reason, is another window.
        let other = Key {
            reason: "closed_early",
            ..key
        };
        assert!(r.count(other, client, "x".into(), t0).is_some());
        // Nothing is due before the window ends...
        assert!(r.take(t0 + Duration::from_secs(9), false).is_empty());
        // ...then the 999 are one record, though no refusal came after them.
        let due = r.take(t0 + Duration::from_secs(10), false);
        assert_eq!(counts(&due), [999]);
        // The window goes on for a flood that goes on: counted, not written.
        assert!(r.count(key, client, "why".into(), t0).is_none());
        // A quiet window is forgotten: the next refusal is written at once again.
        assert_eq!(
            counts(&r.take(t0 + Duration::from_secs(20), false)),
            [1],
            "the one after the first flush"
        );
        assert!(r.take(t0 + Duration::from_secs(30), false).is_empty());
        assert!(r.count(key, client, "why".into(), t0).is_some());
    }

    #[test]
    fn shutdown_flushes_what_no_timer_has_written() {
        let (r, _dir) = refusals();
        let key = Key {
            reason: "too_many_for_principal",
            principal: Some((1000, 7)),
        };
        let t0 = Instant::now();
        let client: SocketAddr = CLIENT.parse().unwrap();
        for _ in 0..5 {
            r.count(key, client, "why".into(), t0);
        }
        assert_eq!(counts(&r.take(t0, true)), [4]);
        assert!(r.take(t0, true).is_empty(), "written once");
    }
}
