"""scripts/setup-system: where it cannot install, one message naming what is missing and the command.

The installing paths need a bare machine; they are exercised by running the README's commands in a
fresh Debian (see the README). Here: the refusals that must come before anything is installed.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
SCRIPT = REPO / "scripts" / "setup-system"


def bare_path(tmp_path: Path, *programs: str) -> str:
    """A PATH holding only `programs` (and what any shell script needs): the others look missing."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir(exist_ok=True)
    for name in ("bash", "env", "id", "grep", "tail", "cat", *programs):
        found = shutil.which(name)
        if found and not (bin_dir / name).exists():
            (bin_dir / name).symlink_to(found)
    return str(bin_dir)


def run(tmp_path: Path, python: str, path: str) -> subprocess.CompletedProcess:
    env = {"PATH": path, "PYTHON": python, "TMPDIR": str(tmp_path), "HOME": str(tmp_path)}
    return subprocess.run(["bash", str(SCRIPT)], env=env, capture_output=True, text=True, timeout=30)


def test_an_old_python_stops_everything_with_the_command_that_gets_a_new_one(tmp_path):
    """Python 3.10 is refused before any package is looked at, naming 3.11 and how to get it."""
    fake = tmp_path / "python3.10"
    fake.write_text('#!/bin/sh\necho "3.10 venv"\n')
    fake.chmod(0o755)
    done = run(tmp_path, str(fake), bare_path(tmp_path))
    assert done.returncode == 1
    assert f"{fake} is Python 3.10; Python 3.11 or newer is needed." in done.stderr
    assert "apt-get install python3.11 python3.11-venv" in done.stderr
    assert "make PYTHON=python3.11 test" in done.stderr


def test_without_apt_get_it_lists_every_missing_package_and_installs_nothing(tmp_path):
    """No apt-get (not Debian/Ubuntu): one message listing what is missing and why; exit 1."""
    done = run(tmp_path, sys.executable, bare_path(tmp_path))
    assert done.returncode == 1, done.stderr
    assert done.stderr.count("fac-backup cannot set up this machine.") == 1
    assert "this is not Debian or Ubuntu (no apt-get)" in done.stderr
    for package, proof in (("prometheus", "promtool"), ("faketime", "faketime"), ("make", "make"),
                           ("chromium", "chromium")):
        assert f"  {package}: " in done.stderr and f"({proof} is missing)" in done.stderr
    assert not (tmp_path / "fac-backup-setup-system.log").exists()


def test_when_everything_is_there_it_says_nothing(tmp_path):
    """All proofs present (this machine's tools on PATH): silent, exit 0, no apt-get run."""
    done = run(tmp_path, sys.executable, os.environ["PATH"])
    assert (done.returncode, done.stdout, done.stderr) == (0, "", ""), done.stderr
