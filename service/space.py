"""How much disk the snapshot copy and the restores need, against each database's known storage.

Units: FAC_BACKUP_FAC_DB_STORAGE_GB and FAC_BACKUP_SNAPSHOT_DB_STORAGE_GB are
the `storage` parameter of the binding's RDS plan. cloud.gov's broker passes
it to RDS as AllocatedStorage, which AWS counts in GiB, so a GB here is 2^30
bytes (GIB) throughout: in the settings, the figures, the messages and the
`cf update-service` size a refusal proposes.

What is measured, without taking a lock (nothing here can queue behind a
migration): a server's used space as the sum of pg_database_size over every
database the role may connect to (RDS's own `rdsadmin` is not readable and
small), the bound database's own size, and the server's WAL room,
max_wal_size + wal_keep_size: the WAL a load leaves on the same disk between
checkpoints. One copy of a database is its source's pg_database_size (bloat
included: a fresh copy is no larger). The largest index, from the catalog's
page counts, stands for the sort files of building it.

The peaks (service.tasks.snapshot, the restores):
- in place (the snapshot refresh): the target server's other databases, one
  copy and the WAL room. The old contents are dropped and committed first,
  so their files are gone before the load, and each large table's indexes
  are built after its own load (service.tasks.refresh), so their sort files
  never sit on top of the whole copy.
- all or nothing (the snapshot copy when it fits, every restore into
  fac-db): the server as it is, old copy included (its files live until
  COMMIT), the new copy, and the WAL room (and, for the copy, the sort files
  of its largest index, built once everything is loaded).
HEADROOM (10% of the storage) stays free under an all-or-nothing peak: RDS
turns `storage-full` before the last byte, the OS, logs and sort files need
room, WAL outgrows max_wal_size while the archiver lags, and every figure
here is an estimate. The in-place refresh is the one that must fit
production's 75 GB for 70 GB of data: it needs no headroom, and is refused
only when even one copy cannot fit.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass

import psycopg
from psycopg import sql

from service.database import connect, translated_errors
from service.errors import SafetyError

GIB = 1024 ** 3
HEADROOM = 0.10
IN_PLACE, ALL_OR_NOTHING = "in_place", "all_or_nothing"
# Legacy dumps and manifests older than the recorded sizes: on-disk bytes (tables, TOAST,
# indexes) per dump byte. Measured on the sample and benchmark data: 5.6x at gzip 1, 6.3x at
# gzip 6 (the old tool's default), 1.6x uncompressed. Rough: real data compresses less.
COMPRESSED_EXPANSION, PLAIN_EXPANSION = 6.0, 1.7
SETTINGS = {"fac_db": "FAC_BACKUP_FAC_DB_STORAGE_GB", "snapshot_db": "FAC_BACKUP_SNAPSHOT_DB_STORAGE_GB"}

SERVER_SQL = """
SELECT pg_database_size(current_database()),
       (SELECT sum(pg_database_size(oid)) FROM pg_database
        WHERE has_database_privilege(oid, 'CONNECT'))::bigint,
       pg_size_bytes(current_setting('max_wal_size')) + pg_size_bytes(current_setting('wal_keep_size'))
"""

LARGEST_INDEX_SQL = """
SELECT coalesce(max(c.relpages::bigint), 0) * current_setting('block_size')::bigint
FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
WHERE c.relkind = 'i' AND n.nspname <> 'information_schema' AND n.nspname NOT LIKE 'pg\\_%'
"""

# Materialized views are rebuilt by a restore's REFRESH: their heap, TOAST and indexes by the
# catalog's page counts (no lock: the application's own REFRESH holds an exclusive one).
MATVIEWS_SQL = """
SELECT coalesce(sum(c.relpages::bigint + coalesce(t.relpages, 0)
                    + coalesce((SELECT sum(i.relpages) FROM pg_index x JOIN pg_class i ON i.oid = x.indexrelid
                                WHERE x.indrelid = c.oid), 0)), 0)::bigint * current_setting('block_size')::bigint
FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace LEFT JOIN pg_class t ON t.oid = c.reltoastrelid
WHERE c.relkind = 'm' AND c.relispopulated AND n.nspname <> 'information_schema' AND n.nspname NOT LIKE 'pg\\_%'
"""


@dataclass(frozen=True)
class ServerSpace:
    """One look at a database's server: what it holds and the WAL it keeps room for."""

    database_bytes: int  # the bound database
    server_bytes: int    # every database the role may measure, the bound one included
    wal_room_bytes: int

    @property
    def others_bytes(self) -> int:
        return max(self.server_bytes - self.database_bytes, 0)


def read_server_space(conn: psycopg.Connection) -> ServerSpace:
    """The space of the server `conn` is on (no lock taken)."""
    with translated_errors("measuring the database's size"):
        size, server, wal = conn.execute(SERVER_SQL).fetchone()
    return ServerSpace(int(size), max(int(server or 0), int(size)), int(wal))


def read_largest_index(conn: psycopg.Connection) -> int:
    """The largest user index's size by the catalog (no lock taken)."""
    with translated_errors("reading the largest index's size"):
        return int(conn.execute(LARGEST_INDEX_SQL).fetchone()[0])


def read_matview_bytes(conn: psycopg.Connection) -> int:
    """On-disk bytes of the populated materialized views with their indexes, by the catalog."""
    with translated_errors("reading the materialized views' sizes"):
        return int(conn.execute(MATVIEWS_SQL).fetchone()[0])


def read_table_disk_bytes(conn: psycopg.Connection, schema: str, table: str) -> int:
    """A table's on-disk bytes with TOAST and indexes. pg_total_relation_size takes the table's
    ACCESS SHARE lock: call it in a transaction that already holds it (the row count's)."""
    with translated_errors(f"measuring {schema}.{table}"):
        name = sql.Literal(sql.Identifier(schema, table).as_string(conn))
        return int(conn.execute(sql.SQL("SELECT pg_total_relation_size({}::regclass)").format(name)).fetchone()[0])


def storage_bytes(gb: float | None) -> int | None:
    return None if gb is None else int(gb * GIB)


def format_gb(n: float) -> str:
    """Bytes as the settings count them: 152.4 GB, 0.0523 GB."""
    gb = n / GIB
    return f"{gb:.1f} GB" if gb >= 10 else f"{gb:.3g} GB"


def required_storage(peak: int) -> int:
    """The storage an all-or-nothing `peak` needs, headroom included."""
    return math.ceil(peak / (1 - HEADROOM))


def fitting_gb(storage_needed: int) -> int:
    """The whole number of GB to give the broker so `storage_needed` bytes fit."""
    return max(1, math.ceil(storage_needed / GIB))


def grow_hint(binding: str, setting: str, gb: int) -> str:
    return (f"grow {binding}'s storage: cf update-service {binding} -c '{{\"storage\": {gb}}}' "
            f"({gb} GB fits), then set {setting}={gb} (the space's vars file, deploy/vars/) and redeploy")


@dataclass(frozen=True)
class RefreshPlan:
    """How a snapshot refresh goes about it, and the figures it chose by."""

    method: str
    reason: str
    storage_bytes: int  # 0: unknown
    copy_bytes: int
    in_place_bytes: int        # the peak of an in-place refresh
    all_or_nothing_bytes: int  # the peak of an all-or-nothing copy

    def figures(self) -> dict:
        return {f"space_{k}" if k != "method" else k: v for k, v in asdict(self).items()}


def refresh_peaks(target: ServerSpace, copy_bytes: int, largest_index: int) -> tuple[int, int]:
    """(in place, all or nothing): the peak bytes on the target's server of each way of refreshing.

    In place, a large table's indexes are built right after its load, largest table first, so
    their sort files come and go before the rest is loaded: the peak is the whole copy. All or
    nothing builds every index on top of both copies: the largest one's sort files add to it.
    """
    wal = target.wal_room_bytes
    return target.others_bytes + copy_bytes + wal, target.server_bytes + copy_bytes + largest_index + wal


def plan_refresh(storage: int | None, target: ServerSpace, copy_bytes: int, largest_index: int, *,
                 target_name: str, setting: str = SETTINGS["snapshot_db"]) -> RefreshPlan:
    """Choose the snapshot refresh's method (module docstring); SafetyError, naming the fix, when
    the known storage cannot hold even one copy."""
    in_place, both = refresh_peaks(target, copy_bytes, largest_index)
    figures = dict(copy_bytes=copy_bytes, in_place_bytes=in_place, all_or_nothing_bytes=both)
    if storage is None:
        return RefreshPlan(IN_PLACE, f"{setting} is not set, so {target_name}'s storage is unknown: the "
                           "refresh takes the method that needs room for one copy only", 0, **figures)
    if required_storage(both) <= storage:
        return RefreshPlan(ALL_OR_NOTHING, f"{target_name}'s {format_gb(storage)} hold both copies "
                           f"({format_gb(both)}) with {HEADROOM:.0%} to spare", storage, **figures)
    if in_place > storage:
        gb = fitting_gb(required_storage(in_place))
        raise SafetyError(
            f"refusing to refresh {target_name}: even one copy of the data needs about {format_gb(in_place)} "
            f"there, more than its {format_gb(storage)} of storage; nothing was touched (the old copy stays)",
            detail=_detail(("other databases", target.others_bytes), ("one copy", copy_bytes),
                           ("WAL room", target.wal_room_bytes), ("storage", storage)),
            hint=grow_hint(target_name, setting, gb))
    return RefreshPlan(IN_PLACE, f"{target_name}'s {format_gb(storage)} cannot hold both copies with "
                       f"{HEADROOM:.0%} to spare (that needs {format_gb(required_storage(both))}); one copy "
                       f"at a time needs {format_gb(in_place)}", storage, **figures)


@dataclass(frozen=True)
class RestoreNeed:
    """What an all-or-nothing restore into a database needs at its peak."""

    target: ServerSpace
    restored_bytes: int
    rough: bool  # estimated from dump sizes (legacy backups, older manifests)
    basis: str   # where restored_bytes comes from, for the message

    @property
    def peak_bytes(self) -> int:
        return self.target.server_bytes + self.restored_bytes + self.target.wal_room_bytes

    @property
    def storage_needed(self) -> int:
        return required_storage(self.peak_bytes)

    def figures(self) -> dict:
        return {"space_database_bytes": self.target.database_bytes, "space_server_bytes": self.target.server_bytes,
                "space_restored_bytes": self.restored_bytes, "space_wal_room_bytes": self.target.wal_room_bytes,
                "space_peak_bytes": self.peak_bytes, "space_storage_needed_bytes": self.storage_needed,
                "space_estimate_rough": self.rough}


def check_restore(need: RestoreNeed, storage: int | None, *, what: str, target_name: str,
                  setting: str = SETTINGS["fac_db"]) -> None:
    """SafetyError (exit 3) when `storage` is known and cannot hold `need` with the headroom."""
    if storage is None or need.storage_needed <= storage:
        return
    gb = fitting_gb(need.storage_needed)
    rough = "; the restored size is a rough estimate from the dumps" if need.rough else ""
    raise SafetyError(
        f"refusing to restore {what} into {target_name}: at its peak the restore needs about "
        f"{format_gb(need.peak_bytes)} ({format_gb(need.target.server_bytes)} there now, the old copy kept "
        f"until COMMIT, + {format_gb(need.restored_bytes)} restored + {format_gb(need.target.wal_room_bytes)} "
        f"WAL room), and {target_name} has {format_gb(storage)} of storage, which must keep "
        f"{HEADROOM:.0%} free{rough}; nothing was touched",
        detail=_detail(("now on the server", need.target.server_bytes), (f"restored ({need.basis})",
                       need.restored_bytes), ("WAL room", need.target.wal_room_bytes),
                       ("peak", need.peak_bytes), ("storage needed with headroom", need.storage_needed),
                       ("storage", storage)),
        hint=grow_hint(target_name, setting, gb) + ", then run the restore again")


def check_restore_room(ctx, what: str, restored: tuple[int, bool, str]) -> dict:
    """Before a restore into fac-db touches anything: refuse (SafetyError) when its known storage
    cannot hold `restored` ((bytes, rough, basis)) beside what is there, or say once that it cannot
    be checked. Returns the figures."""
    target, settings = ctx.config.fac_db, ctx.config.settings
    with connect(target, sslmode=settings.pg_sslmode, autocommit=True) as conn:
        need = RestoreNeed(read_server_space(conn), *restored)
    storage = storage_bytes(settings.fac_db_storage_gb)
    figures = {**need.figures(), "space_storage_bytes": storage or 0}
    if storage is None:
        ctx.log.warning("restore.space_unchecked", target=target.name, **figures,
                        reason=f"{SETTINGS['fac_db']} is not set: whether {target.name}'s storage holds the "
                               f"restore (about {format_gb(need.storage_needed)} with headroom) cannot be checked",
                        hint=f"set {SETTINGS['fac_db']} to {target.name}'s storage (deploy/vars/)")
        return figures
    check_restore(need, storage, what=what, target_name=target.name)
    ctx.log.info("restore.space_checked", target=target.name, basis=need.basis, **figures)
    return figures


def estimate_from_dumps(dump_bytes: int, compressed: bool = True) -> int:
    """A rough on-disk size of what `dump_bytes` of table dumps restore to."""
    return int(dump_bytes * (COMPRESSED_EXPANSION if compressed else PLAIN_EXPANSION))


def restored_size(found) -> tuple[int, bool, str]:
    """(bytes, rough, basis) of what restoring `found` (service.finder.FoundBackup) puts on disk."""
    if found.manifest is None:
        dumps = sum(t.bytes for t in found.legacy_tables)
        return (estimate_from_dumps(dumps), True,
                f"legacy backup: {format_gb(dumps)} of dumps x {COMPRESSED_EXPANSION:g}, a rough estimate")
    return manifest_restored_size(found.manifest)


def manifest_restored_size(manifest) -> tuple[int, bool, str]:
    """(bytes, rough, basis) of what restoring the backup of `manifest` (catalog.Manifest) puts on disk."""
    if manifest.restored_bytes > 0:
        return manifest.restored_bytes, False, "recorded at backup time: tables with indexes, materialized views"
    dumps = sum(t.bytes for t in manifest.tables) + int(manifest.schema.get("bytes", 0))
    compressed = (manifest.compression_spec or f"gzip:{manifest.compression}") not in ("none", "gzip:0")
    factor = COMPRESSED_EXPANSION if compressed else PLAIN_EXPANSION
    return (estimate_from_dumps(dumps, compressed), True,
            f"backup made before sizes were recorded: {format_gb(dumps)} of dumps x {factor:g}, a rough estimate")


def _detail(*pairs: tuple[str, int]) -> str:
    return "; ".join(f"{label}: {format_gb(n)} ({n:,} bytes)" for label, n in pairs) + \
        " (GB = 2^30 bytes, as RDS counts storage)"
