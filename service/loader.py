"""One psql session holding one transaction on the target: all of a restore, or none of it.

The restore writes `BEGIN;` itself, then pumps SQL into psql's stdin: statements
of its own and the output of `pg_restore -f -` (or `pg_dump`) programs, each
checked when it ends. `COMMIT;` is written only by `commit()`, which the caller
reaches only after every producer succeeded and every stream matched its
manifest. On any failure `abort()` kills psql without a COMMIT: the server sees
the connection end inside the transaction and rolls everything back. A cut
connection does the same on its own.
"""

from __future__ import annotations

import subprocess
import uuid
from collections.abc import Iterable, Sequence

from service.commands import CancelScope, RunningCommand, describe_exit
from service.errors import JobAbortedError, RestoreError
from service.streams import ObjectReader, feed_command

PUMP_CHUNK = 1024 * 1024
PSQL_SCRIPT_ERROR = 3  # psql's exit status when ON_ERROR_STOP stopped it at a failed statement
# A restore's DROP waits for the application's locks; past this it gives up (and rolls back).
# FAC_BACKUP_RESTORE_LOCK_WAIT_SECONDS sets it.
DEFAULT_LOCK_WAIT_SECONDS = 300


def quote_ident(name: str) -> str:
    """A PostgreSQL identifier, double-quoted, whatever characters it holds."""
    return '"' + name.replace('"', '""') + '"'


def quote_literal(text: str) -> str:
    """A string literal (standard_conforming_strings is on in every session we open)."""
    return "'" + text.replace("'", "''") + "'"


def build_lock_timeout_sql(seconds: int) -> str:
    """For the rest of the transaction, a statement waiting longer than `seconds` for a lock fails."""
    return f"SET LOCAL lock_timeout = {quote_literal(f'{int(seconds)}s')};\n"


def build_reset_sql(schemas: Iterable[str], lock_wait_seconds: int = DEFAULT_LOCK_WAIT_SECONDS) -> str:
    """Drop every user schema of the target and recreate `public` as initdb leaves it."""
    lines = [build_lock_timeout_sql(lock_wait_seconds).rstrip("\n")]
    lines += [f"DROP SCHEMA IF EXISTS {quote_ident(s)} CASCADE;" for s in schemas]
    lines += ["CREATE SCHEMA IF NOT EXISTS public;", "GRANT USAGE ON SCHEMA public TO PUBLIC;"]
    return "\n".join(lines) + "\n"


def build_count_check_sql(expected: Sequence[tuple[str, str, int]]) -> str:
    """A DO block that raises unless every table holds exactly its expected number of rows."""
    tag = f"$check_{uuid.uuid4().hex[:12]}$"  # no table name can close a random dollar quote
    body = ["DECLARE n bigint;", "BEGIN"]
    for schema, table, rows in expected:
        name = f"{quote_ident(schema)}.{quote_ident(table)}"
        body.append(f"  SELECT count(*) INTO n FROM {name};")
        body.append(f"  IF n <> {int(rows)} THEN RAISE EXCEPTION 'row count of % is %, expected {int(rows)}', "
                    f"{quote_literal(schema + '.' + table)}, n; END IF;")
    body.append("END")
    return f"DO {tag}\n" + "\n".join(body) + f"\n{tag};\n"


class Session:
    """psql reading SQL from us, inside one explicit transaction."""

    def __init__(self, argv: Sequence[str], env: dict, *, scope: CancelScope | None = None,
                 target: str = "the target") -> None:
        self.target = target
        self.scope = scope
        self.psql = RunningCommand(argv, env, stdin=subprocess.PIPE, stdout=subprocess.DEVNULL, scope=scope)
        self.committed = False
        self.bytes_sent = 0
        self.activity = None  # the run's record of psql taking SQL (service.progress), when watched
        self.execute("BEGIN;\n")

    def execute(self, statements: str) -> None:
        """Send SQL text (already terminated by ';')."""
        self._write(statements.encode("utf-8"))

    def pump(self, producer: RunningCommand) -> int:
        """Copy `producer`'s stdout into psql until it ends; returns the bytes copied.

        The producer's exit status is the caller's to check: an end of output is
        not proof that it finished its work.
        """
        copied = 0
        stream = producer.stdout
        while True:
            chunk = stream.read1(PUMP_CHUNK)
            if not chunk:
                return copied
            self._write(chunk)
            copied += len(chunk)

    def _write(self, data: bytes) -> None:
        try:
            self.psql.stdin.write(data)
            self.bytes_sent += len(data)
        except (BrokenPipeError, OSError, ValueError):
            raise self._failure() from None
        if self.activity is not None:
            self.activity.moved()  # psql took it: the load moves (its bytes count where they were read)

    def _failure(self) -> BaseException:
        """The reason psql stopped reading: its own error, the cut connection, or a cancel."""
        code = self.psql.wait(timeout=30)
        if self.scope is not None and self.scope.cancelled:
            return JobAbortedError("the restore was cancelled; nothing was committed",
                                   detail=self.scope.reason)
        return RestoreError(
            f"psql stopped ({describe_exit('psql', code)}); nothing was committed to {self.target}",
            detail=self.psql.stderr_tail(),
            hint=f"{self.target} was rolled back to its state before the restore; fix the cause and retry",
        )

    def commit(self) -> None:
        """Write COMMIT, close the input and require psql to exit 0."""
        self.execute("COMMIT;\n")
        try:
            self.psql.stdin.close()
        except OSError:
            raise self._failure() from None
        code = self.psql.wait()
        if code == PSQL_SCRIPT_ERROR:
            # The server answered a statement (or the COMMIT) with an error: the transaction is rolled back.
            raise RestoreError(
                f"a statement of the restore failed; nothing was committed to {self.target}",
                detail=self.psql.stderr_tail(),
                hint=f"{self.target} was rolled back to its state before the restore; fix the cause and retry",
            )
        if code != 0:
            # The connection was lost at or after COMMIT: the server may or may not have committed.
            raise RestoreError(
                f"psql failed at or before COMMIT ({describe_exit('psql', code)}) on {self.target}",
                detail=self.psql.stderr_tail(),
                hint="check the row counts of the target; if unsure, restore again",
            )
        self.committed = True
        self.psql.close()

    def abort(self) -> None:
        """Kill psql without a COMMIT; the server rolls the transaction back."""
        if not self.committed:
            self.psql.close()

    def __enter__(self) -> Session:
        return self

    def __exit__(self, *exc_info) -> None:
        self.abort()


def load_archive(session: Session, reader: ObjectReader, argv: Sequence[str], env: dict, *,
                 scope: CancelScope | None = None) -> int:
    """Stream an archive (`reader`, started) through one `pg_restore ... -f -` into the session.

    Raises unless psql took everything, the download completed and pg_restore
    exited 0; the caller still checks the stream against its manifest entry.
    Returns the bytes of SQL sent.
    """
    with RunningCommand(argv, env, stdin=subprocess.PIPE, stdout=subprocess.PIPE, scope=scope) as restore:
        feeder = feed_command(reader, restore.stdin)
        try:
            sent = session.pump(restore)
        except BaseException:
            reader.close()
            raise
        download_error = None
        try:
            feeder.join()
        except BaseException as exc:  # noqa: BLE001 - reported after pg_restore's own status
            download_error = exc
        try:
            restore.check()
        except BaseException:
            if download_error is not None:
                raise download_error from None  # a cut download is why pg_restore failed
            raise
        if download_error is not None:
            raise download_error
    return sent
