//! Statements held for approval inside the worker's live session: the notice the worker
//! sees, waiting for the answer while the worker's next messages are kept (or withdraw
//! the request: cancel, Terminate, a closed connection), and the batch going on or
//! refused once it comes.

use super::{Answer, Client, MAX_STASHED};
use crate::{
    govern::{Held, Resolution, Verdict, denied},
    policy::Decision,
    protocols::postgres::{
        SessionError,
        notes::Note,
        wire::{
            backend::{self, sqlstate},
            frontend,
        },
    },
};

impl Client<'_> {
    /// Forward, or the refusal to answer with. A held request waits here for its answer
    /// (the worker is told at once what it waits for).
    pub(super) async fn decided(
        &mut self,
        verdict: Verdict,
    ) -> Result<Result<(), Decision>, SessionError> {
        Ok(match verdict {
            Verdict::Forward => Ok(()),
            Verdict::Refuse(d) => Err(d),
            Verdict::Hold(held) => {
                self.announce(&held).await?;
                let decision = held.decision.clone();
                let mut answer: Answer = Box::pin(held.resolution());
                match self.wait_for(&decision, &mut answer).await? {
                    (_, Resolution::Approved) => Ok(()),
                    (d, Resolution::Denied(why)) => Err(denied(d, &why)),
                }
            }
        })
    }
    /// Waits for a held statement's answer. A cancel request with this session's key, or
    /// Terminate, withdraws it; the worker closing the connection withdraws it and ends
    /// the session. Other messages the worker sends meanwhile are kept, in order, for
    /// after the answer.
    pub(super) async fn wait_for(
        &mut self,
        decision: &Decision,
        answer: &mut Answer,
    ) -> Result<(Decision, Resolution), SessionError> {
        let withdrawn = |why: &str| (decision.clone(), Resolution::Denied(why.into()));
        loop {
            if self.stash.iter().any(|f| f.tag == frontend::TERMINATE) {
                return Ok(withdrawn("withdrawn: the worker ended the session"));
            }
            tokio::select! {
                r = answer.as_mut() => return Ok(r),
                _ = self.cancelled.notified() => {
                    return Ok((decision.clone(), withdrawn_by_cancel()));
                }
                f = self.reader.next(), if self.stash.len() < MAX_STASHED => {
                    match f.map_err(SessionError::Worker)? {
                        Some(f) => self.stash.push_back(f),
                        None => {
                            return Err(SessionError::Protocol(
                                "the worker closed the connection while a statement waited for approval".into(),
                            ));
                        }
                    }
                }
            }
        }
    }
    /// A NoticeResponse naming the approval request, its rule, how to approve it and its
    /// deadline (nothing when the hold was answered at once).
    pub(super) async fn announce(&self, held: &Held) -> Result<(), SessionError> {
        let Some(r) = held.request() else {
            return Ok(());
        };
        let message = format!(
            "pam-agent: statement held for approval (request {}, rule \"{}\"); it runs when approved, until {}",
            r.id, r.rule, r.expires_at
        );
        let detail = format!("{} ({} approval(s) needed)", r.reason, r.min_approvals);
        let hint = format!(
            "An approver runs: pam-agent approvals approve {} (or deny {})",
            r.id, r.id
        );
        let f = backend::notice(sqlstate::HELD, &message, Some(&detail), Some(&hint));
        self.note(Note::Notice(f)).await
    }
    /// Waits for the answer to the open batch's held statement, if there is one, and
    /// lets the batch go on or refuses it.
    pub(super) async fn settle(&mut self) -> Result<(), SessionError> {
        let Some(mut p) = self.pending.take() else {
            return Ok(());
        };
        let r = self.wait_for(&p.decision, &mut p.answer).await?;
        self.pending = Some(p);
        self.answered(r).await
    }
    /// The open batch's held statement is answered: the batch goes on or is refused.
    pub(super) async fn answered(&mut self, r: (Decision, Resolution)) -> Result<(), SessionError> {
        let Some(p) = self.pending.take() else {
            return Ok(());
        };
        tracing::debug!(session = %self.ctx.session.id, resolution = ?r.1, "held statement answered");
        match r {
            (_, Resolution::Approved) => {
                self.forwarded(&p.numbered);
                self.batch.resolved(Ok(()));
            }
            (d, Resolution::Denied(why)) => self.batch.resolved(Err(denied(d, &why))),
        }
        // Dropped only now: an answer in hand means nothing is withdrawn.
        drop(p);
        self.carry_out().await
    }
}

/// How a held statement ends when the worker cancels it (psql Ctrl-C).
pub(super) fn withdrawn_by_cancel() -> Resolution {
    Resolution::Denied("withdrawn: the worker cancelled the statement".into())
}
