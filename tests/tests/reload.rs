//! SIGHUP: the operator edits the config and signals the agent. Every reload is journaled:
//! `config_reloaded` with `ok: true` (then `policy_reloaded`) when the file is accepted,
//! `ok: false` and the reason when it is refused, the running config staying in force.

use std::time::{Duration, Instant};

use pam_e2e::{Agent, Cgroup, ResourceSpec, require_root};
use serde_json::Value;

const POLICY: &str = "[[policy.rules]]\nname = \"crew-reads\"\naction = \"allow\"\nkinds = [\"select\"]\ntables = [\"public.*\"]\n";

fn sighup(agent: &Agent) {
    let pid = agent.pid().expect("agent running") as i32;
    // SAFETY: signalling our own child process by pid.
    assert_eq!(unsafe { libc::kill(pid, libc::SIGHUP) }, 0);
}

/// Waits until the journal holds `n` records of `kind`, and returns them.
fn wait_for(agent: &Agent, kind: &str, n: usize) -> Vec<Value> {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let got = agent.records(kind);
        if got.len() >= n {
            return got;
        }
        assert!(
            Instant::now() < deadline,
            "no {n} `{kind}` records within 10 s; journal: {:#?}\nlog:\n{}",
            agent.journal(),
            agent.log()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[test]
fn every_reload_is_journaled_and_a_refused_file_says_why() {
    if !require_root("reload") {
        return;
    }
    let cg = Cgroup::new("reload").expect("cgroup");
    let mut agent = Agent::start_with(
        &[&cg],
        &[ResourceSpec::postgres("db", "10.99.0.1", 5432)],
        POLICY,
    )
    .expect("agent");
    let good = std::fs::read_to_string(&agent.config).unwrap();
    let config = agent.config.display().to_string();

    // An accepted file: config_reloaded ok, then the policy swap.
    sighup(&agent);
    let reloads = wait_for(&agent, "config_reloaded", 1);
    assert_eq!(reloads[0]["ok"], true, "{reloads:#?}");
    assert_eq!(reloads[0]["config"], config.as_str());
    assert!(reloads[0].get("detail").is_none(), "{reloads:#?}");
    let policy = wait_for(&agent, "policy_reloaded", 1);
    assert_eq!(policy[0]["rules"], 1);
    assert!(
        policy[0]["seq"].as_u64() > reloads[0]["seq"].as_u64(),
        "config_reloaded comes first"
    );

    // A refused file: config_reloaded with ok = false and the reason naming the field;
    // no policy swap, and the agent keeps running on the old config.
    std::fs::write(&agent.config, good.replace("port = 5432", "port = 0")).unwrap();
    sighup(&agent);
    let reloads = wait_for(&agent, "config_reloaded", 2);
    assert_eq!(reloads[1]["ok"], false, "{reloads:#?}");
    let detail = reloads[1]["detail"].as_str().unwrap_or_default();
    assert!(
        detail.contains("resources[0].port") && detail.contains("between 1 and 65535"),
        "{detail}"
    );
    assert_eq!(agent.records("policy_reloaded").len(), 1);

    // A change only a restart applies is accepted and says so.
    std::fs::write(&agent.config, good.replace("10.99.0.1", "10.99.0.2")).unwrap();
    sighup(&agent);
    let reloads = wait_for(&agent, "config_reloaded", 3);
    assert_eq!(reloads[2]["ok"], true);
    assert!(
        reloads[2]["detail"]
            .as_str()
            .is_some_and(|d| d.contains("restart")),
        "{reloads:#?}"
    );
    wait_for(&agent, "policy_reloaded", 2);

    agent.stop().expect("orderly stop after reloads");
    let (ok, out) = agent.verify_journal();
    assert!(ok, "{out}");
}
