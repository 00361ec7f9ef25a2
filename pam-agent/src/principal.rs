//! Who is behind a redirected connection: what the kernel captured at `connect()` (pid,
//! uid, gid, cgroup id, command name), completed with the cgroup path and systemd unit
//! of the captured cgroup id (not of whatever cgroup the pid is in later) and, while the
//! process still runs, its executable from /proc. The kernel's values are the evidence;
//! `comm` is chosen by the process itself (prctl) and the executable may have changed
//! by exec since connect(): neither is proof. A fact that cannot be established is
//! absent, and an absent fact satisfies no rule that asks for it.

use std::{
    collections::HashMap,
    sync::{Mutex, OnceLock},
};

use serde::{Deserialize, Serialize};

use crate::kernel::cgroup;

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Principal {
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
}

impl Principal {
    pub fn from_captured(c: Captured) -> Principal {
        let comm_len = c.comm.iter().position(|b| *b == 0).unwrap_or(c.comm.len());
        let cgroup = cgroup::path_of_id(c.cgroup_id);
        let unit = cgroup.as_deref().and_then(systemd_unit);
        Principal {
            pid: c.pid,
            tid: c.tid,
            uid: c.uid,
            gid: c.gid,
            cgroup_id: c.cgroup_id,
            comm: String::from_utf8_lossy(&c.comm[..comm_len]).into_owned(),
            user: user_name(c.uid),
            exe: std::fs::read_link(format!("/proc/{}/exe", c.pid))
                .ok()
                .map(|p| p.display().to_string()),
            cgroup,
            unit,
        }
    }
}

/// User names by uid, remembered: a name service lookup (NSS: files, LDAP, sssd) per
/// connection would put its latency on every session's first byte.
fn user_name(uid: u32) -> Option<String> {
    static NAMES: OnceLock<Mutex<HashMap<u32, Option<String>>>> = OnceLock::new();
    let names = NAMES.get_or_init(Default::default);
    if let Some(name) = names.lock().unwrap_or_else(|p| p.into_inner()).get(&uid) {
        return name.clone();
    }
    let name = nix::unistd::User::from_uid(uid.into())
        .ok()
        .flatten()
        .map(|u| u.name);
    names
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .insert(uid, name.clone());
    name
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
        let me = std::process::id();
        let mut comm = [0u8; 16];
        comm[..4].copy_from_slice(b"test");
        let p = Principal::from_captured(Captured {
            pid: me,
            tid: me,
            uid: nix::unistd::getuid().as_raw(),
            gid: nix::unistd::getgid().as_raw(),
            cgroup_id: 1,
            comm,
        });
        assert_eq!(p.comm, "test");
        assert!(p.exe.is_some());
        assert!(p.cgroup.is_some());
    }
}
