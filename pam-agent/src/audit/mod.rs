//! `pam-agent audit`: the security engineer's side of the journal: query, tail, show a
//! session, export (JSON lines or OCSF), verify the chain and signatures, and measure
//! the disk (`bench`). Exit codes: 0 success, 1 a failed verification or a runtime
//! error, 2 bad input (a malformed time, an unknown kind, a missing journal).
//!
//! - [`filter`]: the filter options and their checks.
//! - [`time`]: RFC 3339 and relative times.
//! - [`output`]: table and JSON-lines printing.
//! - [`ocsf`]: the OCSF mapping.
//! - [`bench`]: the write benchmark.

pub mod bench;
pub mod filter;
pub mod ocsf;
pub mod output;
pub mod time;

use std::{
    collections::HashMap,
    io::{self, Write},
    path::{Path, PathBuf},
    process::ExitCode,
    time::Duration,
};

use clap::{Args, Subcommand};

use crate::{
    config::{Config, DEFAULT_CONFIG_PATH},
    journal::{
        Event, JournalError, Record,
        chain::{self, hex},
        reader::{Filter, Reader, StoredRecord},
        schema,
        verify::{self, VerifyOptions},
    },
};
use filter::FilterArgs;
use output::{Format, Printer};

#[derive(Debug, thiserror::Error)]
pub enum AuditError {
    /// The command line or its values are wrong: exit code 2.
    #[error("{0}")]
    Usage(String),
    #[error("{0}")]
    Failed(String),
}

impl From<JournalError> for AuditError {
    fn from(e: JournalError) -> Self {
        AuditError::Failed(e.to_string())
    }
}

/// Which journal to read: `--journal`, else the one named by the config.
#[derive(Debug, Args)]
pub struct JournalArgs {
    /// The journal file.
    #[arg(long, global = true)]
    pub journal: Option<PathBuf>,
    /// Config whose `journal.path` to read (default /etc/pam-agent/config.toml).
    #[arg(long, global = true, conflicts_with = "journal")]
    pub config: Option<PathBuf>,
}

impl JournalArgs {
    fn path(&self) -> Result<PathBuf, AuditError> {
        let path = match (&self.journal, &self.config) {
            (Some(p), _) => p.clone(),
            (None, c) => {
                let c = c.clone().unwrap_or_else(|| DEFAULT_CONFIG_PATH.into());
                Config::load(&c)
                    .map_err(|e| {
                        AuditError::Usage(format!("{e}; name the journal with --journal PATH"))
                    })?
                    .journal
                    .path
            }
        };
        if !path.exists() {
            return Err(AuditError::Usage(format!(
                "{}: no such journal",
                path.display()
            )));
        }
        Ok(path)
    }

    fn open(&self) -> Result<Reader, AuditError> {
        let path = self.path()?;
        Reader::open(&path).map_err(|e| AuditError::Usage(e.to_string()))
    }
}

#[derive(Debug, Subcommand)]
pub enum AuditCommand {
    /// List records matching filters.
    Query {
        #[command(flatten)]
        filter: FilterArgs,
        #[arg(long, value_enum, default_value_t = Format::Table)]
        format: Format,
        /// Only the newest N matching records.
        #[arg(long)]
        limit: Option<u64>,
    },
    /// Show the newest records, and with -f keep printing new ones.
    Tail {
        #[command(flatten)]
        filter: FilterArgs,
        #[arg(short = 'f', long)]
        follow: bool,
        /// How many records to show first.
        #[arg(short = 'n', long, default_value_t = 10)]
        lines: u64,
        #[arg(long, value_enum, default_value_t = Format::Table)]
        format: Format,
    },
    /// Everything one session did, in order.
    Show {
        /// The session id (UUID).
        session: String,
        #[arg(long, value_enum, default_value_t = Format::Table)]
        format: Format,
    },
    /// Export matching records for a SIEM.
    Export {
        #[command(flatten)]
        filter: FilterArgs,
        #[arg(long, value_enum, default_value_t = ExportFormat::Jsonl)]
        format: ExportFormat,
    },
    /// Check the hash chain, the signed checkpoints and the indexed columns; exit 1 and
    /// name the records when anything was changed, removed, inserted or reordered.
    Verify {
        /// Trust only checkpoints signed by this public key (hex, as the agent logs it at
        /// start, or a file holding it); repeat for several.
        #[arg(long)]
        trusted_key: Vec<String>,
        /// The journal must reach at least this seq: the newest checkpoint an outside
        /// witness saw (the agent logs each one). Catches a cut within the unsigned tail.
        #[arg(long)]
        expect_seq: Option<u64>,
    },
    /// Measure how many records/s this disk journals durably, on a scratch journal.
    Bench(bench::BenchArgs),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum ExportFormat {
    Jsonl,
    Ocsf,
}

/// Runs an audit command; prints its errors and returns the exit code.
pub fn run(journal: &JournalArgs, command: AuditCommand) -> ExitCode {
    match dispatch(journal, command) {
        Ok(code) => code,
        Err(AuditError::Usage(m)) => {
            eprintln!("pam-agent audit: {m}");
            ExitCode::from(2)
        }
        Err(AuditError::Failed(m)) => {
            eprintln!("pam-agent audit: {m}");
            ExitCode::FAILURE
        }
    }
}

/// A closed pipe (`| head`) ends the output quietly; other write errors are failures.
fn write_result(r: io::Result<()>) -> Result<(), AuditError> {
    match r {
        Err(e) if e.kind() != io::ErrorKind::BrokenPipe => {
            Err(AuditError::Failed(format!("writing output: {e}")))
        }
        _ => Ok(()),
    }
}

/// `audit tail [-f]`: the newest `lines` records, then (following) new ones as they come.
fn tail(
    journal: &JournalArgs,
    filter: &filter::FilterArgs,
    follow: bool,
    lines: u64,
    format: Format,
) -> Result<ExitCode, AuditError> {
    let mut filter = filter.to_filter()?;
    let reader = journal.open()?;
    let mut out = Printer::new(io::stdout().lock(), format);
    let mut last = None;
    let mut write_err = None;
    reader.query(&filter, Some(lines), |r| {
        last = Some(r.seq);
        match out.print(&r) {
            Ok(()) => true,
            Err(e) => {
                write_err = Some(e);
                false
            }
        }
    })?;
    if let Some(e) = write_err {
        return write_result(Err(e)).map(|()| ExitCode::SUCCESS);
    }
    write_result(out.flush())?;
    if !follow {
        return Ok(ExitCode::SUCCESS);
    }
    if last.is_none() {
        // Start after what exists now, even if nothing matched yet.
        last = reader.last_seq()?;
    }
    loop {
        filter.after_seq = Some(last.unwrap_or(0));
        let mut broken = None;
        reader.query(&filter, None, |r| {
            last = Some(r.seq);
            match out.print(&r) {
                Ok(()) => true,
                Err(e) => {
                    broken = Some(e);
                    false
                }
            }
        })?;
        if let Some(e) = broken {
            return write_result(Err(e)).map(|()| ExitCode::SUCCESS);
        }
        if let Err(e) = out.flush() {
            return write_result(Err(e)).map(|()| ExitCode::SUCCESS);
        }
        std::thread::sleep(Duration::from_millis(250));
    }
}

/// `audit verify`'s exit status when the journal may not be read by the caller.
const NO_PERMISSION: u8 = 4;

fn dispatch(journal: &JournalArgs, command: AuditCommand) -> Result<ExitCode, AuditError> {
    match command {
        AuditCommand::Query {
            filter,
            format,
            limit,
        } => {
            let filter = filter.to_filter()?;
            let reader = journal.open()?;
            let n = print(&reader, &filter, limit, format)?;
            if n == 0 && format == Format::Table {
                eprintln!("no matching records");
            }
            Ok(ExitCode::SUCCESS)
        }
        AuditCommand::Tail {
            filter,
            follow,
            lines,
            format,
        } => tail(journal, &filter, follow, lines, format),
        AuditCommand::Show { session, format } => {
            let session = filter::parse_session(&session)?;
            let reader = journal.open()?;
            let filter = Filter {
                session: Some(session.clone()),
                ..Default::default()
            };
            let n = print(&reader, &filter, None, format)?;
            if n == 0 {
                eprintln!("pam-agent audit: no records for session {session}");
                return Ok(ExitCode::FAILURE);
            }
            Ok(ExitCode::SUCCESS)
        }
        AuditCommand::Export { filter, format } => {
            let filter = filter.to_filter()?;
            let reader = journal.open()?;
            match format {
                ExportFormat::Jsonl => {
                    print(&reader, &filter, None, Format::Jsonl)?;
                }
                ExportFormat::Ocsf => export_ocsf(&reader, &filter)?,
            }
            Ok(ExitCode::SUCCESS)
        }
        AuditCommand::Verify {
            trusted_key,
            expect_seq,
        } => {
            let trusted_keys = trusted_key
                .iter()
                .map(|k| parse_key(k))
                .collect::<Result<Vec<_>, _>>()?;
            let path = journal.path()?;
            // Not being allowed to read it is not a finding about the journal: say so,
            // with an exit status of its own.
            let segments = crate::journal::segment::dir_of(&path);
            let denied =
                |r: io::Result<()>| r.is_err_and(|e| e.kind() == io::ErrorKind::PermissionDenied);
            if denied(std::fs::File::open(&path).map(drop))
                || (segments.is_dir() && denied(std::fs::read_dir(&segments).map(drop)))
            {
                eprintln!(
                    "pam-agent: cannot read {}: permission denied (the journal is readable by \
                     root and its read group; run as one of them); nothing was verified",
                    path.display()
                );
                return Ok(ExitCode::from(NO_PERMISSION));
            }
            // The file exists: if it cannot be opened as a journal, that is a finding.
            let reader = match Reader::open(&path) {
                Ok(r) => r,
                Err(e) => {
                    println!("TAMPERED the database cannot be read: {e}");
                    println!("FAILED: 1 problem");
                    return Ok(ExitCode::FAILURE);
                }
            };
            let report = verify::verify(
                &reader,
                &VerifyOptions {
                    trusted_keys,
                    expect_seq,
                },
            );
            print_report(&path, &report);
            Ok(if report.ok() {
                ExitCode::SUCCESS
            } else {
                ExitCode::FAILURE
            })
        }
        AuditCommand::Bench(args) => {
            bench::run(args)?;
            Ok(ExitCode::SUCCESS)
        }
    }
}

fn print(
    reader: &Reader,
    filter: &Filter,
    limit: Option<u64>,
    format: Format,
) -> Result<u64, AuditError> {
    let mut out = Printer::new(io::BufWriter::new(io::stdout().lock()), format);
    let mut n = 0;
    let mut err = None;
    reader.query(filter, limit, |r| {
        n += 1;
        match out.print(&r) {
            Ok(()) => true,
            Err(e) => {
                err = Some(e);
                false
            }
        }
    })?;
    if let Some(e) = err {
        write_result(Err(e))?;
    }
    write_result(out.flush())?;
    Ok(n)
}

fn export_ocsf(reader: &Reader, filter: &Filter) -> Result<(), AuditError> {
    let mut out = io::BufWriter::new(io::stdout().lock());
    let exporter = ocsf::Exporter {
        journal_id: reader.meta(schema::META_JOURNAL_ID)?.unwrap_or_default(),
        host: ocsf::Host::local(),
    };
    // Opening records of the sessions seen, for actor and endpoints; statement records,
    // for the completions that refer to them by number.
    let mut opened: HashMap<String, Option<Record>> = HashMap::new();
    let mut statements: HashMap<(String, u64), Option<Record>> = HashMap::new();
    let mut records = Vec::new();
    reader.query(filter, None, |r| {
        records.push(r);
        records.len() < 10_000
    })?;
    let mut after = None;
    loop {
        for r in &records {
            let record = r.record();
            if let (
                Some(s),
                Some(Event::Statement {
                    statement: Some(n), ..
                }),
            ) = (&r.session, record.as_ref().map(|r| &r.event))
            {
                statements.insert((s.clone(), *n), record.clone());
            }
            let mut ctx = ocsf::SessionContext::default();
            if let Some(s) = &r.session {
                if !opened.contains_key(s) {
                    let found = session_opened(reader, s)?;
                    opened.insert(s.clone(), found);
                }
                ctx.opened = opened.get(s).and_then(|o| o.as_ref());
                let refers_to = match record.as_ref().map(|r| &r.event) {
                    Some(
                        Event::StatementCompleted { statement: n, .. }
                        | Event::Execution { statement: n, .. }
                        | Event::MaskingApplied {
                            statement: Some(n), ..
                        },
                    ) => Some(*n),
                    _ => None,
                };
                if let Some(n) = refers_to {
                    let key = (s.clone(), n);
                    if !statements.contains_key(&key) {
                        let found = statement_record(reader, s, n)?;
                        statements.insert(key.clone(), found);
                    }
                    ctx.statement = statements.get(&key).and_then(|o| o.as_ref());
                }
            }
            let ev = exporter.event(r, ctx);
            if let Err(e) = writeln!(out, "{ev}") {
                return write_result(Err(e));
            }
            after = Some(r.seq);
        }
        if records.len() < 10_000 {
            break;
        }
        records.clear();
        let mut next = filter.clone();
        next.after_seq = after;
        reader.query(&next, None, |r| {
            records.push(r);
            records.len() < 10_000
        })?;
    }
    write_result(out.flush())
}

/// The `statement` record numbered `n` in `session`, for its completions.
fn statement_record(reader: &Reader, session: &str, n: u64) -> Result<Option<Record>, AuditError> {
    let filter = Filter {
        session: Some(session.to_owned()),
        kinds: vec!["statement".into()],
        ..Default::default()
    };
    let mut found = None;
    reader.query(&filter, None, |r: StoredRecord| match r.record() {
        Some(
            rec @ Record {
                event:
                    Event::Statement {
                        statement: Some(m), ..
                    },
                ..
            },
        ) if m == n => {
            found = Some(rec);
            false
        }
        _ => true,
    })?;
    Ok(found)
}

fn session_opened(reader: &Reader, session: &str) -> Result<Option<Record>, AuditError> {
    let filter = Filter {
        session: Some(session.to_owned()),
        kinds: vec!["session_opened".into()],
        ..Default::default()
    };
    let mut found = None;
    reader.query(&filter, Some(1), |r: StoredRecord| {
        found = r.record();
        false
    })?;
    Ok(found)
}

/// A public key in hex, or a file holding it.
fn parse_key(text: &str) -> Result<[u8; 32], AuditError> {
    if let Some(k) = chain::unhex::<32>(text) {
        return Ok(k);
    }
    let from_file = std::fs::read_to_string(Path::new(text))
        .ok()
        .and_then(|t| chain::unhex::<32>(&t));
    from_file.ok_or_else(|| {
        AuditError::Usage(format!(
            "--trusted-key: `{text}` is neither 64 hex digits nor a file holding them"
        ))
    })
}

fn print_report(path: &Path, report: &verify::Report) {
    let range = match (report.first_seq, report.last_seq) {
        (Some(a), Some(b)) => format!(" (seq {a}..={b})"),
        _ => String::new(),
    };
    println!(
        "journal {}: {} records{range}, {} checkpoints",
        path.display(),
        report.records,
        report.checkpoints
    );
    for k in &report.keys {
        println!("  signed by ed25519 key {}", hex(k));
    }
    match (report.last_signed, report.last_seq) {
        (Some(s), Some(last)) if last > s => println!(
            "  last signed checkpoint at seq {s}; {} newer records are chained but not signed yet",
            last - s
        ),
        (Some(s), _) => println!("  last signed checkpoint at seq {s}"),
        (None, Some(_)) => println!("  no signed checkpoint yet"),
        _ => {}
    }
    if report.segments {
        println!(
            "  format 2: the segments' chain verified; {} index rows checked against them",
            report.index_records
        );
    }
    for t in &report.torn {
        println!("  kept by crash recovery (a torn tail cut from the log): {t}");
    }
    if report.unknown_kinds > 0 {
        println!(
            "  {} records of kinds this version does not know: hash-checked only",
            report.unknown_kinds
        );
    }
    const SHOWN: usize = 50;
    for p in report.problems.iter().take(SHOWN) {
        println!("TAMPERED {p}");
    }
    if report.problems.len() > SHOWN {
        println!("... and {} more problems", report.problems.len() - SHOWN);
    }
    if report.ok() {
        println!("OK: chain intact");
    } else {
        println!("FAILED: {} problems", report.problems.len());
    }
}
