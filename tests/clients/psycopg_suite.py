"""psycopg 3's own tests (their `tests/`, in SUITE_DIR) with pytest against the server
DSN names, for tests/tests/psycopg_suite.rs; the installed psycopg is the one tested.

Usage: psycopg_suite.py SUITE_DIR DSN TEST_FILE_OR_ID... Prints one JSON object as the
last line on stdout: test id -> [outcome, first line of why] with outcome one of pass,
fail, error, skip, xfail, xpass. pytest's own report goes to stderr.
"""
import contextlib
import json
import os
import shutil
import sys
import tempfile

import pytest


class Outcomes:
    """A pytest plugin keeping each test's outcome (setup and teardown included)."""

    def __init__(self):
        self.outcomes = {}

    def pytest_runtest_logreport(self, report):
        test = report.nodeid
        why = ""
        if report.longrepr is not None:
            text = getattr(report.longrepr, "reprcrash", None)
            why = text.message if text is not None else str(report.longrepr)
            why = why.strip().splitlines()[-1][:300] if why.strip() else ""
        xfail = hasattr(report, "wasxfail")
        if report.when == "setup":
            if report.skipped:
                self.outcomes[test] = ["xfail" if xfail else "skip", why]
            elif report.failed:
                self.outcomes[test] = ["error", why]
        elif report.when == "call":
            if report.passed:
                self.outcomes[test] = ["xpass" if xfail else "pass", ""]
            elif report.skipped:
                self.outcomes[test] = ["xfail" if xfail else "skip", why]
            else:
                self.outcomes[test] = ["fail", why]
        elif report.failed:
            self.outcomes[test] = ["error", why]


def main(suite_dir, dsn, names):
    os.chdir(suite_dir)
    sys.path.insert(0, suite_dir)
    plugin = Outcomes()
    # The suite's conftest keeps state in pytest's cache: a fresh one per run.
    cache = tempfile.mkdtemp(prefix="psycopg-suite-cache-")
    args = ["-q", "-p", "no:randomly", "--color=no", "-o", f"cache_dir={cache}",
            f"--test-dsn={dsn}", *names]
    out = sys.stdout
    with contextlib.redirect_stdout(sys.stderr):
        pytest.main(args, plugins=[plugin])
    shutil.rmtree(cache, ignore_errors=True)
    print(json.dumps(plugin.outcomes, sort_keys=True), file=out, flush=True)


main(sys.argv[1], sys.argv[2], sys.argv[3:])
