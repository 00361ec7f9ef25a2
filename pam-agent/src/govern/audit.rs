//! What happened to each forwarded request, after the fact: its completion (rows,
//! duration, error) and what masking did to its results. Written in order by a companion
//! task so the data path never waits for these records (decisions, which must precede
//! the request, are awaited by the gate); a full queue does wait.

use std::{future::Future, sync::Arc, time::Instant};

use tokio::sync::mpsc;

use super::Session;
use crate::{
    journal::{Event, JournalError, event::MaskedColumn},
    mask::{MaskSource, MaskingReport},
};

/// Completion records waiting for the journal.
const QUEUE: usize = 1024;

/// The sending side, held by the half of a protocol that sees results.
pub struct Completions {
    tx: mpsc::Sender<Event>,
}

impl Completions {
    /// The handle and the writer to run beside the session (it ends once every handle is
    /// dropped and the queue is drained).
    pub fn start(
        session: &Arc<Session>,
    ) -> (
        Completions,
        impl Future<Output = Result<(), JournalError>> + use<>,
    ) {
        let (tx, mut rx) = mpsc::channel::<Event>(QUEUE);
        let (journal, id) = (session.journal.clone(), session.id);
        let writer = async move {
            // What queued while the last batch was being stored goes in together: one
            // commit for many completions of a fast session, order kept.
            let mut acks = Vec::new();
            while let Some(event) = rx.recv().await {
                acks.push(journal.submit(Some(id), event).await?);
                while acks.len() < QUEUE
                    && let Ok(event) = rx.try_recv()
                {
                    acks.push(journal.submit(Some(id), event).await?);
                }
                for ack in acks.drain(..) {
                    ack.stored().await?;
                }
            }
            Ok(())
        };
        (Completions { tx }, writer)
    }

    /// Statement `statement` finished upstream (number 0: nothing to record).
    pub async fn completed(
        &self,
        statement: u64,
        started: Instant,
        rows: Option<u64>,
        error: Option<String>,
        masking: Option<MaskingReport>,
    ) -> Result<(), JournalError> {
        if statement == 0 {
            return Ok(());
        }
        if let Some(report) = masking {
            self.send(masking_applied(statement, report)).await?;
        }
        self.send(Event::StatementCompleted {
            statement,
            duration_ms: started.elapsed().as_millis() as u64,
            rows,
            error,
        })
        .await
    }

    /// Something an auditor should see, in order with the completions.
    pub async fn error(&self, component: &str, message: &str) -> Result<(), JournalError> {
        self.send(Event::Error {
            component: component.into(),
            message: message.into(),
        })
        .await
    }

    async fn send(&self, event: Event) -> Result<(), JournalError> {
        self.tx.send(event).await.map_err(|_| JournalError::Closed)
    }
}

/// The journal record of what masking did to one statement's results: names and
/// counts, never values.
fn masking_applied(statement: u64, report: MaskingReport) -> Event {
    let columns = report
        .entries
        .into_iter()
        .map(|e| {
            let (name, by, pattern) = match e.source {
                MaskSource::Column { pattern, column } => (column, "column", Some(pattern)),
                MaskSource::Detector { detector } => (detector, "detector", None),
                MaskSource::Unresolved => ("unresolved".into(), "withheld", None),
                MaskSource::Derived {
                    pattern,
                    column,
                    from,
                } => (
                    format!("{column} (computed from {from})"),
                    "derived",
                    (!pattern.is_empty()).then_some(pattern),
                ),
            };
            MaskedColumn {
                name,
                method: e.strategy.to_string(),
                values: e.count,
                by: Some(by.into()),
                rule: (!e.rule.is_empty()).then_some(e.rule),
                pattern,
                nulled: e.nulled_for_type,
            }
        })
        .collect();
    Event::MaskingApplied {
        statement: Some(statement),
        rule: None,
        columns,
        rows: report.rows,
    }
}
