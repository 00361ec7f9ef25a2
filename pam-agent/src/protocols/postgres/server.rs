//! The server's half of a session: forwards what the server sends, completes the audit
//! of each execution ([`Completions`]: rows from CommandComplete, duration), and answers
//! refusals in their place in the stream: after every group sent before them, with the
//! transaction status the server last reported. On a masked connection, result rows
//! go through [`ResultMasking`] instead of being forwarded as they came, and the answers
//! to what the worker half injected are swallowed.

use std::{
    collections::VecDeque,
    sync::{Arc, atomic::Ordering},
};

use tokio::{
    io::{ReadHalf, WriteHalf},
    sync::mpsc,
};
use tokio_util::sync::CancellationToken;

use super::{
    Context, SessionError, Shared, answers,
    io::{watch_parameter, write_out},
    known_functions::{LookupError, Row as FunctionRow},
    masking::{CatalogRow, ColumnResolver, Definition, ResultMasking},
    notes::{Catalog, Exec, Injected, LookupAnswer, Note},
    wire::{
        backend::{self, Severity, sqlstate},
        frame::{Frame, FrameError, FrameReader},
    },
};
use crate::{
    govern::Completions,
    journal::JournalError,
    mask::Masker,
    tls::stream::{UpstreamStream, WorkerStream},
};

/// Output is written when nothing more is buffered, or at this size.
const FLUSH_AT: usize = 64 * 1024;

enum Pending {
    /// Messages sent upstream that one ReadyForQuery will answer (once closed).
    Group {
        execs: VecDeque<Exec>,
        /// Describes sent, in order: `true` for the proxy's own.
        describes: VecDeque<bool>,
        /// Statement describes sent, in order, whose ParameterDescription is due.
        statement_describes: VecDeque<(String, u64)>,
        closed: bool,
        failed: bool,
        replace: Option<Frame>,
        /// Closing answers due to the worker's messages sent so far, and received.
        sent: usize,
        answered: usize,
        /// Function lookups sent inside this group, in order.
        inline: VecDeque<InlineLookup>,
    },
    /// A group the worker half sent on its own: every answer is swallowed.
    Injected {
        what: Injected,
        rows: Vec<CatalogRow>,
        failed: bool,
        /// A function lookup's rows, or why it failed.
        functions: Result<Vec<FunctionRow>, LookupError>,
    },
    /// A refusal to answer once the groups ahead of it are answered.
    Refusal(Frame),
    /// A ReadyForQuery to answer likewise (after a refusal).
    Ready,
}

/// A function lookup sent inside a worker's open group: its answers follow the closing
/// answer number `at` of the worker's messages.
struct InlineLookup {
    at: usize,
    answer: LookupAnswer,
    rows: Result<Vec<FunctionRow>, LookupError>,
    closed: usize,
}

/// Closing answers of an inline lookup (see [`super::known_functions::inline_lookup`]).
const INLINE_ANSWERS: usize = 6;

pub struct Server<'a> {
    reader: FrameReader<ReadHalf<UpstreamStream>>,
    worker: WriteHalf<WorkerStream>,
    notes: mpsc::Receiver<Note>,
    notes_open: bool,
    queue: VecDeque<Pending>,
    status: u8,
    /// DataRows since the last completion (rows of a suspended portal).
    rows_seen: u64,
    out: Vec<u8>,
    ctx: &'a Context,
    shared: Arc<Shared>,
    completions: Option<Completions>,
    masking: Option<ResultMasking>,
    /// DDL completed in the open transaction: its end changes the catalog again.
    ddl_in_txn: bool,
    /// Where the answers to injected function lookups go, in order.
    lookups: VecDeque<LookupAnswer>,
}

impl<'a> Server<'a> {
    pub fn new(
        reader: FrameReader<ReadHalf<UpstreamStream>>,
        worker: WriteHalf<WorkerStream>,
        notes: mpsc::Receiver<Note>,
        status: u8,
        masker: Option<Masker>,
        ctx: &'a Context,
        shared: Arc<Shared>,
    ) -> Self {
        Server {
            reader,
            worker,
            notes,
            notes_open: true,
            queue: VecDeque::new(),
            status,
            rows_seen: 0,
            out: Vec::with_capacity(FLUSH_AT),
            masking: masker.map(ResultMasking::new),
            ctx,
            shared,
            completions: None,
            ddl_in_txn: false,
            lookups: VecDeque::new(),
        }
    }

    pub async fn run(mut self, done: &CancellationToken) -> Result<Option<String>, SessionError> {
        self.completions = Some(Completions::new(&self.ctx.session));
        let r = self.run_inner(done).await;
        if let Err(SessionError::Upstream(e @ FrameError::OverBudget(_))) = &r {
            // The worker is told why its session ends, as for its own long messages.
            let msg = format!("pam-agent: server: {e}");
            let f = backend::error(Severity::Fatal, sqlstate::TOO_LARGE, &msg, None, None);
            self.out.extend_from_slice(&f.raw);
        }
        let _ = write_out(&mut self.worker, &mut self.out, &self.shared).await;
        if let Some(c) = self.completions.take() {
            c.finish().await?;
        }
        r
    }

    async fn run_inner(
        &mut self,
        done: &CancellationToken,
    ) -> Result<Option<String>, SessionError> {
        loop {
            tokio::select! {
                n = self.notes.recv(), if self.notes_open => match n {
                    Some(n) => {
                        if self.apply(n)? {
                            return Ok(None);
                        }
                    }
                    None => self.notes_open = false,
                },
                f = self.reader.next() => {
                    // Everything noted so far was noted before its bytes went upstream,
                    // so it is known before the answer to it is handled. (Also before an
                    // end of stream: the worker half closing the server's side after a
                    // fatal error must not hide that error.)
                    while let Ok(n) = self.notes.try_recv() {
                        if self.apply(n)? {
                            return Ok(None);
                        }
                    }
                    let Some(f) = f.map_err(SessionError::Upstream)? else {
                        return Ok(Some("server closed the connection".into()));
                    };
                    let tag = f.tag;
                    self.server_message(f).await?;
                    self.rows_in_a_run(tag).await?;
                }
                _ = done.cancelled(), if !self.notes_open => return Ok(None),
            }
            if !self.reader.has_frame() || self.out.len() >= FLUSH_AT {
                write_out(&mut self.worker, &mut self.out, &self.shared).await?;
            }
        }
    }

    /// The rows of the result streaming now that are already read, handled in one run
    /// rather than one wakeup each (the hot path of a large result). A row only continues
    /// a result whose description (and every note before it) was handled already.
    async fn rows_in_a_run(&mut self, tag: u8) -> Result<(), SessionError> {
        if !matches!(tag, backend::DATA_ROW | backend::COPY_DATA) {
            return Ok(());
        }
        while self.out.len() < FLUSH_AT {
            let Some(f) = self
                .reader
                .next_buffered(tag)
                .map_err(SessionError::Upstream)?
            else {
                break;
            };
            self.server_message(f).await?;
        }
        Ok(())
    }

    /// Returns true when the session must end (fatal error written).
    fn apply(&mut self, n: Note) -> Result<bool, SessionError> {
        match n {
            Note::Execs(execs) => {
                if let Some(Pending::Group {
                    execs: e, failed, ..
                }) = self.open_group()
                    && !*failed
                {
                    e.extend(execs);
                }
            }
            Note::Describes(d) => {
                if let Some(Pending::Group {
                    describes, failed, ..
                }) = self.open_group()
                    && !*failed
                {
                    describes.extend(d);
                }
            }
            Note::StatementDescribes(d) => {
                if let Some(Pending::Group {
                    statement_describes,
                    failed,
                    ..
                }) = self.open_group()
                    && !*failed
                {
                    statement_describes.extend(d);
                }
            }
            Note::Inject(what) => self.queue.push_back(Pending::Injected {
                what,
                rows: Vec::new(),
                failed: false,
                functions: Ok(Vec::new()),
            }),
            Note::Lookup(answer) => self.lookups.push_back(answer),
            Note::Sent(n) => {
                if let Some(Pending::Group { sent, .. }) = self.open_group() {
                    *sent += n;
                }
            }
            Note::InlineLookup(answer) => {
                if let Some(Pending::Group {
                    sent,
                    failed,
                    inline,
                    ..
                }) = self.open_group()
                {
                    if *failed {
                        // The server skips everything until Sync, this lookup too.
                        let _ = answer.send(Err(LookupError::Skipped));
                    } else {
                        inline.push_back(InlineLookup {
                            at: *sent,
                            answer,
                            rows: Ok(Vec::new()),
                            closed: 0,
                        });
                    }
                }
            }
            Note::Failed(f) => self.out.extend_from_slice(&f.raw),
            Note::Close => {
                if let Some(Pending::Group { closed, .. }) = self.open_group() {
                    *closed = true;
                }
            }
            Note::Replace(f) => {
                if let Some(Pending::Group { replace, .. }) = self.open_group() {
                    *replace = Some(f);
                }
            }
            Note::Refuse(f) => {
                self.queue.push_back(Pending::Refusal(f));
                self.answer_refusals();
            }
            Note::Ready => {
                self.queue.push_back(Pending::Ready);
                self.answer_refusals();
            }
            Note::Notice(f) => self.out.extend_from_slice(&f.raw),
            Note::Fatal(f) => {
                self.out.extend_from_slice(&f.raw);
                return Ok(true);
            }
        }
        Ok(false)
    }

    fn open_group(&mut self) -> Option<&mut Pending> {
        let open = matches!(
            self.queue.back(),
            Some(Pending::Group { closed: false, .. })
        );
        if !open {
            self.queue.push_back(Pending::Group {
                execs: VecDeque::new(),
                describes: VecDeque::new(),
                statement_describes: VecDeque::new(),
                closed: false,
                failed: false,
                replace: None,
                sent: 0,
                answered: 0,
                inline: VecDeque::new(),
            });
        }
        self.queue.back_mut()
    }

    fn answer_refusals(&mut self) {
        loop {
            match self.queue.front() {
                Some(Pending::Refusal(f)) => self.out.extend_from_slice(&f.raw),
                Some(Pending::Ready) => self
                    .out
                    .extend_from_slice(&backend::ready_for_query(self.status).raw),
                _ => return,
            }
            self.queue.pop_front();
        }
    }

    async fn server_message(&mut self, f: Frame) -> Result<(), SessionError> {
        tracing::trace!(session = %self.ctx.session.id, tag = %f.tag.escape_ascii(), len = f.raw.len(), "server message");
        if matches!(self.queue.front(), Some(Pending::Injected { .. }))
            && !matches!(
                f.tag,
                backend::NOTICE_RESPONSE
                    | backend::NOTIFICATION_RESPONSE
                    | backend::PARAMETER_STATUS
            )
        {
            return self.injected_answer(f).await;
        }
        if !matches!(
            f.tag,
            backend::NOTICE_RESPONSE | backend::NOTIFICATION_RESPONSE | backend::PARAMETER_STATUS
        ) && self.inline_answer(&f)
        {
            return Ok(());
        }
        match f.tag {
            backend::DATA_ROW => {
                self.rows_seen += 1;
                match &mut self.masking {
                    Some(m) => m.data_row(&f, &mut self.out)?,
                    None => self.out.extend_from_slice(&f.raw),
                }
            }
            backend::ROW_DESCRIPTION | backend::NO_DATA => self.row_description(f)?,
            backend::PARAMETER_DESCRIPTION => {
                self.parameter_description(&f);
                self.out.extend_from_slice(&f.raw);
            }
            backend::COPY_OUT_RESPONSE => {
                if let Some(m) = &mut self.masking {
                    m.copy_out_response(&f)?;
                }
                self.out.extend_from_slice(&f.raw);
            }
            backend::COPY_DATA => match &mut self.masking {
                Some(m) => m.copy_data(&f, &mut self.out)?,
                None => self.out.extend_from_slice(&f.raw),
            },
            backend::COPY_DONE => {
                if let Some(m) = &mut self.masking {
                    m.copy_done();
                }
                self.out.extend_from_slice(&f.raw);
            }
            backend::COPY_BOTH_RESPONSE | backend::FUNCTION_CALL_RESPONSE
                if self.masking.is_some() =>
            {
                return Err(SessionError::UpstreamProtocol(format!(
                    "message '{}' carries values masking cannot see",
                    f.tag.escape_ascii()
                )));
            }
            backend::COMMAND_COMPLETE => {
                let rows = backend::command_rows(&f);
                self.out.extend_from_slice(&f.raw);
                self.complete(rows, None).await?;
            }
            backend::PORTAL_SUSPENDED => {
                self.out.extend_from_slice(&f.raw);
                self.complete(Some(self.rows_seen), None).await?;
            }
            backend::EMPTY_QUERY => {
                self.out.extend_from_slice(&f.raw);
                self.complete(None, None).await?;
            }
            backend::ERROR_RESPONSE => self.error_response(f).await?,
            backend::READY_FOR_QUERY => self.ready_for_query(f).await?,
            backend::PARAMETER_STATUS => {
                watch_parameter(&f, &self.shared);
                self.out.extend_from_slice(&f.raw);
            }
            backend::BACKEND_KEY_DATA => {
                // Only valid at startup; never let the server's key reach the worker.
                tracing::warn!(session = %self.ctx.session.id, "server sent BackendKeyData mid-session; dropped");
            }
            _ => self.out.extend_from_slice(&f.raw),
        }
        Ok(())
    }

    /// The columns of a result (or that it has none): planned for masking, and shown to
    /// the worker unless it answers a Describe the proxy added.
    fn row_description(&mut self, f: Frame) -> Result<(), SessionError> {
        let (ours, withhold) = match self.queue.front_mut() {
            Some(Pending::Group {
                describes, execs, ..
            }) => (
                describes.pop_front().unwrap_or(false),
                // The execution these rows belong to: the first not completed.
                execs.front().and_then(|e| e.withhold.clone()),
            ),
            _ => (false, None),
        };
        if let Some(m) = &mut self.masking {
            if f.tag == backend::ROW_DESCRIPTION {
                if m.row_description(&f, withhold.as_deref().unwrap_or_default())? {
                    self.shared.mask_stale.store(true, Ordering::Release);
                }
            } else {
                m.finish_result();
            }
        }
        if !ours {
            self.out.extend_from_slice(&f.raw);
        }
        Ok(())
    }

    /// The parameter types of the statement the worker described, for decoding the
    /// values it binds to it (see [`super::params`]).
    fn parameter_description(&mut self, f: &Frame) {
        let Some(Pending::Group {
            statement_describes,
            ..
        }) = self.queue.front_mut()
        else {
            return;
        };
        let (Some((name, generation)), Ok(types)) =
            (statement_describes.pop_front(), backend::parameter_types(f))
        else {
            return;
        };
        self.shared
            .param_types
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(name, (generation, types));
    }

    /// An answer to an inline function lookup (swallowed: true), or a closing answer of
    /// the worker's counted toward where the next lookup's answers start.
    fn inline_answer(&mut self, f: &Frame) -> bool {
        let Some(Pending::Group {
            answered,
            inline,
            failed,
            execs,
            describes,
            statement_describes,
            ..
        }) = self.queue.front_mut()
        else {
            return false;
        };
        let Some(lookup) = inline.front_mut().filter(|l| l.at == *answered) else {
            if answers::closes(f.tag) {
                *answered += 1;
            }
            return false;
        };
        match f.tag {
            backend::ERROR_RESPONSE => {
                let code = backend::error_code(f);
                tracing::warn!(session = %self.ctx.session.id, code = ?code, "inline function lookup failed");
                if let Some(l) = inline.pop_front() {
                    let _ = l.answer.send(Err(LookupError::Failed(f.clone())));
                }
                // The server skips the rest of the group: later lookups too.
                for l in inline.drain(..) {
                    let _ = l.answer.send(Err(LookupError::Skipped));
                }
                execs.clear();
                describes.clear();
                statement_describes.clear();
                *failed = true;
                return true;
            }
            backend::DATA_ROW => {
                if let Ok(found) = &mut lookup.rows {
                    match FunctionRow::from_data_row(f.body()) {
                        Ok(r) => found.push(r),
                        Err(e) => lookup.rows = Err(e),
                    }
                }
            }
            t if answers::closes(t) => lookup.closed += 1,
            _ => {}
        }
        if lookup.closed == INLINE_ANSWERS
            && let Some(l) = inline.pop_front()
        {
            let _ = l.answer.send(l.rows);
        }
        true
    }

    /// The server failed the current execution: its audit completes with the error (or
    /// the worker sees the refusal it stands in for), and the server skips the rest of
    /// the group.
    async fn error_response(&mut self, f: Frame) -> Result<(), SessionError> {
        if let Some(m) = &mut self.masking {
            m.finish_result();
            m.copy_done();
        }
        let code = backend::error_code(&f);
        let replacement = match self.queue.front_mut() {
            // Only the failure of the agent's own missing portal or cursor (reserved
            // names, which no worker can use): a worker's own missing portal earlier in
            // a streamed batch keeps its error.
            Some(Pending::Group { replace, .. })
                if code.as_deref() == Some(sqlstate::INVALID_CURSOR_NAME)
                    && names_reserved_portal(f.body()) =>
            {
                replace.take()
            }
            _ => None,
        };
        match replacement {
            Some(r) => self.out.extend_from_slice(&r.raw),
            None => {
                self.out.extend_from_slice(&f.raw);
                self.complete(None, code).await?;
            }
        }
        // The server skips the rest of the group (until Sync / end of Query), lookups
        // sent inside it included.
        if let Some(Pending::Group {
            execs,
            describes,
            statement_describes,
            failed,
            inline,
            ..
        }) = self.queue.front_mut()
        {
            execs.clear();
            describes.clear();
            statement_describes.clear();
            *failed = true;
            for l in inline.drain(..) {
                let _ = l.answer.send(Err(LookupError::Skipped));
            }
        }
        Ok(())
    }

    /// A group is answered: executions without a CommandComplete (FunctionCall) end
    /// here, and refusals queued behind it are answered with the new status.
    async fn ready_for_query(&mut self, f: Frame) -> Result<(), SessionError> {
        self.set_status(&f)?;
        self.out.extend_from_slice(&f.raw);
        if let Some(Pending::Group { execs, inline, .. }) = self.queue.front_mut() {
            for l in inline.drain(..) {
                let _ = l.answer.send(Err(LookupError::Skipped));
            }
            let rest: Vec<Exec> = execs.drain(..).collect();
            for e in rest {
                self.record(e, None, None).await?;
            }
            self.queue.pop_front();
        }
        if self.ddl_in_txn && self.status == b'I' {
            // Committed or rolled back: the DDL now stands or is undone.
            self.ddl_in_txn = false;
            self.catalog_changed();
        }
        self.answer_refusals();
        Ok(())
    }

    async fn complete(
        &mut self,
        rows: Option<u64>,
        error: Option<String>,
    ) -> Result<(), SessionError> {
        self.rows_seen = 0;
        let exec = match self.queue.front_mut() {
            Some(Pending::Group { execs, .. }) => execs.pop_front(),
            _ => None,
        };
        if let Some(e) = exec {
            self.record(e, rows, error).await?;
        }
        Ok(())
    }

    /// The transaction status the server reports; no transaction open ends the record
    /// of its writes.
    fn set_status(&mut self, f: &Frame) -> Result<(), SessionError> {
        self.status =
            backend::ready_status(f).map_err(|e| SessionError::UpstreamProtocol(e.to_string()))?;
        if self.status == b'I' {
            self.shared
                .txn
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .ended();
        }
        Ok(())
    }

    async fn record(
        &mut self,
        e: Exec,
        rows: Option<u64>,
        error: Option<String>,
    ) -> Result<(), SessionError> {
        let report = self.masking.as_mut().and_then(ResultMasking::take_report);
        if e.statement != 0 {
            self.shared
                .txn
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .completed(e.statement, rows);
        }
        if let (Some(st), None) = (&e.prepares, &error) {
            self.shared
                .prepared
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .completed(st);
        }
        match e.catalog {
            Catalog::Ddl => {
                self.ddl_in_txn = self.status != b'I' || self.ddl_in_txn;
                self.catalog_changed();
            }
            Catalog::Transaction if self.ddl_in_txn => self.catalog_changed(),
            _ => {}
        }
        let completions = self.completions.as_ref().ok_or(JournalError::Closed)?;
        completions
            .completed(e.statement, e.started, rows, error, report)
            .await?;
        Ok(())
    }

    /// Column names learned before may be wrong now: withhold unknown columns until the
    /// worker half's next preload is answered.
    fn catalog_changed(&mut self) {
        if let Some(m) = &mut self.masking {
            m.invalidate();
            self.shared.mask_stale.store(true, Ordering::Release);
        }
    }

    /// An answer to a group the worker half injected: never shown to the worker.
    async fn injected_answer(&mut self, f: Frame) -> Result<(), SessionError> {
        let Some(Pending::Injected {
            what,
            rows,
            failed,
            functions,
        }) = self.queue.front_mut()
        else {
            return Ok(());
        };
        match f.tag {
            backend::DATA_ROW if matches!(what, Injected::Functions) => {
                if let Ok(found) = functions {
                    match FunctionRow::from_data_row(f.body()) {
                        Ok(r) => found.push(r),
                        Err(e) => *functions = Err(e),
                    }
                }
            }
            backend::DATA_ROW if matches!(what, Injected::Preload) => {
                if let (Some(oid), Some(m)) =
                    (ColumnResolver::horizon_of(f.body()), &mut self.masking)
                {
                    m.set_horizon(oid);
                    return Ok(());
                }
                if let (Some(d), Some(m)) = (Definition::from_data_row(f.body()), &mut self.masking)
                {
                    m.add_definition(d);
                    return Ok(());
                }
                match CatalogRow::from_data_row(f.body()) {
                    Ok(r) => rows.push(r),
                    Err(e) => {
                        tracing::warn!(session = %self.ctx.session.id, error = %e, "masking preload: bad row");
                        *failed = true;
                    }
                }
            }
            backend::ROW_DESCRIPTION => {
                if let (Injected::CopyDescribe(options), Some(m)) = (what, &mut self.masking) {
                    m.copy_described(&f, options.clone())?;
                }
            }
            backend::ERROR_RESPONSE => {
                let code = backend::error_code(&f);
                tracing::warn!(session = %self.ctx.session.id, code = ?code, what = ?what, "injected query failed");
                *failed = true;
                if matches!(what, Injected::Functions) {
                    *functions = Err(LookupError::Failed(f.clone()));
                }
            }
            backend::READY_FOR_QUERY => {
                // An injected ROLLBACK changes the status refusals after it report.
                self.set_status(&f)?;
                let Some(Pending::Injected {
                    what,
                    rows,
                    failed,
                    functions,
                }) = self.queue.pop_front()
                else {
                    return Ok(());
                };
                if matches!(what, Injected::Functions)
                    && let Some(answer) = self.lookups.pop_front()
                {
                    // The worker's half may be gone already; nothing to answer then.
                    let _ = answer.send(functions);
                }
                if let (Injected::Preload, Some(m)) = (what, &mut self.masking) {
                    if failed {
                        m.discard_definitions();
                        // Unknown columns stay withheld; try again before the next group.
                        self.shared.mask_stale.store(true, Ordering::Release);
                        let completions = self.completions.as_ref().ok_or(JournalError::Closed)?;
                        completions
                            .error(
                                "masking",
                                "the column-name preload failed; table columns are \
                                 withheld (NULL) until it succeeds",
                            )
                            .await?;
                    } else {
                        m.absorb_preload(rows);
                    }
                }
                self.answer_refusals();
            }
            // ParseComplete, BindComplete, CloseComplete, ParameterDescription, NoData,
            // CommandComplete: nothing to learn.
            _ => {}
        }
        Ok(())
    }
}

/// Whether an error's text names one of the agent's reserved portals (no quotes
/// around the name: a server with other `lc_messages` quotes it its own way).
fn names_reserved_portal(body: &[u8]) -> bool {
    let needle = super::names::RESERVED_PREFIX.as_bytes();
    body.windows(needle.len()).any(|w| w == needle)
}
