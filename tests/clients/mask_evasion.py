"""Runs a corpus of masking evasion forms with one client and prints, per form, what the
client received: every value as text (bytes also as hex and as Latin-1), or the error.
The test decides whether a protected value is in there; this script knows no secrets.

usage: mask_evasion.py CLIENT DSN CORPUS_JSON
  CLIENT: psycopg-text | psycopg-binary | asyncpg (binary results)
  CORPUS_JSON: [{"name": ..., "steps": [sql, ...], "copy": inner query or null}, ...]
Each form runs in its own transaction, rolled back, so forms that write leave nothing.
"""
import asyncio
import io
import json
import sys
import faulthandler

faulthandler.dump_traceback_later(120, exit=True)


def cells(value, out):
    """Every way a client could read a value, flattened."""
    if value is None:
        return
    if isinstance(value, (bytes, bytearray, memoryview)):
        b = bytes(value)
        out.append(b.hex())
        out.append(b.decode("latin-1"))
    elif isinstance(value, (list, tuple)):
        for v in value:
            cells(v, out)
        out.append(repr(value))
    elif isinstance(value, dict):
        for v in value.values():
            cells(v, out)
        out.append(json.dumps(value, default=str))
    else:
        out.append(str(value))


def with_psycopg(dsn, corpus, binary):
    import psycopg

    result = {}
    with psycopg.connect(dsn) as conn:
        for form in corpus:
            got = {"values": [], "error": None, "sqlstate": None}
            try:
                with conn.cursor(binary=binary) as cur:
                    if form.get("copy"):
                        data = io.BytesIO()
                        with cur.copy(f"COPY ({form['copy']}) TO STDOUT") as cp:
                            for chunk in cp:
                                data.write(bytes(chunk))
                        got["values"].append(data.getvalue().decode("utf-8", "replace"))
                    for sql in form["steps"]:
                        cur.execute(sql)
                        if cur.description is not None:
                            for row in cur.fetchall():
                                for v in row:
                                    cells(v, got["values"])
            except psycopg.Error as e:
                got["error"] = str(e)
                got["sqlstate"] = e.sqlstate
            conn.rollback()
            result[form["name"]] = got
    return result


async def with_asyncpg(dsn, corpus):
    import asyncpg

    result = {}
    conn = await asyncpg.connect(dsn)
    # The database runs with jit off. asyncpg would still wrap its type introspection (for
    # composite types) in set_config('jit', ...), which the agent's classifier flags as a
    # possible role/search_path change (refused by this policy): tell it there is no JIT.
    conn._server_caps = conn._server_caps._replace(jit=False)
    for form in corpus:
        got = {"values": [], "error": None, "sqlstate": None}
        tr = conn.transaction()
        await tr.start()
        try:
            if form.get("copy"):
                data = io.BytesIO()
                await conn.copy_from_query(form["copy"], output=data)
                got["values"].append(data.getvalue().decode("utf-8", "replace"))
            for sql in form["steps"]:
                for row in await conn.fetch(sql):
                    for v in row.values():
                        cells(v, got["values"])
        except asyncpg.PostgresError as e:
            got["error"] = str(e)
            got["sqlstate"] = e.sqlstate
        await tr.rollback()
        result[form["name"]] = got
    await conn.close()
    return result


def main():
    client, dsn, corpus_path = sys.argv[1], sys.argv[2], sys.argv[3]
    with open(corpus_path) as f:
        corpus = json.load(f)
    if client == "asyncpg":
        out = asyncio.run(with_asyncpg(dsn, corpus))
    else:
        out = with_psycopg(dsn, corpus, binary=client == "psycopg-binary")
    print(json.dumps(out))


main()
