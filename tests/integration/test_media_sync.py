"""media_sync against the moto server: what is copied, what is never touched, what a rerun costs."""

from __future__ import annotations

import json
import threading

import pytest
from botocore.awsrequest import AWSResponse
from structlog.testing import capture_logs

from service import jobs, layout
from service.errors import SyncError
from service.log import get_logger
from service.storage import MIN_PART_SIZE, S3ObjectStore, build_s3_client
from service.tasks import sync
from service.tasks.sync import SOURCE_ETAG

pytestmark = pytest.mark.integration

WRITES = {"PutObject", "CopyObject", "CreateMultipartUpload", "UploadPart", "UploadPartCopy",
          "CompleteMultipartUpload", "DeleteObject", "DeleteObjects"}
ODD = {
    "a report with spaces.pdf": b"spaces",
    "résumé/naïve café/Ünïcödé 报告.xlsx": b"unicode",
    "2024/" * 10 + "deep.pdf": b"deep",
    "backups0/looks-like-a-dump-but-is-media.pdf": b"media",
}
DUMP = "backups/scheduled-06-04-10/public-t.dump"


class Recorder:
    """Builds the job's stores with clients that log every S3 operation and can fail one key."""

    def __init__(self, fail_key: str | None = None) -> None:
        self.ops: list[tuple[str, str]] = []
        self.fail_key = fail_key
        self.lock = threading.Lock()

    def factory(self, binding) -> S3ObjectStore:
        client = build_s3_client(binding, max_attempts=1)  # no retries: the fault is meant to stick
        client.meta.events.register("before-parameter-build.s3", self._record)
        client.meta.events.register("before-send.s3", self._fail)
        return S3ObjectStore(binding, client=client)

    def _record(self, model, params, **_kwargs) -> None:
        if params.get("Key", "").startswith(layout.JOURNAL_PREFIX):
            return  # the run's journal record (service.journal), not an operation of the sync
        with self.lock:
            self.ops.append((model.name, params.get("Key", "")))

    def _fail(self, request, **_kwargs):
        if self.fail_key and request.method == "PUT" and request.url.split("?")[0].endswith("/" + self.fail_key):
            return injected_500(request)
        return None

    def writes(self) -> list[tuple[str, str]]:
        return [op for op in self.ops if op[0] in WRITES]


def injected_500(request) -> AWSResponse:
    """The S3 server's answer to a request that failed on its side (botocore's `before-send` hook)."""
    return AWSResponse(request.url, 500, {}, _Body(b"<Error><Code>InternalError</Code>"
                                                   b"<Message>injected</Message></Error>"))


class _Body:
    def __init__(self, data: bytes) -> None:
        self.data = data

    def stream(self, **_kwargs):
        yield self.data


def fill(store, objects: dict[str, bytes]) -> None:
    for key, data in objects.items():
        store.put_bytes(key, data, content_type="application/pdf")


def contents(store) -> dict[str, bytes]:
    """Every object but the runs' journal records."""
    return {o.key: store.get_bytes(o.key) for o in store.list_objects()
            if not o.key.startswith(layout.JOURNAL_PREFIX)}


def test_media_is_copied_key_for_key_and_backups_prefix_is_never_touched(sandbox):
    """Odd keys round-trip exactly into the backups root; dumps stay; the media's own backups/ is not read."""
    media, backups = sandbox.media_store(), sandbox.store()
    fill(media, ODD)
    media.put_bytes("backups/not-ours.dump", b"never copied")
    backups.put_bytes(DUMP, b"the dump")
    with capture_logs() as events:
        result = sandbox.run("media_sync")
    assert result.outcome == "success", result.error
    assert contents(backups) == {**ODD, DUMP: b"the dump"}
    assert backups.head("a report with spaces.pdf").content_type == "application/pdf"
    figures = result.steps[0].figures
    assert (figures["copied"], figures["copied_bytes"], figures["failed"]) == (4, sum(map(len, ODD.values())), 0)
    names = [e["event"] for e in events]
    assert "media_sync.started" in names and "media_sync.finished" in names


def test_same_size_change_is_copied_and_an_unchanged_rerun_only_lists(sandbox):
    """A change that keeps the size is copied; a rerun with nothing changed issues no write at all."""
    media, backups = sandbox.media_store(), sandbox.store()
    fill(media, {"a.pdf": b"version-1", "b.pdf": b"unchanged"})
    assert sandbox.run("media_sync").outcome == "success"
    media.put_bytes("a.pdf", b"version-2")
    recorder = Recorder()
    result = sandbox.run("media_sync", store_factory=recorder.factory)
    assert backups.get_bytes("a.pdf") == b"version-2"
    (keep, kept_key), replace = recorder.writes()  # the old copy is kept first, then replaced
    assert keep == "CopyObject" and kept_key.startswith("backups/media-versions/a.pdf/")
    assert replace == ("CopyObject", "a.pdf") and backups.get_bytes(kept_key) == b"version-1"
    assert (result.steps[0].figures["copied"], result.steps[0].figures["skipped"]) == (1, 1)
    recorder = Recorder()
    result = sandbox.run("media_sync", store_factory=recorder.factory)
    assert result.outcome == "success" and result.steps[0].figures["copied"] == 0
    assert {op for op, _ in recorder.ops} == {"ListObjectsV2"}


def test_a_source_deletion_is_not_propagated(sandbox):
    """An object deleted from the media bucket stays in the backups bucket."""
    media, backups = sandbox.media_store(), sandbox.store()
    fill(media, {"gone.pdf": b"keep me", "stays.pdf": b"x"})
    sandbox.run("media_sync")
    media.delete_objects(["gone.pdf"])
    result = sandbox.run("media_sync")
    assert result.outcome == "success"
    assert contents(backups) == {"gone.pdf": b"keep me", "stays.pdf": b"x"}


def test_media_restore_copies_back_without_touching_either_backups_prefix(sandbox):
    """backups -> fac-private-s3 restores media only: no dump goes into the media bucket, none is changed."""
    media, backups = sandbox.media_store(), sandbox.store()
    fill(backups, {"lost.pdf": b"restore me", "kept.pdf": b"same"})
    backups.put_bytes(DUMP, b"the dump")
    media.put_bytes("kept.pdf", b"same")
    media.put_bytes("backups/app-owned.txt", b"the app's")
    ctx = jobs.JobContext(sandbox.config(), jobs.JOBS["media_sync"], "test", log=get_logger())
    figures = jobs.STEPS["media_restore"](ctx)
    assert contents(media) == {"lost.pdf": b"restore me", "kept.pdf": b"same", "backups/app-owned.txt": b"the app's"}
    assert contents(backups)[DUMP] == b"the dump"
    assert (figures["copied"], figures["skipped"]) == (1, 1)


def test_an_object_over_the_multipart_threshold_is_copied_by_parts_and_then_skipped(sandbox):
    """A multipart copy (its ETag differs from the source's) is recognised as equal by the recorded ETag."""
    media, backups = sandbox.media_store(), sandbox.store()
    data = bytes(range(256)) * (MIN_PART_SIZE // 256 + 4096)
    media.put_bytes("big report.pdf", data, metadata={"uploader": "app"})
    source = S3ObjectStore(sandbox.config().media)

    def run():
        return sync.sync_bucket(source, backups, multipart_threshold=MIN_PART_SIZE, part_size=MIN_PART_SIZE)

    assert run().copied == 1
    copied = backups.head("big report.pdf")
    assert backups.get_bytes("big report.pdf") == data
    assert copied.etag.endswith("-2") and copied.etag != media.head("big report.pdf").etag
    assert dict(copied.metadata) == {"uploader": "app", SOURCE_ETAG: media.head("big report.pdf").etag}
    again = run()
    assert (again.copied, again.checked, again.skipped) == (0, 1, 1)
    media.put_bytes("big report.pdf", data[::-1])
    assert run().copied == 1 and backups.get_bytes("big report.pdf") == data[::-1]


def test_without_shared_credentials_objects_are_streamed_and_reruns_skip_them(sandbox, tmp_path):
    """Bindings that cannot reach each other's bucket stream each object, multipart ones included."""
    sandbox.config()  # writes vcap.json
    vcap = json.loads((sandbox.tmp / "vcap.json").read_text())
    for binding in vcap["s3"]:
        binding["credentials"]["additional_buckets"] = []
    separate = tmp_path / "separate.json"
    separate.write_text(json.dumps(vcap))
    big = b"s" * (MIN_PART_SIZE + 1000)
    media, backups = sandbox.media_store(), sandbox.store()
    fill(media, {"big.pdf": big, "small é.pdf": b"small"})
    config = sandbox.config(FAC_BACKUP_VCAP_FILE=str(separate), FAC_BACKUP_MIN_PART_MIB="5")
    recorder = Recorder()
    result = jobs.run_job(config, "media_sync", store_factory=recorder.factory)
    assert result.outcome == "success", result.error
    assert result.steps[0].figures["mode"] == "streamed"
    assert contents(backups) == {"big.pdf": big, "small é.pdf": b"small"}
    assert not any(op in ("CopyObject", "UploadPartCopy") for op, _ in recorder.ops)
    assert backups.head("big.pdf").etag.endswith("-2")
    recorder = Recorder()
    again = jobs.run_job(config, "media_sync", store_factory=recorder.factory)
    assert again.steps[0].figures["copied"] == 0 and recorder.writes() == []
    assert sandbox.s3.client().list_multipart_uploads(Bucket=sandbox.backups).get("Uploads", []) == []


def test_an_s3_failure_on_one_object_fails_the_step_naming_it_after_copying_the_rest(sandbox):
    """An HTTP 500 on one key fails media_sync with a SyncError naming that key; the others are in place."""
    media, backups = sandbox.media_store(), sandbox.store()
    fill(media, {"a.pdf": b"a", "broken.pdf": b"b", "c.pdf": b"c", "d/e.pdf": b"e"})
    result = sandbox.run("media_sync", store_factory=Recorder(fail_key="broken.pdf").factory)
    assert result.outcome == "failure"
    assert isinstance(result.error, SyncError)
    assert "broken.pdf" in result.error.message and "broken.pdf" in result.error.detail
    assert contents(backups) == {"a.pdf": b"a", "c.pdf": b"c", "d/e.pdf": b"e"}
    assert (result.steps[-1].figures["failed"], result.steps[-1].figures["copied"]) == (1, 3)
    assert sandbox.run("media_sync").outcome == "success"
    assert backups.get_bytes("broken.pdf") == b"b"
