"""db_to_s3: every user table, from one snapshot, streamed into S3, then the manifest.

1. One control transaction exports a snapshot; every pg_dump and every row
   count imports it, so all tables of a backup show the same moment.
2. Each table is one `pg_dump --format=custom` whose stdout streams into a
   multipart upload (no local disk; a few parts of memory per table), several
   tables at once, largest first.
3. `schema.dump` keeps every other object (schemas, types, functions, views,
   sequences and their values, constraints) so an empty database can be rebuilt;
   `privileges.json` keeps every GRANT and default privilege, read in the same
   snapshot (the dumps themselves carry no owners or grants: see privileges.py).
4. Only when every object is written does the manifest go up. On any failure
   the run's uploads are aborted, what it wrote is removed, and no manifest is
   written: a backup without a manifest is incomplete everywhere.
"""

from __future__ import annotations

import contextlib
import hashlib
import time
from concurrent.futures import FIRST_EXCEPTION, ThreadPoolExecutor, wait
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

from service import catalog, clients, integrity, layout, privileges, progress, space
from service.commands import CancelScope, RunningCommand
from service.database import (
    TableInfo,
    connect,
    count_rows,
    database_size,
    export_snapshot,
    import_snapshot,
    list_user_tables,
    server_version,
    sever,
    translated_errors,
)
from service.errors import BackupError, JobAbortedError, ServiceError
from service.pgtools import build_pg_dump_command, build_pg_env, build_table_pattern
from service.storage import ObjectStore, choose_part_size
from service.watchdog import watch_sessions

STALE_UPLOAD_AGE = timedelta(hours=6)
DUMP_APPLICATION = "fac-backup-dump"  # the pg_dumps' sessions, as the stall watchdog finds them


@dataclass(frozen=True)
class BackupPlan:
    """What one run will dump, fixed at the snapshot."""

    backup_id: str
    snapshot: str
    tables: tuple[TableInfo, ...]
    privileges: dict | None = None  # the privileges document, read in the snapshot
    compress: str = "1"  # pg_dump's --compress value (service.clients.compression_option)


def sweep_stale_uploads(store: ObjectStore, log, older_than: timedelta = STALE_UPLOAD_AGE) -> int:
    """Abort multipart uploads under backups/ left open by a killed run (they are billed)."""
    cutoff = datetime.now(UTC) - older_than
    swept = 0
    for upload in store.list_open_uploads(layout.BACKUPS_PREFIX):
        if upload.initiated is not None and upload.initiated > cutoff:
            continue
        store.abort_upload(upload.key, upload.upload_id)
        swept += 1
    if swept:
        log.info("backup.swept_uploads", count=swept)
    return swept


def backup_database(ctx, kind: str, before_restore: dict | None = None) -> dict:
    """Run db_to_s3 for a backup of `kind` (see layout.ID_FORMATS); return its figures.
    `before_restore` (pre-restore backups) goes into the manifest as it is."""
    config, settings = ctx.config, ctx.config.settings
    store = ctx.backups_store()
    log = ctx.log
    env = build_pg_env(config.fac_db, sslmode=settings.pg_sslmode, application_name=DUMP_APPLICATION)
    ctx.progress.set_doing(f"looking for stale uploads in s3://{store.bucket}")
    sweep_stale_uploads(store, log)
    started = time.monotonic()
    ctx.progress.set_doing(f"exporting a snapshot of {config.fac_db.name}")
    control = connect(config.fac_db, sslmode=settings.pg_sslmode, autocommit=True,
                      lock_timeout_seconds=settings.dump_lock_wait_seconds)
    # A cancel lets go of the exported snapshot at once, before anything tidies up in S3 (the
    # cleanups run latest first); an idle-in-transaction session holds back vacuum everywhere.
    token = ctx.scope.add_cleanup(lambda: sever(control))
    with control, _releasing(ctx, token):
        server_major, server_text = server_version(control)
        dumper = clients.choose_dump_client(clients.installed_clients(settings), server_major, server_text,
                                            config.fac_db.name)
        pg_dump, dump_version = dumper.program("pg_dump"), dumper.version
        compress, compression_spec = clients.compression_option(
            dumper, settings.compression_method, settings.compression)
        if settings.compression_method in ("lz4", "zstd") and not compression_spec.startswith(
                settings.compression_method):
            log.warning("backup.compression_unsupported", wanted=settings.compression_method,
                        used=compression_spec, pg_dump=dump_version)
        size = database_size(control)  # autocommit still: a failure here cannot touch the snapshot
        snapshot = export_snapshot(control)
        tables = tuple(list_user_tables(control))
        if not tables:
            raise BackupError(
                f"{config.fac_db.name} has no user tables to back up",
                hint="check that the binding points at the application database",
            )
        with translated_errors("reading the database's privileges"):
            grants = privileges.read_privileges(control)
        disk = {"matviews_bytes": space.read_matview_bytes(control)}
        backup_id = catalog.allocate_backup_id(store, layout.build_backup_id(kind, ctx.now()))
        plan = BackupPlan(backup_id, snapshot, tables, grants, compress)
        started_at = catalog.now_iso(settings.timezone)
        log.info("backup.started", backup_id=backup_id, tables=len(tables), parallel=settings.parallel,
                 server_version=server_text, pg_dump=dump_version, compression=compression_spec)
        baseline = integrity.read_baseline(ctx, store)  # one listing: the estimate's and the watch's
        ctx.progress.expect(bytes=progress.estimate_backup_bytes(baseline, tables), items=len(tables),
                            unit="tables")
        ctx.progress.set_doing(f"dumping {len(tables)} tables of {config.fac_db.name} into s3://{store.bucket}")
        entries, schema_entry, privileges_entry = _dump_all(ctx, plan, store, env, pg_dump, disk,
                                                            release=lambda: sever(control))
        with translated_errors("ending the backup snapshot"):
            control.execute("COMMIT")
    checked = integrity.check_backup(ctx, baseline, entries)  # never raises
    manifest = catalog.Manifest(
        id=backup_id,
        job=ctx.job,
        started_at=started_at,
        finished_at=catalog.now_iso(settings.timezone),
        server_version=server_text,
        pg_dump_version=dump_version,
        database=config.fac_db.dbname,
        tables=tuple(sorted(entries, key=lambda e: (e.schema, e.table))),
        schema=schema_entry,
        privileges=privileges_entry,
        compression=settings.compression,
        before_restore=dict(before_restore or {}),
        compression_spec=compression_spec,
        integrity=checked,
        database_bytes=size,
        disk=_disk_record(disk),
    )
    catalog.write_manifest(store, manifest)
    ctx.backup_id = backup_id
    figures = {
        "backup_id": backup_id,
        "tables": len(manifest.tables),
        "bytes": manifest.total_bytes,
        "rows": manifest.total_rows,
        "seconds": round(time.monotonic() - started, 3),
    }
    if checked:
        figures.update(integrity_baseline=checked["baseline"], rows_dropped=checked["dropped"])
    log.info("backup.finished", **{k: v for k, v in figures.items() if k != "rows_dropped"})
    return figures


def _disk_record(disk: dict) -> dict:
    """The manifest's `disk`: what a restore of the backup puts on disk (catalog.Manifest)."""
    tables = sorted(disk.pop("tables", {}).items())
    restored = sum(n for _, n in tables) + disk["matviews_bytes"]
    return {"restored_bytes": restored, "tables": [[s, t, n] for (s, t), n in tables], **disk}


@contextlib.contextmanager
def _releasing(ctx, token: int):
    """Unregister the scope's cleanup `token` when the block ends, however it ends."""
    try:
        yield
    finally:
        ctx.scope.remove_cleanup(token)


def _dump_all(ctx, plan: BackupPlan, store: ObjectStore, env: dict, pg_dump: str, disk: dict, *,
              release=lambda: None):
    """Dump the schema and every table in parallel; on the first failure stop the rest.
    Each table's on-disk size goes into disk["tables"].

    `release` lets go of the snapshot's control session: on a failure it runs before
    the partial objects are deleted (a slow S3 must not keep the snapshot open).
    """
    disk["tables"] = {}
    settings = ctx.config.settings
    scope = CancelScope()
    token = ctx.scope.add_cleanup(lambda: scope.cancel(ctx.scope.reason or "cancelled"))
    written: list[str] = []
    try:
        with watch_sessions(ctx.progress, ctx.config.fac_db, settings.pg_sslmode, DUMP_APPLICATION), \
                ThreadPoolExecutor(max_workers=settings.parallel, thread_name_prefix="dump") as pool:
            futures = {pool.submit(_dump_schema, ctx, plan, store, env, pg_dump, scope, written): None,
                       pool.submit(_write_privileges, ctx, plan, store, written): None}
            for table in sorted(plan.tables, key=lambda t: -t.total_bytes):
                futures[pool.submit(_dump_table, ctx, plan, table, store, env, pg_dump, scope, written,
                                    disk["tables"])] = table
            done, _ = wait(futures, return_when=FIRST_EXCEPTION)
            failure = next((f for f in done if f.exception() is not None), None)
            if failure is not None:
                table = futures[failure]
                scope.cancel(f"{table.qualified if table else 'schema'} failed")
            wait(futures)
        ctx.scope.check()
        errors = [(futures[f], f.exception()) for f in futures if f.exception() is not None]
        if errors:
            raise _first_cause(errors, plan)
        results = [f.result() for f in futures]
    except BaseException:
        release()
        _remove_partial(ctx, store, plan, written)
        raise
    finally:
        ctx.scope.remove_cleanup(token)
    schema_entry, privileges_entry = (
        next(r for r in results if isinstance(r, dict) and r["key"].endswith(name))
        for name in (layout.SCHEMA_NAME, layout.PRIVILEGES_NAME))
    return [r for r in results if isinstance(r, catalog.TableEntry)], schema_entry, privileges_entry


def _first_cause(errors, plan: BackupPlan) -> ServiceError:
    """The error that started the failure, not the cancels it caused in sibling dumps."""
    real = [(t, e) for t, e in errors if not isinstance(e, JobAbortedError)] or errors
    table, exc = real[0]
    what = f"table {table.qualified}" if table else "the schema dump"
    if isinstance(exc, ServiceError):
        return BackupError(
            f"backup {plan.backup_id} failed at {what}: {exc.message}",
            detail=exc.detail,
            hint=exc.hint or "no manifest was written; fix the cause and run the backup again",
        )
    return BackupError(f"backup {plan.backup_id} failed at {what}: {type(exc).__name__}: {exc}")


def _stream_dump(argv, env, key, part_size, store, scope, written) -> tuple[int, str]:
    """Run one pg_dump into one object; the upload completes only if pg_dump exits 0."""
    with RunningCommand(argv, env, scope=scope) as dump:
        result = store.upload_stream(
            key,
            dump.stdout,
            part_size=part_size,
            cancelled=lambda: scope.cancelled,
            before_complete=dump.check,
        )
    written.append(key)
    return result.size, result.sha256


def _dump_schema(ctx, plan, store, env, pg_dump, scope, written) -> dict:
    scope.check()
    excluded = tuple(f"--exclude-table-data={build_table_pattern(t.schema, t.name)}" for t in plan.tables)
    settings = ctx.config.settings
    argv = build_pg_dump_command(
        pg_dump, snapshot=plan.snapshot, compression=plan.compress,
        lock_wait_seconds=settings.dump_lock_wait_seconds, extra=excluded,
    )
    key = layout.schema_key(plan.backup_id)
    size, sha = _stream_dump(argv, env, key, ctx.config.settings.min_part_size, store, scope, written)
    ctx.log.info("backup.schema_dumped", key=key, bytes=size)
    return {"key": key, "bytes": size, "sha256": sha}


def _write_privileges(ctx, plan, store, written) -> dict:
    """privileges.json: the grants of the snapshot, beside schema.dump (a few kB)."""
    body = privileges.encode(plan.privileges)
    key = layout.privileges_key(plan.backup_id)
    store.put_bytes(key, body)
    written.append(key)
    grants = privileges.count_grants(plan.privileges)
    ctx.log.info("backup.privileges_written", key=key, privileges=grants)
    return {"key": key, "bytes": len(body), "sha256": hashlib.sha256(body).hexdigest(), "privileges": grants}


def _dump_table(ctx, plan, table: TableInfo, store, env, pg_dump, scope, written,
                sizes: dict) -> catalog.TableEntry:
    scope.check()
    settings = ctx.config.settings
    # Named as the pg_dumps are: a long count is work the stall watchdog sees, not silence.
    with connect(ctx.config.fac_db, sslmode=settings.pg_sslmode, autocommit=True, application_name=DUMP_APPLICATION,
                 lock_timeout_seconds=settings.dump_lock_wait_seconds) as conn:
        import_snapshot(conn, plan.snapshot)
        rows = count_rows(conn, table.schema, table.name)
        # Under the count's own lock: reading the size takes no other.
        sizes[(table.schema, table.name)] = space.read_table_disk_bytes(conn, table.schema, table.name)
        conn.execute("COMMIT")  # release the count's lock: pg_dump takes its own, for less time
        scope.check()
        argv = build_pg_dump_command(
            pg_dump, snapshot=plan.snapshot, table=(table.schema, table.name), compression=plan.compress,
            lock_wait_seconds=settings.dump_lock_wait_seconds,
        )
        key = layout.table_key(plan.backup_id, table.schema, table.name)
        part_size = choose_part_size(table.total_bytes, settings.min_part_size)
        size, sha = _stream_dump(argv, env, key, part_size, store, scope, written)
    ctx.log.info("backup.table_dumped", table=table.qualified, rows=rows, bytes=size)
    ctx.progress.item_done()
    return catalog.TableEntry(table.schema, table.name, key, size, sha, rows)


def _remove_partial(ctx, store: ObjectStore, plan: BackupPlan, written: list[str]) -> None:
    """Delete what a failed run wrote, so its prefix does not linger; it has no manifest anyway."""
    try:
        store.delete_objects(list(written))
    except ServiceError as exc:  # a StorageError, or the interrupted client refusing once its grace is over
        ctx.log.warning("backup.cleanup_failed", backup_id=plan.backup_id, error=exc.message)
