//! Keeping host-name resources resolved: at start (or the start fails), then each name
//! again when its answer's TTL runs out (bounded by `[resolver]`).

use std::{
    net::{IpAddr, SocketAddr},
    sync::Arc,
};

use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use super::{AddressSet, Dns, DnsError, HostName, ResolverSettings, list};
use crate::{
    config::{Config, Listener},
    journal::{Event, Journal},
    kernel::Protected,
    proxy::Shared,
};

#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error(
        "resource `{resource}`: {source}. The agent does not start: the resource would be unprotected"
    )]
    Resolve {
        resource: String,
        #[source]
        source: DnsError,
    },
    #[error(
        "resource `{resource}`: `{host}` resolves to {addr}, the agent's own listener: connections would loop"
    )]
    Loop {
        resource: String,
        host: HostName,
        addr: SocketAddr,
    },
}

/// Each resource's addresses now (by resource id); `None` for a fixed network.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Resolved {
    pub sets: Vec<Option<AddressSet>>,
    /// When each host name is looked up again.
    due: Vec<Option<Instant>>,
}

/// Every resource's entries for the kernel's map: a fixed network as written, a host
/// name's addresses each as one host entry.
pub fn entries(cfg: &Config, resolved: &Resolved) -> Vec<Protected> {
    let mut out = Vec::new();
    for (i, r) in cfg.resources.iter().enumerate() {
        let resource_id = i as u32;
        match (
            r.address.net(),
            resolved.sets.get(i).and_then(Option::as_ref),
        ) {
            (Some(net), _) => out.push(Protected {
                net,
                port: r.port,
                resource_id,
            }),
            (None, Some(set)) => out.extend(set.iter().map(|ip| Protected {
                net: ipnet::IpNet::from(*ip),
                port: r.port,
                resource_id,
            })),
            (None, None) => {}
        }
    }
    out
}

/// The agent's own listener among `set` on `port`, if any (such an address would make
/// redirected connections loop).
fn covers_listener(set: &AddressSet, port: u16, listener: &Listener) -> Option<SocketAddr> {
    if port != listener.port {
        return None;
    }
    set.iter()
        .find(|ip| **ip == IpAddr::V4(listener.ipv4) || **ip == IpAddr::V6(listener.ipv6))
        .map(|ip| SocketAddr::new(*ip, port))
}

/// Resolves every host-name resource, or says which one does not resolve (fail closed:
/// the agent must not run with a resource it cannot protect). `dns` is needed only
/// when some resource is a host name.
pub async fn resolve_at_start(cfg: &Config, dns: Option<&Dns>) -> Result<Resolved, StartError> {
    let mut resolved = Resolved::default();
    for r in &cfg.resources {
        let (Some(host), Some(dns)) = (r.address.host(), dns) else {
            resolved.sets.push(None);
            resolved.due.push(None);
            continue;
        };
        let answer = dns
            .lookup(host)
            .await
            .map_err(|source| StartError::Resolve {
                resource: r.name.clone(),
                source,
            })?;
        if let Some(addr) = covers_listener(&answer.addresses, r.port, &cfg.listener) {
            return Err(StartError::Loop {
                resource: r.name.clone(),
                host: host.clone(),
                addr,
            });
        }
        tracing::info!(
            resource = %r.name,
            host = %host,
            addresses = %list(&answer.addresses),
            ttl_s = answer.ttl.as_secs(),
            "resolved"
        );
        resolved.sets.push(Some(answer.addresses));
        resolved
            .due
            .push(Some(Instant::now() + cfg.resolver.next_after(answer.ttl)));
    }
    Ok(resolved)
}

/// The first record of each host-name resource at start: what it resolved to.
pub async fn journal_initial(cfg: &Config, resolved: &Resolved, journal: &Journal) {
    for (i, r) in cfg.resources.iter().enumerate() {
        if let (Some(host), Some(Some(set))) = (r.address.host(), resolved.sets.get(i)) {
            record(journal, &r.name, host, set, &AddressSet::new()).await;
        }
    }
}

async fn record(
    journal: &Journal,
    resource: &str,
    host: &HostName,
    now: &AddressSet,
    before: &AddressSet,
) -> bool {
    let event = Event::ResourceResolved {
        resource: resource.to_owned(),
        host: host.to_string(),
        addresses: now.iter().copied().collect(),
        added: now.difference(before).copied().collect(),
        removed: before.difference(now).copied().collect(),
    };
    match journal.record(None, event).await {
        Ok(_) => true,
        Err(e) => {
            tracing::error!(%resource, error = %e, "cannot journal the resource's new addresses");
            false
        }
    }
}

/// The task that keeps host names resolved while the agent runs.
pub struct Refresher {
    dns: Dns,
    resolved: Resolved,
    /// Lookups of each resource that failed in a row (for backoff and one log line per
    /// streak).
    failures: Vec<u32>,
}

impl Refresher {
    /// `None` when no resource is a host name (nothing to refresh).
    pub fn new(dns: Option<Dns>, resolved: Resolved) -> Option<Refresher> {
        let dns = dns?;
        resolved.due.iter().any(Option::is_some).then(|| Refresher {
            dns,
            failures: vec![0; resolved.sets.len()],
            resolved,
        })
    }

    pub async fn run(mut self, shared: Arc<Shared>, shutdown: CancellationToken) {
        loop {
            let Some(next) = self.resolved.due.iter().flatten().min().copied() else {
                return;
            };
            tokio::select! {
                _ = shutdown.cancelled() => return,
                _ = tokio::time::sleep_until(next) => {}
            }
            // A stop does not wait for a slow name server (the pinned map keeps the set
            // last applied; the next start resolves again).
            tokio::select! {
                _ = shutdown.cancelled() => return,
                _ = self.refresh_due(&shared) => {}
            }
        }
    }

    /// Looks up every name that is due; journals and applies what changed.
    async fn refresh_due(&mut self, shared: &Shared) {
        let cfg = &shared.config;
        let settings: &ResolverSettings = &cfg.resolver;
        let mut changed = false;
        for (i, r) in cfg.resources.iter().enumerate() {
            let (Some(host), Some(due)) = (r.address.host(), self.resolved.due[i]) else {
                continue;
            };
            if due > Instant::now() {
                continue;
            }
            let looked = self.dns.lookup(host).await.and_then(|answer| {
                match covers_listener(&answer.addresses, r.port, &cfg.listener) {
                    Some(addr) => Err(DnsError::Lookup {
                        host: host.clone(),
                        reason: format!("it now names {addr}, the agent's own listener (ignored)"),
                    }),
                    None => Ok(answer),
                }
            });
            let answer = match looked {
                Ok(a) => a,
                Err(e) => {
                    self.failures[i] += 1;
                    let backoff = settings.min_interval * 2u32.pow(self.failures[i].min(10));
                    self.resolved.due[i] =
                        Some(Instant::now() + backoff.min(settings.max_interval));
                    if self.failures[i] == 1 {
                        let message = format!(
                            "resource `{}`: {e}; its last addresses stay protected ({})",
                            r.name,
                            list(self.resolved.sets[i].as_ref().unwrap_or(&AddressSet::new()))
                        );
                        tracing::warn!("{message}");
                        let event = Event::Error {
                            component: "resolver".into(),
                            message,
                        };
                        if let Err(e) = shared.journal.record(None, event).await {
                            tracing::error!(error = %e, "cannot journal a failed resolution");
                        }
                    }
                    continue;
                }
            };
            if self.failures[i] > 0 {
                tracing::info!(resource = %r.name, host = %host, "resolves again");
                self.failures[i] = 0;
            }
            let before = self.resolved.sets[i].clone().unwrap_or_default();
            if answer.addresses == before {
                self.resolved.due[i] = Some(Instant::now() + settings.next_after(answer.ttl));
                continue;
            }
            // On record before it takes effect; if it cannot be, nothing changes and the
            // name is looked up again soon.
            if !record(&shared.journal, &r.name, host, &answer.addresses, &before).await {
                self.resolved.due[i] = Some(Instant::now() + settings.min_interval);
                continue;
            }
            tracing::info!(
                resource = %r.name,
                host = %host,
                addresses = %list(&answer.addresses),
                before = %list(&before),
                "addresses changed"
            );
            self.resolved.sets[i] = Some(answer.addresses);
            self.resolved.due[i] = Some(Instant::now() + settings.next_after(answer.ttl));
            changed = true;
        }
        if changed && let Err(e) = shared.redirector.protect(&entries(cfg, &self.resolved)) {
            let message = format!("cannot update the protected resources in the kernel: {e}");
            tracing::error!("{message}");
            let event = Event::Error {
                component: "kernel".into(),
                message,
            };
            let _ = shared.journal.record(None, event).await;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn entries_cover_networks_as_written_and_each_resolved_address() {
        let cfg = Config::from_toml(
            std::path::Path::new("t.toml"),
            &crate::config::tests::base(
                "[[resources]]\nname=\"net\"\naddress=\"10.1.0.0/16\"\nport=22\n\
                 [[resources]]\nname=\"db\"\naddress=\"db.internal\"\nport=5432\n",
            ),
        )
        .unwrap();
        let resolved = Resolved {
            sets: vec![
                None,
                Some(["10.0.0.5", "fd00::5"].map(|a| a.parse().unwrap()).into()),
            ],
            due: vec![None, None],
        };
        let e = entries(&cfg, &resolved);
        let show: Vec<String> = e
            .iter()
            .map(|p| format!("{} {} #{}", p.net, p.port, p.resource_id))
            .collect();
        assert_eq!(
            show,
            [
                "10.1.0.0/16 22 #0",
                "10.0.0.5/32 5432 #1",
                "fd00::5/128 5432 #1"
            ]
        );
        let listener = &cfg.listener;
        let own: AddressSet = ["127.0.0.1".parse().unwrap()].into();
        assert_eq!(
            covers_listener(&own, listener.port, listener),
            Some(SocketAddr::new("127.0.0.1".parse().unwrap(), listener.port))
        );
        assert_eq!(covers_listener(&own, 5432, listener), None);
    }
}
