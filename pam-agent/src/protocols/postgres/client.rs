//! The worker's half of a session: read a message → make [`Request`]s of what it asks →
//! the gate's [`Verdict`] → act on it (forward, refuse in place, or hold until the
//! approval's answer). Everything between messages is the [`Batch`] machine's.
//!
//! - Query: every statement of the text is judged; if any is refused none runs, and
//!   the worker gets ErrorResponse 42501 + ReadyForQuery as if the server refused it.
//! - Extended protocol: Parse is judged; Bind/Describe/Execute/Close go on with it as
//!   soon as the worker has sent nothing more for now (streaming), or at Sync or Flush
//!   (see [`super::batch`]).
//! - FunctionCall is judged as kind `function_call` calling the function its OID names
//!   in the catalog (refused unless a rule allows that kind).
//! - COPY data, Terminate: forwarded. Anything else ends the session (fail closed).
//!
//! On a masked session it also makes sure the server half can plan every result: the
//! column-name preload before the first statement and after DDL, a Describe of the
//! portal before each Execute the worker did not describe, a describe of a COPY's
//! columns before a COPY TO STDOUT ([`super::inject`]); and it vetoes what cannot be
//! masked (FunctionCall, COPY other than text format alone in a simple Query).

use std::{collections::HashMap, sync::Arc, sync::atomic::Ordering, time::Instant};

use tokio::{
    io::{AsyncWriteExt, ReadHalf, WriteHalf},
    sync::mpsc,
};
use tokio_util::sync::CancellationToken;

use super::{
    Context, SessionError, Shared,
    batch::{Batch, Out, SyncStep},
    inject::{self, Preload},
    known_functions::KnownFunctions,
    masking::PlanResults,
    names::{self, Reserved},
    notes::{Catalog, Exec, Injected, Note},
    params, refusal,
    sql::{CopyOut, Statement},
    wire::{
        backend::{self, Severity, sqlstate},
        frame::{Frame, FrameError, FrameReader, Malformed},
        frontend,
    },
};
use crate::{
    govern::{Ask, Gate, Request, Resolution, UNCLASSIFIABLE_RULE, Verdict, masking_refusal},
    journal::{Ack, event::Parameter},
    policy::{Action, Decision},
    tls::stream::{UpstreamStream, WorkerStream},
};

mod functions;
mod hold;
mod judge;

use hold::withdrawn_by_cancel;
use judge::function_call_request;

/// The rule name of refusals of the agent's reserved names.
const RESERVED_RULE: &str = "reserved_name";

/// The refusal of a name the agent keeps for itself (a statement, portal or cursor).
fn reserved() -> Decision {
    Decision {
        action: Action::Deny,
        rule: RESERVED_RULE.into(),
        reason: format!(
            "statement, portal and cursor names starting with \"{}\" are reserved by pam-agent",
            names::RESERVED_PREFIX
        ),
    }
}

/// Why every statement of a session is refused once its settings make SQL ambiguous.
const LEXER_UNSAFE: &str = "the session's client_encoding or standard_conforming_strings \
                            makes SQL text ambiguous; statements are refused";

/// A statement's number with what its execution changes besides data.
#[derive(Debug, Clone)]
struct Numbered {
    statement: u64,
    catalog: Catalog,
    prepares: Option<Arc<Statement>>,
    /// What it writes (its text and tables), for the open transaction's record.
    writes: Option<(String, std::collections::BTreeSet<String>)>,
    /// Every table it touches (a parameter bound to it may be a masked column's value).
    tables: Option<Arc<std::collections::BTreeSet<String>>>,
    /// Values of its result to withhold (see [`Exec::withhold`]).
    withhold: Option<Arc<[crate::mask::WithheldOutput]>>,
}

impl Numbered {
    /// An empty Parse gets number 0 (nothing to audit at completion).
    const NONE: Numbered = Numbered {
        statement: 0,
        catalog: Catalog::Unchanged,
        prepares: None,
        writes: None,
        tables: None,
        withhold: None,
    };

    fn exec(&self) -> Exec {
        Exec {
            statement: self.statement,
            started: Instant::now(),
            catalog: self.catalog,
            prepares: self.prepares.clone(),
            withhold: self.withhold.clone(),
        }
    }
}

/// How a SQL text arrived.
#[derive(Debug, Clone, Copy)]
enum Via {
    /// A simple Query; `clean` when no batch of the worker's was open before it.
    Query {
        clean: bool,
    },
    Parse,
}

/// A message's requests after the gate: the verdict, the numbers they were journaled
/// under, and (for a COPY TO STDOUT on a masked session) what to describe first.
struct Judgement {
    verdict: Verdict,
    numbered: Vec<Numbered>,
    copy: Option<CopyOut>,
    /// The message ends a transaction with COMMIT.
    commits: bool,
    /// The error shown in place of the refusal's 42501 (the verdict refuses): the
    /// server's own error to the agent's function lookup before the statements, or the
    /// syntax error of a text that does not parse.
    failed: Option<Frame>,
}

/// The answer to a held statement, still to come (dropping it withdraws the request).
type Answer =
    std::pin::Pin<Box<dyn std::future::Future<Output = (Decision, Resolution)> + Send + Sync>>;

/// A statement of the open batch held for approval.
struct Pending {
    decision: Decision,
    answer: Answer,
    numbered: Vec<Numbered>,
}

pub struct Client<'a> {
    reader: FrameReader<ReadHalf<WorkerStream>>,
    upstream: WriteHalf<UpstreamStream>,
    notes: mpsc::Sender<Note>,
    ctx: &'a Context,
    gate: Gate,
    shared: Arc<Shared>,
    batch: Batch,
    pending: Option<Pending>,
    /// Prepared statement name -> its statement (the unnamed one is "").
    prepared: HashMap<String, Numbered>,
    portals: HashMap<String, Numbered>,
    /// Masked session: results must be planned (see the module docs).
    masked: bool,
    preload: Option<Preload>,
    /// The portal the last message described, if the last message was a Describe.
    described: Option<String>,
    /// The names the agent uses on the server for itself.
    names: Reserved,
    /// Woken by a cancel request carrying this session's key.
    cancelled: Arc<tokio::sync::Notify>,
    /// Messages read while a statement waited for approval, to handle after it.
    stash: std::collections::VecDeque<Frame>,
    /// What the server's functions are, as far as this session has looked them up.
    known: KnownFunctions,
    /// Prepared statement name -> its parse generation (which ParameterDescription
    /// belongs to it) and the parameter types the worker declared.
    declared: HashMap<String, (u64, Vec<u32>)>,
    generation: u64,
    /// Portal -> the parameters bound to it, as its execution records keep them.
    bound: HashMap<String, (Vec<Parameter>, u64)>,
    /// Execution records submitted and not yet stored: stored before anything more goes
    /// upstream (write-ahead).
    acks: Vec<Ack>,
    /// The server already failed the open batch (found by an inline function lookup):
    /// a refusal of the statement being judged is `Some(true)` shown by the agent, or
    /// `Some(false)` not shown (the worker saw the server's error).
    upstream_failed: Option<bool>,
}

/// Messages a worker may send while a statement of its waits for approval.
const MAX_STASHED: usize = 256;

impl<'a> Client<'a> {
    pub fn new(
        reader: FrameReader<ReadHalf<WorkerStream>>,
        upstream: WriteHalf<UpstreamStream>,
        notes: mpsc::Sender<Note>,
        ctx: &'a Context,
        gate: Gate,
        shared: Arc<Shared>,
        cancelled: Arc<tokio::sync::Notify>,
    ) -> Self {
        let masker = gate.masker();
        let names = Reserved::new();
        Client {
            masked: masker.is_some(),
            preload: masker
                .and_then(|m| m.preload_query())
                .map(|sql| Preload::new(sql, names.injected.clone())),
            reader,
            upstream,
            notes,
            ctx,
            gate,
            shared,
            batch: Batch::new(),
            pending: None,
            prepared: HashMap::new(),
            portals: HashMap::new(),
            described: None,
            names,
            cancelled,
            stash: std::collections::VecDeque::new(),
            known: KnownFunctions::new(),
            declared: HashMap::new(),
            generation: 0,
            bound: HashMap::new(),
            acks: Vec::new(),
            upstream_failed: None,
        }
    }

    /// Returns a closing detail on a normal end.
    pub async fn run(mut self, done: &CancellationToken) -> Result<Option<String>, SessionError> {
        let before = self.reader.bytes;
        let r = self.run_inner(done).await;
        if let Err(SessionError::Worker(FrameError::OverBudget(_))) = &r {
            // The worker reads the refusal once it has sent the message, not a reset.
            let _ = self.reader.discard_refused().await;
        }
        self.shared
            .from_worker
            .fetch_add(self.reader.bytes - before, Ordering::Relaxed);
        if let Err(e) = &r {
            let (code, msg) = match e {
                SessionError::Worker(FrameError::TooLarge { .. } | FrameError::OverBudget(_)) => {
                    (sqlstate::TOO_LARGE, format!("pam-agent: {e}"))
                }
                SessionError::Journal(_) => (
                    sqlstate::CONNECTION_FAILURE,
                    format!("pam-agent: {e}; the statement was not run"),
                ),
                _ => (sqlstate::PROTOCOL_VIOLATION, format!("pam-agent: {e}")),
            };
            let f = backend::error(Severity::Fatal, code, &msg, None, None);
            let _ = self.notes.send(Note::Fatal(f)).await;
        }
        r
    }

    async fn run_inner(
        &mut self,
        done: &CancellationToken,
    ) -> Result<Option<String>, SessionError> {
        loop {
            let f = match self.stash.pop_front() {
                Some(f) => Some(f),
                None => {
                    // A batch's held statement may be answered before the worker sends
                    // its Sync (a driver waiting after Flush): act on the answer at once.
                    let holding = self.pending.is_some();
                    let pending = &mut self.pending;
                    let answer = async {
                        match pending.as_mut() {
                            Some(p) => p.answer.as_mut().await,
                            None => std::future::pending().await,
                        }
                    };
                    tokio::select! {
                        f = self.reader.next() => f.map_err(SessionError::Worker)?,
                        r = answer, if holding => {
                            self.answered(r).await?;
                            continue;
                        }
                        _ = self.cancelled.notified(), if holding => {
                            let d = self.pending.as_ref().expect("holding").decision.clone();
                            self.answered((d, withdrawn_by_cancel())).await?;
                            continue;
                        }
                        _ = done.cancelled() => return Ok(None),
                    }
                }
            };
            let Some(f) = f else {
                tracing::trace!(session = %self.ctx.session.id, "worker: end of stream");
                let _ = self.upstream.shutdown().await;
                return Ok(Some("worker closed the connection".into()));
            };
            tracing::trace!(session = %self.ctx.session.id, tag = %f.tag.escape_ascii(), len = f.raw.len(), "worker message");
            self.maybe_preload(f.tag).await?;
            if let Some(detail) = self.message(f).await? {
                return Ok(Some(detail));
            }
            if self.stash.is_empty() && !self.reader.has_frame() {
                // Streaming: the worker has sent nothing more yet, so what the batch
                // holds (judged, journaled) goes on now rather than at Sync; a failing
                // batch stops early and a large one never piles up here.
                self.batch.send_held();
            }
            self.carry_out().await?;
        }
    }

    /// One message of the worker's; `Some` ends the session normally.
    async fn message(&mut self, f: Frame) -> Result<Option<String>, SessionError> {
        let described = self.described.take();
        match f.tag {
            frontend::QUERY => self.query(f).await?,
            frontend::PARSE => self.parse(f).await?,
            frontend::BIND => self.bind(f).await?,
            frontend::EXECUTE => self.execute(f, described).await?,
            frontend::DESCRIBE | frontend::CLOSE => self.describe_or_close(f).await?,
            frontend::FLUSH => self.batch.flush(f.raw),
            frontend::SYNC => {
                if self.batch.sync(f.raw) == SyncStep::Await {
                    self.settle().await?;
                }
                self.known.batch_closed();
            }
            frontend::FUNCTION_CALL => self.function_call(f).await?,
            frontend::COPY_DATA | frontend::COPY_DONE | frontend::COPY_FAIL => {
                // Data of a COPY the server accepted; outside COPY the server ignores
                // them. Never judged: the COPY statement was.
                if !self.batch.discarding() {
                    self.settle().await?;
                    self.batch.send_held();
                    self.carry_out().await?;
                    self.upstream.write_all(&f.raw).await?;
                }
            }
            frontend::TERMINATE => {
                self.settle().await?;
                self.batch.send_held();
                self.carry_out().await?;
                self.upstream.write_all(&f.raw).await?;
                let _ = self.upstream.shutdown().await;
                return Ok(Some("worker terminated the session".into()));
            }
            other => {
                return Err(SessionError::Protocol(format!(
                    "unexpected message type '{}'",
                    other.escape_ascii()
                )));
            }
        }
        Ok(None)
    }

    async fn query(&mut self, f: Frame) -> Result<(), SessionError> {
        if self.batch.discarding() {
            // After an error the server discards everything until Sync; so do we.
            return Ok(());
        }
        self.settle().await?;
        // A COPY's describe can only be injected between the worker's groups.
        let clean = self.batch.is_idle();
        self.batch.send_held();
        self.carry_out().await?;
        let text = match frontend::query(&f) {
            Ok(t) => t,
            Err(e) => return self.malformed_query(&f, e).await,
        };
        let j = self.judge_text(text, Via::Query { clean }).await?;
        match self.decided(j.verdict).await? {
            Ok(()) => {
                self.forwarded(&j.numbered);
                if let Some(copy) = j.copy {
                    let (what, bytes) = inject::copy_describe(copy, &self.names.injected);
                    self.note(Note::Inject(what)).await?;
                    self.upstream.write_all(&bytes).await?;
                }
                let execs = j.numbered.iter().map(Numbered::exec).collect();
                self.note(Note::Execs(execs)).await?;
                self.note(Note::Close).await?;
                self.upstream.write_all(&f.raw).await?;
            }
            Err(d) => {
                if j.commits && d.action == Action::RequireApproval {
                    // A COMMIT that was held and not approved: its transaction is rolled
                    // back, so nothing it wrote stands (the worker's next statement runs
                    // outside it, as after a failed COMMIT).
                    let rollback = frontend::query_message("ROLLBACK");
                    self.note(Note::Inject(Injected::Rollback)).await?;
                    self.upstream.write_all(&rollback.raw).await?;
                }
                match j.failed {
                    // The server's own error (to the agent's lookup for this text): the
                    // server has already failed what it had to.
                    Some(error) => {
                        self.note(Note::Refuse(error)).await?;
                        self.note(Note::Ready).await?;
                    }
                    None => self.refuse_on_the_server(refusal::frame(&d)).await?,
                }
            }
        }
        Ok(())
    }

    /// Answers a refused Query or FunctionCall the way the server answers a failed
    /// statement, transaction state included: the server is made to fail a statement of
    /// the agent's own (closing a cursor no worker can name, see [`super::names`]), so
    /// an open transaction block is aborted there as after any error (the worker reads
    /// status `E`, later statements get 25P02, COMMIT rolls back) and nothing the worker
    /// wrote in it before the refusal can commit. The worker sees `refusal` in place of
    /// that error; in an already aborted transaction it sees the server's 25P02, as it
    /// would for any statement there.
    async fn refuse_on_the_server(&mut self, refusal: Frame) -> Result<(), SessionError> {
        let fail = frontend::query_message(&format!("CLOSE {}", names::missing()));
        self.note(Note::Replace(refusal)).await?;
        self.note(Note::Close).await?;
        self.upstream.write_all(&fail.raw).await?;
        Ok(())
    }

    async fn parse(&mut self, f: Frame) -> Result<(), SessionError> {
        let p = frontend::parse(&f).map_err(protocol)?;
        if self.batch.discarding() {
            return Ok(());
        }
        // One approval at a time: an earlier held statement of the batch is answered
        // before the next is judged.
        self.settle().await?;
        let name = p.statement.clone();
        if names::is_reserved(&name) {
            return self.reserved_name(&name).await;
        }
        let declared = frontend::parse_types(&f).map_err(protocol)?;
        self.upstream_failed = None;
        let j = self.judge_text(p.query, Via::Parse).await?;
        // A Parse holds one statement (the server refuses more).
        let first = j.numbered.first().cloned().unwrap_or(Numbered::NONE);
        if !matches!(j.verdict, Verdict::Refuse(_)) {
            self.generation += 1;
            self.declared
                .insert(name.clone(), (self.generation, declared));
        }
        match j.verdict {
            Verdict::Forward => {
                self.forwarded(&j.numbered);
                self.prepared.insert(name, first);
                self.batch.push(f.raw);
            }
            Verdict::Refuse(d) => {
                self.prepared.remove(&name);
                let shown = j.failed.unwrap_or_else(|| refusal::frame(&d));
                match self.upstream_failed.take() {
                    Some(show) => self.batch.refuse_failed(show.then_some(shown)),
                    None => self.batch.fail(shown),
                }
            }
            Verdict::Hold(held) => {
                self.announce(&held).await?;
                self.prepared.insert(name, first);
                self.batch.push(f.raw);
                self.batch.hold();
                self.pending = Some(Pending {
                    decision: held.decision.clone(),
                    answer: Box::pin(held.resolution()),
                    numbered: j.numbered,
                });
            }
        }
        Ok(())
    }

    async fn bind(&mut self, f: Frame) -> Result<(), SessionError> {
        let b = frontend::bind(&f).map_err(protocol)?;
        if let Some(n) = [&b.portal, &b.statement]
            .into_iter()
            .find(|n| names::is_reserved(n))
        {
            return self.reserved_name(n).await;
        }
        if !self.batch.discarding() {
            match self.prepared.get(&b.statement) {
                Some(p) => {
                    let bound = self.bound_parameters(&f, &b.statement, p)?;
                    self.bound.insert(b.portal.clone(), bound);
                    self.portals.insert(b.portal, p.clone())
                }
                None => {
                    self.bound.remove(&b.portal);
                    self.portals.remove(&b.portal)
                }
            };
            self.batch.push(f.raw);
        }
        Ok(())
    }

    /// The values a Bind gives statement `name`, as its execution records keep them.
    fn bound_parameters(
        &self,
        f: &Frame,
        name: &str,
        statement: &Numbered,
    ) -> Result<(Vec<Parameter>, u64), SessionError> {
        let values = frontend::bind_values(f).map_err(protocol)?;
        let (generation, declared) = self.declared.get(name).cloned().unwrap_or_default();
        let described = self
            .shared
            .param_types
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(name)
            .filter(|(g, _)| *g == generation)
            .map(|(_, t)| t.clone())
            .unwrap_or_default();
        let types: Vec<u32> = (0..values.values.len())
            .map(|i| match declared.get(i).copied().unwrap_or(0) {
                0 => described.get(i).copied().unwrap_or(0),
                t => t,
            })
            .collect();
        let no_tables = Default::default();
        let redaction = params::Redaction {
            mode: self.ctx.session.parameters,
            masker: self.gate.masker(),
            tables: statement.tables.as_deref().unwrap_or(&no_tables),
        };
        Ok(params::record(&types, &values.values, &redaction))
    }

    async fn execute(&mut self, f: Frame, described: Option<String>) -> Result<(), SessionError> {
        let portal = frontend::execute(&f).map_err(protocol)?;
        if names::is_reserved(&portal) {
            return self.reserved_name(&portal).await;
        }
        if self.batch.discarding() {
            return Ok(());
        }
        if self.masked && described.as_ref() != Some(&portal) {
            // The server half plans the rows from this RowDescription.
            self.batch.push_describe(true);
            self.batch.push(frontend::describe_portal(&portal).raw);
        }
        match self.portals.get(&portal) {
            Some(p) => {
                if p.statement != 0 {
                    // Write-ahead: stored before the Execute goes upstream (see carry_out).
                    let (parameters, more) = self.bound.get(&portal).cloned().unwrap_or_default();
                    let ack = self.gate.execution(p.statement, parameters, more).await?;
                    self.acks.push(ack);
                }
                self.batch.push_exec(p.exec());
            }
            // A portal this half did not bind (a cursor DECLAREd in SQL, or one that does
            // not exist): an execution all the same, so that the server's answers stay
            // matched to the executions after it (their audit, the values to withhold).
            None => self.batch.push_exec(Numbered::NONE.exec()),
        }
        self.batch.push(f.raw);
        Ok(())
    }

    async fn describe_or_close(&mut self, f: Frame) -> Result<(), SessionError> {
        let (target, name) = frontend::target(&f).map_err(protocol)?;
        if names::is_reserved(&name) {
            return self.reserved_name(&name).await;
        }
        if self.batch.discarding() {
            return Ok(());
        }
        if f.tag == frontend::CLOSE {
            if target == b'S' {
                self.prepared.remove(&name);
                self.declared.remove(&name);
            } else {
                self.portals.remove(&name);
                self.bound.remove(&name);
            }
        } else {
            if target == b'S'
                && let Some((generation, _)) = self.declared.get(&name)
            {
                self.batch
                    .push_statement_describe(name.clone(), *generation);
            }
            if self.masked {
                self.batch.push_describe(false);
                if target == b'P' {
                    self.described = Some(name);
                }
            }
        }
        self.batch.push(f.raw);
        Ok(())
    }

    async fn function_call(&mut self, f: Frame) -> Result<(), SessionError> {
        if self.batch.discarding() {
            return Ok(());
        }
        self.settle().await?;
        self.batch.send_held();
        self.carry_out().await?;
        let oid = frontend::function_call(&f).map_err(protocol)?;
        let request = match self.function_by_oid(oid).await? {
            Ok(r) => Ok(function_call_request(oid, r)),
            Err(functions::Unresolved::Unknown(why)) => Err(why),
            Err(functions::Unresolved::Server(error)) => {
                // Not run: on record, and the server's error in its place.
                let text = format!("<FunctionCall oid {oid}>");
                self.gate
                    .refuse(&text, functions::lookup_failed(&error))
                    .await?;
                self.note(Note::Refuse(error)).await?;
                return self.note(Note::Ready).await;
            }
        };
        let text = format!("<FunctionCall oid {oid}>");
        let veto = self.masked.then(|| {
            masking_refusal(
                "a FunctionCall result cannot be masked; call the function in a SELECT".into(),
            )
        });
        if self.shared.lexer_unsafe.load(Ordering::Relaxed) {
            self.gate.mark_unsafe(LEXER_UNSAFE);
        }
        let requests: Vec<&Request> = request.iter().collect();
        let ask = Ask {
            text: &text,
            requests: match &request {
                Ok(_) => Ok(&requests),
                Err(e) => Err(e.clone()),
            },
            veto,
            context: Vec::new(),
        };
        let judged = self.gate.judge(ask).await?;
        let n = judged.statements.first().copied().unwrap_or(0);
        match self.decided(judged.verdict).await? {
            Ok(()) => {
                let exec = Numbered {
                    statement: n,
                    ..Numbered::NONE
                };
                self.note(Note::Execs(vec![exec.exec()])).await?;
                self.note(Note::Close).await?;
                self.upstream.write_all(&f.raw).await?;
            }
            Err(d) => self.refuse_on_the_server(refusal::frame(&d)).await?,
        }
        Ok(())
    }

    /// A Query the server would reject as malformed (a NUL inside the text, no
    /// terminator): answered as the server answers it, ERROR 08P01 and ReadyForQuery,
    /// and journaled; the session goes on.
    async fn malformed_query(&mut self, f: &Frame, e: Malformed) -> Result<(), SessionError> {
        let text = String::from_utf8_lossy(f.body());
        let d = Decision {
            action: Action::Deny,
            rule: UNCLASSIFIABLE_RULE.into(),
            reason: format!("invalid message format: {e}"),
        };
        self.gate.refuse(&text, d).await?;
        let error = backend::error(
            Severity::Error,
            sqlstate::PROTOCOL_VIOLATION,
            "invalid message format",
            None,
            None,
        );
        self.note(Note::Refuse(error)).await?;
        self.note(Note::Ready).await
    }

    /// A worker's statement or portal named with the agent's reserved prefix: the batch
    /// is refused (see [`super::names`]).
    async fn reserved_name(&mut self, name: &str) -> Result<(), SessionError> {
        if self.batch.discarding() {
            return Ok(());
        }
        let d = reserved();
        self.gate
            .refuse(&format!("<name {name}>"), d.clone())
            .await?;
        self.batch.refuse(&d);
        Ok(())
    }

    /// Carries out what the batch machine decided, in order.
    async fn carry_out(&mut self) -> Result<(), SessionError> {
        for out in self.batch.take() {
            match out {
                Out::Note(n) => self.note(n).await?,
                Out::Send(bytes) => {
                    for ack in self.acks.drain(..) {
                        ack.stored().await?;
                    }
                    self.upstream.write_all(&bytes).await?
                }
            }
        }
        Ok(())
    }

    /// Sends the column-name preload when it is due and no batch of the worker's is open.
    async fn maybe_preload(&mut self, tag: u8) -> Result<(), SessionError> {
        let Some(preload) = &mut self.preload else {
            return Ok(());
        };
        if !self.batch.is_idle()
            || !preload.due(tag, self.shared.mask_stale.load(Ordering::Acquire))
        {
            return Ok(());
        }
        self.shared.mask_stale.store(false, Ordering::Release);
        let (what, bytes) = preload.group();
        self.note(Note::Inject(what)).await?;
        self.upstream.write_all(&bytes).await?;
        Ok(())
    }

    /// Statements now going upstream: DDL (and the end of a transaction that had DDL)
    /// makes the masking column names stale, so the next group gets a fresh preload.
    fn forwarded(&mut self, numbered: &[Numbered]) {
        {
            let mut txn = self.shared.txn.lock().unwrap_or_else(|p| p.into_inner());
            for n in numbered {
                if let Some((text, tables)) = &n.writes {
                    txn.wrote(super::txn::Write {
                        statement: n.statement,
                        text: text.clone(),
                        tables: tables.clone(),
                        rows: None,
                    });
                }
            }
        }
        let Some(preload) = &mut self.preload else {
            return;
        };
        for n in numbered {
            if preload.stale_after(n.catalog) {
                self.shared.mask_stale.store(true, Ordering::Release);
            }
        }
    }

    async fn note(&self, n: Note) -> Result<(), SessionError> {
        self.notes
            .send(n)
            .await
            .map_err(|_| SessionError::Io(std::io::Error::other("session is ending")))
    }
}

fn protocol(e: Malformed) -> SessionError {
    SessionError::Protocol(e.to_string())
}
