//! A journal's worth of events that holds every record kind and, for the kinds whose
//! meaning depends on it, every outcome (each approval outcome, each way a session ends,
//! each decision, a token accepted and refused, a coalesced refusal): what the OCSF
//! export must map. `variant` is an exhaustive match, so a new kind in `journal/event.rs`
//! does not compile here until it has a sample and an expected mapping.

use std::time::Duration;

use jiff::Timestamp;
use pam_agent::journal::{
    Event, SessionId,
    event::{
        ApprovalOutcome, Decision, GrantRecord, MaskedColumn, Parameter, ResourceRef, SessionEnd,
    },
};

use super::{addr, principal};

/// Which variant an event is, with no wildcard arm: adding a kind breaks this match.
pub fn variant(e: &Event) -> &'static str {
    match e {
        Event::AgentStarted { .. } => "agent_started",
        Event::AgentStopped { .. } => "agent_stopped",
        Event::ConfigReloaded { .. } => "config_reloaded",
        Event::SessionOpened { .. } => "session_opened",
        Event::SessionLogin { .. } => "session_login",
        Event::SessionSettings { .. } => "session_settings",
        Event::SessionClosed { .. } => "session_closed",
        Event::WorkerToken { .. } => "worker_token",
        Event::ConnectionRefused { .. } => "connection_refused",
        Event::ResourceResolved { .. } => "resource_resolved",
        Event::Statement { .. } => "statement",
        Event::Execution { .. } => "execution",
        Event::StatementCompleted { .. } => "statement_completed",
        Event::PolicyReloaded { .. } => "policy_reloaded",
        Event::ApprovalRequested { .. } => "approval_requested",
        Event::ApprovalDecided { .. } => "approval_decided",
        Event::ApprovalExpired { .. } => "approval_expired",
        Event::MaskingApplied { .. } => "masking_applied",
        Event::Error { .. } => "error",
        Event::JournalPruned { .. } => "journal_pruned",
    }
}

fn statement(n: u64, kind: &str, text: Option<&str>, decision: Decision, rule: &str) -> Event {
    Event::Statement {
        statement: Some(n),
        text: text.map(str::to_owned),
        fingerprint: Some(format!("fp{n:02}")),
        kinds: vec![kind.into()],
        tables: vec!["public.orders".into()],
        functions: Vec::new(),
        flags: Vec::new(),
        decision,
        rule: Some(rule.into()),
        reason: match decision {
            Decision::Allow => None,
            Decision::Deny => Some(format!("statement kind {kind} is not allowed")),
            Decision::RequireApproval => Some("writes need a DBA".into()),
        },
        duration_ms: None,
        rows: None,
        error: None,
    }
}

/// Every kind and outcome, in an order a real journal could hold them. Each entry is
/// (session, event, a short name the tests use to find its exported event).
pub fn every_variant(
    s: SessionId,
    ended: [SessionId; 4],
) -> Vec<(Option<SessionId>, Event, &'static str)> {
    let a1 = uuid::Uuid::now_v7();
    let a2 = uuid::Uuid::now_v7();
    let a3 = uuid::Uuid::now_v7();
    let session = Some(s);
    let expires = Timestamp::now() + Duration::from_secs(300);
    let opened = |p| Event::SessionOpened {
        principal: p,
        resource: ResourceRef {
            name: "orders-db".into(),
            protocol: "postgres".into(),
        },
        destination: addr("10.0.0.5:5432"),
        client: addr("10.0.0.9:40001"),
    };
    let closed = |end, detail: Option<&str>| Event::SessionClosed {
        bytes_from_worker: 1200,
        bytes_to_worker: 34000,
        duration_ms: 950,
        end,
        detail: detail.map(str::to_owned),
    };
    let decided = |approval, outcome, reason: Option<&str>| Event::ApprovalDecided {
        approval,
        outcome,
        by: "carol@example.com".into(),
        reason: reason.map(str::to_owned),
        grant: None,
    };
    let mut v = vec![
        (
            None,
            Event::AgentStarted {
                version: "0.1.0".into(),
                config: "/etc/pam-agent/config.toml".into(),
                governed: vec!["/crew.slice".into()],
                resources: vec!["orders-db".into()],
            },
            "started",
        ),
        (
            None,
            Event::ResourceResolved {
                resource: "orders-db".into(),
                host: "db.internal".into(),
                addresses: vec!["10.0.0.5".parse().unwrap(), "fd00::5".parse().unwrap()],
                added: vec!["fd00::5".parse().unwrap()],
                removed: vec!["10.0.0.4".parse().unwrap()],
            },
            "resolved",
        ),
        (
            None,
            Event::ConfigReloaded {
                config: "/etc/pam-agent/config.toml".into(),
                ok: false,
                detail: Some("resources[0].port: must be between 1 and 65535".into()),
            },
            "reload refused",
        ),
        (
            None,
            Event::ConfigReloaded {
                config: "/etc/pam-agent/config.toml".into(),
                ok: true,
                detail: None,
            },
            "reloaded",
        ),
        (
            None,
            Event::PolicyReloaded {
                config: "/etc/pam-agent/config.toml".into(),
                rules: 4,
            },
            "policy reloaded",
        ),
        (
            session,
            opened(principal(1001, "alice", "python3")),
            "opened",
        ),
        (
            session,
            Event::WorkerToken {
                accepted: true,
                issuer: "https://idp.example.com".into(),
                subject: Some("crew-reader".into()),
                groups: vec!["analysts".into()],
                expires_at: Some(1_798_761_600),
                reason: None,
            },
            "token accepted",
        ),
        (
            session,
            Event::SessionLogin {
                database: Some("orders".into()),
                role: Some("crew_reader".into()),
                application_name: Some("pam-agent/crew psql".into()),
                reported: [
                    ("server_version".to_owned(), "15.14".to_owned()),
                    ("session_authorization".to_owned(), "crew_reader".to_owned()),
                ]
                .into(),
            },
            "login",
        ),
        (
            session,
            Event::SessionSettings {
                role: Some("reporting".into()),
                search_path: vec!["\"$user\"".into(), "public".into()],
            },
            "settings",
        ),
        (
            session,
            statement(
                1,
                "select",
                Some("SELECT * FROM orders WHERE id = $1"),
                Decision::Allow,
                "read-orders",
            ),
            "select",
        ),
        (
            session,
            Event::Execution {
                statement: 1,
                parameters: vec![
                    Parameter {
                        ty: Some("int4".into()),
                        value: Some("7".into()),
                        redacted: None,
                    },
                    Parameter {
                        ty: Some("text".into()),
                        value: None,
                        redacted: Some("detector email".into()),
                    },
                ],
                more: 2,
            },
            "execution",
        ),
        (
            session,
            Event::StatementCompleted {
                statement: 1,
                duration_ms: 4,
                rows: Some(1),
                error: None,
            },
            "completed",
        ),
        (
            session,
            Event::MaskingApplied {
                rule: Some("mask-pii".into()),
                columns: vec![
                    MaskedColumn {
                        name: "public.customers.email".into(),
                        method: "redact".into(),
                        values: 12,
                        by: Some("column".into()),
                        rule: Some("mask-pii".into()),
                        pattern: Some("public.*.email".into()),
                        nulled: 0,
                    },
                    MaskedColumn {
                        name: "?column?".into(),
                        method: "withheld".into(),
                        values: 3,
                        by: Some("withheld".into()),
                        rule: Some("mask-pii".into()),
                        pattern: None,
                        nulled: 3,
                    },
                ],
                rows: 12,
                statement: Some(1),
            },
            "masked",
        ),
        (
            session,
            statement(
                2,
                "update",
                Some("UPDATE orders SET total = 0 WHERE id = 7"),
                Decision::RequireApproval,
                "approve-writes",
            ),
            "held",
        ),
        (
            session,
            Event::ApprovalRequested {
                approval: a1,
                rule: "approve-writes".into(),
                request: "UPDATE orders SET total = 0 WHERE id = 7".into(),
                approvers: vec!["dba-oncall".into()],
                expires_at: expires,
            },
            "requested",
        ),
        (
            session,
            decided(a1, ApprovalOutcome::Counted, None),
            "counted",
        ),
        (
            session,
            Event::ApprovalDecided {
                approval: a1,
                outcome: ApprovalOutcome::Approved,
                by: "dave@example.com".into(),
                reason: Some("ticket OPS-12".into()),
                grant: Some(GrantRecord {
                    id: a3,
                    uid: 1001,
                    cgroup: Some("/crew.slice/w.service".into()),
                    exe: Some("/usr/bin/python3".into()),
                    resource: "orders-db".into(),
                    fingerprint: "fp02".into(),
                    until: expires,
                }),
            },
            "approved",
        ),
        (
            session,
            Event::StatementCompleted {
                statement: 2,
                duration_ms: 2,
                rows: None,
                error: Some("23505".into()),
            },
            "failed upstream",
        ),
        (
            session,
            Event::ApprovalDecided {
                approval: a1,
                outcome: ApprovalOutcome::Revoked,
                by: "carol@example.com".into(),
                reason: Some("done".into()),
                grant: None,
            },
            "revoked",
        ),
        (
            session,
            statement(3, "ddl", None, Decision::Deny, "no-ddl"),
            "denied",
        ),
        (
            session,
            Event::ApprovalRequested {
                approval: a2,
                rule: "approve-writes".into(),
                request: "fp04".into(),
                approvers: Vec::new(),
                expires_at: expires,
            },
            "requested again",
        ),
        (
            session,
            decided(a2, ApprovalOutcome::Rejected, Some("not during the freeze")),
            "rejected",
        ),
        (
            session,
            decided(a2, ApprovalOutcome::Withdrawn, None),
            "withdrawn",
        ),
        (
            session,
            decided(a2, ApprovalOutcome::Abandoned, None),
            "abandoned",
        ),
        (session, Event::ApprovalExpired { approval: a2 }, "expired"),
        (
            session,
            Event::Error {
                component: "postgres".into(),
                message: "upstream sent a malformed DataRow".into(),
            },
            "error",
        ),
        (
            session,
            Event::WorkerToken {
                accepted: false,
                issuer: "https://idp.example.com".into(),
                subject: Some("crew-writer".into()),
                groups: Vec::new(),
                expires_at: None,
                reason: Some("subject crew-writer is bound to another principal".into()),
            },
            "token refused",
        ),
        (session, closed(SessionEnd::Closed, None), "closed"),
    ];
    let ends = [
        (
            SessionEnd::Error,
            Some("connection reset by peer"),
            "ended in error",
        ),
        (SessionEnd::UpstreamUnreachable, None, "unreachable"),
        (SessionEnd::AgentShutdown, None, "shut down"),
        (
            SessionEnd::Abandoned,
            Some("the writer stopped"),
            "abandoned session",
        ),
    ];
    for (id, (end, detail, name)) in ended.into_iter().zip(ends) {
        v.push((
            Some(id),
            opened(principal(1002, "bob", "node")),
            "opened other",
        ));
        v.push((Some(id), closed(end, detail), name));
    }
    v.extend([
        (
            None,
            Event::ConnectionRefused {
                client: addr("10.0.0.9:40002"),
                reason: "no kernel record for this connection".into(),
                count: None,
                since: None,
            },
            "refused",
        ),
        (
            None,
            Event::ConnectionRefused {
                client: addr("[fd00::9]:40090"),
                reason: "no kernel record for this connection".into(),
                count: Some(1999),
                since: Some("2026-12-01T10:00:00Z".parse().unwrap()),
            },
            "refusals coalesced",
        ),
        (
            None,
            Event::JournalPruned {
                through_seq: 0,
                records: 0,
                reason: "retention: older than 90 days".into(),
            },
            "pruned",
        ),
        (
            None,
            Event::AgentStopped {
                reason: "SIGTERM".into(),
            },
            "stopped",
        ),
    ]);
    v
}
