//! Types shared by the kernel programs (`pam-ebpf`) and the agent (`pam-agent`).
//!
//! Every type here is `#[repr(C)]`, `Copy` and free of padding: the agent reads and
//! writes them as raw map bytes, so a hidden padding byte would be uninitialised memory
//! crossing the kernel boundary. Addresses are always 16 bytes: IPv4 is stored in its
//! IPv4-mapped IPv6 form (`::ffff:a.b.c.d`) so one key shape serves both families and a
//! dual-stack socket's `::ffff:` connect matches the same resource as a plain IPv4 one.
#![no_std]

/// Version of the map layouts above. Maps are pinned under a name that carries it, so
/// an upgrade that changes a shared type gets fresh maps instead of failing to reuse
/// incompatible ones (the old programs keep their old maps until they are detached).
/// Bump it whenever a type in this crate changes.
pub const LAYOUT_VERSION: u32 = 3;

/// Names of the maps in the eBPF object. The agent pins them under its pin directory,
/// so they outlive the agent process (fail-closed across restarts).
pub mod maps {
    /// LPM trie: [`ResourceKey`] -> [`ResourceValue`]. Filled by the agent.
    pub const PROTECTED: &str = "PAM_PROTECTED";
    /// Array with one [`Settings`] at index 0. Filled by the agent.
    pub const SETTINGS: &str = "PAM_SETTINGS";
    /// Array with one [`TaskOffsets`] at index 0. Filled by the agent from kernel BTF.
    pub const OFFSETS: &str = "PAM_OFFSETS";
    /// Hash: governed cgroup id (u64) -> 1 (u32). Filled by the agent; the root-attached
    /// connect hooks govern a task whose cgroup (or an ancestor) is in it.
    pub const GOVERNED: &str = "PAM_GOVERNED";
    /// Hash: socket cookie (u64) -> [`ConnectRecord`]. Filled by connect4/6, read by
    /// getpeername and the agent, removed by sock_release.
    pub const CONNECTS: &str = "PAM_CONNECTS";
    /// Sockmap: [`LISTENER_V4`] / [`LISTENER_V6`] -> the agent's listening sockets.
    /// The agent inserts them (value: the socket fd); `sk_lookup` delivers every
    /// connection to the redirect target to them, and drops it when they are absent.
    /// Read from userspace, a value is the socket's cookie (hence 8-byte values).
    /// A socket leaves the map when it is closed, so an entry is proof the listener lives.
    pub const LISTENERS: &str = "PAM_LISTENERS";
    /// Sockhash: socket cookie (u64) -> a socket the agent relays in the kernel (`tcp`
    /// resources). Not pinned: it belongs to the running agent, and a socket leaves it
    /// when it closes, so nothing is relayed around an agent that is gone.
    pub const RELAY: &str = "PAM_RELAY";
    /// Hash: socket cookie (u64) -> the cookie of its peer in [`RELAY`]. Filled by the
    /// agent for each relayed pair; the verdict program sends a socket's bytes there.
    pub const RELAY_PEERS: &str = "PAM_RELAY_PEERS";
}

/// Sockmap index of the agent's IPv4 listener (target of IPv4 and `::ffff:` connects).
pub const LISTENER_V4: u32 = 0;
/// Sockmap index of the agent's IPv6 listener.
pub const LISTENER_V6: u32 = 1;

/// Names of the programs in the eBPF object.
pub mod programs {
    pub const CONNECT4: &str = "pam_connect4";
    pub const CONNECT6: &str = "pam_connect6";
    /// The connect hooks attached to the cgroup2 root, judging by the calling task.
    pub const CONNECT4_TASK: &str = "pam_connect4_task";
    pub const CONNECT6_TASK: &str = "pam_connect6_task";
    pub const GETPEERNAME4: &str = "pam_getpeername4";
    pub const GETPEERNAME6: &str = "pam_getpeername6";
    pub const SOCK_OPS: &str = "pam_sock_ops";
    pub const SOCK_RELEASE: &str = "pam_sock_release";
    /// Attached to the agent's network namespace, not to a cgroup.
    pub const SK_LOOKUP: &str = "pam_sk_lookup";
    /// sk_skb stream verdict attached to [`maps::RELAY`]: each relayed socket's
    /// received bytes go out of its peer.
    pub const RELAY_VERDICT: &str = "pam_relay";
}

pub const MAX_PROTECTED: u32 = 4096;
/// Sized for many concurrent governed connections; entries leave at socket release.
pub const MAX_CONNECTS: u32 = 65536;
pub const MAX_GOVERNED: u32 = 1024;
/// Sockets relayed in the kernel at once (two per `tcp` session).
pub const MAX_RELAYED: u32 = 65536;

/// Prefix bits taken by the port in a [`ResourceKey`] (the port is matched exactly).
pub const PORT_PREFIX_BITS: u32 = 16;
/// Prefix bits of an IPv4 address inside its mapped form (`::ffff:` is 96 bits).
pub const V4_MAPPED_PREFIX_BITS: u32 = 96;

pub const AF_INET: u16 = 2;
pub const AF_INET6: u16 = 10;

/// Data part of the LPM-trie key for protected resources. The port comes first so that
/// a prefix reads "exactly this port, then the first N address bits".
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ResourceKey {
    /// Destination port, big-endian bytes.
    pub port: [u8; 2],
    /// Destination address, IPv4 in mapped form.
    pub addr: [u8; 16],
}

#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ResourceValue {
    /// Index of the resource in the agent's config, recorded with each connect.
    pub resource_id: u32,
}

/// Where governed connections are sent, and who must never be redirected.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Settings {
    /// The agent's IPv6 listener address (redirect target of real IPv6 destinations).
    pub proxy_addr6: [u8; 16],
    /// The agent's IPv4 listener address (target of IPv4 and IPv4-mapped destinations).
    pub proxy_addr4: [u8; 4],
    /// Listener port, big-endian bytes.
    pub proxy_port: [u8; 2],
    /// Non-zero once the agent has written these settings. A protected destination met
    /// while this is zero is refused rather than let through.
    pub configured: u16,
    /// The agent's own process id (tgid): its upstream connections are never redirected.
    pub agent_tgid: u32,
    /// Changes at every agent start; copied into each [`ConnectRecord`]. The agent only
    /// trusts records of its own epoch: nothing recorded before a restart is believed.
    pub epoch: u32,
    /// Cookie of the network namespace the agent serves (its own). A governed connect
    /// from any other namespace is refused: its loopback is not the agent's.
    pub netns_cookie: u64,
    /// Bit N set: some governed cgroup is N levels below the cgroup2 root (the levels
    /// at which the task check looks for an ancestor in `PAM_GOVERNED`).
    pub governed_levels: u32,
    /// Explicit padding, always zero.
    pub pad: u32,
}

/// Byte offsets of the kernel fields the connect hooks follow from the current task to
/// its executable's (device, inode) and its mount namespace. Read by the agent from
/// the running kernel's BTF; `valid == 0` (a field not found) makes the hooks record
/// the executable as unknown (all zero).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct TaskOffsets {
    pub task_mm: u32,
    pub mm_exe_file: u32,
    pub file_inode: u32,
    pub inode_ino: u32,
    pub inode_sb: u32,
    pub sb_dev: u32,
    pub task_nsproxy: u32,
    pub nsproxy_mnt_ns: u32,
    /// `mnt_namespace.ns` plus `ns_common.inum`.
    pub mnt_ns_inum: u32,
    pub valid: u32,
    /// `mptcp_sock.first` (the first subflow) and `sock_common.skc_cookie`: an MPTCP
    /// socket's record is kept under its first subflow's cookie (the connect hook
    /// runs on the subflow), which getpeername on the MPTCP socket reads through these.
    pub mptcp_first: u32,
    pub sk_cookie: u32,
    pub mptcp_valid: u32,
    /// `task_struct.loginuid` (the audit login uid, `kuid_t`); 0: not found (the
    /// kernel has no CONFIG_AUDIT), and the login uid is then recorded as unset.
    pub task_loginuid: u32,
}

/// Who connected and where they meant to go, keyed by the worker socket's cookie.
/// Made by the connect hooks for one connection attempt and removed when that attempt
/// ends (the socket reaches TCP_CLOSE) or the socket is released.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ConnectRecord {
    pub cgroup_id: u64,
    /// `bpf_get_current_pid_tgid()`: tgid (process id) in the upper 32 bits.
    pub pid_tgid: u64,
    /// `bpf_get_current_uid_gid()`: gid in the upper 32 bits.
    pub uid_gid: u64,
    /// The socket's network namespace (always the agent's: others are refused).
    pub netns_cookie: u64,
    /// Inode of the executable the calling task ran at connect time (0: unknown).
    pub exe_ino: u64,
    /// Original destination, IPv4 in mapped form.
    pub orig_addr: [u8; 16],
    /// Original destination port, big-endian bytes.
    pub orig_port: [u8; 2],
    /// Address family the worker used: [`AF_INET`], or [`AF_INET6`] (also for `::ffff:`).
    pub family: u16,
    pub resource_id: u32,
    /// Command name (`comm`), NUL-padded.
    pub comm: [u8; 16],
    /// [`Settings::epoch`] when the record was made.
    pub epoch: u32,
    /// Device of that executable's filesystem, in the kernel's encoding
    /// (major << 20 | minor).
    pub exe_dev: u32,
    /// Inode number of the calling task's mount namespace (0: unknown).
    pub mnt_ns: u32,
    /// The calling task's audit login uid (`/proc/PID/loginuid`: set once at login, kept
    /// across su and sudo); [`AUID_UNSET`] when unset or unknown.
    pub auid: u32,
}

/// The login uid of a task no login session started (the kernel's `AUDIT_UID_UNSET`).
pub const AUID_UNSET: u32 = u32::MAX;

/// Maps an IPv4 address (network-order bytes) to its `::ffff:a.b.c.d` form.
pub const fn v4_mapped(v4: [u8; 4]) -> [u8; 16] {
    [
        0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0xff, 0xff, v4[0], v4[1], v4[2], v4[3],
    ]
}

/// Returns the IPv4 address inside a mapped address, if it is one.
pub fn as_v4(addr: &[u8; 16]) -> Option<[u8; 4]> {
    if addr[..10].iter().all(|b| *b == 0) && addr[10] == 0xff && addr[11] == 0xff {
        Some([addr[12], addr[13], addr[14], addr[15]])
    } else {
        None
    }
}

#[cfg(feature = "user")]
mod user {
    // SAFETY: all are repr(C), Copy, and have no padding (checked by size tests below).
    unsafe impl aya::Pod for super::ResourceKey {}
    unsafe impl aya::Pod for super::ResourceValue {}
    unsafe impl aya::Pod for super::Settings {}
    unsafe impl aya::Pod for super::ConnectRecord {}
    unsafe impl aya::Pod for super::TaskOffsets {}
}

#[cfg(test)]
mod tests {
    use super::*;
    use core::mem::size_of;

    #[test]
    fn layouts_have_no_padding() {
        assert_eq!(size_of::<ResourceKey>(), 2 + 16);
        assert_eq!(size_of::<Settings>(), 16 + 4 + 2 + 2 + 4 + 4 + 8 + 4 + 4);
        assert_eq!(
            size_of::<ConnectRecord>(),
            8 * 5 + 16 + 2 + 2 + 4 + 16 + 4 + 4 + 4 + 4
        );
        assert_eq!(size_of::<TaskOffsets>(), 56);
    }

    #[test]
    fn mapped_round_trip() {
        let m = v4_mapped([10, 1, 2, 3]);
        assert_eq!(as_v4(&m), Some([10, 1, 2, 3]));
        let mut v6 = [0u8; 16];
        v6[0] = 0xfd;
        assert_eq!(as_v4(&v6), None);
    }
}
