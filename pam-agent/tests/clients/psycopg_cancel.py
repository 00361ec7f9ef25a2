"""Cancels a long query from another thread (psycopg 3, libpq's cancel on a new
connection). Prints one JSON object."""
import json
import sys
import threading
import time

import psycopg
from psycopg import errors

port, password = sys.argv[1], sys.argv[2]
dsn = f"host=127.0.0.1 port={port} user=postgres password={password} dbname=postgres sslmode=disable"
out = {}
with psycopg.connect(dsn, autocommit=True) as conn:
    threading.Timer(0.5, conn.cancel).start()
    started = time.monotonic()
    try:
        conn.execute("SELECT pg_sleep(20)")
        out["cancel"] = "not cancelled"
    except errors.QueryCanceled as e:
        out["cancel"] = e.sqlstate
    out["seconds"] = time.monotonic() - started
    out["after"] = conn.execute("SELECT 42").fetchone()[0]
    # The key the worker holds is the agent's, not the server's.
    out["visible_pid"] = conn.info.backend_pid
    out["server_pid"] = conn.execute("SELECT pg_backend_pid()").fetchone()[0]
print(json.dumps(out))
