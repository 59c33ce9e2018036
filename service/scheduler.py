"""APScheduler wiring: cron expressions as cron means them, explicit job defaults, catch-up.

Schedules use `service.cron.CronScheduleTrigger`, not APScheduler's CronTrigger: that
one numbers weekdays from Monday = 0 (`"0 9 * * 1-5"` would fire Tuesday to
Saturday) and skips or repeats slots at daylight-saving changes. Ours reads
standard cron (0 and 7 = Sunday) and fires every local slot exactly once, so
the metric, `ctl jobs` and catch-up, which all ask the trigger, agree with cron.

The scheduler only ever calls `run(job_name)`: the daemon passes a function that
goes through jobs.run_job, the safe boundary, so nothing a job raises reaches
APScheduler. A fire that finds the previous run still going, or that was late
beyond the grace time, is reported to `on_skip` so it is counted, not lost silently.
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import datetime, timedelta, tzinfo

from apscheduler.events import EVENT_JOB_MAX_INSTANCES, EVENT_JOB_MISSED
from apscheduler.executors.pool import ThreadPoolExecutor
from apscheduler.schedulers.background import BackgroundScheduler

from service.cron import CronScheduleTrigger
from service.errors import ConfigError

# APScheduler's default misfire grace is one second: a run that waited for a worker
# thread would be dropped. An hour keeps a busy moment from losing a backup.
JOB_DEFAULTS = {"max_instances": 1, "coalesce": True, "misfire_grace_time": 3600}
WORKERS = 4
OFF = "off"


def build_cron_trigger(expr: str, tz: tzinfo) -> CronScheduleTrigger:
    """The trigger for a standard five-field cron expression in `tz`; ConfigError if invalid."""
    return CronScheduleTrigger(expr, tz)


def parse_schedules(settings) -> dict[str, CronScheduleTrigger]:
    """job name -> trigger for every enabled schedule; one ConfigError listing every bad one."""
    wanted = {"scheduled_backup": ("SCHEDULED_CRON", settings.scheduled_cron),
              "daily_backup": ("DAILY_CRON", settings.daily_cron),
              "check_tables": ("CHECK_CRON", settings.check_cron),
              "verify_backup": ("VERIFY_CRON", settings.verify_cron),
              "contingency_report": ("REPORT_CRON", settings.report_cron)}
    triggers, problems = {}, []
    for job, (variable, expr) in wanted.items():
        if expr.strip().lower() == OFF:
            continue
        try:
            triggers[job] = build_cron_trigger(expr, settings.timezone)
        except ConfigError as exc:
            problems.append(f"FAC_BACKUP_{variable}: {exc.message} {exc.detail}".strip())
    if problems:
        raise ConfigError("the schedule is invalid; nothing was started", detail="\n".join(problems),
                          hint="fix the cron expression(s) or set the variable to 'off'")
    return triggers


def follow_up(job: str, outcome: str, settings) -> tuple[str, dict] | None:
    """The run a finished scheduled run calls for, as (job, options), or None.

    prune_backups --apply follows a successful daily_backup, and only a successful
    one: a failing system must not eat its own history.
    """
    if job == "daily_backup" and outcome == "success" and settings.prune_after_daily:
        return "prune_backups", {"apply": True}
    return None


def needs_catch_up(trigger: CronScheduleTrigger, newest_started: datetime | None, now: datetime) -> bool:
    """True when a slot of `trigger` passed since the newest complete backup started.

    That is the case after the app was stopped or restaged across a slot; a
    start outside working hours after the day's last slot ran needs nothing.
    """
    if newest_started is None:
        return True
    slot = trigger.get_next_fire_time(None, newest_started + timedelta(seconds=1))
    # Timestamps, not datetimes: two times of one zone compare by wall clock, so in the
    # repeated fall-back hour 01:30 PDT would count as later than 01:10 PST.
    return slot is not None and slot.timestamp() <= now.timestamp()


class JobScheduler:
    """A BackgroundScheduler in the service's time zone that calls `run(job_name)`."""

    def __init__(self, tz: tzinfo, run: Callable[[str], object],
                 on_skip: Callable[[str, str], None] | None = None) -> None:
        self._run = run
        self._on_skip = on_skip
        self._names: dict[str, str] = {}  # APScheduler job id -> our job name
        self.scheduler = BackgroundScheduler(
            timezone=tz, executors={"default": ThreadPoolExecutor(WORKERS)}, job_defaults=JOB_DEFAULTS
        )
        self.scheduler.add_listener(self._on_event, EVENT_JOB_MAX_INSTANCES | EVENT_JOB_MISSED)

    def add_cron(self, job: str, trigger: CronScheduleTrigger) -> None:
        """Run `job` on `trigger`; its APScheduler id is the job name."""
        self._names[job] = job
        self.scheduler.add_job(self._run, trigger, args=[job], id=job, name=job)

    def run_now(self, job: str, tag: str) -> None:
        """One extra run of `job` as soon as a worker is free (catch-up)."""
        job_id = f"{tag}:{job}"
        self._names[job_id] = job
        self.scheduler.add_job(self._run, "date", args=[job], id=job_id, name=job_id)

    def add_interval(self, job_id: str, seconds: float, fn: Callable[[], object]) -> None:
        """A housekeeping task every `seconds` (it keeps running while the schedule is paused)."""
        self.scheduler.add_job(fn, "interval", seconds=seconds, id=job_id, name=job_id)

    def start(self) -> None:
        self.scheduler.start()

    @property
    def running(self) -> bool:
        return self.scheduler.running

    def pause(self) -> None:
        """Stop firing the job schedules (housekeeping goes on)."""
        for job_id in self._scheduled_ids():
            self.scheduler.pause_job(job_id)

    def resume(self) -> None:
        for job_id in self._scheduled_ids():
            self.scheduler.resume_job(job_id)

    def next_runs(self) -> dict[str, datetime | None]:
        """Next fire time of each job schedule; None while paused."""
        return {job_id: job.next_run_time for job_id in self._scheduled_ids()
                if (job := self.scheduler.get_job(job_id)) is not None}

    def shutdown(self) -> None:
        """Stop scheduling at once; running jobs are cancelled by their owner, not awaited here."""
        if self.scheduler.running:
            self.scheduler.shutdown(wait=False)

    def _scheduled_ids(self) -> list[str]:
        return [job_id for job_id, name in self._names.items()
                if job_id == name and self.scheduler.get_job(job_id) is not None]

    def _on_event(self, event) -> None:
        job = self._names.get(event.job_id)
        if job is None or self._on_skip is None:
            return
        self._on_skip(job, "already_running" if event.code == EVENT_JOB_MAX_INSTANCES else "missed")
