//! The ErrorResponse a refused request gets: SQLSTATE 42501, naming the rule, so drivers
//! raise their usual permission error and the session goes on (42601 for a text that
//! does not parse, as the server answers it).

use super::wire::{
    backend::{self, Severity, sqlstate},
    frame::Frame,
};
use crate::{govern::approval::UNAVAILABLE, policy::Action, policy::Decision};

pub fn frame(d: &Decision) -> Frame {
    with_code(d, sqlstate::REFUSED)
}

/// The refusal of a text that does not parse: as [`frame`], with the SQLSTATE the
/// server gives such text (42601, syntax_error), so a driver raises the syntax error it
/// would have raised without the agent.
pub fn syntax_error(d: &Decision) -> Frame {
    with_code(d, sqlstate::SYNTAX_ERROR)
}

fn with_code(d: &Decision, code: &str) -> Frame {
    let message = format!(
        "pam-agent refused the statement (rule \"{}\"): {}",
        d.rule, d.reason
    );
    let detail = format!("rule: {}; decision: {}", d.rule, d.action);
    let hint = match d.action {
        Action::RequireApproval if d.reason.contains(UNAVAILABLE) => {
            Some("This statement needs an approval, which pam-agent cannot grant yet.")
        }
        _ => None,
    };
    backend::error(Severity::Error, code, &message, Some(&detail), hint)
}
