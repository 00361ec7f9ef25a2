//! A worker that keeps one PostgreSQL session open while the test drives it statement by
//! statement (psycopg 3 in autocommit, inside a governed cgroup): for what must hold
//! *across* an event in the agent (a reload, a stop) within one session.

use std::{
    io::{BufRead, BufReader, Lines, Write},
    os::unix::process::CommandExt,
    path::Path,
    process::{Child, ChildStdin, ChildStdout, Command, Stdio},
    time::Duration,
};

use serde_json::Value;

use crate::{Watchdog, agent_bin};

/// Reads a statement per line; answers each with one JSON line: `{"rows": [[text|null]]}`
/// or `{"sqlstate": "42501", "message": "...", "detail": ...}` (the server's or the
/// agent's error), and
/// `{"closed": "..."}` once the connection is gone.
const CLIENT: &str = r#"
import sys, json, psycopg
conn = psycopg.connect(sys.argv[1], autocommit=True)
print(json.dumps({"connected": True}), flush=True)
for line in sys.stdin:
    try:
        cur = conn.execute(line.rstrip("\n"))
        rows = cur.fetchall() if cur.description else []
        out = {"rows": [[None if v is None else str(v) for v in r] for r in rows]}
    except psycopg.Error as e:
        if conn.closed:
            out = {"closed": str(e)}
        else:
            d = e.diag
            out = {"sqlstate": d.sqlstate, "message": d.message_primary, "detail": d.message_detail}
    print(json.dumps(out), flush=True)
"#;

/// One open session; killed (with its process group) on drop.
pub struct Session {
    child: Child,
    /// `None` once [`Session::close`] closed it.
    stdin: Option<ChildStdin>,
    lines: Lines<BufReader<ChildStdout>>,
    /// Kills the client if the whole session outlives [`crate::CHILD_TIMEOUT`], so a
    /// hung read below ends (EOF) instead of hanging the suite.
    _watch: Watchdog,
}

impl Session {
    /// Connects to `uri` from inside the governed cgroup `cgroup`.
    pub fn open(cgroup: &Path, uri: &str) -> Session {
        let mut cmd = Command::new(agent_bin());
        cmd.args(["exec", "--cgroup"])
            .arg(cgroup)
            .args(["--", "python3", "-c", CLIENT, uri])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .process_group(0);
        let what = format!("{cmd:?}");
        let mut child = cmd
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {what}: {e}"));
        let watch = Watchdog::new(child.id(), what.clone(), crate::CHILD_TIMEOUT);
        let stdin = child.stdin.take().expect("stdin");
        let mut lines = BufReader::new(child.stdout.take().expect("stdout")).lines();
        let first = next_json(&mut lines, &what);
        assert_eq!(first["connected"], true, "{what} did not connect: {first}");
        Session {
            child,
            stdin: Some(stdin),
            lines,
            _watch: watch,
        }
    }

    /// Runs one statement (one line) and returns the client's answer.
    pub fn ask(&mut self, sql: &str) -> Value {
        assert!(!sql.contains('\n'), "one statement per line");
        let stdin = self.stdin.as_mut().expect("session open");
        writeln!(stdin, "{sql}").expect("session client's stdin");
        next_json(&mut self.lines, sql)
    }

    /// The rows of a statement that must succeed.
    pub fn rows(&mut self, sql: &str) -> Vec<Vec<Value>> {
        let got = self.ask(sql);
        got["rows"]
            .as_array()
            .unwrap_or_else(|| panic!("{sql}: {got}"))
            .iter()
            .map(|r| r.as_array().cloned().unwrap_or_default())
            .collect()
    }

    /// Ends the session as a client would (closes its input) and waits for it to exit.
    pub fn close(mut self) {
        drop(self.stdin.take());
        let deadline = std::time::Instant::now() + Duration::from_secs(30);
        while self.child.try_wait().ok().flatten().is_none() {
            assert!(
                std::time::Instant::now() < deadline,
                "the session client did not exit within 30 s of its input closing"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

fn next_json(lines: &mut Lines<BufReader<ChildStdout>>, what: &str) -> Value {
    let line = lines
        .next()
        .unwrap_or_else(|| panic!("{what}: the session client ended without an answer"))
        .expect("read the session client's answer");
    serde_json::from_str(&line).unwrap_or_else(|e| panic!("{what}: {line:?}: {e}"))
}

impl Drop for Session {
    fn drop(&mut self) {
        // SAFETY: signalling the process group this fixture spawned.
        unsafe { libc::kill(-(self.child.id() as i32), libc::SIGKILL) };
        let _ = self.child.wait();
    }
}
