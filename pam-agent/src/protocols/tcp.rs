//! Moves bytes both ways between the worker and the resource, counting them, until both
//! sides have closed, either side fails, or the agent shuts down.
//!
//! Plain TCP resources need no inspection. Where the kernel takes them (the default,
//! `listener.tcp_relay = "kernel"`), the two sockets are handed to the kernel's relay
//! ([`in_kernel`]) and the payload never comes up to the agent. Otherwise bytes go
//! socket -> pipe -> socket with splice(2): the kernel moves page references and the
//! agent never copies the payload, but wakes for every chunk.

mod in_kernel;

use std::{
    io,
    os::fd::{AsFd, AsRawFd, OwnedFd},
    sync::atomic::{AtomicU64, Ordering},
};

use nix::fcntl::{OFlag, SpliceFFlags, splice};
use tokio::{io::Interest, net::TcpStream};
use tokio_util::sync::CancellationToken;

use super::Outcome;
use crate::{
    journal::event::SessionEnd,
    kernel::{PairError, SockRelay},
};

/// Bytes per splice; the pipe is sized to hold this much.
const CHUNK: usize = 256 * 1024;

/// The first session the kernel refuses to relay says why in the log; later ones fall
/// back to splice quietly.
static FALLBACK_LOGGED: std::sync::Once = std::sync::Once::new();

pub async fn relay(
    worker: TcpStream,
    upstream: TcpStream,
    kernel: Option<&SockRelay>,
    shutdown: &CancellationToken,
) -> Outcome {
    let Some(kernel) = kernel else {
        return splice_relay(worker, upstream, shutdown).await;
    };
    // Out of tokio's reactor: in the kernel relay only the sockets' ends wake the agent.
    let (worker, upstream) = match (worker.into_std(), upstream.into_std()) {
        (Ok(w), Ok(u)) => (w, u),
        (Err(e), _) | (_, Err(e)) => return failed(format!("leaving the reactor: {e}")),
    };
    let handed = in_kernel::Before::take(&worker, &upstream)
        .map_err(|source| PairError::Refused {
            what: "reading the sockets' counters",
            source,
        })
        .and_then(|before| Ok((before, kernel.join(worker.as_fd(), upstream.as_fd())?)));
    match handed {
        Ok((before, pair)) => {
            return in_kernel::relay(&worker, &upstream, before, pair, shutdown).await;
        }
        Err(PairError::Closed) => {}
        Err(e @ PairError::Refused { .. }) => FALLBACK_LOGGED.call_once(|| {
            tracing::warn!(error = %e, "relaying tcp sessions with splice instead");
        }),
        // Bytes may be in the kernel's hands already: this session cannot go on.
        Err(e) => return failed(e.to_string()),
    }
    match (TcpStream::from_std(worker), TcpStream::from_std(upstream)) {
        (Ok(w), Ok(u)) => splice_relay(w, u, shutdown).await,
        (Err(e), _) | (_, Err(e)) => failed(format!("back into the reactor: {e}")),
    }
}

fn failed(detail: String) -> Outcome {
    Outcome {
        from_worker: 0,
        to_worker: 0,
        end: SessionEnd::Error,
        detail: Some(detail),
    }
}

async fn splice_relay(
    worker: TcpStream,
    upstream: TcpStream,
    shutdown: &CancellationToken,
) -> Outcome {
    let from_worker = AtomicU64::new(0);
    let to_worker = AtomicU64::new(0);
    let both = async {
        tokio::try_join!(
            pump(&worker, &upstream, &from_worker),
            pump(&upstream, &worker, &to_worker)
        )
    };
    let (end, detail) = tokio::select! {
        r = both => match r {
            Ok(_) => (SessionEnd::Closed, None),
            Err(e) => (SessionEnd::Error, Some(e.to_string())),
        },
        _ = shutdown.cancelled() => (SessionEnd::AgentShutdown, None),
    };
    Outcome {
        from_worker: from_worker.load(Ordering::Relaxed),
        to_worker: to_worker.load(Ordering::Relaxed),
        end,
        detail,
    }
}

/// One direction. On end of input, half-closes the output so the peer sees EOF while
/// the other direction keeps flowing.
async fn pump(from: &TcpStream, to: &TcpStream, count: &AtomicU64) -> io::Result<()> {
    let (pipe_r, pipe_w) = pipe()?;
    let flags = SpliceFFlags::SPLICE_F_MOVE | SpliceFFlags::SPLICE_F_NONBLOCK;
    loop {
        let n = from
            .async_io(Interest::READABLE, || {
                splice(from.as_fd(), None, pipe_w.as_fd(), None, CHUNK, flags)
                    .map_err(io::Error::from)
            })
            .await?;
        if n == 0 {
            nix::sys::socket::shutdown(to.as_raw_fd(), nix::sys::socket::Shutdown::Write).or_else(
                |e| {
                    if e == nix::Error::ENOTCONN {
                        Ok(())
                    } else {
                        Err(e)
                    }
                },
            )?;
            return Ok(());
        }
        let mut left = n;
        while left > 0 {
            left -= to
                .async_io(Interest::WRITABLE, || {
                    splice(pipe_r.as_fd(), None, to.as_fd(), None, left, flags)
                        .map_err(io::Error::from)
                })
                .await?;
        }
        count.fetch_add(n as u64, Ordering::Relaxed);
    }
}

fn pipe() -> io::Result<(OwnedFd, OwnedFd)> {
    let (r, w) = nix::unistd::pipe2(OFlag::O_CLOEXEC | OFlag::O_NONBLOCK)?;
    // A larger pipe moves more per syscall; if the limit refuses, the default works.
    let _ = nix::fcntl::fcntl(&w, nix::fcntl::FcntlArg::F_SETPIPE_SZ(CHUNK as i32));
    Ok((r, w))
}
