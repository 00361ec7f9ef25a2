//! In-kernel relay of `tcp` resources: once the agent has put a session's two sockets
//! (worker side and resource side) into `PAM_RELAY` and named each one's peer in
//! `PAM_RELAY_PEERS`, every segment a socket receives is sent out of its peer by the
//! kernel, and the payload never reaches userspace.
//!
//! The agent keeps both sockets open, watches them for their end (FIN, RST) and
//! forwards half-closes itself: the verdict sees only payload. A socket leaves the
//! sockhash when it closes, so when the agent goes nothing is relayed any more.

use aya_ebpf::{
    EbpfContext,
    helpers::generated::bpf_get_socket_cookie,
    macros::{map, stream_verdict},
    maps::{HashMap, SockHash},
    programs::SkBuffContext,
};
use pam_common::MAX_RELAYED;

/// Verdicts of sk_skb programs.
const SK_DROP: u32 = 0;

#[map(name = "PAM_RELAY")]
static RELAY: SockHash<u64> = SockHash::with_max_entries(MAX_RELAYED, 0);

#[map(name = "PAM_RELAY_PEERS")]
static RELAY_PEERS: HashMap<u64, u64> = HashMap::with_max_entries(MAX_RELAYED, 0);

#[stream_verdict]
pub fn pam_relay(ctx: SkBuffContext) -> u32 {
    // A FIN comes as a segment without payload. Sent on, the kernel would take the
    // empty write for a broken pipe and stop the peer's relay; the agent forwards the
    // half-close itself once the payload is all out.
    if ctx.len() == 0 {
        return SK_DROP;
    }
    // SAFETY: the helper only reads the socket behind a valid program context.
    let cookie = unsafe { bpf_get_socket_cookie(ctx.as_ptr()) };
    // SAFETY: a plain lookup; the value is copied out at once.
    let Some(peer) = (unsafe { RELAY_PEERS.get(&cookie) }).copied() else {
        // Not a pair the agent set up (it names the peers before it adds the
        // sockets): never deliver such bytes anywhere.
        return SK_DROP;
    };
    // Egress of the peer (no BPF_F_INGRESS): SK_PASS when queued there, SK_DROP when
    // the peer is gone, which only happens as the session ends.
    RELAY.redirect_skb(&ctx, peer, 0) as u32
}
