"""Errors written for an operator: what happened, why, and what to do.

Every error the service expects to raise derives from ServiceError and carries
`message` (one line, what happened), `detail` (why: stderr tail, the failing
table) and `hint` (what to do). The CLI maps each class to a documented exit
code through `exit_code`. This module imports nothing from `service`.
"""

from __future__ import annotations


class ServiceError(Exception):
    """Base class of every expected failure."""

    exit_code = 1

    def __init__(self, message: str, *, detail: str = "", hint: str = "") -> None:
        super().__init__(message)
        self.message = message
        self.detail = detail
        self.hint = hint

    def __str__(self) -> str:
        parts = [self.message]
        if self.detail:
            parts.append(f"detail: {self.detail}")
        if self.hint:
            parts.append(f"hint: {self.hint}")
        return "\n".join(parts)


class ConfigError(ServiceError):
    """The environment or VCAP_SERVICES is unusable; nothing was started."""

    exit_code = 2


class UsageError(ServiceError):
    """The command line is wrong (unknown job, missing argument)."""

    exit_code = 2


class ConfirmationRequiredError(ServiceError):
    """A protected target was not named explicitly; nothing was touched."""

    exit_code = 3


class SafetyError(ServiceError):
    """The request would endanger a protected database; refused before any change."""

    exit_code = 3


class VersionRefusedError(SafetyError):
    """The servers' versions make an exact result impossible (a target older than its source)."""


class ClientMissingError(ServiceError):
    """No installed PostgreSQL client serves a server's major version; nothing was started."""

    exit_code = 2


class LockBusyError(ServiceError):
    """Another run holds the service lock and did not release it in time."""

    exit_code = 4


class AlreadyRunningError(ServiceError):
    """A run of the same job is in progress in the daemon; the request was not started."""


class JobAbortedError(ServiceError):
    """The run was cancelled (SIGTERM, SIGINT); its partial work was undone."""

    exit_code = 5


class CommandError(ServiceError):
    """A PostgreSQL program exited non-zero or was killed."""


class DatabaseError(ServiceError):
    """A query on a PostgreSQL server failed (connection, permission, SQL)."""


class StorageError(ServiceError):
    """An S3 request failed after its retries."""


class ObjectNotFoundError(StorageError):
    """The requested object or bucket does not exist."""


class AccessDeniedError(StorageError):
    """The binding's credentials may not make this request (HTTP 403)."""


class BackupError(ServiceError):
    """A backup could not be completed; no manifest was written."""


class BackupNotFoundError(ServiceError):
    """No backup matches the id the operator gave."""


class AmbiguousBackupError(BackupNotFoundError):
    """The id given is no backup's own and could mean several (a suffix left off, a stamp cut
    short): nothing was chosen, so nothing was touched. `candidates` are what `list` shows of them."""

    exit_code = 3

    def __init__(self, message: str, *, candidates: tuple = (), detail: str = "", hint: str = "") -> None:
        super().__init__(message, detail=detail, hint=hint)
        self.candidates = tuple(candidates)


class IntegrityError(ServiceError):
    """A backup's objects do not match its manifest (missing, resized, altered)."""


class RestoreError(ServiceError):
    """A restore failed; the target was left as it was before the run."""


class CopyError(ServiceError):
    """A database-to-database copy failed; the target was left as it was."""


class SyncError(ServiceError):
    """A media sync finished with objects that could not be copied."""


class CheckError(ServiceError):
    """A consistency check found a problem (a missing table, a count mismatch)."""


class ControlError(ServiceError):
    """The control socket could not be used (no daemon listening, a malformed request)."""


class DaemonUnavailableError(ControlError):
    """No daemon took the request (none listening, or too busy); nothing was asked of it."""

    exit_code = 6


class DaemonBusyError(DaemonUnavailableError):
    """The daemon's listen queue or its control connections are full; try again in a moment."""


class StallError(ServiceError):
    """A long step moved nothing for FAC_BACKUP_STALL_SECONDS and was stopped as a cancel stops it."""


ECHO_CHARS = 60  # of a value someone sent: enough to recognise it, never a 60 kB page


def quote_input(value: object) -> str:
    """`value` as a message or a log event shows what someone sent: its repr, cut to a readable
    length that says how long the whole was. Every echo of outside input goes through here."""
    text = repr(value)
    if len(text) <= ECHO_CHARS:
        return text
    size = f"{len(value)} characters" if isinstance(value, str) else f"{len(text)} characters as written"
    return f"{text[:ECHO_CHARS]}... ({size})"
