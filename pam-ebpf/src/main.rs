//! Kernel side of pam-agent: cgroup programs that send governed workers' TCP connects
//! to protected resources into the agent's local proxy, and remember who connected.
//!
//! A connect is governed when the socket was created in a governed cgroup or the
//! calling task is in one (a socket made before joining, or passed in over
//! SCM_RIGHTS, is governed in a governed task's hands). cgroup programs run by the
//! socket's cgroup, so:
//!
//! Attached to each governed cgroup (runs for sockets created there):
//! - `connect4` / `connect6`: governed whoever calls.
//!
//! Attached to the cgroup2 root (runs for every socket; the socket's own cgroup
//! programs run first):
//! - `connect4_task` / `connect6_task`: governed when the calling task's cgroup, or an
//!   ancestor of it, is in `PAM_GOVERNED`.
//! - `getpeername4/6`, `sock_ops`, `sock_release` (below), so redirected sockets are
//!   served wherever they were made.
//!
//! In both, a TCP connect to a protected (address, port) is rewritten
//!   to the agent's listener; the original destination and the caller (pid, uid, cgroup,
//!   comm) are stored by socket cookie in `PAM_CONNECTS`.
//!   A connect from another network namespace, or made while the agent's listener is
//!   absent from `PAM_LISTENERS`, is refused instead (nothing else may receive it).
//! - `sock_ops`: asks for state callbacks on redirected sockets and drops the record
//!   when the attempt ends (TCP_CLOSE), so a record names one live connection attempt.
//! - `getpeername4` / `getpeername6`: the worker sees the original peer, not the proxy.
//! - `sock_release`: drops the socket's record.
//!
//! Attached to the agent's network namespace:
//! - `sk_lookup`: a connection to the redirect target (listener address and port) is
//!   delivered to the agent's socket from `PAM_LISTENERS`, or dropped when it is absent,
//!   whoever else has bound that port.
//!
//! Attached to the agent's relay sockhash (see [`relay`]):
//! - `pam_relay`: sk_skb stream verdict; a relayed socket's bytes go out of its peer.
//!
//! Every entry point is a thin wrapper around a `try_` function; anything that goes
//! wrong for a protected destination refuses the connect (fail closed).
#![no_std]
#![no_main]

mod relay;

use aya_ebpf::{
    EbpfContext,
    bindings::{
        BPF_SOCK_OPS_STATE_CB, BPF_SOCK_OPS_STATE_CB_FLAG, bpf_map_def,
        bpf_map_type::BPF_MAP_TYPE_SOCKMAP, bpf_sk_lookup, bpf_sock_addr,
    },
    cty::c_void,
    helpers::{
        bpf_get_current_cgroup_id, bpf_get_current_comm, bpf_get_current_pid_tgid,
        bpf_get_current_uid_gid, bpf_probe_read_kernel,
        generated::{
            bpf_get_current_ancestor_cgroup_id, bpf_get_current_task, bpf_get_netns_cookie,
            bpf_get_socket_cookie, bpf_map_lookup_elem, bpf_set_retval, bpf_sk_assign,
            bpf_sk_release,
        },
    },
    macros::{cgroup_sock, cgroup_sock_addr, map, sk_lookup, sock_ops},
    maps::{Array, HashMap, LpmTrie, lpm_trie::Key},
    programs::{SkLookupContext, SockAddrContext, SockContext, SockOpsContext},
};
use aya_log_ebpf::error;
use core::{
    cell::UnsafeCell,
    ptr::{addr_of, addr_of_mut, read_volatile, write_volatile},
};
use pam_common::{
    AF_INET, AF_INET6, AUID_UNSET, ConnectRecord, LISTENER_V4, LISTENER_V6, MAX_CONNECTS,
    MAX_GOVERNED, MAX_PROTECTED, PORT_PREFIX_BITS, ResourceKey, ResourceValue, Settings,
    TaskOffsets, as_v4, v4_mapped,
};

/// Verdicts of cgroup sock_addr programs.
const ALLOW: i32 = 1;
const REFUSE: i32 = 0;

/// Verdicts of sk_lookup programs.
const SK_PASS: u32 = 1;
const SK_DROP: u32 = 0;

const SOCK_STREAM: u32 = 1;
const IPPROTO_TCP: u32 = 6;
const IPPROTO_MPTCP: u32 = 262;
const BPF_SOCK_OPS_TCP_CONNECT_CB: u32 = 3;
const TCP_CLOSE: u32 = 7;
const ECONNREFUSED: i32 = 111;
/// Legacy map pinning: by name under the loader's pin path.
const PIN_BY_NAME: u32 = 1;

#[map(name = "PAM_PROTECTED")]
static PROTECTED: LpmTrie<ResourceKey, ResourceValue> = LpmTrie::pinned(MAX_PROTECTED, 0);

#[map(name = "PAM_SETTINGS")]
static SETTINGS: Array<Settings> = Array::pinned(1, 0);

/// Kernel field offsets for [`exe_identity`]. Filled by the agent from BTF.
#[map(name = "PAM_OFFSETS")]
static OFFSETS: Array<TaskOffsets> = Array::pinned(1, 0);

/// Governed cgroup ids (value unused). Filled by the agent.
#[map(name = "PAM_GOVERNED")]
static GOVERNED: HashMap<u64, u32> = HashMap::pinned(MAX_GOVERNED, 0);

// Plain preallocated hashes (cheaper inserts than LRU): entries leave when the socket is
// released, and a full map refuses new governed connects rather than evicting a live one.
#[map(name = "PAM_CONNECTS")]
static CONNECTS: HashMap<u64, ConnectRecord> = HashMap::pinned(MAX_CONNECTS, 0);

/// The agent's listening sockets. Defined by hand: aya-ebpf's `SockMap` has 4-byte
/// values, and only an 8-byte value lets userspace read a socket's cookie back
/// (`pam-agent status` proves with it that the agent itself holds the listener).
#[repr(transparent)]
struct ListenerMap(UnsafeCell<bpf_map_def>);

// SAFETY: the kernel owns the map; the program only passes its address to helpers.
unsafe impl Sync for ListenerMap {}

#[map(name = "PAM_LISTENERS")]
static LISTENERS: ListenerMap = ListenerMap(UnsafeCell::new(bpf_map_def {
    type_: BPF_MAP_TYPE_SOCKMAP,
    key_size: 4,
    value_size: 8,
    max_entries: 2,
    map_flags: 0,
    id: 0,
    pinning: PIN_BY_NAME,
}));

impl ListenerMap {
    /// Looks up a listener; the caller must release a non-null result.
    fn get(&self, index: u32) -> *mut c_void {
        // SAFETY: a lookup with a pointer to a valid key of the map's key size.
        unsafe { bpf_map_lookup_elem(self.0.get().cast(), addr_of!(index).cast()) }
    }

    /// Whether the agent's listener at `index` is alive (in the map).
    fn present(&self, index: u32) -> bool {
        let sk = self.get(index);
        if sk.is_null() {
            return false;
        }
        // SAFETY: `sk` is the referenced socket the lookup returned.
        unsafe { bpf_sk_release(sk) };
        true
    }
}

/// Which attachment a connect hook runs from.
#[derive(Clone, Copy)]
enum Scope {
    /// A governed cgroup's: the socket was created there, so the connect is governed.
    Socket,
    /// The root cgroup's: governed only if the calling task is in a governed cgroup.
    Task,
}

/// What a connect hook decided to do with the destination it was given.
enum Decision {
    /// Not ours to touch: leave the connect alone.
    PassThrough,
    /// Rewrite the destination to the agent's listener.
    Redirect { addr: [u8; 16], port: [u8; 2] },
}

#[cgroup_sock_addr(connect4)]
pub fn pam_connect4(ctx: SockAddrContext) -> i32 {
    match try_connect4(&ctx, Scope::Socket) {
        Ok(()) => ALLOW,
        Err(()) => REFUSE,
    }
}

#[cgroup_sock_addr(connect4)]
pub fn pam_connect4_task(ctx: SockAddrContext) -> i32 {
    match try_connect4(&ctx, Scope::Task) {
        Ok(()) => ALLOW,
        Err(()) => REFUSE,
    }
}

fn try_connect4(ctx: &SockAddrContext, scope: Scope) -> Result<(), ()> {
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
    match decide(ctx, scope, dst, dport, AF_INET)? {
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
    match try_connect6(&ctx, Scope::Socket) {
        Ok(()) => ALLOW,
        Err(()) => REFUSE,
    }
}

#[cgroup_sock_addr(connect6)]
pub fn pam_connect6_task(ctx: SockAddrContext) -> i32 {
    match try_connect6(&ctx, Scope::Task) {
        Ok(()) => ALLOW,
        Err(()) => REFUSE,
    }
}

fn try_connect6(ctx: &SockAddrContext, scope: Scope) -> Result<(), ()> {
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
    match decide(ctx, scope, ip6, dport, AF_INET6)? {
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
// Inlined: BPF calls take at most five arguments in registers.
#[inline(always)]
fn decide(
    ctx: &SockAddrContext,
    scope: Scope,
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
    if let Scope::Task = scope
        && !task_governed(settings.governed_levels)
    {
        return Ok(Decision::PassThrough);
    }
    if settings.configured == 0 {
        return Err(());
    }
    // The rewrite targets the loopback of the socket's own namespace: only the agent's
    // namespace has the agent there. Elsewhere, whoever listens would get the worker.
    // SAFETY: the helper only reads the socket behind a valid program context.
    let netns_cookie = unsafe { bpf_get_netns_cookie(ctx.as_ptr()) };
    if netns_cookie != settings.netns_cookie {
        return Err(());
    }
    // A real IPv6 destination goes to the IPv6 listener; IPv4 and `::ffff:` ones go to
    // the IPv4 listener, in the form the socket can use.
    let (target, index) = if as_v4(&dst).is_some() {
        (v4_mapped(settings.proxy_addr4), LISTENER_V4)
    } else {
        (settings.proxy_addr6, LISTENER_V6)
    };
    // No agent socket to deliver to (stopped, restarting, no IPv6 listener): refuse at
    // once, as a closed port would, rather than let the SYN be dropped by sk_lookup.
    if !LISTENERS.present(index) {
        // SAFETY: sets the errno connect() returns along with the refusal.
        unsafe { bpf_set_retval(-ECONNREFUSED) };
        return Err(());
    }
    let (exe_ino, exe_dev, mnt_ns) = exe_identity().unwrap_or((0, 0, 0));
    let record = ConnectRecord {
        cgroup_id: unsafe { bpf_get_current_cgroup_id() },
        pid_tgid,
        uid_gid: bpf_get_current_uid_gid(),
        netns_cookie,
        exe_ino,
        orig_addr: dst,
        orig_port: dport,
        family,
        resource_id,
        comm: bpf_get_current_comm().unwrap_or([0; 16]),
        epoch: settings.epoch,
        exe_dev,
        mnt_ns,
        auid: login_uid(),
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

/// The executable the calling task runs now, as the kernel knows it (inode, device of
/// its filesystem) and the task's mount namespace: facts a later exec, a bind mount or
/// a chosen `comm` cannot change. Err (recorded as unknown) if any read fails.
fn exe_identity() -> Result<(u64, u32, u32), i32> {
    let o = OFFSETS.get(0).ok_or(0)?;
    if o.valid == 0 {
        return Err(0);
    }
    // SAFETY: kernel memory is only read through bpf_probe_read_kernel, which checks
    // every address; a bad pointer gives an error, not a fault.
    unsafe {
        let task = bpf_get_current_task() as *const u8;
        let mm: *const u8 = read_at(task, o.task_mm)?;
        let file: *const u8 = read_at(mm, o.mm_exe_file)?;
        let inode: *const u8 = read_at(file, o.file_inode)?;
        let ino: u64 = read_at(inode, o.inode_ino)?;
        let sb: *const u8 = read_at(inode, o.inode_sb)?;
        let dev: u32 = read_at(sb, o.sb_dev)?;
        let nsproxy: *const u8 = read_at(task, o.task_nsproxy)?;
        let mnt_ns: *const u8 = read_at(nsproxy, o.nsproxy_mnt_ns)?;
        let inum: u32 = read_at(mnt_ns, o.mnt_ns_inum)?;
        Ok((ino, dev, inum))
    }
}

/// The calling task's audit login uid, as the kernel keeps it (the task cannot change
/// it once set without CAP_AUDIT_CONTROL); [`AUID_UNSET`] when unknown.
fn login_uid() -> u32 {
    let Some(o) = OFFSETS.get(0) else {
        return AUID_UNSET;
    };
    if o.task_loginuid == 0 {
        return AUID_UNSET;
    }
    // SAFETY: see exe_identity.
    unsafe {
        let task = bpf_get_current_task() as *const u8;
        read_at(task, o.task_loginuid).unwrap_or(AUID_UNSET)
    }
}

/// Reads a `T` at `base + offset` in kernel memory; a null base is an error.
unsafe fn read_at<T>(base: *const u8, offset: u32) -> Result<T, i32> {
    if base.is_null() {
        return Err(0);
    }
    // SAFETY: see exe_identity.
    unsafe { bpf_probe_read_kernel(base.wrapping_add(offset as usize).cast::<T>()) }
}

/// Is the calling task's cgroup, or its ancestor at one of the levels where governed
/// cgroups sit (bit N of `levels`: depth N below the root), a governed cgroup?
fn task_governed(levels: u32) -> bool {
    let mut level = 0;
    while level < 32 {
        if levels & (1 << level) != 0 {
            // SAFETY: plain helper call; 0 when the task is not that deep.
            let id = unsafe { bpf_get_current_ancestor_cgroup_id(level as i32) };
            if id != 0 && GOVERNED.get_ptr(&id).is_some() {
                return true;
            }
        }
        level += 1;
    }
    false
}

#[sock_ops]
pub fn pam_sock_ops(ctx: SockOpsContext) -> u32 {
    try_sock_ops(&ctx);
    0
}

/// A record stands for one connection attempt: ask for state callbacks on redirected
/// sockets before the SYN, and drop the record when the attempt or connection ends.
/// A socket whose connect failed keeps no record another connection could borrow.
fn try_sock_ops(ctx: &SockOpsContext) {
    let op = ctx.op();
    if op != BPF_SOCK_OPS_TCP_CONNECT_CB && op != BPF_SOCK_OPS_STATE_CB {
        return;
    }
    // SAFETY: the helper only reads the socket behind a valid program context.
    let cookie = unsafe { bpf_get_socket_cookie(ctx.as_ptr()) };
    if CONNECTS.get_ptr(&cookie).is_none() {
        return; // not a redirected socket
    }
    if op == BPF_SOCK_OPS_TCP_CONNECT_CB {
        let flags = ctx.cb_flags() | BPF_SOCK_OPS_STATE_CB_FLAG;
        if ctx.set_cb_flags(flags as i32).is_err() {
            // Without the callback the record could outlive its attempt: drop it now;
            // the agent then refuses the connection (fail closed).
            let _ = CONNECTS.remove(&cookie);
        }
    } else if ctx.arg(1) == TCP_CLOSE {
        let _ = CONNECTS.remove(&cookie);
    }
}

#[cgroup_sock_addr(getpeername4)]
pub fn pam_getpeername4(ctx: SockAddrContext) -> i32 {
    let sa = ctx.sock_addr;
    if let Some(record) = record_of(&ctx)
        && let Some(v4) = as_v4(&record.orig_addr)
    {
        // SAFETY: user_ip4 and user_port are writable in getpeername4.
        unsafe {
            write_volatile(addr_of_mut!((*sa).user_ip4), u32::from_ne_bytes(v4));
            write_volatile(addr_of_mut!((*sa).user_port), port_field(record.orig_port));
        }
    }
    ALLOW
}

#[cgroup_sock_addr(getpeername6)]
pub fn pam_getpeername6(ctx: SockAddrContext) -> i32 {
    let sa = ctx.sock_addr;
    if let Some(record) = record_of(&ctx) {
        // SAFETY: user_ip6 and user_port are writable in getpeername6.
        unsafe {
            write_ip6(sa, record.orig_addr);
            write_volatile(addr_of_mut!((*sa).user_port), port_field(record.orig_port));
        }
    }
    ALLOW
}

/// The connect record of the socket behind a getpeername: its own, or for an MPTCP
/// socket its first subflow's (the connect hook ran on the subflow).
fn record_of(ctx: &SockAddrContext) -> Option<ConnectRecord> {
    // SAFETY: the helper only reads the socket behind a valid program context.
    let cookie = unsafe { bpf_get_socket_cookie(ctx.as_ptr()) };
    if let Some(record) = CONNECTS.get_ptr(&cookie) {
        // SAFETY: the pointer comes from a successful map lookup.
        return Some(unsafe { *record });
    }
    // SAFETY: the verifier grants read access to this context field.
    let protocol = unsafe { read_volatile(addr_of!((*ctx.sock_addr).protocol)) };
    if protocol != IPPROTO_MPTCP {
        return None;
    }
    let o = OFFSETS.get(0)?;
    if o.mptcp_valid == 0 {
        return None;
    }
    // SAFETY: kernel memory read through bpf_probe_read_kernel only. The kernel's
    // context (struct bpf_sock_addr_kern) starts with the `struct sock *`.
    let subflow_cookie = unsafe {
        let sk: *const u8 = bpf_probe_read_kernel(ctx.as_ptr() as *const *const u8).ok()?;
        let first: *const u8 = read_at(sk, o.mptcp_first).ok()?;
        read_at::<u64>(first, o.sk_cookie).ok()?
    };
    // SAFETY: the pointer comes from a successful map lookup.
    CONNECTS
        .get_ptr(&subflow_cookie)
        .map(|record| unsafe { *record })
}

#[cgroup_sock(sock_release)]
pub fn pam_sock_release(ctx: SockContext) -> i32 {
    let sk = ctx.sock;
    // SAFETY: the verifier grants read access to these context fields.
    let (protocol, state) = unsafe {
        (
            read_volatile(addr_of!((*sk).protocol)),
            read_volatile(addr_of!((*sk).state)),
        )
    };
    // A TCP connection still open when its process lets go (a worker that sends and
    // exits) keeps its record until the connection reaches TCP_CLOSE (sock_ops
    // removes it then), so the agent can still attribute what was sent. Anything
    // else is over now.
    if protocol == IPPROTO_TCP && state != TCP_CLOSE {
        return 1;
    }
    // SAFETY: the helper only reads the socket behind a valid program context.
    let cookie = unsafe { bpf_get_socket_cookie(ctx.as_ptr()) };
    let _ = CONNECTS.remove(&cookie);
    1
}

#[sk_lookup]
pub fn pam_sk_lookup(ctx: SkLookupContext) -> u32 {
    try_sk_lookup(&ctx)
}

/// Delivers a TCP connection to the redirect target to the agent's own listener, or
/// drops it. Anything else is left to the normal lookup.
fn try_sk_lookup(ctx: &SkLookupContext) -> u32 {
    let l = ctx.lookup;
    // SAFETY: the verifier grants read access to these context fields.
    let (family, protocol, ip4, ip6, port) = unsafe {
        (
            read_volatile(addr_of!((*l).family)),
            read_volatile(addr_of!((*l).protocol)),
            read_volatile(addr_of!((*l).local_ip4)),
            read_lookup_ip6(l),
            read_volatile(addr_of!((*l).local_port)),
        )
    };
    if protocol != IPPROTO_TCP {
        return SK_PASS;
    }
    let Some(settings) = SETTINGS.get(0) else {
        return SK_PASS;
    };
    // local_port is in host order here.
    if settings.configured == 0 || port != u32::from(u16::from_be_bytes(settings.proxy_port)) {
        return SK_PASS;
    }
    let index = if family == u32::from(AF_INET) && ip4.to_ne_bytes() == settings.proxy_addr4 {
        LISTENER_V4
    } else if family == u32::from(AF_INET6) && ip6 == settings.proxy_addr6 {
        LISTENER_V6
    } else {
        return SK_PASS;
    };
    let sk = LISTENERS.get(index);
    if sk.is_null() {
        return SK_DROP; // the agent's socket is absent: nobody else gets it
    }
    // SAFETY: `sk` is the referenced socket the lookup returned; it is released below.
    let assigned = unsafe { bpf_sk_assign(ctx.as_ptr(), sk, 0) };
    // SAFETY: as above.
    unsafe { bpf_sk_release(sk) };
    if assigned == 0 { SK_PASS } else { SK_DROP }
}

unsafe fn read_lookup_ip6(l: *mut bpf_sk_lookup) -> [u8; 16] {
    let mut out = [0u8; 16];
    let mut i = 0;
    while i < 4 {
        // SAFETY: word-sized reads of local_ip6 are what the verifier allows.
        let w = unsafe { read_volatile(addr_of!((*l).local_ip6[i])) }.to_ne_bytes();
        out[i * 4..i * 4 + 4].copy_from_slice(&w);
        i += 1;
    }
    out
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

#[cfg(not(test))]
#[panic_handler]
fn panic(_info: &core::panic::PanicInfo) -> ! {
    loop {}
}

#[unsafe(link_section = "license")]
#[unsafe(no_mangle)]
static LICENSE: [u8; 4] = *b"GPL\0";
