//! Helpers shared by the journal tests: scratch directories, a journal with every kind of
//! event, and running the real `pam-agent` binary.
#![allow(dead_code)]

pub mod deadline;
pub mod every_variant;
pub mod format;

use std::{
    net::SocketAddr,
    path::{Path, PathBuf},
    process::{Command, Output},
    time::Duration,
};

pub use deadline::Deadline;
use jiff::Timestamp;
use pam_agent::{
    journal::{
        Event, Journal, SessionId, WriterOptions,
        event::{ApprovalOutcome, Decision, MaskedColumn, ResourceRef, SessionEnd},
        log::LogStore,
        sqlite::StoreOptions,
    },
    principal::Principal,
};

/// A directory removed on drop.
pub struct Scratch(pub PathBuf);

impl Scratch {
    pub fn new(name: &str) -> Scratch {
        let dir = std::env::temp_dir().join(format!(
            "pam-{name}-{}-{}",
            std::process::id(),
            uuid::Uuid::now_v7().simple()
        ));
        std::fs::create_dir_all(&dir).unwrap();
        Scratch(dir)
    }

    pub fn path(&self, file: &str) -> PathBuf {
        self.0.join(file)
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

pub fn bin() -> Command {
    Command::new(env!("CARGO_BIN_EXE_pam-agent"))
}

/// Runs `pam-agent audit ARGS --journal PATH`.
pub fn audit(journal: &Path, args: &[&str]) -> Output {
    bin()
        .arg("audit")
        .args(args)
        .arg("--journal")
        .arg(journal)
        .output_within()
        .unwrap()
}

pub fn stdout(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

pub fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

pub fn options(path: &Path) -> StoreOptions {
    let mut o = StoreOptions::new(path);
    o.checkpoint_every = 10;
    o
}

/// The agent's journal (format v2: segments, and the SQLite index behind them).
pub fn open(opts: StoreOptions) -> (Journal, std::thread::JoinHandle<()>) {
    Journal::start_with(LogStore::open(opts).unwrap(), WriterOptions::default())
}

pub fn principal(uid: u32, user: &str, comm: &str) -> Principal {
    Principal {
        pid: 4321,
        tid: 4321,
        uid,
        gid: uid,
        cgroup_id: 77,
        comm: comm.into(),
        user: Some(user.into()),
        exe: Some(format!("/usr/bin/{comm}")),
        cgroup: Some("/crew.slice/w.service".into()),
        unit: Some("w.service".into()),
        ..Default::default()
    }
}

pub fn addr(s: &str) -> SocketAddr {
    s.parse().unwrap()
}

/// One event of every kind, the session-scoped ones in `session`.
pub fn every_kind(session: SessionId) -> Vec<(Option<SessionId>, Event)> {
    let approval = uuid::Uuid::now_v7();
    let s = Some(session);
    vec![
        (
            None,
            Event::AgentStarted {
                version: "0.1.0".into(),
                config: "/etc/pam-agent/config.toml".into(),
                governed: vec!["/crew.slice".into()],
                resources: vec!["orders-db".into()],
            },
        ),
        (
            None,
            Event::ConfigReloaded {
                config: "/etc/pam-agent/config.toml".into(),
                ok: false,
                detail: Some("resources[0].port: must be between 1 and 65535".into()),
            },
        ),
        (
            s,
            Event::SessionOpened {
                principal: principal(1001, "alice", "python3"),
                resource: ResourceRef {
                    name: "orders-db".into(),
                    protocol: "postgres".into(),
                },
                destination: addr("10.0.0.5:5432"),
                client: addr("10.0.0.9:40001"),
            },
        ),
        (
            s,
            Event::Statement {
                statement: None,
                kinds: vec!["select".into()],
                tables: Vec::new(),
                functions: Vec::new(),
                flags: Vec::new(),
                reason: None,
                text: Some("SELECT * FROM orders WHERE id = 7".into()),
                fingerprint: Some("fp-orders-by-id".into()),
                decision: Decision::Allow,
                rule: Some("read-orders".into()),
                duration_ms: Some(4),
                rows: Some(1),
                error: None,
            },
        ),
        (
            s,
            Event::Statement {
                statement: None,
                kinds: vec!["select".into()],
                tables: Vec::new(),
                functions: Vec::new(),
                flags: Vec::new(),
                reason: None,
                text: None,
                fingerprint: Some("fp-drop-table".into()),
                decision: Decision::Deny,
                rule: Some("no-ddl".into()),
                duration_ms: None,
                rows: None,
                error: None,
            },
        ),
        (
            s,
            Event::ApprovalRequested {
                approval,
                rule: "bulk-update".into(),
                request: "UPDATE orders SET status = $1".into(),
                approvers: vec!["dba-oncall".into()],
                expires_at: Timestamp::now() + Duration::from_secs(300),
            },
        ),
        (
            s,
            Event::ApprovalDecided {
                approval,
                outcome: ApprovalOutcome::Approved,
                by: "carol@example.com".into(),
                reason: Some("ticket OPS-12".into()),
                grant: None,
            },
        ),
        (s, Event::ApprovalExpired { approval }),
        (
            s,
            Event::MaskingApplied {
                rule: Some("mask-pii".into()),
                columns: vec![MaskedColumn {
                    name: "public.customers.email".into(),
                    method: "redact".into(),
                    values: 12,
                    by: Some("column".into()),
                    rule: Some("mask-pii".into()),
                    pattern: Some("public.*.email".into()),
                    nulled: 0,
                }],
                rows: 12,
                statement: Some(3),
            },
        ),
        (
            s,
            Event::Error {
                component: "postgres".into(),
                message: "upstream closed during startup".into(),
            },
        ),
        (
            s,
            Event::SessionClosed {
                bytes_from_worker: 1200,
                bytes_to_worker: 34000,
                duration_ms: 950,
                end: SessionEnd::Closed,
                detail: None,
            },
        ),
        (
            None,
            Event::ConnectionRefused {
                client: addr("10.0.0.9:40002"),
                reason: "no kernel record for this connection".into(),
                count: Some(1),
                since: None,
            },
        ),
        (
            None,
            Event::ConnectionRefused {
                client: addr("10.0.0.9:40090"),
                reason: "no kernel record for this connection".into(),
                count: Some(1999),
                since: Some("2026-12-01T10:00:00Z".parse().unwrap()),
            },
        ),
        (
            None,
            Event::ResourceResolved {
                resource: "db".into(),
                host: "db.internal".into(),
                addresses: vec!["10.0.0.6".parse().unwrap(), "fd00::6".parse().unwrap()],
                added: vec!["10.0.0.6".parse().unwrap()],
                removed: vec!["10.0.0.5".parse().unwrap()],
            },
        ),
        (
            None,
            Event::AgentStopped {
                reason: "SIGTERM".into(),
            },
        ),
    ]
}

/// Whether a root-only test can run here. Without root it is skipped, except on CI
/// (`CI=true`), where it fails: CI must run it.
pub fn require_root(test: &str) -> bool {
    if nix::unistd::geteuid().is_root() {
        return true;
    }
    if std::env::var("CI").as_deref() == Ok("true") {
        panic!("{test} needs root and CI=true: it must run here");
    }
    report_skip(test, "needs root");
    false
}

/// Records a skipped test where people and scripts see it: a `SKIP` line written to the
/// terminal past the test harness's output capture, and one line appended to
/// `target/<profile>/pam-skipped.log` (count them with `wc -l`).
pub fn report_skip(test: &str, why: &str) {
    use std::io::Write;
    // libtest names each test's thread after the test.
    let name = std::thread::current()
        .name()
        .filter(|n| *n != "main")
        .map_or_else(|| test.to_owned(), |n| format!("{test}::{n}"));
    let line = format!("SKIP {name}: {why} (CI=true makes this a failure)");
    let _ = writeln!(std::io::stderr(), "{line}");
    let log = Path::new(env!("CARGO_BIN_EXE_pam-agent")).with_file_name("pam-skipped.log");
    if let Ok(mut f) = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(log)
    {
        let _ = writeln!(f, "{line}");
    }
}
