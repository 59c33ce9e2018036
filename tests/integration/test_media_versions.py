"""Kept media versions against PostgreSQL and the moto server: nothing the sync replaces is
lost, a restore brings media back as it was at the backup's moment, and the retention
deletes a kept version exactly when no kept backup needs it any more."""

from __future__ import annotations

import json
import time
from datetime import UTC, datetime, timedelta

import pytest

from service import catalog, jobs, layout, notify
from service.finder import FoundBackup
from service.log import get_logger
from service.media_versions import list_versions, read_moment, write_media_state
from service.storage import MIN_PART_SIZE, S3ObjectStore
from service.tasks import sync
from tests.integration.test_media_sync import Recorder, injected_500

pytestmark = pytest.mark.integration


@pytest.fixture(autouse=True)
def fresh_outcomes():
    """Prune consults this process's memory of run outcomes: start each test without one."""
    notify.forget_outcomes()
    yield
    notify.forget_outcomes()

ODD = {
    "a report with spaces.pdf": b"spaces v1",
    "résumé/naïve café/Ünïcödé 报告.xlsx": b"unicode v1",
    "2024/" * 10 + "deep.pdf": b"deep v1",
    "folder/": b"a folder marker v1",
}


def fill(store, objects: dict[str, bytes]) -> None:
    for key, data in objects.items():
        store.put_bytes(key, data, content_type="application/pdf")


def mirror(store) -> dict[str, bytes]:
    """The media copies at the root of the backups bucket."""
    return {o.key: store.get_bytes(o.key) for o in store.list_objects() if layout.is_media_key(o.key)}


def kept(store) -> dict[str, list[bytes]]:
    """media key -> contents of its kept versions, oldest first."""
    found: dict[str, list[bytes]] = {}
    for version in sorted(list_versions(store), key=lambda v: v.replaced_at):
        found.setdefault(version.key, []).append(store.get_bytes(version.info.key))
    return found


def backup(box) -> str:
    """A scheduled_backup (dumps, then the media sync); its id."""
    result = box.run("scheduled_backup")
    assert result.outcome == "success", result.error
    return result.steps[1].figures["backup_id"]


def restore_media(box, backup_id: str) -> dict:
    """The media step of `s3_restore backup_id`, as the job runs it after the database step."""
    ctx = jobs.JobContext(box.config(), jobs.JOBS["s3_restore"], "test", (backup_id,), log=get_logger())
    manifest = catalog.read_manifest(box.store(), backup_id)
    ctx.restored = FoundBackup(backup_id, layout.backup_prefix(backup_id), manifest)
    return jobs.STEPS["media_restore"](ctx)


def test_a_replaced_copy_is_kept_and_a_restore_of_an_earlier_backup_brings_it_back(sample_db):
    """The previous content survives the next sync and comes back with s3_restore of a backup taken before."""
    box = sample_db
    media, backups = box.media_store(), box.store()
    fill(media, {"excel/1--general.xlsx": b"workbook v1", "singleauditreport/1.pdf": b"report"})
    before = backup(box)
    assert read_moment(backups, catalog.read_manifest(backups, before)).source == "media.json"
    media.put_bytes("excel/1--general.xlsx", b"workbook v2, re-uploaded")
    media.put_bytes("excel/2--general.xlsx", b"a workbook that came later")
    assert box.run("media_sync").outcome == "success"
    assert mirror(backups)["excel/1--general.xlsx"] == b"workbook v2, re-uploaded"
    assert kept(backups) == {"excel/1--general.xlsx": [b"workbook v1"]}
    media.put_bytes("excel/1--general.xlsx", b"workbook v3, never synced")
    result = box.run("s3_restore", before, options={"confirm": box.config().fac_db.name})
    assert result.outcome == "success", result.error
    figures = result.steps[1].figures
    assert media.get_bytes("excel/1--general.xlsx") == b"workbook v1"
    assert media.get_bytes("singleauditreport/1.pdf") == b"report"
    assert (figures["backup_id"], figures["from_versions"], figures["copied"]) == (before, 1, 1)
    assert figures["moment_from"] == "media.json" and figures["current_media_kept"] == 1
    assert media.get_bytes("excel/2--general.xlsx") == b"a workbook that came later"  # never deleted
    # What the restore replaced was kept first: restoring the pre-restore backup undoes the media too.
    pre_restore = result.steps[0].figures["pre_restore_backup"]
    assert kept(backups)["excel/1--general.xlsx"] == [b"workbook v1", b"workbook v2, re-uploaded"]
    assert restore_media(box, pre_restore)["from_versions"] == 1  # v3, kept by this very step
    assert media.get_bytes("excel/1--general.xlsx") == b"workbook v3, never synced"


def test_an_object_changed_twice_between_backups_restores_as_each_backup_saw_it(sample_db):
    """Two changes between backups keep both old copies; each backup's restore takes its own content."""
    box = sample_db
    media, backups = box.media_store(), box.store()
    fill(media, {"excel/7--audit.xlsx": b"first"})
    first = backup(box)
    for content in (b"second", b"third"):
        media.put_bytes("excel/7--audit.xlsx", content)
        assert box.run("media_sync").outcome == "success"
    second = backup(box)  # nothing changed since the last sync: its media step keeps nothing
    assert kept(backups) == {"excel/7--audit.xlsx": [b"first", b"second"]}
    media.put_bytes("excel/7--audit.xlsx", b"fourth")
    assert box.run("media_sync").outcome == "success"
    media.put_bytes("excel/7--audit.xlsx", b"live, not synced")
    db_figures = jobs.STEPS["media_restore"](jobs.JobContext(box.config(), jobs.JOBS["db_restore"], "t",
                                                             log=get_logger()))
    assert media.get_bytes("excel/7--audit.xlsx") == b"fourth" and "from_versions" not in db_figures
    assert restore_media(box, first)["from_versions"] == 1
    assert media.get_bytes("excel/7--audit.xlsx") == b"first"
    assert restore_media(box, second)["from_versions"] == 1
    assert media.get_bytes("excel/7--audit.xlsx") == b"third"


def test_unchanged_objects_and_first_copies_keep_nothing(sandbox):
    """A first copy and a rerun over unchanged objects write nothing under media-versions/."""
    media, backups = sandbox.media_store(), sandbox.store()
    fill(media, {"a.pdf": b"a", "b.pdf": b"b"})
    for _ in range(3):
        result = sandbox.run("media_sync")
        assert result.outcome == "success" and result.steps[0].figures["kept"] == 0
    assert list(backups.list_objects(layout.MEDIA_VERSIONS_PREFIX)) == []
    assert set(mirror(backups)) == {"a.pdf", "b.pdf"}


def test_odd_keys_round_trip_through_a_kept_version(sandbox):
    """Spaces, non-ASCII, deep prefixes and a folder marker: kept, shown by `show`, then restored
    byte for byte."""
    media, backups = sandbox.media_store(), sandbox.store()
    fill(media, ODD)
    manifest = _fake_manifest("on-demand-202611260900")
    catalog.write_manifest(backups, manifest)
    ctx = jobs.JobContext(sandbox.config(), jobs.JOBS["media_sync"], "t", log=get_logger(),
                          backup_id=manifest.id)
    jobs.STEPS["media_sync"](ctx)
    fill(media, {key: data.replace(b"v1", b"v2 (longer)") for key, data in ODD.items()})
    assert sandbox.run("media_sync").steps[0].figures["kept"] == len(ODD)
    assert kept(backups) == {key: [data] for key, data in ODD.items()}
    _wait_for_s3_clock_after(backups, read_moment(backups, manifest).recorded_at)
    fill(media, {"later.pdf": b"after the backup"})
    assert sandbox.run("media_sync").outcome == "success"
    shown = sandbox.cli("show", manifest.id, "--json")
    assert shown.returncode == 0, shown.stderr
    assert {k: v for k, v in json.loads(shown.stdout)["media"].items() if k != "moment"} == {
        "moment_from": "media.json", "objects": len(ODD), "bytes": sum(map(len, ODD.values())),
        "from_versions": len(ODD), "from_versions_bytes": sum(map(len, ODD.values())), "not_in_backup": 1,
        "recorded_objects": len(ODD), "recorded_bytes": sum(map(len, ODD.values()))}
    assert "from kept versions" in sandbox.cli("show", manifest.id).stdout
    figures = restore_media(sandbox, manifest.id)
    assert {key: media.get_bytes(key) for key in ODD} == ODD
    assert figures["from_versions"] == len(ODD) and figures["from_versions_bytes"] == sum(map(len, ODD.values()))


def test_a_key_first_copied_after_the_moment_is_not_brought_back(sandbox):
    """A restore (here the media_restore job) leaves alone keys that reached the backups after the
    backup's moment, and deletes nothing."""
    media, backups = sandbox.media_store(), sandbox.store()
    fill(media, {"old.pdf": b"old"})
    manifest = _fake_manifest("on-demand-202611260901")
    catalog.write_manifest(backups, manifest)
    jobs.STEPS["media_sync"](jobs.JobContext(sandbox.config(), jobs.JOBS["media_sync"], "t", log=get_logger(),
                                             backup_id=manifest.id))
    recorded = read_moment(backups, manifest).recorded_at
    _wait_for_s3_clock_after(backups, recorded)  # S3 stamps to the second
    fill(media, {"new.pdf": b"new", "old.pdf": b"old, changed"})
    assert sandbox.run("media_sync").outcome == "success"
    media.delete_objects(["new.pdf", "old.pdf"])
    refused = sandbox.run("media_restore", manifest.id)
    assert refused.outcome == "failure" and refused.exit_code == 3  # overwrites fac-private-s3: confirm it
    result = sandbox.run("media_restore", manifest.id, options={"confirm": sandbox.config().media.name})
    assert result.outcome == "success", result.error
    figures = result.steps[0].figures
    assert {o.key for o in media.list_objects()} == {"old.pdf"}
    assert media.get_bytes("old.pdf") == b"old"
    assert (figures["not_in_backup"], figures["from_versions"]) == (1, 1)


def test_interrupted_sync_never_leaves_a_key_without_its_old_or_new_content(sandbox):
    """Whichever copy fails (a keep or an overwrite), every key still holds its old or new content,
    every old content is somewhere in the bucket, and the rerun completes the job."""
    media, backups = sandbox.media_store(), sandbox.store()
    old = {f"excel/{n}--general.xlsx": f"old {n}".encode() for n in range(8)}
    new = {key: data.replace(b"old", b"new!") for key, data in old.items()}
    fill(media, old)
    assert sandbox.run("media_sync").outcome == "success"
    fill(media, new)
    for nth in (1, 2, 5, 9, 16):  # 16 copies in all: 8 keeps, 8 overwrites
        faults = FailNthCopy(nth)
        result = sandbox.run("media_sync", store_factory=faults.factory)
        assert faults.failed, f"the copy #{nth} was never attempted"
        assert result.outcome == "failure"
        now, versions = mirror(backups), kept(backups)
        for key in old:
            assert now[key] in (old[key], new[key])
            assert old[key] in (now[key], *versions.get(key, [])), f"{key}'s old content is lost (copy #{nth})"
        fill(backups, {key: old[key] for key in old if now[key] == new[key]})  # start over for the next fault
        backups.delete_objects([o.key for o in backups.list_objects(layout.MEDIA_VERSIONS_PREFIX)])
    assert sandbox.run("media_sync").outcome == "success"
    assert mirror(backups) == new and kept(backups) == {key: [data] for key, data in old.items()}


def test_a_multipart_sized_copy_is_kept_by_parts(sandbox):
    """Above the multipart threshold the keep uses UploadPartCopy, and the kept copy is whole."""
    media, backups = sandbox.media_store(), sandbox.store()
    data = bytes(range(256)) * (MIN_PART_SIZE // 256 + 4096)
    media.put_bytes("big report.pdf", data)
    source = S3ObjectStore(sandbox.config().media)
    ops = FailNthCopy(0)
    dest = ops.factory(sandbox.config().backups)

    def run():
        return sync.sync_bucket(source, dest, multipart_threshold=MIN_PART_SIZE, part_size=MIN_PART_SIZE,
                                keep_versions=True)

    run()
    media.put_bytes("big report.pdf", data[::-1])
    ops.ops.clear()
    report = run()
    assert (report.kept, report.copied) == (1, 1)
    (version,) = list(list_versions(backups))
    assert backups.get_bytes(version.info.key) == data and backups.get_bytes("big report.pdf") == data[::-1]
    assert ("UploadPartCopy", version.info.key) in ops.ops
    assert [op for op in ops.ops if op[1] == version.info.key and op[0] == "CopyObject"] == []


def test_a_kept_version_lives_exactly_as_long_as_a_kept_backup_needs_it(sandbox):
    """Prune keeps a version while a kept backup's restore would take it (or it is young), deletes it after."""
    media, backups = sandbox.media_store(), sandbox.store()
    fill(media, {"w.xlsx": b"v1"})
    assert sandbox.run("media_sync").outcome == "success"
    _fake_backup(backups, "scheduled-01-01-08", datetime.now(UTC))  # saw v1
    media.put_bytes("w.xlsx", b"v2")
    assert sandbox.run("media_sync").outcome == "success"  # keeps v1: scheduled-01-01-08 needs it
    media.put_bytes("w.xlsx", b"v3")
    assert sandbox.run("media_sync").outcome == "success"  # keeps v2: no backup saw it
    later = datetime.now(UTC) + timedelta(seconds=1)
    for n, hour in enumerate((10, 12, 14)):  # saw v3
        _fake_backup(backups, f"scheduled-01-01-{hour}", later + timedelta(seconds=n))

    def prune(days: float, keep_last: str = "3"):
        sandbox.config(FAC_BACKUP_RETENTION_MAX_BACKUP_AGE_HOURS="2000", FAC_BACKUP_RETENTION_KEEP_LAST=keep_last)
        result = sandbox.run("prune_backups", options={"apply": True},
                             clock=lambda: datetime.now(UTC) + timedelta(days=days))
        assert result.outcome == "success", result.error
        return sorted(kept(backups).get("w.xlsx", [])), result.steps[0].figures

    versions, figures = prune(1)
    assert versions == [b"v1", b"v2"] and figures["media_versions_deleted"] == 0  # younger than MIN_DAYS
    versions, figures = prune(20, keep_last="4")
    assert versions == [b"v1"] and figures["deleted"] == 0  # scheduled-01-01-08 is kept and needs v1
    assert (figures["media_versions_deleted"], figures["media_versions_kept"]) == (1, 1)
    versions, figures = prune(20)
    assert versions == [] and figures["deleted"] == 1  # that backup went, and its version after it
    assert mirror(backups) == {"w.xlsx": b"v3"}
    assert restore_media(sandbox, "scheduled-01-01-10")["from_versions"] == 0


def _fake_manifest(backup_id: str, when: datetime | None = None) -> catalog.Manifest:
    stamp = (when or datetime.now(UTC)).isoformat(timespec="seconds")
    return catalog.Manifest(backup_id, "scheduled_backup", stamp, stamp, "15", "15", "fac", (),
                            {"key": layout.schema_key(backup_id), "bytes": 0, "sha256": ""})


def _fake_backup(store, backup_id: str, moment: datetime) -> None:
    """A complete backup whose media moment is `moment` (the prune reads nothing else)."""
    store.put_bytes(layout.schema_key(backup_id), b"")
    catalog.write_manifest(store, _fake_manifest(backup_id, moment))
    write_media_state(store, backup_id, moment, {})


def _wait_for_s3_clock_after(store, moment: datetime, timeout: float = 5.0) -> None:
    """Until a fresh write is stamped later than `moment` (S3's clock counts whole seconds)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        store.put_bytes("backups/clock-probe", b"")
        if store.head("backups/clock-probe").last_modified > moment:
            store.delete_objects(["backups/clock-probe"])
            return
        time.sleep(0.05)
    raise AssertionError("the S3 clock did not move")


class FailNthCopy(Recorder):
    """Stores whose clients record every operation and fail the nth server-side copy (and its
    retries) with a 500."""

    def __init__(self, nth: int) -> None:
        super().__init__()
        self.nth, self.seen, self.failed, self.failing = nth, 0, False, ""

    def _fail(self, request, **_kwargs):
        if request.method != "PUT" or "x-amz-copy-source" not in request.headers:
            return None
        url = request.url.split("?")[0]
        with self.lock:
            if url != self.failing:  # a retry of the failed copy fails again
                self.seen += 1
                if self.seen != self.nth:
                    return None
                self.failing, self.failed = url, True
        return injected_500(request)
