//! What execution records keep of the values bound to a statement
//! (`journal.parameters`), and the one place they are written.

use serde::Deserialize;

use super::gate::Gate;
use crate::journal::{Ack, Event, JournalError, event::Parameter};

/// `journal.parameters`: how much of each bound value an `execution` record keeps.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ParameterRecording {
    /// Every value, except those masking rules protect or detectors find (default).
    #[default]
    Redacted,
    /// Every value as bound.
    Full,
    /// Types and NULLs only: no value is kept.
    None,
}

impl Gate {
    /// Queues the record of one execution of statement `statement` (its number in this
    /// session) with its parameters; the caller waits for the [`Ack`] before the
    /// execution goes upstream (write-ahead), so several share one commit.
    pub async fn execution(
        &self,
        statement: u64,
        parameters: Vec<Parameter>,
        more: u64,
    ) -> Result<Ack, JournalError> {
        let session = self.session();
        session
            .journal
            .submit(
                Some(session.id),
                Event::Execution {
                    statement,
                    parameters,
                    more,
                },
            )
            .await
    }
}
