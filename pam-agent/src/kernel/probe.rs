//! Checks that this host can run the kernel side before anything is loaded, so a
//! missing feature is named instead of surfacing as a bare errno from deep in a load.

use std::path::{Path, PathBuf};

use nix::sys::statfs::{BPF_FS_MAGIC, statfs};

#[derive(Debug, thiserror::Error)]
pub enum KernelError {
    #[error(
        "loading eBPF programs needs root (or CAP_BPF, CAP_NET_ADMIN and CAP_SYS_ADMIN); \
         running as uid {0}"
    )]
    NotPrivileged(u32),
    #[error("this kernel has no BPF support usable here (bpf() syscall failed: {0})")]
    NoBpf(std::io::Error),
    #[error("this kernel exposes no cgroup v2 hierarchy: {0}")]
    NoCgroup2(#[from] super::cgroup::CgroupError),
    #[error(
        "pin directory {path} is not on a BPF filesystem and bpffs could not be mounted at \
         {mount}: {source}"
    )]
    NoBpffs {
        path: PathBuf,
        mount: PathBuf,
        source: nix::Error,
    },
}

/// Privileges, the bpf() syscall, cgroup v2 and a bpffs for the pins.
pub fn preflight(pin_dir: &Path) -> Result<(), KernelError> {
    let euid = nix::unistd::geteuid();
    if !euid.is_root() && !has_bpf_caps() {
        return Err(KernelError::NotPrivileged(euid.as_raw()));
    }
    super::cgroup::cgroup2_root()?;
    probe_bpf_syscall()?;
    ensure_bpffs(pin_dir)
}

fn has_bpf_caps() -> bool {
    // CapEff from /proc: CAP_NET_ADMIN=12, CAP_SYS_ADMIN=21, CAP_BPF=39.
    let Ok(status) = std::fs::read_to_string("/proc/self/status") else {
        return false;
    };
    let Some(hex) = status.lines().find_map(|l| l.strip_prefix("CapEff:")) else {
        return false;
    };
    let caps = u64::from_str_radix(hex.trim(), 16).unwrap_or(0);
    [12u32, 21, 39].iter().all(|bit| caps & (1 << bit) != 0)
}

fn probe_bpf_syscall() -> Result<(), KernelError> {
    // BPF_PROG_GET_NEXT_ID (11) with an empty attr: EINVAL/ENOENT mean bpf() exists;
    // ENOSYS means the kernel was built without it.
    let mut attr = [0u8; 16];
    // SAFETY: a plain syscall with a valid pointer to a zeroed attr of the given size.
    let rc = unsafe { libc::syscall(libc::SYS_bpf, 11, attr.as_mut_ptr(), attr.len()) };
    if rc < 0 {
        let err = std::io::Error::last_os_error();
        if err.raw_os_error() == Some(libc::ENOSYS) {
            return Err(KernelError::NoBpf(err));
        }
    }
    Ok(())
}

/// Makes sure the pin directory's parent is a bpffs, mounting one at /sys/fs/bpf if the
/// pin directory is under it and nothing is mounted there yet.
fn ensure_bpffs(pin_dir: &Path) -> Result<(), KernelError> {
    let mut probe = pin_dir.to_owned();
    while !probe.exists() {
        if !probe.pop() {
            break;
        }
    }
    if is_bpffs(&probe) {
        return Ok(());
    }
    let mount = PathBuf::from("/sys/fs/bpf");
    if !pin_dir.starts_with(&mount) {
        return Err(KernelError::NoBpffs {
            path: pin_dir.to_owned(),
            mount: probe,
            source: nix::Error::EINVAL,
        });
    }
    nix::mount::mount(
        Some("bpf"),
        &mount,
        Some("bpf"),
        nix::mount::MsFlags::empty(),
        None::<&str>,
    )
    .map_err(|source| KernelError::NoBpffs {
        path: pin_dir.to_owned(),
        mount: mount.clone(),
        source,
    })?;
    tracing::info!(mount = %mount.display(), "mounted bpffs");
    Ok(())
}

fn is_bpffs(path: &Path) -> bool {
    statfs(path)
        .map(|s| s.filesystem_type() == BPF_FS_MAGIC)
        .unwrap_or(false)
}
