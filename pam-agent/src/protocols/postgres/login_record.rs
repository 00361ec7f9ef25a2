//! What a session logged in as, on record before its first statement: the database, role
//! and application_name of the worker's startup packet, and the settings the server
//! reported; and later its effective role and search path whenever a function lookup
//! finds them changed.

use std::sync::Arc;

use super::{Context, SessionError, Shared, handshake::Ready};
use crate::journal::Event;

/// Journals the login (awaited: nothing of the worker's is read before it is stored).
pub async fn journal(
    ctx: &Context,
    ready: &Ready,
    shared: &Arc<Shared>,
) -> Result<(), SessionError> {
    let reported = shared
        .reported
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .clone();
    let event = Event::SessionLogin {
        database: ready.database.clone(),
        role: ready.role.clone(),
        application_name: ready.application_name.clone(),
        reported,
    };
    ctx.session
        .journal
        .record(Some(ctx.session.id), event)
        .await?;
    Ok(())
}
