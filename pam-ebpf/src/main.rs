//! Kernel side of pam-agent: cgroup programs that send governed workers' TCP connects
//! to protected resources into the agent's local proxy, and remember who connected.
//!
//! Attached to each governed cgroup:
//! - `connect4` / `connect6`: a TCP connect to a protected (address, port) is rewritten
//!   to the agent's listener; the original destination and the caller (pid, uid, cgroup,
//!   comm) are stored by socket cookie in `PAM_CONNECTS`.
//! - `sock_ops` (TCP_CONNECT_CB, before the SYN): maps the socket's local address to its
//!   cookie in `PAM_PEERS`, so the agent can find the record of each accepted peer.
//! - `getpeername4` / `getpeername6`: the worker sees the original peer, not the proxy.
//! - `sock_release`: drops the socket's record.
//!
//! Every entry point is a thin wrapper around a `try_` function; anything that goes
//! wrong for a protected destination refuses the connect (fail closed).
#![no_std]
#![no_main]

use aya_ebpf::{
    EbpfContext,
    bindings::{bpf_sock_addr, bpf_sock_ops},
    helpers::{
        bpf_get_current_cgroup_id, bpf_get_current_comm, bpf_get_current_pid_tgid,
        bpf_get_current_uid_gid, generated::bpf_get_socket_cookie,
    },
    macros::{cgroup_sock, cgroup_sock_addr, map, sock_ops},
    maps::{Array, HashMap, LpmTrie, lpm_trie::Key},
    programs::{SockAddrContext, SockContext, SockOpsContext},
};
use aya_log_ebpf::error;
use core::ptr::{addr_of, addr_of_mut, read_volatile, write_volatile};
use pam_common::{
    AF_INET, AF_INET6, ConnectRecord, MAX_CONNECTS, MAX_PEERS, MAX_PROTECTED, PORT_PREFIX_BITS,
    PeerKey, ResourceKey, ResourceValue, Settings, as_v4, v4_mapped,
};

/// Verdicts of cgroup sock_addr programs.
const ALLOW: i32 = 1;
const REFUSE: i32 = 0;

const SOCK_STREAM: u32 = 1;
const BPF_SOCK_OPS_TCP_CONNECT_CB: u32 = 3;
/// Map update flag: only replace an existing entry.
const BPF_EXIST: u64 = 2;

#[map(name = "PAM_PROTECTED")]
static PROTECTED: LpmTrie<ResourceKey, ResourceValue> = LpmTrie::pinned(MAX_PROTECTED, 0);

#[map(name = "PAM_SETTINGS")]
static SETTINGS: Array<Settings> = Array::pinned(1, 0);

// Plain preallocated hashes (cheaper inserts than LRU): entries leave when the socket is
// released, and a full map refuses new governed connects rather than evicting a live one.
#[map(name = "PAM_CONNECTS")]
static CONNECTS: HashMap<u64, ConnectRecord> = HashMap::pinned(MAX_CONNECTS, 0);

#[map(name = "PAM_PEERS")]
static PEERS: HashMap<PeerKey, u64> = HashMap::pinned(MAX_PEERS, 0);

/// What a connect hook decided to do with the destination it was given.
enum Decision {
    /// Not ours to touch: leave the connect alone.
    PassThrough,
    /// Rewrite the destination to the agent's listener.
    Redirect { addr: [u8; 16], port: [u8; 2] },
}

#[cgroup_sock_addr(connect4)]
pub fn pam_connect4(ctx: SockAddrContext) -> i32 {
    match try_connect4(&ctx) {
        Ok(()) => ALLOW,
        Err(()) => REFUSE,
    }
}

fn try_connect4(ctx: &SockAddrContext) -> Result<(), ()> {
    let sa = ctx.sock_addr;
    // SAFETY: the verifier grants read access to these context fields.
    let (sock_type, ip4, port) = unsafe {
        (
            read_volatile(addr_of!((*sa).type_)),
            read_volatile(addr_of!((*sa).user_ip4)),
            read_volatile(addr_of!((*sa).user_port)),
        )
    };
    if sock_type != SOCK_STREAM {
        return Ok(());
    }
    // user_ip4 holds the address in network order as stored in memory.
    let dst = v4_mapped(ip4.to_ne_bytes());
    let dport = port_bytes(port);
    match decide(ctx, dst, dport, AF_INET)? {
        Decision::PassThrough => Ok(()),
        Decision::Redirect { addr, port } => {
            let v4 = as_v4(&addr).ok_or(())?;
            // SAFETY: user_ip4 and user_port are writable in connect4.
            unsafe {
                write_volatile(addr_of_mut!((*sa).user_ip4), u32::from_ne_bytes(v4));
                write_volatile(addr_of_mut!((*sa).user_port), port_field(port));
            }
            Ok(())
        }
    }
}

#[cgroup_sock_addr(connect6)]
pub fn pam_connect6(ctx: SockAddrContext) -> i32 {
    match try_connect6(&ctx) {
        Ok(()) => ALLOW,
        Err(()) => REFUSE,
    }
}

fn try_connect6(ctx: &SockAddrContext) -> Result<(), ()> {
    let sa = ctx.sock_addr;
    // SAFETY: the verifier grants read access to these context fields.
    let (sock_type, ip6, port) = unsafe {
        (
            read_volatile(addr_of!((*sa).type_)),
            read_ip6(sa),
            read_volatile(addr_of!((*sa).user_port)),
        )
    };
    if sock_type != SOCK_STREAM {
        return Ok(());
    }
    let dport = port_bytes(port);
    match decide(ctx, ip6, dport, AF_INET6)? {
        Decision::PassThrough => Ok(()),
        Decision::Redirect { addr, port } => {
            // SAFETY: user_ip6 and user_port are writable in connect6.
            unsafe {
                write_ip6(sa, addr);
                write_volatile(addr_of_mut!((*sa).user_port), port_field(port));
            }
            Ok(())
        }
    }
}

/// The core of both connect hooks: is (dst, port) protected, and if so record the
/// caller and say where to send it.
fn decide(
    ctx: &SockAddrContext,
    dst: [u8; 16],
    dport: [u8; 2],
    family: u16,
) -> Result<Decision, ()> {
    let key = Key::new(
        PORT_PREFIX_BITS + 128,
        ResourceKey {
            port: dport,
            addr: dst,
        },
    );
    let Some(resource) = PROTECTED.get(&key) else {
        return Ok(Decision::PassThrough);
    };
    let resource_id = resource.resource_id;
    let Some(settings) = SETTINGS.get(0) else {
        return Err(());
    };
    let pid_tgid = bpf_get_current_pid_tgid();
    if settings.agent_tgid != 0 && (pid_tgid >> 32) as u32 == settings.agent_tgid {
        // The agent's own upstream connection.
        return Ok(Decision::PassThrough);
    }
    if settings.configured == 0 {
        return Err(());
    }
    // A real IPv6 destination goes to the IPv6 listener; IPv4 and `::ffff:` ones go to
    // the IPv4 listener, in the form the socket can use.
    let target = if as_v4(&dst).is_some() {
        v4_mapped(settings.proxy_addr4)
    } else {
        settings.proxy_addr6
    };
    let record = ConnectRecord {
        cgroup_id: unsafe { bpf_get_current_cgroup_id() },
        pid_tgid,
        uid_gid: bpf_get_current_uid_gid(),
        orig_addr: dst,
        orig_port: dport,
        family,
        resource_id,
        comm: bpf_get_current_comm().unwrap_or([0; 16]),
        local_addr: [0; 16],
        local_port: [0; 2],
        pad: [0; 6],
    };
    // SAFETY: the helper only reads the socket behind a valid program context.
    let cookie = unsafe { bpf_get_socket_cookie(ctx.as_ptr()) };
    if CONNECTS.insert(&cookie, &record, 0).is_err() {
        error!(ctx, "pam: cannot record connect (map full?); refusing");
        return Err(());
    }
    Ok(Decision::Redirect {
        addr: target,
        port: settings.proxy_port,
    })
}

#[sock_ops]
pub fn pam_sock_ops(ctx: SockOpsContext) -> u32 {
    let _ = try_sock_ops(&ctx);
    0
}

fn try_sock_ops(ctx: &SockOpsContext) -> Result<(), ()> {
    let ops = ctx.ops;
    // Read every field up front at constant offsets: branch-dependent loads of local_ip4
    // vs local_ip6 get merged by LLVM into a modified ctx pointer the verifier rejects.
    // SAFETY: the verifier grants read access to these context fields.
    let (op, family, ip4, ip6, lport) = unsafe {
        (
            read_volatile(addr_of!((*ops).op)),
            read_volatile(addr_of!((*ops).family)),
            read_volatile(addr_of!((*ops).local_ip4)),
            read_ops_ip6(ops),
            read_volatile(addr_of!((*ops).local_port)),
        )
    };
    if op != BPF_SOCK_OPS_TCP_CONNECT_CB {
        return Ok(());
    }
    // SAFETY: the helper only reads the socket behind a valid program context.
    let cookie = unsafe { bpf_get_socket_cookie(ctx.as_ptr()) };
    // Only sockets the connect hooks redirected.
    let Some(record) = CONNECTS.get_ptr(&cookie) else {
        return Ok(());
    };
    // SAFETY: the pointer comes from a successful map lookup.
    let mut record = unsafe { *record };
    let addr = if family == AF_INET as u32 {
        v4_mapped(ip4.to_ne_bytes())
    } else {
        ip6
    };
    // local_port is in host order here.
    let key = peer_key(addr, lport);
    // Remember the key in the record so sock_release can drop an unconsumed entry.
    record.local_addr = key.addr;
    record.local_port = key.port;
    CONNECTS
        .insert(&cookie, &record, BPF_EXIST)
        .map_err(|_| ())?;
    PEERS.insert(&key, &cookie, 0).map_err(|_| ())
}

/// The key under which the agent finds a socket: its local address and port (host order).
fn peer_key(addr: [u8; 16], port_host_order: u32) -> PeerKey {
    PeerKey {
        addr,
        port: (port_host_order as u16).to_be_bytes(),
        pad: [0; 2],
    }
}

#[cgroup_sock_addr(getpeername4)]
pub fn pam_getpeername4(ctx: SockAddrContext) -> i32 {
    let sa = ctx.sock_addr;
    // SAFETY: the helper only reads the socket behind a valid program context.
    let cookie = unsafe { bpf_get_socket_cookie(ctx.as_ptr()) };
    if let Some(record) = CONNECTS.get_ptr(&cookie) {
        // SAFETY: the pointer comes from a successful map lookup.
        let record = unsafe { *record };
        if let Some(v4) = as_v4(&record.orig_addr) {
            // SAFETY: user_ip4 and user_port are writable in getpeername4.
            unsafe {
                write_volatile(addr_of_mut!((*sa).user_ip4), u32::from_ne_bytes(v4));
                write_volatile(addr_of_mut!((*sa).user_port), port_field(record.orig_port));
            }
        }
    }
    ALLOW
}

#[cgroup_sock_addr(getpeername6)]
pub fn pam_getpeername6(ctx: SockAddrContext) -> i32 {
    let sa = ctx.sock_addr;
    // SAFETY: the helper only reads the socket behind a valid program context.
    let cookie = unsafe { bpf_get_socket_cookie(ctx.as_ptr()) };
    if let Some(record) = CONNECTS.get_ptr(&cookie) {
        // SAFETY: the pointer comes from a successful map lookup; user_ip6 and
        // user_port are writable in getpeername6.
        unsafe {
            let record = *record;
            write_ip6(sa, record.orig_addr);
            write_volatile(addr_of_mut!((*sa).user_port), port_field(record.orig_port));
        }
    }
    ALLOW
}

#[cgroup_sock(sock_release)]
pub fn pam_sock_release(ctx: SockContext) -> i32 {
    // SAFETY: the helper only reads the socket behind a valid program context.
    let cookie = unsafe { bpf_get_socket_cookie(ctx.as_ptr()) };
    let Some(record) = CONNECTS.get_ptr(&cookie) else {
        return 1; // not a redirected socket
    };
    // SAFETY: the pointer comes from a successful map lookup.
    let (addr, port) = unsafe { ((*record).local_addr, (*record).local_port) };
    // A peer entry the agent never consumed (the connect failed, or the agent was down).
    let key = PeerKey {
        addr,
        port,
        pad: [0; 2],
    };
    if let Some(owner) = PEERS.get_ptr(&key)
        // SAFETY: the pointer comes from a successful map lookup.
        && unsafe { *owner } == cookie
    {
        let _ = PEERS.remove(&key);
    }
    let _ = CONNECTS.remove(&cookie);
    1
}

/// `user_port` holds the port in network order in its low 16 bits.
fn port_bytes(field: u32) -> [u8; 2] {
    (field as u16).to_ne_bytes()
}

fn port_field(port: [u8; 2]) -> u32 {
    u16::from_ne_bytes(port) as u32
}

unsafe fn read_ip6(sa: *mut bpf_sock_addr) -> [u8; 16] {
    let mut out = [0u8; 16];
    let mut i = 0;
    while i < 4 {
        // SAFETY: word-sized reads of user_ip6 are what the verifier allows.
        let w = unsafe { read_volatile(addr_of!((*sa).user_ip6[i])) }.to_ne_bytes();
        out[i * 4..i * 4 + 4].copy_from_slice(&w);
        i += 1;
    }
    out
}

unsafe fn write_ip6(sa: *mut bpf_sock_addr, addr: [u8; 16]) {
    let mut i = 0;
    while i < 4 {
        let w = u32::from_ne_bytes([
            addr[i * 4],
            addr[i * 4 + 1],
            addr[i * 4 + 2],
            addr[i * 4 + 3],
        ]);
        // SAFETY: word-sized writes of user_ip6 are what the verifier allows.
        unsafe { write_volatile(addr_of_mut!((*sa).user_ip6[i]), w) };
        i += 1;
    }
}

unsafe fn read_ops_ip6(ops: *mut bpf_sock_ops) -> [u8; 16] {
    let mut out = [0u8; 16];
    let mut i = 0;
    while i < 4 {
        // SAFETY: word-sized reads of local_ip6 are what the verifier allows.
        let w = unsafe { read_volatile(addr_of!((*ops).local_ip6[i])) }.to_ne_bytes();
        out[i * 4..i * 4 + 4].copy_from_slice(&w);
        i += 1;
    }
    out
}

#[cfg(not(test))]
#[panic_handler]
fn panic(_info: &core::panic::PanicInfo) -> ! {
    loop {}
}

#[unsafe(link_section = "license")]
#[unsafe(no_mangle)]
static LICENSE: [u8; 4] = *b"GPL\0";
