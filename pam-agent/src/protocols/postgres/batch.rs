//! The worker's extended-protocol batch, as a state machine without I/O: what is held,
//! what goes upstream when, and where a refusal or an approval's answer lands. The
//! worker's half feeds it messages and verdicts and carries out what it returns ([`Out`]:
//! notes for the server's half, bytes for the server), in order.
//!
//! - Messages wait until the worker's half calls [`Batch::send_held`] (it does as soon
//!   as the worker has sent nothing more for now: batches stream), Flush, Sync, or
//!   [`MAX_HELD_BYTES`]; a refusal drops what is still held.
//! - A refusal is answered at once (as the server answers an error), the rest of the
//!   batch is discarded until Sync, and that Sync gets ReadyForQuery, as PostgreSQL does
//!   after an error. If part of the batch had already gone upstream, an Execute of a
//!   missing portal makes the server fail the batch itself (rolling back its implicit
//!   transaction) and its error is replaced with the refusal.
//! - A request held for approval keeps the batch: nothing more goes upstream (not at
//!   Flush, not at the size limit) until [`Batch::resolved`]; its Sync waits with it.

use bytes::Bytes;

use super::{
    answers,
    notes::{Exec, Note},
    refusal,
    wire::{frame::Frame, frontend},
};
use crate::{memory_budget::UNCOUNTED_MESSAGE_BYTES, policy::Decision};

/// Held batch size before it is sent upstream without waiting for Sync.
pub const MAX_HELD_BYTES: usize = 1 << 20;
/// The most a batch held for approval may buffer (a batch past it is refused).
pub const MAX_AWAITING_BYTES: usize = 16 << 20;

/// What the worker's half must do, in this order.
#[derive(Debug)]
pub enum Out {
    Note(Note),
    /// Bytes for the server (a long message as it was read, never copied).
    Send(Bytes),
}

/// What a Sync leads to.
#[derive(Debug, PartialEq, Eq)]
pub enum SyncStep {
    /// Done: carry out the outputs.
    Done,
    /// A request of this batch awaits approval: wait for it, then call
    /// [`Batch::resolved`] (which finishes the Sync too).
    Await,
}

#[derive(Debug, Default)]
pub struct Batch {
    held: Vec<Bytes>,
    held_bytes: usize,
    execs: Vec<Exec>,
    describes: Vec<bool>,
    /// Statements described (name, parse generation), for their parameter types.
    statement_describes: Vec<(String, u64)>,
    /// Part of the current batch already went upstream.
    sent: bool,
    /// The batch had a refusal: discard until Sync.
    refused: bool,
    /// A request of this batch awaits approval.
    awaiting: bool,
    /// The Sync that arrived while awaiting.
    pending_sync: Option<Bytes>,
    /// A Flush arrived while awaiting: the worker waits for answers, so an approved
    /// batch goes up at once rather than at its Sync.
    pending_flush: bool,
    out: Vec<Out>,
}

impl Batch {
    pub fn new() -> Batch {
        Batch::default()
    }

    /// Messages are discarded until Sync (after a refusal, as the server does).
    pub fn discarding(&self) -> bool {
        self.refused
    }

    /// A request of this batch awaits approval.
    #[cfg(test)]
    fn awaiting(&self) -> bool {
        self.awaiting
    }

    /// No batch of the worker's is open: the proxy may send a group of its own.
    pub fn is_idle(&self) -> bool {
        self.held.is_empty() && !self.sent && !self.refused && !self.awaiting
    }

    /// Nothing of the worker's open batch is on the server yet (or none is open): a
    /// group the proxy sends now runs before all of it.
    pub fn can_inject(&self) -> bool {
        !self.sent && !self.refused && !self.awaiting
    }

    /// Part of the worker's open batch is on the server and it may go on: a function
    /// lookup can be sent inside it.
    pub fn can_inline(&self) -> bool {
        !self.refused && !self.awaiting
    }

    /// The outputs produced so far, to be carried out in order.
    pub fn take(&mut self) -> Vec<Out> {
        std::mem::take(&mut self.out)
    }

    /// A message that waits for the end of the batch (Parse, Bind, Describe, Close,
    /// Execute, Flush's own bytes).
    pub fn push(&mut self, raw: Bytes) {
        if self.refused {
            return;
        }
        self.held_bytes += raw.len();
        self.held.push(raw);
        if self.awaiting {
            if self.held_bytes > MAX_AWAITING_BYTES {
                let d = Decision {
                    action: crate::policy::Action::Deny,
                    rule: "approval".into(),
                    reason: "the batch grew too large while a statement of it awaited approval"
                        .into(),
                };
                self.awaiting = false;
                self.refuse(&d);
            }
        } else if self.held_bytes > MAX_HELD_BYTES {
            self.send_held();
        }
    }

    /// An execution the messages held so far will run.
    pub fn push_exec(&mut self, e: Exec) {
        if !self.refused {
            self.execs.push(e);
        }
    }

    /// A Describe the messages held so far carry (`true`: the proxy's own).
    pub fn push_describe(&mut self, ours: bool) {
        if !self.refused {
            self.describes.push(ours);
        }
    }

    /// A Describe of a statement the messages held so far carry (its ParameterDescription
    /// names its parameter types).
    pub fn push_statement_describe(&mut self, name: String, generation: u64) {
        if !self.refused {
            self.statement_describes.push((name, generation));
        }
    }

    /// Flush: what is held goes upstream now, unless a request awaits approval.
    pub fn flush(&mut self, raw: Bytes) {
        if self.refused {
            return;
        }
        self.push(raw);
        if self.awaiting {
            self.pending_flush = true;
        } else {
            self.send_held();
        }
    }

    /// Sends the held part of the batch upstream now (before COPY data, or a message
    /// outside the batch). Not while a request awaits approval.
    pub fn send_held(&mut self) {
        if self.held.is_empty() || self.awaiting {
            return;
        }
        self.note_held();
        self.sent = true;
        self.write_held(false);
    }

    /// Sync ends the batch.
    pub fn sync(&mut self, raw: Bytes) -> SyncStep {
        if self.awaiting {
            self.pending_sync = Some(raw);
            return SyncStep::Await;
        }
        if self.refused {
            // The server was already made to fail this batch: its Sync ends it.
            self.out.push(Out::Note(Note::Close));
            self.out.push(Out::Send(raw));
        } else {
            self.held.push(raw);
            self.note_held();
            self.write_held(true);
        }
        self.sent = false;
        self.refused = false;
        SyncStep::Done
    }

    /// Refuses the batch: drops its unsent part, answers the refusal now, and discards
    /// the rest until Sync.
    pub fn refuse(&mut self, d: &Decision) {
        self.fail(refusal::frame(d));
    }

    /// Fails the batch with `error` (a refusal, or the server's own error to the agent's
    /// lookup before the message): as [`Batch::refuse`]. The server is made to fail the
    /// batch (an Execute of a missing portal, shown as `error`), so it does what it does
    /// after any error: rolls back the batch's implicit transaction, aborts an explicit
    /// one (nothing written in it can commit any more), and skips to Sync, which it then
    /// answers with the transaction status the worker must see.
    pub fn fail(&mut self, error: Frame) {
        self.held.clear();
        self.held_bytes = 0;
        self.execs.clear();
        self.describes.clear();
        self.statement_describes.clear();
        self.out.push(Out::Note(Note::Replace(error)));
        let mut bytes = frontend::execute_missing_portal(&super::names::missing())
            .raw
            .to_vec();
        bytes.extend_from_slice(&frontend::flush().raw);
        self.out.push(Out::Send(bytes.into()));
        self.sent = true;
        self.refused = true;
    }

    /// Refuses the batch when the server has already failed it (on an inline lookup,
    /// or on an earlier message): `show` is the error to show now in the failure's
    /// place, if the worker has seen none yet. The rest is discarded until Sync, which
    /// goes upstream.
    pub fn refuse_failed(&mut self, show: Option<Frame>) {
        self.held.clear();
        self.held_bytes = 0;
        self.execs.clear();
        self.describes.clear();
        self.statement_describes.clear();
        if let Some(f) = show {
            self.out.push(Out::Note(Note::Failed(f)));
        }
        self.sent = true;
        self.refused = true;
    }

    /// A request of the batch awaits approval: hold everything from here on.
    pub fn hold(&mut self) {
        if !self.refused {
            self.awaiting = true;
        }
    }

    /// The approval's answer: `Ok` sends the batch on, `Err` refuses it. A Sync that
    /// arrived meanwhile is answered now.
    pub fn resolved(&mut self, outcome: Result<(), Decision>) {
        self.awaiting = false;
        let flushed = std::mem::take(&mut self.pending_flush);
        if let Err(d) = outcome {
            self.refuse(&d);
        } else if self.pending_sync.is_none() && (flushed || self.held_bytes > MAX_HELD_BYTES) {
            self.send_held();
        }
        if let Some(raw) = self.pending_sync.take() {
            self.sync(raw);
        }
    }

    fn note_held(&mut self) {
        let execs = std::mem::take(&mut self.execs);
        if !execs.is_empty() {
            self.out.push(Out::Note(Note::Execs(execs)));
        }
        let describes = std::mem::take(&mut self.describes);
        if !describes.is_empty() {
            self.out.push(Out::Note(Note::Describes(describes)));
        }
        let statements = std::mem::take(&mut self.statement_describes);
        if !statements.is_empty() {
            self.out
                .push(Out::Note(Note::StatementDescribes(statements)));
        }
    }

    /// The held messages go upstream, after a note of how many answers they close (so
    /// the server half can count: [`super::answers`]) and, when `close`, of the Sync.
    /// Short messages go together in one write; a long one goes as it was read, so its
    /// bytes are never held twice (see [`crate::memory_budget`]).
    fn write_held(&mut self, close: bool) {
        let held = std::mem::take(&mut self.held);
        let answers: usize = held.iter().map(|b| answers::expected(b)).sum();
        if answers > 0 {
            self.out.push(Out::Note(Note::Sent(answers)));
        }
        if close {
            self.out.push(Out::Note(Note::Close));
        }
        let mut buf = Vec::with_capacity(self.held_bytes.min(UNCOUNTED_MESSAGE_BYTES) + 8);
        for b in held {
            if b.len() > UNCOUNTED_MESSAGE_BYTES {
                if !buf.is_empty() {
                    self.out.push(Out::Send(std::mem::take(&mut buf).into()));
                }
                self.out.push(Out::Send(b));
            } else {
                buf.extend_from_slice(&b);
            }
        }
        self.held_bytes = 0;
        if !buf.is_empty() {
            self.out.push(Out::Send(buf.into()));
        }
    }
}

#[cfg(test)]
mod tests {
    use std::time::Instant;

    use super::*;
    use crate::{
        policy::Action,
        protocols::postgres::{notes::Catalog, wire::backend},
    };

    fn exec(n: u64) -> Exec {
        Exec {
            statement: n,
            started: Instant::now(),
            catalog: Catalog::Unchanged,
            prepares: None,
            withhold: None,
        }
    }

    fn deny(rule: &str) -> Decision {
        Decision {
            action: Action::Deny,
            rule: rule.into(),
            reason: format!("refused by {rule}"),
        }
    }

    /// A frame of the protocol's shape: tag, length 5, one byte of body.
    fn msg(tag: u8, n: u8) -> Bytes {
        Bytes::from(vec![tag, 0, 0, 0, 5, n])
    }

    /// A readable account of the outputs: notes by name, bytes by their first tags.
    fn script(b: &mut Batch) -> Vec<String> {
        b.take()
            .into_iter()
            .filter(|o| !matches!(o, Out::Note(Note::Sent(_))))
            .map(|o| match o {
                Out::Note(Note::Execs(e)) => format!(
                    "execs {:?}",
                    e.iter().map(|e| e.statement).collect::<Vec<_>>()
                ),
                Out::Note(Note::Describes(d)) => format!("describes {d:?}"),
                Out::Note(Note::Close) => "close".into(),
                Out::Note(Note::Ready) => "ready".into(),
                Out::Note(Note::Refuse(f)) => format!("refuse {}", error_rule(&f)),
                Out::Note(Note::Replace(f)) => format!("replace {}", error_rule(&f)),
                Out::Note(other) => format!("{other:?}"),
                Out::Send(bytes) => format!("send {}", tags(&bytes)),
            })
            .collect()
    }

    fn error_rule(f: &crate::protocols::postgres::wire::frame::Frame) -> String {
        assert_eq!(f.tag, backend::ERROR_RESPONSE);
        assert_eq!(backend::error_code(f).as_deref(), Some("42501"));
        let body = String::from_utf8_lossy(f.body()).into_owned();
        let start = body.find("(rule \"").expect("names the rule") + 7;
        body[start..start + body[start..].find('"').unwrap()].to_owned()
    }

    /// The message tags in a run of bytes (frames of the protocol's shape).
    fn tags(mut b: &[u8]) -> String {
        let mut out = String::new();
        while b.len() >= 5 {
            let len = u32::from_be_bytes([b[1], b[2], b[3], b[4]]) as usize;
            out.push(b[0] as char);
            b = &b[1 + len..];
        }
        assert!(b.is_empty(), "bytes end inside a frame");
        out
    }

    fn parse(n: u8) -> Bytes {
        msg(b'P', n)
    }
    fn bind() -> Bytes {
        msg(b'B', 0)
    }
    fn execute() -> Bytes {
        msg(b'E', 0)
    }
    fn sync() -> Bytes {
        msg(b'S', 0)
    }
    fn flush() -> Bytes {
        msg(b'H', 0)
    }

    #[test]
    fn an_allowed_batch_goes_up_whole_at_sync_with_its_executions_noted_first() {
        let mut b = Batch::new();
        b.push(parse(1));
        b.push(bind());
        b.push_exec(exec(1));
        b.push(execute());
        assert!(script(&mut b).is_empty(), "nothing leaves before Sync");
        assert!(!b.is_idle());
        assert_eq!(b.sync(sync()), SyncStep::Done);
        assert_eq!(script(&mut b), ["execs [1]", "close", "send PBES"]);
        assert!(b.is_idle());
    }

    #[test]
    fn a_refusal_in_the_middle_of_a_pipelined_batch_runs_none_of_it() {
        let mut b = Batch::new();
        b.push(parse(1));
        b.push(bind());
        b.push_exec(exec(1));
        b.push(execute());
        // The second statement is refused: the first, still held, never goes up.
        b.refuse(&deny("no-deletes"));
        assert!(b.discarding());
        b.push(bind());
        b.push_exec(exec(2));
        b.push(execute());
        assert_eq!(
            script(&mut b),
            ["replace no-deletes", "send EH"],
            "none of it goes up; the server is made to fail the batch"
        );
        b.sync(sync());
        assert_eq!(
            script(&mut b),
            ["close", "send S"],
            "the server answers Sync, with the transaction status after the error"
        );
        assert!(b.is_idle() && !b.discarding());
        // The next batch is judged afresh.
        b.push(parse(3));
        b.sync(sync());
        assert_eq!(script(&mut b), ["close", "send PS"]);
    }

    #[test]
    fn flush_sends_without_closing_the_group_and_sync_closes_it() {
        let mut b = Batch::new();
        b.push(parse(1));
        b.push(bind());
        b.push_exec(exec(1));
        b.push(execute());
        b.flush(flush());
        assert_eq!(script(&mut b), ["execs [1]", "send PBEH"]);
        assert!(!b.is_idle(), "the batch is still open after Flush");
        b.sync(sync());
        assert_eq!(script(&mut b), ["close", "send S"]);
    }

    #[test]
    fn a_refusal_after_part_of_the_batch_went_up_makes_the_server_fail_it() {
        let mut b = Batch::new();
        b.push(parse(1));
        b.push(bind());
        b.push_exec(exec(1));
        b.push(execute());
        b.flush(flush());
        script(&mut b);
        b.refuse(&deny("no-ddl"));
        assert_eq!(
            script(&mut b),
            ["replace no-ddl", "send EH"],
            "an Execute of a missing portal and a Flush"
        );
        b.push(parse(2));
        assert!(script(&mut b).is_empty(), "discarded until Sync");
        b.sync(sync());
        assert_eq!(
            script(&mut b),
            ["close", "send S"],
            "the server answers Sync"
        );
    }

    #[test]
    fn a_suspended_portal_executed_again_is_audited_as_the_same_statement() {
        let mut b = Batch::new();
        b.push(parse(1));
        b.push(bind());
        b.push_exec(exec(7));
        b.push(execute());
        b.flush(flush());
        assert_eq!(script(&mut b), ["execs [7]", "send PBEH"]);
        // PortalSuspended came back; the worker asks for more rows of the same portal.
        b.push_exec(exec(7));
        b.push(execute());
        b.sync(sync());
        assert_eq!(script(&mut b), ["execs [7]", "close", "send ES"]);
    }

    #[test]
    fn a_held_batch_waits_for_its_answer_and_then_goes_up_in_order() {
        let mut b = Batch::new();
        b.push(parse(1));
        b.hold();
        b.push(bind());
        b.push_exec(exec(1));
        b.push(execute());
        b.flush(flush());
        assert!(
            script(&mut b).is_empty(),
            "Flush does not release a held batch"
        );
        assert_eq!(b.sync(sync()), SyncStep::Await);
        assert!(script(&mut b).is_empty());
        b.resolved(Ok(()));
        assert_eq!(script(&mut b), ["execs [1]", "close", "send PBEHS"]);
        assert!(b.is_idle());
    }

    #[test]
    fn a_held_batch_denied_later_is_refused_and_its_sync_answered() {
        let mut b = Batch::new();
        b.push(parse(1));
        b.hold();
        b.push(bind());
        b.push_exec(exec(1));
        b.push(execute());
        assert_eq!(b.sync(sync()), SyncStep::Await);
        let held = Decision {
            action: Action::RequireApproval,
            rule: "approve-deletes".into(),
            reason: "approval required".into(),
        };
        b.resolved(Err(crate::govern::denied(held, "denied by alice")));
        assert_eq!(
            script(&mut b),
            ["replace approve-deletes", "send EH", "close", "send S"]
        );
        assert!(b.is_idle());
    }

    #[test]
    fn a_held_batch_flushed_by_the_worker_goes_up_as_soon_as_it_is_approved() {
        let mut b = Batch::new();
        b.push(parse(1));
        b.hold();
        b.push(msg(b'D', 0));
        b.flush(flush());
        assert!(script(&mut b).is_empty(), "held");
        // The worker waits for ParseComplete after its Flush: no Sync will come first.
        b.resolved(Ok(()));
        assert_eq!(script(&mut b), ["send PDH"]);
        b.sync(sync());
        assert_eq!(script(&mut b), ["close", "send S"]);
    }

    #[test]
    fn a_held_batch_answered_before_its_sync_continues_normally() {
        let mut b = Batch::new();
        b.push(parse(1));
        b.hold();
        b.resolved(Ok(()));
        assert!(script(&mut b).is_empty(), "still waits for Sync");
        b.push(bind());
        b.sync(sync());
        assert_eq!(script(&mut b), ["close", "send PBS"]);
    }

    #[test]
    fn a_large_batch_streams_but_not_while_held() {
        let big = Bytes::from({
            let mut v = vec![b'B', 0, 0, 0, 0];
            let len = (MAX_HELD_BYTES * 2 / 5) as u32;
            v[1..5].copy_from_slice(&len.to_be_bytes());
            v.resize(1 + len as usize, 0);
            v
        });
        let mut b = Batch::new();
        b.push(big.clone());
        b.push(big.clone());
        assert!(script(&mut b).is_empty());
        b.push(big.clone());
        // Sent once over the limit, each long message as it was read (not copied).
        assert_eq!(
            script(&mut b),
            ["send B", "send B", "send B"],
            "sent once over the limit"
        );
        let mut h = Batch::new();
        h.push(parse(1));
        h.hold();
        for _ in 0..3 {
            h.push(big.clone());
        }
        assert!(script(&mut h).is_empty(), "a held batch keeps everything");
        for _ in 0..45 {
            h.push(big.clone());
        }
        let out = script(&mut h);
        assert_eq!(out.len(), 2, "{out:?}");
        assert!(out[0].starts_with("replace "), "too large to hold: {out:?}");
        assert!(h.discarding() && !h.awaiting());
    }
}
