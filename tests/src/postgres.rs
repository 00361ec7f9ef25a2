//! A real PostgreSQL server on a test host: a copy of the template cluster (one `initdb`
//! per machine, made once under a lock, then copied: far cheaper than an `initdb` per
//! test) in a temporary directory, started inside the host's network namespace with the
//! test's superuser password, stopped and removed on drop.

use std::{
    path::PathBuf,
    process::Command,
    time::{Duration, Instant},
};

use anyhow::{Context, bail};

use crate::{OutputWithin, TestHost};

const BIN: &str = "/usr/lib/postgresql/15/bin";

/// `psql -c "select 'TAG'"` as user postgres from the governed cgroup `cg` to `host`:
/// (succeeded, stdout, stderr).
pub fn governed_select(
    cg: &crate::Cgroup,
    host: &str,
    password: &str,
    tag: &str,
) -> (bool, String, String) {
    let out = Command::new(crate::agent_bin())
        .args(["exec", "--cgroup"])
        .arg(&cg.path)
        .args(["--", "psql", "-h", host, "-U", "postgres", "-d", "postgres"])
        .args(["-XAtc", &format!("select '{tag}'")])
        .env("PGPASSWORD", password)
        .env("PGCONNECT_TIMEOUT", "5")
        .output_within()
        .expect("psql");
    crate::printed(&out)
}

/// A crew's statement policy, used by the end-to-end tests and the demo: drivers'
/// housekeeping and reads of `public.orders` are allowed, single-row writes to it too;
/// unbounded writes, other tables and everything else are refused.
pub const CREW_POLICY: &str = r#"
[policy]
default = "deny"

[[policy.rules]]
name = "no-unbounded-writes"
action = "deny"
if_flags = ["update_without_where", "delete_without_where"]

[[policy.rules]]
name = "drivers-housekeeping"
action = "allow"
kinds = ["transaction", "session"]

[[policy.rules]]
name = "crew-reads-orders"
action = "allow"
kinds = ["select"]
tables = ["public.orders", "pg_catalog.*", "information_schema.*"]

# pg_sleep is volatile: allowed by its resolved name, with that flag permitted (the
# tests that cancel or outlast a long statement use it). `any_functions` too: a
# statement that calls no function satisfies `functions` alone.
[[policy.rules]]
name = "crew-may-sleep"
action = "allow"
kinds = ["select"]
functions = ["pg_catalog.pg_sleep"]
any_functions = ["pg_catalog.pg_sleep"]
permit_flags = ["volatile_function"]

[[policy.rules]]
name = "crew-writes-orders"
action = "allow"
kinds = ["insert", "update", "delete"]
tables = ["public.orders"]
"#;

pub struct PgServer {
    dir: tempfile::TempDir,
    ns: String,
    pub port: u16,
    /// Password of the `postgres` superuser (SCRAM-SHA-256).
    pub password: String,
    /// Addresses it listens on (the test host's).
    pub hosts: Vec<String>,
    /// With `ssl = on`: the CA (PEM) that signed the server's certificate.
    pub server_ca: Option<PathBuf>,
}

/// Server certificate names when started with TLS: the test host's addresses and this.
pub const SERVER_DNS_NAME: &str = "db.pam.test";

/// The template cluster's superuser password, replaced by each server's own at start.
const TEMPLATE_PASSWORD: &str = "pam-e2e-template";

/// The template cluster's data directory, made by the first test that needs it (under a
/// lock, so parallel runs make it once) and kept: every [`PgServer`] starts from a copy.
fn template(uid: u32, gid: u32) -> anyhow::Result<PathBuf> {
    use std::os::unix::io::AsRawFd;
    let root = std::env::temp_dir().join("pam-pg-template-15");
    let data = root.join("data");
    std::fs::create_dir_all(&root)?;
    let lock = std::fs::File::create(root.with_extension("lock"))?;
    // SAFETY: flock on a descriptor this function owns; released when `lock` drops.
    if unsafe { libc::flock(lock.as_raw_fd(), libc::LOCK_EX) } != 0 {
        bail!(
            "locking the template cluster: {}",
            std::io::Error::last_os_error()
        );
    }
    if data.join("PG_VERSION").exists() {
        return Ok(data);
    }
    let work = root.join(format!("making-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&work);
    std::fs::create_dir(&work)?;
    std::os::unix::fs::chown(&work, Some(uid), Some(gid))?;
    let pwfile = work.join("pw");
    std::fs::write(&pwfile, TEMPLATE_PASSWORD)?;
    std::os::unix::fs::chown(&pwfile, Some(uid), Some(gid))?;
    let out = Command::new("runuser")
        .args(["-u", "postgres", "--"])
        .arg(format!("{BIN}/initdb"))
        .arg("-D")
        .arg(work.join("data"))
        .args(["--auth=scram-sha-256", "-U", "postgres", "--no-sync"])
        .arg(format!("--pwfile={}", pwfile.display()))
        .output_within()
        .context("initdb")?;
    if !out.status.success() {
        bail!("initdb failed: {}", String::from_utf8_lossy(&out.stderr));
    }
    // Clients on the host reach it over the veth pair.
    let hba = work.join("data/pg_hba.conf");
    let mut text = std::fs::read_to_string(&hba)?;
    text.push_str("host all all 0.0.0.0/0 scram-sha-256\nhost all all ::/0 scram-sha-256\n");
    std::fs::write(&hba, text)?;
    std::fs::rename(work.join("data"), &data)?;
    let _ = std::fs::remove_dir_all(&work);
    Ok(data)
}

fn postgres_uid() -> anyhow::Result<(u32, u32)> {
    let uid = Command::new("id")
        .args(["-u", "postgres"])
        .output_within()?;
    let gid = Command::new("id")
        .args(["-g", "postgres"])
        .output_within()?;
    if !uid.status.success() {
        bail!("no `postgres` user: install Debian's postgresql package (cargo xtask setup)");
    }
    Ok((
        String::from_utf8_lossy(&uid.stdout).trim().parse()?,
        String::from_utf8_lossy(&gid.stdout).trim().parse()?,
    ))
}

impl PgServer {
    pub fn start(host: &TestHost, port: u16, password: &str) -> anyhow::Result<PgServer> {
        Self::start_opts(host, port, password, false)
    }

    /// Like [`PgServer::start`] with `ssl = on`: a certificate for the host's addresses
    /// and [`SERVER_DNS_NAME`], signed by a CA made for this server ([`PgServer::server_ca`]).
    pub fn start_tls(host: &TestHost, port: u16, password: &str) -> anyhow::Result<PgServer> {
        Self::start_opts(host, port, password, true)
    }

    fn start_opts(
        host: &TestHost,
        port: u16,
        password: &str,
        ssl: bool,
    ) -> anyhow::Result<PgServer> {
        let (uid, gid) = postgres_uid()?;
        let dir = tempfile::Builder::new().prefix("pam-pg").tempdir()?;
        std::os::unix::fs::chown(dir.path(), Some(uid), Some(gid))?;
        let data = dir.path().join("data");
        let out = Command::new("cp")
            .arg("-a")
            .arg(template(uid, gid)?)
            .arg(&data)
            .output_within()
            .context("copying the template cluster")?;
        if !out.status.success() {
            bail!(
                "copying the template cluster: {}",
                String::from_utf8_lossy(&out.stderr)
            );
        }

        let hosts = vec![host.v4.to_string(), host.v6.to_string()];
        let mut opts = format!(
            "-p {port} -k {} -c listen_addresses='{}' -c fsync=off -c max_connections=200",
            dir.path().display(),
            hosts.join(",")
        );
        let server_ca = if ssl {
            let tls = dir.path().join("tls");
            std::fs::create_dir(&tls)?;
            make_server_cert(&tls, host)?;
            for f in ["server.pem", "server.key"] {
                std::os::unix::fs::chown(tls.join(f), Some(uid), Some(gid))?;
            }
            opts.push_str(&format!(
                " -c ssl=on -c ssl_cert_file={} -c ssl_key_file={}",
                tls.join("server.pem").display(),
                tls.join("server.key").display()
            ));
            Some(tls.join("ca.pem"))
        } else {
            None
        };
        let out = host
            .command("runuser")
            .args(["-u", "postgres", "--"])
            .arg(format!("{BIN}/pg_ctl"))
            .arg("-D")
            .arg(&data)
            .arg("-o")
            .arg(&opts)
            .arg("-l")
            .arg(dir.path().join("server.log"))
            .args(["-w", "start"])
            .output_within()
            .context("pg_ctl start")?;
        if !out.status.success() {
            bail!(
                "pg_ctl start failed: {}{}",
                String::from_utf8_lossy(&out.stderr),
                std::fs::read_to_string(dir.path().join("server.log")).unwrap_or_default()
            );
        }
        if let Some(pid) = std::fs::read_to_string(data.join("postmaster.pid"))
            .ok()
            .and_then(|t| t.lines().next()?.trim().parse().ok())
        {
            crate::run_id::note_pid(host.id, pid);
        }
        let mut server = PgServer {
            dir,
            ns: host.ns.clone(),
            port,
            password: TEMPLATE_PASSWORD.into(),
            hosts,
            server_ca,
        };
        server.wait_ready()?;
        server.admin_sql(
            "postgres",
            &format!(
                "ALTER USER postgres PASSWORD '{}'",
                password.replace('\'', "''")
            ),
        )?;
        server.password = password.into();
        Ok(server)
    }

    fn wait_ready(&self) -> anyhow::Result<()> {
        let deadline = Instant::now() + Duration::from_secs(20);
        while let Err(e) = self.admin_sql("postgres", "select 1") {
            if Instant::now() > deadline {
                bail!("PostgreSQL did not accept connections within 20 s: {e}");
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        Ok(())
    }

    /// Runs SQL as the superuser over the local socket (not through any agent).
    /// The server's log (`server.log`, written by pg_ctl).
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("server.log")).unwrap_or_default()
    }

    /// Logs every connection and statement to [`PgServer::log`] (for tests that show
    /// nothing reached the server), in effect when this returns.
    pub fn log_every_statement(&self) {
        for sql in [
            "alter system set log_connections = on",
            "alter system set log_statement = 'all'",
            "select pg_reload_conf()",
        ] {
            self.admin_sql("postgres", sql).expect(sql);
        }
        crate::wait_for("log_statement = all", Duration::from_secs(10), || {
            (self
                .admin_sql("postgres", "show log_statement")
                .ok()?
                .trim()
                == "all")
                .then_some(())
        });
    }

    pub fn admin_sql(&self, db: &str, sql: &str) -> anyhow::Result<String> {
        let out = Command::new("ip")
            .args([
                "netns", "exec", &self.ns, "runuser", "-u", "postgres", "--", "psql",
            ])
            .arg("-h")
            .arg(self.dir.path())
            .args([
                "-p",
                &self.port.to_string(),
                "-d",
                db,
                "-XAtq",
                "-v",
                "ON_ERROR_STOP=1",
                "-c",
                sql,
            ])
            .env("PGPASSWORD", &self.password)
            .output_within()?;
        if !out.status.success() {
            bail!("psql: {}", String::from_utf8_lossy(&out.stderr));
        }
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    }

    pub fn log_path(&self) -> PathBuf {
        self.dir.path().join("server.log")
    }
}

/// A CA and a server certificate signed by it (openssl), in `dir`: ca.pem, server.pem,
/// server.key (0600, as PostgreSQL demands).
fn make_server_cert(dir: &std::path::Path, host: &TestHost) -> anyhow::Result<()> {
    let openssl = |args: &[&str]| -> anyhow::Result<()> {
        let out = Command::new("openssl")
            .args(args)
            .current_dir(dir)
            .output_within()
            .context("openssl")?;
        if !out.status.success() {
            bail!("openssl {args:?}: {}", String::from_utf8_lossy(&out.stderr));
        }
        Ok(())
    };
    let ec = [
        "-newkey",
        "ec",
        "-pkeyopt",
        "ec_paramgen_curve:prime256v1",
        "-nodes",
    ];
    let mut ca = vec!["req", "-x509"];
    ca.extend(ec);
    ca.extend([
        "-keyout",
        "ca.key",
        "-out",
        "ca.pem",
        "-days",
        "2",
        "-subj",
        "/CN=pam-e2e server CA",
    ]);
    openssl(&ca)?;
    let mut csr = vec!["req"];
    csr.extend(ec);
    csr.extend([
        "-keyout",
        "server.key",
        "-out",
        "server.csr",
        "-subj",
        "/CN=pam-e2e db",
    ]);
    openssl(&csr)?;
    std::fs::write(
        dir.join("ext.cnf"),
        format!(
            "subjectAltName=IP:{},IP:{},DNS:{SERVER_DNS_NAME}\nextendedKeyUsage=serverAuth\nbasicConstraints=CA:FALSE\nkeyUsage=critical,digitalSignature\n",
            host.v4, host.v6
        ),
    )?;
    openssl(&[
        "x509",
        "-req",
        "-in",
        "server.csr",
        "-CA",
        "ca.pem",
        "-CAkey",
        "ca.key",
        "-CAcreateserial",
        "-days",
        "2",
        "-out",
        "server.pem",
        "-extfile",
        "ext.cnf",
    ])?;
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(
        dir.join("server.key"),
        std::fs::Permissions::from_mode(0o600),
    )?;
    Ok(())
}

impl Drop for PgServer {
    fn drop(&mut self) {
        let _ = Command::new("ip")
            .args(["netns", "exec", &self.ns, "runuser", "-u", "postgres", "--"])
            .arg(format!("{BIN}/pg_ctl"))
            .arg("-D")
            .arg(self.dir.path().join("data"))
            .args(["-m", "immediate", "-w", "stop"])
            .output();
    }
}
