//! Who is behind a redirected connection: what the kernel captured at `connect()` (pid,
//! uid, gid, cgroup id, command name), completed with the cgroup path and systemd unit
//! of the captured cgroup id (not of whatever cgroup the pid is in later) and, while the
//! process still runs, its executable from /proc. The kernel's values are the evidence;
//! `comm` is chosen by the process itself (prctl) and the executable may have changed
//! by exec since connect(): neither is proof. A fact that cannot be established is
//! absent, and an absent fact satisfies no rule that asks for it.
//!
//! [`named`] turns these facts into a principal's name (`[[principals]]`), the unit
//! rules, masking and the journal speak of; [`attest`] reads the facts that need more
//! than the kernel record (group names, executable hashes, systemd invocation ids,
//! container ids).

pub mod attest;
pub mod named;
pub mod probe;

pub use named::{NamedPrincipal, Naming, Principals, RawPrincipal, UNKNOWN};

use serde::{Deserialize, Serialize};

use crate::kernel::cgroup;

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Principal {
    /// The `[[principals]]` entry these facts matched ([`UNKNOWN`] when none did);
    /// `None` when the config names no principals.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    pub pid: u32,
    /// Thread that called connect().
    pub tid: u32,
    pub uid: u32,
    pub gid: u32,
    pub cgroup_id: u64,
    pub comm: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub user: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub exe: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cgroup: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub unit: Option<String>,
    /// The group name of `gid`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub group: Option<String>,
    /// The audit login uid the kernel kept for the task (who logged in, across su/sudo).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub auid: Option<u32>,
    /// The systemd invocation id of the unit (one per start of the unit).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub invocation_id: Option<String>,
    /// The container id a container runtime wrote into the cgroup path.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub container_id: Option<String>,
    /// SHA-256 of the executable (hex), computed only when a principal selects by it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub exe_sha256: Option<String>,
    /// The executable as the kernel identified it (what `exe` and `exe_sha256` are
    /// checked against).
    #[serde(skip)]
    pub exe_id: Option<ExeId>,
}

/// What an identity provider says of a worker that presented its token
/// (`worker_auth = "oidc"`), verified: rules may match its subject and groups.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct WorkerToken {
    pub issuer: String,
    pub subject: String,
    pub groups: Vec<String>,
    /// `exp`, seconds since the epoch.
    pub expires_at: Option<i64>,
}

/// What the kernel recorded, in plain form.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Captured {
    pub pid: u32,
    pub tid: u32,
    pub uid: u32,
    pub gid: u32,
    pub cgroup_id: u64,
    pub comm: [u8; 16],
    /// The file the task was executing at connect time; None: unknown.
    pub exe: Option<ExeId>,
    /// The task's mount namespace (inode number); 0: unknown.
    pub mnt_ns: u32,
    /// The task's audit login uid; None: unset or unknown.
    pub auid: Option<u32>,
}

/// A file as the kernel identifies it: device (userspace `st_dev` encoding) and inode.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ExeId {
    pub dev: u64,
    pub ino: u64,
}

impl ExeId {
    /// From the kernel's internal device number (major << 20 | minor).
    pub fn from_kernel(kernel_dev: u32, ino: u64) -> Option<ExeId> {
        (ino != 0).then(|| ExeId {
            dev: libc::makedev(kernel_dev >> 20, kernel_dev & 0xf_ffff),
            ino,
        })
    }
}

impl Principal {
    pub fn from_captured(c: Captured) -> Principal {
        let comm_len = c.comm.iter().position(|b| *b == 0).unwrap_or(c.comm.len());
        let cgroup = cgroup::path_of_id(c.cgroup_id);
        let unit = cgroup.as_deref().and_then(systemd_unit);
        let invocation_id = cgroup.as_deref().and_then(attest::invocation_id);
        let container_id = cgroup.as_deref().and_then(attest::container_id);
        Principal {
            name: None,
            pid: c.pid,
            tid: c.tid,
            uid: c.uid,
            gid: c.gid,
            cgroup_id: c.cgroup_id,
            comm: String::from_utf8_lossy(&c.comm[..comm_len]).into_owned(),
            user: attest::user_name(c.uid),
            exe: verified_exe(c.pid, c.exe),
            exe_id: c.exe,
            cgroup,
            unit,
            group: attest::group_name(c.gid),
            auid: c.auid,
            invocation_id,
            container_id,
            exe_sha256: None,
        }
    }
}

/// The executable's path, only if the file at that path (in the agent's own mount
/// namespace) is the very file the kernel saw the task executing at connect time. A
/// later exec into another binary, a binary bind-mounted over an allowed path in the
/// worker's own mount namespace, or a process already gone leave it unknown (None),
/// which satisfies no rule on `exes`.
fn verified_exe(pid: u32, captured: Option<ExeId>) -> Option<String> {
    use std::os::unix::fs::MetadataExt;
    let id = captured?;
    let path = std::fs::read_link(format!("/proc/{pid}/exe")).ok()?;
    let meta = std::fs::metadata(&path).ok()?;
    (meta.dev() == id.dev && meta.ino() == id.ino).then(|| path.display().to_string())
}

/// The innermost systemd unit (`.service` or `.scope`) named in a cgroup path.
fn systemd_unit(cgroup_path: &str) -> Option<String> {
    cgroup_path
        .rsplit('/')
        .find(|c| c.ends_with(".service") || c.ends_with(".scope"))
        .map(str::to_owned)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unit_is_the_innermost_service_or_scope() {
        assert_eq!(
            systemd_unit("/crew.slice/crew-worker@1.service").as_deref(),
            Some("crew-worker@1.service")
        );
        assert_eq!(systemd_unit("/pamtest-1"), None);
    }

    #[test]
    fn completes_from_proc_for_a_live_process() {
        use std::os::unix::fs::MetadataExt;
        let me = std::process::id();
        let mut comm = [0u8; 16];
        comm[..4].copy_from_slice(b"test");
        let exe = std::fs::metadata(std::env::current_exe().unwrap()).unwrap();
        let root = cgroup::cgroup2_root().unwrap();
        let captured = Captured {
            pid: me,
            tid: me,
            uid: nix::unistd::getuid().as_raw(),
            gid: nix::unistd::getgid().as_raw(),
            cgroup_id: cgroup::id(&root).unwrap(),
            comm,
            exe: Some(ExeId {
                dev: exe.dev(),
                ino: exe.ino(),
            }),
            mnt_ns: 0,
            auid: None,
        };
        let p = Principal::from_captured(captured);
        assert_eq!(p.comm, "test");
        assert!(p.exe.is_some());
        assert_eq!(p.cgroup.as_deref(), Some("/"));
        // Another file than the one executed: the path is not believed.
        let other = Principal::from_captured(Captured {
            exe: Some(ExeId {
                dev: exe.dev(),
                ino: exe.ino() + 1,
            }),
            ..captured
        });
        assert_eq!(other.exe, None);
        let unknown = Principal::from_captured(Captured {
            exe: None,
            ..captured
        });
        assert_eq!(unknown.exe, None);
        let m = ExeId::from_kernel((8 << 20) | 1, 5).unwrap();
        assert_eq!(m.dev, libc::makedev(8, 1));
        assert_eq!(ExeId::from_kernel(1, 0), None);
    }
}
