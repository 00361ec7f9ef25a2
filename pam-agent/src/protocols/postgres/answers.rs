//! Which server message closes the answer to each extended-protocol message, so the
//! server's half can tell where the answers to a run of messages end inside an open
//! batch (a function lookup the agent sends between the worker's messages, before its
//! Sync: [`super::known_functions::inline_lookup`]).
//!
//! Parse → ParseComplete, Bind → BindComplete, Describe → RowDescription or NoData (a
//! statement's ParameterDescription comes first and closes nothing), Execute →
//! CommandComplete, EmptyQueryResponse or PortalSuspended (rows and COPY messages come
//! first), Close → CloseComplete. Flush and Sync close nothing here (Sync is answered by
//! ReadyForQuery, which ends the group). An ErrorResponse closes the failing message,
//! and the server skips everything after it until Sync.

use super::wire::{backend, frontend};

/// How many closing answers the frontend messages in `bytes` (whole frames) will get
/// if none fails.
pub fn expected(bytes: &[u8]) -> usize {
    let mut n = 0;
    let mut rest = bytes;
    while rest.len() >= 5 {
        let len = u32::from_be_bytes([rest[1], rest[2], rest[3], rest[4]]) as usize;
        if matches!(
            rest[0],
            frontend::PARSE
                | frontend::BIND
                | frontend::DESCRIBE
                | frontend::EXECUTE
                | frontend::CLOSE
        ) {
            n += 1;
        }
        let Some(next) = rest.get(1 + len.max(4)..) else {
            break;
        };
        rest = next;
    }
    n
}

/// Whether a backend message closes the answer to one extended-protocol message.
pub fn closes(tag: u8) -> bool {
    matches!(
        tag,
        b'1' | b'2'
            | b'3'
            | backend::ROW_DESCRIPTION
            | backend::NO_DATA
            | backend::COMMAND_COMPLETE
            | backend::EMPTY_QUERY
            | backend::PORTAL_SUSPENDED
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_the_messages_that_get_a_closing_answer() {
        let mut b = Vec::new();
        for f in [
            frontend::parse_message("s", "SELECT 1"),
            frontend::bind_message("p", "s"),
            frontend::describe_portal("p"),
            frontend::execute_message("p"),
            frontend::close_portal("p"),
            frontend::flush(),
            frontend::sync(),
        ] {
            b.extend_from_slice(&f.raw);
        }
        assert_eq!(expected(&b), 5);
        assert_eq!(expected(&[]), 0);
    }

    #[test]
    fn rows_and_parameter_descriptions_close_nothing() {
        for t in [
            backend::DATA_ROW,
            backend::PARAMETER_DESCRIPTION,
            backend::NOTICE_RESPONSE,
            backend::COPY_DATA,
            backend::READY_FOR_QUERY,
        ] {
            assert!(!closes(t));
        }
        assert!(closes(backend::COMMAND_COMPLETE) && closes(b'1'));
    }
}
