"""Progress of a run's current step: bytes and tables/objects done against what is expected.

One `Progress` per run lives on the JobContext. Bytes are counted where they
move, a chunk at a time: the upload of a stream into S3 (`ObjectStore.upload_stream`),
the download of an object (`streams.ObjectReader`), the binary COPY pump of a
snapshot copy (`counting`), server-side media copies (the sync's report).
Stores learn the tracker from the JobContext that made them (`store.progress`).
Steps say what they expect (`expect`) where they know it: the manifest for a
restore or a drill, the previous backup's sizes (or the catalog's estimate)
for a backup, the catalog's table sizes for a snapshot copy.

`watch_step` runs one reporter thread per step. Every FAC_BACKUP_PROGRESS_SECONDS
it logs one `step.progress` event (or, on a terminal, redraws a live tqdm bar
instead), and it keeps the daemon's progress gauges current. A step that ends
sooner says nothing; nothing runs between steps. Counting costs a lock and two
additions per chunk of a MiB or more.
"""

from __future__ import annotations

import contextlib
import contextvars
import sys
import threading
import time
from collections import deque
from collections.abc import Callable, Iterator

SAMPLE_SECONDS = 1.0  # how often the gauges, the live display and the rate are refreshed
RATE_WINDOW_SECONDS = 30.0  # the "current rate" is measured over this much recent time


class Progress:
    """What the running step has done so far and expects to do; safe from any thread."""

    def __init__(self, *, enabled: bool = True, display: bool = False,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.enabled = enabled
        self.display = display  # a live bar on the terminal instead of step.progress events
        self._clock = clock
        self._lock = threading.Lock()
        self._reset(None)

    def _reset(self, step: str | None) -> None:
        self.step = step
        self.started = self._clock()
        self.bytes = 0
        self.expected_bytes: int | None = None
        self.items = 0
        self.items_total: int | None = None
        self.unit = "tables"
        self._samples: deque[tuple[float, int]] = deque([(self.started, 0)])

    def begin(self, step: str) -> None:
        """A step starts: every count starts again from zero."""
        with self._lock:
            self._reset(step)

    def end(self) -> None:
        with self._lock:
            self._reset(None)

    def expect(self, *, bytes: int | None = None, items: int | None = None, unit: str | None = None) -> None:
        """Add work the step now knows it has to do (called once per phase of a step)."""
        with self._lock:
            if bytes is not None:
                self.expected_bytes = (self.expected_bytes or 0) + max(int(bytes), 0)
            if items is not None:
                self.items_total = (self.items_total or 0) + max(int(items), 0)
            if unit:
                self.unit = unit

    def add(self, nbytes: int) -> None:
        """`nbytes` more moved (called from the byte pumps, on any thread)."""
        with self._lock:
            self.bytes += nbytes

    def item_done(self, count: int = 1) -> None:
        """A table or object is finished."""
        with self._lock:
            self.items += count

    def counting(self, stream):
        """`stream` (a binary reader) with every byte read from it counted here."""
        return _CountingReader(stream, self) if self.enabled else stream

    def sample(self) -> None:
        """Record (now, bytes) for the current rate; called by the reporter thread."""
        with self._lock:
            now = self._clock()
            self._samples.append((now, self.bytes))
            while len(self._samples) > 2 and now - self._samples[1][0] >= RATE_WINDOW_SECONDS:
                self._samples.popleft()

    def snapshot(self) -> dict | None:
        """The step's figures as one dict (None between steps): what events, gauges and ctl show."""
        with self._lock:
            if self.step is None:
                return None
            now = self._clock()
            first_t, first_b = self._samples[0]
            last_t, last_b = self._samples[-1]
            if last_t - first_t < 0.5:  # too early for a rate over the window: use the whole step
                first_t, first_b, last_t, last_b = self.started, 0, now, self.bytes
            rate = (last_b - first_b) / (last_t - first_t) if last_t > first_t else 0.0
            figures = {"step": self.step, "bytes": self.bytes, "expected_bytes": self.expected_bytes,
                       "percent": None, self.unit: self.items, f"{self.unit}_total": self.items_total,
                       "rate_bytes_per_second": round(rate), "eta_seconds": None,
                       "elapsed_seconds": round(now - self.started, 1)}
            if self.expected_bytes:
                figures["percent"] = round(min(100.0, 100.0 * self.bytes / self.expected_bytes), 1)
                if rate > 0 and self.bytes < self.expected_bytes:
                    figures["eta_seconds"] = round((self.expected_bytes - self.bytes) / rate)
            return figures


class _CountingReader:
    """A read-through wrapper that counts bytes into a Progress."""

    def __init__(self, stream, progress: Progress) -> None:
        self._stream = stream
        self._progress = progress

    def read(self, size: int = -1) -> bytes:
        data = self._stream.read(size)
        self._progress.add(len(data))
        return data

    def read1(self, size: int = -1) -> bytes:
        data = self._stream.read1(size)
        self._progress.add(len(data))
        return data

    def __getattr__(self, name):
        return getattr(self._stream, name)


def estimate_backup_bytes(store, tables) -> int:
    """What a new backup of `tables` will write: schema.dump and each table's dump as in the
    newest complete backup, else the catalog's size estimate (heap and TOAST; a compressed
    dump is smaller).

    Only an estimate for the progress display: any failure falls back to the catalog.
    """
    from service import catalog  # catalog builds on the storage that imports us

    previous: dict[tuple[str, str], int] = {}
    schema = 0
    try:
        manifest = next(catalog.newest_manifests(store), None)
        if manifest is not None:
            previous = {(t.schema, t.table): t.bytes for t in manifest.tables}
            schema = int(manifest.schema.get("bytes", 0))
    except Exception:  # noqa: BLE001 - an estimate must never fail a backup
        previous, schema = {}, 0
    return schema + sum(previous.get((t.schema, t.name), t.total_bytes) for t in tables)


def expected_read_bytes(found, *, verify: bool, load: bool) -> int:
    """Bytes a restore or a drill downloads from a found backup (service.finder).

    Verifying reads every object once (privileges.json too). Loading reads each table once and
    schema.dump four times (its table of contents, definitions, sequence values,
    indexes and constraints); a legacy table once (its definition comes from the
    head of the dump, a few KiB).
    """
    if found.manifest is None:
        tables, schema, verify_reads, load_reads = sum(t.bytes for t in found.legacy_tables), 0, 1, 1
    else:
        tables, schema = sum(t.bytes for t in found.manifest.tables), int(found.manifest.schema.get("bytes", 0))
        verify_reads, load_reads = 1, 1
    grants = int(found.manifest.privileges.get("bytes", 0)) if found.manifest is not None else 0
    total = (tables + schema + grants) * verify_reads if verify else 0
    return total + (tables * load_reads + 4 * schema if load else 0)


@contextlib.contextmanager
def watch_step(progress: Progress, step: str, *, interval: float, log, job: str = "",
               metrics=None) -> Iterator[None]:
    """Report `step`'s progress while the block runs (see the module docstring).

    `interval` <= 0 turns reporting off. The reporter stops before this returns,
    so no event follows the step's own `step.finished`.
    """
    progress.begin(step)
    if interval <= 0 or not progress.enabled:
        try:
            yield
        finally:
            progress.end()
        return
    stop = threading.Event()
    # In a copy of this thread's context: the events carry the run's bound job and run_id.
    reporter = threading.Thread(target=contextvars.copy_context().run,
                                args=(_report, progress, interval, log, job, metrics, stop),
                                name=f"progress-{step}", daemon=True)
    reporter.start()
    try:
        yield
    finally:
        stop.set()
        reporter.join(timeout=5)
        progress.end()
        if metrics is not None and job:
            metrics.job_progress(job, 0, 0)


def _report(progress: Progress, interval: float, log, job: str, metrics, stop: threading.Event) -> None:
    """The reporter thread: sample often, emit one event per interval, never raise."""
    tick = min(SAMPLE_SECONDS, interval)
    start = time.monotonic()
    next_sample, next_event = start + tick, start + interval
    bar = None
    try:
        while not stop.wait(max(0.0, min(next_sample, next_event) - time.monotonic())):
            now = time.monotonic()
            progress.sample()
            figures = progress.snapshot()
            if figures is None:
                continue
            if metrics is not None and job:
                metrics.job_progress(job, figures["bytes"], figures["expected_bytes"] or 0)
            if progress.display:
                bar = _draw(bar, figures, progress.unit)
            elif now >= next_event:
                log.info("step.progress", **figures)
            while next_sample <= now:
                next_sample += tick
            if next_event <= now:
                next_event = now + interval  # from this event: never two within one interval
    except Exception:  # noqa: BLE001 - reporting must never break the step it reports on
        log.exception("step.progress_failed")
    finally:
        if bar is not None:
            bar.close()


def _draw(bar, figures: dict, unit: str):
    """The live terminal display: one tqdm bar per step, bytes with rate and time left."""
    from tqdm import tqdm  # only on a terminal

    if bar is None:
        bar = tqdm(total=figures["expected_bytes"], desc=figures["step"], unit="B", unit_scale=True,
                   unit_divisor=1024, file=sys.stderr, leave=False, dynamic_ncols=True)
    if figures["expected_bytes"] and bar.total != figures["expected_bytes"]:
        bar.total = figures["expected_bytes"]
    bar.n = figures["bytes"]
    total = figures.get(f"{unit}_total")
    bar.set_postfix_str(f"{figures[unit]}/{total if total is not None else '?'} {unit}", refresh=False)
    bar.refresh()
    return bar
