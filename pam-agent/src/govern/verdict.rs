//! What the gate answers: forward the request, refuse it (the session goes on), or hold
//! it until a human decides. Each protocol handles every arm in its own wire terms.

use tokio::sync::oneshot;

use super::approval::{Summary, Withdraw};
use crate::policy::{Action, Decision};

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

/// A request waiting for approval.
pub struct Held {
    /// The rule that asked for approval, and why.
    pub decision: Decision,
    answer: oneshot::Receiver<Resolution>,
    /// The broker's request (absent when it was answered at once); dropping the hold
    /// undecided withdraws it.
    pending: Option<Box<(Summary, Withdraw)>>,
}

impl std::fmt::Debug for Held {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Held")
            .field("decision", &self.decision)
            .field("request", &self.pending.as_ref().map(|p| p.0.id))
            .finish()
    }
}

/// How a held request ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Resolution {
    Approved,
    /// Denied, expired or withdrawn: the reason is shown to the worker.
    Denied(String),
}

impl Held {
    /// A hold answered already (or to be answered without a request to show).
    pub fn new(decision: Decision, answer: oneshot::Receiver<Resolution>) -> Held {
        Held {
            decision,
            answer,
            pending: None,
        }
    }

    /// A hold filed with the broker as `summary`.
    pub fn pending(
        decision: Decision,
        answer: oneshot::Receiver<Resolution>,
        summary: Summary,
        withdraw: Withdraw,
    ) -> Held {
        Held {
            decision,
            answer,
            pending: Some(Box::new((summary, withdraw))),
        }
    }

    /// The request approvers see, when one waits.
    pub fn request(&self) -> Option<&Summary> {
        self.pending.as_ref().map(|p| &p.0)
    }

    /// Waits for the decision. A request whose decider went away is denied.
    pub async fn resolution(self) -> (Decision, Resolution) {
        let Held {
            decision,
            answer,
            pending,
        } = self;
        let r = answer
            .await
            .unwrap_or_else(|_| Resolution::Denied("the approval request was abandoned".into()));
        drop(pending);
        (decision, r)
    }
}

/// The refusal a denied request gets: the rule that held it, and why it did not run.
pub fn denied(held: Decision, why: &str) -> Decision {
    Decision {
        action: Action::RequireApproval,
        rule: held.rule,
        reason: format!("{} ({why})", held.reason),
    }
}
