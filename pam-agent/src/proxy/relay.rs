//! Moves bytes both ways between the worker and the resource, counting them, until both
//! sides have closed, either side fails, or the agent shuts down.

use std::sync::atomic::{AtomicU64, Ordering};

use tokio::{
    io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt},
    net::TcpStream,
};
use tokio_util::sync::CancellationToken;

use crate::journal::event::SessionEnd;

/// Per-direction buffer: large enough for bulk transfers to move in few syscalls.
const BUF_SIZE: usize = 64 * 1024;

pub struct Outcome {
    pub from_worker: u64,
    pub to_worker: u64,
    pub end: SessionEnd,
    pub detail: Option<String>,
}

pub async fn relay(
    worker: TcpStream,
    upstream: TcpStream,
    shutdown: &CancellationToken,
) -> Outcome {
    let from_worker = AtomicU64::new(0);
    let to_worker = AtomicU64::new(0);
    let (wr, ww) = worker.into_split();
    let (ur, uw) = upstream.into_split();
    let both = async { tokio::try_join!(pump(wr, uw, &from_worker), pump(ur, ww, &to_worker)) };
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
async fn pump<R, W>(mut from: R, mut to: W, count: &AtomicU64) -> std::io::Result<()>
where
    R: AsyncRead + Unpin,
    W: AsyncWrite + Unpin,
{
    let mut buf = vec![0u8; BUF_SIZE];
    loop {
        let n = from.read(&mut buf).await?;
        if n == 0 {
            to.shutdown().await?;
            return Ok(());
        }
        to.write_all(&buf[..n]).await?;
        count.fetch_add(n as u64, Ordering::Relaxed);
    }
}
