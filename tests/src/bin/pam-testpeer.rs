//! A small real network peer for the end-to-end tests and benchmarks: an echo/sink
//! server for test hosts, and a client that reports what it saw as one JSON line.
//!
//! ```text
//! pam-testpeer serve ADDR...            echo every connection's bytes back
//! pam-testpeer serve-close ADDR...      accept and close at once (connect benchmarks)
//! pam-testpeer connect ADDR [BYTES]     send BYTES (default 4096), read the echo, report
//! pam-testpeer connect-bench ADDR N     time N connect()s, report latencies in ns
//! pam-testpeer connect-close ADDR N     N times: connect and close at once (a flood)
//! pam-testpeer bulk ADDR BYTES          send BYTES, read them back, report duration
//! pam-testpeer rr ADDR N SIZE           N request/response round trips of SIZE bytes
//! pam-testpeer serve-sink ADDR...       check a `transfer`, answer after its end
//! pam-testpeer transfer ADDR SEND REPLY [HOLD_AT]
//!                                       send, half-close, check the reply (transfer.rs)
//! ```

#[path = "pam-testpeer/transfer.rs"]
mod transfer;

use std::{
    io::{Read, Write},
    net::{Shutdown, SocketAddr, TcpListener, TcpStream},
    thread,
    time::Instant,
};

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let mode = args.first().map(String::as_str).unwrap_or("");
    match mode {
        "serve" => serve(&args[1..], echo),
        "serve-close" => serve(&args[1..], drop),
        "serve-sink" => serve(&args[1..], transfer::serve),
        "transfer" => transfer::client(&args[1..]),
        "connect" => connect(
            &args[1],
            args.get(2).map(|n| n.parse().unwrap()).unwrap_or(4096),
        ),
        "connect-bench" => connect_bench(&args[1], args[2].parse().unwrap()),
        "connect-close" => connect_close(&args[1], args[2].parse().unwrap()),
        "bulk" => bulk(&args[1], args[2].parse().unwrap()),
        "rr" => rr(&args[1], args[2].parse().unwrap(), args[3].parse().unwrap()),
        _ => {
            eprintln!("usage: pam-testpeer serve|connect|connect-bench|bulk|rr ...");
            std::process::exit(2);
        }
    }
}

fn serve(addrs: &[String], handle: fn(TcpStream)) {
    let mut handles = Vec::new();
    for a in addrs {
        let addr: SocketAddr = a.parse().expect("listen address");
        let listener = if addr.is_ipv6() {
            // A v6-only socket, so 0.0.0.0 and [::] can share the port.
            socket2_v6only(addr)
        } else {
            TcpListener::bind(addr).expect("bind")
        };
        handles.push(thread::spawn(move || {
            for stream in listener.incoming().flatten() {
                thread::spawn(move || handle(stream));
            }
        }));
    }
    println!("ready");
    std::io::stdout().flush().unwrap();
    for h in handles {
        let _ = h.join();
    }
}

fn socket2_v6only(addr: SocketAddr) -> TcpListener {
    // std has no IPV6_V6ONLY setter before bind; use libc directly.
    use std::os::fd::FromRawFd;
    unsafe {
        let fd = libc::socket(libc::AF_INET6, libc::SOCK_STREAM | libc::SOCK_CLOEXEC, 0);
        assert!(fd >= 0);
        let one: libc::c_int = 1;
        let p = &one as *const _ as *const libc::c_void;
        let n = std::mem::size_of::<libc::c_int>() as u32;
        libc::setsockopt(fd, libc::IPPROTO_IPV6, libc::IPV6_V6ONLY, p, n);
        libc::setsockopt(fd, libc::SOL_SOCKET, libc::SO_REUSEADDR, p, n);
        let SocketAddr::V6(v6) = addr else {
            unreachable!()
        };
        let mut sa: libc::sockaddr_in6 = std::mem::zeroed();
        sa.sin6_family = libc::AF_INET6 as u16;
        sa.sin6_port = v6.port().to_be();
        sa.sin6_addr.s6_addr = v6.ip().octets();
        let rc = libc::bind(
            fd,
            &sa as *const _ as *const libc::sockaddr,
            std::mem::size_of_val(&sa) as u32,
        );
        assert_eq!(rc, 0, "bind {addr}: {}", std::io::Error::last_os_error());
        assert_eq!(libc::listen(fd, 1024), 0);
        TcpListener::from_raw_fd(fd)
    }
}

fn echo(mut s: TcpStream) {
    let _ = s.set_nodelay(true);
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        match s.read(&mut buf) {
            Ok(0) | Err(_) => break,
            Ok(n) => {
                if s.write_all(&buf[..n]).is_err() {
                    break;
                }
            }
        }
    }
    let _ = s.shutdown(Shutdown::Write);
}

fn connect(addr: &str, bytes: usize) {
    let addr: SocketAddr = addr.parse().expect("address");
    let pid = std::process::id();
    let uid = unsafe { libc::getuid() };
    match TcpStream::connect(addr) {
        Err(e) => {
            println!(
                "{}",
                serde_json::json!({"pid": pid, "uid": uid, "error": e.to_string(), "errno": e.raw_os_error()})
            );
            std::process::exit(1);
        }
        Ok(mut s) => {
            let peer = s.peer_addr().map(|a| a.to_string()).unwrap_or_default();
            let local = s.local_addr().map(|a| a.to_string()).unwrap_or_default();
            let payload: Vec<u8> = (0..bytes).map(|i| (i % 251) as u8).collect();
            let writer = {
                let mut w = s.try_clone().unwrap();
                let payload = payload.clone();
                // A peer that closes at once (the agent refusing an unredirected
                // connection) makes these fail; the report shows it as no echo.
                thread::spawn(move || {
                    let _ = w.write_all(&payload);
                    let _ = w.shutdown(Shutdown::Write);
                })
            };
            let mut back = Vec::new();
            let read = s.read_to_end(&mut back);
            writer.join().unwrap();
            println!(
                "{}",
                serde_json::json!({
                    "pid": pid, "uid": uid, "peer": peer, "local": local,
                    "sent": bytes, "received": back.len(), "echo_ok": back == payload,
                    "error": read.err().map(|e| e.to_string()),
                })
            );
        }
    }
}

fn percentile(sorted: &[u64], p: f64) -> u64 {
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i]
}

fn connect_bench(addr: &str, n: usize) {
    let addr: SocketAddr = addr.parse().expect("address");
    let mut lat = Vec::with_capacity(n);
    for _ in 0..n {
        let t = Instant::now();
        let mut s = TcpStream::connect(addr).expect("connect");
        lat.push(t.elapsed().as_nanos() as u64);
        // The server closes first, so TIME_WAIT lands on its side and tens of thousands
        // of connects never exhaust this host's ephemeral ports.
        let _ = s.read(&mut [0u8; 1]);
    }
    lat.sort_unstable();
    println!(
        "{}",
        serde_json::json!({"n": n, "p50_ns": percentile(&lat, 0.5), "p99_ns": percentile(&lat, 0.99)})
    );
}

/// A worker looping on connect-and-close: counts the connects that succeeded.
fn connect_close(addr: &str, n: usize) {
    let addr: SocketAddr = addr.parse().expect("address");
    let (mut connected, mut failed) = (0u64, 0u64);
    for _ in 0..n {
        match TcpStream::connect(addr) {
            Ok(s) => {
                connected += 1;
                drop(s);
            }
            Err(_) => failed += 1,
        }
    }
    println!(
        "{}",
        serde_json::json!({"connected": connected, "failed": failed, "pid": std::process::id()})
    );
}

fn bulk(addr: &str, bytes: u64) {
    let addr: SocketAddr = addr.parse().expect("address");
    let mut s = TcpStream::connect(addr).expect("connect");
    let t = Instant::now();
    let mut w = s.try_clone().unwrap();
    let writer = thread::spawn(move || {
        let chunk = vec![7u8; 256 * 1024];
        let mut left = bytes;
        while left > 0 {
            let n = left.min(chunk.len() as u64) as usize;
            w.write_all(&chunk[..n]).unwrap();
            left -= n as u64;
        }
        w.shutdown(Shutdown::Write).unwrap();
    });
    let mut buf = vec![0u8; 256 * 1024];
    let mut got = 0u64;
    loop {
        let n = s.read(&mut buf).unwrap();
        if n == 0 {
            break;
        }
        got += n as u64;
    }
    writer.join().unwrap();
    let secs = t.elapsed().as_secs_f64();
    println!(
        "{}",
        serde_json::json!({"bytes": got, "secs": secs, "mib_per_s": got as f64 / secs / 1048576.0})
    );
}

fn rr(addr: &str, n: usize, size: usize) {
    let addr: SocketAddr = addr.parse().expect("address");
    let mut s = TcpStream::connect(addr).expect("connect");
    s.set_nodelay(true).unwrap();
    let req = vec![1u8; size];
    let mut resp = vec![0u8; size];
    let mut lat = Vec::with_capacity(n);
    let start = Instant::now();
    for _ in 0..n {
        let t = Instant::now();
        s.write_all(&req).unwrap();
        s.read_exact(&mut resp).unwrap();
        lat.push(t.elapsed().as_nanos() as u64);
    }
    let secs = start.elapsed().as_secs_f64();
    lat.sort_unstable();
    println!(
        "{}",
        serde_json::json!({"n": n, "p50_ns": percentile(&lat, 0.5), "p99_ns": percentile(&lat, 0.99), "rps": n as f64 / secs})
    );
}
