//! The kernel side, seen from the agent: loads the embedded eBPF object, attaches it to
//! the governed cgroups, keeps the maps filled, and answers "who is this accepted peer
//! and where did it mean to go". This is the only module that touches aya.
//!
//! Enforcement outlives the agent: maps and links are pinned under the pin directory
//! (see [`pins`]), so while the agent is stopped governed connects to protected
//! resources are refused (the connect hook finds no listener in `PAM_LISTENERS`), and
//! a connection to the redirect target reaches the agent's own socket or nobody
//! (`sk_lookup`), whoever binds that port. A restart attaches a new generation of links
//! before removing the old one, so there is never a moment with nothing attached and
//! never two generations left behind.
//!
//! An accepted connection is matched to its record by the cookie of the socket at its
//! far end ([`peer`]), and only records of this run's epoch are believed.

mod btf;
pub mod cgroup;
mod listener;
mod peer;
mod pins;
mod probe;
mod relay;

use std::{
    collections::HashSet,
    fs::File,
    net::{Ipv4Addr, Ipv6Addr, SocketAddr, SocketAddrV4, SocketAddrV6},
    os::{
        fd::{AsFd, BorrowedFd},
        unix::fs::MetadataExt,
    },
    path::Path,
};

use aya::{
    Ebpf, EbpfLoader,
    maps::{
        Array, HashMap, Map, MapData,
        lpm_trie::{Key, LpmTrie},
    },
    programs::{CgroupAttachMode, CgroupSock, CgroupSockAddr, SkLookup, SockOps, links::FdLink},
};
use pam_common::{
    AF_INET, ConnectRecord, LISTENER_V4, LISTENER_V6, PORT_PREFIX_BITS, ResourceKey, ResourceValue,
    Settings, V4_MAPPED_PREFIX_BITS, as_v4, maps, programs, v4_mapped,
};

use crate::{config::Config, principal::Captured};

pub use listener::ListenerProof;
pub use pins::{PinnedLink, disable, pinned_links};
pub use probe::KernelError;
pub use relay::{Pair, PairError, SockRelay, tcp_info};

/// The programs a governed cgroup needs and that `links` lack: those attached to the
/// cgroup itself and those attached to the cgroup2 root.
pub fn missing_programs(
    links: &[PinnedLink],
    cgroup_id: u64,
) -> Result<Vec<&'static str>, cgroup::CgroupError> {
    let root = cgroup::cgroup2_root()?;
    let root_id = cgroup::id(&root).map_err(|_| cgroup::CgroupError::Missing(root))?;
    let at = |id: u64, list: &'static [(&'static str, Kind, &'static str)]| {
        list.iter()
            .map(|(name, _, _)| *name)
            .filter(move |p| !links.iter().any(|l| l.cgroup_id == id && l.program == *p))
    };
    Ok(at(cgroup_id, CGROUP_PROGRAMS)
        .chain(at(root_id, ROOT_PROGRAMS))
        .collect())
}

/// The kernel object built from `pam-ebpf` by the build script.
static OBJECT: &[u8] = aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/pam-ebpf.o"));

#[derive(Debug, thiserror::Error)]
pub enum RedirectError {
    #[error(transparent)]
    Kernel(#[from] KernelError),
    #[error("cannot load the eBPF object: {0}")]
    Load(#[source] Box<aya::EbpfError>),
    #[error("this kernel cannot {action} the {program} program ({feature}): {source}")]
    Program {
        action: &'static str,
        program: &'static str,
        feature: &'static str,
        #[source]
        source: Box<aya::programs::ProgramError>,
    },
    #[error("cannot pin {what} at {path}: {source}")]
    Pin {
        what: String,
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error("eBPF map {map}: {source}")]
    Map {
        map: &'static str,
        #[source]
        source: aya::maps::MapError,
    },
    #[error("another pam-agent is running with pin directory {path} ({source})")]
    Busy {
        path: String,
        #[source]
        source: nix::Error,
    },
    #[error("cannot open governed cgroup {path}: {source}")]
    Cgroup {
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error("refusing pin directory {path}: it {reason}; remove it, or choose another pin_dir")]
    UnsafePinDir { path: String, reason: String },
    #[error("cannot take the listener ({what}): {source}")]
    Listener {
        what: &'static str,
        #[source]
        source: std::io::Error,
    },
}

/// Why an accepted connection has no redirect record.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum LookupError {
    #[error("no redirect record for peer {0} (not redirected by the kernel programs)")]
    NotRedirected(SocketAddr),
    /// The worker's socket had closed by the time it was accepted (a connect-and-close):
    /// its record went with it, so who made it cannot be told.
    #[error("peer {0} closed before it could be identified")]
    RecordGone(SocketAddr),
    #[error("connection from {peer} reached {local}, not the redirect target")]
    NotTarget { peer: SocketAddr, local: SocketAddr },
    #[error("redirect record for peer {0} was made before this agent started; not trusted")]
    Stale(SocketAddr),
    #[error("cannot identify the socket of peer {peer}: {error}")]
    Diag { peer: SocketAddr, error: String },
    #[error("eBPF map lookup failed: {0}")]
    Map(String),
}

/// One entry of the protected-resource map: connects to `net` on `port` are governed
/// as resource `resource_id` (its index in the config). A host-name resource has one
/// entry per address it resolved to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct Protected {
    pub net: ipnet::IpNet,
    pub port: u16,
    pub resource_id: u32,
}

impl LookupError {
    /// The reason's name, for counting refusals together.
    pub fn class(&self) -> &'static str {
        match self {
            LookupError::NotRedirected(_) => "not_redirected",
            LookupError::RecordGone(_) => "closed_before_identification",
            LookupError::NotTarget { .. } => "not_the_redirect_target",
            LookupError::Stale(_) => "stale_record",
            LookupError::Diag { .. } | LookupError::Map(_) => "identification_failed",
        }
    }
}

/// The agent's listening sockets, handed to the kernel side at start.
pub struct ListenerFds<'a> {
    pub v4: BorrowedFd<'a>,
    /// None when the host has no IPv6: governed IPv6 connects are then refused.
    pub v6: Option<BorrowedFd<'a>>,
}

/// What the kernel recorded for one redirected connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Redirected {
    /// Where the worker meant to connect, in the family it used (`[::ffff:a.b.c.d]:p` for
    /// a dual-stack socket's IPv4 connect).
    pub destination: SocketAddr,
    pub resource_id: u32,
    pub captured: Captured,
}

impl Redirected {
    /// The address to dial upstream (v4-mapped addresses as plain IPv4).
    pub fn upstream(&self) -> SocketAddr {
        SocketAddr::new(
            self.destination.ip().to_canonical(),
            self.destination.port(),
        )
    }
}

/// Programs attached to each governed cgroup (they run for sockets created there):
/// name, program kind, and the kernel feature it needs.
const CGROUP_PROGRAMS: &[(&str, Kind, &str)] = &[
    (
        programs::CONNECT4,
        Kind::Addr,
        "cgroup/connect4, Linux 4.17+ with CONFIG_CGROUP_BPF",
    ),
    (
        programs::CONNECT6,
        Kind::Addr,
        "cgroup/connect6, Linux 4.17+ with CONFIG_CGROUP_BPF",
    ),
];

/// Programs attached to the cgroup2 root (they run for every socket): the connect
/// hooks that govern by the calling task, and what every redirected socket needs
/// wherever it was made.
const ROOT_PROGRAMS: &[(&str, Kind, &str)] = &[
    (
        programs::CONNECT4_TASK,
        Kind::Addr,
        "cgroup/connect4 with bpf_get_current_ancestor_cgroup_id, Linux 5.7+",
    ),
    (
        programs::CONNECT6_TASK,
        Kind::Addr,
        "cgroup/connect6 with bpf_get_current_ancestor_cgroup_id, Linux 5.7+",
    ),
    (
        programs::GETPEERNAME4,
        Kind::Addr,
        "cgroup/getpeername4, Linux 5.8+",
    ),
    (
        programs::GETPEERNAME6,
        Kind::Addr,
        "cgroup/getpeername6, Linux 5.8+",
    ),
    (
        programs::SOCK_OPS,
        Kind::Ops,
        "cgroup sock_ops, Linux 4.13+",
    ),
    (
        programs::SOCK_RELEASE,
        Kind::Release,
        "cgroup/sock_release, Linux 5.9+",
    ),
];

#[derive(Clone, Copy)]
/// Program kinds: cgroup sock_addr, sock_ops, cgroup sock (release).
enum Kind {
    Addr,
    Ops,
    Release,
}

pub struct Redirector {
    // Keeps the programs and the log buffer alive; the links themselves are pinned.
    _ebpf: Ebpf,
    // Holds the pin directory lock.
    _layout: pins::Layout,
    connects: HashMap<MapData, u64, ConnectRecord>,
    /// `PAM_PROTECTED`, updated while running when a host name resolves anew.
    protected: std::sync::Mutex<LpmTrie<MapData, ResourceKey, ResourceValue>>,
    /// Records of other epochs (before this start) are not believed.
    epoch: u32,
    netns_cookie: u64,
    /// The redirect targets: accepted connections must have reached one of them.
    targets: [SocketAddr; 2],
    /// The in-kernel relay of `tcp` resources; None: they are relayed with splice.
    relay: Option<SockRelay>,
}

impl Redirector {
    /// Loads, fills the maps, registers the listeners and attaches to every governed
    /// cgroup and to this network namespace. The listeners must already be bound: from
    /// the moment this returns, governed connects arrive there. `protected` is every
    /// resource's entries (host names already resolved).
    pub fn start(
        cfg: &Config,
        listeners: ListenerFds<'_>,
        protected: &[Protected],
    ) -> Result<Redirector, RedirectError> {
        probe::preflight(&cfg.pin_dir)?;
        let layout = pins::Layout::create(&cfg.pin_dir)?;

        let mut loader = EbpfLoader::new();
        for name in [
            maps::PROTECTED,
            maps::SETTINGS,
            maps::GOVERNED,
            maps::OFFSETS,
            maps::CONNECTS,
            maps::LISTENERS,
        ] {
            loader.map_pin_path(name, layout.map(name));
        }
        let mut ebpf = loader
            .load(OBJECT)
            .map_err(|e| RedirectError::Load(Box::new(e)))?;
        match aya_log::EbpfLogger::init(&mut ebpf) {
            Ok(logger) => spawn_kernel_log(logger),
            Err(e) => tracing::warn!(error = %e, "kernel-side logging unavailable"),
        }

        let netns_cookie =
            listener::netns_cookie(listeners.v4).map_err(|source| RedirectError::Listener {
                what: "network namespace cookie of the listener",
                source,
            })?;
        // Maps first: the settings and resources must be in place before any new
        // program can run.
        write_offsets(&mut ebpf)?;
        let levels = write_governed(&mut ebpf, cfg)?;
        let epoch = write_settings(&mut ebpf, cfg, netns_cookie, levels)?;
        let mut protected_map = take_protected(&mut ebpf)?;
        sync_protected(&mut protected_map, protected)?;
        register_listeners(&mut ebpf, &listeners)?;

        for (name, kind, feature) in CGROUP_PROGRAMS.iter().chain(ROOT_PROGRAMS) {
            load_program(&mut ebpf, name, *kind, feature)?;
        }

        let generation = pins::Generation::new();
        attach_sk_lookup(&mut ebpf, &layout, generation)?;
        let root = cgroup::cgroup2_root().map_err(KernelError::from)?;
        let root_id = cgroup::id(&root).map_err(|source| RedirectError::Cgroup {
            path: root.display().to_string(),
            source,
        })?;
        let root_dir = File::open(&root).map_err(|source| RedirectError::Cgroup {
            path: root.display().to_string(),
            source,
        })?;
        for (name, kind, feature) in ROOT_PROGRAMS {
            let link = attach_program(&mut ebpf, name, *kind, feature, &root_dir)?;
            let path = layout.link(root_id, name, generation);
            pin_link(link, &path, || {
                format!("link of {name} to {}", root.display())
            })?;
        }
        let mut governed_ids = HashSet::new();
        for g in &cfg.governed {
            let id = cgroup::id(&g.path).map_err(|source| RedirectError::Cgroup {
                path: g.path.display().to_string(),
                source,
            })?;
            governed_ids.insert(id);
            let dir = File::open(&g.path).map_err(|source| RedirectError::Cgroup {
                path: g.path.display().to_string(),
                source,
            })?;
            for (name, kind, feature) in CGROUP_PROGRAMS {
                let link = attach_program(&mut ebpf, name, *kind, feature, &dir)?;
                let path = layout.link(id, name, generation);
                pin_link(link, &path, || {
                    format!("link of {name} to {}", g.path.display())
                })?;
            }
            tracing::info!(cgroup = %g.path.display(), cgroup_id = id, "governing cgroup");
        }
        // Only now remove what the previous run left: older generations everywhere,
        // and links of cgroups that are no longer governed.
        let removed = layout.remove_links_except(generation)?;
        if removed > 0 {
            tracing::info!(removed, "detached links of the previous run");
        }
        let stale = layout.remove_stale_maps()?;
        if stale > 0 {
            tracing::info!(stale, "removed maps of an older layout");
        }

        let connects = take_hash(&mut ebpf, maps::CONNECTS)?;
        let relay = match cfg.listener.tcp_relay {
            crate::config::TcpRelay::Splice => None,
            crate::config::TcpRelay::Kernel => match SockRelay::start(&mut ebpf) {
                Ok(r) => Some(r),
                Err(e) => {
                    tracing::warn!(error = %e, "tcp resources are relayed with splice: the kernel refused the in-kernel relay");
                    None
                }
            },
        };
        tracing::info!(
            tcp_relay = if relay.is_some() { "kernel" } else { "splice" },
            "relay of tcp resources"
        );
        Ok(Redirector {
            _ebpf: ebpf,
            _layout: layout,
            connects,
            protected: std::sync::Mutex::new(protected_map),
            epoch,
            netns_cookie,
            targets: [
                SocketAddr::new(cfg.listener.ipv4.into(), cfg.listener.port),
                SocketAddr::new(cfg.listener.ipv6.into(), cfg.listener.port),
            ],
            relay,
        })
    }

    /// The in-kernel relay for `tcp` resources, when configured and the kernel took it.
    pub fn sock_relay(&self) -> Option<&SockRelay> {
        self.relay.as_ref()
    }

    /// Makes the protected-resource map hold exactly `protected`: new entries go in
    /// before stale ones come out, so an entry kept is never missing for a moment.
    pub fn protect(&self, protected: &[Protected]) -> Result<(), RedirectError> {
        let mut map = self.protected.lock().unwrap_or_else(|p| p.into_inner());
        sync_protected(&mut map, protected)
    }

    /// Finds the record of an accepted connection (`peer` as accept() reported it,
    /// `local` the accepted socket's own address). The kernel names the socket at the
    /// far end by its cookie; a record counts only if that very socket made it, in
    /// this run, in this namespace.
    pub fn lookup(&self, peer: SocketAddr, local: SocketAddr) -> Result<Redirected, LookupError> {
        let canonical = SocketAddr::new(local.ip().to_canonical(), local.port());
        if !self.targets.contains(&canonical) {
            return Err(LookupError::NotTarget { peer, local });
        }
        let far_end = match peer::client_socket(peer, local) {
            Ok(Some(s)) => s,
            Ok(None) => return Err(LookupError::RecordGone(peer)),
            Err(e) => {
                return Err(LookupError::Diag {
                    peer,
                    error: e.to_string(),
                });
            }
        };
        let record = match self.connects.get(&far_end.cookie, 0) {
            Ok(r) => r,
            // A socket that is no longer open lost its record when it closed: that is a
            // connect-and-close, not a connection the kernel let through. The record goes
            // at the start of the close, a moment before the socket's state changes, so
            // a socket seen open before the miss is asked again after it.
            Err(aya::maps::MapError::KeyNotFound) => {
                let closed = !far_end.open
                    || !matches!(
                        peer::client_socket(peer, local),
                        Ok(Some(again)) if again.open && again.cookie == far_end.cookie
                    );
                return Err(if closed {
                    LookupError::RecordGone(peer)
                } else {
                    LookupError::NotRedirected(peer)
                });
            }
            Err(e) => return Err(LookupError::Map(e.to_string())),
        };
        if record.epoch != self.epoch || record.netns_cookie != self.netns_cookie {
            return Err(LookupError::Stale(peer));
        }
        Ok(Redirected {
            destination: destination(&record),
            resource_id: record.resource_id,
            captured: Captured {
                pid: (record.pid_tgid >> 32) as u32,
                tid: record.pid_tgid as u32,
                uid: record.uid_gid as u32,
                gid: (record.uid_gid >> 32) as u32,
                cgroup_id: record.cgroup_id,
                comm: record.comm,
                exe: crate::principal::ExeId::from_kernel(record.exe_dev, record.exe_ino),
                mnt_ns: record.mnt_ns,
                auid: (record.auid != pam_common::AUID_UNSET).then_some(record.auid),
            },
        })
    }
}

/// What `pam-agent status` can establish from the pinned state alone.
#[derive(Debug)]
pub struct ListenerStatus {
    /// The agent process named in the settings (0: never started).
    pub agent_pid: u32,
    pub v4: ListenerProof,
    pub v6: ListenerProof,
    /// sk_lookup is attached to this (the caller's) network namespace.
    pub steering: bool,
}

/// Reads the pinned settings and listener map under `pin_dir` and proves who holds
/// the listeners (the kernel's cookies of the agent process's own sockets).
pub fn listener_status(pin_dir: &Path) -> Result<ListenerStatus, RedirectError> {
    let map_err = |map, source| RedirectError::Map { map, source };
    let settings_path = pins::map_path(pin_dir, maps::SETTINGS);
    let agent_pid = if settings_path.exists() {
        let data = MapData::from_pin(&settings_path).map_err(|e| map_err(maps::SETTINGS, e))?;
        let array: Array<MapData, Settings> =
            Array::try_from(Map::Array(data)).map_err(|e| map_err(maps::SETTINGS, e))?;
        array
            .get(&0, 0)
            .map_err(|e| map_err(maps::SETTINGS, e))?
            .agent_tgid
    } else {
        0
    };
    let listeners_path = pins::map_path(pin_dir, maps::LISTENERS);
    let prove = |index| -> Result<ListenerProof, RedirectError> {
        if !listeners_path.exists() {
            return Ok(ListenerProof::Absent);
        }
        listener::prove(&listeners_path, index, agent_pid).map_err(|source| {
            RedirectError::Listener {
                what: "reading the pinned listener map",
                source,
            }
        })
    };
    let own_netns = std::fs::metadata("/proc/self/ns/net")
        .map(|m| m.ino())
        .unwrap_or(0);
    let steering = pins::netns_links(pin_dir, programs::SK_LOOKUP)?.contains(&own_netns);
    Ok(ListenerStatus {
        agent_pid,
        v4: prove(LISTENER_V4)?,
        v6: prove(LISTENER_V6)?,
        steering,
    })
}

fn destination(r: &ConnectRecord) -> SocketAddr {
    let port = u16::from_be_bytes(r.orig_port);
    match (r.family, as_v4(&r.orig_addr)) {
        (AF_INET, Some(v4)) => SocketAddr::V4(SocketAddrV4::new(Ipv4Addr::from(v4), port)),
        _ => SocketAddr::V6(SocketAddrV6::new(Ipv6Addr::from(r.orig_addr), port, 0, 0)),
    }
}

/// LPM-trie key for an entry: the port, then the network prefix (IPv4 in mapped form).
fn resource_key(r: &Protected) -> Key<ResourceKey> {
    let (addr, bits) = match r.net {
        ipnet::IpNet::V4(n) => (
            v4_mapped(n.network().octets()),
            V4_MAPPED_PREFIX_BITS + u32::from(n.prefix_len()),
        ),
        ipnet::IpNet::V6(n) => (n.network().octets(), u32::from(n.prefix_len())),
    };
    Key::new(
        PORT_PREFIX_BITS + bits,
        ResourceKey {
            port: r.port.to_be_bytes(),
            addr,
        },
    )
}

/// Writes the kernel field offsets the connect hooks use to capture the executable.
fn write_offsets(ebpf: &mut Ebpf) -> Result<(), RedirectError> {
    let map_err = |source| RedirectError::Map {
        map: maps::OFFSETS,
        source,
    };
    let mut offsets: Array<_, pam_common::TaskOffsets> = Array::try_from(
        ebpf.map_mut(maps::OFFSETS)
            .ok_or(map_err(aya::maps::MapError::InvalidName {
                name: maps::OFFSETS.into(),
            }))?,
    )
    .map_err(map_err)?;
    offsets.set(0, btf::task_offsets(), 0).map_err(map_err)
}

/// Fills `PAM_GOVERNED` with the governed cgroups' ids (new in before stale out) and
/// returns the bitmask of their depths below the cgroup2 root.
fn write_governed(ebpf: &mut Ebpf, cfg: &Config) -> Result<u32, RedirectError> {
    let map_err = |source| RedirectError::Map {
        map: maps::GOVERNED,
        source,
    };
    let root = cgroup::cgroup2_root().map_err(KernelError::from)?;
    let mut wanted = Vec::new();
    let mut levels = 0u32;
    for g in &cfg.governed {
        let id = cgroup::id(&g.path).map_err(|source| RedirectError::Cgroup {
            path: g.path.display().to_string(),
            source,
        })?;
        let depth = g
            .path
            .strip_prefix(&root)
            .map(|rel| rel.components().count())
            .unwrap_or(0);
        if depth >= 32 {
            return Err(RedirectError::Cgroup {
                path: g.path.display().to_string(),
                source: std::io::Error::other("more than 31 levels below the cgroup2 root"),
            });
        }
        levels |= 1 << depth;
        wanted.push(id);
    }
    let mut governed: HashMap<_, u64, u32> = HashMap::try_from(
        ebpf.map_mut(maps::GOVERNED)
            .ok_or(map_err(aya::maps::MapError::InvalidName {
                name: maps::GOVERNED.into(),
            }))?,
    )
    .map_err(map_err)?;
    for id in &wanted {
        governed.insert(id, 1, 0).map_err(map_err)?;
    }
    let existing: Vec<u64> = governed.keys().filter_map(Result::ok).collect();
    for id in existing {
        if !wanted.contains(&id) {
            governed.remove(&id).map_err(map_err)?;
        }
    }
    Ok(levels)
}

/// Writes the settings with a new epoch (the previous one plus one) and returns it.
fn write_settings(
    ebpf: &mut Ebpf,
    cfg: &Config,
    netns_cookie: u64,
    governed_levels: u32,
) -> Result<u32, RedirectError> {
    let map_err = |source| RedirectError::Map {
        map: maps::SETTINGS,
        source,
    };
    let mut settings: Array<_, Settings> = Array::try_from(ebpf.map_mut(maps::SETTINGS).ok_or(
        map_err(aya::maps::MapError::InvalidName {
            name: maps::SETTINGS.into(),
        }),
    )?)
    .map_err(map_err)?;
    let previous = settings.get(&0, 0).map(|s| s.epoch).unwrap_or(0);
    let epoch = match previous.wrapping_add(1) {
        0 => 1,
        e => e,
    };
    let value = Settings {
        proxy_addr6: cfg.listener.ipv6.octets(),
        proxy_addr4: cfg.listener.ipv4.octets(),
        proxy_port: cfg.listener.port.to_be_bytes(),
        configured: 1,
        agent_tgid: std::process::id(),
        epoch,
        netns_cookie,
        governed_levels,
        pad: 0,
    };
    settings.set(0, value, 0).map_err(map_err)?;
    Ok(epoch)
}

/// Puts the listening sockets into `PAM_LISTENERS`, where sk_lookup and the connect
/// hooks look for them. A start that cannot do this must not run: governed
/// connections would all be refused.
fn register_listeners(ebpf: &mut Ebpf, fds: &ListenerFds<'_>) -> Result<(), RedirectError> {
    let map = ebpf.map(maps::LISTENERS).ok_or(RedirectError::Map {
        map: maps::LISTENERS,
        source: aya::maps::MapError::InvalidName {
            name: maps::LISTENERS.into(),
        },
    })?;
    let Map::SockMap(data) = map else {
        return Err(RedirectError::Map {
            map: maps::LISTENERS,
            source: aya::maps::MapError::InvalidMapType { map_type: 0 },
        });
    };
    let map_fd = data.fd().as_fd();
    listener::register(map_fd, LISTENER_V4, fds.v4).map_err(|source| RedirectError::Listener {
        what: "registering the IPv4 listener in the sockmap",
        source,
    })?;
    if let Some(v6) = fds.v6 {
        listener::register(map_fd, LISTENER_V6, v6).map_err(|source| RedirectError::Listener {
            what: "registering the IPv6 listener in the sockmap",
            source,
        })?;
    }
    Ok(())
}

/// Loads sk_lookup and attaches it to the agent's own network namespace (pinned).
fn attach_sk_lookup(
    ebpf: &mut Ebpf,
    layout: &pins::Layout,
    generation: pins::Generation,
) -> Result<(), RedirectError> {
    let name = programs::SK_LOOKUP;
    let err = |action, source| RedirectError::Program {
        action,
        program: name,
        feature: "sk_lookup, Linux 5.9+",
        source: Box::new(source),
    };
    let netns = File::open("/proc/self/ns/net").map_err(|source| RedirectError::Listener {
        what: "opening this network namespace",
        source,
    })?;
    let ino = netns.metadata().map(|m| m.ino()).unwrap_or(0);
    let prog: &mut SkLookup = ebpf
        .program_mut(name)
        .ok_or(aya::programs::ProgramError::UnexpectedProgramType)
        .and_then(|p| p.try_into())
        .map_err(|e| err("load", e))?;
    prog.load().map_err(|e| err("load", e))?;
    let id = prog.attach(&netns).map_err(|e| err("attach", e))?;
    let link = FdLink::from(prog.take_link(id).map_err(|e| err("attach", e))?);
    pin_link(link, &layout.netns_link(ino, name, generation), || {
        format!("link of {name} to network namespace {ino}")
    })
}

fn pin_link(link: FdLink, path: &Path, what: impl FnOnce() -> String) -> Result<(), RedirectError> {
    // Dropping the PinnedLink closes our fd; the pin keeps it attached.
    link.pin(path).map(drop).map_err(|e| RedirectError::Pin {
        what: what(),
        path: path.display().to_string(),
        source: std::io::Error::other(e),
    })
}

fn take_protected(
    ebpf: &mut Ebpf,
) -> Result<LpmTrie<MapData, ResourceKey, ResourceValue>, RedirectError> {
    let map_err = |source| RedirectError::Map {
        map: maps::PROTECTED,
        source,
    };
    let map = ebpf
        .take_map(maps::PROTECTED)
        .ok_or(map_err(aya::maps::MapError::InvalidName {
            name: maps::PROTECTED.into(),
        }))?;
    LpmTrie::try_from(map).map_err(map_err)
}

fn sync_protected(
    trie: &mut LpmTrie<MapData, ResourceKey, ResourceValue>,
    protected: &[Protected],
) -> Result<(), RedirectError> {
    let map_err = |source| RedirectError::Map {
        map: maps::PROTECTED,
        source,
    };
    let wanted: Vec<(Key<ResourceKey>, ResourceValue)> = protected
        .iter()
        .map(|p| {
            (
                resource_key(p),
                ResourceValue {
                    resource_id: p.resource_id,
                },
            )
        })
        .collect();
    // New entries in before stale ones out: a resource kept across a restart or a new
    // resolution is never briefly unprotected.
    for (key, value) in &wanted {
        trie.insert(key, value, 0).map_err(map_err)?;
    }
    let existing: Vec<Key<ResourceKey>> = trie.keys().filter_map(Result::ok).collect();
    for key in existing {
        let keep = wanted
            .iter()
            .any(|(w, _)| w.prefix_len() == key.prefix_len() && w.data() == key.data());
        if !keep {
            trie.remove(&key).map_err(map_err)?;
        }
    }
    Ok(())
}

/// What the pinned protected-resource map holds (for `status`: what the kernel
/// enforces, not what the config says), sorted.
pub fn protected_entries(pin_dir: &Path) -> Result<Vec<Protected>, RedirectError> {
    let map_err = |source| RedirectError::Map {
        map: maps::PROTECTED,
        source,
    };
    let path = pins::map_path(pin_dir, maps::PROTECTED);
    if !path.exists() {
        return Ok(Vec::new());
    }
    let data = MapData::from_pin(&path).map_err(map_err)?;
    let trie: LpmTrie<MapData, ResourceKey, ResourceValue> =
        LpmTrie::try_from(Map::LpmTrie(data)).map_err(map_err)?;
    let mut out = Vec::new();
    for entry in trie.iter() {
        let (key, value) = entry.map_err(map_err)?;
        if let Some(p) = entry_of(&key, value) {
            out.push(p);
        }
    }
    out.sort();
    Ok(out)
}

/// The entry a trie key and value stand for (the inverse of [`resource_key`]).
fn entry_of(key: &Key<ResourceKey>, value: ResourceValue) -> Option<Protected> {
    let data = key.data();
    let bits = key.prefix_len().checked_sub(PORT_PREFIX_BITS)?;
    let net = match as_v4(&data.addr) {
        Some(v4) if bits >= V4_MAPPED_PREFIX_BITS => ipnet::IpNet::V4(
            ipnet::Ipv4Net::new(Ipv4Addr::from(v4), (bits - V4_MAPPED_PREFIX_BITS) as u8).ok()?,
        ),
        _ => ipnet::IpNet::V6(ipnet::Ipv6Net::new(Ipv6Addr::from(data.addr), bits as u8).ok()?),
    };
    Some(Protected {
        net,
        port: u16::from_be_bytes(data.port),
        resource_id: value.resource_id,
    })
}

fn take_hash<K: aya::Pod, V: aya::Pod>(
    ebpf: &mut Ebpf,
    name: &'static str,
) -> Result<HashMap<MapData, K, V>, RedirectError> {
    let map = ebpf.take_map(name).ok_or(RedirectError::Map {
        map: name,
        source: aya::maps::MapError::InvalidName { name: name.into() },
    })?;
    HashMap::try_from(map).map_err(|source| RedirectError::Map { map: name, source })
}

fn load_program(
    ebpf: &mut Ebpf,
    name: &'static str,
    kind: Kind,
    feature: &'static str,
) -> Result<(), RedirectError> {
    let err = |source| RedirectError::Program {
        action: "load",
        program: name,
        feature,
        source: Box::new(source),
    };
    let prog = ebpf
        .program_mut(name)
        .ok_or_else(|| err(aya::programs::ProgramError::UnexpectedProgramType))?;
    match kind {
        Kind::Addr => {
            let p: &mut CgroupSockAddr = prog.try_into().map_err(err)?;
            p.load().map_err(err)
        }
        Kind::Ops => {
            let p: &mut SockOps = prog.try_into().map_err(err)?;
            p.load().map_err(err)
        }
        Kind::Release => {
            let p: &mut CgroupSock = prog.try_into().map_err(err)?;
            p.load().map_err(err)
        }
    }
}

fn attach_program(
    ebpf: &mut Ebpf,
    name: &'static str,
    kind: Kind,
    feature: &'static str,
    cgroup: &File,
) -> Result<FdLink, RedirectError> {
    let err = |source| RedirectError::Program {
        action: "attach",
        program: name,
        feature,
        source: Box::new(source),
    };
    let link_err = |e: aya::programs::links::LinkError| {
        err(aya::programs::ProgramError::IOError(std::io::Error::other(
            e,
        )))
    };
    let prog = ebpf
        .program_mut(name)
        .ok_or_else(|| err(aya::programs::ProgramError::UnexpectedProgramType))?;
    // Link-based cgroup attachment (bpf_link_create) always stacks with other links:
    // other software's programs keep working and the next generation can attach before
    // this one is removed. The kernel refuses the legacy ALLOW_MULTI flag on links, so
    // the mode passed is the default, which maps to no flags.
    let mode = CgroupAttachMode::Single;
    match kind {
        Kind::Addr => {
            let p: &mut CgroupSockAddr = prog.try_into().map_err(err)?;
            let id = p.attach(cgroup, mode).map_err(err)?;
            FdLink::try_from(p.take_link(id).map_err(err)?).map_err(link_err)
        }
        Kind::Ops => {
            let p: &mut SockOps = prog.try_into().map_err(err)?;
            let id = p.attach(cgroup, mode).map_err(err)?;
            FdLink::try_from(p.take_link(id).map_err(err)?).map_err(link_err)
        }
        Kind::Release => {
            let p: &mut CgroupSock = prog.try_into().map_err(err)?;
            let id = p.attach(cgroup, mode).map_err(err)?;
            FdLink::try_from(p.take_link(id).map_err(err)?).map_err(link_err)
        }
    }
}

/// Forwards aya-log records from the kernel programs into the agent's log.
fn spawn_kernel_log(logger: aya_log::EbpfLogger<&'static dyn log::Log>) {
    let Ok(handle) = tokio::runtime::Handle::try_current() else {
        return;
    };
    handle.spawn(async move {
        // SAFETY: the logger owns its ring buffer's fd, which stays open and the same
        // for as long as the AsyncFd (which owns the logger) lives.
        let registered = unsafe {
            tokio::io::unix::AsyncFd::register_with_interest(logger, tokio::io::Interest::READABLE)
        };
        let Ok(mut fd) = registered else {
            return;
        };
        loop {
            let Ok(mut guard) = fd.readable_mut().await else {
                return;
            };
            guard.get_inner_mut().flush();
            guard.clear_ready();
        }
    });
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn resource_keys_put_port_then_prefix_and_read_back() {
        let r = Protected {
            net: "10.1.0.0/16".parse().unwrap(),
            port: 5432,
            resource_id: 3,
        };
        let k = resource_key(&r);
        assert_eq!(k.prefix_len(), 16 + 96 + 16);
        assert_eq!(k.data().port, 5432u16.to_be_bytes());
        assert_eq!(as_v4(&k.data().addr), Some([10, 1, 0, 0]));
        assert_eq!(entry_of(&k, ResourceValue { resource_id: 3 }), Some(r));

        let r6 = Protected {
            net: "fd00:1::/64".parse().unwrap(),
            ..r
        };
        let k6 = resource_key(&r6);
        assert_eq!(k6.prefix_len(), 16 + 64);
        assert_eq!(entry_of(&k6, ResourceValue { resource_id: 3 }), Some(r6));
    }

    #[test]
    fn destination_keeps_the_family_the_worker_used() {
        let mut rec = ConnectRecord {
            cgroup_id: 1,
            pid_tgid: 0,
            uid_gid: 0,
            netns_cookie: 0,
            exe_ino: 0,
            orig_addr: v4_mapped([10, 0, 0, 2]),
            orig_port: 7000u16.to_be_bytes(),
            family: AF_INET,
            resource_id: 0,
            comm: [0; 16],
            epoch: 1,
            exe_dev: 0,
            mnt_ns: 0,
            auid: pam_common::AUID_UNSET,
        };
        assert_eq!(destination(&rec), "10.0.0.2:7000".parse().unwrap());
        rec.family = pam_common::AF_INET6;
        let d = destination(&rec);
        assert_eq!(d, "[::ffff:10.0.0.2]:7000".parse().unwrap());
        let red = Redirected {
            destination: d,
            resource_id: 0,
            captured: Captured {
                pid: 0,
                tid: 0,
                uid: 0,
                gid: 0,
                cgroup_id: 0,
                comm: [0; 16],
                exe: None,
                mnt_ns: 0,
                auid: None,
            },
        };
        assert_eq!(red.upstream(), "10.0.0.2:7000".parse().unwrap());
    }
}
