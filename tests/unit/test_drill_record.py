"""The drill's record beside a backup it proved (verified.json): written only while the backup exists."""

from __future__ import annotations

import json
from types import SimpleNamespace

from structlog.testing import capture_logs

from service import layout
from service.log import get_logger
from service.memory_store import MemoryObjectStore
from service.tasks.drill import record_verified

FIGURES = {"backup_started_at": "2026-01-02T03:00:00-08:00", "objects": 5, "bytes": 900, "restored_tables": 3}


def test_the_record_lands_beside_a_backup_that_still_has_its_manifest():
    store = MemoryObjectStore("b")
    store.put_bytes(layout.manifest_key("daily-01-02"), b"{}")
    assert record_verified(SimpleNamespace(log=get_logger()), store, "daily-01-02", FIGURES) is True
    record = json.loads(store.get_bytes(layout.verified_key("daily-01-02")))
    assert record["backup_id"] == "daily-01-02" and record["restored_tables"] == 3
    assert record["backup_started_at"] == FIGURES["backup_started_at"] and record["verified_at"]


def test_a_backup_pruned_while_the_drill_ran_gets_no_record_and_the_prefix_stays_empty():
    """A prune (which holds the lock; a drill does not) deleted the backup meanwhile: writing the record
    would leave a lone object under a prefix that is gone, so nothing is written and it is logged."""
    store = MemoryObjectStore("b")
    with capture_logs() as logs:
        assert record_verified(SimpleNamespace(log=get_logger()), store, "daily-01-02", FIGURES) is False
    assert store.objects == {}
    assert [e["event"] for e in logs] == ["drill.not_recorded"]
