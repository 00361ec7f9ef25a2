"""A cancel that lands while pam-agent's own function lookup waits, for
tests/tests/wire_fidelity.rs: psycopg 3, through the agent. Prints one JSON object.

For each protocol (simple Query, extended with a parameter): a holder session takes an
ACCESS EXCLUSIVE lock on pg_language in an open transaction (the agent's lookup joins
it); a worker session calls a function its session has not called before, so the agent
looks the function up first and the lookup waits for the lock. Once the server shows the
worker's backend waiting (pg_locks: no timing), the worker cancels. Then the lock goes,
and the worker counts the rows the function would have written and calls it again.
Last, in a transaction a division by zero aborted, a call of another new function.
"""
import json
import sys
import threading
import time

import psycopg


def note_call(worker, protocol):
    """psycopg sends a text without parameters as a simple Query."""
    if protocol == "simple":
        worker.execute("SELECT note_call('simple')")
    else:
        worker.execute("SELECT note_call(%s)", ["extended"])


def cancelled_during_lookup(dsn, protocol):
    holder = psycopg.connect(dsn, autocommit=True)
    worker = psycopg.connect(dsn, autocommit=True)
    pid = worker.info.backend_pid
    holder.execute("BEGIN")
    holder.execute("LOCK TABLE pg_catalog.pg_language IN ACCESS EXCLUSIVE MODE")
    got = {}

    def call():
        try:
            note_call(worker, protocol)
            got["error"] = None
        except psycopg.Error as e:
            got["error"] = [e.sqlstate, e.diag.message_primary]

    t = threading.Thread(target=call)
    t.start()
    waits = "SELECT count(*) FROM pg_catalog.pg_locks WHERE pid = %s AND NOT granted"
    while holder.execute(waits, [pid]).fetchone()[0] == 0:
        time.sleep(0.01)
    worker.cancel()
    t.join()
    holder.execute("ROLLBACK")
    out = {
        "cancelled": got["error"],
        "written": worker.execute(
            "SELECT count(*) FROM calls WHERE tag = %s", [protocol]).fetchone()[0],
    }
    note_call(worker, protocol)
    out["written_after"] = worker.execute(
        "SELECT count(*) FROM calls WHERE tag = %s", [protocol]).fetchone()[0]
    holder.close()
    worker.close()
    return out


def aborted_transaction(dsn):
    with psycopg.connect(dsn, autocommit=True) as worker:
        worker.execute("BEGIN")
        try:
            worker.execute("SELECT 1 / 0")
        except psycopg.Error:
            pass
        try:
            worker.execute("SELECT note_other('aborted')")
            error = None
        except psycopg.Error as e:
            error = [e.sqlstate, e.diag.message_primary]
        worker.execute("ROLLBACK")
        return {"error": error,
                "after": worker.execute("SELECT note_other('after')").fetchone()[0]}


dsn = sys.argv[1]
print(json.dumps({
    "simple": cancelled_during_lookup(dsn, "simple"),
    "extended": cancelled_during_lookup(dsn, "extended"),
    "aborted": aborted_transaction(dsn),
}))
