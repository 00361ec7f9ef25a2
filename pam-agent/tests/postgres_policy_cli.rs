//! `pam-agent policy explain`: what an operator sees for a principal, a resource and
//! a SQL text.

use std::process::Command;

#[path = "common/deadline.rs"]
mod deadline;

use deadline::Deadline;

mod tempdir {
    pub struct Dir(pub std::path::PathBuf);
    impl Dir {
        pub fn new() -> Dir {
            let d = std::env::temp_dir().join(format!("pam-explain-{}", uuid::Uuid::now_v7()));
            std::fs::create_dir_all(&d).unwrap();
            Dir(d)
        }
    }
    impl Drop for Dir {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }
}

const CONFIG: &str = r#"
[listener]
port = 15432
[journal]
path = "JOURNAL"
[govern]
cgroups = ["/"]
[[resources]]
name = "orders-db"
address = "10.1.0.5"
port = 5432
protocol = "postgres"

[[policy.rules]]
name = "no-unbounded-writes"
action = "deny"
if_flags = ["update_without_where", "delete_without_where"]

[[policy.rules]]
name = "crew-reads"
action = "allow"
resources = ["orders-db"]
users = ["crew"]
kinds = ["select"]
tables = ["public.*"]
"#;

fn explain(principal: &str, sql: &str) -> (i32, String) {
    let dir = tempdir::Dir::new();
    let path = dir.0.join("config.toml");
    std::fs::write(
        &path,
        CONFIG.replace("JOURNAL", &dir.0.join("j.jsonl").display().to_string()),
    )
    .unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_pam-agent"))
        .args(["policy", "explain", "--config"])
        .arg(&path)
        .args(["--principal", principal, "--resource", "orders-db", sql])
        .output_within()
        .unwrap();
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.code().unwrap_or(-1), text)
}

#[test]
fn explains_an_allowed_statement() {
    let (code, text) = explain("user=crew,uid=1001", "SELECT id FROM orders WHERE id = 1");
    assert_eq!(code, 0, "{text}");
    assert!(text.contains("kinds:     select"), "{text}");
    assert!(text.contains("tables:    public.orders"), "{text}");
    assert!(
        text.contains("rule \"no-unbounded-writes\" (deny): no match"),
        "{text}"
    );
    assert!(
        text.contains("rule \"crew-reads\" (allow): MATCH"),
        "{text}"
    );
    assert!(
        text.contains("decision: allow (rule: crew-reads)"),
        "{text}"
    );
}

#[test]
fn explains_refusals() {
    let (code, text) = explain("user=crew", "DELETE FROM orders");
    assert_eq!(code, 2, "{text}");
    assert!(text.contains("flags:     delete_without_where"), "{text}");
    assert!(
        text.contains("decision: deny (rule: no-unbounded-writes)"),
        "{text}"
    );

    let (code, text) = explain("user=bob", "SELECT 1 FROM orders");
    assert_eq!(code, 2);
    assert!(text.contains("user \"bob\" not listed"), "{text}");
    assert!(text.contains("decision: deny (rule: default)"), "{text}");

    let (code, text) = explain("user=crew", "SELECT pg_read_file('/etc/passwd')");
    assert_eq!(code, 2);
    assert!(
        text.contains("flag side_effect_function not in permit_flags"),
        "{text}"
    );

    let (code, text) = explain("user=crew", "SELEC 1");
    assert_eq!(code, 2);
    assert!(
        text.contains("decision: deny (rule: unclassifiable)"),
        "{text}"
    );
}
