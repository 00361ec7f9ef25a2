//! The worker's half of a session: reads each message, judges what runs SQL, journals
//! the decision, then forwards (allowed) or answers (refused).
//!
//! - Query: every statement of the text is judged; if any is refused none runs, and
//!   the worker gets ErrorResponse 42501 + ReadyForQuery as if the server refused it.
//! - Extended protocol: Parse is judged; Bind/Describe/Execute/Close are held with it
//!   until Sync or Flush, so a refusal in a batch drops the whole unsent batch. A
//!   refusal is answered at once (as the server answers an error), the rest of the
//!   batch is discarded until Sync, and that Sync gets ReadyForQuery, as PostgreSQL
//!   does after an error. If part of the batch had already gone upstream (Flush, or a
//!   large batch), an Execute of a missing portal makes the server fail the batch
//!   itself (rolling back its implicit transaction) and its error is replaced with
//!   the refusal.
//! - FunctionCall is judged as kind `function_call` (refused unless a rule allows it).
//! - COPY data, Terminate: forwarded. Anything else ends the session (fail closed).
//!
//! On a masked connection (see [`super::masking`]) the worker half also makes sure the
//! server half can plan every result: it injects the column-name preload before the
//! first statement and after DDL, a Describe of the portal before each Execute the
//! worker did not describe, and a describe of a COPY's columns before a COPY TO STDOUT;
//! it refuses what cannot be masked (FunctionCall, COPY in CSV or binary format).

use std::{collections::HashMap, sync::Arc, sync::atomic::Ordering, time::Instant};

use bytes::Bytes;
use tokio::{
    io::{AsyncWriteExt, ReadHalf, WriteHalf},
    sync::mpsc,
};
use tokio_util::sync::CancellationToken;

use super::sql::{CopyOut, Kind, Statement, Unclassifiable};
use super::{
    Context, SessionError, Shared,
    masking::{CopyTextOptions, PlanResults},
    wire::backend::{self, Severity, sqlstate},
    wire::frame::{Frame, FrameError, FrameReader},
    wire::frontend,
};
use crate::{
    journal::Event,
    policy::{Action, Decision, Policy},
    tls::stream::{UpstreamStream, WorkerStream},
};

/// Held batch size before it is sent upstream without waiting for Sync.
const MAX_HELD_BYTES: usize = 1 << 20;
/// Statement text kept in a journal record.
const MAX_AUDIT_TEXT: usize = 16 * 1024;

/// Names of what the proxy prepares on the server itself (never shown to the worker).
const INJECTED_STATEMENT: &str = "pam_agent_injected";
/// Column names are reloaded at least this often on a masked session, so columns other
/// sessions add or rename are followed (tables they create are caught by the horizon).
const PRELOAD_MAX_AGE: std::time::Duration = std::time::Duration::from_secs(60);

/// One execution whose completion the server half audits.
#[derive(Debug, Clone)]
pub struct Exec {
    pub statement: u64,
    pub started: Instant,
    pub catalog: Catalog,
    /// A SQL-level PREPARE / DEALLOCATE / DISCARD: applied to the session's prepared
    /// statements once the server completes it (a failed PREPARE changes nothing).
    pub prepares: Option<Arc<Statement>>,
}

/// What an execution may change in the catalog, which the masking column names follow.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Catalog {
    #[default]
    Unchanged,
    /// DDL, or procedural code (DO, CALL) that may run it: OIDs and attribute numbers
    /// may now name other columns.
    Ddl,
    /// BEGIN / COMMIT / ROLLBACK / SAVEPOINT: may undo or publish earlier DDL.
    Transaction,
}

impl Catalog {
    fn of(st: &Statement) -> Catalog {
        if st
            .kinds
            .iter()
            .any(|k| matches!(k, Kind::Ddl | Kind::Do | Kind::Call))
        {
            Catalog::Ddl
        } else if st.kind() == Kind::Transaction {
            Catalog::Transaction
        } else {
            Catalog::Unchanged
        }
    }
}

/// A statement number with what its execution changes besides data.
#[derive(Debug, Clone)]
struct Judged {
    statement: u64,
    catalog: Catalog,
    prepares: Option<Arc<Statement>>,
}

impl Judged {
    fn exec(&self) -> Exec {
        Exec {
            statement: self.statement,
            started: Instant::now(),
            catalog: self.catalog,
            prepares: self.prepares.clone(),
        }
    }
}

/// A group of messages the proxy sends upstream on its own, at a point where no batch
/// of the worker's is open; the server half swallows every answer to it.
#[derive(Debug, Clone)]
pub enum Injected {
    /// The catalog query naming every column a masking rule can name.
    Preload,
    /// A describe of a COPY's columns, planned for its rows in this text format.
    CopyDescribe(CopyTextOptions),
}

/// What the worker half tells the server half, always before the bytes concerned go
/// upstream (so the server half knows of them before any answer arrives).
pub enum Note {
    /// Executions now sent upstream, in order.
    Execs(Vec<Exec>),
    /// The message that ends the current group (Query, Sync, FunctionCall) is sent:
    /// one ReadyForQuery will answer it.
    Close,
    /// Show this refusal instead of the server's answer to the missing-portal Execute
    /// just sent in the current group (see the module docs).
    Replace(Frame),
    /// A refusal answered by the proxy, once every group sent before it is answered.
    Refuse(Frame),
    /// A ReadyForQuery answered by the proxy (after a refusal), in the same order.
    Ready,
    /// Describe messages now sent upstream, in order: `true` for one the proxy added
    /// (its RowDescription / NoData is not shown to the worker).
    Describes(Vec<bool>),
    /// An injected group is about to be sent (between the worker's groups).
    Inject(Injected),
    /// End the session with this error.
    Fatal(Frame),
}

pub struct Judge<'a> {
    reader: FrameReader<ReadHalf<WorkerStream>>,
    upstream: WriteHalf<UpstreamStream>,
    notes: mpsc::Sender<Note>,
    ctx: &'a Context,
    shared: Arc<Shared>,
    /// Held extended-protocol messages of the current batch.
    held: Vec<Bytes>,
    held_bytes: usize,
    held_execs: Vec<Exec>,
    /// Part of the current batch already went upstream.
    batch_sent: bool,
    /// The batch had a refusal: discard until Sync.
    refused: Option<Decision>,
    /// Prepared statement name -> statement number (the unnamed one is "").
    prepared: HashMap<String, Judged>,
    portals: HashMap<String, Judged>,
    next_statement: u64,
    /// Masked connection: results must be planned (see the module docs).
    masked: bool,
    /// The column-name preload query, when a masking rule names columns.
    preload: Option<String>,
    /// The portal the last message described, if the last message was a Describe.
    described: Option<String>,
    held_describes: Vec<bool>,
    /// DDL was sent since the last transaction statement.
    ddl_in_txn: bool,
    /// When the last preload was sent.
    preloaded_at: Option<Instant>,
}

impl<'a> Judge<'a> {
    pub fn new(
        reader: FrameReader<ReadHalf<WorkerStream>>,
        upstream: WriteHalf<UpstreamStream>,
        notes: mpsc::Sender<Note>,
        ctx: &'a Context,
        shared: Arc<Shared>,
    ) -> Self {
        Judge {
            reader,
            upstream,
            notes,
            ctx,
            shared,
            held: Vec::new(),
            held_bytes: 0,
            held_execs: Vec::new(),
            batch_sent: false,
            refused: None,
            prepared: HashMap::new(),
            portals: HashMap::new(),
            next_statement: 1,
            masked: ctx.masker.is_some(),
            preload: ctx.masker.as_ref().and_then(|m| m.preload_query()),
            described: None,
            held_describes: Vec::new(),
            ddl_in_txn: false,
            preloaded_at: None,
        }
    }

    /// Returns a closing detail on a normal end.
    pub async fn run(mut self, done: &CancellationToken) -> Result<Option<String>, SessionError> {
        let before = self.reader.bytes;
        let r = self.run_inner(done).await;
        self.shared
            .from_worker
            .fetch_add(self.reader.bytes - before, Ordering::Relaxed);
        if let Err(e) = &r {
            let (code, msg) = match e {
                SessionError::Worker(FrameError::TooLarge { .. }) => {
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
            let f = tokio::select! {
                f = self.reader.next() => f.map_err(SessionError::Worker)?,
                _ = done.cancelled() => return Ok(None),
            };
            let Some(f) = f else {
                tracing::trace!(session = %self.ctx.session, "worker: end of stream");
                let _ = self.upstream.shutdown().await;
                return Ok(Some("worker closed the connection".into()));
            };
            tracing::trace!(session = %self.ctx.session, tag = %f.tag.escape_ascii(), len = f.raw.len(), "worker message");
            if self.preload.is_some() {
                self.maybe_preload(f.tag).await?;
            }
            let described = self.described.take();
            match f.tag {
                frontend::QUERY => self.query(f).await?,
                frontend::PARSE => self.parse(f).await?,
                frontend::BIND => {
                    let b = frontend::bind(&f).map_err(protocol)?;
                    if self.refused.is_none() {
                        if let Some(p) = self.prepared.get(&b.statement) {
                            self.portals.insert(b.portal, p.clone());
                        } else {
                            self.portals.remove(&b.portal);
                        }
                        self.hold(f).await?;
                    }
                }
                frontend::EXECUTE => {
                    let portal = frontend::execute(&f).map_err(protocol)?;
                    if self.refused.is_none() {
                        if self.masked && described.as_ref() != Some(&portal) {
                            // The server half plans the rows from this RowDescription.
                            self.held_describes.push(true);
                            self.hold(frontend::describe_portal(&portal)).await?;
                        }
                        if let Some(p) = self.portals.get(&portal) {
                            self.held_execs.push(p.exec());
                        }
                        self.hold(f).await?;
                    }
                }
                frontend::DESCRIBE | frontend::CLOSE => {
                    let (kind, name) = frontend::target(&f).map_err(protocol)?;
                    if self.refused.is_none() {
                        if f.tag == frontend::CLOSE {
                            if kind == b'S' {
                                self.prepared.remove(&name);
                            } else {
                                self.portals.remove(&name);
                            }
                        } else if self.masked {
                            self.held_describes.push(false);
                            if kind == b'P' {
                                self.described = Some(name);
                            }
                        }
                        self.hold(f).await?;
                    }
                }
                frontend::FLUSH => {
                    if self.refused.is_none() {
                        self.held.push(f.raw);
                        self.send_held().await?;
                    }
                }
                frontend::SYNC => self.sync(f).await?,
                frontend::FUNCTION_CALL => self.function_call(f).await?,
                frontend::COPY_DATA | frontend::COPY_DONE | frontend::COPY_FAIL => {
                    // Data of a COPY the server accepted; outside COPY the server
                    // ignores them. Never judged: the COPY statement was.
                    if self.refused.is_none() {
                        self.send_held().await?;
                        self.upstream.write_all(&f.raw).await?;
                    }
                }
                frontend::TERMINATE => {
                    self.send_held().await?;
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
        }
    }

    async fn query(&mut self, f: Frame) -> Result<(), SessionError> {
        if self.refused.is_some() {
            // After an error the server discards everything until Sync; so do we.
            return Ok(());
        }
        // A COPY's describe can only be injected between the worker's groups.
        let clean = self.held.is_empty() && !self.batch_sent;
        self.send_held().await?;
        let text = frontend::query(&f).map_err(protocol)?;
        let via = Via::Query { clean };
        let (decision, numbers, copy) = self.judge_text(text, via).await?;
        if decision.allowed() {
            if let Some(copy) = copy {
                self.inject_copy_describe(copy).await?;
            }
            let execs = numbers.iter().map(Judged::exec).collect();
            self.note(Note::Execs(execs)).await?;
            self.note(Note::Close).await?;
            self.upstream.write_all(&f.raw).await?;
        } else {
            self.note(Note::Refuse(refusal(&decision))).await?;
            self.note(Note::Ready).await?;
        }
        Ok(())
    }

    async fn parse(&mut self, f: Frame) -> Result<(), SessionError> {
        let p = frontend::parse(&f).map_err(protocol)?;
        if self.refused.is_some() {
            return Ok(());
        }
        let name = p.statement.clone();
        let (decision, numbers, _) = self.judge_text(p.query, Via::Parse).await?;
        if decision.allowed() {
            // A Parse holds one statement (the server refuses more); an empty one
            // gets number 0 (nothing to audit at completion).
            let p = numbers.into_iter().next().unwrap_or(Judged {
                statement: 0,
                catalog: Catalog::Unchanged,
                prepares: None,
            });
            self.prepared.insert(name, p);
            self.hold(f).await
        } else {
            self.prepared.remove(&name);
            self.refuse_batch(decision).await
        }
    }

    async fn function_call(&mut self, f: Frame) -> Result<(), SessionError> {
        if self.refused.is_some() {
            return Ok(());
        }
        self.send_held().await?;
        let oid = frontend::function_call(&f).map_err(protocol)?;
        let st = Policy::function_call_statement(oid);
        let decision = if self.shared.lexer_unsafe.load(Ordering::Relaxed) {
            unsafe_session()
        } else if self.masked {
            masking_refusal(
                "a FunctionCall result cannot be masked; call the function in a SELECT".into(),
            )
        } else {
            self.ctx
                .policy
                .current()
                .decide(&self.ctx.principal, &self.ctx.resource, &st)
        };
        let n = self.record(&st, &decision).await?;
        if decision.allowed() {
            self.note(Note::Execs(vec![Exec {
                statement: n,
                started: Instant::now(),
                catalog: Catalog::Unchanged,
                prepares: None,
            }]))
            .await?;
            self.note(Note::Close).await?;
            self.upstream.write_all(&f.raw).await?;
        } else {
            self.note(Note::Refuse(refusal(&decision))).await?;
            self.note(Note::Ready).await?;
        }
        Ok(())
    }

    async fn sync(&mut self, f: Frame) -> Result<(), SessionError> {
        match self.refused.take() {
            None => {
                self.held.push(f.raw);
                self.note_held().await?;
                self.note(Note::Close).await?;
                self.write_held().await?;
            }
            // The server was already made to fail this batch: its Sync ends it.
            Some(_) if self.batch_sent => {
                self.note(Note::Close).await?;
                self.upstream.write_all(&f.raw).await?;
            }
            Some(_) => self.note(Note::Ready).await?,
        }
        self.batch_sent = false;
        Ok(())
    }

    /// Drops the unsent part of the batch, answers the refusal now (as the server
    /// answers an error at once), and discards the rest of the batch until Sync.
    async fn refuse_batch(&mut self, decision: Decision) -> Result<(), SessionError> {
        self.held.clear();
        self.held_bytes = 0;
        self.held_execs.clear();
        self.held_describes.clear();
        if self.batch_sent {
            // Part of the batch is on the server: make it fail there, so its implicit
            // transaction is rolled back and it skips to Sync like after any error.
            self.note(Note::Replace(refusal(&decision))).await?;
            let mut bytes = frontend::execute_missing_portal().raw.to_vec();
            bytes.extend_from_slice(&frontend::flush().raw);
            self.upstream.write_all(&bytes).await?;
        } else {
            self.note(Note::Refuse(refusal(&decision))).await?;
        }
        self.refused = Some(decision);
        Ok(())
    }

    async fn hold(&mut self, f: Frame) -> Result<(), SessionError> {
        self.held_bytes += f.raw.len();
        self.held.push(f.raw);
        if self.held_bytes > MAX_HELD_BYTES {
            self.send_held().await?;
        }
        Ok(())
    }

    /// Sends the held part of the batch upstream now (Flush, COPY data, size).
    async fn send_held(&mut self) -> Result<(), SessionError> {
        if self.held.is_empty() {
            return Ok(());
        }
        self.note_held().await?;
        self.batch_sent = true;
        self.write_held().await
    }

    /// Tells the server half what the held messages about to go upstream will answer.
    async fn note_held(&mut self) -> Result<(), SessionError> {
        let execs = std::mem::take(&mut self.held_execs);
        if !execs.is_empty() {
            self.note(Note::Execs(execs)).await?;
        }
        let describes = std::mem::take(&mut self.held_describes);
        if !describes.is_empty() {
            self.note(Note::Describes(describes)).await?;
        }
        Ok(())
    }

    /// Sends the column-name preload when it is due and no batch of the worker's is
    /// open: before the session's first statement and after DDL. Extended protocol with
    /// a named statement and portal, so the worker's unnamed ones survive.
    async fn maybe_preload(&mut self, tag: u8) -> Result<(), SessionError> {
        let starts_work = matches!(
            tag,
            frontend::QUERY
                | frontend::PARSE
                | frontend::BIND
                | frontend::DESCRIBE
                | frontend::EXECUTE
                | frontend::FUNCTION_CALL
        );
        if !starts_work || !self.held.is_empty() || self.batch_sent || self.refused.is_some() {
            return Ok(());
        }
        let old = self
            .preloaded_at
            .is_some_and(|t| t.elapsed() > PRELOAD_MAX_AGE);
        if !self.shared.mask_stale.swap(false, Ordering::AcqRel) && !old {
            return Ok(());
        }
        self.preloaded_at = Some(Instant::now());
        let Some(sql) = &self.preload else {
            return Ok(());
        };
        let mut bytes = Vec::with_capacity(sql.len() + 128);
        for f in [
            frontend::parse_message(INJECTED_STATEMENT, sql),
            frontend::bind_message(INJECTED_STATEMENT, INJECTED_STATEMENT),
            frontend::execute_message(INJECTED_STATEMENT),
            frontend::close_portal(INJECTED_STATEMENT),
            frontend::close_statement(INJECTED_STATEMENT),
            frontend::sync(),
        ] {
            bytes.extend_from_slice(&f.raw);
        }
        self.note(Note::Inject(Injected::Preload)).await?;
        self.upstream.write_all(&bytes).await?;
        Ok(())
    }

    /// Asks the server for the columns of a COPY TO STDOUT about to run, so the server
    /// half can plan its rows.
    async fn inject_copy_describe(&mut self, copy: CopyOut) -> Result<(), SessionError> {
        let mut bytes = Vec::with_capacity(copy.describe.len() + 64);
        for f in [
            frontend::parse_message(INJECTED_STATEMENT, &copy.describe),
            frontend::describe_statement(INJECTED_STATEMENT),
            frontend::close_statement(INJECTED_STATEMENT),
            frontend::sync(),
        ] {
            bytes.extend_from_slice(&f.raw);
        }
        let options = CopyTextOptions {
            delimiter: copy.delimiter,
            null: copy.null.into_bytes(),
        };
        self.note(Note::Inject(Injected::CopyDescribe(options)))
            .await?;
        self.upstream.write_all(&bytes).await?;
        Ok(())
    }

    async fn write_held(&mut self) -> Result<(), SessionError> {
        let total: usize = self.held.iter().map(Bytes::len).sum();
        let mut buf = Vec::with_capacity(total);
        for b in self.held.drain(..) {
            buf.extend_from_slice(&b);
        }
        self.held_bytes = 0;
        self.upstream.write_all(&buf).await?;
        Ok(())
    }

    async fn note(&self, n: Note) -> Result<(), SessionError> {
        self.notes
            .send(n)
            .await
            .map_err(|_| SessionError::Io(std::io::Error::other("session is ending")))
    }

    /// Classifies and decides a SQL text, journals one record per statement, and
    /// returns the decision with the statements' numbers (and, for a COPY TO STDOUT on a
    /// masked connection, what to describe first).
    async fn judge_text(
        &mut self,
        text: &[u8],
        via: Via,
    ) -> Result<(Decision, Vec<Judged>, Option<CopyOut>), SessionError> {
        let text = match frontend::text(text) {
            Ok(t) => t,
            Err(_) => {
                let d = Decision::unclassifiable(&Unclassifiable::Unsupported(
                    "text that is not UTF-8".into(),
                ));
                let lossy = String::from_utf8_lossy(text);
                self.record_unclassified(&lossy, &d).await?;
                return Ok((d, Vec::new(), None));
            }
        };
        if self.shared.lexer_unsafe.load(Ordering::Relaxed) {
            let d = unsafe_session();
            self.record_unclassified(text, &d).await?;
            return Ok((d, Vec::new(), None));
        }
        let classified = self.ctx.classifier.classify(text).await;
        // SQL-level EXECUTE is judged as the statement PREPARE gave that name.
        let resolved = classified
            .as_ref()
            .as_ref()
            .ok()
            .filter(|sts| sts.iter().any(|st| st.prepared.is_some()))
            .map(|sts| Ok(self.resolve_prepared(sts)));
        let classified = match &resolved {
            Some(r) => r,
            None => classified.as_ref(),
        };
        let ctx = self.ctx;
        let policy = ctx.policy.current();
        let mut decision = policy.decide_all(&ctx.principal, &ctx.resource, classified);
        let mut copy = None;
        if let (Some(masker), true, Ok(statements)) = (&ctx.masker, decision.allowed(), classified)
        {
            match masking_check(masker, statements, via).await {
                Ok(c) => copy = c,
                Err(refusal) => decision = refusal,
            }
        }
        let mut numbers = Vec::new();
        match classified {
            Ok(statements) => {
                for st in statements {
                    // Each allowed statement is recorded with its own rule; a refused
                    // text is recorded with the refusing decision throughout.
                    let d = if decision.allowed() {
                        policy.decide(&ctx.principal, &ctx.resource, st)
                    } else {
                        decision.clone()
                    };
                    let catalog = Catalog::of(st);
                    if decision.allowed() {
                        self.note_catalog(catalog);
                    }
                    let prepares = st
                        .prepared
                        .as_ref()
                        .filter(|p| !matches!(p, super::sql::Prepared::Execute(_)))
                        .map(|_| Arc::new(st.clone()));
                    numbers.push(Judged {
                        statement: self.record(st, &d).await?,
                        catalog,
                        prepares,
                    });
                }
            }
            Err(_) => self.record_unclassified(text, &decision).await?,
        }
        Ok((decision, numbers, copy))
    }

    /// Each `EXECUTE name` replaced by what `name` was prepared as (by PREPAREs the server
    /// completed, and earlier ones in the same text); unknown names stay `execute` with
    /// `dynamic_sql`, which policy refuses unless a rule permits it.
    fn resolve_prepared(&self, statements: &[Statement]) -> Vec<Statement> {
        let mut known = self
            .shared
            .prepared
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone();
        statements
            .iter()
            .map(|st| {
                let r = known.resolve(st).unwrap_or_else(|| st.clone());
                known.completed(st);
                r
            })
            .collect()
    }

    /// On a masked connection: DDL (and the end of a transaction that had DDL) makes the
    /// column names stale, so the next group of the worker's gets a fresh preload.
    fn note_catalog(&mut self, catalog: Catalog) {
        if self.preload.is_none() {
            return;
        }
        match catalog {
            Catalog::Ddl => {
                self.ddl_in_txn = true;
                self.shared.mask_stale.store(true, Ordering::Release);
            }
            Catalog::Transaction if self.ddl_in_txn => {
                self.ddl_in_txn = false;
                self.shared.mask_stale.store(true, Ordering::Release);
            }
            _ => {}
        }
    }

    /// Journals a classified statement; returns its number within the session.
    async fn record(&mut self, st: &Statement, d: &Decision) -> Result<u64, SessionError> {
        self.journal_statement(&st.text, Some(st), d).await
    }

    /// Journals a text the classifier could not read (it is refused).
    async fn record_unclassified(&mut self, text: &str, d: &Decision) -> Result<(), SessionError> {
        self.journal_statement(text, None, d).await.map(|_| ())
    }

    /// The one place a statement record is built: written before anything goes upstream.
    async fn journal_statement(
        &mut self,
        text: &str,
        st: Option<&Statement>,
        d: &Decision,
    ) -> Result<u64, SessionError> {
        let n = self.next_statement;
        self.next_statement += 1;
        let event = Event::Statement {
            statement: Some(n),
            text: Some(audit_text(text)),
            fingerprint: st
                .filter(|st| !st.fingerprint.is_empty())
                .map(|st| st.fingerprint.clone()),
            kinds: st
                .map(|st| st.kinds.iter().map(|k| k.as_str().to_owned()).collect())
                .unwrap_or_default(),
            tables: st
                .map(|st| st.tables.iter().cloned().collect())
                .unwrap_or_default(),
            flags: st
                .map(|st| st.flags.iter().map(|f| f.as_str().to_owned()).collect())
                .unwrap_or_default(),
            decision: d.action.into(),
            rule: Some(d.rule.clone()),
            reason: Some(d.reason.clone()),
            duration_ms: None,
            rows: None,
            error: None,
        };
        self.ctx
            .journal
            .record(Some(self.ctx.session), event)
            .await?;
        Ok(n)
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

/// What a masked connection cannot run, whatever the policy allows: statements that
/// filter, join, sort or group on a column a rule masks with `refuse_side_channels`, and
/// a COPY TO STDOUT other than alone in a simple Query, in text format. Returns the COPY
/// to describe.
async fn masking_check(
    masker: &crate::mask::Masker,
    statements: &[Statement],
    via: Via,
) -> Result<Option<CopyOut>, Decision> {
    for st in statements {
        if let Some(hit) = masker.side_channels(&st.columns).into_iter().next() {
            let r = &hit.reference;
            let column = [
                r.schema.as_deref(),
                r.table.as_deref(),
                Some(r.column.as_str()),
            ]
            .into_iter()
            .flatten()
            .collect::<Vec<_>>()
            .join(".");
            return Err(Decision {
                action: Action::Deny,
                rule: hit.rule.clone(),
                reason: format!(
                    "{column} is masked (pattern {}); using it in {:?} could reveal its values",
                    hit.pattern, r.clause
                ),
            });
        }
    }
    let Some(st) = statements
        .iter()
        .find(|st| st.kinds.contains(&Kind::CopyOut))
    else {
        return Ok(None);
    };
    if !matches!(via, Via::Query { clean: true }) || statements.len() != 1 {
        return Err(masking_refusal(
            "on a masked connection, COPY TO STDOUT must be sent alone, as a simple query".into(),
        ));
    }
    let text = st.text.clone();
    let (tx, rx) = tokio::sync::oneshot::channel();
    // The parser recurses as deep as the statement nests: give it a known, large stack.
    let spawned = std::thread::Builder::new()
        .name("pam-copy-parse".into())
        .stack_size(16 << 20)
        .spawn(move || {
            let _ = tx.send(super::sql::copy_out(&text));
        });
    let parsed = match spawned {
        Ok(_) => rx.await.ok(),
        Err(_) => None,
    };
    match parsed {
        Some(Ok(copy)) => Ok(Some(copy)),
        Some(Err(e)) => Err(masking_refusal(e.to_string())),
        None => Err(masking_refusal(
            "the COPY statement could not be analysed".into(),
        )),
    }
}

/// A refusal by masking (not by a policy rule).
fn masking_refusal(reason: String) -> Decision {
    Decision {
        action: Action::Deny,
        rule: MASKING_RULE.into(),
        reason,
    }
}

/// The rule name of refusals made so that no value escapes masking.
pub const MASKING_RULE: &str = "masking";

fn protocol(e: super::wire::frame::Malformed) -> SessionError {
    SessionError::Protocol(e.to_string())
}

fn unsafe_session() -> Decision {
    Decision {
        action: Action::Deny,
        rule: crate::policy::UNCLASSIFIABLE_RULE.into(),
        reason: "the session's client_encoding or standard_conforming_strings makes SQL text \
                 ambiguous; statements are refused"
            .into(),
    }
}

fn audit_text(text: &str) -> String {
    if text.len() <= MAX_AUDIT_TEXT {
        return text.to_owned();
    }
    let mut end = MAX_AUDIT_TEXT;
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}... [{} bytes]", &text[..end], text.len())
}

/// The ErrorResponse a refused statement gets: 42501, naming the rule.
pub fn refusal(d: &Decision) -> Frame {
    let message = format!(
        "pam-agent refused the statement (rule \"{}\"): {}",
        d.rule, d.reason
    );
    let detail = format!("rule: {}; decision: {}", d.rule, d.action);
    let hint = match d.action {
        Action::RequireApproval => {
            Some("This statement needs an approval, which pam-agent cannot grant yet.")
        }
        _ => None,
    };
    backend::error(
        Severity::Error,
        sqlstate::REFUSED,
        &message,
        Some(&detail),
        hint,
    )
}
