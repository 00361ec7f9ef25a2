//! `audit export --format ocsf` validated against the published OCSF 1.3.0 JSON schema
//! (PyPI `ocsf-json-schema` + `jsonschema`, installed by `cargo xtask setup`): every event
//! exported from the golden journal (every record kind) must validate, with the profiles
//! it declares; and the mapping says what each record means (class, activity, decision,
//! failure, host, unique id) with exact values.

mod common;

use std::{
    collections::HashSet,
    io::Write,
    path::{Path, PathBuf},
    process::{Command, Stdio},
};

use common::*;
use serde_json::Value;

fn golden(dir: &Scratch) -> PathBuf {
    let path = dir.path("journal.db");
    let fixture =
        Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/journal-v1/journal.db");
    std::fs::copy(fixture, &path).unwrap();
    path
}

/// Runs the schema validator over JSON lines: (exit code, its report).
fn validate(lines: &str) -> (Option<i32>, Value) {
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/ocsf/validate.py");
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
        .unwrap()
        .write_all(lines.as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        !err.contains("ModuleNotFoundError"),
        "the OCSF validator needs PyPI ocsf-json-schema and jsonschema: run `cargo xtask setup`\n{err}"
    );
    let report = serde_json::from_slice(&out.stdout)
        .unwrap_or_else(|e| panic!("validator output is not JSON ({e}): {err}"));
    (out.status.code(), report)
}

fn export(path: &Path, args: &[&str]) -> String {
    let mut a = vec!["export", "--format", "ocsf"];
    a.extend_from_slice(args);
    let o = audit(path, &a);
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    stdout(&o)
}

#[test]
fn every_exported_event_validates_against_the_ocsf_1_3_0_schema() {
    let dir = Scratch::new("ocsf-schema");
    let path = golden(&dir);
    let lines = export(&path, &[]);
    let (code, report) = validate(&lines);
    assert_eq!(report["events"], 19, "{report:#}");
    assert_eq!(report["invalid"], serde_json::json!([]), "{report:#}");
    assert_eq!(code, Some(0), "{report:#}");
    // Filtered exports look their context up in the journal: still valid.
    for kind in ["statement_completed", "session_closed", "masking_applied"] {
        let lines = export(&path, &["--kind", kind]);
        let (code, report) = validate(&lines);
        assert_eq!(code, Some(0), "--kind {kind}: {report:#}");
    }
}

/// A named change that breaks an event.
type Fault = (&'static str, Box<dyn Fn(&mut Value)>);

/// The validator is not vacuous: each of the faults the issue found in the old export is
/// flagged when put back into a valid event.
#[test]
fn the_validator_flags_the_faults_of_the_old_export() {
    let dir = Scratch::new("ocsf-control");
    let path = golden(&dir);
    let events: Vec<Value> = export(&path, &[])
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    let at = |seq: u64| {
        events
            .iter()
            .find(|e| e["metadata"]["sequence"] == seq)
            .unwrap()
            .clone()
    };
    let faults: Vec<Fault> = vec![
        (
            "database.type_id missing",
            Box::new(|e| {
                e["database"].as_object_mut().unwrap().remove("type_id");
            }),
        ),
        (
            "file.type_id missing",
            Box::new(|e| {
                e["actor"]["process"]["file"]
                    .as_object_mut()
                    .unwrap()
                    .remove("type_id");
            }),
        ),
        (
            "undeclared top-level session",
            Box::new(|e| {
                e["session"] = serde_json::json!({"uid": "x"});
            }),
        ),
        (
            "null where a string is wanted",
            Box::new(|e| {
                e["metadata"]["correlation_uid"] = Value::Null;
            }),
        ),
        (
            "free-text disposition without the profile",
            Box::new(|e| {
                e["metadata"].as_object_mut().unwrap().remove("profiles");
            }),
        ),
        (
            "action_id missing",
            Box::new(|e| {
                e.as_object_mut().unwrap().remove("action_id");
            }),
        ),
    ];
    for (what, fault) in faults {
        let mut e = at(7);
        fault(&mut e);
        let (code, report) = validate(&format!("{e}\n"));
        assert_eq!(code, Some(1), "{what}: not flagged: {report:#}");
        assert_eq!(report["invalid"].as_array().unwrap().len(), 1, "{what}");
    }
    // An undeclared actor on a base event (an error), as the old export wrote it.
    let mut e = at(17);
    e["actor"] = at(7)["actor"].clone();
    assert_eq!(validate(&format!("{e}\n")).0, Some(1));
}

fn no_nulls(v: &Value, path: &str) {
    match v {
        Value::Null => panic!("null at {path}"),
        Value::Object(m) => m
            .iter()
            .for_each(|(k, v)| no_nulls(v, &format!("{path}.{k}"))),
        Value::Array(a) => a
            .iter()
            .enumerate()
            .for_each(|(i, v)| no_nulls(v, &format!("{path}[{i}]"))),
        _ => {}
    }
}

#[test]
fn each_record_kind_is_mapped_deliberately() {
    let dir = Scratch::new("ocsf-mapping");
    let path = golden(&dir);
    let events: Vec<Value> = export(&path, &[])
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    let e = |seq: u64| {
        events
            .iter()
            .find(|e| e["metadata"]["sequence"] == seq)
            .unwrap_or_else(|| panic!("no event for seq {seq}"))
    };
    let journal_id: String = rusqlite::Connection::open(&path)
        .unwrap()
        .query_row("SELECT value FROM meta WHERE key = 'journal_id'", [], |r| {
            r.get(0)
        })
        .unwrap();
    let hostname = std::fs::read_to_string("/proc/sys/kernel/hostname").unwrap();
    let mut uids = HashSet::new();
    for ev in &events {
        no_nulls(ev, "");
        let seq = ev["metadata"]["sequence"].as_u64().unwrap();
        // Unique across journals: the journal's id and the seq.
        assert_eq!(ev["metadata"]["uid"], format!("{journal_id}-{seq}"));
        assert!(uids.insert(ev["metadata"]["uid"].to_string()));
        assert_eq!(
            ev["metadata"]["loggers"][0]["device"]["hostname"],
            hostname.trim(),
            "seq {seq}: the host"
        );
        assert_eq!(
            ev["type_uid"].as_u64().unwrap(),
            ev["class_uid"].as_u64().unwrap() * 100 + ev["activity_id"].as_u64().unwrap()
        );
        assert_eq!(ev["unmapped"]["pam_agent"]["seq"], seq);
    }
    // (seq, class, activity, status_id) for every record of the golden journal.
    let expected: [(u64, u64, u64, u64); 19] = [
        (3, 6002, 3, 1),    // agent_started: Start
        (4, 6002, 99, 2),   // config_reloaded, refused: Failure
        (5, 6002, 99, 1),   // policy_reloaded
        (6, 3002, 1, 1),    // session_opened: Logon
        (7, 6005, 1, 1),    // select allowed: Read
        (8, 6005, 1, 1),    // its completion
        (9, 6005, 1, 1),    // masking_applied: its statement's activity
        (10, 6005, 2, 99),  // update held for approval: Update, pending
        (11, 6005, 99, 99), // approval_requested: pending
        (12, 6005, 99, 1),  // approval_decided: approved
        (13, 6005, 2, 2),   // the update failed in the database (23505): Failure
        (14, 6005, 99, 2),  // ddl denied: Failure
        (15, 6005, 99, 99), // approval_requested
        (16, 6005, 99, 2),  // approval_expired: Failure
        (17, 0, 99, 2),     // error: Failure
        (18, 3002, 2, 2),   // session_closed with end=error: Logoff, Failure
        (19, 4001, 5, 2),   // connection_refused: Refuse
        (20, 0, 99, 1),     // journal_pruned
        (21, 6002, 4, 1),   // agent_stopped: Stop
    ];
    for (seq, class, activity, status) in expected {
        let ev = e(seq);
        assert_eq!(
            (
                ev["class_uid"].as_u64().unwrap(),
                ev["activity_id"].as_u64().unwrap(),
                ev["status_id"].as_u64().unwrap()
            ),
            (class, activity, status),
            "seq {seq}: {ev:#}"
        );
    }
    // The decision and the rule in the security_control profile's fields.
    let decided = |seq: u64| {
        let ev = e(seq);
        (
            ev["action_id"].as_u64().unwrap(),
            ev["disposition_id"].as_u64().unwrap(),
            ev["firewall_rule"]["name"].as_str().map(str::to_owned),
            ev["authorizations"][0]["decision"]
                .as_str()
                .unwrap()
                .to_owned(),
        )
    };
    assert_eq!(
        decided(7),
        (1, 1, Some("read-orders".into()), "allow".into())
    );
    assert_eq!(
        decided(10),
        (
            99,
            14,
            Some("approve-writes".into()),
            "require_approval".into()
        )
    );
    assert_eq!(decided(14), (2, 2, Some("no-ddl".into()), "deny".into()));
    assert_eq!(
        e(14)["firewall_rule"]["desc"],
        "statement kind ddl is not allowed"
    );
    assert_eq!(e(14)["status_detail"], "statement kind ddl is not allowed");
    assert_eq!(
        (
            e(19)["action_id"].as_u64(),
            e(19)["disposition_id"].as_u64()
        ),
        (Some(2), Some(2))
    );
    assert_eq!(e(19)["src_endpoint"]["port"], 40002);
    assert_eq!(e(13)["status_code"], "23505");
    assert_eq!(
        e(13)["query_info"]["query_string"],
        "UPDATE orders SET total = 0 WHERE id = 7"
    );
    // Fingerprint-only: no query_info (its query_string is required), fingerprint kept.
    assert!(e(14).get("query_info").is_none(), "{:#}", e(14));
    assert_eq!(e(14)["unmapped"]["pam_agent"]["fingerprint"], "fp03");
    // Who and where, from the session's opening record.
    assert_eq!(
        e(7)["actor"]["user"],
        serde_json::json!({"uid": "1001", "name": "alice"})
    );
    assert_eq!(e(7)["actor"]["process"]["file"]["path"], "/usr/bin/python3");
    assert_eq!(
        e(7)["actor"]["session"]["uid"],
        "019b7600-0000-7000-8000-000000000001"
    );
    assert_eq!(
        e(7)["database"],
        serde_json::json!({"name": "orders-db", "type_id": 1, "type": "Relational"})
    );
    assert_eq!(e(6)["device"]["hostname"], hostname.trim());
    assert_eq!(e(18)["status_detail"], "upstream sent a malformed DataRow");
}

/// Records whose context is gone (the session's opening record removed, as retention
/// does) and a record of a kind this version does not know still export as valid events,
/// saying "unknown" rather than inventing an actor.
#[test]
fn events_without_their_context_still_validate() {
    let dir = Scratch::new("ocsf-no-context");
    let path = golden(&dir);
    let c = rusqlite::Connection::open(&path).unwrap();
    c.execute("DELETE FROM records WHERE seq = 6", []).unwrap();
    c.execute(
        "INSERT INTO records (seq, ts_us, kind, record, prev_hash, hash)
         VALUES (22, 1767225700000000, 'from_the_future',
                 '{\"seq\":22,\"ts\":\"2026-01-01T00:01:40Z\",\"kind\":\"from_the_future\",\"x\":1}',
                 zeroblob(32), zeroblob(32))",
        [],
    )
    .unwrap();
    drop(c);
    let lines = export(&path, &[]);
    let (code, report) = validate(&lines);
    assert_eq!(report["events"], 19, "{report:#}");
    assert_eq!(code, Some(0), "{report:#}");
    let events: Vec<Value> = lines
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    let e = |seq: u64| {
        events
            .iter()
            .find(|e| e["metadata"]["sequence"] == seq)
            .unwrap()
    };
    // The statement's session is known only by the indexed columns now.
    assert_eq!(
        e(7)["actor"]["user"],
        serde_json::json!({"uid": "1001", "name": "alice"})
    );
    assert_eq!(e(7)["database"]["name"], "orders-db");
    assert!(e(7)["actor"].get("process").is_none(), "{:#}", e(7));
    assert_eq!(
        (e(22)["class_uid"].as_u64(), e(22)["activity_id"].as_u64()),
        (Some(0), Some(0))
    );
    assert_eq!(e(22)["unmapped"]["pam_agent"]["kind"], "from_the_future");
}

/// A journal (the agent's own writer, format 2) holding every record kind and the
/// outcomes that change a kind's meaning; with the name of each record's sample.
fn every_variant_journal(dir: &Scratch) -> (PathBuf, Vec<&'static str>) {
    use common::every_variant::every_variant;
    use pam_agent::journal::SessionId;
    let path = dir.path("journal");
    let s = SessionId::new();
    let others = [(); 4].map(|_| SessionId::new());
    let (j, h) = open(options(&path));
    let mut names = Vec::new();
    for (session, event, name) in every_variant(s, others) {
        j.record_blocking(session, event).unwrap();
        names.push(name);
    }
    drop(j);
    h.join().unwrap();
    (path, names)
}

/// What each record kind and outcome becomes: (class, activity, status_id, action_id,
/// disposition_id), action and disposition only where the class has them. A name
/// missing here fails the test below, so a new sample must say what it maps to.
fn expected_mapping(name: &str) -> (u64, u64, u64, Option<u64>, Option<u64>) {
    match name {
        "started" => (6002, 3, 1, None, None),
        "resolved" | "reloaded" | "policy reloaded" => (6002, 99, 1, None, None),
        "reload refused" => (6002, 99, 2, None, None),
        "opened" | "opened other" | "token accepted" => (3002, 1, 1, None, None),
        "token refused" => (3002, 1, 2, None, None),
        "login" | "settings" => (3002, 99, 1, None, None),
        "select" | "execution" | "completed" => (6005, 1, 1, Some(1), Some(1)),
        "masked" => (6005, 1, 1, Some(1), Some(99)),
        "held" => (6005, 2, 99, Some(99), Some(14)),
        "failed upstream" => (6005, 2, 2, Some(1), Some(1)),
        "denied" => (6005, 99, 2, Some(2), Some(2)),
        "requested" | "requested again" => (6005, 99, 99, Some(99), Some(14)),
        "counted" => (6005, 99, 99, Some(99), Some(14)),
        "approved" => (6005, 99, 1, Some(1), Some(8)),
        "revoked" => (6005, 99, 1, Some(2), Some(24)),
        "rejected" => (6005, 99, 2, Some(2), Some(25)),
        "withdrawn" => (6005, 99, 99, Some(99), Some(16)),
        "abandoned" | "expired" => (6005, 99, 2, Some(2), Some(2)),
        "error" => (0, 99, 2, None, None),
        "pruned" => (0, 99, 1, None, None),
        "closed" => (3002, 2, 1, None, None),
        "ended in error" | "unreachable" => (3002, 2, 2, None, None),
        "shut down" | "abandoned session" => (3002, 2, 99, None, None),
        "refused" | "refusals coalesced" => (4001, 5, 2, Some(2), Some(2)),
        "stopped" => (6002, 4, 1, None, None),
        other => panic!("no expected OCSF mapping for the sample {other:?}: add one"),
    }
}

#[test]
fn every_record_kind_exports_valid_ocsf_mapped_deliberately() {
    let dir = Scratch::new("ocsf-every-kind");
    let (path, names) = every_variant_journal(&dir);
    let lines = export(&path, &[]);
    let (code, report) = validate(&lines);
    assert_eq!(report["events"], names.len(), "{report:#}");
    assert_eq!(report["invalid"], serde_json::json!([]), "{report:#}");
    assert_eq!(code, Some(0), "{report:#}");
    let events: Vec<Value> = lines
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    // Every kind the journal knows is in this journal.
    let kinds: HashSet<&str> = events
        .iter()
        .map(|e| e["unmapped"]["pam_agent"]["kind"].as_str().unwrap())
        .collect();
    for kind in pam_agent::journal::Event::KINDS {
        assert!(kinds.contains(kind), "no {kind} record in the journal");
    }
    let mut uids = HashSet::new();
    for (ev, name) in events.iter().zip(&names) {
        no_nulls(ev, name);
        assert!(uids.insert(ev["metadata"]["uid"].as_str().unwrap().to_owned()));
        let got = (
            ev["class_uid"].as_u64().unwrap(),
            ev["activity_id"].as_u64().unwrap(),
            ev["status_id"].as_u64().unwrap(),
            ev["action_id"].as_u64(),
            ev["disposition_id"].as_u64(),
        );
        assert_eq!(got, expected_mapping(name), "{name}: {ev:#}");
        assert_ne!(ev["activity_name"], "Unknown", "{name}");
    }
    let e = |name: &str| &events[names.iter().position(|n| *n == name).unwrap()];
    // The rule and reason where the profile keeps them.
    assert_eq!(e("denied")["firewall_rule"]["name"], "no-ddl");
    assert_eq!(
        e("denied")["firewall_rule"]["desc"],
        "statement kind ddl is not allowed"
    );
    assert_eq!(e("requested")["firewall_rule"]["name"], "approve-writes");
    assert_eq!(e("masked")["firewall_rule"]["name"], "mask-pii");
    assert_eq!(e("rejected")["status_detail"], "not during the freeze");
    // An execution and a masking record carry their statement's query.
    for name in ["execution", "masked", "completed"] {
        assert_eq!(
            e(name)["query_info"]["query_string"],
            "SELECT * FROM orders WHERE id = $1",
            "{name}"
        );
    }
    // The approver is the actor of a decision; the worker of the rest.
    assert_eq!(e("approved")["actor"]["user"]["name"], "dave@example.com");
    assert_eq!(e("requested")["actor"]["user"]["name"], "alice");
    // Tokens: OpenID, the subject as the user; refused with the reason.
    assert_eq!(e("token accepted")["auth_protocol_id"], 4);
    assert_eq!(
        e("token accepted")["user"],
        serde_json::json!({"uid": "crew-reader", "name": "crew-reader", "groups": [{"name": "analysts"}]})
    );
    assert_eq!(
        e("token refused")["status_detail"],
        "subject crew-writer is bound to another principal"
    );
    // The database login: the role is the user, the database the service.
    assert_eq!(e("login")["user"]["name"], "crew_reader");
    assert_eq!(e("login")["service"]["name"], "orders");
    assert_eq!(e("settings")["user"]["name"], "reporting");
    // Coalesced refusals: the count and the interval they span.
    let c = e("refusals coalesced");
    assert_eq!(c["count"], 1999);
    assert_eq!(c["start_time"], 1_796_119_200_000_u64);
    assert!(c["end_time"].as_u64().unwrap() >= c["start_time"].as_u64().unwrap());
    assert_eq!(c["src_endpoint"]["ip"], "fd00::9");
    assert!(e("refused").get("count").is_none());
    assert_eq!(e("unreachable")["status_detail"], "upstream unreachable");
}
