//! How many sessions may be open: all together, and per principal (uid and cgroup), so
//! one worker looping on connect cannot take the agent (or the database's connection
//! slots) from the others. Refusals are journaled once per principal and interval with
//! a count, not once per connection ([`super::refusals`]), so a flood cannot flood the
//! journal either.

use std::{
    collections::HashMap,
    sync::{
        Arc, Mutex,
        atomic::{AtomicU64, Ordering},
    },
};

/// Who counts as one principal here: the uid and the cgroup the kernel recorded.
pub type PrincipalKey = (u32, u64);

pub struct Admission {
    max: usize,
    per_principal: usize,
    state: Mutex<State>,
    /// Sessions ended so far: when it moves, memory may be given back
    /// ([`crate::allocator::give_back`]).
    ended: AtomicU64,
}

#[derive(Default)]
struct State {
    open: usize,
    by_principal: HashMap<PrincipalKey, usize>,
}

/// Why a session was not admitted.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Refused {
    #[error("too many sessions on this agent (limit {0})")]
    Total(usize),
    #[error("too many sessions for this principal (limit {0})")]
    Principal(usize),
}

impl Refused {
    /// The reason's name, for counting refusals together.
    pub fn class(&self) -> &'static str {
        match self {
            Refused::Total(_) => "too_many_sessions",
            Refused::Principal(_) => "too_many_sessions_for_principal",
        }
    }
}

/// An open session's place; given back when dropped.
pub struct Ticket {
    admission: Arc<Admission>,
    key: PrincipalKey,
}

impl Admission {
    pub fn new(max: usize, per_principal: usize) -> Arc<Admission> {
        Arc::new(Admission {
            max,
            per_principal,
            state: Mutex::new(State::default()),
            ended: AtomicU64::new(0),
        })
    }

    /// How many admitted sessions have ended since the start.
    pub fn ended(&self) -> u64 {
        self.ended.load(Ordering::Relaxed)
    }

    fn state(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// A place for a session of `key`, or why not.
    pub fn admit(self: &Arc<Self>, key: PrincipalKey) -> Result<Ticket, Refused> {
        let mut st = self.state();
        let mine = st.by_principal.get(&key).copied().unwrap_or(0);
        let refused = if st.open >= self.max {
            Some(Refused::Total(self.max))
        } else if mine >= self.per_principal {
            Some(Refused::Principal(self.per_principal))
        } else {
            None
        };
        if let Some(r) = refused {
            return Err(r);
        }
        st.open += 1;
        *st.by_principal.entry(key).or_default() += 1;
        Ok(Ticket {
            admission: self.clone(),
            key,
        })
    }
}

impl Drop for Ticket {
    fn drop(&mut self) {
        self.admission.ended.fetch_add(1, Ordering::Relaxed);
        let mut st = self.admission.state();
        st.open = st.open.saturating_sub(1);
        if let Some(n) = st.by_principal.get_mut(&self.key) {
            *n -= 1;
            if *n == 0 {
                st.by_principal.remove(&self.key);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn limits_hold_per_principal_and_in_total_and_places_come_back() {
        let a = Admission::new(3, 2);
        let (alice, bob) = ((1000, 7), (1001, 7));
        let t1 = a.admit(alice).unwrap();
        let _t2 = a.admit(alice).unwrap();
        assert_eq!(a.admit(alice).err().unwrap(), Refused::Principal(2));
        // Another principal still gets in, up to the total.
        let _t3 = a.admit(bob).unwrap();
        assert_eq!(a.admit(bob).err().unwrap(), Refused::Total(3));
        // A place given back is a place again.
        drop(t1);
        let _t4 = a.admit(alice).expect("a place given back");
        // Same uid in another cgroup is another principal.
        assert_eq!(a.admit((1000, 8)).err().unwrap(), Refused::Total(3));
    }
}
