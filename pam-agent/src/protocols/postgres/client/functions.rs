//! The calls of a message's statements resolved as the server will resolve them, looked
//! up first when the session does not know them (see [`crate::protocols::postgres::known_functions`]).

use std::borrow::Cow;

use tokio::io::AsyncWriteExt;

use super::{Client, Via};
use crate::{
    journal::Event,
    policy::{Action, Decision},
    protocols::postgres::{
        SessionError,
        known_functions::{self, LookupError, Resolved, Row},
        notes::Note,
        sql::Statement,
        wire::{backend, frame::Frame},
    },
};

/// The rule name recorded when the server failed the agent's lookup before a statement
/// (the statement is not run; the worker gets the server's error).
pub(super) const LOOKUP_FAILED_RULE: &str = "function_lookup_failed";

/// Why a message's calls could not be resolved.
#[derive(Debug)]
pub(super) enum Unresolved {
    /// What a call runs cannot be known: statements that call functions are refused.
    Unknown(String),
    /// The server failed the lookup with an error of the session's state (the worker's
    /// cancel landed on it, its transaction is aborted, a timeout): the statement is not
    /// run, and the worker sees this error in its place, as the statement would have.
    Server(Frame),
}

impl Unresolved {
    /// From a lookup's failure; `what` names what cannot be known then.
    fn from_lookup(e: LookupError, what: &str) -> Unresolved {
        if let LookupError::Failed(f) = &e
            && backend::error_code(f).is_some_and(|c| session_error(&c))
            && let Some(shown) = backend::error_for_another_statement(f)
        {
            return Unresolved::Server(shown);
        }
        Unresolved::Unknown(format!("{e}: {what}"))
    }
}

/// Whether an error the server gave the agent's lookup comes from the session's state,
/// so the worker's statement would have met it in the lookup's place: class 57
/// (operator intervention: a cancel, `statement_timeout`, a shutdown) and 25P02 (the
/// transaction is aborted). Other errors are about the lookup itself (the role may not
/// read `pg_proc`): the statement is refused as unclassifiable instead.
fn session_error(code: &str) -> bool {
    code.starts_with("57") || code == "25P02"
}

/// The record of a statement the server's failure of the lookup before it stopped.
pub(super) fn lookup_failed(error: &Frame) -> Decision {
    let code = backend::error_code(error).unwrap_or_default();
    let message = backend::error_field(error, b'M').unwrap_or_default();
    Decision {
        action: Action::Deny,
        rule: LOOKUP_FAILED_RULE.into(),
        reason: format!(
            "the server failed the function lookup before this statement with {code} \
             ({message}); the statement was not run and the worker got that error"
        ),
    }
}

impl Client<'_> {
    /// `statements` with every call resolved, or why they cannot be judged (the catalog
    /// could not be read: statements that call functions are refused; the server
    /// failed the lookup: its error stands for the statement's).
    pub(super) async fn resolve_functions<'s>(
        &mut self,
        statements: Cow<'s, [Statement]>,
        via: Via,
    ) -> Result<Result<Cow<'s, [Statement]>, Unresolved>, SessionError> {
        let calls = statements.iter().any(|st| !st.functions.is_empty());
        let out = if calls {
            let missing = self.known.missing(&statements);
            let mut certain = self.known.can_look_up();
            // Part of the worker's batch is on the server: the lookup goes inside it
            // (a Parse only; a Query ends the batch anyway).
            let inline = !self.batch.can_inject();
            let possible = !inline || (matches!(via, Via::Parse) && self.batch.can_inline());
            if certain && !missing.is_empty() && possible {
                match self.look_up(&missing, inline).await? {
                    Ok(rows) => {
                        self.known.absorb(&missing, rows);
                        if let Some((role, search_path)) = self.known.settings_changed() {
                            let event = Event::SessionSettings {
                                role: Some(role),
                                search_path,
                            };
                            let session = &self.ctx.session;
                            session.journal.record(Some(session.id), event).await?;
                        }
                    }
                    Err(LookupError::Skipped) => {
                        // The batch failed on the server before the lookup: it skips
                        // this statement too. Judged as unknown calls, never shown.
                        self.upstream_failed = Some(false);
                        certain = false;
                    }
                    Err(e) => {
                        // Inside the batch, the lookup's failure failed the batch: the
                        // worker is shown the refusal in its place.
                        if inline {
                            self.upstream_failed = Some(true);
                        }
                        return Ok(Err(Unresolved::from_lookup(
                            e,
                            "what a function call runs cannot be known, so statements \
                             that call functions are refused",
                        )));
                    }
                }
            }
            Cow::Owned(self.known.resolve_all(&statements, certain))
        } else {
            statements
        };
        let refs: Vec<&Statement> = out.iter().collect();
        self.known.forwarded(&refs, matches!(via, Via::Parse));
        Ok(Ok(out))
    }

    /// Looks `names` up on the server (one injected group, or `inline` inside the
    /// worker's open batch after what it holds) and waits for the answer.
    async fn look_up(
        &mut self,
        names: &[String],
        inline: bool,
    ) -> Result<Result<Vec<Row>, LookupError>, SessionError> {
        let (tx, rx) = tokio::sync::oneshot::channel();
        if inline {
            // In order: what the batch holds goes first, so the answers count right.
            self.batch.send_held();
            self.carry_out().await?;
            let bytes = known_functions::inline_lookup(names, &self.names.injected);
            self.note(Note::InlineLookup(tx)).await?;
            self.upstream.write_all(&bytes).await?;
        } else {
            let (what, bytes) = known_functions::lookup_group(names, &self.names.injected);
            self.note(Note::Lookup(tx)).await?;
            self.note(Note::Inject(what)).await?;
            self.upstream.write_all(&bytes).await?;
        }
        let r = rx.await.unwrap_or(Err(LookupError::Ended));
        tracing::trace!(session = %self.ctx.session.id, inline, ok = r.is_ok(), "function lookup answered");
        Ok(r)
    }

    /// The function a FunctionCall names by OID, looked up in the catalog (one injected
    /// group), or why it cannot be known. Inside an open batch of the worker's nothing
    /// can be injected: the call then reads as unknown (it may run anything).
    pub(super) async fn function_by_oid(
        &mut self,
        oid: u32,
    ) -> Result<Result<Resolved, Unresolved>, SessionError> {
        if !self.batch.can_inject() {
            return Ok(Ok(known_functions::unknown(&format!("oid:{oid}"))));
        }
        let (tx, rx) = tokio::sync::oneshot::channel();
        let (what, bytes) = known_functions::oid_lookup_group(oid, &self.names.injected);
        self.note(Note::Lookup(tx)).await?;
        self.note(Note::Inject(what)).await?;
        self.upstream.write_all(&bytes).await?;
        Ok(match rx.await.unwrap_or(Err(LookupError::Ended)) {
            Ok(rows) => Ok(known_functions::resolve_oid(oid, &rows)),
            Err(e) => Err(Unresolved::from_lookup(
                e,
                "what a FunctionCall runs cannot be known, so it is refused",
            )),
        })
    }
}
