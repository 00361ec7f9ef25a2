"""Masked results as drivers see them: asyncpg (extended protocol, binary results,
prepared statements executed without a Describe, cursors) and psycopg 3 (binary cursor,
server-side cursor, COPY TO STDOUT). Prints one JSON object."""
import asyncio
import json
import sys

import asyncpg
import psycopg
import faulthandler
faulthandler.dump_traceback_later(30, exit=True)

Q = "SELECT id, email, ssn, card, note FROM customers WHERE id <= $1 ORDER BY id"


async def with_asyncpg(port, password, out):
    conn = await asyncpg.connect(host="127.0.0.1", port=int(port), user="postgres",
                                 password=password, database="postgres", ssl=False)
    out["asyncpg_fetch"] = [list(r) for r in await conn.fetch(Q, 2)]
    stmt = await conn.prepare("SELECT email, phone FROM customers WHERE id = $1")
    # Each fetch re-executes the prepared statement: Bind/Execute, no Describe.
    out["asyncpg_prepared"] = [list(await stmt.fetchrow(i)) for i in (1, 2, 3)]
    out["asyncpg_ids"] = [r["id"] for r in await conn.fetch(
        "SELECT id, uuid_col FROM customers ORDER BY id")]
    out["asyncpg_uuid"] = [str(r[0]) for r in await conn.fetch(
        "SELECT uuid_col FROM customers ORDER BY id")]
    async with conn.transaction():
        rows = []
        async for r in conn.cursor("SELECT email FROM customers ORDER BY id", prefetch=1):
            rows.append(r["email"])
        out["asyncpg_cursor"] = rows
    out["asyncpg_returning"] = await conn.fetchval(
        "UPDATE customers SET name = name WHERE id = $1 RETURNING email", 3)
    await conn.close()


def with_psycopg(port, password, out):
    dsn = (f"host=127.0.0.1 port={port} user=postgres dbname=postgres "
           f"password={password} sslmode=disable")
    with psycopg.connect(dsn) as conn:
        with conn.cursor(binary=True) as cur:
            cur.execute("SELECT id, email, lower(phone) || '' AS expr FROM customers "
                        "WHERE id <= %s ORDER BY id", (2,))
            out["psycopg_binary"] = [list(r) for r in cur.fetchall()]
        with conn.cursor(name="server_side") as cur:
            cur.execute("SELECT email FROM customers ORDER BY id")
            out["psycopg_named_cursor"] = [r[0] for r in cur.fetchall()]
        with conn.cursor() as cur:
            rows = []
            with cur.copy("COPY customers (id, email, ssn) TO STDOUT") as copy:
                for row in copy.rows():
                    rows.append(list(row))
            out["psycopg_copy"] = rows


async def main(port, password):
    out = {}
    await with_asyncpg(port, password, out)
    with_psycopg(port, password, out)
    print(json.dumps(out, default=str))


asyncio.run(main(sys.argv[1], sys.argv[2]))
