//! How the agent's memory goes back to the system once sessions are gone.
//!
//! A burst of sessions (fuzzing, a flood of huge messages) used to leave the agent's
//! resident memory where the burst took it: retention by glibc's malloc, not a leak
//! (3,000 malformed sessions left 127 MiB resident with 14 MiB in use, by
//! `malloc_stats`). Two causes, two fixes:
//! - glibc raises its mmap threshold each time a large block is freed (up to 32 MiB),
//!   so after one long message later ones are carved from the heap arenas instead of
//!   mappings of their own. [`configure`] pins the threshold: every block of
//!   [`MMAP_THRESHOLD`] or more is its own mapping, unmapped when freed.
//! - Freed memory inside an arena stays resident unless it is at the arena's top, and
//!   every thread (tokio workers, parser threads) allocates from its own arena.
//!   [`give_back`] calls `malloc_trim(0)`, which returns the free pages of every arena,
//!   a few seconds after sessions have ended (never on a session's path).
//!
//! glibc was kept rather than a replacement allocator: the C libraries linked in
//! (libpg_query, SQLite, aws-lc) allocate through malloc whatever Rust's global
//! allocator is, so only tuning malloc covers all of the agent's memory.

use std::time::Duration;

use tokio_util::sync::CancellationToken;

/// Blocks this large or larger are mapped on their own (glibc's initial default).
pub const MMAP_THRESHOLD: usize = 128 * 1024;
/// Free memory at the top of an arena beyond this is given back at once.
const TRIM_THRESHOLD: usize = 1024 * 1024;
/// How often [`give_back`] looks whether sessions have ended since it last trimmed: a
/// trim walks every arena, so it runs at most this often, behind the data path.
pub const TRIM_EVERY: Duration = Duration::from_secs(5);

/// Sets malloc up for a long-running daemon. Call before any thread starts.
pub fn configure() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: mallopt only changes malloc's tunables; called before other threads exist.
    unsafe {
        libc::mallopt(libc::M_MMAP_THRESHOLD, MMAP_THRESHOLD as libc::c_int);
        libc::mallopt(libc::M_TRIM_THRESHOLD, TRIM_THRESHOLD as libc::c_int);
    }
}

/// Gives the free pages of every arena back to the system.
pub fn trim() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: malloc_trim is thread-safe; it only releases free memory.
    unsafe {
        libc::malloc_trim(0);
    }
}

/// Until `shutdown`: every [`TRIM_EVERY`], if `ended()` (a count of sessions that have
/// ended) moved since the last look, trims on a blocking thread.
pub async fn give_back(ended: impl Fn() -> u64, shutdown: CancellationToken) {
    let mut seen = ended();
    let mut every = tokio::time::interval(TRIM_EVERY);
    every.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = every.tick() => {}
        }
        let now = ended();
        if now != seen {
            seen = now;
            let _ = tokio::task::spawn_blocking(trim).await;
        }
    }
}
