//! A session whose `session_opened` record cannot be stored is closed before anything is
//! relayed (issue 16), end to end: the journal on a small tmpfs, filled up while the agent
//! runs; the server's own statement log shows what reached it.

use std::{path::PathBuf, process::Command};

use pam_e2e::{
    Agent, Cgroup, OutputWithin, ResourceSpec, TestHost, postgres::PgServer, require_root,
};

const PASSWORD: &str = "pg-full-password";
const POLICY: &str = "[[policy.rules]]\nname = \"all\"\naction = \"allow\"\nkinds = [\"select\"]\n";

/// A tmpfs mounted for the test, unmounted on drop.
struct Tmpfs(PathBuf);

impl Tmpfs {
    fn mount(dir: PathBuf, size: &str) -> Tmpfs {
        let ok = Command::new("mount")
            .args([
                "-t",
                "tmpfs",
                "-o",
                &format!("size={size},mode=0700"),
                "tmpfs",
            ])
            .arg(&dir)
            .output_within()
            .unwrap()
            .status;
        assert!(ok.success(), "mount tmpfs failed");
        Tmpfs(dir)
    }

    /// Writes a file until the file system is full.
    fn fill(&self) {
        let out = Command::new("dd")
            .args(["if=/dev/zero", "bs=4096"])
            .arg(format!("of={}", self.0.join("filler").display()))
            .output_within()
            .unwrap();
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(err.contains("No space left on device"), "{err}");
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg("-l").arg(&self.0).status();
    }
}

fn psql(host: &str, cg: &Cgroup, tag: &str) -> (bool, String, String) {
    pam_e2e::postgres::governed_select(cg, host, PASSWORD, tag)
}

#[test]
fn a_session_whose_opening_cannot_be_stored_is_closed_and_relays_nothing() {
    if !require_root("promises_journal_full") {
        return;
    }
    let host = TestHost::new().expect("test host");
    let pg = PgServer::start(&host, 5432, PASSWORD).expect("postgres");
    pg.log_every_statement();
    let dir = tempfile::tempdir().unwrap();
    let fs = Tmpfs::mount(dir.path().to_owned(), "4m");
    let cg = Cgroup::new("jfull").expect("cgroup");
    let mut agent = Agent::start_with_journal_in(
        &[&cg],
        &[ResourceSpec::postgres("db", host.v4, 5432)],
        &fs.0,
        POLICY,
    )
    .expect("agent");
    let v4 = host.v4.to_string();
    // Control: with room in the journal the worker is answered and the server runs it.
    let (ok, stdout, stderr) = psql(&v4, &cg, "with-room");
    assert!(ok, "{stderr}");
    assert_eq!(stdout, "with-room\n");
    agent.settled();
    assert!(pg.log().contains("statement: select 'with-room'"));
    let connections_before = pg.log().matches("connection authorized").count();
    assert!(connections_before > 0, "the server logs connections");

    fs.fill();
    // The log's last page may still take a few records (a full tmpfs refuses new pages,
    // not writes into one it gave already): sessions go on until one cannot be stored.
    // Each answered one must have reached the server through the agent, on record; the
    // first that cannot be stored must not reach the server at all.
    let mut answered = 0;
    let (tag, stderr) = loop {
        let tag = format!("journal-full-{answered}");
        let (ok, stdout, stderr) = psql(&v4, &cg, &tag);
        if !ok {
            assert!(stdout.is_empty(), "{stdout}");
            break (tag, stderr);
        }
        assert_eq!(stdout, format!("{tag}\n"));
        answered += 1;
        assert!(answered < 200, "a full file system never refused a session");
    };
    // Nothing of the refused session was relayed: no new connection, no statement.
    let log = pg.log();
    assert!(!log.contains(&format!("select '{tag}'")), "{log}");
    assert_eq!(
        log.matches("connection authorized").count(),
        connections_before + answered,
        "a connection reached the server: {log}\n{stderr}"
    );
    let agent_log = agent.log();
    assert!(
        agent_log.contains("cannot journal session; closing it"),
        "{agent_log}"
    );
    let _ = agent.stop();
}
