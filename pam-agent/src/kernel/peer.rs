//! Which socket is on the other end of an accepted connection: the kernel's own answer
//! for the exact 4-tuple (NETLINK_SOCK_DIAG), as a socket cookie.
//!
//! The connect hooks key their records by the worker socket's cookie. Matching the
//! accepted connection to a record by the cookie of the live socket at its far end,
//! never by address and port alone, means a record cannot be borrowed by another
//! socket that later binds the same local port.

use std::{
    io,
    net::{IpAddr, SocketAddr},
    os::fd::{AsRawFd, FromRawFd, OwnedFd},
};

const NETLINK_SOCK_DIAG: libc::c_int = 4;
const SOCK_DIAG_BY_FAMILY: u16 = 20;
const NLM_F_REQUEST: u16 = 1;
const NLMSG_ERROR: u16 = 2;
const TCP_LISTEN: u8 = 10;
/// "No cookie given" in an inet_diag request.
const NO_COOKIE: u32 = !0;

/// Sizes of the kernel structures (all fixed by the UAPI).
const NLMSG_HDR: usize = 16;
const SOCKID: usize = 48;
const REQ: usize = 8 + SOCKID;
/// Offset of `idiag_inode` in `inet_diag_msg` (after family, state, timer, retrans, the
/// socket id, expires, rqueue, wqueue and uid).
const INODE: usize = 4 + SOCKID + 16;

/// The far end of an accepted connection, as the kernel reports it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FarEnd {
    pub cookie: u64,
    /// A process still holds the socket (the kernel reports its inode). Once the worker
    /// has closed it (a connect-and-close), it is an orphan or a TIME_WAIT entry with
    /// no inode, and its record is gone with it. A half-closed socket (shutdown of the
    /// write side) is still held.
    pub open: bool,
}

/// The TCP socket whose local end is `client` and remote end is `server`, in the
/// caller's network namespace; None when there is none (it closed).
pub fn client_socket(client: SocketAddr, server: SocketAddr) -> io::Result<Option<FarEnd>> {
    let (family, src, dst) = match (client.ip().to_canonical(), server.ip().to_canonical()) {
        (IpAddr::V4(c), IpAddr::V4(s)) => {
            (libc::AF_INET as u8, pad16(&c.octets()), pad16(&s.octets()))
        }
        (IpAddr::V6(c), IpAddr::V6(s)) => (libc::AF_INET6 as u8, c.octets(), s.octets()),
        _ => return Ok(None),
    };
    let mut id = [0u8; SOCKID];
    id[0..2].copy_from_slice(&client.port().to_be_bytes());
    id[2..4].copy_from_slice(&server.port().to_be_bytes());
    id[4..20].copy_from_slice(&src);
    id[20..36].copy_from_slice(&dst);
    id[40..44].copy_from_slice(&NO_COOKIE.to_ne_bytes());
    id[44..48].copy_from_slice(&NO_COOKIE.to_ne_bytes());

    let mut msg = Vec::with_capacity(NLMSG_HDR + REQ);
    msg.extend_from_slice(&((NLMSG_HDR + REQ) as u32).to_ne_bytes());
    msg.extend_from_slice(&SOCK_DIAG_BY_FAMILY.to_ne_bytes());
    msg.extend_from_slice(&NLM_F_REQUEST.to_ne_bytes());
    msg.extend_from_slice(&1u32.to_ne_bytes()); // seq
    msg.extend_from_slice(&0u32.to_ne_bytes()); // port id: the kernel fills it
    msg.extend_from_slice(&[family, libc::IPPROTO_TCP as u8, 0, 0]);
    msg.extend_from_slice(&u32::MAX.to_ne_bytes()); // any state
    msg.extend_from_slice(&id);

    // SAFETY: plain socket(2); a non-negative result is a new fd we then own.
    let fd = unsafe {
        libc::socket(
            libc::AF_NETLINK,
            libc::SOCK_DGRAM | libc::SOCK_CLOEXEC,
            NETLINK_SOCK_DIAG,
        )
    };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: socket() returned a fresh descriptor.
    let fd = unsafe { OwnedFd::from_raw_fd(fd) };
    // SAFETY: sending a buffer we own, to the kernel (a zeroed sockaddr_nl).
    let sent = unsafe {
        let mut to: libc::sockaddr_nl = std::mem::zeroed();
        to.nl_family = libc::AF_NETLINK as u16;
        libc::sendto(
            fd.as_raw_fd(),
            msg.as_ptr().cast(),
            msg.len(),
            0,
            (&to as *const libc::sockaddr_nl).cast(),
            std::mem::size_of::<libc::sockaddr_nl>() as u32,
        )
    };
    if sent < 0 {
        return Err(io::Error::last_os_error());
    }
    let mut buf = [0u8; 1024];
    // SAFETY: receiving into a buffer we own, of the stated length.
    let n = unsafe { libc::recv(fd.as_raw_fd(), buf.as_mut_ptr().cast(), buf.len(), 0) };
    if n < 0 {
        return Err(io::Error::last_os_error());
    }
    parse_reply(&buf[..n as usize], &id, family)
}

fn pad16(v4: &[u8; 4]) -> [u8; 16] {
    let mut out = [0u8; 16];
    out[..4].copy_from_slice(v4);
    out
}

/// Reads the answer to a one-socket request: the socket's cookie, after checking that
/// the kernel answered for exactly the 4-tuple asked (a lookup may fall back to a
/// listener on the client's address, which is never the client).
fn parse_reply(reply: &[u8], asked: &[u8; SOCKID], family: u8) -> io::Result<Option<FarEnd>> {
    let bad = |what: &str| io::Error::new(io::ErrorKind::InvalidData, format!("sock_diag: {what}"));
    if reply.len() < NLMSG_HDR + 4 {
        return Err(bad("short reply"));
    }
    let kind = u16::from_ne_bytes([reply[4], reply[5]]);
    let body = &reply[NLMSG_HDR..];
    if kind == NLMSG_ERROR {
        let errno = -i32::from_ne_bytes([body[0], body[1], body[2], body[3]]);
        return if errno == libc::ENOENT {
            Ok(None)
        } else {
            Err(io::Error::from_raw_os_error(errno))
        };
    }
    if kind != SOCK_DIAG_BY_FAMILY || body.len() < INODE + 4 {
        return Err(bad("unexpected reply"));
    }
    let (msg_family, state) = (body[0], body[1]);
    let id = &body[4..4 + SOCKID];
    // A dual-stack client of the IPv4 listener is an IPv6 socket: the kernel answers
    // with its addresses in `::ffff:a.b.c.d` form. Compare canonical addresses.
    let addr = |bytes: &[u8], fam: u8| -> Option<IpAddr> {
        if fam == libc::AF_INET as u8 {
            let v4: [u8; 4] = bytes[..4].try_into().ok()?;
            Some(IpAddr::from(v4))
        } else {
            let v6: [u8; 16] = bytes[..16].try_into().ok()?;
            Some(IpAddr::from(v6).to_canonical())
        }
    };
    let same_tuple = id[0..4] == asked[0..4]
        && addr(&id[4..20], msg_family) == addr(&asked[4..20], family)
        && addr(&id[20..36], msg_family) == addr(&asked[20..36], family);
    if state == TCP_LISTEN || !same_tuple {
        return Ok(None);
    }
    let lo = u32::from_ne_bytes([id[40], id[41], id[42], id[43]]);
    let hi = u32::from_ne_bytes([id[44], id[45], id[46], id[47]]);
    let inode = u32::from_ne_bytes([
        body[INODE],
        body[INODE + 1],
        body[INODE + 2],
        body[INODE + 3],
    ]);
    Ok(Some(FarEnd {
        cookie: u64::from(lo) | (u64::from(hi) << 32),
        open: inode != 0,
    }))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::fd::AsFd;

    #[test]
    fn finds_the_cookie_of_the_far_end_of_a_loopback_connection() {
        for bind in ["127.0.0.1:0", "[::1]:0"] {
            let Ok(server) = std::net::TcpListener::bind(bind) else {
                continue; // no IPv6 here
            };
            let client = std::net::TcpStream::connect(server.local_addr().unwrap()).unwrap();
            let (accepted, peer) = server.accept().unwrap();
            let local = accepted.local_addr().unwrap();
            let expected = super::super::listener::socket_cookie(client.as_fd()).unwrap();
            assert_eq!(
                client_socket(peer, local).unwrap(),
                Some(FarEnd {
                    cookie: expected,
                    open: true
                }),
                "{bind}"
            );
            // The accepted end is not the client.
            let ours = super::super::listener::socket_cookie(accepted.as_fd()).unwrap();
            assert_ne!(ours, expected);
            // Once the client is gone (and its port not in TIME_WAIT on our side), a
            // lookup of another port finds nothing.
            let mut other = peer;
            other.set_port(peer.port().wrapping_add(1).max(1));
            assert_eq!(client_socket(other, local).unwrap(), None);
            // Half-closed (its write side shut) is still held; closed is found, and is
            // not open any more.
            client.shutdown(std::net::Shutdown::Write).unwrap();
            assert!(client_socket(peer, local).unwrap().unwrap().open);
            drop(client);
            let closed = (0..200)
                .find_map(|_| {
                    let s = client_socket(peer, local).unwrap()?;
                    if s.open {
                        std::thread::sleep(std::time::Duration::from_millis(5));
                        return None;
                    }
                    Some(s)
                })
                .expect("the closed client is reported");
            assert_eq!(closed.cookie, expected);
        }
    }
}
