"""The daemon's periodic look at the disks, so that a refresh or a restore that would not fit shows first.

Every metrics refresh, on a thread of its own (a database that does not
answer must not hold up /healthz or the other gauges), the watcher reads
without locks (service.space): each bound database's size and its server's
room, fac-snapshot-db's refresh state (service.refresh_record), and, from the
newest complete backup's manifest, what a restore of it would put on disk.
It exports them (fac_backup_database_size_bytes, _storage_bytes,
fac_backup_space_required_bytes, fac_backup_snapshot_refresh_state) and keeps
the last look for `ctl status`.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable

from service import space
from service.database import connect
from service.errors import ServiceError
from service.refresh_record import UNKNOWN, describe_state, read_refresh_state
from service.tasks.snapshot import APPLICATION_NAME as COPY_APPLICATION

SNAPSHOT_REFRESH, RESTORE = "snapshot_refresh", "restore"


class SpaceWatcher:
    """Reads the disks into the metrics; `status()` is the last look."""

    def __init__(self, config, metrics, newest_manifest: Callable[[], object | None], log) -> None:
        self.config, self.metrics, self.newest_manifest, self.log = config, metrics, newest_manifest, log
        settings = config.settings
        self.storage = {config.fac_db.name: space.storage_bytes(settings.fac_db_storage_gb),
                        config.snapshot_db.name: space.storage_bytes(settings.snapshot_db_storage_gb)}
        metrics.init_disks({b: s or 0 for b, s in self.storage.items()},
                           {SNAPSHOT_REFRESH: config.snapshot_db.name, RESTORE: config.fac_db.name})
        self._lock = threading.Lock()
        self._last: dict = {"checked_at": None}

    def refresh(self) -> None:
        """One look; never raises (a database that cannot be read is logged and left out)."""
        try:
            self._refresh()
        except Exception:  # noqa: BLE001 - housekeeping must never stop the daemon
            self.log.exception("space.refresh_crashed")

    def status(self) -> dict:
        with self._lock:
            return dict(self._last)

    def _look(self, db, what: Callable):
        try:
            with connect(db, sslmode=self.config.settings.pg_sslmode, autocommit=True) as conn:
                return what(conn)
        except ServiceError as exc:
            self.log.warning("space.unreadable", binding=db.name, error=exc.message, detail=exc.detail)
            return None

    def _refresh(self) -> None:
        fac, snap = self.config.fac_db, self.config.snapshot_db
        source = self._look(fac, space.read_server_space)
        target = self._look(snap, lambda c: (space.read_server_space(c), *read_refresh_state(c, COPY_APPLICATION)))
        sizes, required, status = {}, {}, {"checked_at": time.time(), "databases": {}, "required_bytes": {}}
        for binding, look in ((fac.name, source), (snap.name, target and target[0])):
            if look is not None:
                sizes[binding] = look.database_bytes
                status["databases"][binding] = {"size_bytes": look.database_bytes, "server_bytes": look.server_bytes,
                                                "storage_bytes": self.storage[binding] or 0}
        if source is not None and target is not None:
            # What any refresh needs: the in-place peak, which the largest index does not enter.
            in_place, _ = space.refresh_peaks(target[0], source.database_bytes, 0)
            required[(SNAPSHOT_REFRESH, snap.name)] = in_place
        manifest = self.newest_manifest()
        if source is not None and manifest is not None:
            need = space.RestoreNeed(source, *space.manifest_restored_size(manifest))
            required[(RESTORE, fac.name)] = need.storage_needed
            status["newest_backup"] = getattr(manifest, "id", "")
        status["required_bytes"] = {operation: n for (operation, _), n in required.items()}
        if target is None:  # not read: say so, rather than keep the last state seen
            self.metrics.observe_snapshot_state(UNKNOWN)
        else:
            state, record = target[1], target[2]
            self.metrics.observe_snapshot_state(state)
            status["snapshot"] = {"state": state, "summary": describe_state(state, record),
                                  "restorable": state == "complete",
                                  **({k: getattr(record, k) for k in ("run_id", "method", "started_at",
                                                                       "backup_id", "error")} if record else {}),
                                  "data_as_of": record.data_as_of.isoformat() if record else None}
        self.metrics.observe_disks(sizes, required, status["checked_at"] if source and target else None)
        with self._lock:
            self._last = status
