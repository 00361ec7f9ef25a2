//! A `tcp` session relayed by the kernel ([`crate::kernel::SockRelay`]): the payload
//! never comes up to the agent, which keeps both sockets open and watches them for
//! their end.
//!
//! - Half-close: when one side's FIN arrives, the agent waits until everything that
//!   side sent has gone into its peer, then half-closes the peer (the other direction
//!   keeps flowing).
//! - Counts: what went into each socket since the pair was handed over, read from the
//!   kernel's own TCP counters (bytes acknowledged plus bytes still queued), so they
//!   need no work per byte.
//! - The end: both directions closed, either socket failed (RST, error), or the agent
//!   shuts down; the sockets are then closed, which takes them out of the relay.
//! - Waking: the sockets leave tokio's reactor (which would wake for every segment the
//!   kernel signals and then relays itself); an epoll set of their own asks only for
//!   the end (RDHUP, ERR, HUP), edge-triggered, so the agent sleeps while bytes flow.

use std::{
    io,
    net::TcpStream,
    os::fd::{AsFd, AsRawFd, FromRawFd, OwnedFd},
    time::Duration,
};

use tokio::io::unix::AsyncFd;
use tokio_util::sync::CancellationToken;

use crate::{
    journal::event::SessionEnd,
    kernel::{Pair, tcp_info},
    protocols::Outcome,
};

/// How often a draining direction checks whether its bytes are all out.
const DRAIN_POLL: Duration = Duration::from_millis(1);

/// What went into each socket before the pair was handed to the kernel (the
/// handshake's SYN on the agent's own connection); taken before [`Pair`] exists.
pub struct Before {
    worker: u64,
    upstream: u64,
}

impl Before {
    pub fn take(worker: &TcpStream, upstream: &TcpStream) -> io::Result<Before> {
        Ok(Before {
            worker: written(worker)?,
            upstream: written(upstream)?,
        })
    }
}

/// One direction of the session.
struct Direction<'a> {
    from: &'a TcpStream,
    to: &'a TcpStream,
    /// `written(to)` before the hand-over.
    base: u64,
    /// Set when `from` has ended and everything it sent is in `to`: the byte count.
    done: Option<u64>,
}

impl Direction<'_> {
    /// Bytes put into `to` since the hand-over.
    fn sent(&self) -> u64 {
        written(self.to).map_or(0, |w| w.saturating_sub(self.base))
    }

    fn count(&self) -> u64 {
        self.done.unwrap_or_else(|| self.sent())
    }

    /// `from` has sent its FIN: waits until all it sent is in `to`, then half-closes
    /// `to` so its reader sees the end too.
    async fn finish(&mut self) -> Result<(), String> {
        // The FIN takes one sequence number, which the kernel counts as received.
        let data = received(self.from)
            .map_err(|e| e.to_string())?
            .saturating_sub(1);
        loop {
            if self.sent() >= data {
                break;
            }
            if let Some(e) = failure(self.to) {
                return Err(e);
            }
            tokio::time::sleep(DRAIN_POLL).await;
        }
        match nix::sys::socket::shutdown(self.to.as_raw_fd(), nix::sys::socket::Shutdown::Write) {
            Ok(()) | Err(nix::Error::ENOTCONN) => {}
            Err(e) => return Err(e.to_string()),
        }
        self.done = Some(data);
        Ok(())
    }
}

pub async fn relay(
    worker: &TcpStream,
    upstream: &TcpStream,
    before: Before,
    pair: Pair<'_>,
    shutdown: &CancellationToken,
) -> Outcome {
    let mut up = Direction {
        from: worker,
        to: upstream,
        base: before.upstream,
        done: None,
    };
    let mut down = Direction {
        from: upstream,
        to: worker,
        base: before.worker,
        done: None,
    };
    let result = tokio::select! {
        r = watch(&mut up, &mut down) => r,
        _ = shutdown.cancelled() => Err(None),
    };
    let (end, detail) = match result {
        Ok(()) => (SessionEnd::Closed, None),
        Err(Some(detail)) => (SessionEnd::Error, Some(detail)),
        Err(None) => (SessionEnd::AgentShutdown, None),
    };
    let outcome = Outcome {
        from_worker: up.count(),
        to_worker: down.count(),
        end,
        detail,
    };
    drop(pair);
    outcome
}

/// Until both directions have ended (Ok) or a socket failed (Err(Some(why))).
async fn watch<'s>(up: &mut Direction<'s>, down: &mut Direction<'s>) -> Result<(), Option<String>> {
    let ends = Ends::new([up.from, down.from]).map_err(|e| Some(e.to_string()))?;
    loop {
        for d in [&mut *up, &mut *down] {
            if let Some(e) = failure(d.from) {
                return Err(Some(e));
            }
            if d.done.is_none() && ended(d.from) {
                d.finish().await.map_err(Some)?;
            }
        }
        if up.done.is_some() && down.done.is_some() {
            return Ok(());
        }
        ends.wait().await.map_err(|e| Some(e.to_string()))?;
    }
}

/// An epoll set that reports only the sockets' ends, edge-triggered: one wake-up per
/// change of state (FIN, RST, error), never for data.
struct Ends {
    epoll: AsyncFd<OwnedFd>,
}

impl Ends {
    fn new(sockets: [&TcpStream; 2]) -> io::Result<Ends> {
        // SAFETY: plain syscall; the fd is owned from here on.
        let fd = unsafe { libc::epoll_create1(libc::EPOLL_CLOEXEC) };
        if fd < 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: a new fd nobody else owns.
        let epoll = unsafe { OwnedFd::from_raw_fd(fd) };
        for s in sockets {
            let mut ev = libc::epoll_event {
                events: (libc::EPOLLRDHUP | libc::EPOLLET) as u32,
                u64: s.as_raw_fd() as u64,
            };
            // SAFETY: a valid epoll fd, socket fd and event.
            if unsafe { libc::epoll_ctl(fd, libc::EPOLL_CTL_ADD, s.as_raw_fd(), &mut ev) } != 0 {
                return Err(io::Error::last_os_error());
            }
        }
        // SAFETY: the AsyncFd owns the epoll fd, which stays open and the same for as
        // long as it lives.
        let epoll =
            unsafe { AsyncFd::register_with_interest(epoll, tokio::io::Interest::READABLE)? };
        Ok(Ends { epoll })
    }

    /// Returns after a change of state of either socket (the caller looks at both).
    async fn wait(&self) -> io::Result<()> {
        let mut guard = self.epoll.readable().await?;
        let mut events = [libc::epoll_event { events: 0, u64: 0 }; 4];
        // SAFETY: a valid epoll fd and buffer; zero timeout.
        unsafe {
            libc::epoll_wait(
                self.epoll.get_ref().as_raw_fd(),
                events.as_mut_ptr(),
                events.len() as i32,
                0,
            )
        };
        guard.clear_ready();
        Ok(())
    }
}

/// The socket's reading side has ended (FIN, or reset: see [`failure`]).
fn ended(s: &TcpStream) -> bool {
    poll_now(s) & (libc::POLLRDHUP | libc::POLLHUP | libc::POLLERR) != 0
}

/// Why the socket failed, if it did (a reset, an error from the network).
fn failure(s: &TcpStream) -> Option<String> {
    if poll_now(s) & libc::POLLERR == 0 {
        return None;
    }
    Some(match s.take_error() {
        Ok(Some(e)) => e.to_string(),
        Ok(None) => "socket error".to_owned(),
        Err(e) => e.to_string(),
    })
}

fn poll_now(s: &TcpStream) -> i16 {
    let mut p = libc::pollfd {
        fd: s.as_raw_fd(),
        events: libc::POLLIN | libc::POLLRDHUP,
        revents: 0,
    };
    // SAFETY: one valid pollfd, zero timeout.
    match unsafe { libc::poll(&mut p, 1, 0) } {
        1 => p.revents,
        _ => 0,
    }
}

/// Bytes put into the socket for sending so far: acknowledged by the peer plus still
/// queued (the SYN of a connection the agent made counts once, in both readings).
fn written(s: &TcpStream) -> io::Result<u64> {
    let info = tcp_info(s.as_fd())?;
    let mut queued: libc::c_int = 0;
    // SAFETY: SIOCOUTQ writes one int.
    if unsafe { libc::ioctl(s.as_raw_fd(), libc::TIOCOUTQ, &mut queued) } != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(info.tcpi_bytes_acked + queued.max(0) as u64)
}

/// Bytes the socket has received in order (a received FIN counts as one).
fn received(s: &TcpStream) -> io::Result<u64> {
    Ok(tcp_info(s.as_fd())?.tcpi_bytes_received)
}
