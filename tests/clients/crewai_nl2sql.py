"""An unmodified CrewAI worker step: CrewAI's own NL2SQLTool runs a query against
PostgreSQL by the database's real address. Prints the rows as one JSON line.

usage: crewai_nl2sql.py DB_URI SQL
"""
import json
import os
import sys

# No telemetry: the test machine has no internet, and the worker must not wait on it.
os.environ.setdefault("CREWAI_DISABLE_TELEMETRY", "true")
os.environ.setdefault("OTEL_SDK_DISABLED", "true")

from crewai_tools import NL2SQLTool  # noqa: E402

uri, sql = sys.argv[1], sys.argv[2]
tool = NL2SQLTool(db_uri=uri)
print(json.dumps(tool.run(sql_query=sql), default=str))
