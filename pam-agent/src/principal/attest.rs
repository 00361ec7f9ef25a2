//! Facts about a connecting process beyond the kernel record: names of its uid and gid,
//! the SHA-256 of its executable, its systemd unit's invocation id and a container id.
//! Each is read from a source the worker cannot write (NSS, the executable file checked
//! against the kernel's device and inode, the cgroup directory's `trusted.` xattr that
//! only systemd as root sets, the cgroup path the kernel recorded). Lookups that cost
//! more than a map read are remembered, so the first byte of a session does not wait on
//! them twice.

use std::{
    collections::HashMap,
    hash::Hash,
    io::Read,
    os::unix::fs::MetadataExt,
    sync::{Mutex, OnceLock},
};

use sha2::{Digest, Sha256};

use super::ExeId;
use crate::kernel::cgroup;

/// Entries a cache keeps at most; past it, it starts over (names rarely change, and a
/// worker cycling through binaries must not grow the agent without bound).
const MAX_CACHED: usize = 4096;

struct Cache<K, V>(OnceLock<Mutex<HashMap<K, V>>>);

impl<K: Eq + Hash, V: Clone> Cache<K, V> {
    const fn new() -> Self {
        Cache(OnceLock::new())
    }

    fn get_or(&self, key: K, compute: impl FnOnce() -> V) -> V {
        let map = self.0.get_or_init(Default::default);
        if let Some(v) = map.lock().unwrap_or_else(|p| p.into_inner()).get(&key) {
            return v.clone();
        }
        let v = compute();
        let mut m = map.lock().unwrap_or_else(|p| p.into_inner());
        if m.len() >= MAX_CACHED {
            m.clear();
        }
        m.insert(key, v.clone());
        v
    }
}

/// The user name of `uid` (NSS: files, LDAP, sssd).
pub fn user_name(uid: u32) -> Option<String> {
    static NAMES: Cache<u32, Option<String>> = Cache::new();
    NAMES.get_or(uid, || {
        nix::unistd::User::from_uid(uid.into())
            .ok()
            .flatten()
            .map(|u| u.name)
    })
}

/// The group name of `gid`.
pub fn group_name(gid: u32) -> Option<String> {
    static NAMES: Cache<u32, Option<String>> = Cache::new();
    NAMES.get_or(gid, || {
        nix::unistd::Group::from_gid(gid.into())
            .ok()
            .flatten()
            .map(|g| g.name)
    })
}

/// The SHA-256 (hex) of the executable `path`, only if the file opened is the one the
/// kernel saw the task run (same device and inode): a file swapped in at that path
/// after connect() is never hashed in its place. Remembered per file and change time.
pub fn exe_sha256(path: &str, id: ExeId) -> Option<String> {
    static HASHES: Cache<(u64, u64, i64, i64, u64), Option<String>> = Cache::new();
    let mut file = std::fs::File::open(path).ok()?;
    let meta = file.metadata().ok()?;
    if meta.dev() != id.dev || meta.ino() != id.ino {
        return None;
    }
    let key = (
        meta.dev(),
        meta.ino(),
        meta.mtime_nsec() + meta.mtime() * 1_000_000_000,
        meta.ctime_nsec() + meta.ctime() * 1_000_000_000,
        meta.size(),
    );
    HASHES.get_or(key, || {
        let mut hasher = Sha256::new();
        let mut buf = vec![0u8; 64 * 1024];
        loop {
            match file.read(&mut buf) {
                Ok(0) => break,
                Ok(n) => hasher.update(&buf[..n]),
                Err(_) => return None,
            }
        }
        Some(hex(&hasher.finalize()))
    })
}

fn hex(bytes: &[u8]) -> String {
    use std::fmt::Write;
    bytes.iter().fold(String::new(), |mut s, b| {
        let _ = write!(s, "{b:02x}");
        s
    })
}

/// The cgroup path of the innermost systemd unit (`.service` or `.scope`) in `path`.
pub fn unit_cgroup(path: &str) -> Option<&str> {
    let end = path
        .match_indices('/')
        .map(|(i, _)| i)
        .chain([path.len()])
        .rfind(|&i| {
            let comp = path[..i].rsplit('/').next().unwrap_or("");
            comp.ends_with(".service") || comp.ends_with(".scope")
        })?;
    Some(&path[..end])
}

/// The systemd invocation id of the unit whose cgroup holds `path`: the
/// `trusted.invocation_id` xattr systemd (as root) sets on the unit's cgroup, which no
/// unprivileged process can set. A new id each time the unit starts.
pub fn invocation_id(path: &str) -> Option<String> {
    let unit = unit_cgroup(path)?;
    let dir = cgroup::cgroup2_root()
        .ok()?
        .join(unit.trim_start_matches('/'));
    let value = xattr(&dir, "trusted.invocation_id")?;
    let id = String::from_utf8(value).ok()?;
    let id = id.trim_end_matches('\0');
    (id.len() == 32 && id.bytes().all(|b| b.is_ascii_hexdigit())).then(|| id.to_owned())
}

fn xattr(path: &std::path::Path, name: &str) -> Option<Vec<u8>> {
    use std::os::unix::ffi::OsStrExt;
    let path = std::ffi::CString::new(path.as_os_str().as_bytes()).ok()?;
    let name = std::ffi::CString::new(name).ok()?;
    let mut buf = [0u8; 256];
    // SAFETY: both strings are NUL-terminated and the buffer's length is passed.
    let n = unsafe {
        libc::getxattr(
            path.as_ptr(),
            name.as_ptr(),
            buf.as_mut_ptr().cast(),
            buf.len(),
        )
    };
    (n > 0).then(|| buf[..n as usize].to_vec())
}

/// The container id in a cgroup path, as Docker, Podman, containerd and CRI-O write it:
/// a 64-hex-digit component, bare or as `docker-<id>.scope`, `libpod-<id>.scope`,
/// `cri-containerd-<id>.scope`, `crio-<id>.scope`. The innermost one wins.
pub fn container_id(path: &str) -> Option<String> {
    const PREFIXES: [&str; 5] = [
        "docker-",
        "libpod-",
        "cri-containerd-",
        "crio-",
        "containerd-",
    ];
    path.rsplit('/').find_map(|comp| {
        let comp = comp.strip_suffix(".scope").unwrap_or(comp);
        let id = PREFIXES
            .iter()
            .find_map(|p| comp.strip_prefix(p))
            .unwrap_or(comp);
        (id.len() == 64 && id.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f')))
            .then(|| id.to_owned())
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_unit_cgroup_is_cut_after_the_innermost_unit() {
        assert_eq!(
            unit_cgroup("/crew.slice/crew-1.service/worker"),
            Some("/crew.slice/crew-1.service")
        );
        assert_eq!(
            unit_cgroup("/a.slice/b.service/c.scope"),
            Some("/a.slice/b.service/c.scope")
        );
        assert_eq!(unit_cgroup("/pamtest-1"), None);
    }

    #[test]
    fn container_ids_in_the_forms_runtimes_write() {
        let id = "0123456789abcdef".repeat(4);
        for path in [
            format!("/system.slice/docker-{id}.scope"),
            format!("/docker/{id}"),
            format!("/machine.slice/libpod-{id}.scope/container"),
            format!("/kubepods.slice/kubepods-pod1.slice/cri-containerd-{id}.scope"),
        ] {
            assert_eq!(container_id(&path).as_deref(), Some(id.as_str()), "{path}");
        }
        // Not hex, not 64 long, upper case: not an id.
        assert_eq!(container_id(&format!("/x/{}", &id[..63])), None);
        assert_eq!(container_id(&format!("/x/{}", id.to_uppercase())), None);
        assert_eq!(container_id("/crew.slice/crew-1.service"), None);
    }

    #[test]
    fn exe_hash_is_of_the_file_the_kernel_named_only() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("bin");
        std::fs::write(&path, b"abc").unwrap();
        let meta = std::fs::metadata(&path).unwrap();
        let id = ExeId {
            dev: meta.dev(),
            ino: meta.ino(),
        };
        let p = path.to_str().unwrap();
        // echo -n abc | sha256sum
        assert_eq!(
            exe_sha256(p, id).as_deref(),
            Some("ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad")
        );
        let other = ExeId {
            ino: id.ino + 1,
            ..id
        };
        assert_eq!(exe_sha256(p, other), None, "another file than the one run");
        // Rewritten in place: a new hash, not the remembered one.
        std::fs::write(&path, b"abcd").unwrap();
        assert_eq!(
            exe_sha256(p, id).as_deref(),
            Some("88d4266fd4e6338d13b845fcf289579d209c897823b9217da3e161936f031589")
        );
    }
}
