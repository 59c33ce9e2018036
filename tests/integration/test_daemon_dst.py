"""The real daemon started at a faked clock next to a DST change shows cron's next run.

libfaketime (Debian's `faketime`) sets the daemon's wall clock to the moment the
issue measured, with the clock running on from there; the next run is read from
`fac_backup_job_next_run_timestamp_seconds` and from `ctl jobs`.
"""

from __future__ import annotations

from datetime import UTC, datetime

import pytest

from tests.integration.test_daemon import Daemon, free_port, wait_for
from tests.tools import faketime_environ

pytestmark = pytest.mark.integration


def start_faked(sandbox, clock_utc: str, **schedules: str) -> Daemon:
    """The daemon under faketime, its clock starting at `clock_utc` (UTC), with `schedules`."""
    env = dict(sandbox.environ, **faketime_environ(clock_utc), PORT=str(free_port()),
               FAC_BACKUP_TIMEZONE="America/Los_Angeles", FAC_BACKUP_CATCH_UP="false",
               FAC_BACKUP_SCHEDULED_CRON="off", FAC_BACKUP_DAILY_CRON="off",
               FAC_BACKUP_CHECK_CRON="off", FAC_BACKUP_VERIFY_CRON="off", FAC_BACKUP_REPORT_CRON="off")
    env.update(schedules)
    return Daemon(env, sandbox.tmp)


def next_runs(daemon: Daemon) -> dict[str, datetime]:
    """job -> next run, from the metric; waits for the daemon to be healthy."""
    daemon.wait_healthy(30)
    samples = daemon.samples()
    return {dict(labels)["job"]: datetime.fromtimestamp(value, UTC)
            for (name, labels), value in samples.items()
            if name == "fac_backup_job_next_run_timestamp_seconds"}


def utc(text: str) -> datetime:
    return datetime.fromisoformat(text).astimezone(UTC)


def test_daemon_started_before_spring_forward_skips_no_day_or_month(sandbox):
    """At 2026-03-08 00:00:05 PST: daily midnight next runs March 9, monthly April 1, 02:30 at 03:00."""
    daemon = start_faked(sandbox, "2026-03-08 08:00:05", FAC_BACKUP_SCHEDULED_CRON="0 0 * * *",
                         FAC_BACKUP_DAILY_CRON="0 0 1 * *", FAC_BACKUP_CHECK_CRON="30 2 * * *")
    try:
        runs = next_runs(daemon)
        assert runs == {"scheduled_backup": utc("2026-03-09T00:00:00-07:00"),
                        "daily_backup": utc("2026-04-01T00:00:00-07:00"),
                        "check_tables": utc("2026-03-08T03:00:00-07:00")}, daemon.log_text()
        shown = daemon.ctl("jobs")["next_runs"]
        assert {job: utc(text) for job, text in shown.items()} == runs
        assert shown["scheduled_backup"] == "2026-03-09T00:00:00-07:00"  # in the service's zone
    finally:
        code, _ = daemon.stop()
    assert code == 0


def test_daemon_started_in_the_repeated_hour_does_not_run_the_slot_again(sandbox):
    """At 2026-11-01 01:05:05 PST (the second 01:05), '5 1 * * *' next runs on November 2."""
    daemon = start_faked(sandbox, "2026-11-01 09:05:05", FAC_BACKUP_SCHEDULED_CRON="5 1 * * *")
    try:
        assert next_runs(daemon) == {"scheduled_backup": utc("2026-11-02T01:05:00-08:00")}, \
            daemon.log_text()
        wait_for(lambda: daemon.ctl("jobs")["next_runs"], 5, "ctl jobs")
        assert daemon.ctl("jobs")["next_runs"] == {"scheduled_backup": "2026-11-02T01:05:00-08:00"}
    finally:
        code, _ = daemon.stop()
    assert code == 0
