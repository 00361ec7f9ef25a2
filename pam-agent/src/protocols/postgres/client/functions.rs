//! The calls of a message's statements resolved as the server will resolve them, looked
//! up first when the session does not know them (see [`crate::protocols::postgres::known_functions`]).

use std::borrow::Cow;

use tokio::io::AsyncWriteExt;

use super::{Client, Via};
use crate::{
    journal::Event,
    protocols::postgres::{
        SessionError,
        known_functions::{self, LookupError, Row},
        notes::Note,
        sql::Statement,
    },
};

impl Client<'_> {
    /// `statements` with every call resolved, or why they cannot be judged (the catalog
    /// could not be read: statements that call functions are refused).
    pub(super) async fn resolve_functions<'s>(
        &mut self,
        statements: Cow<'s, [Statement]>,
        via: Via,
    ) -> Result<Result<Cow<'s, [Statement]>, String>, SessionError> {
        let calls = statements.iter().any(|st| !st.functions.is_empty());
        let out = if calls {
            let missing = self.known.missing(&statements);
            let certain = self.known.can_look_up();
            if certain && !missing.is_empty() && self.batch.can_inject() {
                match self.look_up(&missing).await? {
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
                    Err(e) => {
                        return Ok(Err(format!(
                            "{e}: what a function call runs cannot be known, so statements \
                             that call functions are refused"
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

    /// Looks `names` up on the server (one injected group) and waits for the answer.
    async fn look_up(
        &mut self,
        names: &[String],
    ) -> Result<Result<Vec<Row>, LookupError>, SessionError> {
        let (tx, rx) = tokio::sync::oneshot::channel();
        let (what, bytes) = known_functions::lookup_group(names, &self.names.injected);
        self.note(Note::Lookup(tx)).await?;
        self.note(Note::Inject(what)).await?;
        self.upstream.write_all(&bytes).await?;
        Ok(rx.await.unwrap_or(Err(LookupError::Ended)))
    }
}
