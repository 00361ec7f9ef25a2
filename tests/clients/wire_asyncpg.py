"""Unmodified asyncpg against a DSN, for tests/tests/wire_fidelity.rs. Prints one JSON
object.

- `composite`: values whose types asyncpg introspects first (a whole row, a composite,
  a domain, an array of composites); its introspection query calls array_agg.
- `large N`: a pipelined executemany of N rows of 2 KiB, then the count the server has.
"""
import asyncio
import json
import sys

import asyncpg


async def composite(conn):
    row = await conn.fetchval("SELECT o FROM orders o WHERE id = $1", 2)
    pair = await conn.fetchval("SELECT ROW(1, 'x')::pair")
    pairs = await conn.fetchval("SELECT ARRAY[ROW(2, 'y')::pair]")
    return {
        "row": [row["id"], row["customer"]],
        "pair": [pair["a"], pair["b"]],
        "domain": await conn.fetchval("SELECT 7::positive"),
        "pairs": [[p["a"], p["b"]] for p in pairs],
    }


async def large(conn, n):
    await conn.execute("CREATE TABLE bulk (id int PRIMARY KEY, v text)")
    await conn.executemany("INSERT INTO bulk VALUES ($1, $2)",
                           ((i, "x" * 2048) for i in range(n)))
    return {"rows": await conn.fetchval("SELECT count(*) FROM bulk")}


async def main(mode, dsn, *args):
    conn = await asyncpg.connect(dsn, ssl=False)
    try:
        if mode == "composite":
            out = await composite(conn)
        else:
            out = await large(conn, int(args[0]))
    except asyncpg.PostgresError as e:
        out = {"error": [e.sqlstate, str(e)]}
    await conn.close()
    return out


print(json.dumps(asyncio.run(main(*sys.argv[1:]))))
