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


class StallError(ServiceError):
    """A long step moved nothing for FAC_BACKUP_STALL_SECONDS and was stopped as a cancel stops it."""
