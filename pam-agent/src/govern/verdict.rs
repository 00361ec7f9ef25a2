//! What the gate answers: forward the request, refuse it (the session goes on), or hold
//! it until a human decides. Each protocol handles every arm in its own wire terms.

use super::approval::Held;
use crate::policy::Decision;

/// The gate's answer to one message's requests (all of them run, or none).
#[derive(Debug)]
pub enum Verdict {
    Forward,
    /// Refused: answer with the protocol's error naming the rule; the session goes on.
    Refuse(Decision),
    /// Not forwarded yet: the protocol keeps the message (and what follows it, in order)
    /// until [`Held::resolution`] answers.
    Hold(Held),
}

impl Verdict {
    pub fn forwards(&self) -> bool {
        matches!(self, Verdict::Forward)
    }
}
