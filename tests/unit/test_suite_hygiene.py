"""The suite's own safeguards: a hung test fails within its timeout, integration tests are marked."""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]

HUNG = '''
import threading

def test_waits_for_a_helper_that_never_finishes():
    helper = threading.Thread(target=threading.Event().wait, daemon=True)
    helper.start()
    helper.join()
'''

UNMARKED = '''
def test_without_the_marker():
    pass
'''


def run_pytest(path: Path, *extra: str) -> subprocess.CompletedProcess:
    """pytest on one file with this repository's configuration (pyproject.toml, tests/conftest.py)."""
    return subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-c",
                           str(REPO / "pyproject.toml"), "--rootdir", str(REPO), *extra, str(path)],
                          cwd=REPO, capture_output=True, text=True, timeout=120)


def test_a_test_whose_helper_thread_hangs_fails_on_the_timeout(tmp_path):
    """The configured per-test timeout turns a join on a hung thread into a failure, not a hung run."""
    test = REPO / "tests" / "unit" / f"test_zz_hung_{tmp_path.name}.py"
    test.write_text(HUNG)
    try:
        started = time.monotonic()
        result = run_pytest(test, "-o", "timeout=2")  # the configured value, shortened for the test
        took = time.monotonic() - started
    finally:
        test.unlink()
    assert result.returncode == 1, result.stdout + result.stderr
    assert "Timeout" in result.stdout and "1 failed" in result.stdout
    assert took < 60
    configured = (REPO / "pyproject.toml").read_text()
    assert "\ntimeout = " in configured and 'timeout_method = "signal"' in configured


def test_an_integration_test_without_the_marker_stops_the_run():
    """A module under tests/integration without the `integration` marker is a usage error naming it."""
    test = REPO / "tests" / "integration" / "test_zz_unmarked_probe.py"
    test.write_text(UNMARKED)
    try:
        result = run_pytest(test)
    finally:
        test.unlink()
    assert result.returncode == 4, result.stdout + result.stderr
    assert "test_zz_unmarked_probe.py::test_without_the_marker" in result.stdout + result.stderr
