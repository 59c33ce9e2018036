"""The job registry: job name -> ordered steps, shared by the CLI, the scheduler and the socket.

`run_job` is the one safe boundary of a run: it binds the job and run id to
every log event, times the run, stops at the first failed step, turns an
expected error into one `failure`, anything else into a `crashed` failure with
a traceback, and always ends with one summary event and the metrics. Nothing
escapes it.
"""

from __future__ import annotations

import contextlib
import resource
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import structlog

from service import integrity, journal, kinds, notify
from service.commands import CancelScope
from service.config import Config
from service.confirmation import check_confirmation, confirmation_record
from service.errors import (
    JobAbortedError,
    LockBusyError,
    ServiceError,
    UsageError,
    quote_input,
)
from service.locking import default_lock_guard
from service.log import get_logger
from service.progress import Progress, watch_step
from service.storage import ObjectStore, S3ObjectStore
from service.tasks import backup, checks, db_restore, drill, prune, report, restore, snapshot, sync
from service.watchdog import StallWatch


@dataclass(frozen=True)
class JobSpec:
    """One operation as operators know it."""

    name: str
    steps: tuple[str, ...]
    description: str
    arguments: tuple[str, ...] = ()  # required positional arguments
    optional_arguments: tuple[str, ...] = ()
    protected_target: str | None = None  # Config attribute an operator must name with --confirm
    takes_lock: bool = True


JOB_SPECS: tuple[JobSpec, ...] = (
    JobSpec("initial_backup", ("db_to_s3", "db_to_db", "media_sync"),
            "first run in a new environment: dumps, a first snapshot copy, media"),
    JobSpec("deploy_backup", ("db_to_s3", "db_to_db", "media_sync"),
            "before a deploy: dumps, snapshot copy replaced, media"),
    JobSpec("scheduled_backup", ("row_count", "db_to_s3", "media_sync"),
            "every two hours in Pacific working hours: row counts, dumps, media"),
    JobSpec("daily_backup", ("row_count", "db_to_s3", "media_sync"),
            "once a day: row counts, dumps, media; never touches fac-snapshot-db"),
    JobSpec("on_demand_backup", ("row_count", "db_to_s3", "db_to_db", "media_sync"),
            "by hand, any time: row counts, dumps, the snapshot copy, media"),
    JobSpec("media_sync", ("media_sync",), "copy new and changed media into the backups bucket"),
    JobSpec("media_restore", ("media_restore",),
            "only the media step of s3_restore: fac-private-s3 as it was at a backup's moment",
            arguments=("BACKUP_ID",), protected_target="media"),
    JobSpec("check_tables", ("check_tables",), "every table of the table manifest exists; row counts"),
    JobSpec("db_to_s3", ("db_to_s3",), "dump every table to the backups bucket"),
    JobSpec("db_to_db", ("db_to_db",),
            "refresh fac-snapshot-db from fac-db: all or nothing where its storage holds two copies, else in place"),
    JobSpec("row_count", ("row_count",), "exact row count of every table", takes_lock=False),
    JobSpec("s3_restore", ("s3_restore", "media_restore"),
            "replace fac-db with a verified backup, all or nothing, then media back",
            arguments=("BACKUP_ID",), protected_target="fac_db"),
    JobSpec("db_restore", ("db_restore", "media_restore"),
            "replace fac-db with fac-snapshot-db, all or nothing, then media back",
            protected_target="fac_db"),
    JobSpec("prune_backups", ("prune_backups",), "apply the retention policy; a dry run unless --apply"),
    JobSpec("verify_backup", ("verify_backup",),
            "restore drill: checksums, pg_restore --list, a rolled-back restore into the scratch db",
            optional_arguments=("BACKUP_ID",), takes_lock=False),
    JobSpec("acknowledge_drop", ("acknowledge_drop",),
            "accept the rows a backup found dropped (a legitimate purge): clears the alert and the hold",
            arguments=("BACKUP_ID",), optional_arguments=("NOTE",), takes_lock=False),
    JobSpec("contingency_report", ("contingency_report",),
            "the contingency report of the previous month (or SINCE UNTIL), stored beside the journal",
            optional_arguments=("SINCE", "UNTIL"), takes_lock=False),
)

StepFunction = Callable[["JobContext"], dict]

STEPS: dict[str, StepFunction] = {
    "row_count": checks.count_all_rows,
    "check_tables": checks.check_tables,
    "db_to_s3": lambda ctx: backup.backup_database(ctx, kinds.backup_kind(ctx.spec.name)),
    "media_sync": sync.sync_media,
    "media_restore": sync.sync_media_back,
    "db_to_db": snapshot.copy_database,
    "s3_restore": restore.restore_from_s3,
    "db_restore": db_restore.restore_from_snapshot,
    "prune_backups": prune.prune_backups,
    "verify_backup": drill.verify_backup_step,
    "acknowledge_drop": integrity.acknowledge_drop_step,
    "contingency_report": report.report_step,
}

JOBS: dict[str, JobSpec] = {spec.name: spec for spec in JOB_SPECS}

# The long steps that move data: the stall watchdog (service.watchdog) watches these. The
# others (counts, checks, prune) wait only on requests that have deadlines of their own.
STALL_WATCHED_STEPS = frozenset({"db_to_s3", "db_to_db", "s3_restore", "db_restore", "media_sync",
                                 "media_restore", "verify_backup"})


def get_job(name: str) -> JobSpec:
    """The spec of `name`, or UsageError listing the known jobs."""
    spec = JOBS.get(name) if isinstance(name, str) else None
    if spec is None:
        raise UsageError(
            f"unknown job {quote_input(name)}",
            hint="known jobs: " + ", ".join(sorted(JOBS)),
        )
    return spec


# Every option a request may carry, and what it takes. The CLI sends all three (confirm None when
# not given); the socket sends what its client wrote, so nothing is coerced: "false" is not false.
OPTION_TYPES = {"confirm": "text (SPACE/BINDING)", "apply": "true or false", "force": "true or false"}
MAX_TEXT_CHARS = 200  # an id or a confirmation is tens of characters; past this it is not one
ID_HINT = "copy the id from 'python -m service list'"


def validate_request(spec: JobSpec, args: tuple[str, ...], options: dict, config: Config | None) -> None:
    """Check every argument and option by type and, for protected jobs, the operator's confirmation.

    The one place where the CLI, the socket and the scheduler meet: a request refused
    here (UsageError, exit 2; ConfirmationRequiredError, exit 3) never starts.
    """
    low, high = len(spec.arguments), len(spec.arguments) + len(spec.optional_arguments)
    if not low <= len(args) <= high:
        usage = " ".join([spec.name, *spec.arguments, *(f"[{a}]" for a in spec.optional_arguments)])
        raise UsageError(f"{spec.name} takes {low if low == high else f'{low} to {high}'} argument(s)",
                         hint=f"usage: run {usage}")
    for number, arg in enumerate(args, start=1):
        check_text(f"argument {number} of {spec.name}", arg, ID_HINT)
    if not isinstance(options, dict):
        raise UsageError(f"the options of {spec.name} must be an object of name -> value, "
                         f"not {quote_input(options)}")
    for name, value in options.items():
        if name not in OPTION_TYPES:
            raise UsageError(f"unknown option {quote_input(name)} for {spec.name}; nothing was started",
                             hint="options: " + ", ".join(f"{k} ({v})" for k, v in OPTION_TYPES.items()))
        if name == "confirm":
            if value is not None:  # None: not given
                check_text("option 'confirm'", value, "name the space and the binding, e.g. production/fac-db")
        elif not isinstance(value, bool):
            raise UsageError(f"option {name!r} takes {OPTION_TYPES[name]}, not {quote_input(value)}; "
                             "nothing was started", hint=f"send {name}: true or {name}: false (JSON booleans)")
    if spec.protected_target and config is not None:
        check_confirmation(spec.name, config.space, getattr(config, spec.protected_target).name,
                           options.get("confirm"))


def check_text(what: str, value: object, hint: str) -> None:
    """UsageError unless `value` is text of at most MAX_TEXT_CHARS (an id, a confirmation)."""
    if not isinstance(value, str):
        raise UsageError(f"{what} takes text, not {quote_input(value)}; nothing was started", hint=hint)
    if len(value) > MAX_TEXT_CHARS:
        raise UsageError(f"{what} is {len(value)} characters long, more than the {MAX_TEXT_CHARS} "
                         f"any id or confirmation has: {quote_input(value)}; nothing was started", hint=hint)


def confirmation_of(spec: JobSpec, config: Config, options: dict) -> dict | None:
    """For a protected job: the space, the binding it overwrites and the confirmation given."""
    if not spec.protected_target:
        return None
    return confirmation_record(config.space, getattr(config, spec.protected_target).name, options.get("confirm"))


@dataclass
class JobContext:
    """What a step sees: configuration, arguments, logger, cancellation, stores."""

    config: Config
    spec: JobSpec
    run_id: str
    args: tuple[str, ...] = ()
    options: dict = field(default_factory=dict)
    scope: CancelScope = field(default_factory=CancelScope)
    log: Any = None
    store_factory: Callable[..., ObjectStore] = S3ObjectStore
    clock: Callable[[], datetime] | None = None
    figures_on_failure: dict | None = None
    progress: Progress = field(default_factory=Progress)
    backup_id: str | None = None  # the backup this run wrote (its media sync records the moment)
    restored: Any = None  # the FoundBackup an s3_restore step restored (its media step follows it)
    _stores: dict = field(default_factory=dict)

    @property
    def job(self) -> str:
        return self.spec.name

    @property
    def confirmation(self) -> dict | None:
        """Space, binding and confirmation of a protected job (None for the others)."""
        return confirmation_of(self.spec, self.config, self.options)

    def now(self) -> datetime:
        """Now, in the service's time zone (backup ids and schedules use it)."""
        if self.clock is not None:
            return self.clock().astimezone(self.config.settings.timezone)
        return datetime.now(self.config.settings.timezone)

    def backups_store(self) -> ObjectStore:
        return self._store("backups")

    def media_store(self) -> ObjectStore:
        return self._store("media")

    def _store(self, which: str) -> ObjectStore:
        if which not in self._stores:
            store = self.store_factory(getattr(self.config, which))
            if self.progress.enabled:
                store.progress = self.progress  # its uploads and downloads count as this run's progress
            # A cancel (SIGTERM, a stall) reaches the store's requests in flight, not only the next one.
            self.scope.add_cleanup(lambda: store.interrupt(self.scope.reason))
            self._stores[which] = store
        return self._stores[which]


@dataclass(frozen=True)
class StepResult:
    name: str
    outcome: str
    seconds: float
    figures: dict


@dataclass(frozen=True)
class JobResult:
    """How one run ended. `outcome` is success, failure, skipped or aborted."""

    job: str
    run_id: str
    outcome: str
    seconds: float
    steps: tuple[StepResult, ...] = ()
    error: ServiceError | None = None
    crashed: bool = False
    confirmation: dict | None = None  # a protected job's space, binding and confirmation given

    @property
    def exit_code(self) -> int:
        if self.outcome == "success":
            return 0
        if self.crashed:
            return 70
        return self.error.exit_code if self.error is not None else 1


def peak_rss_bytes() -> int:
    """This process's memory high-water mark; memory must stay flat however large the data.

    VmHWM belongs to the running program only; getrusage's ru_maxrss would also
    count the parent we were forked from (it survives exec).
    """
    try:
        with open("/proc/self/status", encoding="ascii") as status:
            for line in status:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def _summary_figures(figures: dict) -> dict:
    """Scalars only: a summary event must stay one readable line."""
    return {k: v for k, v in figures.items() if isinstance(v, (int, float, str, bool))}


LockGuard = Callable[[JobContext], contextlib.AbstractContextManager]


def progress_for(settings, *, display: bool = False) -> Progress:
    """A run's tracker: counting on while progress is reported or the stall watchdog watches."""
    return Progress(enabled=settings.progress_seconds > 0 or settings.stall_seconds > 0, display=display)


def _watchdog(ctx: JobContext, step: str, log, metrics) -> StallWatch | None:
    """The stall watchdog of `step`, or None (a short step, or FAC_BACKUP_STALL_SECONDS=0)."""
    limit = ctx.config.settings.stall_seconds
    if limit <= 0 or step not in STALL_WATCHED_STEPS or not ctx.progress.enabled:
        return None
    return StallWatch(ctx.progress, limit, ctx.scope.fail, log=log, metrics=metrics, job=ctx.job)


def _cancelled_error(scope: CancelScope, error: ServiceError | None) -> tuple[ServiceError, str]:
    """(error, outcome) of a run whose scope was cancelled."""
    if scope.failure is not None:
        return scope.failure, "failure"
    if isinstance(error, JobAbortedError):
        return error, "aborted"
    return JobAbortedError("the run was cancelled", detail=scope.reason,
                           hint="start it again when ready"), "aborted"


def _no_lock(_ctx: JobContext) -> contextlib.AbstractContextManager:
    return contextlib.nullcontext()


def run_job(
    config: Config,
    name: str,
    args: tuple[str, ...] = (),
    *,
    options: dict | None = None,
    scope: CancelScope | None = None,
    metrics=None,
    trigger: str = "cli",
    store_factory: Callable[..., ObjectStore] | None = None,
    lock_guard: LockGuard | None = None,
    clock: Callable[[], datetime] | None = None,
    run_id: str | None = None,
    progress: Progress | None = None,
) -> JobResult:
    """Run one job through its steps; never raises. See the module docstring.

    Jobs whose spec takes the lock hold the service advisory lock (service.locking)
    unless `lock_guard` says otherwise: a scheduler run tries once and ends
    `skipped`, any other run waits up to settings.lock_wait_seconds.
    """
    run_id = run_id or uuid.uuid4().hex[:12]
    options = dict(options or {})
    started = time.monotonic()
    started_at = datetime.now(UTC)  # the run journal's clock (service.journal)
    steps: list[StepResult] = []
    error: ServiceError | None = None
    crashed = False
    outcome = "failure"
    with structlog.contextvars.bound_contextvars(job=name, run_id=run_id):
        log = get_logger()
        try:
            spec = get_job(name)
        except ServiceError as exc:  # no job of that name: nothing to journal, and no typed name for a key
            log.error("job.rejected", error=exc.message, detail=exc.detail, hint=exc.hint, trigger=trigger)
            return JobResult(name, run_id, "failure", 0.0, (), exc)
        try:
            validate_request(spec, tuple(args), options, config)
        except ServiceError as exc:
            log.error("job.rejected", error=exc.message, detail=exc.detail, hint=exc.hint, trigger=trigger)
            rejected = JobResult(name, run_id, "failure", 0.0, (), exc)
            journal.record_run(config, rejected, trigger=trigger, started_at=started_at, args=tuple(args),
                               options=options, store=lambda: (store_factory or S3ObjectStore)(config.backups),
                               metrics=metrics, log=log, kind="rejected")  # never raises
            return rejected
        ctx = JobContext(config, spec, run_id, tuple(args), options, scope or CancelScope(), log,
                         store_factory or S3ObjectStore, clock,
                         progress=progress or progress_for(config.settings))
        if metrics is not None:
            metrics.job_started(name)
        log.info("job.started", trigger=trigger, steps=list(spec.steps), args=list(args))
        current = None
        try:
            if lock_guard is None:
                lock_guard = default_lock_guard(trigger) if spec.takes_lock else _no_lock
            with lock_guard(ctx):
                for current in spec.steps:
                    ctx.scope.check()
                    t0 = time.monotonic()
                    log.info("step.started", step=current)
                    with watch_step(ctx.progress, current, interval=config.settings.progress_seconds,
                                    log=log, job=name, metrics=metrics,
                                    watchdog=_watchdog(ctx, current, log, metrics)):
                        figures = STEPS[current](ctx) or {}
                    steps.append(StepResult(current, "success", round(time.monotonic() - t0, 3), figures))
                    log.info("step.finished", step=current, **_summary_figures(figures))
                current = None
            outcome = "success"
        except LockBusyError as exc:
            error, outcome = exc, ("skipped" if trigger == "scheduler" else "failure")
        except JobAbortedError as exc:
            error, outcome = exc, "aborted"
        except ServiceError as exc:
            error = exc
        except Exception as exc:  # noqa: BLE001 - the boundary: nothing escapes a run
            if ctx.scope.cancelled:  # a cut connection's error, after the cancel that cut it
                error = JobAbortedError("the run was cancelled", detail=f"{type(exc).__name__}: {exc}")
            else:
                crashed = True
                error = ServiceError(f"internal error: {type(exc).__name__}: {exc}",
                                     hint="this is a bug; the traceback is in the log")
                log.exception("job.crashed", step=current)
        if ctx.scope.cancelled and outcome in ("failure", "aborted"):
            # The cancel is the cause, whatever error the interrupted work raised on its way out:
            # the stall watchdog's verdict (a failure), or a signal's (aborted).
            error, outcome = _cancelled_error(ctx.scope, error)
        if current is not None:
            steps.append(StepResult(current, outcome if outcome != "success" else "failure", 0.0,
                                    ctx.figures_on_failure or {}))
        seconds = round(time.monotonic() - started, 3)
        if metrics is not None:
            metrics.job_finished(name, outcome, seconds, time.time())
        summary = {
            "outcome": outcome,
            "duration_seconds": seconds,
            "trigger": trigger,
            "peak_rss_bytes": peak_rss_bytes(),
            "steps": [{"step": s.name, "outcome": s.outcome, "seconds": s.seconds,
                       **_summary_figures(s.figures)} for s in steps],
        }
        if error is not None:
            summary.update(error=error.message, detail=error.detail, hint=error.hint, failed_step=current)
        event = {"success": "job.finished", "failure": "job.failed", "aborted": "job.aborted",
                 "skipped": "job.skipped"}[outcome]
        (log.info if outcome in ("success", "skipped") else log.error)(event, **summary)
        result = JobResult(name, run_id, outcome, seconds, tuple(steps), error, crashed, ctx.confirmation)
        # On a client of its own: a cancel or a stall has interrupted the run's, which then refuses writes.
        journal.record_run(config, result, trigger=trigger, started_at=started_at, args=ctx.args, options=options,
                           store=lambda: ctx.store_factory(config.backups), metrics=metrics, log=log)  # bounded
        notify.notify_job_end(config, result, metrics=metrics, log=log)  # never raises
        return result
