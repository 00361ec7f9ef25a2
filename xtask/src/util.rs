//! Running commands, and the build and test steps shared by several tasks.

use std::{
    path::{Path, PathBuf},
    process::Command,
};

use anyhow::{Context, bail};

pub fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("workspace root")
        .to_owned()
}

/// Runs a command to completion, failing with the command line if it fails.
pub fn run(cmd: &mut Command) -> anyhow::Result<()> {
    eprintln!("+ {}", show(cmd));
    let status = cmd
        .status()
        .with_context(|| format!("running {}", show(cmd)))?;
    if !status.success() {
        bail!("{} failed ({status})", show(cmd));
    }
    Ok(())
}

/// Runs a command and returns its stdout.
pub fn output(cmd: &mut Command) -> anyhow::Result<String> {
    let out = cmd
        .output()
        .with_context(|| format!("running {}", show(cmd)))?;
    if !out.status.success() {
        bail!(
            "{} failed ({}): {}",
            show(cmd),
            out.status,
            String::from_utf8_lossy(&out.stderr)
        );
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

fn show(cmd: &Command) -> String {
    let mut s = cmd.get_program().to_string_lossy().into_owned();
    for a in cmd.get_args() {
        s.push(' ');
        s.push_str(&a.to_string_lossy());
    }
    s
}

pub fn cargo() -> Command {
    let mut c = Command::new(std::env::var("CARGO").unwrap_or_else(|_| "cargo".into()));
    c.current_dir(root());
    c
}

pub fn build(release: bool) -> anyhow::Result<()> {
    let mut c = cargo();
    c.args([
        "build",
        "--bins",
        "--package",
        "pam-agent",
        "--package",
        "pam-e2e",
    ]);
    if release {
        c.arg("--release");
    }
    run(&mut c)
}

pub fn bin_dir(release: bool) -> PathBuf {
    root()
        .join("target")
        .join(if release { "release" } else { "debug" })
}

/// Removes leftovers of killed test runs (namespaces, cgroups, pins) before a run.
pub fn sweep(release: bool) {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        return;
    }
    // The fixtures read this variable; one set already names binaries built another
    // way (for profiling: frame pointers, a separate target directory).
    if std::env::var_os("PAM_BIN_DIR").is_none() {
        // SAFETY: called before any thread is spawned.
        unsafe { std::env::set_var("PAM_BIN_DIR", bin_dir(release)) };
    }
    let n = pam_e2e::sweep_leftovers();
    if n > 0 {
        eprintln!("removed {n} leftovers of earlier test runs");
    }
}

/// The whole suite. End-to-end tests share kernel state, so they run one at a time;
/// every test binary runs whatever the others did, and the failures are listed at the end.
pub fn test() -> anyhow::Result<()> {
    run(cargo().args(["fmt", "--all", "--check"]))?;
    run(cargo().args(["clippy", "--all-targets", "--", "-D", "warnings"]))?;
    build(false)?;
    // Default members: everything but the BPF-only kernel crate.
    crate::suite::run_all()
}

/// Replaces the `## heading` section of a Markdown file under the repository root (from
/// its heading to the next `## `), or appends it; the other sections stay as they are.
pub fn replace_section(file: &str, heading: &str, section: &str) -> anyhow::Result<()> {
    let path = root().join(file);
    let existing = std::fs::read_to_string(&path).unwrap_or_default();
    let mut parts: Vec<String> = existing.split("\n## ").map(str::to_owned).collect();
    let body = section.trim_start_matches("## ").trim_end().to_owned() + "\n";
    match parts.iter().skip(1).position(|p| p.starts_with(heading)) {
        Some(i) => parts[i + 1] = body,
        None => parts.push(body),
    }
    let mut text = parts.join("\n## ");
    if !text.ends_with('\n') {
        text.push('\n');
    }
    std::fs::write(&path, text)?;
    Ok(())
}
