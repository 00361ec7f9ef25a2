//! `cargo xtask bench --only journal` (issue 15): the journal's own figures, with the
//! release `pam-agent audit` commands on a scratch journal under `target/`:
//!
//! - records/s appended (acknowledged) by 2,048 sessions each waiting for its record: the
//!   log alone, acknowledged in the OS (`sync = "interval"`) and on disk (`"always"`,
//!   one fdatasync per group); and with the SQLite index built behind the log, with the
//!   rate at which the index kept up;
//! - `audit verify`: the segments alone (a journal without index), and segments + index;
//!   wall time and CPU time (both cores);
//! - `audit query` for one principal over a day.
//!
//! Writes the "Audit journal, format 2 (issue 15)" section of docs/benchmarks.md.

use std::{fmt::Write as _, path::Path, process::Command, time::Instant};

use anyhow::{Context, bail};

use crate::util;

const HEADING: &str = "Audit journal, format 2 (issue 15)";
const RECORDS: u64 = 500_000;
const WRITERS: u64 = 2048;

/// One `audit bench` run's figures.
struct Run {
    appended: f64,
    indexed: f64,
    cpu: f64,
    peak_mib: f64,
}

/// Runs `audit bench`, reads its summary line, and its own rusage (reaped with `wait4`:
/// the children's totals of this process include the build's compilers).
fn bench(journal: &Path, args: &[&str]) -> anyhow::Result<Run> {
    use std::io::Read as _;
    let mut child = Command::new(util::bin_dir(true).join("pam-agent"))
        .args(["audit", "bench", "--journal"])
        .arg(journal)
        .args(["--records", &RECORDS.to_string()])
        .args(["--concurrency", &WRITERS.to_string()])
        .args(args)
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .context("pam-agent audit bench")?;
    let mut err = String::new();
    child
        .stderr
        .take()
        .context("stderr")?
        .read_to_string(&mut err)?;
    let mut status = 0;
    let mut ru = std::mem::MaybeUninit::<libc::rusage>::zeroed();
    // SAFETY: the child is ours and not yet reaped; wait4 fills `status` and `ru`.
    let ru = unsafe {
        if libc::wait4(child.id() as i32, &mut status, 0, ru.as_mut_ptr()) < 0 {
            bail!("wait4: {}", std::io::Error::last_os_error());
        }
        ru.assume_init()
    };
    if !(libc::WIFEXITED(status) && libc::WEXITSTATUS(status) == 0) {
        bail!("audit bench failed: {err}");
    }
    let line = err
        .lines()
        .find(|l| l.contains("records appended"))
        .with_context(|| format!("no summary in: {err}"))?;
    let rate = |after: &str| -> Option<f64> {
        let i = line.find(after)? + after.len();
        line[i..].split_whitespace().next()?.parse().ok()
    };
    let tv = |t: libc::timeval| t.tv_sec as f64 + t.tv_usec as f64 / 1e6;
    Ok(Run {
        appended: rate(" s = ").context("appended rate")?,
        indexed: line
            .rsplit(" = ")
            .next()
            .and_then(|t| t.split_whitespace().next())
            .and_then(|n| n.parse().ok())
            .context("indexed rate")?,
        cpu: tv(ru.ru_utime) + tv(ru.ru_stime),
        peak_mib: ru.ru_maxrss as f64 / 1024.0,
    })
}

/// CPU time (user + system) of finished children so far, in seconds.
fn children_cpu() -> f64 {
    let mut u = std::mem::MaybeUninit::<libc::rusage>::zeroed();
    // SAFETY: getrusage fills the struct it is given.
    let u = unsafe {
        libc::getrusage(libc::RUSAGE_CHILDREN, u.as_mut_ptr());
        u.assume_init()
    };
    let tv = |t: libc::timeval| t.tv_sec as f64 + t.tv_usec as f64 / 1e6;
    tv(u.ru_utime) + tv(u.ru_stime)
}

/// Runs an `audit` command; (wall seconds, CPU seconds, stdout lines).
fn timed(args: &[&str], journal: &Path) -> anyhow::Result<(f64, f64, usize)> {
    let cpu0 = children_cpu();
    let t = Instant::now();
    let out = Command::new(util::bin_dir(true).join("pam-agent"))
        .arg("audit")
        .args(args)
        .arg("--journal")
        .arg(journal)
        .output()?;
    let wall = t.elapsed().as_secs_f64();
    if !out.status.success() {
        bail!(
            "audit {args:?} failed: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }
    Ok((
        wall,
        children_cpu() - cpu0,
        String::from_utf8_lossy(&out.stdout).lines().count(),
    ))
}

pub fn run() -> anyhow::Result<()> {
    let dir = tempfile::Builder::new()
        .prefix("pam-bench-journal")
        .tempdir_in(util::root().join("target"))?;
    let j = |name: &str| dir.path().join(name).join("journal.db");
    for name in ["log", "log-sync", "indexed"] {
        std::fs::create_dir_all(dir.path().join(name))?;
    }
    eprintln!("journal: the log alone, sync = interval...");
    let Run {
        appended: log,
        cpu: log_cpu,
        peak_mib: log_peak,
        ..
    } = bench(&j("log"), &["--no-fsync", "--no-index"])?;
    eprintln!("journal: the log alone, sync = always...");
    let Run {
        appended: log_sync,
        cpu: sync_cpu,
        ..
    } = bench(&j("log-sync"), &["--no-index"])?;
    std::fs::remove_dir_all(dir.path().join("log-sync"))?;
    eprintln!("journal: with the index behind the log...");
    let Run {
        appended: with_index,
        indexed,
        cpu: indexed_cpu,
        peak_mib: indexed_peak,
    } = bench(&j("indexed"), &["--no-fsync"])?;
    eprintln!("journal: verify, query...");
    let (seg_wall, seg_cpu, _) = timed(&["verify"], &j("log"))?;
    let (all_wall, all_cpu, _) = timed(&["verify"], &j("indexed"))?;
    let (q_wall, _, q_rows) = timed(
        &[
            "query",
            "--principal",
            "worker3",
            "--since",
            "1d",
            "--format",
            "jsonl",
        ],
        &j("indexed"),
    )?;
    let load = std::fs::read_to_string("/proc/loadavg").unwrap_or_default();

    let n = RECORDS as f64;

    let mut md = String::new();
    writeln!(
        md,
        "Run: {}. `pam-agent audit bench` with {WRITERS} sessions each waiting for its \
         record before the next (as a session waits before forwarding a statement), {RECORDS} \
         `statement` records of about 330 bytes of JSON; then `audit verify` and `audit \
         query` on the journals it wrote. Load average (1, 5, 15 min) at the end: {}; the \
         machine's 2 CPUs are shared with other work, so wall times include waiting for \
         CPU: the CPU time per record is the figure that carries across runs.\n",
        crate::bench::machine(),
        load.split_whitespace()
            .take(3)
            .collect::<Vec<_>>()
            .join(", ")
    )?;
    writeln!(md, "| measure | records/s | goal |")?;
    writeln!(md, "|---|---:|---|")?;
    writeln!(
        md,
        "| appended, the log alone, acknowledged in the OS (`sync = \"interval\"`) | {log:.0} | ≥ 500k |"
    )?;
    writeln!(
        md,
        "| ... CPU time per record (both cores: {:.0} records/s if the CPUs were the agent's alone) | {:.2} µs | |",
        2.0 * n / log_cpu,
        log_cpu / n * 1e6
    )?;
    writeln!(
        md,
        "| appended, the log alone, one fdatasync per group (`sync = \"always\"`) | {log_sync:.0} | ≥ 100k |"
    )?;
    writeln!(
        md,
        "| ... CPU time per record | {:.2} µs | |",
        sync_cpu / n * 1e6
    )?;
    writeln!(
        md,
        "| appended with the SQLite index built behind the log (same CPUs), `interval` | {with_index:.0} | |"
    )?;
    writeln!(
        md,
        "| the index built behind the log (from the first record to caught up) | {indexed:.0} | |"
    )?;
    writeln!(
        md,
        "| ... CPU time per record, log and index (the index's share: {:.2} µs) | {:.2} µs | |",
        (indexed_cpu - log_cpu) / n * 1e6,
        indexed_cpu / n * 1e6
    )?;
    writeln!(
        md,
        "| `audit verify`, segments (journal without index): wall | {:.0} | ≥ 1M (both cores) |",
        n / seg_wall
    )?;
    writeln!(
        md,
        "| ... CPU time per record | {:.2} µs ({:.0} records/s per CPU-second) | |",
        seg_cpu / n * 1e6,
        n / seg_cpu
    )?;
    writeln!(
        md,
        "| `audit verify`, segments and index (every row parsed, columns re-derived): wall | {:.0} | |",
        n / all_wall
    )?;
    writeln!(
        md,
        "| ... CPU time per record | {:.2} µs | |",
        all_cpu / n * 1e6
    )?;
    writeln!(
        md,
        "\n`audit query --principal worker3 --since 1d --format jsonl` ({q_rows} of the \
         {RECORDS} records, 16 principals): **{q_wall:.2} s** (the principal's sessions from \
         their opening records, then each session's records by `(session, ts_us)`: its time \
         follows the rows it returns, not the journal's size)."
    )?;
    writeln!(
        md,
        "\nPeak resident memory of `audit bench` ({WRITERS} writers): the log alone \
         **{log_peak:.0} MiB**; with the index behind it (its queue full while it lags) \
         **{indexed_peak:.0} MiB**."
    )?;
    util::replace_section(
        "docs/benchmarks.md",
        HEADING,
        &format!("## {HEADING}\n\n{md}"),
    )?;
    println!("{md}");
    Ok(())
}
