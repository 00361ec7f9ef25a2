//! Export as OCSF 1.3 events (one JSON object per line) for SIEMs. Class ids checked
//! against the OCSF schema: Authentication 3002 (session opened = Logon 1, closed =
//! Logoff 2), Network Activity 4001 (refused connection = Refuse 5), Datastore Activity
//! 6005 (statement = Query 4), Application Lifecycle 6002 (agent Start 3 / Stop 4, reload
//! = Other 99). Approvals, masking, errors and retention have no fitting class and go out
//! as Base Event 0. Every event keeps the whole journal record under `unmapped`, with
//! its seq as `metadata.sequence` so it can be traced back to the signed journal.

use serde_json::{Value, json};

use crate::{
    journal::{Event, Record, reader::StoredRecord},
    principal::Principal,
};

const OCSF_VERSION: &str = "1.3.0";

/// The session's opening record, when known: the source of actor and endpoints for the
/// records inside a session.
pub struct SessionContext<'a> {
    pub opened: Option<&'a Record>,
}

pub fn event(r: &StoredRecord, ctx: SessionContext<'_>) -> Value {
    let record = r.record();
    let raw: Value = serde_json::from_str(&r.json).unwrap_or(Value::Null);
    let time_ms = r.ts_us.div_euclid(1000);
    let (class_uid, activity_id, activity_name) = match record.as_ref().map(|r| &r.event) {
        Some(Event::SessionOpened { .. }) => (3002, 1, "Logon"),
        Some(Event::SessionClosed { .. }) => (3002, 2, "Logoff"),
        Some(Event::ConnectionRefused { .. }) => (4001, 5, "Refuse"),
        Some(Event::Statement { .. }) => (6005, 4, "Query"),
        Some(Event::AgentStarted { .. }) => (6002, 3, "Start"),
        Some(Event::AgentStopped { .. }) => (6002, 4, "Stop"),
        Some(Event::ConfigReloaded { .. }) => (6002, 99, "Other"),
        _ => (0, 99, "Other"),
    };
    let category_uid = class_uid / 1000;
    let denied = matches!(
        r.decision.as_deref(),
        Some("deny" | "rejected" | "expired" | "refused")
    );
    let failed = denied
        || matches!(record.as_ref().map(|r| &r.event), Some(Event::Error { .. }))
        || matches!(
            record.as_ref().map(|r| &r.event),
            Some(Event::ConfigReloaded { ok: false, .. })
        );
    let mut ev = json!({
        "class_uid": class_uid,
        "category_uid": category_uid,
        "activity_id": activity_id,
        "activity_name": activity_name,
        "type_uid": class_uid * 100 + activity_id,
        "time": time_ms,
        "severity_id": if failed { 3 } else { 1 },
        "status_id": if failed { 2 } else { 1 },
        "status": if failed { "Failure" } else { "Success" },
        "message": super::output::detail(r),
        "metadata": {
            "version": OCSF_VERSION,
            "product": { "name": "pam-agent", "vendor_name": "pam-agent", "version": env!("CARGO_PKG_VERSION") },
            "log_name": "pam-agent journal",
            "sequence": r.seq,
            "uid": format!("{}", r.seq),
            "correlation_uid": r.session,
        },
        "unmapped": { "pam_agent": raw },
    });
    let obj = ev.as_object_mut().expect("literal object");
    if let Some(d) = &r.decision {
        obj.insert("disposition".into(), json!(d));
    }
    let opened = match record.as_ref().map(|r| &r.event) {
        Some(Event::SessionOpened { .. }) => record.as_ref(),
        _ => ctx.opened,
    };
    if let Some(Record {
        event:
            Event::SessionOpened {
                principal,
                resource,
                destination,
                client,
            },
        ..
    }) = opened
    {
        obj.insert("actor".into(), actor(principal));
        obj.insert(
            "src_endpoint".into(),
            json!({ "ip": client.ip().to_string(), "port": client.port() }),
        );
        obj.insert(
            "dst_endpoint".into(),
            json!({ "ip": destination.ip().to_string(), "port": destination.port(), "name": resource.name }),
        );
        match class_uid {
            3002 => {
                obj.insert("user".into(), user(principal));
                obj.insert(
                    "service".into(),
                    json!({ "name": resource.name, "labels": [resource.protocol] }),
                );
                obj.insert("is_remote".into(), json!(false));
            }
            6005 => {
                obj.insert("database".into(), json!({ "name": resource.name }));
                obj.insert("type_id".into(), json!(1));
                obj.insert("type".into(), json!("Database"));
            }
            _ => {}
        }
    }
    if let Some(Record {
        event: Event::Statement {
            text, fingerprint, ..
        },
        ..
    }) = &record
    {
        let mut q = serde_json::Map::new();
        if let Some(t) = text {
            q.insert("query_string".into(), json!(t));
        }
        if let Some(f) = fingerprint {
            q.insert("uid".into(), json!(f));
        }
        obj.insert("query_info".into(), Value::Object(q));
    }
    if class_uid == 6002 {
        obj.insert(
            "app".into(),
            json!({ "name": "pam-agent", "vendor_name": "pam-agent", "version": env!("CARGO_PKG_VERSION") }),
        );
    }
    if let Some(s) = &r.session {
        obj.insert("session".into(), json!({ "uid": s }));
    }
    ev
}

fn user(p: &Principal) -> Value {
    json!({ "uid": p.uid.to_string(), "name": p.user })
}

fn actor(p: &Principal) -> Value {
    json!({
        "user": user(p),
        "process": {
            "pid": p.pid,
            "name": p.comm,
            "file": p.exe.as_ref().map(|e| json!({ "path": e, "name": e.rsplit('/').next().unwrap_or(e) })),
            "user": user(p),
        },
    })
}
