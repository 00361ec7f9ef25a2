//! Template clusters: one `initdb` per machine and set of options, made under a lock
//! (so concurrent test binaries make it once) and kept; every server of these tests
//! starts from a copy, far cheaper than an `initdb` each (the end-to-end kit does the
//! same, `tests/src/postgres.rs`).

use std::{
    hash::{Hash, Hasher},
    path::{Path, PathBuf},
    process::Command,
};

/// Child process deadlines, here so every includer of this file has them.
#[path = "../common/deadline.rs"]
pub mod deadline;

use deadline::Deadline;

const BIN: &str = "/usr/lib/postgresql/15/bin";

/// Copies the cluster `initdb ARGS` makes (with `password` for the `postgres` superuser,
/// if any), followed by `pg_hba` (lines put first in pg_hba.conf), to `data`, owned
/// by the `postgres` user.
pub fn copy_to(data: &Path, args: &[&str], password: Option<&str>, pg_hba: &str) {
    let template = template(args, password, pg_hba);
    let out = Command::new("cp")
        .arg("-a")
        .arg(&template)
        .arg(data)
        .output_within()
        .expect("cp");
    assert!(
        out.status.success(),
        "copying the template cluster {}: {}",
        template.display(),
        String::from_utf8_lossy(&out.stderr)
    );
}

fn template(args: &[&str], password: Option<&str>, pg_hba: &str) -> PathBuf {
    // The options name the template: a change of them makes another one.
    let mut h = std::collections::hash_map::DefaultHasher::new();
    (args, password, pg_hba).hash(&mut h);
    let root = std::env::temp_dir().join(format!("pam-pg-template-15-{:016x}", h.finish()));
    let data = root.join("data");
    std::fs::create_dir_all(&root).unwrap();
    let lock = std::fs::File::create(root.with_extension("lock")).unwrap();
    // Released when `lock` drops.
    lock.lock().expect("lock the template cluster");
    if data.join("PG_VERSION").exists() {
        return data;
    }
    let work = root.join(format!("making-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&work);
    std::fs::create_dir(&work).unwrap();
    let mut initdb = Command::new("runuser");
    initdb
        .args(["-u", "postgres", "--"])
        .arg(format!("{BIN}/initdb"))
        .arg("-D")
        .arg(work.join("data"))
        .args(args);
    if let Some(pw) = password {
        std::fs::write(work.join("pw"), pw).unwrap();
        initdb.arg(format!("--pwfile={}", work.join("pw").display()));
    }
    let chown = Command::new("chown")
        .arg("-R")
        .arg("postgres")
        .arg(&work)
        .status_within()
        .expect("chown");
    assert!(chown.success());
    let out = initdb.output_within().expect("initdb");
    assert!(
        out.status.success(),
        "initdb: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let hba = work.join("data/pg_hba.conf");
    let old = std::fs::read_to_string(&hba).unwrap();
    std::fs::write(&hba, format!("{pg_hba}{old}")).unwrap();
    std::fs::rename(work.join("data"), &data).unwrap();
    let _ = std::fs::remove_dir_all(&work);
    data
}
