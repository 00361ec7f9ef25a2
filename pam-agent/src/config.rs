//! The agent's configuration: TOML on disk, checked in full before anything is attached.
//!
//! Parsing happens in two steps: serde reads the file into [`RawConfig`] (unknown keys are
//! refused), then [`Config::validate`] turns it into typed values and reports the first
//! problem with the dotted path of the field that has it (`resources[1].address`).

use std::{
    collections::HashSet,
    net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr},
    path::{Path, PathBuf},
    time::Duration,
};

use serde::Deserialize;

/// Each resource names its protocol; the protocols own the enum (one arm each) and their
/// keys of `[[resources]]`.
pub use crate::protocols::config::Protocol;
use crate::{
    kernel::cgroup,
    protocols::config::{self as protocol_config, RawResourceSettings, ResourceSettings},
};

pub const DEFAULT_CONFIG_PATH: &str = "/etc/pam-agent/config.toml";
pub const DEFAULT_PIN_DIR: &str = "/sys/fs/bpf/pam-agent";

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read config {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("config {path}: {message}")]
    Parse { path: PathBuf, message: String },
    #[error("config {path}: `{field}`: {reason}")]
    Invalid {
        path: PathBuf,
        field: String,
        reason: String,
    },
}

/// The file as written, before validation.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawConfig {
    #[serde(default)]
    pub agent: RawAgent,
    pub listener: RawListener,
    pub journal: RawJournal,
    pub govern: RawGovern,
    #[serde(default, rename = "resources")]
    pub resources: Vec<RawResource>,
    /// Named principals (see [`crate::principal::named`]).
    #[serde(default)]
    pub principals: Vec<crate::principal::RawPrincipal>,
    /// Statement policy for protocol-aware resources (see [`crate::policy`]).
    #[serde(default)]
    pub policy: crate::policy::RawPolicy,
    /// Masking of result values (see [`crate::mask`]).
    #[serde(default)]
    pub masking: crate::mask::MaskingConfig,
    /// TLS toward workers (postgres resources); without it SSLRequest gets 'N'.
    pub worker_tls: Option<RawWorkerTls>,
    /// Just-in-time approvals (see [`crate::control`]); without it every hold is denied.
    pub approvals: Option<crate::control::RawApprovals>,
    /// Where host-name resources are looked up (see [`crate::resolve`]).
    #[serde(default)]
    pub resolver: crate::resolve::RawResolver,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawWorkerTls {
    /// The agent CA's certificate (PEM), for workers to trust.
    pub ca_cert: PathBuf,
    /// Its private key (PKCS#8 PEM, 0600).
    pub ca_key: PathBuf,
    /// Lifetime of the leaf certificates shown to workers (re-issued at half of it).
    #[serde(default = "default_leaf_validity_hours")]
    pub leaf_validity_hours: u64,
}

fn default_leaf_validity_hours() -> u64 {
    24
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawAgent {
    pub pin_dir: Option<PathBuf>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawListener {
    pub port: u16,
    #[serde(default = "default_ipv4")]
    pub ipv4: String,
    #[serde(default = "default_ipv6")]
    pub ipv6: String,
    #[serde(default = "default_connect_timeout_ms")]
    pub upstream_connect_timeout_ms: u64,
    /// Sessions open at once, all principals together (default 4096).
    #[serde(default = "default_max_sessions")]
    pub max_sessions: usize,
    /// Sessions open at once for one principal (uid and cgroup; default 256).
    #[serde(default = "default_max_sessions_per_principal")]
    pub max_sessions_per_principal: usize,
    /// Bytes of messages held in the agent at once, all sessions together (default 256 MiB).
    #[serde(default = "default_max_buffered_bytes")]
    pub max_buffered_bytes: usize,
    /// How `tcp` resources are relayed: `splice` (default) or `kernel`.
    #[serde(default)]
    pub tcp_relay: TcpRelay,
}

/// How the bytes of `tcp` resources move between the worker and the resource.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum TcpRelay {
    /// In the kernel (sockmap and an sk_skb verdict), once the session is on record;
    /// the agent only watches for the end and spends no CPU per byte. Falls back to
    /// `splice` where the kernel refuses (the reason is logged once). Not the default:
    /// on Linux 6.18 the kernel's egress redirect (a workqueue per socket) moved bulk
    /// data slower than splice and added latency per round trip (docs/benchmarks.md).
    Kernel,
    /// Through the agent with splice(2) (the kernel moves pages; the agent wakes for
    /// every chunk).
    #[default]
    Splice,
}

fn default_max_buffered_bytes() -> usize {
    crate::memory_budget::DEFAULT_BUDGET_BYTES
}

fn default_max_sessions() -> usize {
    4096
}
fn default_max_sessions_per_principal() -> usize {
    256
}

fn default_ipv4() -> String {
    Ipv4Addr::LOCALHOST.to_string()
}
fn default_ipv6() -> String {
    Ipv6Addr::LOCALHOST.to_string()
}
fn default_connect_timeout_ms() -> u64 {
    5000
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawJournal {
    pub path: PathBuf,
    /// Older spelling of `sync`: `false` is `sync = "interval"`, `true` is `"always"`.
    pub fsync: Option<bool>,
    /// `always`: each group is on disk (fdatasync) before its records are acknowledged;
    /// `interval`: acknowledged once in the OS (survives a kill of the agent), on disk
    /// within `sync_interval_ms`.
    pub sync: Option<String>,
    /// The power-loss window of `sync = "interval"` (default 50 ms).
    #[serde(default = "default_sync_interval_ms")]
    pub sync_interval_ms: u64,
    /// Ed25519 key (PKCS#8 PEM, mode 0600) for checkpoints; default `<path>.key`.
    pub signing_key: Option<PathBuf>,
    /// No longer has an effect (sessions append their own records since the direct
    /// append); accepted so that older configs still load, with a warning.
    pub commit_interval_ms: Option<u64>,
    /// No longer has an effect, as `commit_interval_ms`.
    pub completion_wait_ms: Option<u64>,
    /// Sign a checkpoint at least every this many records (default 1000)...
    #[serde(default = "default_checkpoint_records")]
    pub checkpoint_records: u64,
    /// ...and when records wait unsigned this long (default 10 s).
    #[serde(default = "default_checkpoint_interval_ms")]
    pub checkpoint_interval_ms: u64,
    /// Remove records older than this many days.
    pub max_age_days: Option<u64>,
    /// Keep the journal under this many MiB by removing the oldest records.
    pub max_size_mb: Option<u64>,
    /// What execution records keep of bound parameter values: `redacted` (default),
    /// `full` or `none`.
    #[serde(default)]
    pub parameters: crate::govern::ParameterRecording,
    /// Group (name or gid) allowed to read the journal.
    pub read_group: Option<String>,
}

fn default_sync_interval_ms() -> u64 {
    50
}
fn default_checkpoint_records() -> u64 {
    1000
}
fn default_checkpoint_interval_ms() -> u64 {
    10_000
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawGovern {
    /// cgroup v2 paths, absolute or relative to the cgroup2 mount.
    pub cgroups: Vec<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawResource {
    pub name: String,
    /// An address (`10.0.0.5`, `fd00::5`), a CIDR (`10.0.0.0/24`) or a host name
    /// (`db.internal`: all its addresses, kept resolved).
    pub address: String,
    pub port: u16,
    #[serde(default)]
    pub protocol: Protocol,
    /// The keys of each protocol's own section, in the same table (see
    /// [`crate::protocols::config`]).
    #[serde(flatten)]
    pub settings: RawResourceSettings,
}

/// A validated configuration.
#[derive(Debug, Clone)]
pub struct Config {
    pub path: PathBuf,
    pub pin_dir: PathBuf,
    pub listener: Listener,
    pub journal: JournalConfig,
    pub governed: Vec<GovernedCgroup>,
    pub resources: Vec<Resource>,
    /// The policy and masking rules (a reload replaces them together).
    pub rules: crate::govern::Rules,
    pub limits: crate::policy::Limits,
    /// TLS toward workers; `None`: SSLRequest is answered 'N' (as `ssl = off`).
    pub worker_tls: Option<WorkerTls>,
    /// The approvals broker's control socket; `None`: holds are denied at once.
    pub approvals: Option<crate::control::ApprovalsConfig>,
    /// How host-name resources are resolved.
    pub resolver: crate::resolve::ResolverSettings,
}

#[derive(Debug, Clone)]
pub struct Listener {
    pub ipv4: Ipv4Addr,
    pub ipv6: Ipv6Addr,
    pub port: u16,
    pub upstream_connect_timeout: Duration,
    /// One worker cannot take every session: limits all together and per principal.
    pub max_sessions: usize,
    pub max_sessions_per_principal: usize,
    /// The memory budget for messages held in userspace ([`crate::memory_budget`]).
    pub max_buffered_bytes: usize,
    pub tcp_relay: TcpRelay,
}

#[derive(Debug, Clone)]
pub struct JournalConfig {
    pub path: PathBuf,
    /// `sync = "always"`: fdatasync before acknowledging.
    pub fsync: bool,
    /// `sync = "interval"`: how often the log is flushed to disk.
    pub sync_interval: Duration,
    pub signing_key: PathBuf,
    pub checkpoint_records: u64,
    pub checkpoint_interval: Duration,
    pub max_age: Option<Duration>,
    pub max_size_bytes: Option<u64>,
    pub read_group: Option<u32>,
    pub parameters: crate::govern::ParameterRecording,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GovernedCgroup {
    /// As written in the config.
    pub name: String,
    /// Absolute directory in the cgroup2 hierarchy.
    pub path: PathBuf,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Resource {
    pub name: String,
    /// A fixed network, or a host name resolved at start and kept resolved.
    pub address: crate::resolve::Address,
    pub port: u16,
    pub protocol: Protocol,
    /// The protocols' own keys (TLS toward the server, certificate names, ...).
    pub settings: ResourceSettings,
}

/// `[worker_tls]`, validated: owned by [`crate::tls`], which everything that issues
/// leaves (the proxy, the approvals API) reads it from.
pub use crate::tls::WorkerTls;

impl Resource {
    /// Whether a fixed-network resource covers `addr` (a host name's addresses are
    /// known only once resolved: see [`crate::resolve`]).
    pub fn covers(&self, addr: SocketAddr) -> bool {
        let Some(net) = self.address.net() else {
            return false;
        };
        let ip = match addr.ip() {
            IpAddr::V6(v6) => v6
                .to_ipv4_mapped()
                .map(IpAddr::V4)
                .unwrap_or(IpAddr::V6(v6)),
            v4 => v4,
        };
        addr.port() == self.port && net.contains(&ip)
    }
}

impl Config {
    /// Reads and validates a config file; `cgroup_root` is the cgroup2 mount used to
    /// resolve relative cgroup names (found from /proc/self/mounts when `None`).
    /// Only the pin directory a config names (for `disable`, which must work when the
    /// rest of the file no longer validates, e.g. a governed cgroup was removed).
    pub fn pin_dir_of(path: &Path) -> Result<PathBuf, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.to_owned(),
            source,
        })?;
        let raw: RawConfig = toml::from_str(&text).map_err(|e| ConfigError::Parse {
            path: path.to_owned(),
            message: e.to_string(),
        })?;
        validate_agent(raw.agent).map_err(|(field, reason)| ConfigError::Invalid {
            path: path.to_owned(),
            field,
            reason,
        })
    }

    pub fn load(path: &Path) -> Result<Config, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.to_owned(),
            source,
        })?;
        Self::from_toml(path, &text)
    }

    pub fn from_toml(path: &Path, text: &str) -> Result<Config, ConfigError> {
        let raw: RawConfig = toml::from_str(text).map_err(|e| ConfigError::Parse {
            path: path.to_owned(),
            message: e.to_string(),
        })?;
        Self::validate(path, raw)
    }

    /// One function per section, in file order; the first problem is reported with the
    /// dotted path of its field.
    fn validate(path: &Path, raw: RawConfig) -> Result<Config, ConfigError> {
        let invalid = |(field, reason): Invalid| ConfigError::Invalid {
            path: path.to_owned(),
            field,
            reason,
        };
        let listener = validate_listener(&raw.listener).map_err(invalid)?;
        let journal = validate_journal(raw.journal).map_err(invalid)?;
        let pin_dir = validate_agent(raw.agent).map_err(invalid)?;
        let governed = validate_govern(&raw.govern).map_err(invalid)?;
        let resources = validate_resources(raw.resources, &listener).map_err(invalid)?;
        let worker_tls = raw
            .worker_tls
            .map(|t| validate_worker_tls(t, &journal))
            .transpose()
            .map_err(|(f, r)| invalid((f.into(), r)))?;
        let names: Vec<&str> = resources.iter().map(|r| r.name.as_str()).collect();
        let (policy, limits) = raw
            .policy
            .validate(&names, &crate::protocols::vocabulary())
            .map_err(invalid)?;
        let masking = validate_masking(&raw.masking, &names).map_err(invalid)?;
        let principals = crate::principal::Principals::compile(raw.principals).map_err(invalid)?;
        validate_principal_names(&principals, &resources, &policy, &masking).map_err(invalid)?;
        let approvals = raw
            .approvals
            .map(crate::control::RawApprovals::validate)
            .transpose()
            .map_err(invalid)?;
        if approvals.as_ref().is_some_and(|a| a.http.is_some()) && worker_tls.is_none() {
            return Err(invalid((
                "approvals.http".into(),
                "needs [worker_tls]: the API's certificate is issued by the agent CA".into(),
            )));
        }
        let resolver = raw.resolver.validate().map_err(invalid)?;
        Ok(Config {
            rules: crate::govern::Rules {
                policy,
                masking,
                principals,
            },
            limits,
            path: path.to_owned(),
            pin_dir,
            listener,
            journal,
            governed,
            resources,
            worker_tls,
            approvals,
            resolver,
        })
    }

    /// The resource a redirected connection was matched against, by the id the kernel
    /// recorded (its index here).
    pub fn resource(&self, id: u32) -> Option<&Resource> {
        self.resources.get(id as usize)
    }
}

/// Checks `[worker_tls]`; the CA itself is read (or made) when the agent starts.
fn validate_worker_tls(
    raw: RawWorkerTls,
    journal: &JournalConfig,
) -> Result<WorkerTls, (&'static str, String)> {
    for (field, path) in [
        ("worker_tls.ca_cert", &raw.ca_cert),
        ("worker_tls.ca_key", &raw.ca_key),
    ] {
        if !path.is_absolute() {
            return Err((field, "must be an absolute path".into()));
        }
        if path.is_dir() {
            return Err((
                field,
                format!("{} is a directory; name a file", path.display()),
            ));
        }
        if *path == journal.path || *path == journal.signing_key {
            return Err((field, "must not be a journal file".into()));
        }
    }
    if raw.ca_cert == raw.ca_key {
        return Err((
            "worker_tls.ca_key",
            "must not be the certificate's file".into(),
        ));
    }
    // Up to 90 days, the most public CAs allow; workers never see an expired leaf
    // since leaves are re-issued at half their lifetime.
    if !(1..=90 * 24).contains(&raw.leaf_validity_hours) {
        return Err((
            "worker_tls.leaf_validity_hours",
            "must be between 1 and 2160 (90 days)".into(),
        ));
    }
    Ok(WorkerTls {
        ca_cert: raw.ca_cert,
        ca_key: raw.ca_key,
        leaf_validity: Duration::from_secs(raw.leaf_validity_hours * 3600),
    })
}

/// A field (dotted path) and what is wrong with it.
type Invalid = (String, String);

fn err<T>(field: &str, reason: impl Into<String>) -> Result<T, Invalid> {
    Err((field.to_owned(), reason.into()))
}

/// `[listener]`: loopback addresses only, the proxy is local to this host.
fn validate_listener(raw: &RawListener) -> Result<Listener, Invalid> {
    if raw.port == 0 {
        return err("listener.port", "must be between 1 and 65535");
    }
    let Ok(ipv4) = raw.ipv4.parse::<Ipv4Addr>() else {
        return err(
            "listener.ipv4",
            format!("`{}` is not an IPv4 address", raw.ipv4),
        );
    };
    if !ipv4.is_loopback() {
        return err(
            "listener.ipv4",
            "must be a loopback address: the proxy is local to this host",
        );
    }
    let Ok(ipv6) = raw.ipv6.parse::<Ipv6Addr>() else {
        return err(
            "listener.ipv6",
            format!("`{}` is not an IPv6 address", raw.ipv6),
        );
    };
    if !ipv6.is_loopback() {
        return err("listener.ipv6", "must be the IPv6 loopback address `::1`");
    }
    if raw.upstream_connect_timeout_ms == 0 {
        return err(
            "listener.upstream_connect_timeout_ms",
            "must be greater than 0",
        );
    }
    if raw.max_sessions == 0 {
        return err("listener.max_sessions", "must be greater than 0");
    }
    if raw.max_sessions_per_principal == 0 || raw.max_sessions_per_principal > raw.max_sessions {
        return err(
            "listener.max_sessions_per_principal",
            "must be between 1 and listener.max_sessions",
        );
    }
    if raw.max_buffered_bytes < 1 << 20 {
        return err(
            "listener.max_buffered_bytes",
            "must be at least 1048576 (1 MiB)",
        );
    }
    Ok(Listener {
        ipv4,
        ipv6,
        port: raw.port,
        upstream_connect_timeout: Duration::from_millis(raw.upstream_connect_timeout_ms),
        max_sessions: raw.max_sessions,
        max_sessions_per_principal: raw.max_sessions_per_principal,
        max_buffered_bytes: raw.max_buffered_bytes,
        tcp_relay: raw.tcp_relay,
    })
}

/// `[agent]`: where the kernel links and maps are pinned.
fn validate_agent(raw: RawAgent) -> Result<PathBuf, Invalid> {
    let pin_dir = raw.pin_dir.unwrap_or_else(|| DEFAULT_PIN_DIR.into());
    if !pin_dir.is_absolute() {
        return err("agent.pin_dir", "must be an absolute path");
    }
    Ok(pin_dir)
}

/// `[govern]`: every cgroup must exist (resolved against the cgroup2 mount), once.
fn validate_govern(raw: &RawGovern) -> Result<Vec<GovernedCgroup>, Invalid> {
    if raw.cgroups.is_empty() {
        return err("govern.cgroups", "name at least one cgroup to govern");
    }
    let mut governed: Vec<GovernedCgroup> = Vec::new();
    for (i, name) in raw.cgroups.iter().enumerate() {
        let field = format!("govern.cgroups[{i}]");
        let path = cgroup::resolve(name).or_else(|e| err(&field, e.to_string()))?;
        if governed.iter().any(|g| g.path == path) {
            return err(&field, format!("`{name}` is listed twice"));
        }
        governed.push(GovernedCgroup {
            name: name.clone(),
            path,
        });
    }
    Ok(governed)
}

/// `[[resources]]`: unique names, an address, CIDR or host name (a CIDR must not cover
/// the agent's own listener; a host name's addresses are checked once resolved), and
/// each protocol's own keys.
fn validate_resources(
    raw: Vec<RawResource>,
    listener: &Listener,
) -> Result<Vec<Resource>, Invalid> {
    let mut resources = Vec::new();
    let mut names = HashSet::new();
    for (i, r) in raw.into_iter().enumerate() {
        let field = |f: &str| format!("resources[{i}].{f}");
        if r.name.trim().is_empty() {
            return err(&field("name"), "must not be empty");
        }
        if !names.insert(r.name.clone()) {
            return err(
                &field("name"),
                format!("`{}` is used by another resource", r.name),
            );
        }
        let address = crate::resolve::Address::parse(&r.address)
            .or_else(|reason| err(&field("address"), reason))?;
        if r.port == 0 {
            return err(&field("port"), "must be between 1 and 65535");
        }
        let mut settings = protocol_config::validate(r.protocol, r.settings)
            .or_else(|(f, reason)| err(&field(f), reason))?;
        if let Some(host) = address.host() {
            // Workers and the server's certificate know the database by this name.
            protocol_config::default_names(&mut settings, host.as_str());
        }
        let resource = Resource {
            name: r.name,
            address,
            port: r.port,
            protocol: r.protocol,
            settings,
        };
        for own in [
            SocketAddr::new(IpAddr::V4(listener.ipv4), listener.port),
            SocketAddr::new(IpAddr::V6(listener.ipv6), listener.port),
        ] {
            if resource.covers(own) {
                return err(
                    &field("address"),
                    format!("covers the agent's own listener {own}: connections would loop"),
                );
            }
        }
        resources.push(resource);
    }
    Ok(resources)
}

/// Policy and masking rules may name only principals `[[principals]]` declares (or
/// `unknown`): a typo would otherwise be a rule that silently never applies.
fn validate_principal_names(
    principals: &crate::principal::Principals,
    resources: &[Resource],
    policy: &crate::policy::Policy,
    masking: &crate::mask::MaskingPolicy,
) -> Result<(), Invalid> {
    let known = |n: &str| n == crate::principal::UNKNOWN || principals.names().any(|p| p == n);
    for (i, r) in resources.iter().enumerate() {
        if let Some((field, n)) = r.settings.principal_names().find(|(_, n)| !known(n)) {
            return err(
                &format!("resources[{i}].{field}"),
                format!("principal `{n}` is not declared by `[[principals]]`"),
            );
        }
    }
    for (i, rule) in policy.rules.iter().enumerate() {
        if let Some(n) = rule.principals.iter().flatten().find(|n| !known(n)) {
            return err(
                &format!("policy.rules[{i}].principals"),
                format!(
                    "rule `{}` names principal `{n}`, which `[[principals]]` does not declare",
                    rule.name
                ),
            );
        }
    }
    if let Some((rule, n)) = masking.selector_principals().find(|(_, n)| !known(n)) {
        return err(
            "masking.rules.when.principals",
            format!("rule `{rule}` names principal `{n}`, which `[[principals]]` does not declare"),
        );
    }
    Ok(())
}

/// `[masking]`: compiled (reads `hash_key_file`); a rule may name only known resources.
fn validate_masking(
    raw: &crate::mask::MaskingConfig,
    resources: &[&str],
) -> Result<crate::mask::MaskingPolicy, Invalid> {
    let masking =
        crate::mask::MaskingPolicy::compile(raw).or_else(|e| err("masking", e.to_string()))?;
    if let Some((rule, r)) = masking
        .selector_resources()
        .find(|(_, r)| !r.contains('*') && !resources.contains(r))
    {
        return err(
            "masking.rules.when.resources",
            format!("rule `{rule}` names `{r}`, but no resource is named `{r}`"),
        );
    }
    Ok(masking)
}

/// `[journal]`: a file (not a directory) and sane group-commit and checkpoint settings.
fn validate_journal(raw: RawJournal) -> Result<JournalConfig, Invalid> {
    if raw.path.as_os_str().is_empty() {
        return err("journal.path", "must not be empty");
    }
    if raw.path.is_dir() {
        return err(
            "journal.path",
            format!("{} is a directory; name a file", raw.path.display()),
        );
    }
    validate_journal_settings(raw).or_else(|(f, r)| err(f, r))
}

fn validate_journal_settings(raw: RawJournal) -> Result<JournalConfig, (&'static str, String)> {
    if raw.checkpoint_records == 0 {
        return Err((
            "journal.checkpoint_records",
            "must be greater than 0".into(),
        ));
    }
    if raw.checkpoint_interval_ms == 0 {
        return Err((
            "journal.checkpoint_interval_ms",
            "must be greater than 0".into(),
        ));
    }
    for (key, set) in [
        ("journal.commit_interval_ms", raw.commit_interval_ms),
        ("journal.completion_wait_ms", raw.completion_wait_ms),
    ] {
        if set.is_some() {
            tracing::warn!(
                key,
                "no longer has an effect: sessions append their own records, and groups form \
                 from what queues during a write; remove it from the config"
            );
        }
    }
    let fsync = match raw.sync.as_deref() {
        // The default: in the OS before the statement goes on (survives the agent's
        // death), on disk within the interval (docs/journal.md, "Durability").
        None => raw.fsync.unwrap_or(false),
        Some("always") => true,
        Some("interval") => false,
        Some(other) => {
            return Err((
                "journal.sync",
                format!("`{other}`: must be \"always\" or \"interval\""),
            ));
        }
    };
    if raw.sync_interval_ms == 0 || raw.sync_interval_ms > 10_000 {
        return Err((
            "journal.sync_interval_ms",
            "between 1 and 10000: a power loss may take the records of this window".into(),
        ));
    }
    if raw.max_age_days == Some(0) {
        return Err(("journal.max_age_days", "must be at least 1".into()));
    }
    if raw.max_size_mb == Some(0) {
        return Err(("journal.max_size_mb", "must be at least 1".into()));
    }
    let read_group = match raw.read_group.as_deref().map(str::trim) {
        None => None,
        Some("") => return Err(("journal.read_group", "must not be empty".into())),
        Some(g) => Some(match g.parse::<u32>() {
            Ok(gid) => gid,
            Err(_) => nix::unistd::Group::from_name(g)
                .ok()
                .flatten()
                .map(|grp| grp.gid.as_raw())
                .ok_or_else(|| ("journal.read_group", format!("no group named `{g}`")))?,
        }),
    };
    let signing_key = raw
        .signing_key
        .unwrap_or_else(|| crate::journal::sqlite::default_key_path(&raw.path));
    if signing_key == raw.path {
        return Err((
            "journal.signing_key",
            "must not be the journal file itself".into(),
        ));
    }
    Ok(JournalConfig {
        path: raw.path,
        fsync,
        sync_interval: Duration::from_millis(raw.sync_interval_ms),
        signing_key,
        checkpoint_records: raw.checkpoint_records,
        checkpoint_interval: Duration::from_millis(raw.checkpoint_interval_ms),
        max_age: raw.max_age_days.map(|d| Duration::from_secs(d * 86_400)),
        max_size_bytes: raw.max_size_mb.map(|m| m * 1024 * 1024),
        read_group,
        parameters: raw.parameters,
    })
}

impl JournalConfig {
    /// The store's settings.
    pub fn store_options(&self) -> crate::journal::sqlite::StoreOptions {
        crate::journal::sqlite::StoreOptions {
            path: self.path.clone(),
            signing_key: self.signing_key.clone(),
            fsync: self.fsync,
            sync_interval: self.sync_interval,
            segment_bytes: crate::journal::segment::SEGMENT_BYTES,
            build_index: true,
            checkpoint_every: self.checkpoint_records,
            checkpoint_interval: self.checkpoint_interval,
            max_age: self.max_age,
            max_bytes: self.max_size_bytes,
            read_group: self.read_group,
        }
    }

    /// The journal's upkeep settings.
    pub fn writer_options(&self) -> crate::journal::WriterOptions {
        crate::journal::WriterOptions::default()
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    /// A minimal valid config with `extra` appended (for each section's tests).
    pub(crate) fn base(extra: &str) -> String {
        format!(
            r#"
[listener]
port = 15432
[journal]
path = "/tmp/pam-test-journal.jsonl"
[govern]
cgroups = ["/"]
{extra}
"#
        )
    }

    /// The error a config text is refused with.
    pub(crate) fn err(text: &str) -> String {
        Config::from_toml(Path::new("t.toml"), text)
            .unwrap_err()
            .to_string()
    }

    #[test]
    fn accepts_a_resource_with_cidr_and_single_address() {
        let cfg = Config::from_toml(
            Path::new("t.toml"),
            &base(
                r#"
[[resources]]
name = "db"
address = "10.1.0.0/16"
port = 5432
protocol = "postgres"
[[resources]]
name = "v6"
address = "fd00::5"
port = 22
"#,
            ),
        )
        .unwrap();
        assert_eq!(cfg.resources.len(), 2);
        assert!(cfg.resources[0].covers("10.1.2.3:5432".parse().unwrap()));
        assert!(cfg.resources[0].covers("[::ffff:10.1.2.3]:5432".parse().unwrap()));
        assert!(!cfg.resources[0].covers("10.1.2.3:5433".parse().unwrap()));
        assert!(cfg.resources[1].covers("[fd00::5]:22".parse().unwrap()));
        assert_eq!(cfg.resources[1].protocol, Protocol::Tcp);
    }

    #[test]
    fn tcp_relay_defaults_to_splice_and_takes_kernel() {
        let parse = |text: &str| Config::from_toml(Path::new("t.toml"), text);
        assert_eq!(
            parse(&base("")).unwrap().listener.tcp_relay,
            TcpRelay::Splice
        );
        let kernel = base("").replace("port = 15432", "port = 15432\ntcp_relay = \"kernel\"");
        assert_eq!(parse(&kernel).unwrap().listener.tcp_relay, TcpRelay::Kernel);
        let e = err(&base("").replace("port = 15432", "port = 15432\ntcp_relay = \"pipe\""));
        assert!(e.contains("tcp_relay") || e.contains("pipe"), "{e}");
    }

    #[test]
    fn bad_cidr_names_the_field() {
        let e = err(&base(
            "[[resources]]\nname=\"db\"\naddress=\"10.0.0.0/33\"\nport=5432\n",
        ));
        assert!(e.contains("resources[0].address"), "{e}");
        let e = err(&base(
            "[[resources]]\nname=\"db\"\naddress=\"10.0.0.1/24\"\nport=5432\n",
        ));
        assert!(e.contains("host bits") && e.contains("10.0.0.0/24"), "{e}");
    }

    #[test]
    fn bad_port_names_the_field() {
        let e = err(&base(
            "[[resources]]\nname=\"db\"\naddress=\"10.0.0.1\"\nport=0\n",
        ));
        assert!(e.contains("resources[0].port"), "{e}");
        // Out of range for u16: serde's own error, with the key and line.
        let e = err(&base(
            "[[resources]]\nname=\"db\"\naddress=\"10.0.0.1\"\nport=70000\n",
        ));
        assert!(e.contains("port"), "{e}");
    }

    #[test]
    fn unknown_key_is_refused() {
        let e = err(&base(
            "[[resources]]\nname=\"db\"\naddress=\"10.0.0.1\"\nport=1\nprot=\"x\"\n",
        ));
        assert!(e.contains("unknown field `prot`"), "{e}");
    }

    #[test]
    fn missing_cgroup_is_refused() {
        let e = err(&base("").replace("[\"/\"]", "[\"/no/such/cgroup-pam-test\"]"));
        assert!(e.contains("govern.cgroups[0]"), "{e}");
    }

    #[test]
    fn journal_settings_are_checked() {
        let cfg = Config::from_toml(
            Path::new("t.toml"),
            &base("").replace(
                "[journal]\n",
                "[journal]\ncommit_interval_ms = 2\nmax_age_days = 30\nmax_size_mb = 64\nread_group = \"0\"\n",
            ),
        )
        .unwrap();
        assert_eq!(cfg.journal.read_group, Some(0));
        assert_eq!(cfg.journal.max_size_bytes, Some(64 << 20));
        assert!(
            cfg.journal
                .signing_key
                .ends_with("pam-test-journal.jsonl.key")
        );
        let e = err(&base("").replace(
            "[journal]\n",
            "[journal]\nread_group = \"no-such-group-pam\"\n",
        ));
        assert!(e.contains("journal.read_group"), "{e}");
        let e = err(&base("").replace("[journal]\n", "[journal]\nretention = 3\n"));
        assert!(e.contains("unknown field `retention`"), "{e}");
    }

    #[test]
    fn journal_sync_is_always_or_an_interval() {
        let journal = |lines: &str| {
            Config::from_toml(
                Path::new("t.toml"),
                &base("").replace("[journal]\n", &format!("[journal]\n{lines}\n")),
            )
            .map(|c| (c.journal.fsync, c.journal.sync_interval))
        };
        assert_eq!(journal("").unwrap(), (false, Duration::from_millis(50)));
        assert_eq!(
            journal("sync = \"always\"").unwrap(),
            (true, Duration::from_millis(50))
        );
        assert_eq!(
            journal("sync = \"interval\"\nsync_interval_ms = 20").unwrap(),
            (false, Duration::from_millis(20))
        );
        // The older key still works; `sync` wins when both are given.
        assert!(!journal("fsync = false").unwrap().0);
        assert!(journal("fsync = false\nsync = \"always\"").unwrap().0);
        let e = err(&base("").replace("[journal]\n", "[journal]\nsync = \"never\"\n"));
        assert!(e.contains("journal.sync"), "{e}");
        let e = err(&base("").replace("[journal]\n", "[journal]\nsync_interval_ms = 0\n"));
        assert!(e.contains("journal.sync_interval_ms"), "{e}");
    }

    #[test]
    fn policy_section_is_validated() {
        let cfg = Config::from_toml(
            Path::new("t.toml"),
            &base(
                r#"
[[resources]]
name = "db"
address = "10.0.0.1"
port = 5432
protocol = "postgres"
[policy]
max_message_bytes = 4096
[[policy.rules]]
name = "read"
action = "allow"
kinds = ["select"]
"#,
            ),
        )
        .unwrap();
        assert_eq!(cfg.rules.policy.rules.len(), 1);
        assert_eq!(cfg.limits.max_message_bytes, 4096);
        assert_eq!(cfg.rules.policy.default, crate::policy::Action::Deny);
        let e = err(&base(
            "[[policy.rules]]\nname=\"r\"\naction=\"allow\"\nresources=[\"db\"]\n",
        ));
        assert!(e.contains("policy.rules[0].resources"), "{e}");
    }

    #[test]
    fn masking_section_is_validated() {
        let db = "[[resources]]\nname = \"db\"\naddress = \"10.0.0.1\"\nport = 5432\nprotocol = \"postgres\"\n";
        let rule = |body: &str| format!("{db}[[masking.rules]]\nname = \"pii\"\n{body}");
        let cfg = Config::from_toml(
            Path::new("t.toml"),
            &base(&rule(
                "when = { resources = [\"db\"] }\n[[masking.rules.columns]]\ncolumns = [\"public.t.email\"]\nstrategy = { kind = \"email\" }\n",
            )),
        )
        .unwrap();
        assert_eq!(cfg.rules.masking.rule_names().collect::<Vec<_>>(), ["pii"]);
        for (body, want) in [
            (
                "[[masking.rules.columns]]\ncolumns = [\"email\"]\nstrategy = { kind = \"email\" }\n",
                "must be schema.table.column",
            ),
            (
                "[[masking.rules.columns]]\ncolumns = [\"a.b.c\"]\nstrategy = { kind = \"keyed_hash\" }\n",
                "neither hash_key nor hash_key_file",
            ),
            (
                "[[masking.rules.columns]]\ncolumns = [\"a.b.c\"]\nstrategy = { kind = \"scramble\" }\n",
                "unknown variant `scramble`",
            ),
            (
                "when = { resources = [\"nope\"] }\n[[masking.rules.columns]]\ncolumns = [\"a.b.c\"]\nstrategy = { kind = \"null\" }\n",
                "no resource is named `nope`",
            ),
            ("", "masks nothing"),
        ] {
            let e = err(&base(&rule(body)));
            // Validation errors name the section; a TOML error shows the line.
            assert!(e.contains(want), "{body}: {e}");
            assert!(e.contains("masking") || e.contains("line"), "{body}: {e}");
        }
    }

    #[test]
    fn worker_tls_section_is_checked() {
        let ok = "[worker_tls]\nca_cert = \"/var/lib/pam-agent/ca.pem\"\nca_key = \"/var/lib/pam-agent/ca.key\"\n";
        let cfg = Config::from_toml(Path::new("t.toml"), &base(ok)).unwrap();
        let tls = cfg.worker_tls.unwrap();
        assert_eq!(tls.leaf_validity, Duration::from_secs(24 * 3600));
        assert!(
            Config::from_toml(Path::new("t.toml"), &base(""))
                .unwrap()
                .worker_tls
                .is_none()
        );
        let e = err(&base(
            &ok.replace("\"/var/lib/pam-agent/ca.pem\"", "\"ca.pem\""),
        ));
        assert!(
            e.contains("worker_tls.ca_cert") && e.contains("absolute"),
            "{e}"
        );
        let e = err(&base(&ok.replace("ca.key", "ca.pem")));
        assert!(e.contains("worker_tls.ca_key"), "{e}");
        let e = err(&base(&format!("{ok}leaf_validity_hours = 0\n")));
        assert!(e.contains("worker_tls.leaf_validity_hours"), "{e}");
        let e = err(&base(&format!("{ok}leaf_validity_hours = 3000\n")));
        assert!(e.contains("worker_tls.leaf_validity_hours"), "{e}");
        let e = err(&base(&format!("{ok}ca = \"x\"\n")));
        assert!(e.contains("unknown field `ca`"), "{e}");
        let e = err(&base(&ok.replace(
            "\"/var/lib/pam-agent/ca.key\"",
            "\"/tmp/pam-test-journal.jsonl\"",
        )));
        assert!(
            e.contains("worker_tls.ca_key") && e.contains("journal"),
            "{e}"
        );
    }

    #[test]
    fn protocol_keys_sit_in_the_resource_table_and_unknown_ones_are_refused() {
        let e = err(&base(
            "[[resources]]\nname=\"db\"\naddress=\"10.0.0.1\"\nport=5432\nprotocol=\"postgres\"\nupstream_tsl=\"require\"\n",
        ));
        assert!(e.contains("unknown field `upstream_tsl`"), "{e}");
        let cfg = Config::from_toml(
            Path::new("t.toml"),
            &base("[[resources]]\nname=\"t\"\naddress=\"10.0.0.1\"\nport=22\n"),
        )
        .unwrap();
        assert_eq!(cfg.resources[0].settings, ResourceSettings::default());
    }

    #[test]
    fn resource_covering_the_listener_is_refused() {
        let e = err(&base(
            "[[resources]]\nname=\"loop\"\naddress=\"127.0.0.0/8\"\nport=15432\n",
        ));
        assert!(e.contains("loop"), "{e}");
    }
}
