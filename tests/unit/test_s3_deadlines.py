"""Deadlines of S3 requests and the interrupt (service.s3_deadlines through service.storage),
against an endpoint that accepts connections and never answers (no S3 server needed)."""

from __future__ import annotations

import socket
import threading
import time

import pytest

from service import s3_deadlines
from service.errors import JobAbortedError, ServiceError, StorageError
from service.storage import S3ObjectStore, build_s3_client
from service.vcap import BucketBinding
from tests.fakes import s3_internal_error


@pytest.fixture
def silent_endpoint():
    """A TCP endpoint that accepts every connection and never sends a byte."""
    server = socket.create_server(("127.0.0.1", 0))
    held: list[socket.socket] = []

    def accept() -> None:
        while True:
            try:
                held.append(server.accept()[0])
            except OSError:
                return

    threading.Thread(target=accept, daemon=True).start()
    yield f"http://127.0.0.1:{server.getsockname()[1]}"
    server.close()
    for conn in held:
        conn.close()


def binding(endpoint: str) -> BucketBinding:
    return BucketBinding("backups", "b", "us-gov-west-1", endpoint, "key-id", "secret")


def in_thread(fn):
    """Run fn on a thread; returns (thread, outcome) where outcome fills with the raised error."""
    outcome: list = []

    def run() -> None:
        try:
            outcome.append(fn())
        except BaseException as exc:  # noqa: BLE001 - inspected by the test
            outcome.append(exc)

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    return thread, outcome


def test_a_silent_endpoint_fails_a_call_in_under_two_minutes():
    """Three attempts of 30 s reads (plus a few seconds of backoff) bound a call that gets no answer;
    the old five retries of 120 s took twelve minutes."""
    config = S3ObjectStore(binding("http://127.0.0.1:9")).client.meta.config
    attempts = config.retries["total_max_attempts"]
    assert (config.connect_timeout, config.read_timeout, attempts) == (10, 30, 3)
    assert attempts * config.read_timeout + 2 ** attempts < 120


def test_the_connection_tracking_is_installed():
    """The interrupt reaches in-flight requests only while botocore's pools can be hooked: a release
    that moves them must fail here, not silently in production."""
    assert S3ObjectStore(binding("http://127.0.0.1:9"))._guard.installed


def test_interrupt_wakes_a_request_waiting_on_a_silent_endpoint_and_refuses_the_next(silent_endpoint):
    """A HEAD blocked on the silent endpoint ends within a second of `interrupt` as JobAbortedError
    (not after its read timeouts); any later request is refused without being sent."""
    store = S3ObjectStore(binding(silent_endpoint))
    thread, outcome = in_thread(lambda: store.head("backups/x/manifest.json"))
    time.sleep(0.5)
    assert thread.is_alive(), "precondition: the request waits for an answer"
    interrupted = time.monotonic()
    store.interrupt("received SIGTERM")
    thread.join(5)
    assert not thread.is_alive() and time.monotonic() - interrupted < 1.5
    assert isinstance(outcome[0], JobAbortedError) and "received SIGTERM" in outcome[0].detail
    started = time.monotonic()
    with pytest.raises(JobAbortedError):
        list(store.list_objects("backups/"))
    assert time.monotonic() - started < 0.5


def test_after_an_interrupt_clean_up_may_run_for_the_grace_and_no_longer(silent_endpoint, monkeypatch):
    """An abort sent after the interrupt may wait for S3 only until the grace ends; after it, even
    clean-up is refused at once."""
    monkeypatch.setattr(s3_deadlines, "CLEANUP_GRACE_SECONDS", 1.0)
    store = S3ObjectStore(binding(silent_endpoint))
    store.interrupt("the step stalled")
    started = time.monotonic()
    with pytest.raises(ServiceError):  # its read timed out, or the grace ended it
        store._call("ABORT UPLOAD", "k", store.client.abort_multipart_upload, Key="k", UploadId="u")
    assert 0.5 < time.monotonic() - started < 3
    started = time.monotonic()
    with pytest.raises(JobAbortedError):
        store.delete_objects(["k"])
    assert time.monotonic() - started < 0.5


class Recorder:
    """A before-send hook that records each request's read timeout and answers HTTP 500 itself."""

    def __init__(self, client) -> None:
        self.seen: list[tuple[str, float | None]] = []
        client.meta.events.register("before-send.s3", self)

    def __call__(self, request, event_name, **_):
        self.seen.append((event_name.rsplit(".", 1)[-1], request.context.get("read_timeout")))
        return s3_internal_error(request.url)


def test_each_request_waits_as_long_as_its_work_honestly_takes():
    """Ordinary requests keep the client's 30 s; clean-up waits 10 s; a server-side copy gets time in
    proportion to its size (a 5 GB CopyObject 200 s more), a completion per part."""
    client = build_s3_client(binding("http://127.0.0.1:9"), max_attempts=1)
    store = S3ObjectStore(binding("http://127.0.0.1:9"), client=client)
    recorder = Recorder(client)
    calls = [lambda: store.head("k"), lambda: store.delete_objects(["k"]),
             lambda: store.copy_from(store, "k", size=5 * 10 ** 9, multipart_threshold=6 * 10 ** 9),
             lambda: store._complete_upload("k", "u", [{"PartNumber": n, "ETag": "e"} for n in range(1, 1001)]),
             lambda: client.upload_part_copy(Bucket="b", Key="k", UploadId="u", PartNumber=1,
                                             CopySource={"Bucket": "b", "Key": "s"},
                                             CopySourceRange=f"bytes=0-{500 * 10 ** 6 - 1}")]
    for call in calls:
        with pytest.raises(Exception):  # noqa: B017 - every answer is the recorder's HTTP 500
            call()
    assert recorder.seen == [("HeadObject", None), ("DeleteObjects", 10), ("CopyObject", 230.0),
                             ("CompleteMultipartUpload", 80.0), ("UploadPartCopy", 50.0)]


def test_a_clean_up_request_gives_up_after_two_attempts():
    """An abort that keeps failing is tried twice, not three times: clean-up must not wait like work."""
    store = S3ObjectStore(binding("http://127.0.0.1:9"))
    recorder = Recorder(store.client)
    with pytest.raises(StorageError, match="ABORT UPLOAD") as raised:
        store._call("ABORT UPLOAD", "k", store.client.abort_multipart_upload, Key="k", UploadId="u")
    assert [op for op, _ in recorder.seen] == ["AbortMultipartUpload"] * 2
    assert "2 attempts" in raised.value.detail


def test_botocore_honours_each_requests_own_read_timeout(silent_endpoint, monkeypatch):
    """A clean-up's shorter read timeout is set per request (botocore's request context); this proves
    the installed botocore obeys it against a silent endpoint, not only that the value was written:
    two attempts of 1 s end in about 2 s, where the client's own 30 s reads would take a minute."""
    monkeypatch.setattr(s3_deadlines, "CLEANUP_READ_SECONDS", 1)
    store = S3ObjectStore(binding(silent_endpoint))
    started = time.monotonic()
    with pytest.raises(StorageError, match="ABORT UPLOAD"):
        store._call("ABORT UPLOAD", "k", store.client.abort_multipart_upload, Key="k", UploadId="u")
    assert time.monotonic() - started < 8


def test_an_allowance_inside_another_gives_the_outer_one_back():
    """A multipart copy's allowance covers its requests; a HEAD made inside it with none of its own
    gets the ordinary timeout, and the copy's requests after it get the copy's allowance again."""
    store = S3ObjectStore(binding("http://127.0.0.1:9"))
    guard = store._guard
    with guard.allowance(40.0):
        assert guard._local.allowance == 40.0
        with guard.allowance(0.0):
            assert guard._local.allowance == 0.0
        assert guard._local.allowance == 40.0
    assert guard._local.allowance == 0.0
