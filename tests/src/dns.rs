//! A real DNS server on a test host: Debian's dnsmasq inside the host's network
//! namespace, answering A and AAAA for the names in a hosts file the test rewrites
//! (SIGHUP makes dnsmasq read it again), with a TTL of one second.

use std::{
    net::{IpAddr, SocketAddr},
    path::PathBuf,
    process::{Child, Command, Stdio},
    time::Duration,
};

use anyhow::Context;

use crate::{OutputWithin, TestHost, wait_for};

pub struct DnsServer {
    child: Child,
    hosts: PathBuf,
    _dir: tempfile::TempDir,
    /// Where it answers (the test host's IPv4 address, port 53).
    pub addr: SocketAddr,
}

impl DnsServer {
    /// Starts dnsmasq on `host` answering `records` (name, address) and nothing else.
    pub fn start(host: &TestHost, records: &[(&str, IpAddr)]) -> anyhow::Result<DnsServer> {
        let dir = tempfile::Builder::new().prefix("pam-dns").tempdir()?;
        let hosts = dir.path().join("hosts");
        write_hosts(&hosts, records)?;
        let addr = SocketAddr::new(IpAddr::V4(host.v4), 53);
        let child = host
            .command("dnsmasq")
            .args([
                "--keep-in-foreground",
                "--no-resolv",
                "--no-hosts",
                "--bind-interfaces",
                "--user=root",
                "--pid-file",
                "--local-ttl=1",
                "--port=53",
            ])
            .arg(format!("--listen-address={}", host.v4))
            .arg(format!("--addn-hosts={}", hosts.display()))
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .context("starting dnsmasq (cargo xtask setup installs dnsmasq-base)")?;
        let ns = host.ns.clone();
        wait_for(
            "dnsmasq listening on port 53",
            Duration::from_secs(10),
            || {
                let out = Command::new("ip")
                    .args(["netns", "exec", &ns, "ss", "-Hlun", "sport = :53"])
                    .output_within()
                    .ok()?;
                (!out.stdout.is_empty()).then_some(())
            },
        );
        Ok(DnsServer {
            child,
            hosts,
            _dir: dir,
            addr,
        })
    }

    /// Answers `records` from now on (the file is rewritten, then dnsmasq told).
    pub fn set(&self, records: &[(&str, IpAddr)]) -> anyhow::Result<()> {
        write_hosts(&self.hosts, records)?;
        // SAFETY: signalling our own child process by pid.
        unsafe { libc::kill(self.child.id() as i32, libc::SIGHUP) };
        Ok(())
    }

    /// Stops answering altogether (the server is gone).
    pub fn stop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn write_hosts(path: &std::path::Path, records: &[(&str, IpAddr)]) -> anyhow::Result<()> {
    let text: String = records
        .iter()
        .map(|(name, ip)| format!("{ip} {name}\n"))
        .collect();
    std::fs::write(path, text).context("writing the DNS server's hosts file")
}

impl Drop for DnsServer {
    fn drop(&mut self) {
        self.stop();
    }
}
