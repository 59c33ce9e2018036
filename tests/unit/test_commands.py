"""The subprocess runner: exit statuses checked, stderr kept (bounded), process groups killed."""

from __future__ import annotations

import os
import subprocess
import threading
import time

import pytest

from service.commands import STDERR_TAIL_BYTES, CancelScope, RunningCommand, run_command, run_pipeline
from service.errors import CommandError, JobAbortedError

ENV = {"PATH": os.environ["PATH"]}


def test_output_is_returned_on_success():
    """stdout comes back when the program exits 0."""
    assert run_command(["sh", "-c", "printf hello"], ENV) == b"hello"


def test_failure_carries_the_stderr_tail():
    """A non-zero exit raises CommandError naming the program, with what it printed on stderr."""
    with pytest.raises(CommandError) as info:
        run_command(["sh", "-c", "echo 'relation does not exist' >&2; exit 3"], ENV)
    assert "sh exited with status 3" in info.value.message
    assert "relation does not exist" in info.value.detail


def test_stderr_tail_is_bounded():
    """A chatty program cannot exhaust memory: only the last few KB are kept."""
    with pytest.raises(CommandError) as info:
        run_command(["sh", "-c", "head -c 1000000 /dev/zero | tr '\\0' x >&2; echo END >&2; exit 1"], ENV)
    assert len(info.value.detail) <= STDERR_TAIL_BYTES and info.value.detail.endswith("END")


def test_missing_program_is_a_clear_error():
    """A program that is not installed names the fix."""
    with pytest.raises(CommandError) as info:
        run_command(["/nonexistent/pg_dump"], ENV)
    assert "postgresql-client" in info.value.hint


def test_pipeline_reports_a_producer_that_died():
    """When the producer fails the pipeline fails, even if the consumer saw a clean EOF."""
    with pytest.raises(CommandError) as info:
        run_pipeline((["sh", "-c", "echo partial; exit 7"], ENV), (["cat"], ENV))
    assert "status 7" in info.value.message


def test_pipeline_reports_the_consumer_that_failed():
    """A failing consumer is reported as the cause, not the producer it made us kill."""
    with pytest.raises(CommandError) as info:
        run_pipeline((["sh", "-c", "yes"], ENV), (["sh", "-c", "head -c 10 >/dev/null; exit 4"], ENV))
    assert "status 4" in info.value.message


def test_cancel_kills_the_whole_process_group():
    """Cancelling a scope kills the program and anything it spawned, and the check raises aborted."""
    scope = CancelScope()
    command = RunningCommand(["sh", "-c", "sleep 60 & echo $!; wait"], ENV, scope=scope)
    child = int(command.stdout.readline())
    threading.Timer(0.2, scope.cancel, args=("test",)).start()
    with pytest.raises(JobAbortedError):
        command.check(timeout=10)
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline:
        try:
            os.kill(child, 0)
        except ProcessLookupError:
            break
        time.sleep(0.05)
    else:
        pytest.fail("the grandchild survived the cancel")
    command.close()


def test_a_command_started_after_cancel_is_killed_at_once():
    """A late start inside a cancelled scope does not run on."""
    scope = CancelScope()
    scope.cancel("stop")
    command = RunningCommand(["sleep", "60"], ENV, scope=scope, stdout=subprocess.DEVNULL)
    assert command.process.wait(timeout=5) != 0
