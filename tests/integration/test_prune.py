"""prune_backups against a moto bucket: dry run, apply, refusals, and a prune cut off mid-way."""

from __future__ import annotations

import hashlib
import json
from datetime import datetime, timedelta

import pytest
from structlog.testing import capture_logs

from service import catalog, layout, notify
from service.errors import SafetyError, StorageError
from service.storage import S3ObjectStore

pytestmark = pytest.mark.integration

TABLES = ("public-a", "support-c")


def put_backup(store, backup_id: str, started: datetime, *, manifest: bool = True) -> None:
    """A small backup of this service's layout; without `manifest` it is a failed run's leftover."""
    entries = []
    for name in TABLES:
        data = f"{backup_id}/{name}".encode() * 50
        key = layout.backup_prefix(backup_id) + name + ".dump"
        store.put_bytes(key, data)
        schema, table = name.split("-")
        entries.append(catalog.TableEntry(schema, table, key, len(data), hashlib.sha256(data).hexdigest(), 7))
    schema_data = b"schema of " + backup_id.encode()
    store.put_bytes(layout.schema_key(backup_id), schema_data)
    if manifest:
        catalog.write_manifest(store, catalog.Manifest(
            id=backup_id, job="daily_backup", started_at=started.isoformat(timespec="seconds"),
            finished_at=(started + timedelta(minutes=5)).isoformat(timespec="seconds"),
            server_version="15.0", pg_dump_version="15.0", database="fac", tables=tuple(entries),
            schema={"key": layout.schema_key(backup_id), "bytes": len(schema_data),
                    "sha256": hashlib.sha256(schema_data).hexdigest()}))


def keys(store) -> set[str]:
    """Every backup's objects (the runs' journal records are not backups)."""
    return {o.key for o in catalog.list_backup_objects(store)}


def assert_nothing_looks_complete_but_is_not(store) -> None:
    """Every backup with a manifest still holds every object the manifest names."""
    present = keys(store)
    for summary in catalog.list_backups(store):
        if summary.manifest is not None:
            m = summary.manifest
            assert {t.key for t in m.tables} | {m.schema["key"]} <= present, m.id


@pytest.fixture(autouse=True)
def fresh_outcomes():
    """Prune consults this process's memory of run outcomes: start each test without one."""
    notify.forget_outcomes()
    yield
    notify.forget_outcomes()


@pytest.fixture
def history(sandbox):
    """17 daily backups one day apart (the newest an hour old), a failed leftover, and two legacy
    backups, seen from a clock 30 hours ahead so that the leftover is older than a day."""
    store = sandbox.store()
    now = datetime.now(sandbox.config().settings.timezone) + timedelta(hours=30)
    for day in range(17):
        put_backup(store, f"daily-{day:02d}", now - timedelta(days=day, hours=1))
    put_backup(store, "daily-leftover", now - timedelta(days=3), manifest=False)
    store.put_bytes("backups/daily-01-02/public-old.dump", b"legacy dump")
    store.put_bytes("backups/scheduled/01-02-10/public-old.dump", b"legacy nested dump")
    store.put_bytes("media/report.pdf", b"media is not a backup")
    return sandbox, store, (lambda: now)


def test_a_dry_run_lists_what_it_would_delete_and_deletes_nothing(history):
    """Without --apply every decision is logged with its reason and the bucket is unchanged."""
    box, store, clock = history
    before = keys(store)
    with capture_logs() as logs:
        result = box.run("prune_backups", clock=clock)
    assert result.outcome == "success", result.error
    assert keys(store) == before
    figures = result.steps[0].figures
    would = {e["backup_id"]: e["reason"] for e in logs if e["event"] == "prune.would_delete"}
    assert set(would) == {f"daily-{d:02d}" for d in range(14, 17)} | {"daily-leftover"}
    assert "older than 14 days" in would["daily-15"] and "incomplete" in would["daily-leftover"]
    assert figures["applied"] is False and figures["deleted"] == 4 and figures["kept"] == 16
    assert figures["deleted_bytes"] > 0 and figures["kept_bytes"] > 0 and figures["foreign"] == 2


def test_apply_deletes_old_backups_and_leftovers_and_never_legacy_ones(history):
    """--apply removes what the dry run listed; recent, newest and legacy backups and media stay."""
    box, store, clock = history
    result = box.run("prune_backups", options={"apply": True}, clock=clock)
    assert result.outcome == "success", result.error
    ids = {s.id for s in catalog.list_backups(store)}
    assert {f"daily-{d:02d}" for d in range(14)} <= ids
    assert not ids & ({f"daily-{d:02d}" for d in range(14, 17)} | {"daily-leftover"})
    remaining = keys(store)
    assert "backups/daily-01-02/public-old.dump" in remaining
    assert "backups/scheduled/01-02-10/public-old.dump" in remaining
    assert "media/report.pdf" in {o.key for o in store.list_objects("media/")}
    figures = result.steps[0].figures
    assert figures["applied"] is True and figures["deleted"] == 4
    assert_nothing_looks_complete_but_is_not(store)


def test_prune_refuses_when_the_newest_backup_has_no_manifest(sandbox):
    """A failed last backup (newest prefix without a manifest) stops the prune; nothing is deleted."""
    store = sandbox.store()
    now = datetime.now(sandbox.config().settings.timezone)
    for day in range(4):
        put_backup(store, f"daily-{day:02d}", now - timedelta(days=day, hours=2))
    put_backup(store, "daily-failed", now, manifest=False)
    before = keys(store)
    result = sandbox.run("prune_backups", options={"apply": True})
    assert result.outcome == "failure" and isinstance(result.error, SafetyError)
    assert "daily-failed has no manifest" in result.error.message
    assert keys(store) == before


def test_prune_refuses_when_the_newest_complete_backup_is_stale(history):
    """Backups that stopped arriving (newest complete one older than 48 hours) stop the prune."""
    box, store, clock = history
    before = keys(store)
    result = box.run("prune_backups", options={"apply": True}, clock=lambda: clock() + timedelta(days=3))
    assert result.outcome == "failure" and "seem to be failing" in result.error.message
    assert keys(store) == before


def test_prune_refuses_after_a_failed_backup_run_in_this_process(history):
    """When the newest backup run this process saw failed, prune refuses even if the bucket looks fine."""
    box, store, clock = history
    notify.remember("scheduled_backup", "success")
    notify.remember("daily_backup", "failure")
    before = keys(store)
    result = box.run("prune_backups", options={"apply": True}, clock=clock)
    assert result.outcome == "failure" and "last daily_backup run in this process failed" in result.error.message
    assert keys(store) == before
    notify.remember("daily_backup", "success")
    assert box.run("prune_backups", options={"apply": True}, clock=clock).outcome == "success"


class FailingStore(S3ObjectStore):
    """The real S3 store, except that its Nth delete request fails."""

    calls = 0
    fail_at = 0

    def delete_objects(self, keys_to_delete) -> None:
        type(self).calls += 1
        if type(self).calls == type(self).fail_at:
            raise StorageError("injected fault: delete failed")
        super().delete_objects(keys_to_delete)


@pytest.mark.parametrize("fail_at", [1, 2, 3, 5])
def test_an_interrupted_prune_never_leaves_a_backup_that_looks_complete(history, fail_at):
    """Cut at its Nth delete, a prune leaves every manifest's objects in place; the next one finishes."""
    box, store, clock = history
    FailingStore.calls, FailingStore.fail_at = 0, fail_at
    result = box.run("prune_backups", options={"apply": True}, clock=clock, store_factory=FailingStore)
    assert result.outcome == "failure" and "injected fault" in result.error.message
    assert_nothing_looks_complete_but_is_not(store)
    result = box.run("prune_backups", options={"apply": True}, clock=clock)
    assert result.outcome == "success", result.error
    ids = {s.id for s in catalog.list_backups(store)}
    assert {f"daily-{d:02d}" for d in range(14)} <= ids
    assert not ids & ({f"daily-{d:02d}" for d in range(14, 17)} | {"daily-leftover"})
    assert_nothing_looks_complete_but_is_not(store)


def test_the_cli_dry_runs_by_default_and_deletes_with_apply(sandbox):
    """`run prune_backups` lists what it would delete and exits 0; `--apply` deletes exactly that."""
    store = sandbox.store()
    now = datetime.now(sandbox.config().settings.timezone)
    for day in range(16):
        put_backup(store, f"daily-{day:02d}", now - timedelta(days=day, hours=1))
    dry = sandbox.cli("run", "prune_backups")
    assert dry.returncode == 0, dry.stderr
    would = [json.loads(line) for line in dry.stdout.splitlines() if '"prune.would_delete"' in line]
    assert sorted(e["backup_id"] for e in would) == ["daily-14", "daily-15"]
    assert len(catalog.list_backups(store)) == 16
    applied = sandbox.cli("run", "prune_backups", "--apply")
    assert applied.returncode == 0, applied.stderr
    assert {s.id for s in catalog.list_backups(store)} == {f"daily-{d:02d}" for d in range(14)}
