//! A peer's own test suite as the judge of wire fidelity (issue 14): asyncpg's 0.32.0
//! tests, unmodified, run twice against one real PostgreSQL 15, once directly and once
//! from a governed cgroup through the real eBPF redirect and agent (every statement
//! allowed). Through the agent the same tests must pass as directly, and the same be
//! skipped.
//!
//! The suite is installed by `cargo xtask setup` (into [`SUITE_DIR`]); each run takes
//! about a minute.

use std::path::Path;

use pam_e2e::{
    Cgroup, TestHost,
    peer_suite::{self, Outcomes, PASSWORD, Stage},
    require_root,
};

/// Where `cargo xtask setup` puts the sdist's `tests/` (see xtask/src/setup.rs).
const SUITE_DIR: &str = "/opt/pam-agent-dev/asyncpg-0.32.0-suite";

/// Runs the whole suite (`only` empty) or the tests named, directly or `through` the
/// agent (from the governed cgroup).
fn run_suite(host: &TestHost, through: Option<&Cgroup>, only: &[String]) -> Outcomes {
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/clients/asyncpg_suite.py");
    let mut cmd = peer_suite::python(through);
    cmd.args([script, SUITE_DIR])
        .args(only)
        .env("PGHOST", host.v4.to_string())
        .env("PGPORT", "5432")
        .env("PGUSER", "postgres")
        .env("PGPASSWORD", PASSWORD)
        .env("PGDATABASE", "postgres")
        .env_remove("USE_UVLOOP");
    peer_suite::outcomes(&mut cmd)
}

#[test]
fn asyncpg_own_suite_ends_the_same_through_the_agent_as_directly() {
    if !require_root("asyncpg_suite") {
        return;
    }
    assert!(
        Path::new(SUITE_DIR).join("tests/test_execute.py").exists(),
        "asyncpg's test suite is not installed in {SUITE_DIR}: run `cargo xtask setup`"
    );
    Stage::start("apgsuite").assert_same(
        peer_suite::Expect {
            name: "asyncpg suite",
            min_passed: 300,
            min_sessions: 100,
        },
        run_suite,
    );
}
