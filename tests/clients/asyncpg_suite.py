"""asyncpg's own test suite (the `tests/` of its 0.32.0 sdist, which `cargo xtask setup`
installs) against the running server that PGHOST, PGPORT, PGUSER, PGPASSWORD and
PGDATABASE name, for tests/tests/asyncpg_suite.rs.

Usage: asyncpg_suite.py SUITE_DIR [TEST_ID...] (SUITE_DIR holds `tests/`; without test
ids the whole suite runs, with them only those, e.g. to run a flaky one again). Prints one JSON
object on stdout: test id -> [outcome, first line of why] with outcome one of pass,
fail, error, skip, xfail, xpass. unittest's own report goes to stderr.
"""
import json
import os
import sys
import unittest


def why(err):
    """The last line of a formatted traceback (the exception and its message)."""
    lines = [line for line in err.strip().splitlines() if line.strip()]
    return lines[-1][:300] if lines else ""


class Outcomes(unittest.TextTestResult):
    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.outcomes = {}

    def _set(self, test, outcome, detail=""):
        self.outcomes[test.id()] = [outcome, detail]

    def addSuccess(self, test):
        super().addSuccess(test)
        self._set(test, "pass")

    def addFailure(self, test, err):
        super().addFailure(test, err)
        self._set(test, "fail", why(self.failures[-1][1]))

    def addError(self, test, err):
        super().addError(test, err)
        self._set(test, "error", why(self.errors[-1][1]))

    def addSkip(self, test, reason):
        super().addSkip(test, reason)
        self._set(test, "skip", reason[:300])

    def addExpectedFailure(self, test, err):
        super().addExpectedFailure(test, err)
        self._set(test, "xfail")

    def addUnexpectedSuccess(self, test):
        super().addUnexpectedSuccess(test)
        self._set(test, "xpass")


def main(suite_dir, names):
    # The sdist's own `asyncpg/` is not next to `tests/` here: the installed (compiled)
    # asyncpg is the one imported.
    os.chdir(suite_dir)
    sys.path.insert(0, suite_dir)
    if names:
        suite = unittest.defaultTestLoader.loadTestsFromNames(names)
    else:
        suite = unittest.defaultTestLoader.discover("tests", top_level_dir=suite_dir)
    runner = unittest.TextTestRunner(stream=sys.stderr, resultclass=Outcomes, verbosity=1)
    result = runner.run(suite)
    print(json.dumps(result.outcomes, sort_keys=True))


main(sys.argv[1], sys.argv[2:])
