//! Deadlines for the child processes of pam-agent's own tests (issue 16): a hung client,
//! server or CLI run fails its test naming what hung instead of hanging CI. The contract
//! of the end-to-end kit's `output_within` / `spawn_watched` (`tests/src/lib.rs`), which
//! this crate's tests cannot depend on: the child runs in its own process group, killed
//! with everything it started once the deadline passes, and the command is printed.
#![allow(dead_code)]

use std::{
    io,
    process::{Child, Command, ExitStatus, Output, Stdio},
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
        mpsc,
    },
    thread::JoinHandle,
    time::Duration,
};

/// How long one child may run: generous, only against a hang.
pub const CHILD_TIMEOUT: Duration = Duration::from_secs(300);

/// Kills process group `pgid` when it outlives `limit`, printing `what`. Dropping it
/// disarms it.
struct Watchdog {
    disarm: Option<mpsc::Sender<()>>,
    thread: Option<JoinHandle<()>>,
    fired: Arc<AtomicBool>,
}

impl Watchdog {
    fn new(pgid: u32, what: String, limit: Duration) -> Watchdog {
        let (tx, rx) = mpsc::channel::<()>();
        let fired = Arc::new(AtomicBool::new(false));
        let flag = fired.clone();
        let thread = std::thread::spawn(move || {
            if let Err(mpsc::RecvTimeoutError::Timeout) = rx.recv_timeout(limit) {
                flag.store(true, Ordering::Release);
                eprintln!("HUNG: {what} still running after {limit:?}; killing it");
                // SAFETY: signalling the process group this test spawned.
                unsafe { libc::kill(-(pgid as i32), libc::SIGKILL) };
            }
        });
        Watchdog {
            disarm: Some(tx),
            thread: Some(thread),
            fired,
        }
    }

    fn fired(&self) -> bool {
        self.fired.load(Ordering::Acquire)
    }
}

impl Drop for Watchdog {
    fn drop(&mut self) {
        drop(self.disarm.take());
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

fn hung(what: &str, limit: Duration, out: &Output) -> io::Error {
    io::Error::new(
        io::ErrorKind::TimedOut,
        format!(
            "HUNG: {what} still running after {limit:?}; killed.\nstdout: {}\nstderr: {}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        ),
    )
}

/// `output()`, `status()` and `spawn()` with a deadline: [`CHILD_TIMEOUT`].
pub trait Deadline {
    /// `output()`; a child killed at its deadline is an error naming it and what it
    /// printed (`.unwrap()` fails the test with that; a `Drop` may ignore it).
    fn output_within(&mut self) -> io::Result<Output>;
    /// `status()` (output inherited), the same way.
    fn status_within(&mut self) -> io::Result<ExitStatus>;
    /// `spawn()`, as a [`Watched`] child: killed with everything it started at its
    /// deadline and when dropped.
    fn spawn_watched(&mut self) -> io::Result<Watched>;
}

impl Deadline for Command {
    fn output_within(&mut self) -> io::Result<Output> {
        use std::os::unix::process::CommandExt;
        let what = format!("{self:?}");
        let child = self
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .process_group(0)
            .spawn()?;
        let dog = Watchdog::new(child.id(), what.clone(), CHILD_TIMEOUT);
        let out = child.wait_with_output()?;
        if dog.fired() {
            return Err(hung(&what, CHILD_TIMEOUT, &out));
        }
        Ok(out)
    }

    fn status_within(&mut self) -> io::Result<ExitStatus> {
        use std::os::unix::process::CommandExt;
        let what = format!("{self:?}");
        let mut child = self.stdin(Stdio::null()).process_group(0).spawn()?;
        let dog = Watchdog::new(child.id(), what.clone(), CHILD_TIMEOUT);
        let status = child.wait()?;
        if dog.fired() {
            let none = Output {
                status,
                stdout: Vec::new(),
                stderr: Vec::new(),
            };
            return Err(hung(&what, CHILD_TIMEOUT, &none));
        }
        Ok(status)
    }

    fn spawn_watched(&mut self) -> io::Result<Watched> {
        use std::os::unix::process::CommandExt;
        let what = format!("{self:?}");
        let child = self.process_group(0).spawn()?;
        let dog = Watchdog::new(child.id(), what.clone(), CHILD_TIMEOUT);
        Ok(Watched {
            child: Some(child),
            dog,
            what,
        })
    }
}

/// A child under a deadline; use it as a [`Child`].
pub struct Watched {
    child: Option<Child>,
    dog: Watchdog,
    what: String,
}

impl Watched {
    /// `Child::wait_with_output`, under the same deadline.
    pub fn wait_with_output(mut self) -> io::Result<Output> {
        let out = self.child.take().expect("child").wait_with_output()?;
        if self.dog.fired() {
            return Err(hung(&self.what, CHILD_TIMEOUT, &out));
        }
        Ok(out)
    }
}

impl std::ops::Deref for Watched {
    type Target = Child;
    fn deref(&self) -> &Child {
        self.child.as_ref().expect("child")
    }
}

impl std::ops::DerefMut for Watched {
    fn deref_mut(&mut self) -> &mut Child {
        self.child.as_mut().expect("child")
    }
}

impl Drop for Watched {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            // SAFETY: signalling the process group this test spawned.
            unsafe { libc::kill(-(child.id() as i32), libc::SIGKILL) };
            let _ = child.wait();
        }
    }
}
