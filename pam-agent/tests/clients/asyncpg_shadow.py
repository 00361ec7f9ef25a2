"""asyncpg calling names that a user function shadows on the session's search path,
directly and in its type introspection (prepared inside an open batch: Parse,
Describe, Flush). Prints one JSON object:
the SQLSTATE each call got, and a plain read after them."""
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
    for name, sql in [("lower", "SELECT lower(item) FROM orders WHERE id = $1"),
                      ("array_agg", "SELECT array_agg(id) FROM orders WHERE id > $1"),
                      # A composite: asyncpg introspects it inside its open batch,
                      # with a query that calls array_agg.
                      ("pair", "SELECT ROW($1::int, 'x')::public.pair")]:
        try:
            out[name] = await conn.fetchval(sql, 1)
        except asyncpg.PostgresError as e:
            out[name] = e.sqlstate
    out["after"] = await conn.fetchval("SELECT count(*) FROM public.orders")
    await conn.close()
    return out


print(json.dumps(asyncio.run(main(sys.argv[1], sys.argv[2]))))
