//! Fixture ids that parallel runs cannot share, and the cleanup of what killed runs left.
//!
//! Every fixture name that lives outside the test process (network namespace `pamt<id>`,
//! veth `pt<id>h`, cgroup `pamtest-<tag>-<id>`, pin directory `pamtest-<id>`) carries an id
//! taken in the registry under [`REGISTRY`]: `create_dir` of `<id>` is atomic, so two test
//! processes never take the same id, however many run at once. The slot says which
//! process owns it (pid and start time, so a reused pid does not pass for its owner) and
//! lists the long-lived processes the fixture started (agents, postmasters, servers).
//! A slot whose owner is gone is an orphan: [`reclaim`] kills its processes and removes
//! its namespace, veth, cgroups and pins, by its id only, whether a later run meets it
//! while taking an id or `cargo xtask test` sweeps before the suite.

use std::{
    io::Write,
    path::{Path, PathBuf},
    process::Command,
    sync::atomic::{AtomicU32, Ordering},
};

use crate::OutputWithin;

/// Where the slots live (tmpfs: gone at reboot, like everything they name).
pub const REGISTRY: &str = "/run/pam-e2e";

/// Ids stay below this: a test host's addresses are derived from its id
/// (10.200-249.x.2, fd00:a:b::2) and must not repeat.
const IDS: u32 = 12_500;

static NEXT: AtomicU32 = AtomicU32::new(0);

fn slot(id: u32) -> PathBuf {
    Path::new(REGISTRY).join(id.to_string())
}

/// A process's start time (clock ticks since boot), to tell it from a later one with the
/// same pid.
fn start_time(pid: u32) -> Option<u64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // Fields after the command name, which is in parentheses and may hold spaces.
    let rest = &stat[stat.rfind(')')? + 2..];
    rest.split_whitespace().nth(19)?.parse().ok()
}

fn me() -> String {
    let pid = std::process::id();
    format!("{pid} {}", start_time(pid).unwrap_or(0))
}

/// Whether the process written as "pid start" in a slot still runs.
fn alive(owner: &str) -> bool {
    let mut f = owner.split_whitespace();
    let (Some(pid), Some(start)) = (
        f.next().and_then(|p| p.parse::<u32>().ok()),
        f.next().and_then(|s| s.parse::<u64>().ok()),
    ) else {
        return false;
    };
    start_time(pid) == Some(start)
}

/// A fresh id owned by this process. Slots of dead owners met on the way are reclaimed
/// (their leftovers removed) and taken.
pub fn take() -> u32 {
    std::fs::create_dir_all(REGISTRY).expect("the fixture id registry");
    let base = (std::process::id().wrapping_mul(7919)) % IDS;
    for _ in 0..IDS {
        let id = (base + NEXT.fetch_add(1, Ordering::Relaxed)) % IDS;
        let path = slot(id);
        if std::fs::create_dir(&path).is_ok() {
            std::fs::write(path.join("owner"), me()).expect("slot owner");
            return id;
        }
        let owner = std::fs::read_to_string(path.join("owner")).unwrap_or_default();
        // An owner that has not written its file yet is alive: only a slot with a dead
        // named owner is taken over.
        if !owner.is_empty() && !alive(&owner) && reclaim(id) && std::fs::create_dir(&path).is_ok()
        {
            std::fs::write(path.join("owner"), me()).expect("slot owner");
            return id;
        }
    }
    panic!("no free fixture id under {REGISTRY}: sweep with `cargo xtask test`");
}

/// Gives back an id this process holds, once the fixture named with it is gone.
pub fn release(id: u32) {
    let path = slot(id);
    if std::fs::read_to_string(path.join("owner")).is_ok_and(|o| o == me()) {
        let _ = std::fs::remove_dir_all(path);
    }
}

/// The id at the end of a fixture's name (`pamt12`, `pt12h`, `pamtest-appr-12`).
pub fn id_of(name: &str) -> Option<u32> {
    name.rsplit(|c: char| !c.is_ascii_digit())
        .find(|s| !s.is_empty())
        .and_then(|d| d.parse().ok())
}

/// Notes a long-lived process a fixture with this id started, so that a sweep can stop
/// it if this test process dies without cleaning up.
pub fn note_pid(id: u32, pid: u32) {
    let line = format!("{pid} {}\n", start_time(pid).unwrap_or(0));
    if let Ok(mut f) = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(slot(id).join("pids"))
    {
        let _ = f.write_all(line.as_bytes());
    }
}

/// Removes the leftovers of a dead owner's slot: its processes, namespace, veth, cgroups
/// and pin directory, then the slot. False when another process got to it first.
pub fn reclaim(id: u32) -> bool {
    // Only one process wins the rename; the loser leaves the slot to it.
    let grave = Path::new(REGISTRY).join(format!("reclaim-{id}-{}", std::process::id()));
    if std::fs::rename(slot(id), &grave).is_err() {
        return false;
    }
    let pids = std::fs::read_to_string(grave.join("pids")).unwrap_or_default();
    for line in pids.lines() {
        if alive(line)
            && let Some(pid) = line.split_whitespace().next().and_then(|p| p.parse().ok())
        {
            // SAFETY: kill has no memory preconditions; the pid and its start time
            // were just checked to be the process the fixture started.
            unsafe { libc::kill(pid, libc::SIGKILL) };
        }
    }
    remove_objects(id);
    let _ = std::fs::remove_dir_all(&grave);
    true
}

/// The namespace, veth, cgroups and pins named with `id`.
fn remove_objects(id: u32) -> usize {
    let mut removed = 0;
    let quiet = |args: &[&str]| {
        Command::new("ip")
            .args(args)
            .output_within()
            .is_ok_and(|o| o.status.success())
    };
    if quiet(&["netns", "del", &format!("pamt{id}")]) {
        removed += 1;
    }
    if quiet(&["link", "del", &format!("pt{id}h")]) {
        removed += 1;
    }
    let suffix = format!("-{id}");
    if let Ok(entries) = std::fs::read_dir(crate::cgroup2_root()) {
        for e in entries.flatten() {
            let name = e.file_name().to_string_lossy().into_owned();
            if name.starts_with("pamtest-") && name.ends_with(&suffix) {
                drop(crate::Cgroup { path: e.path() });
                removed += 1;
            }
        }
    }
    let pins = Path::new("/sys/fs/bpf").join(format!("pamtest-{id}"));
    if pins.exists() {
        let _ = Command::new(crate::agent_bin())
            .args(["disable", "--pin-dir"])
            .arg(&pins)
            .output();
        let _ = std::fs::remove_dir_all(&pins);
        removed += 1;
    }
    removed
}

/// Reclaims every slot whose owner is dead. Returns the slots reclaimed.
pub fn sweep() -> usize {
    let Ok(entries) = std::fs::read_dir(REGISTRY) else {
        return 0;
    };
    let mut n = 0;
    for e in entries.flatten() {
        let name = e.file_name().to_string_lossy().into_owned();
        let Ok(id) = name.parse::<u32>() else {
            // A reclaim that was itself killed halfway.
            if name.starts_with("reclaim-") {
                let _ = std::fs::remove_dir_all(e.path());
            }
            continue;
        };
        let owner = std::fs::read_to_string(e.path().join("owner")).unwrap_or_default();
        // A slot just made has no owner written yet: left alone for a minute.
        let young = e
            .metadata()
            .and_then(|m| m.modified())
            .is_ok_and(|t| t.elapsed().is_ok_and(|a| a.as_secs() < 60));
        if (owner.is_empty() && young) || alive(&owner) {
            continue;
        }
        if reclaim(id) {
            n += 1;
        }
    }
    n
}

/// Whether `id` belongs to a live test process (its objects must not be swept).
pub fn live(id: u32) -> bool {
    std::fs::read_to_string(slot(id).join("owner")).is_ok_and(|o| alive(&o))
}
