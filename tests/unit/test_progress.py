"""Progress of a long step: counted at the byte pumps, reported once per interval, silent otherwise."""

from __future__ import annotations

import io
import threading
import time

from service.objectstore import UploadResult
from service.progress import Progress, expected_read_bytes, watch_step
from service.storage import MemoryObjectStore
from service.streams import ObjectReader


class EventLog:
    """A logger that keeps step.progress events with the time they were emitted."""

    def __init__(self) -> None:
        self.events: list[tuple[float, str, dict]] = []
        self._lock = threading.Lock()

    def info(self, event: str, **fields) -> None:
        with self._lock:
            self.events.append((time.monotonic(), event, fields))

    def exception(self, event: str, **fields) -> None:
        self.info(event, **fields)

    def progress(self) -> list[tuple[float, dict]]:
        with self._lock:
            return [(t, f) for t, e, f in self.events if e == "step.progress"]


class Gauges:
    """The Metrics calls the reporter makes, remembered (the idle gauge's apart)."""

    def __init__(self) -> None:
        self.values: list[tuple[str, int, int]] = []
        self.idle: list[tuple[str, float]] = []

    def job_progress(self, job: str, done: int, expected: int) -> None:
        self.values.append((job, done, expected))

    def job_idle(self, job: str, seconds: float) -> None:
        self.idle.append((job, seconds))


def slow_copy(progress: Progress, chunks: int, every: float, size: int = 1000) -> None:
    """A byte pump that moves `chunks` chunks, one every `every` seconds."""
    source = io.BytesIO(b"x" * size * chunks)
    stream = progress.counting(source)
    while stream.read(size):
        time.sleep(every)


def test_a_slow_stream_reports_once_per_interval_and_not_more():
    """A 1.6 s pump with a 0.3 s interval: an event every 0.3 s (5), none closer than the interval."""
    progress, log = Progress(), EventLog()
    started = time.monotonic()
    with watch_step(progress, "db_to_s3", interval=0.3, log=log):
        progress.expect(bytes=16_000, items=2, unit="tables")
        slow_copy(progress, chunks=16, every=0.1)
        progress.item_done()
    ended = time.monotonic()
    events = progress_events = log.progress()
    assert 4 <= len(events) <= 6, [round(t - started, 2) for t, _ in events]
    times = [started] + [t for t, _ in progress_events]
    gaps = [b - a for a, b in zip(times, times[1:], strict=False)]
    assert min(gaps) >= 0.29, gaps  # never two within one interval
    assert max(gaps) <= 0.6, gaps  # and never a silent interval while the step runs (timer jitter allowed)
    assert ended - times[-1] < 0.6
    last = events[-1][1]
    assert last["step"] == "db_to_s3"
    assert last["expected_bytes"] == 16_000
    assert 0 < last["bytes"] <= 16_000
    assert last["tables_total"] == 2 and last["tables"] == 0
    assert last["rate_bytes_per_second"] > 0
    assert last["eta_seconds"] is not None and last["percent"] is not None


def test_a_step_shorter_than_the_interval_says_nothing_and_nothing_follows_it():
    """No event for a short step, none after the step ended, and nothing between steps."""
    progress, log = Progress(), EventLog()
    with watch_step(progress, "row_count", interval=0.3, log=log):
        slow_copy(progress, chunks=2, every=0.05)
    time.sleep(0.7)  # two intervals with nothing running: the absence is what is tested
    assert log.progress() == []
    assert progress.snapshot() is None


def test_progress_off_starts_no_reporter_and_counts_nothing():
    """FAC_BACKUP_PROGRESS_SECONDS=0: no event and no counting wrapper."""
    progress, log = Progress(enabled=False), EventLog()
    source = io.BytesIO(b"abc")
    with watch_step(progress, "db_to_s3", interval=0, log=log):
        assert progress.counting(source) is source
        time.sleep(0.1)
    assert log.progress() == []


def test_gauges_follow_the_step_and_return_to_zero_after_it():
    """The reporter keeps the job's gauges current while the step runs and zeroes them after."""
    progress, log, gauges = Progress(), EventLog(), Gauges()
    with watch_step(progress, "s3_restore", interval=0.2, log=log, job="s3_restore", metrics=gauges):
        progress.expect(bytes=5000)
        slow_copy(progress, chunks=5, every=0.1)
    assert any(done > 0 and expected == 5000 for _, done, expected in gauges.values[:-1])
    assert gauges.values[-1] == ("s3_restore", 0, 0)


def test_rate_and_time_left_come_from_the_recent_window():
    """Rate over the last samples; time left = what remains / that rate; percent capped at 100."""
    now = [100.0]
    progress = Progress(clock=lambda: now[0])
    progress.begin("db_to_db")
    progress.expect(bytes=1000, items=4)
    for _ in range(4):
        now[0] += 1.0
        progress.add(100)
        progress.sample()
    figures = progress.snapshot()
    assert figures["rate_bytes_per_second"] == 100
    assert figures["eta_seconds"] == 6
    assert figures["percent"] == 40.0
    progress.add(2000)  # an estimate that was too low: no negative time left, no 300 %
    figures = progress.snapshot()
    assert figures["percent"] == 100.0 and figures["eta_seconds"] is None


def test_uploads_and_downloads_of_a_store_count_into_its_run():
    """upload_stream counts every byte it writes and ObjectReader every byte it reads."""
    store, progress = MemoryObjectStore("b"), Progress()
    progress.begin("step")
    store.progress = progress
    result: UploadResult = store.upload_stream("k", io.BytesIO(b"y" * (6 * 1024 * 1024)), part_size=5 * 1024 * 1024)
    assert progress.bytes == result.size == 6 * 1024 * 1024
    reader = ObjectReader(store, "k").start()
    assert sum(len(c) for c in reader.chunks()) == result.size
    reader.close()
    assert progress.bytes == 2 * result.size


def test_a_restore_expects_what_it_will_download():
    """Verify reads everything once; a load reads each table once and schema.dump four times."""

    class Manifest:
        tables = [type("T", (), {"bytes": 100})(), type("T", (), {"bytes": 50})()]
        schema = {"bytes": 10}
        privileges = {"bytes": 7}  # verified, then read without a stream

    found = type("Found", (), {"manifest": Manifest(), "legacy_tables": ()})()
    assert expected_read_bytes(found, verify=True, load=False) == 167
    assert expected_read_bytes(found, verify=True, load=True) == 167 + 150 + 40


def test_on_a_terminal_a_live_bar_replaces_the_events(capsys):
    """display=True: tqdm draws the step, bytes and tables on stderr; no step.progress event is logged."""
    progress, log = Progress(display=True), EventLog()
    with watch_step(progress, "s3_restore", interval=0.2, log=log):
        progress.expect(bytes=8000, items=3, unit="tables")
        progress.item_done()
        slow_copy(progress, chunks=8, every=0.1)
    drawn = capsys.readouterr().err
    assert "s3_restore" in drawn and "1/3 tables" in drawn and "B/s" in drawn
    assert log.progress() == []
