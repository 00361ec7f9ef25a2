"""Calls of different functions in one psycopg 3 pipeline (one extended batch), and in
asyncpg's executemany: each is looked up and judged as what the server runs. Prints one
JSON object."""
import asyncio
import json
import sys

import asyncpg
import psycopg
import faulthandler
faulthandler.dump_traceback_later(15, exit=True)


def pipeline(port, password):
    dsn = (f"host=127.0.0.1 port={port} user=postgres password={password} "
           "dbname=postgres sslmode=disable")
    out = {}
    with psycopg.connect(dsn, autocommit=True) as conn:
        with conn.pipeline():
            a = conn.execute("SELECT upper(%s)", ("a",))
            b = conn.execute("SELECT lower(%s)", ("B",))
            c = conn.execute("SELECT count(*) FROM orders WHERE qty > %s", (0,))
        out["pipeline"] = [a.fetchone()[0], b.fetchone()[0], c.fetchone()[0]]
        try:
            with conn.pipeline():
                conn.execute("SELECT length(%s)", ("abc",))
                conn.execute("SELECT nextval('order_ids')")
            out["nextval"] = "ran"
        except psycopg.Error as e:
            out["nextval"] = e.sqlstate
    return out


async def many(port, password):
    conn = await asyncpg.connect(host="127.0.0.1", port=int(port), user="postgres",
                                 password=password, database="postgres", ssl=False)
    await conn.executemany("SELECT abs($1::int)", [(-1,), (-2,), (-3,)])
    r = await conn.fetchval("SELECT max(abs(qty)) FROM orders")
    await conn.close()
    return r


port, password = sys.argv[1], sys.argv[2]
out = pipeline(port, password)
out["asyncpg"] = asyncio.run(many(port, password))
print(json.dumps(out))
