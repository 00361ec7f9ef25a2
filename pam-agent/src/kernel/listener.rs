//! The agent's listening sockets in the `PAM_LISTENERS` sockmap, and the proof that the
//! agent itself holds them.
//!
//! `sk_lookup` delivers every connection to the redirect target to the socket in this
//! map (and drops it when there is none), so whoever binds the target port receives
//! nothing. The kernel removes a socket from the map when it is closed: an entry is
//! evidence that a listener lives, and its cookie says which one. aya 0.14's `SockMap`
//! has 4-byte values, which the kernel will not read back; the map has 8-byte values and
//! is driven here with the plain map syscalls.

use std::{
    fs, io,
    os::fd::{AsFd, AsRawFd, BorrowedFd, FromRawFd, OwnedFd, RawFd},
    path::Path,
};

const BPF_MAP_LOOKUP_ELEM: libc::c_long = 1;
const BPF_MAP_UPDATE_ELEM: libc::c_long = 2;
const BPF_ANY: u64 = 0;

/// `union bpf_attr` for the map element commands.
#[repr(C)]
struct MapElemAttr {
    map_fd: u32,
    _pad: u32,
    key: u64,
    value: u64,
    flags: u64,
}

fn map_elem(cmd: libc::c_long, map: BorrowedFd<'_>, key: &u32, value: &mut u64) -> io::Result<()> {
    let mut attr = MapElemAttr {
        map_fd: map.as_raw_fd() as u32,
        _pad: 0,
        key: key as *const u32 as u64,
        value: value as *mut u64 as u64,
        flags: BPF_ANY,
    };
    // SAFETY: the attr points at a live key and value of the map's sizes (4 and 8).
    let rc = unsafe {
        libc::syscall(
            libc::SYS_bpf,
            cmd,
            &mut attr as *mut MapElemAttr,
            std::mem::size_of::<MapElemAttr>(),
        )
    };
    if rc < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(())
    }
}

/// Puts a listening socket into the sockmap at `index` (replacing what was there).
pub fn register(map: BorrowedFd<'_>, index: u32, socket: BorrowedFd<'_>) -> io::Result<()> {
    let mut value = socket.as_raw_fd() as u64;
    map_elem(BPF_MAP_UPDATE_ELEM, map, &index, &mut value)
}

/// The cookie of the socket at `index`, or None when the slot is empty.
pub fn cookie_at(map: BorrowedFd<'_>, index: u32) -> io::Result<Option<u64>> {
    let mut value = 0u64;
    match map_elem(BPF_MAP_LOOKUP_ELEM, map, &index, &mut value) {
        Ok(()) => Ok(Some(value)),
        Err(e) if e.raw_os_error() == Some(libc::ENOENT) => Ok(None),
        Err(e) => Err(e),
    }
}

fn sockopt_u64(fd: BorrowedFd<'_>, opt: libc::c_int) -> io::Result<u64> {
    let mut value = 0u64;
    let mut len = std::mem::size_of::<u64>() as libc::socklen_t;
    // SAFETY: a valid fd and an out-buffer of the stated length.
    let rc = unsafe {
        libc::getsockopt(
            fd.as_raw_fd(),
            libc::SOL_SOCKET,
            opt,
            (&mut value as *mut u64).cast(),
            &mut len,
        )
    };
    if rc < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(value)
    }
}

/// A socket's cookie (the same number eBPF helpers and the sockmap report).
pub fn socket_cookie(fd: BorrowedFd<'_>) -> io::Result<u64> {
    sockopt_u64(fd, libc::SO_COOKIE)
}

/// The cookie of the network namespace a socket lives in.
pub fn netns_cookie(fd: BorrowedFd<'_>) -> io::Result<u64> {
    sockopt_u64(fd, libc::SO_NETNS_COOKIE)
}

/// Does process `pid` hold an open socket whose cookie is `cookie`? Each of its socket
/// descriptors is duplicated with pidfd_getfd (root may) and asked for its cookie: the
/// answer comes from the kernel, not from what the process claims.
pub fn process_holds(pid: u32, cookie: u64) -> io::Result<bool> {
    // SAFETY: plain syscall; a non-negative result is a new fd we then own.
    let pidfd = unsafe { libc::syscall(libc::SYS_pidfd_open, pid as libc::pid_t, 0) };
    if pidfd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: pidfd_open returned a fresh descriptor.
    let pidfd = unsafe { OwnedFd::from_raw_fd(pidfd as RawFd) };
    for entry in fs::read_dir(format!("/proc/{pid}/fd"))? {
        let entry = entry?;
        let is_socket = fs::read_link(entry.path())
            .map(|t| t.to_string_lossy().starts_with("socket:"))
            .unwrap_or(false);
        let Some(target_fd) = entry
            .file_name()
            .to_str()
            .and_then(|n| n.parse::<libc::c_int>().ok())
        else {
            continue;
        };
        if !is_socket {
            continue;
        }
        // SAFETY: plain syscall; a non-negative result is a new fd we then own.
        let fd = unsafe {
            libc::syscall(
                libc::SYS_pidfd_getfd,
                pidfd.as_raw_fd(),
                target_fd,
                0 as libc::c_uint,
            )
        };
        if fd < 0 {
            continue; // closed meanwhile
        }
        // SAFETY: pidfd_getfd returned a fresh descriptor.
        let fd = unsafe { OwnedFd::from_raw_fd(fd as RawFd) };
        if socket_cookie(fd.as_fd()).ok() == Some(cookie) {
            return Ok(true);
        }
    }
    Ok(false)
}

/// What `status` can prove about one listener slot.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ListenerProof {
    /// The slot is empty: governed connects of this family are refused.
    Absent,
    /// The socket in the slot is held by the agent process that wrote the settings.
    HeldByAgent { pid: u32, cookie: u64 },
    /// A socket is there but the process named in the settings does not hold it.
    NotTheAgent { pid: u32, cookie: u64 },
}

/// Reads one slot of the pinned sockmap at `path` and checks who holds its socket.
pub fn prove(path: &Path, index: u32, agent_pid: u32) -> io::Result<ListenerProof> {
    let map = aya::maps::MapData::from_pin(path).map_err(io::Error::other)?;
    let Some(cookie) = cookie_at(map.fd().as_fd(), index)? else {
        return Ok(ListenerProof::Absent);
    };
    let held = agent_pid != 0 && process_holds(agent_pid, cookie).unwrap_or(false);
    Ok(if held {
        ListenerProof::HeldByAgent {
            pid: agent_pid,
            cookie,
        }
    } else {
        ListenerProof::NotTheAgent {
            pid: agent_pid,
            cookie,
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cookies_of_our_own_sockets_are_found_in_our_process() {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let cookie = socket_cookie(l.as_fd()).unwrap();
        assert_ne!(cookie, 0);
        assert!(netns_cookie(l.as_fd()).unwrap() != 0);
        // pidfd_getfd on oneself needs ptrace rights over oneself, which any process has.
        assert!(process_holds(std::process::id(), cookie).unwrap());
        // Not a neighbour's cookie (cookies are sequential, and other tests in this
        // process open sockets): one no socket of this boot can have.
        assert!(!process_holds(std::process::id(), u64::MAX).unwrap());
    }
}
