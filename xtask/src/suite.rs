//! `cargo xtask test`'s test step: every test binary of the workspace, one at a time (the
//! end-to-end tests share kernel state), each to its end whatever the others did; then a
//! summary with each binary's wall time, every failing binary, and the tests skipped for
//! want of root (counted from the `SKIP` lines the fixtures append to
//! `target/debug/pam-skipped.log`). A binary that runs past [`BINARY_TIMEOUT`] is killed
//! and counted as failed.

use std::{
    path::PathBuf,
    process::{Command, Stdio},
    time::{Duration, Instant},
};

use anyhow::{Context, bail};
use std::os::unix::process::CommandExt;

use crate::util::{bin_dir, cargo, run, sweep};

/// Longest a test binary may run (one at a time) before it is killed and counted as
/// failed: the suite's backstop behind the harness's own per-child deadlines, so one hung
/// test cannot hang CI. The slowest binary takes a few minutes here.
const BINARY_TIMEOUT: Duration = Duration::from_secs(20 * 60);

/// One test binary: its target name and the executable cargo built for it.
struct Binary {
    /// The package's directory name (`pam-agent`, `tests`, ...).
    package: String,
    dir: PathBuf,
    name: String,
    exe: PathBuf,
}

/// Builds every test target and lists their executables (`--message-format=json`).
fn binaries() -> anyhow::Result<Vec<Binary>> {
    let out = cargo()
        .args(["test", "--no-run", "--message-format=json"])
        .stderr(Stdio::inherit())
        .output()
        .context("cargo test --no-run")?;
    if !out.status.success() {
        bail!("building the tests failed ({})", out.status);
    }
    let mut found = Vec::new();
    for line in String::from_utf8_lossy(&out.stdout).lines() {
        let Ok(msg) = serde_json::from_str::<serde_json::Value>(line) else {
            continue;
        };
        if msg["reason"] != "compiler-artifact"
            || !msg["profile"]["test"].as_bool().unwrap_or(false)
        {
            continue;
        }
        let Some(exe) = msg["executable"].as_str() else {
            continue;
        };
        // Tests find data files relative to their package, as under `cargo test`.
        let dir = PathBuf::from(msg["manifest_path"].as_str().unwrap_or("."))
            .parent()
            .map_or_else(crate::util::root, PathBuf::from);
        found.push(Binary {
            package: dir
                .file_name()
                .map_or_else(|| "?".into(), |n| n.to_string_lossy().into_owned()),
            dir,
            name: msg["target"]["name"].as_str().unwrap_or("?").to_owned(),
            exe: exe.into(),
        });
    }
    Ok(found)
}

/// Runs every test binary and the doc tests; fails at the end naming each failure.
pub fn run_all() -> anyhow::Result<()> {
    let bins = binaries()?;
    sweep(false);
    let skipped_log = bin_dir(false).join("pam-skipped.log");
    let _ = std::fs::remove_file(&skipped_log);
    let suite = Instant::now();
    let mut times: Vec<(String, Duration, bool)> = Vec::new();
    for b in &bins {
        let label = format!("{}::{}", b.package, b.name);
        eprintln!("+ {} --test-threads=1", b.exe.display());
        let start = Instant::now();
        let mut child = Command::new(&b.exe)
            .arg("--test-threads=1")
            .current_dir(&b.dir)
            .process_group(0)
            .spawn()
            .with_context(|| format!("running {}", b.exe.display()))?;
        let ok = loop {
            if let Some(status) = child.try_wait()? {
                break status.success();
            }
            if start.elapsed() > BINARY_TIMEOUT {
                // libtest printed the running test's name (`test NAME ... `) above.
                eprintln!(
                    "HUNG: {label} still running after {BINARY_TIMEOUT:?}; killing it (the test named last above)"
                );
                // SAFETY: signalling the process group this function spawned.
                unsafe { libc::kill(-(child.id() as i32), libc::SIGKILL) };
                let _ = child.wait();
                break false;
            }
            std::thread::sleep(Duration::from_millis(100));
        };
        times.push((label, start.elapsed(), ok));
    }
    let doc = run(cargo().args(["test", "--doc"])).is_ok();
    times.push(("doc tests".into(), Duration::ZERO, doc));
    let skipped = std::fs::read_to_string(&skipped_log).unwrap_or_default();
    let skipped: Vec<&str> = skipped.lines().collect();

    eprintln!("\nTest binaries (wall time, one at a time):");
    let mut by_time = times.clone();
    by_time.sort_by_key(|t| std::cmp::Reverse(t.1));
    for (label, t, ok) in &by_time {
        eprintln!(
            "  {:>7.1} s  {}  {label}",
            t.as_secs_f64(),
            if *ok { "ok    " } else { "FAILED" }
        );
    }
    eprintln!("  {:>7.1} s  in all", suite.elapsed().as_secs_f64());
    if skipped.is_empty() {
        eprintln!("Skipped tests: 0");
    } else {
        eprintln!(
            "Skipped tests: {} (run as root with CI=true to run them)",
            skipped.len()
        );
        for s in &skipped {
            eprintln!("  {s}");
        }
    }
    let failed: Vec<&str> = times
        .iter()
        .filter(|t| !t.2)
        .map(|t| t.0.as_str())
        .collect();
    if !failed.is_empty() {
        bail!(
            "{} test binaries failed: {}",
            failed.len(),
            failed.join(", ")
        );
    }
    Ok(())
}
