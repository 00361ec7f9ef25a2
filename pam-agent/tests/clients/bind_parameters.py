"""Bound parameters of several types through the proxy: asyncpg (binary values, types
from the server's ParameterDescription) and psycopg 3 (text values). Prints one JSON
object with what came back."""
import asyncio
import datetime
import decimal
import json
import sys
import uuid

import asyncpg
import psycopg
import faulthandler
faulthandler.dump_traceback_later(15, exit=True)


async def with_asyncpg(port, password):
    conn = await asyncpg.connect(host="127.0.0.1", port=int(port), user="postgres",
                                 password=password, database="postgres", ssl=False)
    out = {}
    out["row"] = list(await conn.fetchrow(
        "SELECT $1::int4, $2::int8, $3::text, $4::bool, $5::uuid, $6::numeric, "
        "$7::timestamptz, $8::date, $9::float8, $10::text",
        7, -9000000000, "shipped", True,
        uuid.UUID("12345678-1234-5678-1234-567812345678"), decimal.Decimal("-12.345"),
        datetime.datetime(2026, 1, 2, 3, 4, 5, tzinfo=datetime.timezone.utc),
        datetime.date(2026, 12, 1), 1.5, None))
    await conn.execute("INSERT INTO audit_log (note) VALUES ($1)", "jane@example.com")
    stmt = await conn.prepare("SELECT qty FROM orders WHERE id = $1")
    out["prepared"] = [await stmt.fetchval(i) for i in (2, 3)]
    await conn.close()
    return out


def with_psycopg(port, password):
    dsn = (f"host=127.0.0.1 port={port} user=postgres password={password} "
           "dbname=postgres sslmode=disable")
    with psycopg.connect(dsn, autocommit=True) as conn:
        return conn.execute("SELECT item FROM orders WHERE id = %s AND item <> %s",
                            (4, "none")).fetchone()[0]


def main():
    port, password = sys.argv[1], sys.argv[2]
    out = asyncio.run(with_asyncpg(port, password))
    out["psycopg"] = with_psycopg(port, password)
    out["row"] = [str(v) if v is not None else None for v in out["row"]]
    print(json.dumps(out))


main()
