"""asyncpg through the proxy: extended protocol, prepared statements, pipelined
executemany, portals fetched in chunks, refusals. Prints one JSON object."""
import asyncio
import json
import sys

import asyncpg
import faulthandler
faulthandler.dump_traceback_later(15, exit=True)


async def main(port, password):
    conn = await asyncpg.connect(host="127.0.0.1", port=int(port), user="postgres",
                                 password=password, database="postgres", ssl=False)
    out = {}
    out["fetch"] = [list(r) for r in await conn.fetch(
        "SELECT id, item FROM orders WHERE id <= $1 ORDER BY id", 2)]
    stmt = await conn.prepare("SELECT qty FROM orders WHERE id = $1")
    out["prepared"] = [await stmt.fetchval(i) for i in (1, 2, 3)]
    await conn.executemany("INSERT INTO audit_log (note) VALUES ($1)", [("a",), ("b",), ("c",)])
    out["count_after_executemany"] = await conn.fetchval("SELECT count(*) FROM audit_log")

    async with conn.transaction():
        chunks = []
        async for r in conn.cursor("SELECT id FROM orders ORDER BY id", prefetch=2):
            chunks.append(r["id"])
        out["cursor"] = chunks

    for name, sql, args in [
        ("denied_fetch", "SELECT k FROM secret.keys WHERE k <> $1", ("x",)),
        ("denied_prepare", "UPDATE orders SET qty = $1", None),
        ("denied_simple", "DELETE FROM orders", None),
    ]:
        try:
            if name == "denied_prepare":
                await conn.prepare(sql)
            elif args:
                await conn.fetch(sql, *args)
            else:
                await conn.execute(sql)
            out[name] = "not refused"
        except asyncpg.PostgresError as e:
            out[name] = [e.sqlstate, e.args[0] if e.args else str(e)]

    # A refusal inside a transaction fails it, as the server's own error would: the
    # next statement is ignored (25P02) and nothing written in it commits.
    tr = conn.transaction()
    await tr.start()
    await conn.execute("INSERT INTO audit_log (note) VALUES ('in-tx-1')")
    try:
        await conn.fetch("SELECT k FROM secret.keys")
    except asyncpg.InsufficientPrivilegeError:
        pass
    try:
        await conn.execute("INSERT INTO audit_log (note) VALUES ('in-tx-2')")
        out["in_failed_tx"] = "not refused"
    except asyncpg.PostgresError as e:
        out["in_failed_tx"] = e.sqlstate
    await tr.rollback()
    out["count_after_tx"] = await conn.fetchval("SELECT count(*) FROM audit_log")
    # The prepared statement is still usable after the refusals.
    out["prepared_again"] = await stmt.fetchval(5)
    await conn.close()
    print(json.dumps(out))


asyncio.run(main(sys.argv[1], sys.argv[2]))
