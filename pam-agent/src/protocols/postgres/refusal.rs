//! The ErrorResponse a refused request gets: SQLSTATE 42501, naming the rule, so drivers
//! raise their usual permission error and the session goes on.

use super::wire::{
    backend::{self, Severity, sqlstate},
    frame::Frame,
};
use crate::{govern::approval::UNAVAILABLE, policy::Action, policy::Decision};

pub fn frame(d: &Decision) -> Frame {
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
    backend::error(
        Severity::Error,
        sqlstate::REFUSED,
        &message,
        Some(&detail),
        hint,
    )
}
