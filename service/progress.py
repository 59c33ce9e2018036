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

The same thread runs the stall watchdog (service.watchdog) when one is given.
What counts as motion: a byte counted, a table or object finished, a request
answered (a listing page, a HEAD); and a probe that reports the server
busy on the step's behalf (an index build moves no byte). An `activity` (a
transfer or a request in flight) with an `allowance` lets the step stay quiet
that much longer while it runs (a server-side copy of 5 GB may answer late).
`idle_seconds` is the time since the last motion, less that allowance;
`in_flight` names what is under way, the longest-quiet first, and `probes`
what the servers said, for the watchdog's message.
"""

from __future__ import annotations

import contextlib
import contextvars
import itertools
import sys
import threading
import time
from collections import deque
from collections.abc import Callable, Iterator

SAMPLE_SECONDS = 1.0  # how often the gauges, the live display and the rate are refreshed
RATE_WINDOW_SECONDS = 30.0  # the "current rate" is measured over this much recent time


class Activity:
    """One transfer or request in flight, registered by `Progress.activity`."""

    __slots__ = ("_progress", "allowance", "last_moved", "number", "started", "what")
    _numbers = itertools.count()

    def __init__(self, progress: Progress | None, what: str, allowance: float, now: float) -> None:
        self._progress, self.what, self.allowance = progress, what, allowance
        self.started = self.last_moved = now
        self.number = next(Activity._numbers)  # later ones are inside earlier ones (a request in a download)

    def moved(self, nbytes: int = 0) -> None:
        """`nbytes` more of this transfer arrived (0: it moved without bytes, e.g. a page listed)."""
        if self._progress is not None:
            self._progress._moved(nbytes, self)


class Progress:
    """What the running step has done so far and expects to do; safe from any thread."""

    def __init__(self, *, enabled: bool = True, display: bool = False,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.enabled = enabled
        self.display = display  # a live bar on the terminal instead of step.progress events
        self.stall_limit = 0.0  # > 0 while a stall watchdog watches the step (probes start only then)
        self._clock = clock
        self._lock = threading.Lock()
        self._activities: dict[int, Activity] = {}
        self._probes: dict[int, object] = {}
        self._reset(None)

    def _reset(self, step: str | None) -> None:
        self.step = step
        self.started = self._clock()
        self.bytes = 0
        self.expected_bytes: int | None = None
        self.items = 0
        self.items_total: int | None = None
        self.unit = "tables"
        self.doing = ""  # the step's current stage, in its own words, for a stall's message
        self.last_moved = self.started
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
            self.last_moved = self._clock()

    def item_done(self, count: int = 1) -> None:
        """A table or object is finished."""
        with self._lock:
            self.items += count
            self.last_moved = self._clock()

    def set_doing(self, what: str) -> None:
        """Name the step's current stage ("building indexes in fac-db")."""
        self.doing = what

    def _moved(self, nbytes: int, activity: Activity) -> None:
        with self._lock:
            self.bytes += nbytes
            self.last_moved = activity.last_moved = self._clock()

    @contextlib.contextmanager
    def activity(self, what: str, *, allowance: float = 0.0) -> Iterator[Activity]:
        """Register a transfer or request in flight for the block (see the module docstring).

        `allowance` (seconds): while the activity is in flight the step may stay quiet that
        much longer, for a request that honestly answers late (a large server-side copy). It
        extends the wait from the last motion, never from the request's start: requests that
        keep starting and failing are no motion, however many there are.
        """
        with self._lock:
            activity = Activity(self if self.enabled else None, what, allowance, self._clock())
            self._activities[id(activity)] = activity
        try:
            yield activity
        finally:
            with self._lock:
                self._activities.pop(id(activity), None)

    def add_probe(self, probe) -> int:
        """A probe (`busy_at`: the last time it saw the server working for the step; `describe()`)
        counts as motion while registered. Returns the token for `remove_probe`."""
        with self._lock:
            self._probes[id(probe)] = probe
            return id(probe)

    def remove_probe(self, token: int) -> None:
        with self._lock:
            probe = self._probes.pop(token, None)
            if probe is not None:  # the work it saw stays seen
                self.last_moved = max(self.last_moved, probe.busy_at)

    def idle_seconds(self) -> float:
        """Seconds since the step last moved (see the module docstring); 0 between steps."""
        with self._lock:
            if self.step is None:
                return 0.0
            now = self._clock()
            last = self.last_moved
            for probe in self._probes.values():
                last = max(last, probe.busy_at)
            allowed = max((a.allowance for a in self._activities.values()), default=0.0)
            return max(0.0, now - last - allowed)

    def in_flight(self) -> list[tuple[float, str]]:
        """(seconds quiet, description) of every activity, the longest-quiet first."""
        with self._lock:
            now = self._clock()
            found = [(now - a.last_moved, -a.number, a.what) for a in self._activities.values()]
        # Equally quiet, the innermost (the request, not the session it feeds) is named first.
        return [(quiet, what) for quiet, _, what in sorted(found, key=lambda f: (-round(f[0], 1), f[1]))]

    def probes(self) -> list:
        """The probes watching the step's servers (see `add_probe`)."""
        with self._lock:
            return list(self._probes.values())

    def counting(self, stream, activity: Activity | None = None):
        """`stream` (a binary reader) with every byte read from it counted here (as `activity`'s)."""
        return _CountingReader(stream, activity or self) if self.enabled else stream

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
    """A read-through wrapper that counts bytes into a Progress (or one of its activities)."""

    def __init__(self, stream, counter) -> None:
        self._stream = stream
        self._count = counter.moved if isinstance(counter, Activity) else counter.add

    def read(self, size: int = -1) -> bytes:
        data = self._stream.read(size)
        self._count(len(data))
        return data

    def read1(self, size: int = -1) -> bytes:
        data = self._stream.read1(size)
        self._count(len(data))
        return data

    def __getattr__(self, name):
        return getattr(self._stream, name)


def activity_of(progress: Progress | None, what: str, *, allowance: float = 0.0):
    """`progress.activity(what)`, or a block that records nothing when no run tracks the caller
    (a store or stream used outside a job: show, list, the tests)."""
    return progress.activity(what, allowance=allowance) if progress is not None else contextlib.nullcontext()


def estimate_backup_bytes(previous, tables) -> int:
    """What a new backup of `tables` will write: schema.dump and each table's dump as in the
    `previous` complete backup's manifest (the integrity watch's baseline), else the catalog's
    size estimate (heap and TOAST; a compressed dump is smaller). Only for the progress display."""
    sizes: dict[tuple[str, str], int] = {}
    schema = 0
    if previous is not None:
        sizes = {(t.schema, t.table): t.bytes for t in previous.tables}
        schema = int(previous.schema.get("bytes", 0) or 0)
    return schema + sum(sizes.get((t.schema, t.name), t.total_bytes) for t in tables)


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
               metrics=None, watchdog=None) -> Iterator[None]:
    """Report `step`'s progress while the block runs (see the module docstring).

    `interval` <= 0 turns reporting off. `watchdog` (service.watchdog.StallWatch) is
    asked once per sample whether the step has stalled. The reporter stops before
    this returns, so no event follows the step's own `step.finished`.
    """
    progress.begin(step)
    if (interval <= 0 and watchdog is None) or not progress.enabled:
        try:
            yield
        finally:
            progress.end()
        return
    stop = threading.Event()
    progress.stall_limit = watchdog.limit if watchdog is not None else 0.0
    # In a copy of this thread's context: the events carry the run's bound job and run_id.
    reporter = threading.Thread(target=contextvars.copy_context().run,
                                args=(_report, progress, interval, log, job, metrics, stop, watchdog),
                                name=f"progress-{step}", daemon=True)
    reporter.start()
    try:
        yield
    finally:
        stop.set()
        reporter.join(timeout=5)
        progress.stall_limit = 0.0
        progress.end()
        if metrics is not None and job:
            metrics.job_progress(job, 0, 0)
            metrics.job_idle(job, 0)


def _report(progress: Progress, interval: float, log, job: str, metrics, stop: threading.Event,
            watchdog=None) -> None:
    """The reporter thread: sample often, emit one event per interval, ask the watchdog; never raise."""
    tick = min(SAMPLE_SECONDS, interval if interval > 0 else SAMPLE_SECONDS,
               watchdog.tick if watchdog is not None else SAMPLE_SECONDS)
    start = time.monotonic()
    next_sample = start + tick
    next_event = start + interval if interval > 0 else float("inf")
    bar = None
    failed = False
    while not stop.wait(max(0.0, min(next_sample, next_event) - time.monotonic())):
        now = time.monotonic()
        try:
            progress.sample()
            figures = progress.snapshot()
            if figures is None:
                continue
            if metrics is not None and job:
                metrics.job_progress(job, figures["bytes"], figures["expected_bytes"] or 0)
                metrics.job_idle(job, progress.idle_seconds())
            if watchdog is not None:
                watchdog.check()
            if interval > 0 and progress.display:
                bar = _draw(bar, figures, progress.unit)
            elif now >= next_event:
                log.info("step.progress", **figures)
        except Exception:  # noqa: BLE001 - reporting must never break the step it reports on
            if not failed:
                log.exception("step.progress_failed")
            failed = True
        while next_sample <= now:
            next_sample += tick
        if next_event <= now:
            next_event = now + interval  # from this event: never two within one interval
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
