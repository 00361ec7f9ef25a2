//! Where held requests go for a human decision. The broker (request ids, approvers,
//! channels, grants, deadlines) plugs in here; until one is configured every request is
//! denied at once, so a `require_approval` rule refuses, as it always did, but through the
//! same Hold path a broker will answer later.

use tokio::sync::oneshot;

use super::verdict::{Held, Resolution};
use crate::policy::Decision;

/// Why requests are denied while no approval broker runs.
pub const UNAVAILABLE: &str = "approvals are not available yet";

#[derive(Debug, Clone, Default)]
pub struct Approvals {}

impl Approvals {
    /// Files a request for the decision `held` (a `require_approval` rule's).
    pub fn request(&self, held: Decision) -> Held {
        let (tx, rx) = oneshot::channel();
        let _ = tx.send(Resolution::Denied(UNAVAILABLE.into()));
        Held::new(held, rx)
    }
}
