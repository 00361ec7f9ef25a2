//! The facts of a running process read from /proc, as the kernel programs would
//! capture them if it connected now: for `pam-agent principals explain`, which shows an
//! operator which principal a worker would be before it connects. (The agent itself
//! never names a connection from /proc: it uses what the kernel recorded at connect().)

use std::{os::unix::fs::MetadataExt, path::Path};

use super::{Captured, ExeId, Principal};
use crate::kernel::cgroup;

#[derive(Debug, thiserror::Error)]
pub enum ProbeError {
    #[error("no process {0} (or its /proc entry cannot be read: {1})")]
    NoProcess(u32, std::io::Error),
    #[error("/proc/{0}/{1} has no {2} line")]
    Malformed(u32, &'static str, &'static str),
    #[error("no cgroup named `{0}` under {1}")]
    NoUnit(String, String),
    #[error("unit `{0}` (cgroup {1}) has no running process: start it, or use --pid")]
    EmptyUnit(String, String),
    #[error("cgroup2: {0}")]
    Cgroup(#[from] cgroup::CgroupError),
}

/// The facts of process `pid`, named as the agent would name a connection from it.
pub fn process(pid: u32) -> Result<Principal, ProbeError> {
    let read = |file: &str| {
        std::fs::read_to_string(format!("/proc/{pid}/{file}"))
            .map_err(|e| ProbeError::NoProcess(pid, e))
    };
    let status = read("status")?;
    // The real ids, as bpf_get_current_uid_gid() reports them.
    let first_id = |key: &'static str| {
        status
            .lines()
            .find_map(|l| l.strip_prefix(key))
            .and_then(|v| v.split_whitespace().next())
            .and_then(|v| v.parse::<u32>().ok())
            .ok_or(ProbeError::Malformed(pid, "status", key))
    };
    let (uid, gid) = (first_id("Uid:")?, first_id("Gid:")?);
    let path = cgroup::of_process(pid).ok_or(ProbeError::Malformed(pid, "cgroup", "0::"))?;
    let root = cgroup::cgroup2_root()?;
    let cgroup_id = cgroup::id(&root.join(path.trim_start_matches('/')))
        .map_err(|e| ProbeError::NoProcess(pid, e))?;
    let exe = std::fs::metadata(format!("/proc/{pid}/exe"))
        .ok()
        .map(|m| ExeId {
            dev: m.dev(),
            ino: m.ino(),
        });
    let mut comm = [0u8; 16];
    let name = read("comm")?;
    let name = name.trim_end().as_bytes();
    let n = name.len().min(15);
    comm[..n].copy_from_slice(&name[..n]);
    let auid = read("loginuid")
        .ok()
        .and_then(|s| s.trim().parse::<u32>().ok())
        .filter(|a| *a != u32::MAX);
    Ok(Principal::from_captured(Captured {
        pid,
        tid: pid,
        uid,
        gid,
        cgroup_id,
        comm,
        exe,
        mnt_ns: 0,
        auid,
    }))
}

/// The first process of the systemd unit (or any cgroup) named `unit`, searched under
/// the cgroup2 mount, then its facts.
pub fn unit(unit: &str) -> Result<Principal, ProbeError> {
    let root = cgroup::cgroup2_root()?;
    let dir = find_dir(&root, unit, 8)
        .ok_or_else(|| ProbeError::NoUnit(unit.to_owned(), root.display().to_string()))?;
    let rel = format!("/{}", dir.strip_prefix(&root).unwrap_or(&dir).display());
    let pid = first_pid(&dir, 8).ok_or_else(|| ProbeError::EmptyUnit(unit.to_owned(), rel))?;
    process(pid)
}

fn find_dir(dir: &Path, name: &str, depth: u32) -> Option<std::path::PathBuf> {
    let entries = std::fs::read_dir(dir).ok()?;
    let subdirs: Vec<_> = entries
        .flatten()
        .filter(|e| e.file_type().is_ok_and(|t| t.is_dir()))
        .map(|e| e.path())
        .collect();
    if let Some(hit) = subdirs
        .iter()
        .find(|p| p.file_name().is_some_and(|n| n == name))
    {
        return Some(hit.clone());
    }
    if depth == 0 {
        return None;
    }
    subdirs.iter().find_map(|d| find_dir(d, name, depth - 1))
}

fn first_pid(dir: &Path, depth: u32) -> Option<u32> {
    let procs = std::fs::read_to_string(dir.join("cgroup.procs")).ok()?;
    if let Some(pid) = procs.lines().find_map(|l| l.trim().parse().ok()) {
        return Some(pid);
    }
    if depth == 0 {
        return None;
    }
    std::fs::read_dir(dir)
        .ok()?
        .flatten()
        .filter(|e| e.file_type().is_ok_and(|t| t.is_dir()))
        .find_map(|e| first_pid(&e.path(), depth - 1))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn this_process_is_probed_as_the_kernel_would_see_it() {
        let me = process(std::process::id()).unwrap();
        assert_eq!(me.uid, nix::unistd::getuid().as_raw());
        assert_eq!(me.gid, nix::unistd::getgid().as_raw());
        assert_eq!(
            me.exe.as_deref(),
            std::env::current_exe()
                .ok()
                .and_then(|p| p.to_str().map(str::to_owned))
                .as_deref()
        );
        if nix::unistd::geteuid().is_root() {
            // Naming a cgroup by its id needs CAP_DAC_READ_SEARCH.
            assert_eq!(me.cgroup, cgroup::of_process(std::process::id()));
        }
        assert!(matches!(
            process(u32::MAX - 1),
            Err(ProbeError::NoProcess(..))
        ));
        assert!(matches!(
            unit("no-such-unit-xyz.service"),
            Err(ProbeError::NoUnit(..))
        ));
    }
}
