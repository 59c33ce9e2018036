"""APScheduler wiring: cron expressions as cron means them, explicit job defaults, catch-up.

APScheduler 3 numbers weekdays from Monday = 0, also in `CronTrigger.from_crontab`,
so `"0 9 * * 1-5"` would fire Tuesday to Saturday. `build_cron_trigger` reads
the five cron fields itself and hands APScheduler weekday *names*, so an
expression from the environment means what it means to cron (0 and 7 = Sunday).

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
from apscheduler.triggers.cron import CronTrigger

from service.errors import ConfigError

CRON_DAY_NAMES = ("sun", "mon", "tue", "wed", "thu", "fri", "sat")  # cron numbering: 0 = Sunday
# APScheduler's default misfire grace is one second: a run that waited for a worker
# thread would be dropped. An hour keeps a busy moment from losing a backup.
JOB_DEFAULTS = {"max_instances": 1, "coalesce": True, "misfire_grace_time": 3600}
WORKERS = 4
OFF = "off"


def _cron_day(text: str, expr: str) -> int:
    text = text.strip().lower()
    if text[:3] in CRON_DAY_NAMES and text.isalpha():
        return CRON_DAY_NAMES.index(text[:3])
    if text.isdigit() and 0 <= int(text) <= 7:
        return int(text)
    raise ConfigError(f"cron expression {expr!r}: {text!r} is not a day of the week (0-7 or sun-sat)")


def translate_weekdays(field: str, expr: str = "") -> str:
    """A cron day-of-week field (0/7 = Sunday, names, ranges, lists, steps) as APScheduler names."""
    field = field.strip().lower()
    if field in ("*", "?"):
        return "*"
    days: set[int] = set()
    for part in field.split(","):
        span, _, step_text = part.partition("/")
        if step_text and not (step_text.isdigit() and int(step_text) > 0):
            raise ConfigError(f"cron expression {expr!r}: step {step_text!r} is not a positive number")
        step = int(step_text) if step_text else 1
        if span in ("*", "?"):
            low, high = 0, 6
        elif "-" in span:
            first, _, last = span.partition("-")
            low, high = _cron_day(first, expr), _cron_day(last, expr)
        else:
            low = _cron_day(span, expr)
            high = 7 if step_text else low  # cron reads "1/2" as "1-7/2"
        if high < low:
            raise ConfigError(f"cron expression {expr!r}: range {span!r} runs backwards")
        days.update(day % 7 for day in range(low, high + 1, step))
    return ",".join(CRON_DAY_NAMES[d] for d in (1, 2, 3, 4, 5, 6, 0) if d in days)


def build_cron_trigger(expr: str, tz: tzinfo) -> CronTrigger:
    """A CronTrigger in `tz` for a standard five-field cron expression; ConfigError if invalid."""
    fields = expr.split()
    if len(fields) != 5:
        raise ConfigError(
            f"cron expression {expr!r} has {len(fields)} field(s), not 5",
            hint="use 'minute hour day-of-month month day-of-week', e.g. '0 6-18/2 * * *'",
        )
    minute, hour, day, month, weekdays = fields
    if day not in ("*", "?") and weekdays not in ("*", "?"):
        # cron fires when EITHER field matches, APScheduler when both do: refuse the ambiguity.
        raise ConfigError(
            f"cron expression {expr!r} restricts both day of month and day of week",
            hint="restrict only one of them",
        )
    try:
        return CronTrigger(minute=minute, hour=hour, day=day, month=month,
                           day_of_week=translate_weekdays(weekdays, expr), timezone=tz)
    except ValueError as exc:
        raise ConfigError(f"cron expression {expr!r} is invalid", detail=str(exc)) from exc


def parse_schedules(settings) -> dict[str, CronTrigger]:
    """job name -> trigger for every enabled schedule; one ConfigError listing every bad one."""
    wanted = {"scheduled_backup": ("SCHEDULED_CRON", settings.scheduled_cron),
              "daily_backup": ("DAILY_CRON", settings.daily_cron),
              "check_tables": ("CHECK_CRON", settings.check_cron),
              "verify_backup": ("VERIFY_CRON", settings.verify_cron)}
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


def needs_catch_up(trigger: CronTrigger, newest_started: datetime | None, now: datetime) -> bool:
    """True when a slot of `trigger` passed since the newest complete backup started.

    That is the case after the app was stopped or restaged across a slot; a
    start outside working hours after the day's last slot ran needs nothing.
    """
    if newest_started is None:
        return True
    slot = trigger.get_next_fire_time(None, newest_started + timedelta(seconds=1))
    return slot is not None and slot <= now


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

    def add_cron(self, job: str, trigger: CronTrigger) -> None:
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
