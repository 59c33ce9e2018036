"""The stall watchdog: a long step that moves nothing for FAC_BACKUP_STALL_SECONDS is stopped.

Networks fail by going silent: a peer that accepts and then never answers
leaves every read waiting for its own timeout, and a step made of many reads
(or one that waits on a server) can hang for far longer than any one of them.
`StallWatch` runs on the step's reporter thread (service.progress.watch_step)
and asks the step's Progress how long it has been since anything moved. Past
the limit it logs `step.stalled`, counts it, and calls `on_stall` with a
StallError naming what stalled: the transfer or request quiet the longest, its
endpoint, and for how long. jobs.run_job passes the run's `CancelScope.fail`,
so a stall is cancelled exactly as SIGTERM cancels a run (programs killed,
connections cut, S3 requests interrupted, uploads aborted, transactions rolled
back) and the run ends as a failure carrying that error.

Phases that honestly move no byte get a measure of their own: a
`SessionProbe` asks PostgreSQL, on a connection of its own, whether the step's
sessions (found by application_name) are running a statement that is not
waiting on us: building an index, validating a foreign key, refreshing a
materialized view, counting rows or waiting for a lock (bounded by the step's
own lock timeout). While one is, the step is moving. A probe that gets no
answer (the database went silent too) stops counting, so a stall of the
database path is caught the same way.
"""

from __future__ import annotations

import contextlib
import threading
import time
from collections.abc import Callable, Iterator

from service.errors import StallError

STALL_VARIABLE = "FAC_BACKUP_STALL_SECONDS"
NAMED_IN_FLIGHT = 5  # what a stall's detail lists, the longest-quiet first
PROBE_APPLICATION = "fac-backup-watchdog"
PROBE_TIMEOUT_SECONDS = 5

# A session works for the step while it runs a statement that is not waiting on its client
# (ClientRead: waiting for our next bytes; ClientWrite: waiting for us to read).
PROBE_SQL = """
SELECT count(*) FILTER (WHERE state = 'active' AND coalesce(wait_event_type, '') <> 'Client'),
       coalesce(string_agg(DISTINCT state || coalesce(' (' || wait_event || ')', ''), ', '), 'none')
FROM pg_stat_activity
WHERE datname = current_database() AND application_name = %s AND pid <> pg_backend_pid()
"""


def build_stall_error(step: str, idle: float, limit: float, in_flight: list[tuple[float, str]],
                      doing: str = "", probes: list | None = None) -> StallError:
    """The error a stalled step ends with: what stalled first, how long, and what else was under way.

    The culprit is the transfer or request quiet the longest; without one, a database that
    stopped answering the watchdog; else the step's stage.
    """
    probes = probes or []
    silent = [p for p in probes if getattr(p, "silent", False)]
    # The quietest request may be younger than the stall (requests that fail are followed by new ones).
    if in_flight:
        quiet, what = in_flight[0]
        culprit = f"{what} (waiting {quiet:.1f} s)"
    elif silent:
        culprit = silent[0].describe()
    else:
        culprit = "nothing in flight" + (f" while {doing}" if doing else "")
    lines = [f"{what}: quiet for {quiet:.1f} s" for quiet, what in in_flight[:NAMED_IN_FLIGHT]]
    if len(in_flight) > NAMED_IN_FLIGHT:
        lines.append(f"... and {len(in_flight) - NAMED_IN_FLIGHT} more")
    lines += [probe.describe() for probe in probes]
    if doing:
        lines.append(f"stage: {doing}")
    lines.append(f"limit: {STALL_VARIABLE}={limit:g}")
    return StallError(
        f"{step} stalled and was stopped after {idle:.0f} s without motion: {culprit}",
        detail="\n".join(lines),
        hint="nothing half-done passes for complete (uploads aborted, transactions rolled back, no manifest "
             "written; a snapshot refreshed in place is recorded as failed, and db_restore refuses it); "
             "check the network path to that endpoint, then run the job again",
    )


class StallWatch:
    """Decides, once per sample of the reporter thread, whether the step stalled (see the module docstring)."""

    def __init__(self, progress, limit: float, on_stall: Callable[[StallError], None], *, log,
                 metrics=None, job: str = "") -> None:
        self.progress, self.limit, self.on_stall = progress, limit, on_stall
        self.log, self.metrics, self.job = log, metrics, job
        self.tick = max(0.1, min(1.0, limit / 4))
        self.fired = False

    def check(self) -> None:
        if self.fired:
            return
        idle = self.progress.idle_seconds()
        if idle < self.limit:
            return
        self.fired = True
        in_flight, probes = self.progress.in_flight(), self.progress.probes()
        error = build_stall_error(self.progress.step or "the step", idle, self.limit, in_flight,
                                  self.progress.doing, probes)
        self.log.error("step.stalled", step=self.progress.step, idle_seconds=round(idle, 1),
                       limit_seconds=self.limit, stalled=error.message, doing=self.progress.doing,
                       in_flight=[f"{what} ({quiet:.1f} s)" for quiet, what in in_flight[:NAMED_IN_FLIGHT]])
        if self.metrics is not None and self.job:
            self.metrics.step_stalled(self.job)
        self.on_stall(error)


class SessionProbe:
    """Watches the sessions of one application_name on one database, on a connection of its own.

    `busy_at` is the last (monotonic) time a sample found one of them working for the step;
    it starts at the probe's start. Never raises: a probe that cannot ask simply stops
    counting, and `describe()` says why.
    """

    def __init__(self, db, sslmode: str, application_name: str, *, interval: float = 1.0) -> None:
        self.db, self.sslmode, self.application_name = db, sslmode, application_name
        self.interval = interval
        self.busy_at = time.monotonic()
        self.asked_at = self.busy_at
        self.state = "not asked yet"
        self._stop = threading.Event()
        self._conn = None
        self._thread = threading.Thread(target=self._run, name=f"probe-{application_name}", daemon=True)

    def start(self) -> SessionProbe:
        self._thread.start()
        return self

    @property
    def silent(self) -> bool:
        """True when the database has not answered the last few questions."""
        return time.monotonic() - self.asked_at > 3 * self.interval

    def describe(self) -> str:
        from service.database import describe_endpoint

        where = describe_endpoint(self.db)
        if self.silent:
            return (f"{where} did not answer the watchdog for {time.monotonic() - self.asked_at:.0f} s "
                    f"(its {self.application_name} sessions were: {self.state})")
        return f"{where}, its {self.application_name} sessions: {self.state}"

    def _run(self) -> None:
        from service.database import connect

        while not self._stop.is_set():
            try:
                if self._conn is None:
                    self._conn = connect(self.db, sslmode=self.sslmode, autocommit=True,
                                         application_name=PROBE_APPLICATION,
                                         connect_timeout=PROBE_TIMEOUT_SECONDS,
                                         statement_timeout_seconds=PROBE_TIMEOUT_SECONDS)
                busy, state = self._conn.execute(PROBE_SQL, (self.application_name,)).fetchone()
                now = time.monotonic()
                self.asked_at, self.state = now, state
                if busy:
                    self.busy_at = now
            except Exception as exc:  # noqa: BLE001 - a probe only ever stops counting
                self.state = f"the watchdog's query failed: {type(exc).__name__}"
                self._close()
            self._stop.wait(self.interval)
        self._close()

    def _close(self) -> None:
        conn, self._conn = self._conn, None
        if conn is not None:
            with contextlib.suppress(Exception):
                conn.close()

    def stop(self) -> None:
        """Stop asking; a query stuck on a silent server is cut, not awaited."""
        self._stop.set()
        conn = self._conn
        if conn is not None:
            from service.database import sever

            sever(conn)


@contextlib.contextmanager
def watch_sessions(progress, db, sslmode: str, application_name: str) -> Iterator[None]:
    """While the block runs, `application_name`'s sessions on `db` working count as the step
    moving (only when a watchdog watches the step: no probe, no connection otherwise)."""
    if progress is None or not getattr(progress, "stall_limit", 0.0):
        yield
        return
    interval = min(2.0, max(0.2, progress.stall_limit / 4))  # four looks per limit, at most every 2 s
    probe = SessionProbe(db, sslmode, application_name, interval=interval).start()
    token = progress.add_probe(probe)
    try:
        yield
    finally:
        progress.remove_probe(token)
        probe.stop()

