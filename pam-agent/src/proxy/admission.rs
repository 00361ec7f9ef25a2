//! How many sessions may be open: all together, and per principal (uid and cgroup), so
//! one worker looping on connect cannot take the agent (or the database's connection
//! slots) from the others. Refusals are journaled once per principal and interval with
//! a count, not once per connection, so a flood cannot flood the journal either.

use std::{
    collections::HashMap,
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

/// Refusals of one principal within this long share one journal record.
const REPORT_EVERY: Duration = Duration::from_secs(10);
/// Principals whose refusals are being counted, at most (older windows are dropped).
const MAX_TRACKED: usize = 4096;

/// Who counts as one principal here: the uid and the cgroup the kernel recorded.
pub type PrincipalKey = (u32, u64);

pub struct Admission {
    max: usize,
    per_principal: usize,
    state: Mutex<State>,
}

#[derive(Default)]
struct State {
    open: usize,
    by_principal: HashMap<PrincipalKey, usize>,
    /// Refusals not yet journaled, per principal: when the window began, how many.
    refused: HashMap<PrincipalKey, (Instant, u64)>,
}

/// Why a session was not admitted.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Refused {
    #[error("too many sessions on this agent (limit {0})")]
    Total(usize),
    #[error("too many sessions for this principal (limit {0})")]
    Principal(usize),
}

/// A refusal to journal now: the reason, and how many more came since the last record.
#[derive(Debug)]
pub struct Report {
    pub refused: Refused,
    pub also: u64,
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
        })
    }

    fn state(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// A place for a session of `key`, or the refusal, with what to journal about it
    /// (`None`: counted into a record already written for this window).
    pub fn admit(self: &Arc<Self>, key: PrincipalKey) -> Result<Ticket, (Refused, Option<Report>)> {
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
            let report = st.count_refusal(key, r.clone());
            return Err((r, report));
        }
        st.open += 1;
        *st.by_principal.entry(key).or_default() += 1;
        Ok(Ticket {
            admission: self.clone(),
            key,
        })
    }
}

impl State {
    /// The first refusal of a window is journaled; the rest are counted into the next.
    fn count_refusal(&mut self, key: PrincipalKey, refused: Refused) -> Option<Report> {
        let now = Instant::now();
        if self.refused.len() >= MAX_TRACKED {
            self.refused
                .retain(|_, (since, _)| now.duration_since(*since) < REPORT_EVERY);
        }
        match self.refused.get_mut(&key) {
            Some((since, n)) if now.duration_since(*since) < REPORT_EVERY => {
                *n += 1;
                None
            }
            Some((since, n)) => {
                let also = std::mem::take(n);
                *since = now;
                Some(Report { refused, also })
            }
            None => {
                self.refused.insert(key, (now, 0));
                Some(Report { refused, also: 0 })
            }
        }
    }
}

impl Drop for Ticket {
    fn drop(&mut self) {
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
        let (r, report) = a.admit(alice).err().unwrap();
        assert_eq!(r, Refused::Principal(2));
        assert_eq!(report.unwrap().also, 0, "the first refusal is journaled");
        // Another principal still gets in, up to the total.
        let _t3 = a.admit(bob).unwrap();
        assert_eq!(a.admit(bob).err().unwrap().0, Refused::Total(3));
        // A place given back is a place again.
        drop(t1);
        let _t4 = a.admit(alice).expect("a place given back");
        // Same uid in another cgroup is another principal.
        assert_eq!(a.admit((1000, 8)).err().unwrap().0, Refused::Total(3));
    }

    #[test]
    fn a_flood_of_refusals_is_one_record_per_window_with_a_count() {
        let a = Admission::new(10, 1);
        let key = (1000, 7);
        let _t = a.admit(key).unwrap();
        let reports: Vec<Option<u64>> = (0..1000)
            .map(|_| a.admit(key).err().unwrap().1.map(|r| r.also))
            .collect();
        assert_eq!(reports[0], Some(0));
        assert!(
            reports[1..].iter().all(Option::is_none),
            "counted, not journaled"
        );
        // The next window's first refusal carries the count.
        a.state().refused.get_mut(&key).unwrap().0 -= REPORT_EVERY;
        let next = a.admit(key).err().unwrap().1.unwrap();
        assert_eq!(next.also, 999);
    }
}
