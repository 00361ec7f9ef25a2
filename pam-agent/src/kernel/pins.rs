//! Where pinned state lives and how generations of links replace each other.
//!
//! ```text
//! <pin_dir>/maps/<MAP>-v<layout>          the shared maps, reused across restarts
//! <pin_dir>/links/<cgroup id>-<program>-<generation>
//! <pin_dir>/links/netns<inode>-<program>-<generation>   (sk_lookup, per network namespace)
//! ```
//! The directories must be root's own and writable by nobody else: bpffs is often
//! mounted world-writable (1777), and whoever could create or write them could plant
//! maps the agent would then trust, or remove its links.
//! A link pin is what keeps a program attached after the agent exits; removing the pin
//! (with no process holding the link) detaches it. Nothing else in the agent names paths
//! under the pin directory. (bpffs refuses names with a dot, hence the dashes.)

use std::{
    fs, io,
    os::unix::fs::{DirBuilderExt, MetadataExt},
    path::{Path, PathBuf},
    time::{SystemTime, UNIX_EPOCH},
};

use super::RedirectError;

/// Identifies one run's links; strictly increasing across restarts on one host.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Generation(u128);

impl Generation {
    pub fn new() -> Self {
        Generation(
            SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .map(|d| d.as_nanos())
                .unwrap_or(0),
        )
    }
}

pub struct Layout {
    root: PathBuf,
    /// Held for the agent's lifetime: one agent per pin directory, or two would fight
    /// over the settings and each other's links.
    _lock: nix::fcntl::Flock<fs::File>,
}

impl Layout {
    pub fn create(root: &Path) -> Result<Layout, RedirectError> {
        check_ancestors(root)?;
        for dir in [root.to_owned(), root.join("maps"), root.join("links")] {
            fs::DirBuilder::new()
                .recursive(true)
                .mode(0o700)
                .create(&dir)
                .map_err(|source| RedirectError::Pin {
                    what: "pin directory".into(),
                    path: dir.display().to_string(),
                    source,
                })?;
            check_owned(&dir)?;
        }
        let dir = fs::File::open(root).map_err(|source| pin_err(root, source))?;
        let lock = nix::fcntl::Flock::lock(dir, nix::fcntl::FlockArg::LockExclusiveNonblock)
            .map_err(|(_, errno)| RedirectError::Busy {
                path: root.display().to_string(),
                source: errno,
            })?;
        Ok(Layout {
            root: root.to_owned(),
            _lock: lock,
        })
    }

    pub fn map(&self, name: &str) -> PathBuf {
        map_path(&self.root, name)
    }

    /// Pin of the sk_lookup link attached to the network namespace with this inode.
    pub fn netns_link(&self, netns_ino: u64, program: &str, generation: Generation) -> PathBuf {
        self.root
            .join("links")
            .join(format!("netns{netns_ino}-{program}-{}", generation.0))
    }

    /// Removes pinned maps of other layout versions (left by an older agent whose links
    /// are gone by now). Returns how many.
    pub fn remove_stale_maps(&self) -> Result<usize, RedirectError> {
        remove_not_ending(
            &self.root.join("maps"),
            &format!("-v{}", pam_common::LAYOUT_VERSION),
        )
    }

    pub fn link(&self, cgroup_id: u64, program: &str, generation: Generation) -> PathBuf {
        self.root
            .join("links")
            .join(format!("{cgroup_id}-{program}-{}", generation.0))
    }

    /// Removes (and so detaches) every link pin not of `keep`. Returns how many.
    pub fn remove_links_except(&self, keep: Generation) -> Result<usize, RedirectError> {
        remove_not_ending(&self.root.join("links"), &format!("-{}", keep.0))
    }
}

/// Where the map `name` of the current layout is pinned under `root`.
pub fn map_path(root: &Path, name: &str) -> PathBuf {
    root.join("maps")
        .join(format!("{name}-v{}", pam_common::LAYOUT_VERSION))
}

/// Refuses a pin directory that is not a real directory owned by us (root) and closed
/// to writes by group and others.
fn check_owned(dir: &Path) -> Result<(), RedirectError> {
    let meta = fs::symlink_metadata(dir).map_err(|source| pin_err(dir, source))?;
    let me = nix::unistd::geteuid().as_raw();
    let problem = if !meta.file_type().is_dir() {
        Some("is not a directory".to_owned())
    } else if meta.uid() != me {
        Some(format!("belongs to uid {}, not {me}", meta.uid()))
    } else if meta.mode() & 0o022 != 0 {
        Some(format!(
            "is writable by others (mode {:o})",
            meta.mode() & 0o7777
        ))
    } else {
        None
    };
    match problem {
        None => Ok(()),
        Some(reason) => Err(RedirectError::UnsafePinDir {
            path: dir.display().to_string(),
            reason,
        }),
    }
}

/// Every existing directory above the pin directory must be root's, and closed to
/// others' writes unless sticky (as bpffs's 1777 root is): whoever can rename entries
/// in a parent could swap the pin directory for their own.
fn check_ancestors(root: &Path) -> Result<(), RedirectError> {
    for dir in root.ancestors().skip(1) {
        if dir.as_os_str().is_empty() {
            continue;
        }
        let Ok(meta) = fs::metadata(dir) else {
            continue; // created below, as ours
        };
        let problem = if meta.uid() != 0 {
            Some(format!(
                "its parent {} belongs to uid {}",
                dir.display(),
                meta.uid()
            ))
        } else if meta.mode() & 0o022 != 0 && meta.mode() & 0o1000 == 0 {
            Some(format!(
                "its parent {} is writable by others without the sticky bit",
                dir.display()
            ))
        } else {
            None
        };
        if let Some(reason) = problem {
            return Err(RedirectError::UnsafePinDir {
                path: root.display().to_string(),
                reason,
            });
        }
    }
    Ok(())
}

/// Removes every pin in `dir` whose name does not end with `suffix`; returns how many.
fn remove_not_ending(dir: &Path, suffix: &str) -> Result<usize, RedirectError> {
    let mut removed = 0;
    for path in list(dir).map_err(|source| pin_err(dir, source))? {
        let name = path
            .file_name()
            .and_then(|n| n.to_str())
            .unwrap_or_default();
        if !name.ends_with(suffix) {
            fs::remove_file(&path).map_err(|source| pin_err(&path, source))?;
            removed += 1;
        }
    }
    Ok(removed)
}

fn list(dir: &Path) -> io::Result<Vec<PathBuf>> {
    match fs::read_dir(dir) {
        Ok(entries) => entries.map(|e| e.map(|e| e.path())).collect(),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(Vec::new()),
        Err(e) => Err(e),
    }
}

fn pin_err(path: &Path, source: io::Error) -> RedirectError {
    RedirectError::Pin {
        what: "pinned object".into(),
        path: path.display().to_string(),
        source,
    }
}

/// What `disable` removed.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Disabled {
    pub links: usize,
    pub maps: usize,
}

/// Turns enforcement off: detaches every program (by removing its link pin), then
/// removes the pinned maps and the pin directory. Run with the agent stopped; a running
/// agent would keep its maps but no longer redirect anything.
pub fn disable(root: &Path) -> Result<Disabled, RedirectError> {
    let mut out = Disabled::default();
    for path in list(&root.join("links")).map_err(|source| pin_err(root, source))? {
        fs::remove_file(&path).map_err(|source| pin_err(&path, source))?;
        out.links += 1;
    }
    for path in list(&root.join("maps")).map_err(|source| pin_err(root, source))? {
        fs::remove_file(&path).map_err(|source| pin_err(&path, source))?;
        out.maps += 1;
    }
    for dir in [root.join("links"), root.join("maps"), root.to_owned()] {
        match fs::remove_dir(&dir) {
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            Err(source) => return Err(pin_err(&dir, source)),
        }
    }
    Ok(out)
}

/// One attached program, as its pin names it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PinnedLink {
    pub cgroup_id: u64,
    pub program: String,
}

/// The network namespaces (by inode) with a pinned link of `program`.
pub fn netns_links(root: &Path, program: &str) -> Result<Vec<u64>, RedirectError> {
    let mut out = Vec::new();
    for path in list(&root.join("links")).map_err(|source| pin_err(root, source))? {
        let name = path
            .file_name()
            .and_then(|n| n.to_str())
            .unwrap_or_default();
        let mut parts = name.splitn(3, '-');
        if let (Some(ns), Some(p)) = (parts.next(), parts.next())
            && p == program
            && let Some(Ok(ino)) = ns.strip_prefix("netns").map(str::parse)
        {
            out.push(ino);
        }
    }
    Ok(out)
}

/// The link pins under `root` (each is one program attached to one cgroup).
pub fn pinned_links(root: &Path) -> Result<Vec<PinnedLink>, RedirectError> {
    let mut out = Vec::new();
    for path in list(&root.join("links")).map_err(|source| pin_err(root, source))? {
        let name = path
            .file_name()
            .and_then(|n| n.to_str())
            .unwrap_or_default();
        // <cgroup id>-<program>-<generation>; program names contain no dashes.
        let mut parts = name.splitn(3, '-');
        if let (Some(id), Some(program)) = (parts.next(), parts.next())
            && let Ok(cgroup_id) = id.parse()
        {
            out.push(PinnedLink {
                cgroup_id,
                program: program.to_owned(),
            });
        }
    }
    Ok(out)
}
