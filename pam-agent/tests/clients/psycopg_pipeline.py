"""psycopg 3 through the proxy: pipeline mode (extended protocol, one Sync for many
statements), a refusal inside a pipeline, COPY both ways, server-side cursor.
Prints one JSON object."""
import json
import sys

import psycopg
from psycopg import errors

port, password = sys.argv[1], sys.argv[2]
out = {}
dsn = f"host=127.0.0.1 port={port} user=postgres password={password} dbname=postgres sslmode=disable"
with psycopg.connect(dsn, autocommit=True) as conn:
    with conn.pipeline():
        conn.execute("INSERT INTO audit_log (note) VALUES (%s)", ["p1"])
        cur = conn.execute("SELECT count(*) FROM audit_log")
    out["after_pipeline"] = cur.fetchone()[0]

    try:
        with conn.pipeline():
            conn.execute("INSERT INTO audit_log (note) VALUES (%s)", ["p2"])
            conn.execute("SELECT k FROM secret.keys")
            conn.execute("INSERT INTO audit_log (note) VALUES (%s)", ["p3"])
        out["pipeline_refusal"] = "not refused"
    except errors.InsufficientPrivilege as e:
        out["pipeline_refusal"] = [e.sqlstate, str(e)]
    out["notes"] = [r[0] for r in conn.execute("SELECT note FROM audit_log ORDER BY id")]

    with conn.cursor() as cur:
        with cur.copy("COPY audit_log (note) FROM STDIN") as copy:
            for i in range(1000):
                copy.write_row([f"copied-{i}"])
        out["copy_in_rows"] = cur.rowcount
        buf = bytearray()
        with cur.copy("COPY (SELECT id, item FROM orders ORDER BY id) TO STDOUT") as copy:
            for data in copy:
                buf += data
        out["copy_out"] = buf.decode()
    out["count_after_copy"] = conn.execute("SELECT count(*) FROM audit_log").fetchone()[0]

    try:
        with conn.cursor() as cur:
            with cur.copy("COPY secret.keys TO STDOUT") as copy:
                for _ in copy:
                    pass
        out["copy_secret"] = "not refused"
    except errors.InsufficientPrivilege as e:
        out["copy_secret"] = e.sqlstate

    with conn.transaction():
        with conn.cursor(name="server_side") as cur:
            cur.itersize = 2
            cur.execute("SELECT id FROM orders ORDER BY id")
            out["named_cursor"] = [r[0] for r in cur]
print(json.dumps(out))
