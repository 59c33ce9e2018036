"""`show BACKUP_ID` and `verify BACKUP_ID`: read a backup without restoring it; `show fac-snapshot-db`.

Both resolve the id as a restore would (finder.find_backup), so what an
operator inspects is exactly what `run s3_restore` with the same id would use.
`show` given the snapshot binding's name instead prints the snapshot
database's refresh record (service.refresh_record): whether its copy is whole,
from when, by which run and method, and, for an unfinished one, why it is not
restorable and which backup to restore instead.
"""

from __future__ import annotations

import json
import os
import sys

from service import clients, space
from service.config import load_config
from service.database import connect, list_user_tables, translated_errors
from service.finder import FoundBackup, find_backup
from service.integrity import dropped_tables, read_acknowledgement
from service.log import configure_logging, register_secrets
from service.media_versions import restorable_media
from service.pgtools import INHERITED_ENV
from service.refresh_record import COMPLETE, UNKNOWN, describe_state, read_refresh_state
from service.storage import S3ObjectStore
from service.verify import verify_backup


def _open_backups():
    config = load_config()
    register_secrets(config.secrets())
    configure_logging(config.settings.log_format, sys.stderr)
    return config, S3ObjectStore(config.backups)


def describe(found: FoundBackup) -> dict:
    """A backup as data: the manifest, or what a legacy prefix holds; and how the typed id
    resolved (`typed_as` when it was not the backup's own, `others` it did not choose)."""
    resolved = {"typed_as": found.typed_as, "others": list(found.others)}
    if found.manifest is not None:
        data = json.loads(found.manifest.to_json())
        data.update(legacy=False, total_rows=found.manifest.total_rows, total_bytes=found.manifest.total_bytes,
                    **resolved)
        return data
    return {"id": found.id, "legacy": True, "prefix": found.prefix,
            "tables": [{"schema": t.schema, "table": t.table, "key": t.key, "bytes": t.bytes}
                       for t in found.legacy_tables],
            "total_bytes": sum(t.bytes for t in found.legacy_tables), **resolved}


def resolution_lines(found: FoundBackup) -> list[str]:
    """How the typed id resolved, when there is more to say than the id itself."""
    lines = []
    if found.typed_as:
        lines.append(f"typed as {found.typed_as}: the only backup that id can mean")
    if found.others:
        lines.append(f"not chosen: {', '.join(found.others)} (a similar id; pass it as 'list' prints it to choose it)")
    return lines


def describe_media(store, found: FoundBackup) -> dict:
    """The media a restore of `found` brings back (service.media_versions): one listing of the mirror."""
    if found.manifest is None:
        return {"moment": None, "moment_from": "none: a legacy backup restores the latest copy of every key"}
    return restorable_media(store, found.manifest)


def _print_media(media: dict) -> None:
    if media.get("moment") is None:
        print(f"\nmedia      {media['moment_from']}")
        return
    source = "its media sync" if media["moment_from"] == "media.json" else \
        "its manifest's finished_at (no media record)"
    print(f"\nmedia      as of {media['moment']} ({source})")
    print(f"           {media['objects']:,} objects, {media['bytes']:,} bytes to bring back; "
          f"{media['from_versions']:,} of them ({media['from_versions_bytes']:,} bytes) from kept versions")
    if media["not_in_backup"]:
        print(f"           {media['not_in_backup']:,} later keys are not part of it (a restore leaves them alone)")
    if media.get("recorded_objects") is not None and media["recorded_objects"] != media["objects"]:
        print(f"           the sync recorded {media['recorded_objects']:,} objects, "
              f"{media['recorded_bytes']:,} bytes: some copies have gone since (expired or removed)")


def _print_integrity(m, acknowledged: dict | None) -> None:
    """The integrity watch's comparison of this backup with the one before it."""
    check = m.integrity
    if not check:
        print("integrity  not compared (no earlier complete backup of this database, or made before the watch)")
        return
    dropped = dropped_tables(m)
    compared = f"compared with {check.get('baseline')} ({check.get('tables_compared', 0)} tables, " \
               f"threshold {check.get('threshold_percent')}%)"
    if not dropped:
        print(f"integrity  {compared}: no table shrank beyond the threshold")
    else:
        print(f"integrity  {compared}: ROWS DROPPED in {len(dropped)} table(s)")
        for d in dropped:
            after = "gone" if d["after"] is None else f"{d['after']:,}"
            print(f"           {d['table']}: {d['before']:,} -> {after} (-{d['percent']}%)")
        if acknowledged:
            print(f"           acknowledged {acknowledged.get('acknowledged_at', '')} {acknowledged.get('note', '')}")
        else:
            print(f"           NOT acknowledged: {check.get('baseline')} is kept by the retention until "
                  f"'run acknowledge_drop {m.id}'")
    for d in check.get("allowed") or []:
        print(f"           {d['table']} shrank {d['before']:,} -> {d['after'] if d['after'] is not None else 'gone'} "
              "(allowed to shrink)")


def describe_snapshot(config) -> dict:
    """fac-snapshot-db's refresh state, its record, its size and storage, as data."""
    from service.tasks.snapshot import APPLICATION_NAME

    db = config.snapshot_db
    with connect(db, sslmode=config.settings.pg_sslmode, autocommit=True) as conn, \
            translated_errors(f"reading the refresh record of {db.name}"):
        state, record = read_refresh_state(conn, APPLICATION_NAME)
        tables = len(list_user_tables(conn))
        size = space.read_server_space(conn).database_bytes
    data = {"binding": db.name, "database": f"{db.host}:{db.port}/{db.dbname}", "state": state,
            "summary": describe_state(state, record), "restorable": state == COMPLETE and tables > 0,
            "tables": tables, "database_bytes": size,
            "storage_bytes": space.storage_bytes(config.settings.snapshot_db_storage_gb) or 0}
    if record is not None:
        data["record"] = json.loads(record.to_comment())
    return data


def show_snapshot(config, as_json: bool) -> int:
    """Print whether fac-snapshot-db holds a whole copy, from when, and what to restore otherwise."""
    data = describe_snapshot(config)
    if as_json:
        print(json.dumps(data, indent=2, ensure_ascii=False))
        return 0
    record = data.get("record") or {}
    storage = f" of {space.format_gb(data['storage_bytes'])} storage" if data["storage_bytes"] else ""
    print(f"snapshot   {data['binding']}   ({data['database']})")
    print(f"state      {data['summary']}")
    if record:
        print(f"data as of {record['data_as_of']}   from {record['source']} ({record['source_database']})")
        print(f"refresh    run {record['run_id'] or '-'}   method {record['method'] or '-'}   "
              f"started {record['started_at'] or '-'}   backup of the same run {record['backup_id'] or '-'}")
    print(f"size       {data['tables']} tables, {space.format_gb(data['database_bytes'])}{storage}")
    if data["state"] == UNKNOWN and data["tables"]:
        print("\ndb_restore takes this snapshot only with --force: no refresh record says when its data was taken; "
              "refresh it with db_to_db, or restore from S3 (s3_restore BACKUP_ID)")
    elif not data["restorable"]:
        instead = f"s3_restore {record['backup_id']}" if record.get("backup_id") else "s3_restore BACKUP_ID"
        print(f"\ndb_restore refuses this snapshot: restore from S3 instead ({instead}), or refresh it with db_to_db")
    return 0


def show_backup(backup_id: str, as_json: bool) -> int:
    """Print a backup's manifest (tables, rows, bytes, times, versions) and its media state, or, given
    the snapshot binding's name (fac-snapshot-db), the snapshot's refresh state."""
    config, store = _open_backups()
    if backup_id == config.snapshot_db.name:
        return show_snapshot(config, as_json)
    found = find_backup(store, backup_id)
    data = describe(found)
    data["media"] = describe_media(store, found)
    if found.manifest is not None and found.manifest.integrity:
        data["acknowledged"] = read_acknowledgement(store, found.id)
    if as_json:
        print(json.dumps(data, indent=2, ensure_ascii=False))
        return 0
    if found.legacy:
        print(f"backup {found.id}: LEGACY (written by the old tool; no manifest, no checksums, no row counts)")
        for line in resolution_lines(found):
            print(f"           {line}")
        print(f"prefix     {found.prefix}")
    else:
        m = found.manifest
        print(f"backup     {m.id}")
        for line in resolution_lines(found):
            print(f"           {line}")
        print(f"job        {m.job}")
        print(f"started    {m.started_at}")
        print(f"finished   {m.finished_at}")
        print(f"database   {m.database}   server {m.server_version}   pg_dump {m.pg_dump_version}"
              f"   compression {m.compression_spec or f'gzip:{m.compression}'}")
        print(f"schema     {m.schema.get('key', '-')}   {int(m.schema.get('bytes', 0)):,} bytes")
        if m.privileges:
            print(f"privileges {m.privileges['key']}   {int(m.privileges.get('privileges', 0)):,} privileges")
        else:
            print("privileges none recorded (made before privileges were kept: a restore brings back no GRANTs)")
        if m.restored_bytes:
            print(f"on disk    {space.format_gb(m.restored_bytes)} once restored (tables with their indexes, "
                  "materialized views)")
        if m.before_restore:
            r = m.before_restore
            where = f"{r.get('space')}/{r.get('binding')}" if r.get("space") else r.get("binding")
            print(f"taken before restoring {r.get('source') or '?'} into {where} "
                  f"(--confirm {r.get('confirmation')}, run {r.get('run_id')})")
    if found.manifest is not None:
        _print_integrity(found.manifest, data.get("acknowledged"))
    print(f"\n{'TABLE':<56} {'ROWS':>12} {'BYTES':>14}")
    for t in data["tables"]:
        rows = f"{t['rows']:,}" if "rows" in t else "-"
        print(f"{t['schema'] + '.' + t['table']:<56} {rows:>12} {t['bytes']:>14,}")
    total_rows = f"{data['total_rows']:,}" if "total_rows" in data else "-"
    count = f"{len(data['tables'])} tables"
    print(f"{count:<56} {total_rows:>12} {data['total_bytes']:>14,}")
    _print_media(data["media"])
    return 0


def verify_backup_command(backup_id: str) -> int:
    """Check every object (presence, size, sha256) and that pg_restore can list each dump."""
    config, store = _open_backups()
    found = find_backup(store, backup_id)
    env = {k: os.environ[k] for k in INHERITED_ENV if k in os.environ}
    report = verify_backup(store, found, parallel=config.settings.parallel,
                           pg_restore=clients.archive_reader(config.settings, found.manifest), env=env)
    checks = "size and sha256 match the manifest" if report["checksums"] else \
        "no checksums to compare (legacy backup: presence and readability only)"
    print(f"backup {found.id}: OK, {report['objects']} objects, {report['bytes']:,} bytes; {checks}; "
          "every dump readable by pg_restore --list")
    for line in resolution_lines(found):
        print(f"  {line}")
    return 0
