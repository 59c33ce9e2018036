"""Check a backup without restoring it: every object present, as long as recorded,
with the recorded sha256, and (for `verify`) readable by `pg_restore --list`.

Objects are streamed from S3 and hashed on the fly, several at once; nothing
is written to disk. A failure names the table, so the operator knows which
dump is missing or altered. Legacy backups carry no checksums: only presence
and readability can be checked, and the result says so.
"""

from __future__ import annotations

import subprocess
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

from service import layout
from service.commands import CancelScope, RunningCommand
from service.errors import CommandError, IntegrityError, ObjectNotFoundError, ServiceError
from service.finder import FoundBackup
from service.pgtools import build_pg_restore_command
from service.storage import ObjectStore
from service.streams import ObjectReader, feed_command


@dataclass(frozen=True)
class Expected:
    """One object a backup must hold; bytes/sha256 are None for legacy dumps."""

    what: str  # "table public.x" or "schema.dump", for the operator
    key: str
    bytes: int | None
    sha256: str | None
    archive: bool = True  # a pg_dump archive (pg_restore can list it); privileges.json is not


def expected_objects(found: FoundBackup) -> list[Expected]:
    """Every object the backup's manifest (or legacy listing) promises, schema.dump first,
    then privileges.json (in backups made since privileges are kept)."""
    if found.manifest is None:
        return [Expected(f"table {t.qualified}", t.key, None, None) for t in found.legacy_tables]
    m = found.manifest
    items = []
    if m.schema:
        items.append(Expected(layout.SCHEMA_NAME, m.schema["key"], int(m.schema["bytes"]), m.schema["sha256"]))
    if m.privileges:
        items.append(Expected(layout.PRIVILEGES_NAME, m.privileges["key"], int(m.privileges["bytes"]),
                              m.privileges["sha256"], archive=False))
    items += [Expected(f"table {t.schema}.{t.table}", t.key, t.bytes, t.sha256) for t in m.tables]
    return items


def check_listing(store: ObjectStore, found: FoundBackup) -> None:
    """Cheap first pass: every object listed, with the recorded size (no download)."""
    sizes = {o.key: o.size for o in store.list_objects(found.prefix)}
    for item in expected_objects(found):
        if item.key not in sizes:
            raise IntegrityError(f"backup {found.id} is missing the dump of {item.what}",
                                 detail=f"no object {item.key}",
                                 hint="choose another backup; nothing was changed")
        if item.bytes is not None and sizes[item.key] != item.bytes:
            raise IntegrityError(
                f"the dump of {item.what} in backup {found.id} has been altered",
                detail=f"{item.key} holds {sizes[item.key]} bytes, the manifest recorded {item.bytes}",
                hint="choose another backup; nothing was changed")


def read_toc(store: ObjectStore, key: str, pg_restore: str, env: dict, *,
             scope: CancelScope | None = None) -> tuple[str, ObjectReader]:
    """`pg_restore --list` of one object streamed from S3; returns the listing and the
    (finished) reader, whose size and sha256 cover the whole object."""
    reader = ObjectReader(store, key).start()
    try:
        with RunningCommand(build_pg_restore_command(pg_restore, list_only=True), env,
                            stdin=subprocess.PIPE, stdout=subprocess.PIPE, scope=scope) as lister:
            feeder = feed_command(reader, lister.stdin)
            listing = lister.stdout.read()
            feeder.join()
            lister.check()
    finally:
        reader.close()
    return listing.decode("utf-8", "replace"), reader


def _hash_only(store: ObjectStore, key: str) -> ObjectReader:
    reader = ObjectReader(store, key).start()
    try:
        for _ in reader.chunks():
            pass
    finally:
        reader.close()
    return reader


def _check_one(store, found, item: Expected, pg_restore, env, scope) -> dict:
    try:
        if pg_restore and item.archive:
            _, reader = read_toc(store, item.key, pg_restore, env, scope=scope)
        else:
            reader = _hash_only(store, item.key)
    except ObjectNotFoundError as exc:
        raise IntegrityError(f"backup {found.id} is missing the dump of {item.what}", detail=exc.message,
                             hint="choose another backup; nothing was changed") from exc
    except CommandError as exc:
        raise IntegrityError(f"the dump of {item.what} in backup {found.id} is not readable by pg_restore",
                             detail=exc.detail, hint="choose another backup; nothing was changed") from exc
    if item.sha256 is not None and item.bytes is not None:
        try:
            reader.check(item.bytes, item.sha256, f"the dump of {item.what}")
        except IntegrityError as exc:
            raise IntegrityError(f"the dump of {item.what} in backup {found.id} has been altered",
                                 detail=exc.detail, hint="choose another backup; nothing was changed") from exc
    return {"what": item.what, "key": item.key, "bytes": reader.size, "sha256": reader.sha256}


def verify_backup(store: ObjectStore, found: FoundBackup, *, parallel: int = 2, pg_restore: str | None = None,
                  env: dict | None = None, scope: CancelScope | None = None) -> dict:
    """Verify `found`; raise IntegrityError naming the first bad table (in manifest order).

    With `pg_restore` (a program path) each dump is also read by `pg_restore --list`.
    """
    check_listing(store, found)
    items = expected_objects(found)
    with ThreadPoolExecutor(max_workers=max(1, parallel), thread_name_prefix="verify") as pool:
        futures = [pool.submit(_check_one, store, found, item, pg_restore, env or {}, scope) for item in items]
        errors = [f.exception() for f in futures if f.exception() is not None]
    if errors:
        first = next((e for e in errors if isinstance(e, ServiceError)), errors[0])
        raise first
    results = [f.result() for f in futures]
    return {
        "backup_id": found.id,
        "objects": len(results),
        "bytes": sum(r["bytes"] for r in results),
        "checksums": not found.legacy,
        "readable": bool(pg_restore),
    }
