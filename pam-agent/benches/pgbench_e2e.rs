//! End-to-end throughput: pgbench against PostgreSQL 15 directly and through the
//! postgres session (release build), same server, same scale. Prints a table for
//! docs/benchmarks-postgres.md. Run: `cargo bench -p pam-agent --bench pgbench_e2e`.

#[path = "../tests/postgres_support/mod.rs"]
mod support;

use std::process::Command;

use support::*;

fn pgbench(port: u16, args: &[&str]) -> String {
    let out = Command::new("pgbench")
        .env("PGPASSWORD", PASSWORD)
        .env("PGSSLMODE", "disable")
        .args(["-h", "127.0.0.1", "-U", "postgres", "-p"])
        .arg(port.to_string())
        .args(args)
        .arg("postgres")
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{text}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    text.into_owned()
}

fn tps(port: u16, args: &[&str]) -> f64 {
    let text = pgbench(port, args);
    text.lines()
        .find_map(|l| l.strip_prefix("tps = "))
        .and_then(|l| l.split_whitespace().next())
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("no tps line in:\n{text}"))
}

fn main() {
    // `cargo bench` passes --bench; `cargo test --benches` passes nothing: run only
    // when benchmarking.
    if !std::env::args().any(|a| a == "--bench") {
        return;
    }
    let pg = PgServer::start();
    let policy = r#"
[[rules]]
name = "bench"
action = "allow"
kinds = ["select", "insert", "update", "delete", "transaction", "copy_in", "ddl", "maintenance", "session"]
tables = ["public.pgbench_*", "pg_catalog.*"]
"#;
    let proxy = Proxy::start(&pg, policy);
    pgbench(proxy.port, &["-i", "-s", "1", "-q"]);
    println!("| workload | mode | direct tps | via pam-agent tps | ratio |");
    println!("|---|---|---|---|---|");
    for (name, script) in [("select-only (-S)", "-S"), ("tpcb-like", "-N")] {
        for mode in ["simple", "prepared"] {
            let args = ["-n", script, "-M", mode, "-c", "4", "-j", "2", "-T", "5"];
            let direct = tps(pg.port, &args);
            let proxied = tps(proxy.port, &args);
            println!(
                "| {name} | {mode} | {direct:.0} | {proxied:.0} | {:.2} |",
                proxied / direct
            );
        }
    }
}
