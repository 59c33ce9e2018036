"""db_to_db: fac-db -> fac-snapshot-db, all or nothing."""

from __future__ import annotations

from service.errors import CopyError


def copy_database(ctx) -> dict:
    """Not available yet: fails clearly rather than pretending to copy."""
    raise CopyError("db_to_db is not available in this build", hint="use db_to_s3 meanwhile")
