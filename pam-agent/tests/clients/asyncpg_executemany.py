"""asyncpg's pipelined executemany through the proxy. Modes:
- `fail N`: the second row repeats the first one's key, then up to N rows of 32 KiB
  follow; prints the error's SQLSTATE and how many rows the client had produced when it
  stopped (asyncpg stops writing once the server's error has arrived).
- `large N`: N rows of about 1 KiB, all inserted; prints the count the server then has.
Prints one JSON object."""
import asyncio
import json
import sys

import asyncpg
import faulthandler
faulthandler.dump_traceback_later(120, exit=True)


async def main(port, password, mode, n):
    conn = await asyncpg.connect(host=sys.argv[5] if len(sys.argv) > 5 else "127.0.0.1",
                                 port=int(port), user="postgres",
                                 password=password, database="postgres", ssl=False)
    await conn.execute("CREATE TABLE IF NOT EXISTS many (id int PRIMARY KEY, v text)")
    out = {}
    pos = 0
    if mode == "fail":
        def rows():
            nonlocal pos
            while pos < n:
                pos += 1
                yield (1 if pos <= 2 else pos, "a" * (32768 if pos > 2 else 1))
        try:
            await conn.executemany("INSERT INTO many VALUES ($1, $2)", rows())
            out["error"] = None
        except asyncpg.PostgresError as e:
            out["error"] = e.sqlstate
        out["produced"] = pos
    else:
        def rows():
            for i in range(n):
                yield (i, "x" * 1000)
        await conn.executemany("INSERT INTO many VALUES ($1, $2)", rows())
    out["rows"] = await conn.fetchval("SELECT count(*) FROM many")
    await conn.execute("DROP TABLE many")
    await conn.close()
    return out


print(json.dumps(asyncio.run(main(sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4])))))
