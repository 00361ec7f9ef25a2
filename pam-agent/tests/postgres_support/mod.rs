//! Test support for the postgres session: a real PostgreSQL 15 server in a temp dir
//! (SCRAM authentication), the proxy serving one `postgres::serve` per accepted
//! connection toward it, and helpers to run real clients against the proxy.
#![allow(dead_code)]

use std::{
    net::TcpListener as StdListener,
    path::{Path, PathBuf},
    process::{Command, Output},
    sync::{Arc, mpsc},
    thread,
};

use pam_agent::{
    govern::{Approvals, Gate, Rules, RulesHandle, Session},
    journal::{Event, Journal, Record, SessionId},
    policy::RawPolicy,
    principal::Principal,
    protocols::postgres::{
        self, CancelRegistry,
        sql::{Classifier, ClassifierConfig},
    },
};
use tokio_util::sync::CancellationToken;

mod jsonl;
pub mod raw;
pub mod template;

pub use template::deadline::Deadline;

pub const PASSWORD: &str = "s3cret-pw";
const BIN: &str = "/usr/lib/postgresql/15/bin";

pub struct PgServer {
    dir: PathBuf,
    pub port: u16,
}

fn free_port() -> u16 {
    StdListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

fn run(cmd: &mut Command) -> Output {
    let out = cmd.output_within().expect("command runs");
    assert!(
        out.status.success(),
        "{cmd:?} failed:\n{}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

impl PgServer {
    /// A copy of the template cluster (scram-sha-256, plus `trusty` trusted from
    /// 127.0.0.1 for raw-protocol tests), started on a free port, with the test schema.
    pub fn start() -> PgServer {
        let dir = std::env::temp_dir().join(format!("pam-pg-{}", uuid::Uuid::now_v7()));
        std::fs::create_dir_all(&dir).unwrap();
        run(Command::new("chown").arg("postgres").arg(&dir));
        let data = dir.join("data");
        template::copy_to(
            &data,
            &["--auth=scram-sha-256", "-U", "postgres", "--no-sync"],
            Some(PASSWORD),
            "host all trusty 127.0.0.1/32 trust\n",
        );
        let port = free_port();
        run(Command::new("runuser")
            .args(["-u", "postgres", "--"])
            .arg(format!("{BIN}/pg_ctl"))
            .arg("-D")
            .arg(&data)
            .arg("-o")
            .arg(format!(
                "-p {port} -k {} -c listen_addresses=127.0.0.1 -c fsync=off",
                dir.display()
            ))
            .arg("-l")
            .arg(dir.join("log"))
            .args(["-w", "start"]));
        let server = PgServer { dir, port };
        server.direct(
            "CREATE ROLE trusty LOGIN SUPERUSER;
             CREATE TABLE orders (id int PRIMARY KEY, item text, qty int);
             INSERT INTO orders SELECT g, 'item' || g, g * 10 FROM generate_series(1, 5) g;
             CREATE SCHEMA secret;
             CREATE TABLE secret.keys (k text);
             INSERT INTO secret.keys VALUES ('the-key');
             CREATE TABLE audit_log (id serial, note text);",
        );
        server
    }

    /// Runs SQL directly against the server (not through the proxy).
    pub fn direct(&self, sql: &str) -> String {
        let out = run(Command::new("psql")
            .env("PGPASSWORD", PASSWORD)
            .args([
                "-X",
                "-At",
                "-v",
                "ON_ERROR_STOP=1",
                "-h",
                "127.0.0.1",
                "-U",
                "postgres",
                "-d",
                "postgres",
            ])
            .arg("-p")
            .arg(self.port.to_string())
            .arg("-c")
            .arg(sql));
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }
}

impl Drop for PgServer {
    fn drop(&mut self) {
        let _ = Command::new("runuser")
            .args(["-u", "postgres", "--"])
            .arg(format!("{BIN}/pg_ctl"))
            .arg("-D")
            .arg(self.dir.join("data"))
            .args(["-m", "immediate", "-w", "stop"])
            .output_within();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// The principal every test session runs as.
pub fn crew() -> Principal {
    Principal {
        pid: 4242,
        tid: 4242,
        uid: 1001,
        gid: 1001,
        cgroup_id: 77,
        comm: "python3".into(),
        user: Some("crew".into()),
        exe: Some("/usr/bin/python3.11".into()),
        cgroup: Some("/crew.slice/worker-1.service".into()),
        unit: Some("worker-1.service".into()),
        ..Default::default()
    }
}

pub struct Options {
    pub policy: String,
    pub max_message_bytes: Option<usize>,
    pub tls: Option<tokio_rustls::TlsAcceptor>,
    /// The journal fails to store any Statement record whose text contains this.
    pub fail_journal_on: Option<String>,
    /// A `[masking]` section (TOML, without the header); its rules apply to `crew()`.
    pub masking: Option<String>,
    /// `journal.parameters`.
    pub parameters: pam_agent::govern::ParameterRecording,
}

/// A journal store that fails on chosen records (a full disk, a lost volume).
struct FailingStore {
    inner: jsonl::JsonlStore,
    needle: String,
}

impl pam_agent::journal::JournalStore for FailingStore {
    fn last_seq(&self) -> u64 {
        self.inner.last_seq()
    }

    fn append(&mut self, records: &[Record]) -> Result<(), pam_agent::journal::JournalError> {
        let fails = records.iter().any(
            |r| matches!(&r.event, Event::Statement { text: Some(text), .. } if text.contains(&self.needle)),
        );
        if fails {
            return Err(std::io::Error::other("disk full (test)").into());
        }
        self.inner.append(records)
    }
}

impl Options {
    pub fn policy(p: &str) -> Options {
        Options {
            policy: p.to_owned(),
            max_message_bytes: None,
            tls: None,
            fail_journal_on: None,
            masking: None,
            parameters: Default::default(),
        }
    }

    pub fn masked(policy: &str, masking: &str) -> Options {
        Options {
            masking: Some(masking.to_owned()),
            ..Options::policy(policy)
        }
    }
}

/// The `[masking]` rules of a test (the gate picks `crew()`'s on resource `db`).
fn masking_rules(masking: Option<&str>) -> pam_agent::mask::MaskingPolicy {
    match masking {
        Some(m) => {
            let cfg: pam_agent::mask::MaskingConfig = toml::from_str(m).expect("masking TOML");
            pam_agent::mask::MaskingPolicy::compile(&cfg).expect("valid masking")
        }
        None => pam_agent::mask::MaskingPolicy::none(),
    }
}

pub struct Proxy {
    pub port: u16,
    /// Replace the rules here to act as a reload.
    pub rules: RulesHandle,
    pub journal_path: PathBuf,
    shutdown: CancellationToken,
    thread: Option<thread::JoinHandle<()>>,
}

impl Proxy {
    pub fn start(server: &PgServer, policy: &str) -> Proxy {
        Self::with(server, Options::policy(policy))
    }

    pub fn with(server: &PgServer, opts: Options) -> Proxy {
        // RUST_LOG=pam_agent=trace shows every message of every session.
        let _ = tracing_subscriber::fmt()
            .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
            .with_test_writer()
            .try_init();
        let raw: RawPolicy = toml::from_str(&opts.policy).expect("policy TOML");
        let (policy, mut limits) = raw
            .validate(&["db"], &postgres::sql::VOCABULARY)
            .expect("valid policy");
        if let Some(m) = opts.max_message_bytes {
            limits.max_message_bytes = m;
        }
        let rules = RulesHandle::new(Rules {
            policy,
            masking: masking_rules(opts.masking.as_deref()),
            principals: Default::default(),
        });
        let handle = rules.clone();
        let journal_path = server
            .dir()
            .join(format!("journal-{}.jsonl", uuid::Uuid::now_v7()));
        let shutdown = CancellationToken::new();
        let (port_tx, port_rx) = mpsc::channel();
        let upstream = pam_agent::protocols::Dialer {
            addr: ([127, 0, 0, 1], server.port).into(),
            timeout: std::time::Duration::from_secs(5),
        };
        let jp = journal_path.clone();
        let sd = shutdown.clone();
        let parameters = opts.parameters;
        let thread = thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_multi_thread()
                .worker_threads(2)
                .enable_all()
                .build()
                .unwrap();
            rt.block_on(async move {
                let store = jsonl::JsonlStore::open(&jp).unwrap();
                let (journal, writer) = match opts.fail_journal_on.clone() {
                    Some(needle) => Journal::start(FailingStore {
                        inner: store,
                        needle,
                    }),
                    None => Journal::start(store),
                };
                let classifier = Classifier::start(ClassifierConfig {
                    max_statement_bytes: limits.max_statement_bytes,
                    ..Default::default()
                })
                .unwrap();
                let cancels = Arc::new(CancelRegistry::default());
                let memory = pam_agent::memory_budget::Budget::new(
                    pam_agent::memory_budget::DEFAULT_BUDGET_BYTES,
                );
                let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
                port_tx.send(listener.local_addr().unwrap().port()).unwrap();
                let tracker = tokio_util::task::TaskTracker::new();
                loop {
                    let (worker, _) = tokio::select! {
                        a = listener.accept() => a.unwrap(),
                        _ = sd.cancelled() => break,
                    };
                    let session = Arc::new(Session {
                        id: SessionId::new(),
                        principal: crew(),
                        resource: "db".into(),
                        journal: journal.clone(),
                        parameters,
                    });
                    let gate = Gate::new(session.clone(), rules.clone(), Approvals::unavailable());
                    let ctx = postgres::Context {
                        session,
                        limits,
                        memory: memory.session(),
                        classifier: classifier.clone(),
                        cancels: cancels.clone(),
                        tls: opts.tls.clone(),
                        upstream_tls: None,
                        injection: None,
                        worker_token: None,
                    };
                    let upstream = upstream.clone();
                    let sd = sd.clone();
                    tracker.spawn(async move {
                        let session = ctx.session.id;
                        let journal = ctx.session.journal.clone();
                        let o = postgres::serve(worker, upstream, ctx, gate, &sd).await;
                        let _ = journal
                            .record(
                                Some(session),
                                Event::SessionClosed {
                                    bytes_from_worker: o.from_worker,
                                    bytes_to_worker: o.to_worker,
                                    duration_ms: 0,
                                    end: o.end,
                                    detail: o.detail,
                                },
                            )
                            .await;
                    });
                }
                tracker.close();
                tracker.wait().await;
                drop(journal);
                let _ = tokio::task::spawn_blocking(move || writer.join()).await;
            });
        });
        let port = port_rx.recv().unwrap();
        Proxy {
            port,
            rules: handle,
            journal_path,
            shutdown,
            thread: Some(thread),
        }
    }

    pub fn records(&self) -> Vec<Record> {
        jsonl::read_all(&self.journal_path)
    }

    /// Waits (up to 30 s) for a record matching `found`, written in the background.
    pub fn wait_for_record(&self, what: &str, found: impl Fn(&Record) -> bool) -> Record {
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
        loop {
            if let Some(r) = self.records().into_iter().find(|r| found(r)) {
                return r;
            }
            assert!(
                std::time::Instant::now() < deadline,
                "timed out waiting for {what}: {:#?}",
                self.records()
            );
            thread::sleep(std::time::Duration::from_millis(20));
        }
    }

    /// The records once every session seen so far has its `session_closed` record (the
    /// last one a session writes: completions and masking records come before it). For
    /// records written in the background after the client has its answer.
    pub fn settled_records(&self) -> Vec<Record> {
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
        loop {
            let records = self.records();
            let sessions: std::collections::HashSet<_> =
                records.iter().filter_map(|r| r.session).collect();
            let closed: std::collections::HashSet<_> = records
                .iter()
                .filter(|r| matches!(r.event, Event::SessionClosed { .. }))
                .filter_map(|r| r.session)
                .collect();
            if sessions == closed {
                return records;
            }
            assert!(
                std::time::Instant::now() < deadline,
                "sessions without a close record after 30 s: {:?}",
                sessions.difference(&closed).collect::<Vec<_>>()
            );
            thread::sleep(std::time::Duration::from_millis(20));
        }
    }

    /// (statement text, decision, rule) of every Statement record.
    pub fn decisions(&self) -> Vec<(String, String, String)> {
        self.records()
            .into_iter()
            .filter_map(|r| match r.event {
                Event::Statement {
                    text,
                    decision,
                    rule,
                    ..
                } => Some((
                    text.unwrap_or_default(),
                    decision.as_str().to_owned(),
                    rule.unwrap_or_default(),
                )),
                _ => None,
            })
            .collect()
    }

    pub fn conninfo(&self) -> String {
        format!(
            "host=127.0.0.1 port={} user=postgres dbname=postgres password={PASSWORD} sslmode=disable",
            self.port
        )
    }

    /// psql through the proxy with `sql` as its input script (errors do not stop it).
    pub fn psql(&self, sql: &str) -> PsqlRun {
        self.psql_args(sql, &[])
    }

    pub fn psql_args(&self, sql: &str, extra: &[&str]) -> PsqlRun {
        let out = Command::new("psql")
            .args(["-X", "-At", "-v", "VERBOSITY=verbose"])
            .args(extra)
            .arg(self.conninfo())
            .arg("-c")
            .arg(sql)
            .output_within()
            .unwrap();
        PsqlRun::from(out)
    }

    /// psql reading a script from stdin (several commands, one connection).
    pub fn psql_script(&self, script: &str) -> PsqlRun {
        use std::io::Write;
        let mut child = Command::new("psql")
            .args([
                "-X",
                "-At",
                "-v",
                "VERBOSITY=verbose",
                "-v",
                "ON_ERROR_STOP=0",
            ])
            .arg(self.conninfo())
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn_watched()
            .unwrap();
        child
            .stdin
            .take()
            .unwrap()
            .write_all(script.as_bytes())
            .unwrap();
        PsqlRun::from(child.wait_with_output().unwrap())
    }

    /// Runs a client script from tests/clients/ with the proxy's port and password.
    pub fn python(&self, script: &str, args: &[&str]) -> PsqlRun {
        let path = Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("tests/clients")
            .join(script);
        let out = Command::new("python3")
            .arg(path)
            .arg(self.port.to_string())
            .arg(PASSWORD)
            .args(args)
            .output_within()
            .unwrap();
        PsqlRun::from(out)
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        self.shutdown.cancel();
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

#[derive(Debug)]
pub struct PsqlRun {
    pub ok: bool,
    pub stdout: String,
    pub stderr: String,
}

impl From<Output> for PsqlRun {
    fn from(o: Output) -> Self {
        PsqlRun {
            ok: o.status.success(),
            stdout: String::from_utf8_lossy(&o.stdout).into_owned(),
            stderr: String::from_utf8_lossy(&o.stderr).into_owned(),
        }
    }
}

/// A policy for most tests: the crew reads and writes public tables, with guard rails.
pub const CREW_POLICY: &str = r#"
[[rules]]
name = "no-unbounded-writes"
action = "deny"
if_flags = ["update_without_where", "delete_without_where"]

[[rules]]
name = "schema-changes-need-approval"
action = "require_approval"
kinds = ["ddl", "dcl", "admin"]

[[rules]]
name = "crew-public-rw"
action = "allow"
resources = ["db"]
users = ["crew"]
kinds = ["select", "insert", "update", "delete", "transaction", "copy_in", "copy_out", "session", "cursor"]
tables = ["public.*", "pg_catalog.*"]
"#;
