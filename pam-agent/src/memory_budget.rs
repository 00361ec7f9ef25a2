//! The agent's budget for message bytes held in userspace, so that many sessions each
//! sending a huge message cannot take the agent (and every governed worker with it)
//! out of memory.
//!
//! A message longer than [`UNCOUNTED_MESSAGE_BYTES`] is read only once its whole
//! length is reserved here, and the reservation lives exactly as long as the bytes
//! (see [`Charge`]). When the budget is spent, a session that holds nothing of it
//! waits before reading on (backpressure: its socket is not read, so TCP stops the
//! sender). A session that already holds part of the budget does not wait (two
//! sessions each waiting for the other's bytes would never move): its message is
//! refused, as is one longer than the whole budget.

use std::sync::{
    Arc,
    atomic::{AtomicUsize, Ordering},
};

use tokio::sync::{OwnedSemaphorePermit, Semaphore};

/// Messages up to this long are read into a session's own buffer without a
/// reservation: what a session can hold outside the budget is a few of these
/// (its read buffers), which is why the budget bounds the agent's memory only up to
/// a constant per session.
pub const UNCOUNTED_MESSAGE_BYTES: usize = 64 * 1024;

/// Reservations are counted in KiB: the semaphore takes at most `u32` permits at once.
const UNIT: usize = 1024;

/// The default budget: 256 MiB of messages held at once, all sessions together.
pub const DEFAULT_BUDGET_BYTES: usize = 256 << 20;

/// Bytes of messages the agent may hold at once, all sessions together.
pub struct Budget {
    permits: Arc<Semaphore>,
    bytes: usize,
}

/// Why a message was not read.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum OverBudget {
    #[error("a message of {len} bytes is larger than the agent's memory budget of {budget} bytes")]
    Never { len: usize, budget: usize },
    #[error(
        "a message of {len} bytes does not fit in what is left of the agent's memory budget \
         of {budget} bytes, and this session already holds {held} bytes of it"
    )]
    Busy {
        len: usize,
        budget: usize,
        held: usize,
    },
}

impl Budget {
    pub fn new(bytes: usize) -> Arc<Budget> {
        let units = bytes.div_ceil(UNIT).clamp(1, u32::MAX as usize);
        Arc::new(Budget {
            permits: Arc::new(Semaphore::new(units)),
            bytes,
        })
    }

    /// The budget's size in bytes.
    pub fn bytes(&self) -> usize {
        self.bytes
    }

    /// Bytes reserved now (rounded up to KiB per message).
    pub fn in_use(&self) -> usize {
        let total = self.bytes.div_ceil(UNIT).clamp(1, u32::MAX as usize);
        (total - self.permits.available_permits()) * UNIT
    }

    /// A session's handle on the budget.
    pub fn session(self: &Arc<Self>) -> SessionMemory {
        SessionMemory {
            budget: self.clone(),
            held: Arc::new(AtomicUsize::new(0)),
        }
    }
}

/// One session's use of the budget, shared by the readers of both its directions.
#[derive(Clone)]
pub struct SessionMemory {
    budget: Arc<Budget>,
    held: Arc<AtomicUsize>,
}

impl SessionMemory {
    /// Reserves `len` bytes, waiting for them if this session holds none. Cancel-safe:
    /// dropping the future reserves nothing.
    pub async fn reserve(&self, len: usize) -> Result<Charge, OverBudget> {
        let budget = self.budget.bytes;
        let units = len.div_ceil(UNIT);
        if len > budget || units > u32::MAX as usize {
            return Err(OverBudget::Never { len, budget });
        }
        let units = units as u32;
        let held = self.held.load(Ordering::Acquire);
        let permit = if held > 0 {
            self.budget
                .permits
                .clone()
                .try_acquire_many_owned(units)
                .map_err(|_| OverBudget::Busy { len, budget, held })?
        } else {
            self.budget
                .permits
                .clone()
                .acquire_many_owned(units)
                .await
                .map_err(|_| OverBudget::Never { len, budget })?
        };
        self.held.fetch_add(len, Ordering::AcqRel);
        Ok(Charge {
            _permit: permit,
            held: self.held.clone(),
            len,
        })
    }

    /// Bytes this session holds of the budget now.
    pub fn held(&self) -> usize {
        self.held.load(Ordering::Acquire)
    }
}

/// A reservation: given back when dropped (with the bytes it was made for).
pub struct Charge {
    _permit: OwnedSemaphorePermit,
    held: Arc<AtomicUsize>,
    len: usize,
}

impl Drop for Charge {
    fn drop(&mut self) {
        self.held.fetch_sub(self.len, Ordering::AcqRel);
    }
}

impl std::fmt::Debug for Charge {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Charge({} bytes)", self.len)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_message_larger_than_the_budget_is_refused_at_once() {
        let b = Budget::new(1 << 20);
        let s = b.session();
        assert_eq!(
            s.reserve((1 << 20) + 1).await.unwrap_err(),
            OverBudget::Never {
                len: (1 << 20) + 1,
                budget: 1 << 20
            }
        );
        assert_eq!(b.in_use(), 0);
    }

    #[tokio::test]
    async fn a_session_holding_nothing_waits_and_gets_its_bytes_when_given_back() {
        let b = Budget::new(1 << 20);
        let (one, two) = (b.session(), b.session());
        let first = one.reserve(800 << 10).await.unwrap();
        assert_eq!(one.held(), 800 << 10);
        let waiting = tokio::spawn(async move { two.reserve(800 << 10).await.map(|_| ()) });
        tokio::task::yield_now().await;
        assert!(!waiting.is_finished(), "it waits while the budget is spent");
        drop(first);
        assert_eq!(one.held(), 0);
        waiting.await.unwrap().expect("reserved once given back");
    }

    #[tokio::test]
    async fn a_session_holding_part_of_the_budget_is_refused_rather_than_waiting() {
        let b = Budget::new(1 << 20);
        let s = b.session();
        let _held = s.reserve(600 << 10).await.unwrap();
        let e = s.reserve(600 << 10).await.unwrap_err();
        assert!(matches!(e, OverBudget::Busy { held, .. } if held == 600 << 10));
        // What still fits is not refused.
        let _more = s.reserve(300 << 10).await.unwrap();
        assert_eq!(b.in_use(), 900 << 10);
    }
}
