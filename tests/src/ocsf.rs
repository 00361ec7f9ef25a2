//! The OCSF export of a real agent's journal, validated against the published OCSF 1.3.0
//! JSON schema with the validator the journal tests use (`pam-agent/tests/ocsf/validate.py`,
//! PyPI `ocsf-json-schema` + `jsonschema`).

use std::{
    collections::BTreeSet,
    io::Write,
    process::{Command, Stdio},
};

use serde_json::Value;

use crate::{Agent, CHILD_TIMEOUT, SpawnWatched, agent_bin, output_within};

impl Agent {
    /// Exports this agent's journal with `audit export --format ocsf`, checks every event
    /// against the schema (panicking with the validator's report if one fails), and
    /// returns the journal kinds the export held, for the caller to check it saw the
    /// kinds its run produced.
    pub fn assert_ocsf_export_valid(&self) -> BTreeSet<String> {
        let out = output_within(
            Command::new(agent_bin())
                .args(["audit", "export", "--format", "ocsf", "--journal"])
                .arg(&self.journal),
            CHILD_TIMEOUT,
        );
        assert!(
            out.status.success(),
            "audit export: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let script = concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/../pam-agent/tests/ocsf/validate.py"
        );
        let mut child = Command::new("python3")
            .arg(script)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn_watched()
            .expect("python3");
        child
            .stdin
            .take()
            .expect("stdin")
            .write_all(&out.stdout)
            .expect("validator input");
        let v = child.wait_with_output().expect("validator");
        let report: Value = serde_json::from_slice(&v.stdout).unwrap_or_else(|e| {
            panic!(
                "validator output is not JSON ({e}): {}",
                String::from_utf8_lossy(&v.stderr)
            )
        });
        assert_eq!(report["invalid"], serde_json::json!([]), "{report:#}");
        assert_eq!(v.status.code(), Some(0), "{report:#}");
        String::from_utf8_lossy(&out.stdout)
            .lines()
            .map(|l| {
                let ev: Value = serde_json::from_str(l).expect("OCSF line is JSON");
                ev["unmapped"]["pam_agent"]["kind"]
                    .as_str()
                    .unwrap_or("")
                    .to_owned()
            })
            .collect()
    }
}
