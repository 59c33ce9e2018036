"""The daemon's runs: every run through jobs.run_job, one CancelScope each, outcomes remembered.

Scheduler fires call `run` on an APScheduler worker thread; socket triggers
call `submit`, which checks the request (a restore still needs its
confirmation) and runs it on its own thread, answering at once. Both go
through `_begin`, which checks that the job is not already running and
registers the run in one step under the lock: of any number of simultaneous
requests for a job, one starts and the others are refused. On stop,
`cancel_all` cancels every scope (killing pg_dump process groups and aborting
uploads) and `wait_idle` waits for the runs to record themselves as aborted.
"""

from __future__ import annotations

import threading
import time
import uuid
from dataclasses import dataclass, field
from datetime import UTC, datetime

from service import jobs, journal
from service.commands import CancelScope
from service.errors import AlreadyRunningError, LockBusyError, ServiceError
from service.log import get_logger
from service.progress import Progress
from service.storage import S3ObjectStore


@dataclass
class ActiveRun:
    """A run in progress in this process."""

    run_id: str
    job: str
    trigger: str
    started_at: float
    scope: CancelScope = field(default_factory=CancelScope)
    progress: Progress = field(default_factory=Progress)


class Runner:
    """Runs jobs for the daemon and remembers how each ended."""

    def __init__(self, config, metrics, *, after_run=None, **run_job_kwargs) -> None:
        self.config = config
        self.metrics = metrics
        self._after_run = after_run  # e.g. re-read the bucket so the gauges show the new backup
        self._kwargs = run_job_kwargs  # e.g. store_factory, for tests
        self._lock = threading.Lock()
        self._active: dict[str, ActiveRun] = {}
        self._last: dict[str, dict] = {}
        self._closing = ""
        self.log = get_logger(component="runner")

    def run(self, job: str, args: tuple[str, ...] = (), options: dict | None = None,
            trigger: str = "scheduler") -> jobs.JobResult | None:
        """Run `job` now on this thread; never raises (run_job is the boundary).

        Returns None when the daemon is stopping and the run was not started.
        """
        try:
            active = self._begin(job, trigger)
        except AlreadyRunningError:
            self.record_skip(job, "already_running")  # e.g. the same job triggered over the socket
            return None
        except ServiceError as exc:
            self.log.warning("job.not_started", job=job, error=exc.message)
            return None
        return self._execute(active, args, options or {})

    def submit(self, job: str, args: tuple[str, ...] = (), options: dict | None = None,
               trigger: str = "socket") -> str:
        """Check the request, start the run in the background and return its run id.

        Raises the refusal (unknown job, bad arguments or options, missing
        confirmation, already running, stopping) before anything starts.
        """
        spec = jobs.get_job(job)
        jobs.validate_request(spec, tuple(args), options if options is not None else {}, self.config)
        options = dict(options or {})
        active = self._begin(job, trigger)
        thread = threading.Thread(target=self._execute, args=(active, tuple(args), options),
                                  name=f"run-{job}", daemon=True)
        thread.start()
        return active.run_id

    def _begin(self, job: str, trigger: str) -> ActiveRun:
        """Register a run of `job`, or refuse: the check and the registration are one step."""
        active = ActiveRun(uuid.uuid4().hex[:12], job, trigger, time.time(),
                           progress=jobs.progress_for(self.config.settings))
        with self._lock:
            if self._closing:
                raise ServiceError(f"the daemon is stopping; {job} was not started",
                                   detail=self._closing)
            running = next((r for r in self._active.values() if r.job == job), None)
            if running is not None:
                raise AlreadyRunningError(f"{job} is already running (run {running.run_id}); "
                                          "this request was not started",
                                          hint="wait for it to finish: python -m service ctl status")
            self._active[active.run_id] = active
        return active

    def _execute(self, active: ActiveRun, args: tuple[str, ...], options: dict) -> jobs.JobResult:
        try:
            result = jobs.run_job(self.config, active.job, args, options=options, scope=active.scope,
                                  metrics=self.metrics, trigger=active.trigger,
                                  run_id=active.run_id, progress=active.progress, **self._kwargs)
        except BaseException:
            self._finish(active, None)
            raise
        # The run has ended (its outcome is counted): it leaves the running list before the
        # housekeeping below, which may wait on S3, so a trigger now is not refused as running.
        self._finish(active, result)
        if result.outcome == "skipped" and isinstance(result.error, LockBusyError):
            self.metrics.run_skipped(active.job, "lock_busy", counted=True)
        self.metrics.observe_steps(result.steps)
        if self._after_run is not None and result.outcome == "success":
            self._after_run()
        return result

    def _finish(self, active: ActiveRun, result: jobs.JobResult | None) -> None:
        """Record how the run ended and take it off the running list, in one step."""
        with self._lock:
            if result is not None:
                self._last[active.job] = {
                    "run_id": result.run_id, "outcome": result.outcome, "trigger": active.trigger,
                    "finished_at": time.time(), "seconds": result.seconds,
                    "error": result.error.message if result.error else None,
                }
            self._active.pop(active.run_id, None)

    def record_skip(self, job: str, reason: str) -> None:
        """A scheduler fire that never became a run (still running, missed): logged, counted and
        journaled (on a thread of its own: this is APScheduler's event thread)."""
        self.log.warning("job.skipped", job=job, reason=reason, trigger="scheduler")
        self.metrics.run_skipped(job, reason, counted=False)
        record = journal.build_skip_record(job, reason, when=datetime.now(UTC), run_id=uuid.uuid4().hex[:12],
                                           space=getattr(self.config, "space", None))
        factory = self._kwargs.get("store_factory") or S3ObjectStore
        threading.Thread(target=journal.write_record, name="journal-skip", daemon=True,
                         args=(lambda: factory(self.config.backups), record),
                         kwargs={"metrics": self.metrics, "log": self.log}).start()

    def status(self) -> dict:
        """Running jobs and the last outcome of each job, for `ctl status`."""
        with self._lock:
            running = [{"job": r.job, "run_id": r.run_id, "trigger": r.trigger,
                        "started_at": r.started_at, "progress": r.progress.snapshot()}
                       for r in self._active.values()]
            return {"running": running, "last": dict(self._last)}

    def cancel_all(self, reason: str) -> int:
        """Refuse new runs and cancel every running one; return how many were cancelled."""
        with self._lock:
            self._closing = reason
            active = list(self._active.values())
        for run in active:
            self.log.warning("job.cancelling", job=run.job, run_id=run.run_id, reason=reason)
            run.scope.cancel(reason)
        return len(active)

    def wait_idle(self, timeout: float) -> bool:
        """Wait until no run is active; False if some still run after `timeout` seconds."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            with self._lock:
                if not self._active:
                    return True
            time.sleep(0.05)
        with self._lock:
            return not self._active
