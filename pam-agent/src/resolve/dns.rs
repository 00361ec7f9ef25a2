//! Looking a host name up: A and AAAA together, with how long the answer holds (its TTL),
//! from the configured name servers or the system's (hickory-resolver).

use std::time::{Duration, Instant};

use hickory_resolver::{
    TokioResolver,
    config::{LookupIpStrategy, NameServerConfig, ResolverConfig},
    net::runtime::TokioRuntimeProvider,
};

use super::{AddressSet, HostName, ResolverSettings};

#[derive(Debug, thiserror::Error)]
pub enum DnsError {
    #[error("cannot read the system's resolver configuration (/etc/resolv.conf): {0}")]
    System(String),
    #[error("`{host}` does not resolve: {reason}")]
    Lookup { host: HostName, reason: String },
    #[error("`{host}` resolves to no IPv4 or IPv6 address ({reason})")]
    NoAddresses { host: HostName, reason: String },
}

/// One answer: every address, and how long it may be believed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Answer {
    pub addresses: AddressSet,
    pub ttl: Duration,
}

/// A resolver; needs a tokio runtime.
pub struct Dns {
    resolver: TokioResolver,
}

impl Dns {
    pub fn new(settings: &ResolverSettings) -> Result<Dns, DnsError> {
        let mut builder = if settings.nameservers.is_empty() {
            TokioResolver::builder_tokio().map_err(|e| DnsError::System(e.to_string()))?
        } else {
            let servers = settings
                .nameservers
                .iter()
                .map(|addr| {
                    let mut ns = NameServerConfig::udp_and_tcp(addr.ip());
                    for c in &mut ns.connections {
                        c.port = addr.port();
                    }
                    ns
                })
                .collect();
            TokioResolver::builder_with_config(
                ResolverConfig::from_name_servers(servers),
                TokioRuntimeProvider::default(),
            )
        };
        let options = builder.options_mut();
        options.ip_strategy = LookupIpStrategy::Ipv4AndIpv6;
        options.timeout = settings.timeout;
        options.attempts = 2;
        // Every refresh asks the server: the TTL we schedule by is the server's own.
        options.cache_size = 0;
        let resolver = builder
            .build()
            .map_err(|e| DnsError::System(e.to_string()))?;
        Ok(Dns { resolver })
    }

    /// Every A and AAAA address of `host` (IPv4 in IPv4 form).
    pub async fn lookup(&self, host: &HostName) -> Result<Answer, DnsError> {
        let answer = self.resolver.lookup_ip(host.as_str()).await.map_err(|e| {
            if e.is_no_records_found() {
                DnsError::NoAddresses {
                    host: host.clone(),
                    reason: e.to_string(),
                }
            } else {
                DnsError::Lookup {
                    host: host.clone(),
                    reason: e.to_string(),
                }
            }
        })?;
        let addresses: AddressSet = answer.iter().map(|ip| ip.to_canonical()).collect();
        if addresses.is_empty() {
            return Err(DnsError::NoAddresses {
                host: host.clone(),
                reason: "empty answer".into(),
            });
        }
        // The shortest TTL the server gave (what a cache in between has left of it
        // when answers came from one: hosts-file answers have none and count as long).
        let ttl = answer
            .as_lookup()
            .answers()
            .iter()
            .map(|r| Duration::from_secs(u64::from(r.ttl)))
            .min()
            .unwrap_or_else(|| {
                answer
                    .valid_until()
                    .saturating_duration_since(Instant::now())
            });
        Ok(Answer { addresses, ttl })
    }
}
