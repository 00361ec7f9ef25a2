"""asyncpg, unmodified, fetching values whose types it must introspect first (a
composite, a whole row, a domain, an array of composites): its introspection query
calls built-ins such as array_agg. Prints one JSON object."""
import asyncio
import json
import sys

import asyncpg
import faulthandler
faulthandler.dump_traceback_later(30, exit=True)


async def main(port, password):
    conn = await asyncpg.connect(host="127.0.0.1", port=int(port), user="postgres",
                                 password=password, database="postgres", ssl=False)
    out = {}
    try:
        row = await conn.fetchval("SELECT o FROM orders o WHERE id = $1", 2)
        out["row"] = [row["id"], row["item"], row["qty"]]
        pair = await conn.fetchval("SELECT ROW(1, 'x')::pair")
        out["pair"] = [pair["a"], pair["b"]]
        out["domain"] = await conn.fetchval("SELECT 7::positive")
        pairs = await conn.fetchval("SELECT ARRAY[ROW(2, 'y')::pair]")
        out["pairs"] = [[p["a"], p["b"]] for p in pairs]
    except asyncpg.PostgresError as e:
        out["error"] = [e.sqlstate, str(e)]
    await conn.close()
    return out


print(json.dumps(asyncio.run(main(sys.argv[1], sys.argv[2]))))
