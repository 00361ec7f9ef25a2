"""Malformed PostgreSQL sessions, as a fuzzer sends them, for the agent's memory tests.

  malformed_sessions.py HOST PORT PASSWORD SESSIONS SEED LONGEST

Each session is one of: garbage before the startup packet; a startup packet with odd
parameters; a logged-in psycopg session that sends a unique malformed statement, a long message
(its bytes all sent), then a malformed protocol message on its socket. Prints one JSON line with the counts.
"""

import json
import os
import random
import socket
import struct
import sys

import psycopg


def startup(params):
    body = struct.pack("!I", 196608)
    for k, v in params:
        body += k.encode() + b"\0" + v.encode() + b"\0"
    body += b"\0"
    return struct.pack("!I", len(body) + 4) + body


def raw_session(host, port, payload):
    s = socket.create_connection((host, port), timeout=5)
    try:
        s.sendall(payload)
        s.shutdown(socket.SHUT_WR)
        while s.recv(65536):
            pass
    except OSError:
        pass
    finally:
        s.close()


def main():
    host, port, password = sys.argv[1], int(sys.argv[2]), sys.argv[3]
    sessions, seed, longest = int(sys.argv[4]), int(sys.argv[5]), int(sys.argv[6])
    rnd = random.Random(seed)
    counts = {"garbage": 0, "startup": 0, "statement": 0, "errors": 0}
    for i in range(sessions):
        kind = i % 3
        try:
            if kind == 0:
                raw_session(host, port, rnd.randbytes(rnd.randint(1, 3000)))
                counts["garbage"] += 1
            elif kind == 1:
                params = [("user", "postgres"), ("database", "postgres")]
                params += [
                    (f"opt_{rnd.randint(0, 1 << 30)}", "x" * rnd.randint(0, 2000))
                    for _ in range(rnd.randint(0, 3))
                ]
                raw_session(host, port, startup(params) + rnd.randbytes(rnd.randint(0, 500)))
                counts["startup"] += 1
            else:
                with psycopg.connect(
                    host=host,
                    port=port,
                    user="postgres",
                    password=password,
                    dbname="postgres",
                    autocommit=True,
                    connect_timeout=5,
                ) as c:
                    junk = "".join(rnd.choice("()[]'\"$;,. selctfromwhe") for _ in range(200))
                    try:
                        c.execute(f"select {i}, /* {seed} */ {junk}")
                    except psycopg.Error:
                        pass
                    # A long message whose bytes are all sent (a bound value, or a
                    # literal in the text), up to LONGEST bytes: the agent reads it
                    # whole and the server's answer is as long.
                    big = "x" * rnd.randint(min(64 << 10, longest), longest)
                    try:
                        if rnd.random() < 0.5:
                            c.execute("select length(%s::text)", (big,))
                        else:
                            c.execute(f"select '{big}'::text").fetchone()
                    except psycopg.Error:
                        pass
                    # A message whose length lies about its body (up to the 64 MiB a
                    # message may have), then the connection closes.
                    tag = rnd.choice(b"QPBEDSCHFX")
                    length = rnd.choice([rnd.randint(4, 5000), rnd.randint(1 << 16, 64 << 20)])
                    frame = bytes([tag]) + struct.pack("!i", length)
                    os.write(c.pgconn.socket, frame + rnd.randbytes(rnd.randint(0, 2000)))
                counts["statement"] += 1
        except (OSError, psycopg.Error):
            counts["errors"] += 1
    print(json.dumps(counts))


if __name__ == "__main__":
    main()
