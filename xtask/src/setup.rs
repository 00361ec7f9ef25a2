//! Installs what building and testing need on a fresh Debian 12 machine, skipping
//! whatever is already present, so running it again costs a few seconds.

use std::process::Command;

use anyhow::Context;

use crate::util::{self, output};

/// Debian packages: LLVM 22 for bpf-linker (matching rustc's LLVM), libclang for
/// pg_query, PostgreSQL and pgbouncer for tests and benchmarks, iproute2 for test hosts,
/// util-linux for setpriv,
/// bpftool for the benchmarks' per-program run-time statistics, openssl for the TLS
/// tests' server certificates, python3-venv for the Python clients' own environment,
/// nodejs for the test OpenID provider (`tests/idp`), curl as the remote approver.
/// dnsmasq-base for the DNS server of the host-name resource tests.
const APT: &[&str] = &[
    "nodejs",
    "curl",
    "python3-venv",
    "llvm-22-dev",
    "libclang-dev",
    "postgresql",
    "postgresql-contrib",
    "postgresql-client",
    "pgbouncer",
    "iproute2",
    "util-linux",
    "bpftool",
    "openssl",
    "dnsmasq-base",
];

/// Python clients used as real workers in tests, and the OCSF schema validator (module
/// name, pip requirement).
const PIP: &[(&str, &str)] = &[
    ("psycopg", "psycopg[binary]==3.3.9"),
    ("asyncpg", "asyncpg==0.32.0"),
    ("psycopg2", "psycopg2-binary==2.9.13"),
    ("sqlalchemy", "SQLAlchemy==2.1.9"),
    ("crewai", "crewai==1.15.30"),
    ("crewai_tools", "crewai-tools==1.15.30"),
    // The OCSF export is validated against the published schema (pam-agent/tests/ocsf).
    ("jsonschema", "jsonschema==4.26.0"),
    ("ocsf_json_schema", "ocsf-json-schema==1.2.0"),
    // psycopg's own test suite runs with it (tests/tests/psycopg_suite.rs).
    ("pytest", "pytest==8.4.2"),
];

const BPF_LINKER_VERSION: &str = "0.13.0";

pub fn run() -> anyhow::Result<()> {
    apt()
        .and_then(|()| rust())
        .and_then(|()| bpf_linker())
        .and_then(|()| pip())
        .and_then(|()| asyncpg_suite())
        .and_then(|()| npm())
        .context("setting up prerequisites (cargo xtask setup)")
}

fn installed(pkg: &str) -> bool {
    Command::new("dpkg-query")
        .args(["-W", "-f=${Status}", pkg])
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).contains("install ok installed"))
        .unwrap_or(false)
}

fn apt() -> anyhow::Result<()> {
    let missing: Vec<&str> = APT.iter().copied().filter(|p| !installed(p)).collect();
    if missing.is_empty() {
        return Ok(());
    }
    util::run(Command::new("apt-get").arg("update").arg("-qq"))?;
    util::run(
        Command::new("apt-get")
            .args(["install", "-y", "-qq", "--no-install-recommends"])
            .args(&missing)
            .env("DEBIAN_FRONTEND", "noninteractive"),
    )
}

fn rust() -> anyhow::Result<()> {
    let stable = output(Command::new("rustup").args(["component", "list", "--installed"]))?;
    for c in ["rustfmt", "clippy"] {
        if !stable.lines().any(|l| l.starts_with(c)) {
            util::run(Command::new("rustup").args(["component", "add", c]))?;
        }
    }
    let toolchains = output(Command::new("rustup").args(["toolchain", "list"]))?;
    if !toolchains.lines().any(|l| l.starts_with("nightly")) {
        util::run(Command::new("rustup").args([
            "toolchain",
            "install",
            "nightly",
            "--profile",
            "minimal",
            "--component",
            "rust-src",
        ]))?;
    }
    let nightly = output(Command::new("rustup").args([
        "component",
        "list",
        "--installed",
        "--toolchain",
        "nightly",
    ]))?;
    if !nightly.lines().any(|l| l.starts_with("rust-src")) {
        util::run(Command::new("rustup").args([
            "component",
            "add",
            "rust-src",
            "--toolchain",
            "nightly",
        ]))?;
    }
    Ok(())
}

fn bpf_linker() -> anyhow::Result<()> {
    let have = Command::new("bpf-linker")
        .arg("--version")
        .output()
        .map(|o| o.status.success())
        .unwrap_or(false);
    if have {
        return Ok(());
    }
    // bpf-linker links against the system LLVM, which must match rustc's (22 here);
    // its build finds llvm-config on PATH.
    let path = format!(
        "/usr/lib/llvm-22/bin:{}",
        std::env::var("PATH").unwrap_or_default()
    );
    util::run(
        Command::new("cargo")
            .args(["install", "bpf-linker", "--version", BPF_LINKER_VERSION])
            .args(["--no-default-features", "--features", "llvm-22"])
            .env("PATH", path),
    )
}

/// The Python environment of the test workers and the demo: a virtual environment, so
/// setup never installs into the system's Python. It sees the system's site packages, so
/// clients already installed there are used rather than installed again.
pub const VENV: &str = "/opt/pam-agent-dev/venv";

/// Puts [`VENV`] first on `PATH`, for this process and every child (cargo, the test
/// binaries, the workers they start): `python3` is then the environment's.
pub fn use_venv() {
    let path = std::env::var_os("PATH").unwrap_or_default();
    let mut dirs = vec![std::path::Path::new(VENV).join("bin")];
    dirs.extend(std::env::split_paths(&path));
    let path = std::env::join_paths(dirs).expect("PATH entries hold no ':'");
    // SAFETY: called from `main` before any thread is started; nothing reads the
    // environment concurrently.
    unsafe { std::env::set_var("PATH", path) };
}

fn pip() -> anyhow::Result<()> {
    let python = std::path::Path::new(VENV).join("bin/python3");
    if !python.exists() {
        util::run(
            Command::new("python3")
                .args(["-m", "venv", "--system-site-packages"])
                .arg(VENV),
        )
        .context("creating the Python virtual environment")?;
    }
    let missing: Vec<&str> = PIP
        .iter()
        .filter(|(module, _)| {
            !Command::new(&python)
                .args(["-c", &format!("import {module}")])
                .output()
                .map(|o| o.status.success())
                .unwrap_or(false)
        })
        .map(|(_, req)| *req)
        .collect();
    if missing.is_empty() {
        return Ok(());
    }
    util::run(
        Command::new(&python)
            .args([
                "-m",
                "pip",
                "install",
                "--quiet",
                "--disable-pip-version-check",
            ])
            .args(&missing),
    )
}

/// asyncpg's own test suite (the `tests/` of its sdist, pinned by digest), which
/// tests/tests/asyncpg_suite.rs runs directly and through the agent. Only `tests/` is
/// kept: the sdist's uncompiled `asyncpg/` beside it would shadow the installed one.
pub const ASYNCPG_SUITE: &str = "/opt/pam-agent-dev/asyncpg-0.32.0-suite";
const ASYNCPG_SDIST: &str = "https://files.pythonhosted.org/packages/80/4e/\
    59dc964f962f09e3ed472e5d2d3ba670a41a2be25080dc62ab3db507ff5e/asyncpg-0.32.0.tar.gz";
const ASYNCPG_SDIST_SHA256: &str =
    "45e64e56714d888330b884aad1dfb363d0bf43fb343e3d1a8968525f3bade478";

fn asyncpg_suite() -> anyhow::Result<()> {
    let dir = std::path::Path::new(ASYNCPG_SUITE);
    if dir.join("tests/test_execute.py").exists() {
        return Ok(());
    }
    let work = tempfile_dir()?;
    let tarball = work.join("asyncpg-0.32.0.tar.gz");
    util::run(
        Command::new("curl")
            .args(["--fail", "--silent", "--show-error", "--location", "-o"])
            .arg(&tarball)
            .arg(ASYNCPG_SDIST),
    )
    .context("downloading asyncpg's sdist (its test suite)")?;
    let sum = output(Command::new("sha256sum").arg(&tarball))?;
    if sum.split_whitespace().next() != Some(ASYNCPG_SDIST_SHA256) {
        anyhow::bail!("asyncpg-0.32.0.tar.gz does not have the pinned digest: {sum}");
    }
    util::run(
        Command::new("tar")
            .arg("-xzf")
            .arg(&tarball)
            .arg("-C")
            .arg(&work)
            .arg("asyncpg-0.32.0/tests"),
    )?;
    std::fs::create_dir_all(dir)?;
    util::run(
        Command::new("cp")
            .arg("-r")
            .arg(work.join("asyncpg-0.32.0/tests"))
            .arg(dir),
    )?;
    std::fs::remove_dir_all(&work)?;
    Ok(())
}

/// A fresh directory for downloads.
fn tempfile_dir() -> anyhow::Result<std::path::PathBuf> {
    let dir = std::env::temp_dir().join(format!("pam-xtask-{}", std::process::id()));
    std::fs::create_dir_all(&dir)?;
    Ok(dir)
}

/// The test OpenID provider (`oidc-provider`, pinned by `tests/idp/package-lock.json`),
/// installed into `tests/idp/node_modules`.
fn npm() -> anyhow::Result<()> {
    let dir = util::root().join("tests/idp");
    if dir.join("node_modules/oidc-provider").exists() {
        return Ok(());
    }
    util::run(
        Command::new("npm")
            .args(["ci", "--no-audit", "--no-fund", "--prefix"])
            .arg(&dir),
    )
    .context("installing the test OpenID provider (npm ci in tests/idp)")
}
