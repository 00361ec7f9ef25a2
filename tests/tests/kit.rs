//! The test kit itself: fixture ids cannot collide between concurrent takers, and a sweep
//! removes what a killed run left (its processes, namespace, cgroup, registry slot) while
//! leaving a live run's fixtures alone.

use std::{
    collections::HashSet,
    process::{Command, Stdio},
};

use pam_e2e::OutputWithin;
use pam_e2e::{Cgroup, TestHost, cgroup2_root, require_root, run_id, sweep_leftovers};

#[test]
fn concurrent_takers_never_share_an_id() {
    if !require_root("kit") {
        return;
    }
    let threads: Vec<_> = (0..8)
        .map(|_| std::thread::spawn(|| (0..50).map(|_| run_id::take()).collect::<Vec<u32>>()))
        .collect();
    let ids: Vec<u32> = threads
        .into_iter()
        .flat_map(|t| t.join().unwrap())
        .collect();
    let distinct: HashSet<u32> = ids.iter().copied().collect();
    assert_eq!(distinct.len(), 400, "an id was handed out twice");
    for id in ids {
        run_id::release(id);
    }
}

fn netns_exists(name: &str) -> bool {
    let out = Command::new("ip")
        .args(["netns", "list"])
        .output_within()
        .unwrap();
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .any(|l| l.split_whitespace().next() == Some(name))
}

#[test]
fn a_sweep_removes_a_killed_runs_leftovers_and_keeps_live_fixtures() {
    if !require_root("kit") {
        return;
    }
    // A live fixture of this (running) test process.
    let live = TestHost::new().expect("test host");
    let live_cg = Cgroup::new("kit-live").expect("cgroup");

    // A killed run's fixture: its slot names an owner that is gone, a namespace, a
    // cgroup and a process it started that still runs.
    let id = run_id::take();
    let mut gone = Command::new("true").spawn().unwrap();
    let dead_pid = gone.id();
    gone.wait().unwrap();
    let slot = std::path::Path::new(run_id::REGISTRY).join(id.to_string());
    std::fs::write(slot.join("owner"), format!("{dead_pid} 1")).unwrap();
    let ns = format!("pamt{id}");
    assert!(
        Command::new("ip")
            .args(["netns", "add", &ns])
            .output_within()
            .unwrap()
            .status
            .success()
    );
    let cg = cgroup2_root().join(format!("pamtest-kit-orphan-{id}"));
    std::fs::create_dir(&cg).unwrap();
    let mut orphan = Command::new("sleep")
        .arg("600")
        .stdin(Stdio::null())
        .spawn()
        .unwrap();
    run_id::note_pid(id, orphan.id());

    let removed = sweep_leftovers();
    assert!(removed >= 1, "nothing swept");
    // The killed run's leftovers are gone: its process was killed (not by us).
    let status = orphan.wait().unwrap();
    assert_eq!(
        std::os::unix::process::ExitStatusExt::signal(&status),
        Some(libc::SIGKILL),
        "{status}"
    );
    assert!(!netns_exists(&ns), "{ns} is still there");
    assert!(!cg.exists(), "{} is still there", cg.display());
    assert!(!slot.exists(), "the dead owner's slot is still there");
    // The live run's fixtures are untouched.
    assert!(netns_exists(&live.ns), "a live test host was swept");
    assert!(live_cg.path.exists(), "a live cgroup was swept");
    assert!(run_id::live(live.id));
}
