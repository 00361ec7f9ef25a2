"""A statement the agent refuses inside a transaction block, through psycopg 3 (the
extended protocol): the worker sees the refusal, then the block as the server leaves it
after any error (failed, later statements ignored, COMMIT rolls back), so the row it
inserted before the refusal never commits. Prints one JSON object."""

import json
import sys

import psycopg

dsn = sys.argv[1]
out = {}
with psycopg.connect(dsn) as conn:
    conn.execute("INSERT INTO bulk VALUES (2)")  # opens the block (autocommit is off)
    out["status_before"] = conn.info.transaction_status.name
    try:
        conn.execute("DELETE FROM orders")
    except psycopg.Error as e:
        out["refused"] = [e.sqlstate, e.diag.message_primary]
    out["status_after"] = conn.info.transaction_status.name
    try:
        conn.execute("SELECT 1")
    except psycopg.Error as e:
        out["next"] = e.sqlstate
    try:
        conn.commit()
        out["commit"] = "ok"
    except psycopg.Error as e:
        out["commit"] = [type(e).__name__, e.sqlstate]
    out["status_end"] = conn.info.transaction_status.name
with psycopg.connect(dsn, autocommit=True) as conn:
    out["rows"] = conn.execute("SELECT count(*) FROM bulk WHERE id = 2").fetchone()[0]
    try:
        conn.execute("DELETE FROM orders")
    except psycopg.Error as e:
        out["refused_outside"] = e.sqlstate
    out["status_outside"] = conn.info.transaction_status.name
    out["orders"] = conn.execute("SELECT count(*) FROM orders").fetchone()[0]
print(json.dumps(out))
