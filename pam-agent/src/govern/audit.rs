//! What happened to each forwarded request, after the fact: its completion (rows,
//! duration, error) and what masking did to its results. The data path appends these
//! records itself without waiting for them to be stored (decisions, which must precede
//! the request, are awaited by the gate); their outcomes are checked as later records
//! go in, and all of them before the session ends, so a record the journal refused
//! still ends the session with that error.

use std::{
    collections::VecDeque,
    sync::{Arc, Mutex},
    time::Instant,
};

use super::Session;
use crate::{
    journal::{Ack, Event, Journal, JournalError, SessionId, event::MaskedColumn},
    mask::{MaskSource, MaskingReport},
};

/// Records whose outcome is not known yet beyond which the next one waits for the
/// oldest (`sync = "always"` under a slow disk: memory stays bounded).
const IN_FLIGHT: usize = 1024;

/// The session's completion records, held by the half of a protocol that sees results.
pub struct Completions {
    journal: Journal,
    session: SessionId,
    in_flight: Mutex<VecDeque<Ack>>,
}

impl Completions {
    pub fn new(session: &Arc<Session>) -> Completions {
        Completions {
            journal: session.journal.clone(),
            session: session.id,
            in_flight: Mutex::new(VecDeque::new()),
        }
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

    /// Waits until every record is stored; the first refusal, if any.
    pub async fn finish(self) -> Result<(), JournalError> {
        let acks = std::mem::take(&mut *self.lock());
        for ack in acks {
            ack.stored().await?;
        }
        Ok(())
    }

    async fn send(&self, event: Event) -> Result<(), JournalError> {
        let ack = self.journal.submit(Some(self.session), event).await?;
        let oldest = {
            let mut q = self.lock();
            // Outcomes already known are checked (and forgotten) now.
            while let Some(a) = q.front_mut() {
                match a.outcome() {
                    Some(Ok(_)) => {
                        q.pop_front();
                    }
                    Some(Err(e)) => return Err(e),
                    None => break,
                }
            }
            q.push_back(ack);
            if q.len() > IN_FLIGHT {
                q.pop_front()
            } else {
                None
            }
        };
        if let Some(a) = oldest {
            a.stored().await?;
        }
        Ok(())
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, VecDeque<Ack>> {
        self.in_flight.lock().unwrap_or_else(|p| p.into_inner())
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
