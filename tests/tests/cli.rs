//! The operator's commands on bad input: `pam-agent check` and `run` refuse a bad
//! config before attaching anything, naming the field at fault.

use std::process::Command;

use pam_e2e::agent_bin;

fn check(config: &str) -> (bool, String) {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("config.toml");
    std::fs::write(&path, config).unwrap();
    let out = Command::new(agent_bin())
        .args(["check", "--config"])
        .arg(&path)
        .output()
        .unwrap();
    let text =
        String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr);
    (out.status.success(), text)
}

fn config(resource: &str, cgroup: &str) -> String {
    format!(
        "[listener]\nport = 15432\n[journal]\npath = \"/tmp/pam-cli-test.jsonl\"\n[govern]\ncgroups = [\"{cgroup}\"]\n{resource}"
    )
}

const GOOD_RESOURCE: &str = "[[resources]]\nname = \"db\"\naddress = \"10.0.0.0/24\"\nport = 5432\nprotocol = \"postgres\"\n";

#[test]
fn a_good_config_is_accepted_and_summarised() {
    let (ok, out) = check(&config(GOOD_RESOURCE, "/"));
    assert!(ok, "{out}");
    assert!(
        out.contains("protects: db 10.0.0.0/24 port 5432 (postgres)"),
        "{out}"
    );
}

#[test]
fn bad_configs_are_refused_naming_the_field() {
    let cases = [
        (
            config(&GOOD_RESOURCE.replace("10.0.0.0/24", "10.0.0.0/40"), "/"),
            "resources[0].address",
        ),
        (
            config(&GOOD_RESOURCE.replace("10.0.0.0/24", "not-an-ip"), "/"),
            "resources[0].address",
        ),
        (
            config(&GOOD_RESOURCE.replace("5432", "0"), "/"),
            "resources[0].port",
        ),
        (config(&GOOD_RESOURCE.replace("5432", "99999"), "/"), "port"),
        (
            config(GOOD_RESOURCE, "/no-such-cgroup-pam-test"),
            "govern.cgroups[0]",
        ),
        (
            config(&format!("{GOOD_RESOURCE}colour = \"red\"\n"), "/"),
            "unknown field `colour`",
        ),
        (
            config(&GOOD_RESOURCE.replace("postgres", "oracle"), "/"),
            "unknown variant `oracle`",
        ),
    ];
    for (text, expected) in cases {
        let (ok, out) = check(&text);
        assert!(!ok, "accepted a bad config:\n{text}");
        assert!(out.contains(expected), "expected `{expected}` in:\n{out}");
    }
}

#[test]
fn run_refuses_a_bad_config_before_touching_the_kernel() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("config.toml");
    let pin_dir = format!("/sys/fs/bpf/pam-cli-test-{}", std::process::id());
    std::fs::write(
        &path,
        format!(
            "[agent]\npin_dir = \"{pin_dir}\"\n{}",
            config(&GOOD_RESOURCE.replace("5432", "0"), "/")
        ),
    )
    .unwrap();
    let out = Command::new(agent_bin())
        .args(["run", "--config"])
        .arg(&path)
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("resources[0].port"));
    assert!(
        !std::path::Path::new(&pin_dir).exists(),
        "pinned state created"
    );
}

#[test]
fn exec_without_a_cgroup_says_what_is_missing() {
    let out = Command::new(agent_bin())
        .args(["exec", "--", "true"])
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("--cgroup"));
}
