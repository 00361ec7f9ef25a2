//! The filter options shared by `query`, `tail` and `export`, checked into a
//! [`Filter`]. Unknown kinds or decisions and malformed times are usage errors.

use clap::Args;
use jiff::Timestamp;

use super::{AuditError, time};
use crate::journal::{Event, reader::Filter};

#[derive(Debug, Args, Default)]
pub struct FilterArgs {
    /// Records at or after this time: RFC 3339 or an age (30m, 1h, 7d).
    #[arg(long)]
    pub since: Option<String>,
    /// Records before this time: RFC 3339 or an age.
    #[arg(long)]
    pub until: Option<String>,
    /// A principal's name (`[[principals]]`), or the worker's uid or user name.
    #[arg(long)]
    pub principal: Option<String>,
    /// Substring of the worker's command name or executable path.
    #[arg(long)]
    pub process: Option<String>,
    /// Resource name, as configured.
    #[arg(long)]
    pub resource: Option<String>,
    /// Session id (UUID).
    #[arg(long)]
    pub session: Option<String>,
    /// allow, deny, require_approval, pending, approved, rejected, expired, refused.
    #[arg(long)]
    pub decision: Option<String>,
    /// Record kind(s), comma-separated (statement, session_opened, ...).
    #[arg(long, value_delimiter = ',')]
    pub kind: Vec<String>,
    /// Substring anywhere in the record (statement text, reasons, names).
    #[arg(long)]
    pub text: Option<String>,
}

impl FilterArgs {
    pub fn to_filter(&self) -> Result<Filter, AuditError> {
        let now = Timestamp::now();
        let usage = AuditError::Usage;
        let since_us = self
            .since
            .as_deref()
            .map(|t| time::parse(t, now).map_err(|e| usage(format!("--since: {e}"))))
            .transpose()?;
        let until_us = self
            .until
            .as_deref()
            .map(|t| time::parse(t, now).map_err(|e| usage(format!("--until: {e}"))))
            .transpose()?;
        if let (Some(s), Some(u)) = (since_us, until_us)
            && s >= u
        {
            return Err(usage("--since must be before --until".into()));
        }
        let (uid, user) = match self.principal.as_deref().map(str::trim) {
            None => (None, None),
            Some("") => return Err(usage("--principal: give a uid or a user name".into())),
            Some(p) => match p.parse::<u32>() {
                Ok(uid) => (Some(uid), None),
                Err(_) => (None, Some(p.to_owned())),
            },
        };
        let session = self.session.as_deref().map(parse_session).transpose()?;
        for k in &self.kind {
            if !Event::KINDS.contains(&k.as_str()) {
                return Err(usage(format!(
                    "--kind: unknown kind `{k}`; kinds are: {}",
                    Event::KINDS.join(", ")
                )));
            }
        }
        if let Some(d) = &self.decision
            && !Event::DECISIONS.contains(&d.as_str())
        {
            return Err(usage(format!(
                "--decision: unknown decision `{d}`; decisions are: {}",
                Event::DECISIONS.join(", ")
            )));
        }
        Ok(Filter {
            since_us,
            until_us,
            uid,
            user,
            process: self.process.clone(),
            resource: self.resource.clone(),
            session,
            decision: self.decision.clone(),
            kinds: self.kind.clone(),
            text: self.text.clone(),
            after_seq: None,
        })
    }
}

/// A session id as stored (hyphenated lower-case UUID).
pub fn parse_session(text: &str) -> Result<String, AuditError> {
    uuid::Uuid::parse_str(text.trim())
        .map(|u| u.hyphenated().to_string())
        .map_err(|_| AuditError::Usage(format!("`{text}` is not a session id (a UUID)")))
}
