//! Remote approval, end to end: psql in a governed cgroup (real eBPF redirect) runs a
//! statement a rule holds; an approver elsewhere decides over the agent's HTTPS API with
//! a bearer token from a real OpenID provider on loopback (oidc-provider); webhook
//! receivers on loopback get signed notices. PostgreSQL 15 on a test host shows what ran.

use std::{
    process::{Command, Output, Stdio},
    time::{Duration, Instant},
};

use base64::Engine;
use hmac::{Hmac, Mac};
use pam_e2e::OutputWithin;
use pam_e2e::{
    Agent, Cgroup, ResourceSpec, TestHost, agent_bin, free_port,
    idp::{AUDIENCE, Idp},
    postgres::PgServer,
    receiver::{Blackhole, Receiver},
    require_root, wait_for,
};
use pam_e2e::{SpawnWatched, Watched};
use serde_json::{Value, json};
use sha2::Sha256;

const PASSWORD: &str = "pg-remote-approvals-password";
const WORKER_UID: &str = "4242";
/// `nobody`: the worker of the self-approval case, whose user a token subject maps to.
const NOBODY: &str = "65534";
const WEBHOOK_SECRET: &str = "webhook-secret-for-the-e2e-tests";

const POLICY: &str = r#"
[[policy.rules]]
name = "deletes-need-approval"
action = "require_approval"
kinds = ["delete"]
tables = ["public.orders"]
approval_timeout = "120s"

[[policy.rules]]
name = "reads"
action = "allow"
kinds = ["select"]

[[policy.rules]]
name = "drivers-housekeeping"
action = "allow"
kinds = ["transaction", "session"]
"#;

struct Fixture {
    agent: Agent,
    cg: Cgroup,
    pg: PgServer,
    host: TestHost,
    idp: Idp,
    /// `https://127.0.0.1:PORT`
    api: String,
    /// CA files, the webhook secret, the control socket.
    dir: tempfile::TempDir,
    /// Answers every notice 200.
    hook: Receiver,
    /// Fails the first two deliveries with 500.
    flaky: Receiver,
    /// Never answers.
    hole: Blackhole,
}

impl Fixture {
    fn new() -> Fixture {
        let idp = Idp::start(&[
            ("alice", &["secops"]),
            ("carol", &["secops"]),
            ("bob", &["dev"]),
            ("nobody-bot", &["secops"]),
        ])
        .expect("identity provider");
        let host = TestHost::new().expect("test host");
        let pg = PgServer::start(&host, 5432, PASSWORD).expect("postgres");
        pg.admin_sql("postgres", "create database shop").unwrap();
        pg.admin_sql(
            "shop",
            "create table orders(id int primary key, note text);
             insert into orders select g, 'order ' || g from generate_series(1, 10) g;",
        )
        .unwrap();
        let cg = Cgroup::new("rappr").expect("cgroup");
        let dir = tempfile::Builder::new()
            .prefix("pam-remote")
            .tempdir()
            .unwrap();
        let secret = dir.path().join("webhook.secret");
        std::fs::write(&secret, format!("{WEBHOOK_SECRET}\n")).unwrap();
        let hook = Receiver::start(|_| 200);
        let flaky = Receiver::start(|n| if n < 2 { 500 } else { 200 });
        let hole = Blackhole::start();
        let port = free_port();
        let extra = format!(
            r#"{POLICY}
[worker_tls]
ca_cert = "{d}/ca.pem"
ca_key = "{d}/ca.key"

[approvals]
socket = "{d}/approvals.sock"

[approvals.http]
listen = "127.0.0.1:{port}"
groups = ["secops"]
users = {{ "nobody-bot" = "nobody" }}

[approvals.http.oidc]
issuer = "{issuer}"
audience = ["{AUDIENCE}"]
jwks_refresh_interval = "0s"

[[approvals.webhooks]]
url = "{hook}"
secret_file = "{secret}"

[[approvals.webhooks]]
url = "{flaky}"
secret_file = "{secret}"
retry_after = "200ms"
max_attempts = 5

[[approvals.webhooks]]
url = "{hole}"
secret_file = "{secret}"
timeout = "1h"
max_attempts = 1
"#,
            d = dir.path().display(),
            issuer = idp.issuer,
            hook = hook.url(),
            flaky = flaky.url(),
            hole = hole.url(),
            secret = secret.display(),
        );
        let agent = Agent::start_with(
            &[&cg],
            &[ResourceSpec::postgres("shop-db", host.v4, 5432)],
            &extra,
        )
        .expect("agent");
        Fixture {
            agent,
            cg,
            pg,
            host,
            idp,
            api: format!("https://127.0.0.1:{port}"),
            dir,
            hook,
            flaky,
            hole,
        }
    }

    /// psql as `uid` in the governed cgroup, each `-c` its own statement in one session.
    fn worker(&self, uid: &str, statements: &[&str]) -> Watched {
        let mut c = Command::new(agent_bin());
        c.args(["exec", "--cgroup"]).arg(&self.cg.path).args([
            "--",
            "setpriv",
            "--reuid",
            uid,
            "--regid",
            uid,
            "--clear-groups",
            "psql",
            "-h",
        ]);
        c.arg(self.host.v4.to_string())
            .args(["-U", "postgres", "-d", "shop", "-X", "-At"])
            // Errors with their SQLSTATE: `ERROR:  42501: ...`.
            .args(["-v", "VERBOSITY=verbose"]);
        for s in statements {
            c.args(["-c", s]);
        }
        c.env("PGPASSWORD", PASSWORD)
            .env("PGCONNECT_TIMEOUT", "5")
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn_watched()
            .expect("psql")
    }

    /// One API call with curl, trusting only the agent CA: (status, JSON body).
    fn call(
        &self,
        method: &str,
        path: &str,
        token: Option<&str>,
        body: Option<&str>,
    ) -> (u16, Value) {
        let mut c = Command::new("curl");
        c.args(["-sS", "--max-time", "30", "--cacert"])
            .arg(self.dir.path().join("ca.pem"))
            .args(["-X", method, "-w", "\n%{http_code}"]);
        if let Some(t) = token {
            c.args(["-H", &format!("Authorization: Bearer {t}")]);
        }
        if let Some(b) = body {
            c.args(["-H", "Content-Type: application/json", "--data", b]);
        }
        let out = c
            .arg(format!("{}{path}", self.api))
            .output_within()
            .expect("curl");
        let text = String::from_utf8_lossy(&out.stdout).into_owned();
        assert!(
            out.status.success(),
            "curl {path}: {text} {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let (body, code) = text.rsplit_once('\n').expect("status line");
        let v = if body.trim().is_empty() {
            Value::Null
        } else {
            serde_json::from_str(body).unwrap_or_else(|_| json!({ "raw": body }))
        };
        (code.trim().parse().expect("HTTP status"), v)
    }

    /// The pending requests as `subject` sees them, waiting until there are `n`.
    fn pending(&self, token: &str, n: usize) -> Vec<Value> {
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            let (code, v) = self.call("GET", "/v1/approvals", Some(token), None);
            assert_eq!(code, 200, "{v}");
            let list = v["requests"].as_array().cloned().unwrap_or_default();
            if list.len() == n || Instant::now() > deadline {
                assert_eq!(list.len(), n, "pending requests: {v}");
                return list;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    fn orders(&self, filter: &str) -> String {
        self.pg
            .admin_sql(
                "shop",
                &format!("select count(*) from orders where {filter}"),
            )
            .unwrap()
            .trim()
            .to_owned()
    }

    /// The API's refusals on record.
    fn refusals(&self) -> Vec<String> {
        self.agent
            .records("error")
            .into_iter()
            .filter(|r| r["component"] == "approvals-http")
            .map(|r| r["message"].as_str().unwrap_or_default().to_owned())
            .collect()
    }
}

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

fn finish(mut child: Watched, secs: u64) -> Output {
    let deadline = Instant::now() + Duration::from_secs(secs);
    while child.try_wait().unwrap().is_none() {
        if Instant::now() > deadline {
            let _ = child.kill();
            panic!(
                "worker still running after {secs}s: {:?}",
                child.wait_with_output()
            );
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    child.wait_with_output().unwrap()
}

/// The webhook signature as a receiver checks it: HMAC-SHA256 over `TIMESTAMP.BODY`.
fn signature_ok(d: &pam_e2e::receiver::Delivery, secret: &str) -> bool {
    let (Some(ts), Some(sig)) = (
        d.headers.get("x-pam-agent-timestamp"),
        d.headers.get("x-pam-agent-signature"),
    ) else {
        return false;
    };
    let Some(hex) = sig.strip_prefix("sha256=") else {
        return false;
    };
    let mut mac = Hmac::<Sha256>::new_from_slice(secret.as_bytes()).unwrap();
    mac.update(ts.as_bytes());
    mac.update(b".");
    mac.update(&d.body);
    let want: String = mac
        .finalize()
        .into_bytes()
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect();
    want == hex
}

fn body(d: &pam_e2e::receiver::Delivery) -> Value {
    serde_json::from_slice(&d.body).expect("webhook body is JSON")
}

#[test]
fn an_approver_token_approves_a_held_delete_and_webhooks_are_signed_retried_and_never_in_the_way() {
    if !require_root("approvals_remote") {
        return;
    }
    let f = Fixture::new();
    let alice = f.idp.token("alice");
    let worker = f.worker(
        WORKER_UID,
        &[
            "delete from orders where id = 1",
            "select count(*) from orders",
        ],
    );
    let req = f.pending(&alice, 1).remove(0);
    // What the remote approver sees: who, where, what and why.
    assert_eq!(req["principal"]["uid"], 4242);
    assert_eq!(req["resource"], "shop-db");
    assert_eq!(req["rule"], "deletes-need-approval");
    assert_eq!(req["text"], "delete from orders where id = 1");
    let id = req["id"].as_str().unwrap().to_owned();
    let (code, shown) = f.call("GET", &format!("/v1/approvals/{id}"), Some(&alice), None);
    assert_eq!(
        (code, &shown["request"]["id"]),
        (200, &json!(id)),
        "{shown}"
    );
    assert_eq!(f.orders("id = 1"), "1", "nothing ran while it waits");

    // The webhooks heard of the request before anyone decided; the dead receiver holds
    // a connection it never answers.
    wait_for("the request's webhook", Duration::from_secs(20), || {
        (!f.hook.received().is_empty()).then_some(())
    });
    wait_for(
        "a connection to the dead receiver",
        Duration::from_secs(20),
        || (f.hole.connections() > 0).then_some(()),
    );

    let (code, v) = f.call(
        "POST",
        &format!("/v1/approvals/{id}/approve"),
        Some(&alice),
        Some(r#"{"reason": "ticket 9"}"#),
    );
    assert_eq!(code, 200, "{v}");
    assert_eq!(v, json!({"result": "decided", "decided": "Approved"}));
    let out = finish(worker, 30);
    let (stdout, stderr) = (text(&out.stdout), text(&out.stderr));
    assert!(out.status.success(), "{stderr}");
    // The same session ran the delete and went on.
    assert!(stdout.contains("DELETE 1"), "{stdout}");
    assert_eq!(stdout.lines().last(), Some("9"), "{stdout}");
    assert_eq!(f.orders("id = 1"), "0");
    // On record: decided by the token's subject, through the HTTP channel.
    let decided = f.agent.records("approval_decided");
    assert_eq!(decided.len(), 1, "{decided:?}");
    assert_eq!(decided[0]["outcome"], "approved");
    assert_eq!(decided[0]["by"], "oidc:alice (subject alice, http)");
    assert_eq!(decided[0]["reason"], "ticket 9");
    // The dead receiver never answered, and nothing waited for it.
    assert!(f.hole.connections() > 0);

    // Both notices reached the healthy receiver, signed, with Slack's `text` and a link.
    let got = wait_for("both notices", Duration::from_secs(20), || {
        let r = f.hook.received();
        (r.len() >= 2).then_some(r)
    });
    assert_eq!(got.len(), 2, "{got:?}");
    let mut events: Vec<String> = got
        .iter()
        .map(|d| body(d)["event"].as_str().unwrap().to_owned())
        .collect();
    events.sort();
    assert_eq!(events, ["approval_decided", "approval_requested"]);
    for d in &got {
        assert_eq!((d.method.as_str(), d.path.as_str()), ("POST", "/hook"));
        assert!(signature_ok(d, WEBHOOK_SECRET), "bad signature: {d:?}");
        assert!(
            !signature_ok(d, "another-secret-entirely"),
            "signature ignores the key"
        );
        let b = body(d);
        assert_eq!(b["approval"]["id"], id.as_str());
        assert_eq!(b["link"], format!("{}/v1/approvals/{id}", f.api));
        assert!(b["text"].as_str().unwrap().contains(&id), "{b}");
        if b["event"] == "approval_decided" {
            assert_eq!(b["outcome"], "approved");
            assert!(
                b["text"]
                    .as_str()
                    .unwrap()
                    .contains("approved by oidc:alice"),
                "{b}"
            );
        }
    }
    // The failing receiver: refused twice, retried, then got each notice once more.
    let flaky = wait_for("the retried notices", Duration::from_secs(30), || {
        let r = f.flaky.received();
        (r.len() >= 4).then_some(r)
    });
    let deliveries = |event: &str| -> Vec<String> {
        flaky
            .iter()
            .filter(|d| body(d)["event"] == event)
            .map(|d| d.headers["x-pam-agent-delivery"].clone())
            .collect()
    };
    let (requested, decided) = (
        deliveries("approval_requested"),
        deliveries("approval_decided"),
    );
    assert!(!requested.is_empty() && !decided.is_empty(), "{flaky:?}");
    assert!(
        requested.len() + decided.len() == 4,
        "two refused attempts retried, then one success each: {flaky:?}"
    );
    // A retry is the same delivery, signed again.
    assert!(
        requested.iter().all(|d| *d == requested[0]) && decided.iter().all(|d| *d == decided[0]),
        "{flaky:?}"
    );
    assert!(flaky.iter().all(|d| signature_ok(d, WEBHOOK_SECRET)));
    // The secret never reaches the log.
    assert!(!f.agent.log().contains(WEBHOOK_SECRET));
}

#[test]
fn every_token_problem_gets_401_a_journal_record_and_never_a_decision() {
    if !require_root("approvals_remote") {
        return;
    }
    let f = Fixture::new();
    let alice = f.idp.token("alice");
    // The worker is `nobody`, which the subject `nobody-bot` is configured to be.
    let worker = f.worker(NOBODY, &["delete from orders where id = 2"]);
    let id = f.pending(&alice, 1)[0]["id"].as_str().unwrap().to_owned();
    let approve = format!("/v1/approvals/{id}/approve");

    let now = || {
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_secs() as i64
    };
    let with = |changes: Value| {
        let mut c = f.idp.claims("alice", &["secops"]);
        for (k, v) in changes.as_object().unwrap() {
            c[k] = v.clone();
        }
        c
    };
    let k1 = f.idp.signing_kid().to_owned();
    f.idp.unpublished_key("rogue").unwrap();
    // Control: a token made this way with nothing wrong is accepted.
    let sound = f.idp.forge("RS256", Some(&k1), &with(json!({})), false);
    let (code, v) = f.call("GET", "/v1/approvals", Some(&sound), None);
    assert_eq!(code, 200, "the forging itself is sound: {v}");

    let attacks: Vec<(&str, Option<String>, &str)> = vec![
        ("no token", None, "no bearer token"),
        (
            "alg none",
            Some(f.idp.forge("none", Some(&k1), &with(json!({})), false)),
            "(algorithm)",
        ),
        (
            "HS256 keyed with the RSA public key",
            Some(f.idp.forge("HS256", Some(&k1), &with(json!({})), false)),
            "(algorithm)",
        ),
        (
            "expired",
            Some(f.idp.forge(
                "RS256",
                Some(&k1),
                &with(json!({"iat": now() - 7200, "exp": now() - 3600})),
                false,
            )),
            "(expired)",
        ),
        (
            "not yet valid",
            Some(f.idp.forge(
                "RS256",
                Some(&k1),
                &with(json!({"nbf": now() + 3600})),
                false,
            )),
            "(not_yet_valid)",
        ),
        (
            "wrong audience",
            Some(f.idp.forge(
                "RS256",
                Some(&k1),
                &with(json!({"aud": "https://elsewhere.test/"})),
                false,
            )),
            "(audience)",
        ),
        (
            "wrong issuer",
            Some(f.idp.forge(
                "RS256",
                Some(&k1),
                &with(json!({"iss": "https://idp.attacker.test"})),
                false,
            )),
            "(issuer)",
        ),
        (
            "unknown kid",
            Some(f.idp.forge("RS256", Some("rogue"), &with(json!({})), false)),
            "(unknown_kid)",
        ),
        (
            "altered signature",
            Some(f.idp.forge("RS256", Some(&k1), &with(json!({})), true)),
            "(signature)",
        ),
        (
            "altered claims",
            Some({
                // A real token whose payload says another subject: the signature no
                // longer covers it.
                let t = f.idp.token("bob");
                let mut parts: Vec<String> = t.split('.').map(str::to_owned).collect();
                let b64 = base64::engine::general_purpose::URL_SAFE_NO_PAD;
                let mut claims: Value =
                    serde_json::from_slice(&b64.decode(&parts[1]).unwrap()).unwrap();
                claims["groups"] = json!(["secops"]);
                parts[1] = b64.encode(claims.to_string());
                parts.join(".")
            }),
            "(signature)",
        ),
        (
            "a valid token of a non-approver",
            Some(f.idp.token("bob")),
            "subject `bob` is in none of the API's groups",
        ),
    ];
    for (what, token, reason) in &attacks {
        let before = f.refusals().len();
        let (code, v) = f.call("POST", &approve, token.as_deref(), Some("{}"));
        assert_eq!(code, 401, "{what}: {v}");
        assert_eq!(v["result"], "error", "{what}: {v}");
        let after = f.refusals();
        assert_eq!(
            after.len(),
            before + 1,
            "{what}: one record per refusal: {after:?}"
        );
        let last = after.last().unwrap();
        assert!(
            last.contains(reason) && last.contains(&format!("POST {approve}")),
            "{what}: {last}"
        );
    }
    // None of it decided anything: still pending, the row still there, nothing decided.
    assert_eq!(f.pending(&alice, 1)[0]["id"], id.as_str());
    assert_eq!(f.orders("id = 2"), "1");
    assert!(f.agent.records("approval_decided").is_empty());

    // A valid token of the worker's own user (mapped subject) cannot approve.
    let own = f.idp.token("nobody-bot");
    let (code, v) = f.call("POST", &approve, Some(&own), None);
    assert_eq!(code, 403, "{v}");
    assert!(
        v["message"].as_str().unwrap().contains("own request"),
        "{v}"
    );
    assert!(f.agent.records("approval_decided").is_empty());

    // Denied by a real approver: 42501 for the worker, nothing ran.
    let (code, v) = f.call(
        "POST",
        &format!("/v1/approvals/{id}/deny"),
        Some(&f.idp.token("carol")),
        Some(r#"{"reason": "not on a friday"}"#),
    );
    assert_eq!((code, &v["decided"]), (200, &json!("Denied")), "{v}");
    let out = finish(worker, 30);
    let stderr = text(&out.stderr);
    assert!(
        stderr.contains(
            "ERROR:  42501: pam-agent refused the statement (rule \"deletes-need-approval\")"
        ) && stderr.contains("denied by oidc:carol")
            && stderr.contains("not on a friday"),
        "{stderr}"
    );
    assert_eq!(f.orders("id = 2"), "1");
    let decided = f.agent.records("approval_decided");
    assert_eq!(decided.len(), 1);
    assert_eq!(decided[0]["outcome"], "rejected");
    assert_eq!(decided[0]["by"], "oidc:carol (subject carol, http)");
}

#[test]
fn a_rotated_signing_key_is_picked_up_without_restarting_the_agent() {
    if !require_root("approvals_remote") {
        return;
    }
    let mut f = Fixture::new();
    let pid = f.agent.pid();
    let before = f.idp.token("alice");
    let (code, v) = f.call("GET", "/v1/approvals", Some(&before), None);
    assert_eq!(code, 200, "{v}");

    f.idp.rotate("k2").unwrap();
    let after = f.idp.token("alice");
    let kid = |t: &str| -> Value {
        let h = base64::engine::general_purpose::URL_SAFE_NO_PAD
            .decode(t.split('.').next().unwrap())
            .unwrap();
        serde_json::from_slice::<Value>(&h).unwrap()["kid"].clone()
    };
    assert_eq!((kid(&before), kid(&after)), (json!("k1"), json!("k2")));
    let (code, v) = f.call("GET", "/v1/approvals", Some(&after), None);
    assert_eq!(code, 200, "a token signed with the new key: {v}");
    // The old key is still published, so its tokens still pass.
    let (code, _) = f.call("GET", "/v1/grants", Some(&before), None);
    assert_eq!(code, 200);
    assert_eq!(f.agent.pid(), pid, "same agent process");
    assert!(f.refusals().is_empty(), "{:?}", f.refusals());
}
