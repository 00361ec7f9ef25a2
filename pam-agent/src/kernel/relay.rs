//! The in-kernel relay of `tcp` resources, seen from the agent: the sockhash the
//! verdict program (`pam_relay`) is attached to, and the pairing of a session's two
//! sockets in it.
//!
//! Known limit of the hand-over: the two sockets go in one after the other, with their
//! wake-ups held (SO_RCVLOWAT) so nothing reaches the verdict before both are in. A FIN
//! overrides that hold: if the server's FIN lands on the agent's own connection in the
//! microseconds between the two inserts, the bytes that came with it find no peer and
//! are dropped, and the session then waits for them. A worker's FIN in that window is
//! handled (its socket cannot go in; the session falls back to splice untouched).
//!
//! Nothing here is pinned: the relay belongs to the running agent. A socket leaves the
//! sockhash when it closes, and the agent's sockets close when it exits or is killed,
//! so nothing is relayed around an agent that is gone (fail closed).

use std::{
    io,
    os::fd::{AsRawFd, BorrowedFd},
    sync::Mutex,
};

use aya::{
    Ebpf,
    maps::{HashMap, MapData, SockHash},
    programs::SkSkb,
};
use pam_common::{maps, programs};

use super::RedirectError;

#[derive(Debug, thiserror::Error)]
pub enum PairError {
    /// A side had already closed (a worker that sent everything and its FIN at once):
    /// the kernel takes only established connections; another relay carries it.
    #[error("a side of the session has already closed")]
    Closed,
    /// Nothing was handed to the kernel: the session can be relayed another way.
    #[error("cannot hand the sockets to the kernel ({what}): {source}")]
    Refused {
        what: &'static str,
        #[source]
        source: io::Error,
    },
    /// Part of the pair was in the kernel when this failed: bytes may have been taken
    /// by it, so the session cannot continue another way.
    #[error("in-kernel relay failed half-way ({what}): {source}")]
    HalfWay {
        what: &'static str,
        #[source]
        source: io::Error,
    },
}

/// The relay sockhash and the peer map, filled per session.
pub struct SockRelay {
    sockets: Mutex<SockHash<MapData, u64>>,
    peers: Mutex<HashMap<MapData, u64, u64>>,
}

impl SockRelay {
    /// Loads the verdict program and attaches it to the relay sockhash (which the
    /// object's load created). Called by [`super::Redirector::start`]; an error means
    /// `tcp` resources are relayed with splice.
    pub(super) fn start(ebpf: &mut Ebpf) -> Result<SockRelay, RedirectError> {
        let name = programs::RELAY_VERDICT;
        let err = |action, source| RedirectError::Program {
            action,
            program: name,
            feature: "sk_skb stream verdict on a sockhash, Linux 5.15+",
            source: Box::new(source),
        };
        let map_err = |map, source| RedirectError::Map { map, source };
        let missing = |map: &'static str| {
            map_err(
                map,
                aya::maps::MapError::InvalidName {
                    name: map.to_owned(),
                },
            )
        };
        let sockets: SockHash<MapData, u64> = SockHash::try_from(
            ebpf.take_map(maps::RELAY)
                .ok_or_else(|| missing(maps::RELAY))?,
        )
        .map_err(|e| map_err(maps::RELAY, e))?;
        let peers: HashMap<MapData, u64, u64> = HashMap::try_from(
            ebpf.take_map(maps::RELAY_PEERS)
                .ok_or_else(|| missing(maps::RELAY_PEERS))?,
        )
        .map_err(|e| map_err(maps::RELAY_PEERS, e))?;
        let prog: &mut SkSkb = ebpf
            .program_mut(name)
            .ok_or(aya::programs::ProgramError::UnexpectedProgramType)
            .and_then(|p| p.try_into())
            .map_err(|e| err("load", e))?;
        prog.load().map_err(|e| err("load", e))?;
        // The attachment lives with the program (kept by the Ebpf the redirector holds)
        // and the map.
        prog.attach(sockets.fd()).map_err(|e| err("attach", e))?;
        Ok(SockRelay {
            sockets: Mutex::new(sockets),
            peers: Mutex::new(peers),
        })
    }

    /// Hands `a` and `b` to the kernel: from the return on, each one's received bytes
    /// go out of the other, including what was already waiting in them. The pair
    /// leaves the maps when the returned [`Pair`] is dropped (or the sockets close).
    pub fn join(&self, a: BorrowedFd<'_>, b: BorrowedFd<'_>) -> Result<Pair<'_>, PairError> {
        let refused = |what| move |source| PairError::Refused { what, source };
        let ca = cookie(a).map_err(refused("socket cookie"))?;
        let cb = cookie(b).map_err(refused("socket cookie"))?;
        let pair = Pair {
            relay: self,
            cookies: [ca, cb],
        };
        match self.insert(a, b, ca, cb) {
            Ok(()) => Ok(pair),
            Err(e @ (PairError::Refused { .. } | PairError::Closed)) => {
                // Back to normal wake-ups for the relay that takes over.
                for fd in [a, b] {
                    let _ = set_rcvlowat(fd, 1);
                }
                Err(e)
            }
            Err(e) => Err(e),
        }
    }

    fn insert(
        &self,
        a: BorrowedFd<'_>,
        b: BorrowedFd<'_>,
        ca: u64,
        cb: u64,
    ) -> Result<(), PairError> {
        let refused = |what| move |source| PairError::Refused { what, source };
        // The kernel takes only established connections: one whose peer has already
        // closed (a worker that sent everything and its FIN at once) stays with splice.
        for fd in [a, b] {
            if tcp_info(fd).map_err(refused("socket state"))?.tcpi_state != TCP_ESTABLISHED {
                return Err(PairError::Closed);
            }
        }
        // Hold both sockets' wake-ups while they go in one after the other: bytes that
        // reached the first before its peer is in would find no peer (and be lost).
        // Whatever arrives meanwhile waits in the socket, and the release below
        // hands it to the verdict.
        for fd in [a, b] {
            set_rcvlowat(fd, i32::MAX).map_err(refused("holding the sockets"))?;
        }
        {
            let mut peers = self.peers.lock().unwrap_or_else(|p| p.into_inner());
            for (k, v) in [(ca, cb), (cb, ca)] {
                peers
                    .insert(k, v, 0)
                    .map_err(|e| refused("naming the peers")(io::Error::other(e)))?;
            }
        }
        // The agent's own connection goes in first: the worker's side is the one that
        // may be closing right now (a request and its FIN sent at once), and a side that
        // cannot go in any more is best met second, while the first is still untouched.
        let (first, c_first, second, c_second) = (b, cb, a, ca);
        {
            let mut sockets = self.sockets.lock().unwrap_or_else(|p| p.into_inner());
            if let Err(e) = sockets.insert(c_first, first.as_raw_fd(), 0) {
                return Err(if untouched(first) {
                    refused("adding a socket to the sockhash")(io::Error::other(e))
                } else {
                    // It closed meanwhile (nothing was taken: it was never in).
                    PairError::Closed
                });
            }
            if let Err(e) = sockets.insert(c_second, second.as_raw_fd(), 0) {
                // The second side closed meanwhile. The first one is out again; if the
                // kernel took none of its bytes (the hold kept them), another relay
                // can still carry the session whole.
                let _ = sockets.remove(&c_first);
                let source = io::Error::other(e);
                return Err(if untouched(first) {
                    PairError::Closed
                } else {
                    PairError::HalfWay {
                        what: "adding the second socket to the sockhash",
                        source,
                    }
                });
            }
        }
        // Setting the low-water mark checks the socket's queue at once: what waited in
        // it goes to the verdict now.
        for fd in [a, b] {
            set_rcvlowat(fd, 1).map_err(|source| PairError::HalfWay {
                what: "releasing the sockets",
                source,
            })?;
        }
        Ok(())
    }
}

/// TCP_ESTABLISHED in `tcp_info.tcpi_state`.
const TCP_ESTABLISHED: u8 = 1;

/// Whether all the socket ever received is still in it, unread, with no FIN: nothing
/// was taken from it (the agent reads nothing from a `tcp` session before the relay).
fn untouched(fd: BorrowedFd<'_>) -> bool {
    let Ok(info) = tcp_info(fd) else {
        return false;
    };
    let mut queued: libc::c_int = 0;
    // SAFETY: SIOCINQ writes one int.
    if unsafe { libc::ioctl(fd.as_raw_fd(), libc::FIONREAD, &mut queued) } != 0 {
        return false;
    }
    info.tcpi_state == TCP_ESTABLISHED && info.tcpi_bytes_received == queued.max(0) as u64
}

/// The kernel's TCP_INFO for a socket (state and byte counters).
pub fn tcp_info(fd: BorrowedFd<'_>) -> io::Result<libc::tcp_info> {
    // SAFETY: tcp_info is plain data; the kernel fills at most `len` bytes of it.
    let mut info: libc::tcp_info = unsafe { std::mem::zeroed() };
    let mut len = std::mem::size_of::<libc::tcp_info>() as libc::socklen_t;
    // SAFETY: a getsockopt into a tcp_info of the size passed.
    let rc = unsafe {
        libc::getsockopt(
            fd.as_raw_fd(),
            libc::IPPROTO_TCP,
            libc::TCP_INFO,
            (&raw mut info).cast(),
            &mut len,
        )
    };
    if rc == 0 {
        Ok(info)
    } else {
        Err(io::Error::last_os_error())
    }
}

/// A session's sockets in the relay; dropping it takes them out.
pub struct Pair<'a> {
    relay: &'a SockRelay,
    cookies: [u64; 2],
}

impl Drop for Pair<'_> {
    fn drop(&mut self) {
        // Sockets first (they may be closed already, which removed them), then the
        // peers, so no socket in the map is ever without its peer entry.
        {
            let mut sockets = self.relay.sockets.lock().unwrap_or_else(|p| p.into_inner());
            for c in &self.cookies {
                let _ = sockets.remove(c);
            }
        }
        let mut peers = self.relay.peers.lock().unwrap_or_else(|p| p.into_inner());
        for c in &self.cookies {
            let _ = peers.remove(c);
        }
    }
}

/// The kernel's cookie of a socket (what the verdict program keys by).
fn cookie(fd: BorrowedFd<'_>) -> io::Result<u64> {
    let mut value: u64 = 0;
    let mut len = std::mem::size_of::<u64>() as libc::socklen_t;
    // SAFETY: a getsockopt into a u64 of the size passed.
    let rc = unsafe {
        libc::getsockopt(
            fd.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_COOKIE,
            (&raw mut value).cast(),
            &mut len,
        )
    };
    if rc == 0 {
        Ok(value)
    } else {
        Err(io::Error::last_os_error())
    }
}

fn set_rcvlowat(fd: BorrowedFd<'_>, value: i32) -> io::Result<()> {
    // SAFETY: a setsockopt from an i32 of the size passed.
    let rc = unsafe {
        libc::setsockopt(
            fd.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_RCVLOWAT,
            (&raw const value).cast(),
            std::mem::size_of::<i32>() as libc::socklen_t,
        )
    };
    if rc == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}
