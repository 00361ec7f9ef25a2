//! Builds the kernel programs (`pam-ebpf`) for the BPF target and hands the object to
//! the agent, which embeds it. Cargo reruns this whenever the kernel or shared sources
//! change, so the embedded object never lags behind its source.
//!
//! Needs a nightly toolchain with `rust-src` and `bpf-linker` (`cargo xtask setup`
//! installs both). `PAM_EBPF_OBJECT=/path/to/object` skips the build and embeds that file.

use std::{env, path::PathBuf, process::Command};

fn main() {
    let out = PathBuf::from(env::var_os("OUT_DIR").expect("OUT_DIR")).join("pam-ebpf.o");
    println!("cargo:rerun-if-env-changed=PAM_EBPF_OBJECT");
    println!("cargo:rerun-if-env-changed=PAM_EBPF_TOOLCHAIN");
    if let Some(prebuilt) = env::var_os("PAM_EBPF_OBJECT") {
        let prebuilt = PathBuf::from(prebuilt);
        println!("cargo:rerun-if-changed={}", prebuilt.display());
        std::fs::copy(&prebuilt, &out)
            .unwrap_or_else(|e| panic!("PAM_EBPF_OBJECT={}: {e}", prebuilt.display()));
        return;
    }

    let manifest = PathBuf::from(env::var_os("CARGO_MANIFEST_DIR").expect("manifest dir"));
    let root = manifest.parent().expect("workspace root").to_owned();
    for watched in [
        "pam-ebpf/src",
        "pam-ebpf/Cargo.toml",
        "pam-common/src",
        "pam-common/Cargo.toml",
    ] {
        println!("cargo:rerun-if-changed={}", root.join(watched).display());
    }
    let toolchain = env::var("PAM_EBPF_TOOLCHAIN").unwrap_or_else(|_| "nightly".into());
    let target_dir = root.join("target").join("ebpf");

    let mut cmd = Command::new("rustup");
    cmd.args([
        "run",
        &toolchain,
        "cargo",
        "build",
        "--package",
        "pam-ebpf",
        "--release",
    ])
    .args(["--target", "bpfel-unknown-none", "-Z", "build-std=core"])
    .arg("--target-dir")
    .arg(&target_dir)
    .current_dir(&root);
    // The outer cargo's settings (rustc wrapper, flags, toolchain) must not leak into
    // a build for another target with another toolchain.
    for (key, _) in env::vars_os() {
        let key = key.to_string_lossy();
        if (key.starts_with("CARGO_") && key != "CARGO_HOME")
            || key.starts_with("RUSTC")
            || key == "RUSTFLAGS"
            || key == "RUSTDOCFLAGS"
            || key == "RUSTUP_TOOLCHAIN"
        {
            cmd.env_remove(key.as_ref());
        }
    }
    let status = cmd.status().unwrap_or_else(|e| {
        panic!("cannot run `rustup run {toolchain} cargo` to build pam-ebpf: {e}; run `cargo xtask setup`")
    });
    if !status.success() {
        panic!(
            "building pam-ebpf failed ({status}); the eBPF build needs `rustup toolchain install \
             {toolchain} --component rust-src` and `bpf-linker` (run `cargo xtask setup`)"
        );
    }
    let object = target_dir.join("bpfel-unknown-none/release/pam-ebpf");
    std::fs::copy(&object, &out).unwrap_or_else(|e| panic!("{}: {e}", object.display()));
}
