"""The one subprocess runner.

Every external program (pg_dump, pg_restore, psql) starts here, in its own
process group so that a cancel can kill it and anything it spawned. stderr is
drained by a thread into a bounded tail, so a chatty program can neither block
nor exhaust memory, and the tail travels in the CommandError when it fails.
Every exit status is checked; a pipeline fails if any member fails.
"""

from __future__ import annotations

import os
import signal
import subprocess
import threading
from collections.abc import Callable, Mapping, Sequence

from service.errors import CommandError, JobAbortedError, ServiceError

STDERR_TAIL_BYTES = 8192
TERMINATE_GRACE_SECONDS = 2.0


class CancelScope:
    """Cancellation shared by everything one job run started.

    `cancel()` sets the flag, then kills the process group of every running
    command and calls every registered cleanup, the latest first (cutting
    connections, interrupting S3 requests). Work checks `cancelled` between
    units and raises via `check()`. `fail(error)` cancels in exactly the same
    way, but the run is to end with `error` (the stall watchdog's verdict)
    rather than as aborted: `failure` holds it.
    """

    def __init__(self) -> None:
        self._event = threading.Event()
        self._lock = threading.Lock()
        self._commands: set[RunningCommand] = set()
        self._cleanups: dict[int, Callable[[], None]] = {}
        self.reason = ""
        self.failure: ServiceError | None = None

    @property
    def cancelled(self) -> bool:
        return self._event.is_set()

    def check(self) -> None:
        """Raise JobAbortedError when the run was cancelled."""
        if self._event.is_set():
            raise JobAbortedError(
                "the run was cancelled", detail=self.reason, hint="start it again when ready"
            )

    def wait(self, timeout: float) -> bool:
        """Sleep up to `timeout` seconds; True if cancelled meanwhile."""
        return self._event.wait(timeout)

    def cancel(self, reason: str = "cancelled") -> None:
        self._cancel(reason, None)

    def fail(self, error: ServiceError) -> None:
        """Cancel as `cancel` does; the run then ends as a failure with `error`, not as aborted.
        A run already cancelled keeps its first reason (a SIGTERM that came first still wins)."""
        self._cancel(error.message, error)

    def _cancel(self, reason: str, failure: ServiceError | None) -> None:
        with self._lock:
            if self._event.is_set():
                return
            self.reason, self.failure = reason, failure
            self._event.set()
            commands = list(self._commands)
            # Latest first: a resource taken inside another (the snapshot's connection inside the
            # run's stores) is let go before the outer one starts its own clean-up.
            cleanups = list(self._cleanups.values())[::-1]
        for command in commands:
            command.terminate()
        for cleanup in cleanups:
            try:
                cleanup()
            except Exception:  # noqa: BLE001 - a cleanup must not stop the others
                pass

    def add_cleanup(self, cleanup: Callable[[], None]) -> int:
        with self._lock:
            token = id(cleanup)
            self._cleanups[token] = cleanup
            return token

    def remove_cleanup(self, token: int) -> None:
        with self._lock:
            self._cleanups.pop(token, None)

    def _register(self, command: RunningCommand) -> None:
        with self._lock:
            self._commands.add(command)
            late = self._event.is_set()
        if late:
            command.terminate()

    def _unregister(self, command: RunningCommand) -> None:
        with self._lock:
            self._commands.discard(command)


class RunningCommand:
    """A started program: its pipes, its stderr tail, and a checked wait."""

    def __init__(
        self,
        argv: Sequence[str],
        env: Mapping[str, str],
        *,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        scope: CancelScope | None = None,
    ) -> None:
        self.argv = list(argv)
        self.name = os.path.basename(self.argv[0])
        self.scope = scope
        self._tail = bytearray()
        self._tail_lock = threading.Lock()
        try:
            self.process = subprocess.Popen(
                self.argv,
                env=dict(env),
                stdin=stdin,
                stdout=stdout,
                stderr=subprocess.PIPE,
                start_new_session=True,
                close_fds=True,
            )
        except OSError as exc:
            raise CommandError(
                f"cannot start {self.name}: {exc.strerror}",
                hint="install the PostgreSQL client programs (postgresql-client-15) "
                "or set FAC_BACKUP_PG_BIN to their directory",
            ) from exc
        self._drain = threading.Thread(target=self._drain_stderr, daemon=True)
        self._drain.start()
        if scope is not None:
            scope._register(self)

    @property
    def stdout(self):
        return self.process.stdout

    @property
    def stdin(self):
        return self.process.stdin

    def _drain_stderr(self) -> None:
        stream = self.process.stderr
        assert stream is not None
        for chunk in iter(lambda: stream.read1(65536), b""):
            with self._tail_lock:
                self._tail += chunk
                if len(self._tail) > STDERR_TAIL_BYTES:
                    del self._tail[: len(self._tail) - STDERR_TAIL_BYTES]
        stream.close()

    def stderr_tail(self) -> str:
        self._drain.join(timeout=5)
        with self._tail_lock:
            return self._tail.decode("utf-8", "replace").strip()

    def terminate(self, grace: float = TERMINATE_GRACE_SECONDS) -> None:
        """SIGTERM the whole process group, SIGKILL it after `grace` seconds."""
        if self.process.poll() is not None:
            return
        try:
            os.killpg(self.process.pid, signal.SIGTERM)
            self.process.wait(timeout=grace)
        except subprocess.TimeoutExpired:
            os.killpg(self.process.pid, signal.SIGKILL)
            self.process.wait()
        except ProcessLookupError:
            pass

    def wait(self, timeout: float | None = None) -> int:
        try:
            return self.process.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.terminate()
            raise CommandError(
                f"{self.name} did not finish within {timeout:.0f} s and was killed",
                detail=self.stderr_tail(),
            ) from None

    def check(self, timeout: float | None = None) -> None:
        """Wait, then raise CommandError (or JobAbortedError after a cancel) unless status 0."""
        code = self.wait(timeout)
        if self.scope is not None:
            self.scope._unregister(self)
        if code == 0:
            return
        if self.scope is not None:
            self.scope.check()
        raise CommandError(describe_exit(self.name, code), detail=self.stderr_tail())

    def close(self) -> None:
        """Kill the program if it still runs and release its pipes."""
        self.terminate()
        for stream in (self.process.stdin, self.process.stdout):
            if stream is not None:
                try:
                    stream.close()
                except OSError:
                    pass
        if self.scope is not None:
            self.scope._unregister(self)

    def __enter__(self) -> RunningCommand:
        return self

    def __exit__(self, *exc_info) -> None:
        self.close()


def describe_exit(name: str, code: int) -> str:
    """'pg_dump exited with status 1' or 'pg_dump was killed by SIGKILL'."""
    if code < 0:
        try:
            return f"{name} was killed by {signal.Signals(-code).name}"
        except ValueError:
            return f"{name} was killed by signal {-code}"
    return f"{name} exited with status {code}"


def run_command(
    argv: Sequence[str],
    env: Mapping[str, str],
    *,
    input_bytes: bytes | None = None,
    timeout: float | None = None,
    scope: CancelScope | None = None,
) -> bytes:
    """Run a program to completion; return its stdout or raise CommandError."""
    stdin = subprocess.PIPE if input_bytes is not None else subprocess.DEVNULL
    with RunningCommand(argv, env, stdin=stdin, stdout=subprocess.PIPE, scope=scope) as command:
        expired = threading.Event()
        timer = None
        if timeout is not None:
            timer = threading.Timer(timeout, lambda: (expired.set(), command.terminate()))
            timer.daemon = True
            timer.start()
        if input_bytes is not None:
            threading.Thread(target=_feed, args=(command.stdin, input_bytes), daemon=True).start()
        try:
            out = command.stdout.read()
            command.process.wait()
        finally:
            if timer is not None:
                timer.cancel()
        if expired.is_set():
            raise CommandError(
                f"{command.name} did not finish within {timeout:.0f} s and was killed",
                detail=command.stderr_tail(),
            )
        command.check()
        return out


def _feed(stream, data: bytes) -> None:
    try:
        stream.write(data)
        stream.close()
    except (BrokenPipeError, OSError):
        pass  # the program exited early; its exit status tells why


def run_pipeline(
    producer: tuple[Sequence[str], Mapping[str, str]],
    consumer: tuple[Sequence[str], Mapping[str, str]],
    *,
    scope: CancelScope | None = None,
) -> None:
    """Run `producer | consumer`; raise if either exits non-zero (both are checked)."""
    with RunningCommand(producer[0], producer[1], scope=scope) as first:
        with RunningCommand(
            consumer[0], consumer[1], stdin=first.stdout, stdout=subprocess.DEVNULL, scope=scope
        ) as second:
            first.stdout.close()  # the consumer holds the read end now
            second_error = first_error = None
            try:
                second.check()
            except (CommandError, JobAbortedError) as exc:
                second_error = exc
                first.terminate()
            try:
                first.check()
            except (CommandError, JobAbortedError) as exc:
                first_error = exc
            # A consumer that failed on its own is the cause (we killed the producer after it);
            # otherwise the producer's failure is (the consumer may have seen a clean EOF).
            if second_error is not None:
                raise second_error
            if first_error is not None:
                raise first_error
