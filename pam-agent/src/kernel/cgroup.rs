//! cgroup v2: where the hierarchy is mounted, naming governed cgroups, and moving a
//! process into one. The kernel programs are attached per cgroup directory; a cgroup's
//! id (what `bpf_get_current_cgroup_id` returns) is its directory's inode number.

use std::{
    fs,
    io::{self, BufRead},
    os::unix::fs::MetadataExt,
    path::{Path, PathBuf},
};

#[derive(Debug, thiserror::Error)]
pub enum CgroupError {
    #[error("no cgroup v2 hierarchy is mounted (none in /proc/self/mounts); pam-agent needs one")]
    NoCgroup2,
    #[error("cannot read /proc/self/mounts: {0}")]
    Mounts(io::Error),
    #[error("cgroup {0} does not exist")]
    Missing(PathBuf),
    #[error("{0} is not inside the cgroup v2 hierarchy at {1}")]
    Outside(PathBuf, PathBuf),
    #[error("cannot move process into cgroup {path}: {source}")]
    Join { path: PathBuf, source: io::Error },
    #[error("cannot create cgroup {path}: {source}")]
    Create { path: PathBuf, source: io::Error },
}

/// The cgroup2 mount point (`/sys/fs/cgroup` on most systems, `/sys/fs/cgroup/unified`
/// on hybrid layouts), read from /proc/self/mounts rather than assumed.
pub fn cgroup2_root() -> Result<PathBuf, CgroupError> {
    let file = fs::File::open("/proc/self/mounts").map_err(CgroupError::Mounts)?;
    for line in io::BufReader::new(file).lines() {
        let line = line.map_err(CgroupError::Mounts)?;
        let mut fields = line.split_whitespace();
        let (_dev, mount, fstype) = (fields.next(), fields.next(), fields.next());
        if fstype == Some("cgroup2")
            && let Some(mount) = mount
        {
            return Ok(PathBuf::from(unescape_mount(mount)));
        }
    }
    Err(CgroupError::NoCgroup2)
}

/// /proc/self/mounts escapes spaces and the like as octal (`\040`).
fn unescape_mount(s: &str) -> String {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'\\'
            && i + 3 < bytes.len()
            && let Ok(v) = u8::from_str_radix(&s[i + 1..i + 4], 8)
        {
            out.push(v);
            i += 4;
            continue;
        }
        out.push(bytes[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// Resolves a governed cgroup name from the config to its directory. A relative name
/// (`pam-workers.slice`) is taken under the cgroup2 root; an absolute path must lie inside
/// it. The directory must exist.
pub fn resolve(name: &str) -> Result<PathBuf, CgroupError> {
    let root = cgroup2_root()?;
    let path = if Path::new(name).is_absolute() {
        let p = PathBuf::from(name);
        if p.starts_with(&root) {
            p
        } else {
            // "/foo" names a cgroup relative to the root, as in /proc/PID/cgroup.
            root.join(name.trim_start_matches('/'))
        }
    } else {
        root.join(name)
    };
    if !path.starts_with(&root) {
        return Err(CgroupError::Outside(path, root));
    }
    if !path.join("cgroup.procs").exists() {
        return Err(CgroupError::Missing(path));
    }
    Ok(path)
}

/// The cgroup id of a cgroup directory, as eBPF sees it.
pub fn id(path: &Path) -> io::Result<u64> {
    Ok(fs::metadata(path)?.ino())
}

/// Moves the calling process into the cgroup (creating the directory if asked).
pub fn join(path: &Path, create: bool) -> Result<(), CgroupError> {
    if create && !path.exists() {
        fs::create_dir_all(path).map_err(|source| CgroupError::Create {
            path: path.to_owned(),
            source,
        })?;
    }
    if !path.join("cgroup.procs").exists() {
        return Err(CgroupError::Missing(path.to_owned()));
    }
    // Writing "0" moves the writer itself.
    fs::write(path.join("cgroup.procs"), "0").map_err(|source| CgroupError::Join {
        path: path.to_owned(),
        source,
    })
}

/// The cgroup v2 path ("/pam-workers.slice/crew-1") of the cgroup with this id (what
/// eBPF captured at connect time), as long as the cgroup exists: whether or not the
/// process that connected still runs. The id is a kernfs file handle of the cgroup2
/// mount (open_by_handle_at, needs CAP_DAC_READ_SEARCH); None when it cannot be
/// established.
pub fn path_of_id(cgroup_id: u64) -> Option<String> {
    use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
    /// FILEID_KERNFS: the handle is the 8-byte kernfs node id.
    const FILEID_KERNFS: i32 = 0xfe;
    #[repr(C)]
    struct Handle {
        handle_bytes: u32,
        handle_type: i32,
        id: u64,
    }
    let root = cgroup2_root().ok()?;
    let mount = fs::File::open(&root).ok()?;
    let mut handle = Handle {
        handle_bytes: 8,
        handle_type: FILEID_KERNFS,
        id: cgroup_id,
    };
    // SAFETY: a valid mount fd and a file_handle of the size it states.
    let fd = unsafe {
        libc::syscall(
            libc::SYS_open_by_handle_at,
            mount.as_raw_fd(),
            &mut handle as *mut Handle,
            libc::O_RDONLY | libc::O_DIRECTORY | libc::O_CLOEXEC,
        )
    };
    if fd < 0 {
        return None;
    }
    // SAFETY: open_by_handle_at returned a fresh descriptor.
    let fd = unsafe { OwnedFd::from_raw_fd(fd as i32) };
    let path = fs::read_link(format!("/proc/self/fd/{}", fd.as_raw_fd())).ok()?;
    let rel = path.strip_prefix(&root).ok()?;
    Some(format!("/{}", rel.display()))
}

/// The cgroup v2 path of a running process ("/pam-workers.slice/crew-1"), if it still runs.
pub fn of_process(pid: u32) -> Option<String> {
    let text = fs::read_to_string(format!("/proc/{pid}/cgroup")).ok()?;
    text.lines()
        .find_map(|l| l.strip_prefix("0::"))
        .map(str::to_owned)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_the_cgroup2_root_and_resolves_names() {
        let root = cgroup2_root().expect("this machine has cgroup v2");
        assert_eq!(resolve("/").unwrap(), root.join(""));
        assert!(matches!(
            resolve("definitely-not-a-cgroup-xyz"),
            Err(CgroupError::Missing(_))
        ));
        assert!(id(&root).unwrap() > 0);
    }

    #[test]
    fn a_cgroup_id_resolves_to_its_path() {
        let root = cgroup2_root().unwrap();
        assert_eq!(path_of_id(id(&root).unwrap()).as_deref(), Some("/"));
        let mine = of_process(std::process::id()).unwrap();
        let dir = root.join(mine.trim_start_matches('/'));
        if nix::unistd::geteuid().is_root() {
            assert_eq!(path_of_id(id(&dir).unwrap()), Some(mine));
        }
        assert_eq!(path_of_id(u64::MAX - 7), None);
    }

    #[test]
    fn unescapes_octal_in_mount_paths() {
        assert_eq!(unescape_mount("/a\\040b"), "/a b");
        assert_eq!(unescape_mount("/plain"), "/plain");
    }
}
