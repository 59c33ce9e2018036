"""Key names, backup ids, and the catalog's view of complete and incomplete backups."""

from __future__ import annotations

from datetime import datetime
from zoneinfo import ZoneInfo

import pytest

from service import catalog, layout
from service.errors import BackupNotFoundError
from service.storage import MemoryObjectStore

PACIFIC = ZoneInfo("America/Los_Angeles")


def test_backup_ids_follow_the_formats_operators_type():
    """scheduled-mm-dd-HH, daily-mm-dd, initial-YYYYmmddHHMM and friends."""
    when = datetime(2025, 6, 4, 10, 30, tzinfo=PACIFIC)
    assert layout.build_backup_id("scheduled", when) == "scheduled-06-04-10"
    assert layout.build_backup_id("daily", when) == "daily-06-04"
    assert layout.build_backup_id("initial", when) == "initial-202506041030"
    assert layout.build_backup_id("on-demand", when) == "on-demand-202506041030"
    assert layout.id_kind("pre-restore-202506041030") == "pre-restore"
    assert layout.id_kind("on-demand-202506041030-2") == "on-demand"
    assert layout.id_kind("whatever") is None


def test_keys_keep_the_published_shape():
    """One object per table at backups/<id>/<schema>-<table>.dump; manifest beside them."""
    assert layout.table_key("daily-06-04", "public", "dissemination_general") == \
        "backups/daily-06-04/public-dissemination_general.dump"
    assert layout.manifest_key("x") == "backups/x/manifest.json"
    assert not layout.is_media_key("backups/x/manifest.json") and layout.is_media_key("reports/a.pdf")


def manifest(backup_id: str, rows: int = 3) -> catalog.Manifest:
    entry = catalog.TableEntry("public", "t", layout.table_key(backup_id, "public", "t"), 10, "ab" * 32, rows)
    return catalog.Manifest(backup_id, "db_to_s3", "2025-06-04T10:30:00-07:00", "2025-06-04T10:31:00-07:00",
                            "15.2", "15.2", "fac", (entry,), {"key": layout.schema_key(backup_id), "bytes": 5,
                                                              "sha256": "cd" * 32})


def test_manifest_round_trips():
    """What is written is what is read back, field for field."""
    store = MemoryObjectStore()
    m = manifest("daily-06-04")
    catalog.write_manifest(store, m)
    assert catalog.read_manifest(store, "daily-06-04") == m
    assert m.total_bytes == 15 and m.total_rows == 3


def test_a_backup_without_manifest_is_incomplete():
    """Dumps without a manifest are listed as incomplete and cannot be read as a backup."""
    store = MemoryObjectStore()
    store.put_bytes(layout.table_key("scheduled-06-04-10", "public", "t"), b"x" * 7)
    catalog.write_manifest(store, manifest("daily-06-04"))
    listed = {b.id: b for b in catalog.list_backups(store)}
    assert listed["scheduled-06-04-10"].complete is False and listed["scheduled-06-04-10"].bytes == 7
    assert listed["daily-06-04"].complete is True and listed["daily-06-04"].tables == 1
    with pytest.raises(BackupNotFoundError):
        catalog.read_manifest(store, "scheduled-06-04-10")


def test_a_taken_id_gets_a_distinct_one():
    """A run never reuses a prefix that holds anything, complete or not."""
    store = MemoryObjectStore()
    assert catalog.allocate_backup_id(store, "daily-06-04") == "daily-06-04"
    catalog.write_manifest(store, manifest("daily-06-04"))
    assert catalog.allocate_backup_id(store, "daily-06-04") == "daily-06-04-2"
    store.put_bytes("backups/daily-06-04-2/public-t.dump", b"partial")
    assert catalog.allocate_backup_id(store, "daily-06-04") == "daily-06-04-3"


def test_every_key_belongs_to_the_backup_list_prints():
    """One grouping for list and find_backup: flat and nested ids, nothing for media or kept versions."""
    assert catalog.backup_id_of("backups/scheduled-06-04-10-2/manifest.json") == "scheduled-06-04-10-2"
    assert catalog.backup_id_of("backups/scheduled/06-04-10/public-t.dump") == "scheduled/06-04-10"
    assert catalog.backup_id_of("backups/scheduled/2026-06-25T09:03:26-0400/public-t.dump") == \
        "scheduled/2026-06-25T09:03:26-0400"
    for key in ("backups/media-versions/a.pdf/20260101T000000.000000Z_20260101T000000Z", "excel/1.xlsx",
                "backups/stray"):
        assert catalog.backup_id_of(key) is None
