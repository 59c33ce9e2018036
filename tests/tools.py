"""System tools some tests need (promtool, prometheus, faketime, chromium): found, or a clear failure.

A missing tool fails the test rather than skipping it: a skipped proof reads as a
passed one. The fresh-machine setup installs them from Debian's packages.
"""

from __future__ import annotations

import glob
import shutil
import subprocess

import pytest

PACKAGES = {"promtool": "prometheus", "prometheus": "prometheus", "faketime": "faketime", "chromium": "chromium"}


def require_tool(name: str) -> str:
    """The path of program `name`; fails the test naming the Debian package when it is missing."""
    path = shutil.which(name) or shutil.which(name, path="/usr/bin:/usr/sbin")
    if path is None:
        package = PACKAGES.get(name, name)
        pytest.fail(f"{name} is not installed, and this test needs it: run `apt-get install {package}` "
                    "(the fresh-machine setup installs it)", pytrace=False)
    return path


def require_playwright_driver() -> None:
    """Playwright's bundled node starts; else fail naming what it lacks (a bare Debian lacks libatomic1)."""
    from playwright._impl._driver import compute_driver_executable

    node, _cli = compute_driver_executable()
    try:
        done = subprocess.run([node, "--version"], capture_output=True, text=True, timeout=30)
    except OSError as exc:
        pytest.fail(f"Playwright's driver {node} cannot start ({exc}): reinstall .venv", pytrace=False)
    if done.returncode != 0:
        pytest.fail(f"Playwright's driver cannot start: {done.stderr.strip()}. On Debian, "
                    "`apt-get install libatomic1` (scripts/setup-system installs it)", pytrace=False)


def faketime_environ(clock_utc: str) -> dict[str, str]:
    """Environment that starts a process's wall clock at `clock_utc` ("YYYY-mm-dd HH:MM:SS", UTC).

    The library is preloaded directly rather than through the `faketime` wrapper, which
    does not pass SIGTERM on to its child: the test must signal the daemon itself.
    """
    require_tool("faketime")
    found = sorted(glob.glob("/usr/lib/*/faketime/libfaketime.so.1") + glob.glob("/usr/lib/faketime/libfaketime.so.1"))
    if not found:
        pytest.fail("libfaketime.so.1 was not found beside the faketime program: reinstall Debian's "
                    "`faketime` package", pytrace=False)
    # The monotonic clock stays real so that timeouts and waits keep their length.
    return {"LD_PRELOAD": found[0], "FAKETIME": f"@{clock_utc}", "TZ": "UTC",
            "FAKETIME_DONT_FAKE_MONOTONIC": "1"}
