//! Export as OCSF 1.3.0 events (one JSON object per line) for SIEMs. Each event validates
//! against the published OCSF 1.3.0 JSON schema of its class with the profiles it names in
//! `metadata.profiles` (tested with PyPI `ocsf-json-schema` + `jsonschema`):
//!
//! | record | class (profiles) | activity |
//! |---|---|---|
//! | `agent_started` / `agent_stopped` | Application Lifecycle 6002 (host) | Start 3 / Stop 4 |
//! | `config_reloaded`, `policy_reloaded` | 6002 (host) | Other 99 "Reload" / "Reload Policy" |
//! | `session_opened` / `session_closed`, `worker_token` | Authentication 3002 (host) | Logon 1 / Logoff 2, Logon 1 (OpenID) |
//! | `session_login`, `session_settings` | 3002 (host) | Other 99 "Database Login" / "Session Settings" |
//! | `connection_refused` | Network Activity 4001 (host, security_control) | Refuse 5 (coalesced: `count`, `start_time`) |
//! | `statement`, `execution`, `statement_completed`, `masking_applied` | Datastore Activity 6005 (security_control) | by statement kind: Read 1, Update 2, Write 5, Delete 7, Other 99, Unknown 0 |
//! | approvals | 6005 (security_control) | Other 99, named; the decision in action/disposition |
//! | errors, retention | Base Event 0 | Other 99, named |
//!
//! The decision goes to `action_id` / `disposition_id` (allow: Allowed / Allowed, deny:
//! Denied / Blocked, require_approval: Other / Delayed), the rule and reason to
//! `firewall_rule` and `authorizations[].policy` (the security_control profile's fields).
//! A statement the database failed, a session that ended in error, a refused
//! configuration and an agent error are `status_id` 2 Failure, with the SQLSTATE or detail
//! in `status_code` / `status_detail`. The host is `device` where the class has it (host
//! profile) and `metadata.loggers[].device` everywhere. `metadata.uid` is
//! `<journal id>-<seq>`, unique across journals; `metadata.sequence` is the seq, and the
//! whole journal record stays under `unmapped.pam_agent`, so each event can be traced back
//! to the signed journal. Optional values that are unknown are left out, never `null`.

use serde_json::{Map, Value, json};

use crate::{
    journal::{
        Event, Record,
        event::{ApprovalOutcome, Decision, SessionEnd},
        reader::StoredRecord,
    },
    principal::Principal,
};

const OCSF_VERSION: &str = "1.3.0";
const VENDOR: &str = "pam-agent";

/// What the whole export shares: which journal, which host.
pub struct Exporter {
    /// The journal's id (hex), prefix of every `metadata.uid`.
    pub journal_id: String,
    /// The host the journal belongs to (the one `export` runs on).
    pub host: Host,
}

/// The host's identity as OCSF `device`.
#[derive(Debug, Clone)]
pub struct Host {
    pub hostname: String,
    /// /etc/machine-id, when readable.
    pub machine_id: Option<String>,
}

impl Host {
    /// This machine: its hostname and systemd machine id.
    pub fn local() -> Host {
        let read = |p: &str| {
            std::fs::read_to_string(p)
                .ok()
                .map(|s| s.trim().to_owned())
                .filter(|s| !s.is_empty())
        };
        Host {
            hostname: read("/proc/sys/kernel/hostname").unwrap_or_else(|| "localhost".into()),
            machine_id: read("/etc/machine-id"),
        }
    }

    fn device(&self) -> Value {
        let mut d = json!({
            "hostname": self.hostname,
            "name": self.hostname,
            "type_id": 0,
            "type": "Unknown",
        });
        if let Some(id) = &self.machine_id {
            d["uid"] = json!(id);
        }
        d
    }
}

/// Records of the session a record belongs to, when known: the opening record gives
/// actor and endpoints, the statement record gives a completion its kind and text.
#[derive(Default)]
pub struct SessionContext<'a> {
    pub opened: Option<&'a Record>,
    pub statement: Option<&'a Record>,
}

/// Which class and activity a record becomes.
struct Class {
    uid: u32,
    activity_id: u32,
    activity_name: &'static str,
    profiles: &'static [&'static str],
}

const HOST: &[&str] = &["host"];
const CONTROL: &[&str] = &["security_control"];
const HOST_CONTROL: &[&str] = &["host", "security_control"];

fn class(event: Option<&Event>, statement: Option<&Event>) -> Class {
    let c = |uid, activity_id, activity_name, profiles| Class {
        uid,
        activity_id,
        activity_name,
        profiles,
    };
    match event {
        Some(Event::AgentStarted { .. }) => c(6002, 3, "Start", HOST),
        Some(Event::AgentStopped { .. }) => c(6002, 4, "Stop", HOST),
        Some(Event::ConfigReloaded { .. }) => c(6002, 99, "Reload", HOST),
        Some(Event::PolicyReloaded { .. }) => c(6002, 99, "Reload Policy", HOST),
        Some(Event::SessionOpened { .. }) => c(3002, 1, "Logon", HOST),
        Some(Event::SessionClosed { .. }) => c(3002, 2, "Logoff", HOST),
        // The worker's token is its logon credential (OpenID).
        Some(Event::WorkerToken { .. }) => c(3002, 1, "Logon", HOST),
        // The database account the session logged in as, and later role changes.
        Some(Event::SessionLogin { .. }) => c(3002, 99, "Database Login", HOST),
        Some(Event::SessionSettings { .. }) => c(3002, 99, "Session Settings", HOST),
        Some(Event::ConnectionRefused { .. }) => c(4001, 5, "Refuse", HOST_CONTROL),
        Some(e @ Event::Statement { .. }) => {
            let (id, name) = statement_activity(e);
            c(6005, id, name, CONTROL)
        }
        // About the statement they refer to: its activity.
        Some(
            Event::StatementCompleted { .. }
            | Event::Execution { .. }
            | Event::MaskingApplied { .. },
        ) => {
            let (id, name) = statement.map_or((0, "Unknown"), statement_activity);
            c(6005, id, name, CONTROL)
        }
        // A decision about a statement, taken by a person: Datastore Activity with the
        // decision in the security_control fields.
        Some(Event::ApprovalRequested { .. }) => c(6005, 99, "Approval Requested", CONTROL),
        Some(Event::ApprovalDecided { .. }) => c(6005, 99, "Approval Decided", CONTROL),
        Some(Event::ApprovalExpired { .. }) => c(6005, 99, "Approval Expired", CONTROL),
        Some(Event::Error { .. }) => c(0, 99, "Error", &[]),
        Some(Event::JournalPruned { .. }) => c(0, 99, "Journal Pruned", &[]),
        Some(Event::ResourceResolved { .. }) => c(6002, 99, "Resource Resolved", HOST),
        // A record this version cannot read: still exported, as what it is.
        None => c(0, 0, "Unknown", &[]),
    }
}

/// Datastore Activity's activity for a statement, from its primary kind.
fn statement_activity(e: &Event) -> (u32, &'static str) {
    let Event::Statement { kinds, .. } = e else {
        return (0, "Unknown");
    };
    match kinds.first().map(String::as_str) {
        Some("select" | "copy_out") => (1, "Read"),
        Some("update") => (2, "Update"),
        Some("insert" | "copy_in" | "merge") => (5, "Write"),
        Some("delete") => (7, "Delete"),
        Some("ddl") => (99, "Schema Change"),
        Some("dcl") => (99, "Privilege Change"),
        Some("call" | "do" | "execute" | "function_call") => (99, "Execute"),
        Some("transaction" | "session" | "cursor" | "lock") => (99, "Session Control"),
        Some("maintenance" | "admin") => (99, "Administration"),
        Some(_) => (99, "Other"),
        None => (0, "Unknown"),
    }
}

/// The outcome: (status_id, status, status_code, status_detail, severity_id).
struct Status {
    id: u32,
    name: &'static str,
    code: Option<String>,
    detail: Option<String>,
    severity: u32,
}

fn status(event: Option<&Event>) -> Status {
    let s = |id, name, code: Option<&String>, detail: Option<String>, severity| Status {
        id,
        name,
        code: code.cloned(),
        detail,
        severity,
    };
    let ok = s(1, "Success", None, None, 1);
    match event {
        Some(Event::ConfigReloaded {
            ok: false, detail, ..
        }) => s(2, "Failure", None, detail.clone(), 3),
        Some(Event::WorkerToken {
            accepted: false,
            reason,
            ..
        }) => s(2, "Failure", None, reason.clone(), 3),
        Some(Event::SessionClosed { end, detail, .. }) => match end {
            SessionEnd::Closed => ok,
            SessionEnd::AgentShutdown => s(99, "Agent Shutdown", None, detail.clone(), 1),
            SessionEnd::Abandoned => s(99, "Abandoned", None, detail.clone(), 3),
            SessionEnd::UpstreamUnreachable => s(
                2,
                "Failure",
                None,
                Some(
                    detail
                        .clone()
                        .unwrap_or_else(|| "upstream unreachable".into()),
                ),
                3,
            ),
            SessionEnd::Error => s(
                2,
                "Failure",
                None,
                Some(detail.clone().unwrap_or_else(|| "error".into())),
                3,
            ),
        },
        Some(Event::ConnectionRefused { reason, .. }) => {
            s(2, "Failure", None, Some(reason.clone()), 3)
        }
        Some(Event::Statement {
            decision,
            reason,
            error,
            ..
        }) => match (decision, error) {
            (Decision::Deny, _) => s(2, "Failure", None, reason.clone(), 3),
            (Decision::RequireApproval, _) => s(99, "Pending Approval", None, reason.clone(), 2),
            (Decision::Allow, Some(e)) => s(2, "Failure", Some(e), None, 2),
            (Decision::Allow, None) => ok,
        },
        Some(Event::StatementCompleted { error: Some(e), .. }) => s(2, "Failure", Some(e), None, 2),
        Some(Event::ApprovalRequested { .. }) => s(99, "Pending", None, None, 1),
        Some(Event::ApprovalDecided {
            outcome, reason, ..
        }) => match outcome {
            ApprovalOutcome::Approved | ApprovalOutcome::Revoked => {
                s(1, "Success", None, reason.clone(), 1)
            }
            ApprovalOutcome::Counted => s(99, "Pending", None, reason.clone(), 1),
            ApprovalOutcome::Withdrawn => s(99, "Withdrawn", None, reason.clone(), 1),
            ApprovalOutcome::Rejected => s(2, "Failure", None, reason.clone(), 2),
            ApprovalOutcome::Abandoned => s(
                2,
                "Failure",
                None,
                Some("the agent stopped before a decision".into()),
                2,
            ),
        },
        Some(Event::ApprovalExpired { .. }) => {
            s(2, "Failure", None, Some("nobody decided in time".into()), 2)
        }
        Some(Event::Error { message, .. }) => s(2, "Failure", None, Some(message.clone()), 3),
        None => s(0, "Unknown", None, None, 0),
        // Every other kind records something that happened as it says: no wildcard, so
        // a new kind must decide here whether it can fail.
        Some(
            Event::AgentStarted { .. }
            | Event::AgentStopped { .. }
            | Event::ConfigReloaded { ok: true, .. }
            | Event::PolicyReloaded { .. }
            | Event::ResourceResolved { .. }
            | Event::SessionOpened { .. }
            | Event::SessionLogin { .. }
            | Event::SessionSettings { .. }
            | Event::WorkerToken { accepted: true, .. }
            | Event::Execution { .. }
            | Event::StatementCompleted { error: None, .. }
            | Event::MaskingApplied { .. }
            | Event::JournalPruned { .. },
        ) => ok,
    }
}

fn severity_name(id: u32) -> &'static str {
    match id {
        1 => "Informational",
        2 => "Low",
        3 => "Medium",
        _ => "Unknown",
    }
}

impl Exporter {
    /// The OCSF event for one stored record.
    pub fn event(&self, r: &StoredRecord, ctx: SessionContext<'_>) -> Value {
        let record = r.record();
        let event = record.as_ref().map(|r| &r.event);
        let statement = ctx.statement.map(|s| &s.event);
        let class = class(event, statement);
        let status = status(event);
        let product = json!({ "name": "pam-agent", "vendor_name": VENDOR, "version": env!("CARGO_PKG_VERSION") });
        let mut metadata = json!({
            "version": OCSF_VERSION,
            "product": product,
            "log_name": "pam-agent journal",
            "sequence": r.seq,
            "uid": format!("{}-{}", self.journal_id, r.seq),
            "loggers": [{ "name": "pam-agent", "product": product, "device": self.host.device() }],
        });
        if !class.profiles.is_empty() {
            metadata["profiles"] = json!(class.profiles);
        }
        if let Some(s) = &r.session {
            metadata["correlation_uid"] = json!(s);
        }
        let raw: Value = serde_json::from_str(&r.json).unwrap_or_else(|_| json!(r.json));
        let mut ev = json!({
            "class_uid": class.uid,
            "category_uid": class.uid / 1000,
            "activity_id": class.activity_id,
            "activity_name": class.activity_name,
            "type_uid": u64::from(class.uid) * 100 + u64::from(class.activity_id),
            "time": r.ts_us.div_euclid(1000),
            "severity_id": status.severity,
            "severity": severity_name(status.severity),
            "status_id": status.id,
            "status": status.name,
            "message": super::output::detail(r),
            "metadata": metadata,
            "unmapped": { "pam_agent": raw },
        });
        let obj = ev.as_object_mut().expect("literal object");
        if let Some(c) = status.code {
            obj.insert("status_code".into(), json!(c));
        }
        if let Some(d) = status.detail {
            obj.insert("status_detail".into(), json!(d));
        }
        if class.profiles.contains(&"host") {
            obj.insert("device".into(), self.host.device());
        }
        let opened = match event {
            Some(Event::SessionOpened { .. }) => record.as_ref(),
            _ => ctx.opened,
        };
        let session = Session::from(opened, r);
        match (class.uid, event) {
            (6002, e) => {
                let version = match e {
                    Some(Event::AgentStarted { version, .. }) => version.as_str(),
                    _ => env!("CARGO_PKG_VERSION"),
                };
                obj.insert(
                    "app".into(),
                    json!({ "name": "pam-agent", "vendor_name": VENDOR, "version": version }),
                );
            }
            (3002, Some(e)) => self.authentication(obj, e, &session),
            (
                4001,
                Some(Event::ConnectionRefused {
                    client,
                    count,
                    since,
                    ..
                }),
            ) => {
                // Coalesced refusals: how many, from the first to this record.
                if let Some(n) = count {
                    obj.insert("count".into(), json!(n));
                }
                if let Some(t) = since {
                    obj.insert("start_time".into(), json!(t.as_millisecond()));
                    obj.insert("end_time".into(), json!(r.ts_us.div_euclid(1000)));
                }
                obj.insert(
                    "src_endpoint".into(),
                    json!({ "ip": client.ip().to_string(), "port": client.port() }),
                );
                // The agent's own listener on this host refused it.
                obj.insert(
                    "dst_endpoint".into(),
                    json!({ "hostname": self.host.hostname, "svc_name": "pam-agent" }),
                );
                control(obj, Control::of(Decision::Deny), "refused", None, None);
            }
            (6005, Some(e)) => self.database_activity(obj, e, statement, &session),
            _ => {}
        }
        ev
    }
}

impl Exporter {
    /// A statement, what followed it (execution, completion, masking) or a person's
    /// decision about it (approvals), class 6005: who, where, the query, the decision.
    fn database_activity(
        &self,
        obj: &mut Map<String, Value>,
        e: &Event,
        statement: Option<&Event>,
        session: &Session<'_>,
    ) {
        obj.insert("actor".into(), session.actor());
        obj.insert(
            "src_endpoint".into(),
            session
                .src()
                .unwrap_or_else(|| json!({ "hostname": self.host.hostname })),
        );
        obj.insert("dst_endpoint".into(), session.dst());
        obj.insert("database".into(), session.database());
        obj.insert("type_id".into(), json!(1));
        obj.insert("type".into(), json!("Database"));
        // The statement this event is about: the record itself, or for what followed
        // it the statement record it refers to.
        let judged = match e {
            Event::Statement { .. } => Some(e),
            _ => statement,
        };
        let (rule, reason) = match judged {
            Some(Event::Statement {
                text,
                fingerprint,
                kinds,
                rule,
                reason,
                ..
            }) => {
                // query_string is required: without recorded text (fingerprint-only
                // mode) there is no query_info; the fingerprint stays under unmapped.
                if let Some(t) = text {
                    let mut q = json!({
                        "query_string": t,
                        "name": kinds.first().map_or("statement", String::as_str),
                    });
                    if let Some(f) = fingerprint {
                        q["uid"] = json!(f);
                    }
                    obj.insert("query_info".into(), q);
                }
                (rule.as_deref(), reason.as_deref())
            }
            _ => (None, None),
        };
        match e {
            Event::Statement { decision: d, .. } => {
                control(obj, Control::of(*d), d.as_str(), rule, reason)
            }
            Event::ApprovalRequested { rule, .. } => control(
                obj,
                Control::of(Decision::RequireApproval),
                "pending",
                Some(rule),
                None,
            ),
            Event::ApprovalDecided {
                outcome,
                by,
                reason,
                ..
            } => {
                // The approver acted; the worker is the session (correlation_uid).
                obj.insert("actor".into(), json!({ "user": { "name": by } }));
                let c = match outcome {
                    ApprovalOutcome::Approved => Control(1, "Allowed", 8, "Approved"),
                    ApprovalOutcome::Counted => Control(99, "Require Approval", 14, "Delayed"),
                    ApprovalOutcome::Rejected => Control(2, "Denied", 25, "Rejected"),
                    ApprovalOutcome::Withdrawn => Control(99, "Withdrawn", 16, "No Action"),
                    ApprovalOutcome::Abandoned => Control(2, "Denied", 2, "Blocked"),
                    ApprovalOutcome::Revoked => Control(2, "Denied", 24, "Access Revoked"),
                };
                control(obj, c, outcome.as_str(), None, reason.as_deref());
            }
            Event::ApprovalExpired { .. } => control(
                obj,
                Control(2, "Denied", 2, "Blocked"),
                "expired",
                None,
                Some("nobody decided in time"),
            ),
            // It ran (allowed, by its rule or the approval it waited for) and its
            // results were rewritten by the masking rule.
            Event::MaskingApplied { rule, .. } => control(
                obj,
                Control(1, "Allowed", 99, "Masked"),
                "masked",
                rule.as_deref(),
                None,
            ),
            // An execution or completion: it ran, so it was allowed.
            _ => control(obj, Control::of(Decision::Allow), "allow", rule, None),
        }
    }

    /// A logon (session, worker token, database login, role change), class 3002.
    fn authentication(&self, obj: &mut Map<String, Value>, e: &Event, session: &Session<'_>) {
        let mut user = session.user();
        match e {
            Event::WorkerToken {
                subject, groups, ..
            } => {
                user = match subject {
                    Some(sub) => json!({ "uid": sub, "name": sub }),
                    None => json!({ "name": "unknown", "type_id": 0, "type": "Unknown" }),
                };
                if !groups.is_empty() {
                    let g: Vec<Value> = groups.iter().map(|n| json!({ "name": n })).collect();
                    user["groups"] = json!(g);
                }
                obj.insert("auth_protocol_id".into(), json!(4));
                obj.insert("auth_protocol".into(), json!("OpenID"));
            }
            // The database account (role) is the user of these logons.
            Event::SessionLogin { role, database, .. } => {
                if let Some(role) = role {
                    user = json!({ "name": role, "type_id": 3, "type": "System" });
                }
                if let Some(db) = database {
                    obj.insert("service".into(), json!({ "name": db }));
                }
            }
            Event::SessionSettings {
                role: Some(role), ..
            } => {
                user = json!({ "name": role, "type_id": 3, "type": "System" });
            }
            _ => {}
        }
        authentication(obj, session, user);
    }
}

/// A session's logon (class 3002): who logged on to what, from where.
fn authentication(obj: &mut Map<String, Value>, session: &Session<'_>, user: Value) {
    obj.insert("user".into(), user);
    obj.insert("actor".into(), session.actor());
    obj.entry("service").or_insert_with(|| session.service());
    obj.insert("dst_endpoint".into(), session.dst());
    if let Some(src) = session.src() {
        obj.insert("src_endpoint".into(), src);
    }
    obj.insert("session".into(), session.session_object());
    obj.insert("is_remote".into(), json!(false));
    obj.insert("logon_type_id".into(), json!(3));
    obj.insert("logon_type".into(), json!("Network"));
}

/// The security_control profile's action and disposition: (action_id, action,
/// disposition_id, disposition).
struct Control(u32, &'static str, u32, &'static str);

impl Control {
    fn of(d: Decision) -> Control {
        match d {
            Decision::Allow => Control(1, "Allowed", 1, "Allowed"),
            Decision::Deny => Control(2, "Denied", 2, "Blocked"),
            Decision::RequireApproval => Control(99, "Require Approval", 14, "Delayed"),
        }
    }
}

/// The decision in the security_control profile's fields, the rule and reason with it.
fn control(
    obj: &mut Map<String, Value>,
    c: Control,
    decision: &str,
    rule: Option<&str>,
    reason: Option<&str>,
) {
    let Control(action_id, action, disposition_id, disposition) = c;
    obj.insert("action_id".into(), json!(action_id));
    obj.insert("action".into(), json!(action));
    obj.insert("disposition_id".into(), json!(disposition_id));
    obj.insert("disposition".into(), json!(disposition));
    let mut auth = json!({ "decision": decision });
    if let Some(rule) = rule {
        let mut named = json!({ "name": rule, "uid": rule });
        if let Some(reason) = reason {
            named["desc"] = json!(reason);
        }
        auth["policy"] = named.clone();
        obj.insert("firewall_rule".into(), named);
    }
    obj.insert("authorizations".into(), json!([auth]));
}

/// What the session's opening record says, with fallbacks from the stored columns when
/// that record is gone (retention) or unreadable.
struct Session<'a> {
    id: Option<&'a str>,
    principal: Option<&'a Principal>,
    resource: Option<(&'a str, &'a str)>,
    destination: Option<std::net::SocketAddr>,
    client: Option<std::net::SocketAddr>,
    row: &'a StoredRecord,
}

impl<'a> Session<'a> {
    fn from(opened: Option<&'a Record>, row: &'a StoredRecord) -> Self {
        let mut s = Session {
            id: row.session.as_deref(),
            principal: None,
            resource: None,
            destination: None,
            client: None,
            row,
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
            s.principal = Some(principal);
            s.resource = Some((&resource.name, &resource.protocol));
            s.destination = Some(*destination);
            s.client = Some(*client);
        }
        s
    }

    fn resource_name(&self) -> &str {
        self.resource
            .map(|r| r.0)
            .or(self.row.resource.as_deref())
            .unwrap_or("unknown")
    }

    fn user(&self) -> Value {
        match self.principal {
            Some(p) => {
                let mut u = json!({ "uid": p.uid.to_string() });
                if let Some(name) = &p.user {
                    u["name"] = json!(name);
                }
                u
            }
            None => match (self.row.uid, &self.row.user) {
                (Some(uid), Some(name)) => json!({ "uid": uid.to_string(), "name": name }),
                (Some(uid), None) => json!({ "uid": uid.to_string() }),
                // `user` is required: say plainly that it is not known.
                _ => json!({ "name": "unknown", "type_id": 0, "type": "Unknown" }),
            },
        }
    }

    fn actor(&self) -> Value {
        let mut actor = json!({ "user": self.user() });
        if let Some(p) = self.principal {
            let mut process = json!({ "pid": p.pid, "name": p.comm, "user": self.user() });
            if let Some(exe) = &p.exe {
                process["file"] = json!({
                    "path": exe,
                    "name": exe.rsplit('/').next().unwrap_or(exe),
                    "type_id": 1,
                    "type": "Regular File",
                });
            }
            actor["process"] = process;
        }
        if let Some(id) = self.id {
            actor["session"] = json!({ "uid": id });
        }
        actor
    }

    fn src(&self) -> Option<Value> {
        self.client
            .map(|c| json!({ "ip": c.ip().to_string(), "port": c.port() }))
    }

    fn dst(&self) -> Value {
        let mut d = json!({ "name": self.resource_name() });
        if let Some(a) = self.destination {
            d["ip"] = json!(a.ip().to_string());
            d["port"] = json!(a.port());
        }
        if let Some((_, protocol)) = self.resource {
            d["svc_name"] = json!(protocol);
        }
        d
    }

    fn service(&self) -> Value {
        let mut s = json!({ "name": self.resource_name() });
        if let Some((_, protocol)) = self.resource {
            s["labels"] = json!([protocol]);
        }
        s
    }

    fn database(&self) -> Value {
        let relational = self.resource.is_none_or(|(_, p)| p == "postgres");
        json!({
            "name": self.resource_name(),
            "type_id": if relational { 1 } else { 0 },
            "type": if relational { "Relational" } else { "Unknown" },
        })
    }

    fn session_object(&self) -> Value {
        let mut s = json!({ "is_remote": false });
        if let Some(id) = self.id {
            s["uid"] = json!(id);
        }
        s
    }
}
