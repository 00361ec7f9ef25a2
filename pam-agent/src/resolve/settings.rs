//! `[resolver]`: where host-name resources are looked up, and how often again.

use std::{
    net::{IpAddr, SocketAddr},
    time::Duration,
};

use serde::Deserialize;

/// The section as written (all optional).
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawResolver {
    /// Name servers (`10.0.0.53`, `[fd00::53]:5353`); the system's (/etc/resolv.conf
    /// and /etc/hosts) when empty.
    #[serde(default)]
    pub nameservers: Vec<String>,
    /// Re-resolve when the answer's TTL runs out, and at the latest after this long.
    #[serde(default = "default_interval_s")]
    pub interval_s: u64,
    /// Never re-resolve more often than this (a TTL of 0 would otherwise spin).
    #[serde(default = "default_min_interval_ms")]
    pub min_interval_ms: u64,
    /// Longest wait for one answer.
    #[serde(default = "default_timeout_ms")]
    pub timeout_ms: u64,
}

impl Default for RawResolver {
    fn default() -> Self {
        RawResolver {
            nameservers: Vec::new(),
            interval_s: default_interval_s(),
            min_interval_ms: default_min_interval_ms(),
            timeout_ms: default_timeout_ms(),
        }
    }
}

fn default_interval_s() -> u64 {
    60
}
fn default_min_interval_ms() -> u64 {
    1000
}
fn default_timeout_ms() -> u64 {
    2000
}

/// The validated section.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ResolverSettings {
    /// Empty: the system's configuration.
    pub nameservers: Vec<SocketAddr>,
    pub max_interval: Duration,
    pub min_interval: Duration,
    pub timeout: Duration,
}

impl RawResolver {
    /// Checks the section; the field named is relative to the config file.
    pub(crate) fn validate(self) -> Result<ResolverSettings, (String, String)> {
        let mut nameservers = Vec::new();
        for (i, text) in self.nameservers.iter().enumerate() {
            let addr = text
                .parse::<SocketAddr>()
                .or_else(|_| text.parse::<IpAddr>().map(|ip| SocketAddr::new(ip, 53)))
                .map_err(|_| {
                    (
                        format!("resolver.nameservers[{i}]"),
                        format!("`{text}` is not an address or address:port"),
                    )
                })?;
            nameservers.push(addr);
        }
        if self.min_interval_ms == 0 {
            return Err((
                "resolver.min_interval_ms".into(),
                "must be greater than 0".into(),
            ));
        }
        if self.interval_s == 0 || self.interval_s * 1000 < self.min_interval_ms {
            return Err((
                "resolver.interval_s".into(),
                "must be at least resolver.min_interval_ms".into(),
            ));
        }
        if self.timeout_ms == 0 {
            return Err((
                "resolver.timeout_ms".into(),
                "must be greater than 0".into(),
            ));
        }
        Ok(ResolverSettings {
            nameservers,
            max_interval: Duration::from_secs(self.interval_s),
            min_interval: Duration::from_millis(self.min_interval_ms),
            timeout: Duration::from_millis(self.timeout_ms),
        })
    }
}

impl Default for ResolverSettings {
    fn default() -> Self {
        RawResolver::default()
            .validate()
            .expect("the defaults are valid")
    }
}

impl ResolverSettings {
    /// When to look a name up again, given how long its answer is valid.
    pub fn next_after(&self, ttl: Duration) -> Duration {
        ttl.clamp(self.min_interval, self.max_interval)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_nameservers_and_bounds() {
        let d = ResolverSettings::default();
        assert!(d.nameservers.is_empty());
        assert_eq!(d.next_after(Duration::ZERO), Duration::from_secs(1));
        assert_eq!(
            d.next_after(Duration::from_secs(30)),
            Duration::from_secs(30)
        );
        assert_eq!(
            d.next_after(Duration::from_secs(86_400)),
            Duration::from_secs(60)
        );
        let raw = RawResolver {
            nameservers: vec!["10.0.0.53".into(), "[fd00::53]:5353".into()],
            ..Default::default()
        };
        assert_eq!(
            raw.validate().unwrap().nameservers,
            [
                "10.0.0.53:53".parse::<SocketAddr>().unwrap(),
                "[fd00::53]:5353".parse().unwrap()
            ]
        );
        let raw = RawResolver {
            nameservers: vec!["ns.example".into()],
            ..Default::default()
        };
        assert_eq!(raw.validate().unwrap_err().0, "resolver.nameservers[0]");
        let raw = RawResolver {
            interval_s: 1,
            min_interval_ms: 5000,
            ..Default::default()
        };
        assert_eq!(raw.validate().unwrap_err().0, "resolver.interval_s");
    }
}
