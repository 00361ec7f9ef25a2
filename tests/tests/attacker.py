"""Attackers and odd workers for tests/tests/redirect_integrity.rs.

Each mode prints one JSON line at the end (or streams lines) so the test can assert
what the attacker saw. Runs under /usr/bin/python3 as root or as nobody.

  squat PORT SECONDS OUTFILE     bind loop on 127.0.0.1:PORT and [::1]:PORT, accept and
                                 log every connection to OUTFILE ("accepted ...")
  loop DST SECONDS               connect to DST again and again; count outcomes
  hold DST                       connect, print local address, wait for a line on stdin,
                                 then write until the connection breaks; keep the socket
  scan TARGET_PORT LO HI         for each local port: bind 127.0.0.1:p, connect to
                                 127.0.0.1:TARGET_PORT, send, count what comes back
  netns PORT DST [BIND_PORT]     (inside a fresh network namespace) listen on the
                                 loopback's PORT, then connect to DST; report both
  premade CGROUP DST             make a socket, then join CGROUP, then connect with it
  passed_in CGROUP DST           an ungoverned parent makes a socket and passes it over
                                 SCM_RIGHTS to a child in CGROUP, which connects
  passed_out CGROUP DST          a child in CGROUP makes a socket and passes it to the
                                 ungoverned parent, which connects
  fire DST                       connect, send, and exit at once
  exec_after DST PROGRAM         connect, then exec PROGRAM (keeping the socket)
  comm NAME DST                  set the command name (prctl) to NAME, then `hold DST`
  mptcp DST                      connect with an IPPROTO_MPTCP socket, echo, report
  tfo DST                        connect by sendto(MSG_FASTOPEN) (TCP Fast Open), echo
"""

import errno
import json
import os
import select
import socket
import sys
import time


def addr_of(text):
    host, port = text.rsplit(":", 1)
    host = host.strip("[]")
    fam = socket.AF_INET6 if ":" in host else socket.AF_INET
    return fam, (host, int(port))


def squat(port, seconds, outfile):
    out = open(outfile, "a", buffering=1)
    socks = {}
    deadline = time.time() + seconds
    while time.time() < deadline:
        for fam, host in ((socket.AF_INET, "127.0.0.1"), (socket.AF_INET6, "::1")):
            if host in socks:
                continue
            s = socket.socket(fam, socket.SOCK_STREAM)
            s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            try:
                s.bind((host, port))
                s.listen(128)
                s.setblocking(False)
                socks[host] = s
                out.write("bound %s\n" % host)
            except OSError:
                s.close()
        if not socks:
            time.sleep(0.0005)
            continue
        ready, _, _ = select.select(list(socks.values()), [], [], 0.001)
        for s in ready:
            try:
                c, peer = s.accept()
            except OSError:
                continue
            c.settimeout(0.2)
            try:
                data = c.recv(65536)
            except OSError:
                data = b""
            out.write("accepted %s %d\n" % (peer[0], len(data)))
            c.close()


def loop(dst, seconds):
    fam, addr = addr_of(dst)
    counts = {"ok": 0, "refused": 0, "other": 0, "errors": []}
    deadline = time.time() + seconds
    while time.time() < deadline:
        s = socket.socket(fam, socket.SOCK_STREAM)
        s.settimeout(3)
        try:
            s.connect(addr)
            s.sendall(b"ping")
            s.shutdown(socket.SHUT_WR)
            back = b""
            while True:
                chunk = s.recv(100)
                if not chunk:
                    break
                back += chunk
            if back == b"ping":
                counts["ok"] += 1
            else:
                counts["other"] += 1
        except OSError as e:
            if e.errno == errno.ECONNREFUSED:
                counts["refused"] += 1
            else:
                counts["other"] += 1
                if len(counts["errors"]) < 5:
                    counts["errors"].append(str(e))
        finally:
            s.close()
        time.sleep(0.002)
    print(json.dumps(counts), flush=True)


def hold(dst, bind_port=0):
    fam, addr = addr_of(dst)
    s = socket.socket(fam, socket.SOCK_STREAM)
    if bind_port:
        # A port of its own, shared with nobody (as with SO_REUSEADDR anyone may).
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        s.bind(("0.0.0.0", bind_port))
    try:
        s.connect(addr)
    except OSError as e:
        print(json.dumps({"connected": False, "errno": e.errno}), flush=True)
        sys.stdin.readline()
        time.sleep(3600)
        return
    local = s.getsockname()
    print(json.dumps({"connected": True, "local_port": local[1], "pid": os.getpid()}), flush=True)
    sys.stdin.readline()
    broken = None
    for _ in range(200):
        try:
            s.send(b"x")
        except OSError as e:
            broken = e.errno
            break
        time.sleep(0.02)
    print(json.dumps({"broken": broken}), flush=True)
    time.sleep(3600)  # keep the socket (and whatever the kernel keeps for it)


def scan(target_port, lo, hi):
    result = {"bound": 0, "connected": 0, "got_data": 0, "bound_ports": []}
    for p in range(lo, hi + 1):
        if p == target_port:
            continue  # binding the target itself is a TCP self-connect: talks to itself
        s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        s.settimeout(1)
        try:
            s.bind(("127.0.0.1", p))
        except OSError:
            s.close()
            continue
        result["bound"] += 1
        if len(result["bound_ports"]) < 100000:
            result["bound_ports"].append(p)
        try:
            s.connect(("127.0.0.1", target_port))
            result["connected"] += 1
            s.sendall(b"steal")
            data = s.recv(100)
            if data:
                result["got_data"] += 1
        except OSError:
            pass
        finally:
            s.close()
    print(json.dumps(result), flush=True)


def netns(port, dst, bind_port):
    squatters = []
    for fam, host in ((socket.AF_INET, "127.0.0.1"), (socket.AF_INET6, "::1")):
        s = socket.socket(fam, socket.SOCK_STREAM)
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        s.bind((host, port))
        s.listen(16)
        s.setblocking(False)
        squatters.append(s)
    fam, addr = addr_of(dst)
    c = socket.socket(fam, socket.SOCK_STREAM)
    c.settimeout(2)
    if bind_port:
        c.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        c.bind(("0.0.0.0" if fam == socket.AF_INET else "::", bind_port))
    report = {"connected": False, "errno": None, "squatter_accepted": 0}
    try:
        c.connect(addr)
        report["connected"] = True
    except OSError as e:
        report["errno"] = e.errno
    time.sleep(0.2)
    for s in squatters:
        try:
            s.accept()
            report["squatter_accepted"] += 1
        except OSError:
            pass
    print(json.dumps(report), flush=True)


def join(cgroup):
    with open(os.path.join(cgroup, "cgroup.procs"), "w") as f:
        f.write("0")


def echo_with(s, dst):
    fam, addr = addr_of(dst)
    report = {"pid": os.getpid(), "echo_ok": False, "errno": None}
    try:
        s.settimeout(5)
        s.connect(addr)
        report["local"] = "%s:%d" % s.getsockname()[:2]
        report["peer"] = "%s:%d" % s.getpeername()[:2]
        s.sendall(b"hello")
        s.shutdown(socket.SHUT_WR)
        back = b""
        while True:
            chunk = s.recv(100)
            if not chunk:
                break
            back += chunk
        report["echo_ok"] = back == b"hello"
    except OSError as e:
        report["errno"] = e.errno
    return report


def family_of(dst):
    return addr_of(dst)[0]


def premade(cgroup, dst):
    s = socket.socket(family_of(dst), socket.SOCK_STREAM)
    join(cgroup)
    print(json.dumps(echo_with(s, dst)), flush=True)


def passed_in(cgroup, dst):
    parent, child = socket.socketpair(socket.AF_UNIX, socket.SOCK_DGRAM)
    pid = os.fork()
    if pid == 0:
        parent.close()
        join(cgroup)
        _, fds, _, _ = socket.recv_fds(child, 16, 1)
        s = socket.socket(fileno=fds[0])
        print(json.dumps(echo_with(s, dst)), flush=True)
        os._exit(0)
    child.close()
    s = socket.socket(family_of(dst), socket.SOCK_STREAM)
    socket.send_fds(parent, [b"x"], [s.fileno()])
    s.close()
    os.waitpid(pid, 0)


def passed_out(cgroup, dst):
    parent, child = socket.socketpair(socket.AF_UNIX, socket.SOCK_DGRAM)
    pid = os.fork()
    if pid == 0:
        parent.close()
        join(cgroup)
        s = socket.socket(family_of(dst), socket.SOCK_STREAM)
        socket.send_fds(child, [b"x"], [s.fileno()])
        os._exit(0)
    child.close()
    _, fds, _, _ = socket.recv_fds(parent, 16, 1)
    os.waitpid(pid, 0)
    s = socket.socket(fileno=fds[0])
    print(json.dumps(echo_with(s, dst)), flush=True)


def fire(dst):
    fam, addr = addr_of(dst)
    s = socket.socket(fam, socket.SOCK_STREAM)
    s.connect(addr)
    s.sendall(b"fire and forget")
    print(json.dumps({"pid": os.getpid()}), flush=True)
    os._exit(0)


def exec_after(dst, program):
    fam, addr = addr_of(dst)
    s = socket.socket(fam, socket.SOCK_STREAM)
    s.connect(addr)
    s.set_inheritable(True)
    print(json.dumps({"pid": os.getpid()}), flush=True)
    os.execv(program, [program, "3"])


def set_comm(name):
    import ctypes

    libc = ctypes.CDLL(None)
    PR_SET_NAME = 15
    libc.prctl(PR_SET_NAME, ctypes.c_char_p(name.encode()), 0, 0, 0)


def mptcp(dst):
    s = socket.socket(family_of(dst), socket.SOCK_STREAM, 262)  # IPPROTO_MPTCP
    print(json.dumps(echo_with(s, dst)), flush=True)


def tfo(dst):
    fam, addr = addr_of(dst)
    s = socket.socket(fam, socket.SOCK_STREAM)
    report = {"pid": os.getpid(), "echo_ok": False, "errno": None}
    try:
        # Blocking (a timeout would make it non-blocking: EINPROGRESS).
        s.sendto(b"hello", socket.MSG_FASTOPEN, addr)
        s.settimeout(5)
        report["local"] = "%s:%d" % s.getsockname()[:2]
        s.shutdown(socket.SHUT_WR)
        back = b""
        while True:
            chunk = s.recv(100)
            if not chunk:
                break
            back += chunk
        report["echo_ok"] = back == b"hello"
    except OSError as e:
        report["errno"] = e.errno
    print(json.dumps(report), flush=True)


def main():
    mode, args = sys.argv[1], sys.argv[2:]
    if mode == "squat":
        squat(int(args[0]), float(args[1]), args[2])
    elif mode == "loop":
        loop(args[0], float(args[1]))
    elif mode == "hold":
        hold(args[0], int(args[1]) if len(args) > 1 else 0)
    elif mode == "scan":
        scan(int(args[0]), int(args[1]), int(args[2]))
    elif mode == "netns":
        netns(int(args[0]), args[1], int(args[2]) if len(args) > 2 else 0)
    elif mode == "exec_after":
        exec_after(args[0], args[1])
    elif mode == "comm":
        set_comm(args[0])
        hold(args[1])
    elif mode == "tfo":
        tfo(args[0])
    elif mode == "mptcp":
        mptcp(args[0])
    elif mode == "fire":
        fire(args[0])
    elif mode == "premade":
        premade(args[0], args[1])
    elif mode == "passed_in":
        passed_in(args[0], args[1])
    elif mode == "passed_out":
        passed_out(args[0], args[1])
    else:
        sys.exit("unknown mode " + mode)


if __name__ == "__main__":
    main()
