//! Policy over PostgreSQL's requests: rules written as operators write them, judged
//! against what the real parser makes of SQL text.

use super::{VOCABULARY, classify};
use crate::{
    govern::{self, UNCLASSIFIABLE_RULE},
    policy::{Action, DEFAULT_RULE, Decision, Policy, RawPolicy},
    principal::Principal,
};

fn crew() -> Principal {
    Principal {
        pid: 1,
        tid: 1,
        uid: 1001,
        gid: 1001,
        cgroup_id: 7,
        comm: "python3".into(),
        user: Some("crew".into()),
        exe: Some("/usr/bin/python3.11".into()),
        cgroup: Some("/crew.slice/w1.service".into()),
        unit: Some("w1.service".into()),
        ..Default::default()
    }
}

fn policy(toml_text: &str) -> Policy {
    let raw: RawPolicy = toml::from_str(toml_text).unwrap();
    raw.validate(&["db", "other"], &VOCABULARY).unwrap().0
}

fn decide(p: &Policy, sql: &str) -> Decision {
    decide_as(p, &crew(), "db", sql)
}

/// As a session judges a text: unreadable text is refused before policy sees it.
fn decide_as(p: &Policy, who: &Principal, resource: &str, sql: &str) -> Decision {
    match classify(sql, 1 << 20) {
        Ok(sts) => p.decide_all(
            &crate::policy::Subject::new(who, resource),
            sts.iter().map(|s| &s.request),
        ),
        Err(e) => govern::unreadable(&e),
    }
}

const RULES: &str = r#"
[[rules]]
name = "no-unbounded-writes"
action = "deny"
if_flags = ["update_without_where", "delete_without_where"]

[[rules]]
name = "ddl-needs-approval"
action = "require_approval"
kinds = ["ddl"]

[[rules]]
name = "crew-rw"
action = "allow"
resources = ["db"]
users = ["crew"]
cgroups = ["/crew.slice/*"]
kinds = ["select", "insert", "update", "delete", "transaction"]
tables = ["public.*"]
"#;

#[test]
fn first_matching_rule_decides() {
    let p = policy(RULES);
    let d = decide(&p, "SELECT * FROM orders WHERE id = 1");
    assert_eq!((d.action, d.rule.as_str()), (Action::Allow, "crew-rw"));
    let d = decide(&p, "DELETE FROM orders");
    assert_eq!(
        (d.action, d.rule.as_str()),
        (Action::Deny, "no-unbounded-writes")
    );
    let d = decide(&p, "CREATE TABLE x (a int)");
    assert_eq!(d.action, Action::RequireApproval);
    assert!(d.reason.contains("approval required"), "{}", d.reason);
}

#[test]
fn default_is_deny_and_names_the_default() {
    let p = policy(RULES);
    let d = decide(&p, "SELECT * FROM secret.keys");
    assert_eq!((d.action, d.rule.as_str()), (Action::Deny, DEFAULT_RULE));
    let d = decide_as(&p, &crew(), "other", "SELECT 1");
    assert_eq!(d.action, Action::Deny);
}

#[test]
fn flags_are_never_allowed_by_accident() {
    let p = policy(RULES);
    for sql in [
        "SELECT pg_read_file('/etc/passwd')",
        "WITH d AS (DELETE FROM orders WHERE id = 1 RETURNING *) SELECT * FROM d",
        "SELECT set_config('role', 'postgres', false)",
        "SELECT query_to_xml('select * from secret.keys', true, true, '')",
        "SELECT * INTO public.copy FROM orders",
    ] {
        assert_ne!(decide(&p, sql).action, Action::Allow, "{sql}");
    }
    let p = policy(
        r#"
[[rules]]
name = "cte-ok"
action = "allow"
kinds = ["select", "delete"]
permit_flags = ["data_modifying_cte"]
"#,
    );
    let d = decide(
        &p,
        "WITH d AS (DELETE FROM orders WHERE id = 1 RETURNING *) SELECT * FROM d",
    );
    assert_eq!(d.action, Action::Allow);
}

#[test]
fn multi_statement_refused_as_a_whole() {
    let p = policy(RULES);
    let d = decide(&p, "SELECT 1 FROM orders; DROP TABLE orders");
    assert_eq!(d.action, Action::RequireApproval);
    let d = decide(&p, "SELECT 1 FROM orders; SELECT 2 FROM orders");
    assert_eq!(d.action, Action::Allow);
}

#[test]
fn unclassifiable_is_denied() {
    let p = policy("default = \"allow\"");
    let d = decide(&p, "SELEC 1");
    assert_eq!(
        (d.action, d.rule.as_str()),
        (Action::Deny, UNCLASSIFIABLE_RULE)
    );
    assert_eq!(decide(&p, "SELECT 1").action, Action::Allow);
}

#[test]
fn principal_conditions() {
    let p = policy(RULES);
    let mut other = crew();
    other.user = Some("bob".into());
    let d = decide_as(&p, &other, "db", "SELECT * FROM orders");
    assert_eq!(d.rule, DEFAULT_RULE);
    let text = {
        let sts = classify("SELECT * FROM orders", 100).unwrap();
        p.explain(
            &crate::policy::Subject::new(&other, "db"),
            &sts.iter().map(|s| &s.request).collect::<Vec<_>>(),
        )
    };
    assert!(text.contains("user \"bob\" not listed"), "{text}");
    assert!(text.contains("decision: deny (rule: default)"), "{text}");
}

#[test]
fn validation_names_the_field() {
    let bad = |t: &str| {
        let raw: RawPolicy = toml::from_str(t).unwrap();
        raw.validate(&["db"], &VOCABULARY).unwrap_err()
    };
    let (f, _) = bad("[[rules]]\nname='a'\naction='allow'\nkinds=['selekt']");
    assert_eq!(f, "policy.rules[0].kinds");
    let (f, _) = bad("[[rules]]\nname='a'\naction='deny'\npermit_flags=['dynamic_sql']");
    assert_eq!(f, "policy.rules[0].permit_flags");
    let (f, _) = bad("[[rules]]\nname='a'\naction='deny'\nresources=['nope']");
    assert_eq!(f, "policy.rules[0].resources");
    assert!(toml::from_str::<RawPolicy>("[[rules]]\nname='a'\naction='maybe'").is_err());
}

#[test]
fn do_blocks_are_judged_by_their_body_and_dynamic_sql_needs_permission() {
    let p = policy(
        r#"
[[rules]]
name = "crew-procedural-reads"
action = "allow"
kinds = ["do", "select"]
tables = ["public.*"]

[[rules]]
name = "crew-dynamic"
action = "allow"
kinds = ["do"]
users = ["nobody"]
permit_flags = ["dynamic_sql"]
"#,
    );
    let d = decide(
        &p,
        "DO $$ DECLARE n int; BEGIN SELECT count(*) INTO n FROM orders; END $$",
    );
    assert_eq!(
        (d.action, d.rule.as_str()),
        (Action::Allow, "crew-procedural-reads")
    );
    // Same rule, but the block deletes: kind delete is not listed.
    let d = decide(&p, "DO $$ BEGIN DELETE FROM orders WHERE id = 1; END $$");
    assert_eq!(d.action, Action::Deny);
    // Reads a table outside public.
    let d = decide(&p, "DO $$ BEGIN PERFORM 1 FROM secret.keys; END $$");
    assert_eq!(d.action, Action::Deny);
    // Dynamic SQL: the broad rule does not permit the flag; the permitting rule is not ours.
    let d = decide(&p, "DO $$ BEGIN EXECUTE 'SELECT 1'; END $$");
    assert_eq!((d.action, d.rule.as_str()), (Action::Deny, "default"));
    // Other languages: unclassifiable.
    let d = decide(&p, "DO LANGUAGE plpython3u $$ pass $$");
    assert_eq!(d.rule, UNCLASSIFIABLE_RULE);
}

#[test]
fn any_functions_refuses_a_statement_that_uses_one_among_others() {
    let rules = |condition: &str| {
        policy(&format!(
            "[[rules]]\nname = \"no-sequences\"\naction = \"deny\"\n{condition} = [\"nextval\", \"pg_catalog.nextval\", \"setval\"]\n\n\
             [[rules]]\nname = \"read\"\naction = \"allow\"\nkinds = [\"select\"]\n"
        ))
    };
    let any = rules("any_functions");
    // Uses nextval among other functions: refused by the any-match rule.
    let d = decide(
        &any,
        "SELECT count(*), nextval('orders_id_seq') FROM orders",
    );
    assert_eq!((d.action, d.rule.as_str()), (Action::Deny, "no-sequences"));
    let d = decide(&any, "SELECT pg_catalog.nextval('s')");
    assert_eq!(d.rule, "no-sequences");
    // Uses none of them: not this rule.
    for sql in ["SELECT 1", "SELECT count(*) FROM orders"] {
        let d = decide(&any, sql);
        assert_eq!(
            (d.action, d.rule.as_str()),
            (Action::Allow, "read"),
            "{sql}"
        );
    }
    // The every-match condition is the trap the any-match one avoids: it matches a
    // statement that calls no function at all, and misses one that calls nextval
    // besides another function.
    let every = rules("functions");
    assert_eq!(decide(&every, "SELECT 1").rule, "no-sequences");
    let d = decide(
        &every,
        "SELECT count(*), nextval('orders_id_seq') FROM orders",
    );
    // (Only the `side_effect_function` flag nextval carries keeps "read" from allowing it.)
    assert_eq!((d.action, d.rule.as_str()), (Action::Deny, "default"));
    assert!(d.reason.contains("side_effect_function"), "{}", d.reason);
}

#[test]
fn any_tables_matches_when_one_table_among_several_is_listed() {
    let p = policy(
        r#"
[[rules]]
name = "no-secrets"
action = "deny"
any_tables = ["secret.*"]

[[rules]]
name = "read"
action = "allow"
kinds = ["select"]
"#,
    );
    let d = decide(&p, "SELECT * FROM orders JOIN secret.keys ON true");
    assert_eq!(d.rule, "no-secrets");
    let d = decide(&p, "SELECT * FROM orders");
    assert_eq!(d.rule, "read");
}

#[test]
fn approval_settings_are_read_and_checked() {
    let p = policy(
        r#"
[[rules]]
name = "deletes"
action = "require_approval"
kinds = ["delete"]
approval_timeout = "90s"
min_approvals = 2
approvers = ["alice", "group:secops"]

[[rules]]
name = "ddl"
action = "require_approval"
kinds = ["ddl"]
approval_timeout = "1h 30m"
"#,
    );
    let a = p.approval("deletes").unwrap();
    assert_eq!(a.timeout, std::time::Duration::from_secs(90));
    assert_eq!(a.min_approvals, 2);
    assert_eq!(a.approvers, ["alice", "group:secops"]);
    let b = p.approval("ddl").unwrap();
    assert_eq!(b.timeout, std::time::Duration::from_secs(5400));
    assert_eq!((b.min_approvals, b.approvers.len()), (1, 0));
    let bad = |body: &str| {
        let raw: RawPolicy = toml::from_str(body).unwrap();
        raw.validate(&["db"], &VOCABULARY).unwrap_err()
    };
    let e = bad(
        "[[rules]]\nname = \"x\"\naction = \"require_approval\"\napproval_timeout = \"soon\"\n",
    );
    assert_eq!(e.0, "policy.rules[0].approval_timeout");
    let e = bad("[[rules]]\nname = \"x\"\naction = \"require_approval\"\nmin_approvals = 0\n");
    assert_eq!(e.0, "policy.rules[0].min_approvals");
    let e = bad("[[rules]]\nname = \"x\"\naction = \"allow\"\nmin_approvals = 2\n");
    assert!(e.1.contains("only for require_approval"), "{e:?}");
}

#[test]
fn a_default_refusal_names_the_first_failed_condition_of_each_allow_rule() {
    let p = policy(
        r#"
[[rules]]
name = "no-ddl"
action = "deny"
kinds = ["ddl"]

[[rules]]
name = "crew-reads"
action = "allow"
users = ["crew"]
kinds = ["select"]
tables = ["public.orders"]

[[rules]]
name = "ops-writes"
action = "allow"
users = ["ops"]
"#,
    );
    let d = decide(&p, "SELECT * FROM secret.keys");
    assert_eq!((d.action, d.rule.as_str()), (Action::Deny, "default"));
    assert_eq!(
        d.reason,
        "no rule matches this select statement (rule \"crew-reads\": table secret.keys not \
         covered; rule \"ops-writes\": user \"crew\" not listed); resource `db` defaults to deny"
    );
}

#[test]
fn rules_can_match_the_database_and_role_the_session_logged_in_with() {
    let p = policy(
        r#"
[[rules]]
name = "reporting"
action = "allow"
databases = ["reports*"]
roles = ["analyst"]
kinds = ["select"]
"#,
    );
    let crew = crew();
    let sts = classify("SELECT * FROM orders", 1 << 20).unwrap();
    let judge = |database: Option<&str>, role: Option<&str>| {
        let s = crate::policy::Subject {
            database,
            role,
            ..crate::policy::Subject::new(&crew, "db")
        };
        p.decide_all(&s, sts.iter().map(|s| &s.request))
    };
    assert_eq!(
        judge(Some("reports_2026"), Some("analyst")).rule,
        "reporting"
    );
    let d = judge(Some("shop"), Some("analyst"));
    assert_eq!(d.rule, "default");
    assert!(
        d.reason.contains("database \"shop\" not listed"),
        "{}",
        d.reason
    );
    assert!(
        judge(Some("reports"), Some("postgres"))
            .reason
            .contains("role \"postgres\" not listed")
    );
    // Unknown never satisfies a rule that asks.
    assert_eq!(judge(None, Some("analyst")).rule, "default");
    assert_eq!(judge(Some("reports"), None).rule, "default");
}
