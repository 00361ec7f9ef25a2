"""SQLAlchemy over psycopg2 through the proxy (the stack NL2SQL agent tools use).
Prints one JSON object."""
import json
import sys

from sqlalchemy import create_engine, exc, text

port, password = sys.argv[1], sys.argv[2]
engine = create_engine(
    f"postgresql+psycopg2://postgres:{password}@127.0.0.1:{port}/postgres?sslmode=disable")
out = {}
with engine.connect() as conn:
    out["rows"] = [list(r) for r in conn.execute(text("SELECT id, qty FROM orders WHERE qty > :q ORDER BY id"), {"q": 25})]
    try:
        conn.execute(text("SELECT * FROM secret.keys"))
        out["secret"] = "not refused"
    except exc.ProgrammingError as e:
        out["secret"] = [e.orig.pgcode, str(e.orig).strip()]
    conn.rollback()
    conn.execute(text("INSERT INTO audit_log (note) VALUES (:n)"), {"n": "orm"})
    conn.commit()
    out["count"] = conn.execute(text("SELECT count(*) FROM audit_log")).scalar()
print(json.dumps(out))
