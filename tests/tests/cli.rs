//! The operator's commands on bad input: `pam-agent check` and `run` refuse a bad
//! config before attaching anything, naming the field at fault.

use std::process::Command;

use pam_e2e::{OutputWithin, agent_bin};

fn check(config: &str) -> (bool, String) {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("config.toml");
    std::fs::write(&path, config).unwrap();
    let out = Command::new(agent_bin())
        .args(["check", "--config"])
        .arg(&path)
        .output_within()
        .unwrap();
    let text =
        String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr);
    (out.status.success(), text)
}

fn config(resource: &str, cgroup: &str) -> String {
    format!(
        "[listener]\nport = 15432\n[journal]\npath = \"/tmp/pam-cli-test.db\"\n[govern]\ncgroups = [\"{cgroup}\"]\n{resource}"
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
            config(&GOOD_RESOURCE.replace("10.0.0.0/24", "not_an_ip"), "/"),
            "resources[0].address",
        ),
        (
            config(&GOOD_RESOURCE.replace("10.0.0.0/24", "10.0.0.300"), "/"),
            "not an address, CIDR (e.g. 10.0.0.0/24) or host name",
        ),
        // A host name that does not resolve: `run` would not start, so `check` fails
        // (the name server asked is a closed loopback port: nothing leaves the host).
        (
            config(
                &format!(
                    "{}[resolver]\nnameservers = [\"127.0.0.1:9\"]\ntimeout_ms = 300\n",
                    GOOD_RESOURCE.replace("10.0.0.0/24", "db.pamtest.invalid")
                ),
                "/",
            ),
            "a host-name resource does not resolve: the agent would not start",
        ),
        (
            config(&GOOD_RESOURCE.replace("5432", "0"), "/"),
            "`resources[0].port`: must be between 1 and 65535",
        ),
        // Out of u16 range: the parser names the place (line 10 is the resource's port).
        (
            config(&GOOD_RESOURCE.replace("5432", "99999"), "/"),
            "line 10, column 8",
        ),
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
        assert!(!out.contains("panicked"), "{out}");
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
        .output_within()
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
        .output_within()
        .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("--cgroup"));
}

/// The shipped default config parses and validates (its governed slice swapped for one
/// that exists on a test machine).
#[test]
fn the_shipped_default_config_is_valid() {
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .unwrap();
    let text = std::fs::read_to_string(root.join("deploy/config.toml")).unwrap();
    assert!(text.contains("cgroups = [\"pam-workers.slice\"]"));
    let (ok, out) = check(&text.replace("cgroups = [\"pam-workers.slice\"]", "cgroups = [\"/\"]"));
    assert!(ok, "{out}");
    assert!(out.contains("protects: orders-db"), "{out}");
    assert!(out.contains("worker TLS: off"), "{out}");

    // The commented TLS example is valid once uncommented.
    let tls: String = text
        .lines()
        .map(|l| {
            let keys = [
                "[worker_tls]",
                "ca_cert",
                "ca_key",
                "leaf_validity_hours",
                "tls_names",
            ];
            match l.strip_prefix("# ") {
                Some(rest) if keys.iter().any(|k| rest.starts_with(k)) => rest,
                _ => l,
            }
        })
        .collect::<Vec<_>>()
        .join("\n");
    let (ok, out) = check(&tls.replace("cgroups = [\"pam-workers.slice\"]", "cgroups = [\"/\"]"));
    assert!(ok, "{out}");
    assert!(
        out.contains("worker TLS: agent CA /var/lib/pam-agent/ca.pem"),
        "{out}"
    );
}

/// The shipped example policy is read-only in fact, not only in statement kind: what a
/// worker could use to write through a SELECT (a sequence, a user function, a shadowing
/// function, a search path change) is refused, while the reads it is for are allowed.
#[test]
fn the_shipped_policy_refuses_writes_hidden_in_a_select() {
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .unwrap();
    let text = std::fs::read_to_string(root.join("deploy/config.toml")).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("config.toml");
    std::fs::write(
        &path,
        text.replace("cgroups = [\"pam-workers.slice\"]", "cgroups = [\"/\"]"),
    )
    .unwrap();
    let decision = |sql: &str| {
        let out = Command::new(agent_bin())
            .args(["policy", "explain", "--config"])
            .arg(&path)
            .args(["--principal", "user=crew", "--resource", "orders-db", sql])
            .output_within()
            .unwrap();
        let text = String::from_utf8_lossy(&out.stdout).into_owned();
        let decision = text
            .lines()
            .find_map(|l| l.strip_prefix("decision: "))
            .unwrap_or_else(|| panic!("{sql}: no decision line in {text}"))
            .to_owned();
        // `policy explain` exits 0 for allow and 2 for deny, so scripts can use it.
        (out.status.code(), decision)
    };
    for sql in [
        "SELECT * FROM public.orders",
        "SELECT count(*), max(total), lower(status) FROM public.orders",
        "SELECT extract(year from now()), trim(status) FROM public.orders",
    ] {
        assert_eq!(
            decision(sql),
            (Some(0), "allow (rule: crew-reads-orders)".to_owned()),
            "{sql}"
        );
    }
    for sql in [
        "SELECT nextval('orders_id_seq')",
        "SELECT pg_catalog.setval('orders_id_seq', 1)",
        "SELECT archive_orders()",
        "SELECT public.upper(status) FROM public.orders",
        "SELECT lo_import('/etc/passwd')",
        "SET search_path = public, pg_catalog",
        "SELECT set_config('search_path', 'public, pg_catalog', false)",
        "SELECT * FROM public.customers",
    ] {
        assert_eq!(
            decision(sql),
            (Some(2), "deny (rule: default)".to_owned()),
            "{sql}"
        );
    }
}

/// `pam-agent ca` makes the CA once, shows it, and says when TLS is not configured.
#[test]
fn ca_init_and_show() {
    let dir = tempfile::tempdir().unwrap();
    let ca = dir.path().join("tls/ca.pem");
    let text = config(GOOD_RESOURCE, "/")
        + &format!(
            "[worker_tls]\nca_cert = \"{}\"\nca_key = \"{}\"\n",
            ca.display(),
            dir.path().join("tls/ca.key").display()
        );
    let path = dir.path().join("config.toml");
    std::fs::write(&path, text).unwrap();
    let ca_cmd = |verb: &str, config: &std::path::Path| {
        let out = Command::new(agent_bin())
            .args(["ca", verb, "--config"])
            .arg(config)
            .output_within()
            .unwrap();
        (
            out.status.success(),
            String::from_utf8_lossy(&out.stdout).into_owned()
                + &String::from_utf8_lossy(&out.stderr),
        )
    };
    let (ok, out) = ca_cmd("show", &path);
    assert!(!ok && out.contains("ca init"), "{out}");
    let (ok, out) = ca_cmd("init", &path);
    assert!(ok && out.contains("created"), "{out}");
    let (ok, out) = ca_cmd("show", &path);
    assert!(ok, "{out}");
    assert_eq!(out, std::fs::read_to_string(&ca).unwrap());
    assert!(out.starts_with("-----BEGIN CERTIFICATE-----"));
    let (ok, again) = ca_cmd("init", &path);
    assert!(ok && again.contains("kept the existing"), "{again}");

    let plain = dir.path().join("plain.toml");
    std::fs::write(&plain, config(GOOD_RESOURCE, "/")).unwrap();
    let (ok, out) = ca_cmd("init", &plain);
    assert!(!ok && out.contains("no [worker_tls] section"), "{out}");
}

/// systemd accepts the shipped unit (with ExecStart pointing at the built binary).
#[test]
fn the_systemd_unit_verifies() {
    let have = Command::new("systemd-analyze")
        .arg("--version")
        .output_within()
        .is_ok();
    if !have {
        assert!(
            std::env::var("CI").as_deref() != Ok("true"),
            "systemd-analyze missing in CI"
        );
        pam_e2e::report_skip("cli", "no systemd-analyze");
        return;
    }
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .unwrap();
    let unit = std::fs::read_to_string(root.join("deploy/pam-agent.service")).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("pam-agent.service");
    std::fs::write(
        &path,
        unit.replace(
            "/usr/local/bin/pam-agent",
            &agent_bin().display().to_string(),
        ),
    )
    .unwrap();
    std::fs::copy(
        root.join("deploy/pam-workers.slice"),
        dir.path().join("pam-workers.slice"),
    )
    .unwrap();
    let out = Command::new("systemd-analyze")
        .arg("verify")
        .arg(&path)
        .output_within()
        .unwrap();
    let text =
        String::from_utf8_lossy(&out.stderr).into_owned() + &String::from_utf8_lossy(&out.stdout);
    let problems: Vec<&str> = text
        .lines()
        .filter(|l| l.contains("pam-agent.service") || l.contains("pam-workers.slice"))
        .collect();
    assert!(out.status.success() && problems.is_empty(), "{text}");
}
