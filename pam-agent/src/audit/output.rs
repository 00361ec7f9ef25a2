//! Printing records: an aligned table for people, or the stored JSON lines for tools.
//! Everything printed in the table passes through [`clean`]: record text comes from
//! workers (statement text, names) and must not drive the auditor's terminal.

use std::io::{self, Write};

use jiff::Timestamp;

use crate::journal::{Event, reader::StoredRecord};

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Format {
    Table,
    Jsonl,
}

/// Longest DETAIL shown in the table; `--format jsonl` has everything.
const DETAIL_MAX: usize = 120;

pub struct Printer<W: Write> {
    out: W,
    format: Format,
    header_done: bool,
}

impl<W: Write> Printer<W> {
    pub fn new(out: W, format: Format) -> Self {
        Printer {
            out,
            format,
            header_done: false,
        }
    }

    pub fn print(&mut self, r: &StoredRecord) -> io::Result<()> {
        match self.format {
            Format::Jsonl => writeln!(self.out, "{}", r.json),
            Format::Table => {
                if !self.header_done {
                    self.header_done = true;
                    writeln!(
                        self.out,
                        "{:>8}  {:<24}  {:<18}  {:<16}  {:<14}  {:<16}  {:<36}  DETAIL",
                        "SEQ", "TIME", "KIND", "PRINCIPAL", "RESOURCE", "DECISION", "SESSION"
                    )?;
                }
                writeln!(
                    self.out,
                    "{:>8}  {:<24}  {:<18}  {:<16}  {:<14}  {:<16}  {:<36}  {}",
                    r.seq,
                    time(r.ts_us),
                    clean(&r.kind, 40),
                    clean(&principal(r), 40),
                    clean(r.resource.as_deref().unwrap_or("-"), 40),
                    clean(r.decision.as_deref().unwrap_or("-"), 20),
                    r.session.as_deref().unwrap_or("-"),
                    clean(&detail(r), DETAIL_MAX),
                )
            }
        }
    }

    pub fn flush(&mut self) -> io::Result<()> {
        self.out.flush()
    }

    /// Whether nothing was printed yet (the table header goes with the first row).
    pub fn is_empty(&self) -> bool {
        !self.header_done
    }
}

pub fn time(ts_us: i64) -> String {
    Timestamp::from_microsecond(ts_us)
        .map(|t| format!("{t:.3}"))
        .unwrap_or_else(|_| ts_us.to_string())
}

fn principal(r: &StoredRecord) -> String {
    match (&r.user, r.uid) {
        (Some(u), Some(uid)) => format!("{u}({uid})"),
        (None, Some(uid)) => uid.to_string(),
        (Some(u), None) => u.clone(),
        (None, None) => "-".into(),
    }
}

/// Control characters shown escaped, long text cut with an ellipsis.
pub fn clean(text: &str, max: usize) -> String {
    let mut out = String::with_capacity(text.len().min(max + 8));
    for (n, c) in text.chars().enumerate() {
        if n >= max {
            out.push('…');
            break;
        }
        if c.is_control() {
            out.extend(c.escape_default());
        } else {
            out.push(c);
        }
    }
    out
}

/// One line saying what the record is about.
pub fn detail(r: &StoredRecord) -> String {
    let Some(record) = r.record() else {
        return r.json.clone();
    };
    match record.event {
        Event::AgentStarted {
            version, config, ..
        } => format!("version {version}, config {config}"),
        Event::AgentStopped { reason } => reason,
        Event::ConfigReloaded { config, ok, detail } => format!(
            "{} {config}{}",
            if ok { "applied" } else { "refused" },
            detail.map(|d| format!(": {d}")).unwrap_or_default()
        ),
        Event::SessionOpened {
            principal,
            destination,
            client,
            ..
        } => format!(
            "{}{} pid {} {client} -> {destination}{}{}",
            principal
                .name
                .as_ref()
                .map(|n| format!("principal {n}: "))
                .unwrap_or_default(),
            principal.comm,
            principal.pid,
            principal
                .exe
                .map(|e| format!(" exe {e}"))
                .unwrap_or_default(),
            principal
                .unit
                .map(|u| format!(" unit {u}"))
                .unwrap_or_default()
        ),
        Event::WorkerToken {
            accepted,
            issuer,
            subject,
            groups,
            reason,
            ..
        } => format!(
            "{} token of {} from {issuer}{}{}",
            if accepted { "accepted" } else { "refused" },
            subject.as_deref().unwrap_or("?"),
            if groups.is_empty() {
                String::new()
            } else {
                format!(" groups {}", groups.join(","))
            },
            reason.map(|r| format!(": {r}")).unwrap_or_default()
        ),
        Event::SessionClosed {
            bytes_from_worker,
            bytes_to_worker,
            duration_ms,
            end,
            detail,
        } => format!(
            "{end:?} after {duration_ms} ms, {bytes_from_worker} B from worker, {bytes_to_worker} B to worker{}",
            detail.map(|d| format!(": {d}")).unwrap_or_default()
        ),
        Event::ConnectionRefused {
            client,
            reason,
            count,
            ..
        } => match count {
            Some(n) if n > 1 => format!("{client}: {reason} ({n} times)"),
            _ => format!("{client}: {reason}"),
        },
        Event::Statement {
            text,
            fingerprint,
            rule,
            duration_ms,
            rows,
            error,
            ..
        } => {
            let mut s = text.or(fingerprint).unwrap_or_default();
            if let Some(rule) = rule {
                s.push_str(&format!(" [rule {rule}]"));
            }
            if let Some(rows) = rows {
                s.push_str(&format!(" rows={rows}"));
            }
            if let Some(ms) = duration_ms {
                s.push_str(&format!(" {ms}ms"));
            }
            if let Some(e) = error {
                s.push_str(&format!(" error: {e}"));
            }
            s
        }
        Event::ApprovalRequested {
            approval,
            rule,
            request,
            ..
        } => format!("approval {approval} [rule {rule}]: {request}"),
        Event::ApprovalDecided {
            approval,
            outcome,
            by,
            reason,
            ..
        } => format!(
            "approval {approval} {} by {by}{}",
            outcome.as_str(),
            reason.map(|r| format!(": {r}")).unwrap_or_default()
        ),
        Event::ApprovalExpired { approval } => format!("approval {approval} expired"),
        Event::MaskingApplied {
            rule,
            columns,
            rows,
            statement,
        } => format!(
            "{}{} in {rows} rows{}",
            statement
                .map(|n| format!("statement #{n}: "))
                .unwrap_or_default(),
            columns
                .iter()
                .map(|c| {
                    let nulled = if c.nulled > 0 {
                        format!(", {} null", c.nulled)
                    } else {
                        String::new()
                    };
                    format!("{}({} {}{nulled})", c.name, c.values, c.method)
                })
                .collect::<Vec<_>>()
                .join(", "),
            rule.map(|r| format!(" [rule {r}]")).unwrap_or_default()
        ),
        Event::StatementCompleted {
            statement,
            duration_ms,
            rows,
            error,
        } => {
            let mut s = format!("statement #{statement} done in {duration_ms} ms");
            if let Some(rows) = rows {
                s.push_str(&format!(" rows={rows}"));
            }
            if let Some(error) = error {
                s.push_str(&format!(" error={error}"));
            }
            s
        }
        Event::Execution {
            statement,
            parameters,
            more,
        } => {
            let mut s = format!("statement #{statement} executes");
            for (i, p) in parameters.iter().enumerate() {
                let ty = p.ty.as_deref().map(|t| format!("{t} ")).unwrap_or_default();
                let value = match (&p.value, &p.redacted) {
                    (_, Some(why)) => format!("[redacted: {why}]"),
                    (Some(v), None) => format!("{v:?}"),
                    (None, None) => "NULL".into(),
                };
                s.push_str(&format!(
                    "{} ${}={ty}{value}",
                    if i == 0 { ":" } else { "," },
                    i + 1
                ));
            }
            if more > 0 {
                s.push_str(&format!(" (+{more} more)"));
            }
            s
        }
        Event::SessionLogin {
            database,
            role,
            application_name,
            reported,
        } => {
            let mut s = format!(
                "database {} role {} application {}",
                database.as_deref().unwrap_or("?"),
                role.as_deref().unwrap_or("?"),
                application_name.as_deref().unwrap_or("?")
            );
            if !reported.is_empty() {
                let r: Vec<String> = reported.iter().map(|(k, v)| format!("{k}={v}")).collect();
                s.push_str(&format!("; server: {}", r.join(", ")));
            }
            s
        }
        Event::SessionSettings { role, search_path } => format!(
            "role {} search_path {}",
            role.as_deref().unwrap_or("?"),
            search_path.join(", ")
        ),
        Event::PolicyReloaded { config, rules } => format!("{config}: {rules} rules"),
        Event::Error { component, message } => format!("{component}: {message}"),
        Event::JournalPruned {
            through_seq,
            records,
            reason,
        } => format!("removed {records} records through seq {through_seq} ({reason})"),
        Event::ResourceResolved {
            resource,
            host,
            addresses,
            ..
        } => format!(
            "{resource}: {host} -> {}",
            addresses
                .iter()
                .map(ToString::to_string)
                .collect::<Vec<_>>()
                .join(", ")
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn clean_escapes_terminal_controls_and_cuts() {
        assert_eq!(clean("a\u{1b}[2Jb", 10), "a\\u{1b}[2Jb");
        assert_eq!(clean("abcdef", 3), "abc…");
    }
}
