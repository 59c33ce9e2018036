"""Every Prometheus metric of the service, in one place.

Names are a public contract (alert rules in deploy/prometheus-alerts.yml use
them). Labels come only from bounded sets: job, outcome, reason, and table
(bounded by the table manifest); never a backup id. The registry is injectable
so tests never share the global one.

Last-success times and last-backup figures are rebuilt from the manifests in
the backups bucket (`observe_backups`), so runs made by one-off tasks in other
containers show up too; a gauge only ever moves forward in time.
"""

from __future__ import annotations

import platform
import threading
from datetime import datetime

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

from service.refresh_record import STATES

OUTCOMES = ("success", "failure", "skipped", "aborted")
SKIP_REASONS = ("lock_busy", "already_running", "missed")
NOTIFY_CHANNELS = ("webhook", "email")  # fac_backup_notifications_total{channel}
DURATION_BUCKETS = (10, 30, 60, 120, 300, 600, 1200, 1800, 3600, 7200, 10800, 14400)
START_TASKS = ("catalog", "bucket_rules")


def _version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("fac-backup")
    except PackageNotFoundError:
        return "unknown"


class Metrics:
    """The service's metrics, registered on one registry."""

    def __init__(self, job_names: tuple[str, ...], registry: CollectorRegistry | None = None):
        self.registry = registry if registry is not None else CollectorRegistry(auto_describe=True)
        r = self.registry
        self._last_success: dict[str, float] = {}
        self._versions: dict[str, tuple[str, str]] = {}
        self._versions_lock = threading.Lock()
        self.job_runs = Counter(
            "fac_backup_job_runs", "Job runs by outcome.", ["job", "outcome"], registry=r
        )
        self.job_duration = Histogram(
            "fac_backup_job_duration_seconds",
            "Wall time of job runs.",
            ["job"],
            buckets=DURATION_BUCKETS,
            registry=r,
        )
        self.job_last_success = Gauge(
            "fac_backup_job_last_success_timestamp_seconds",
            "Unix time at which the job last finished successfully (0: never), from the bucket "
            "and this process.",
            ["job"],
            registry=r,
        )
        self.job_running = Gauge(
            "fac_backup_job_running", "1 while the job runs in this process.", ["job"], registry=r
        )
        self.job_next_run = Gauge(
            "fac_backup_job_next_run_timestamp_seconds",
            "Unix time of the job's next scheduled run (0: not scheduled or paused).",
            ["job"],
            registry=r,
        )
        self.job_skipped = Counter(
            "fac_backup_job_skipped", "Runs that did not happen, by reason.", ["job", "reason"],
            registry=r,
        )
        self.last_backup_bytes = Gauge(
            "fac_backup_last_backup_size_bytes", "Bytes of the newest complete backup of the job.",
            ["job"], registry=r,
        )
        self.last_backup_tables = Gauge(
            "fac_backup_last_backup_tables", "Tables in the newest complete backup of the job.",
            ["job"], registry=r,
        )
        self.table_rows = Gauge(
            "fac_backup_table_rows", "Rows per table at the last check_tables of this process.",
            ["table"], registry=r,
        )
        self.missing_tables = Gauge(
            "fac_backup_check_missing_tables",
            "Tables of the table manifest missing at the last check_tables of this process.",
            registry=r,
        )
        self.media_copied = Gauge(
            "fac_backup_media_sync_objects_copied",
            "Objects copied by the last media sync of this process.", registry=r,
        )
        self.schedule_paused = Gauge(
            "fac_backup_schedule_paused", "1 while the schedule is paused over the control socket.",
            registry=r,
        )
        self.catalog_refreshed = Gauge(
            "fac_backup_catalog_refresh_timestamp_seconds",
            "Unix time of the last successful read of the backups bucket's manifests.", registry=r,
        )
        self.prune_backups = Gauge(
            "fac_backup_prune_backups",
            "Backups kept and deleted by the last applied prune_backups of this process.",
            ["decision"], registry=r,
        )
        self.prune_bytes = Gauge(
            "fac_backup_prune_bytes",
            "Bytes kept and deleted by the last applied prune_backups of this process.",
            ["decision"], registry=r,
        )
        self._last_verified = 0.0
        self.last_verified = Gauge(
            "fac_backup_last_verified_backup_timestamp_seconds",
            "Unix start time of the newest backup a successful verify_backup proved restorable, in this "
            "process or (read from the bucket's verified.json records) before it (0: none).", registry=r,
        )
        self.notifications = Counter(
            "fac_backup_notifications", "Notifications by channel (webhook, email) and outcome (sent, failed).",
            ["outcome", "channel"], registry=r,
        )
        self.job_progress_bytes = Gauge(
            "fac_backup_job_progress_bytes",
            "Bytes the running step of the job has moved so far (0 when it is not running).",
            ["job"], registry=r,
        )
        self.job_expected_bytes = Gauge(
            "fac_backup_job_expected_bytes",
            "Bytes the running step of the job expects to move, where known (0: not running or unknown).",
            ["job"], registry=r,
        )
        self.bucket_expiry_days = Gauge(
            "fac_backup_bucket_expiry_days",
            "Days after which the backups bucket's lifecycle rule deletes a backup's objects "
            "(0: no rule, or unknown).", registry=r,
        )
        self.retention_longest_days = Gauge(
            "fac_backup_retention_longest_days",
            "The longest age to which the retention's age rules keep a backup.", registry=r,
        )
        self.bucket_expiring_backups = Gauge(
            "fac_backup_bucket_expiring_kept_backups",
            "Complete backups the retention keeps that the bucket's expiry will delete first.", registry=r,
        )
        self.database_version = Gauge(
            "fac_backup_database_version_info",
            "Always 1 per database binding: the server's PostgreSQL version and the version of the "
            "installed client of that major that operations on it use (client_version=\"none\": "
            "no installed client serves it).",
            ["binding", "server_version", "client_version"], registry=r,
        )
        # Stalls: a running job that moves nothing, steps the watchdog stopped, and what the
        # daemon's start still waits for from the bucket.
        self.job_idle_seconds = Gauge(
            "fac_backup_job_idle_seconds",
            "Seconds since the running step of the job last moved a byte, finished a table or object, "
            "or had the server working for it (0 when it is not running).",
            ["job"], registry=r,
        )
        self.job_stall_count = Counter(
            "fac_backup_job_stalls",
            "Steps of the job stopped by the stall watchdog (FAC_BACKUP_STALL_SECONDS without motion).",
            ["job"], registry=r,
        )
        self.start_pending = Gauge(
            "fac_backup_start_pending",
            "1 while a read of the backups bucket that the daemon's start needs has not succeeded yet "
            "(task: catalog, the first listing and the catch-up decision; bucket_rules, the lifecycle rules).",
            ["task"], registry=r,
        )
        for task in START_TASKS:
            self.start_pending.labels(task=task).set(0)
        for decision in ("keep", "delete"):
            self.prune_backups.labels(decision=decision).set(0)
            self.prune_bytes.labels(decision=decision).set(0)
        for outcome in ("sent", "failed"):
            for channel in NOTIFY_CHANNELS:
                self.notifications.labels(outcome=outcome, channel=channel)
        # The run journal and the integrity watch (service.journal, service.integrity).
        self.journal_writes = Counter(
            "fac_backup_journal_writes",
            "Run journal records written to the backups bucket, and writes that failed or timed out.",
            ["outcome"], registry=r,
        )
        self.rows_dropped_tables = Gauge(
            "fac_backup_rows_dropped_tables",
            "Tables the newest complete backup found shrunk beyond FAC_BACKUP_SHRINK_THRESHOLD_PERCENT "
            "against the backup before it (0: clean, acknowledged, or nothing to compare).", registry=r,
        )
        for outcome in ("written", "failed"):
            self.journal_writes.labels(outcome=outcome)
        self.rows_dropped_tables.set(0)
        # The disks (service.space, service.space_watch): sizes, storage, room needed, the snapshot's state
        self.database_size = Gauge(
            "fac_backup_database_size_bytes",
            "Size of the bound database (pg_database_size) at the daemon's last look (0: not read yet).",
            ["binding"], registry=r,
        )
        self.database_storage = Gauge(
            "fac_backup_database_storage_bytes",
            "Allocated storage of the binding's server, from FAC_BACKUP_*_STORAGE_GB (GiB; 0: not set).",
            ["binding"], registry=r,
        )
        self.space_required = Gauge(
            "fac_backup_space_required_bytes",
            "Storage the operation needs on the binding's server, as its own check computes it: "
            "operation=\"snapshot_refresh\", the next db_to_db in place (one copy and WAL room); "
            "operation=\"restore\", an s3_restore of the newest backup (both copies and WAL room, "
            "with 10% headroom). 0: not known yet.",
            ["operation", "binding"], registry=r,
        )
        self.snapshot_state = Gauge(
            "fac_backup_snapshot_refresh_state",
            "1 for the state of fac-snapshot-db's refresh record (complete, refreshing, interrupted, failed, "
            "unknown), 0 for the others.", ["state"], registry=r,
        )
        self.space_checked = Gauge(
            "fac_backup_space_check_timestamp_seconds",
            "Unix time of the daemon's last successful look at the databases' sizes.", registry=r,
        )
        self.observe_snapshot_state("unknown")
        self.build_info = Gauge(
            "fac_backup_build_info", "Always 1; the labels tell the build.", ["version", "python"],
            registry=r,
        )
        self.build_info.labels(version=_version(), python=platform.python_version()).set(1)
        for job in job_names:
            for outcome in OUTCOMES:
                self.job_runs.labels(job=job, outcome=outcome)
            for reason in SKIP_REASONS:
                self.job_skipped.labels(job=job, reason=reason)
            self.job_duration.labels(job=job)
            self.job_running.labels(job=job).set(0)
            self.job_last_success.labels(job=job).set(0)
            self.job_progress(job, 0, 0)
            self.job_idle_seconds.labels(job=job).set(0)
            self.job_stall_count.labels(job=job)

    def init_disks(self, storage: dict[str, int], required: dict[str, str]) -> None:
        """Pre-initialise the disk series: binding -> known storage bytes (0: unknown), and
        operation -> the binding it needs room on."""
        for binding, size in storage.items():
            self.database_storage.labels(binding=binding).set(size)
            self.database_size.labels(binding=binding).set(0)
        for operation, binding in required.items():
            self.space_required.labels(operation=operation, binding=binding).set(0)

    def job_started(self, job: str) -> None:
        """A run of `job` began in this process."""
        self.job_running.labels(job=job).set(1)

    def job_finished(self, job: str, outcome: str, duration_seconds: float,
                     finished_at: float) -> None:
        """A run of `job` ended with `outcome` (one of OUTCOMES)."""
        self.job_running.labels(job=job).set(0)
        self.job_runs.labels(job=job, outcome=outcome).inc()
        if outcome in ("success", "failure", "aborted"):
            self.job_duration.labels(job=job).observe(duration_seconds)
        if outcome == "success":
            self._advance(job, finished_at)

    def job_progress(self, job: str, done_bytes: int, expected_bytes: int) -> None:
        """The running step's bytes so far and expected (both 0 once it ends)."""
        self.job_progress_bytes.labels(job=job).set(done_bytes)
        self.job_expected_bytes.labels(job=job).set(expected_bytes)

    def observe_bucket_expiry(self, expiry_days: int, longest_days: int, at_risk: int) -> None:
        """The bucket's expiry against the retention (service.bucket_rules)."""
        self.bucket_expiry_days.set(expiry_days)
        self.retention_longest_days.set(longest_days)
        self.bucket_expiring_backups.set(at_risk)

    def run_skipped(self, job: str, reason: str, *, counted: bool) -> None:
        """A run of `job` did not happen for `reason` (SKIP_REASONS).

        `counted` says whether run_job already counted it as a `skipped` run.
        """
        self.job_skipped.labels(job=job, reason=reason).inc()
        if not counted:
            self.job_runs.labels(job=job, outcome="skipped").inc()

    def observe_steps(self, steps) -> None:
        """Figures of a finished run's steps (jobs.StepResult) that operators watch."""
        for step in steps:
            figures = step.figures or {}
            if step.name == "check_tables" and "counts" in figures:
                self.table_rows.clear()
                for table, rows in figures["counts"].items():
                    self.table_rows.labels(table=table).set(rows)
                self.missing_tables.set(len(figures.get("missing", ())))
            elif step.name == "media_sync" and step.outcome == "success":
                self.media_copied.set(int(figures.get("copied", 0)))
            elif step.name == "prune_backups" and step.outcome == "success" and figures.get("applied"):
                for decision, count, size in (("keep", "kept", "kept_bytes"), ("delete", "deleted", "deleted_bytes")):
                    self.prune_backups.labels(decision=decision).set(int(figures.get(count, 0)))
                    self.prune_bytes.labels(decision=decision).set(int(figures.get(size, 0)))
            elif step.name == "verify_backup" and step.outcome == "success":
                started = parse_timestamp(figures.get("backup_started_at", ""))
                if started is not None:
                    self._advance_verified(started)

    def set_database_versions(self, versions: dict[str, tuple[str, str]]) -> None:
        """binding -> (server version, client version or "none"); bindings not given keep their series."""
        with self._versions_lock:
            for binding, labels in versions.items():
                old = self._versions.get(binding)
                if old is not None and old != labels:
                    self.database_version.remove(binding, *old)
                self._versions[binding] = labels
                self.database_version.labels(binding=binding, server_version=labels[0],
                                             client_version=labels[1]).set(1)

    def notification_finished(self, outcome: str, channel: str = "webhook") -> None:
        """A notification ended on `channel` (webhook, email): `sent` or `failed`."""
        self.notifications.labels(outcome=outcome, channel=channel).inc()

    def observe_backups(self, summaries, now: float) -> None:
        """Rebuild last-success and last-backup figures from complete manifests in the bucket."""
        newest: dict[str, tuple[float, object]] = {}
        for summary in summaries:
            manifest = getattr(summary, "manifest", None)
            if not summary.complete or manifest is None or not manifest.job:
                continue
            finished = parse_timestamp(manifest.finished_at)
            if finished is None:
                continue
            if manifest.job not in newest or finished > newest[manifest.job][0]:
                newest[manifest.job] = (finished, manifest)
        for job, (finished, manifest) in newest.items():
            self._advance(job, finished)
            self.last_backup_bytes.labels(job=job).set(manifest.total_bytes)
            self.last_backup_tables.labels(job=job).set(len(manifest.tables))
        # A drill's record survives restarts: the freshness alert keeps its memory.
        for summary in summaries:
            manifest = getattr(summary, "manifest", None)
            if summary.complete and manifest is not None and getattr(summary, "verified_at", ""):
                started = parse_timestamp(manifest.started_at)
                if started is not None:
                    self._advance_verified(started)
        self.catalog_refreshed.set(now)

    def set_next_runs(self, next_runs: dict[str, datetime | None]) -> None:
        """Next fire time per scheduled job; None (paused) exports 0."""
        for job, when in next_runs.items():
            self.job_next_run.labels(job=job).set(when.timestamp() if when else 0)

    def _advance_verified(self, started: float) -> None:
        """The newest backup proved restorable; a drill of an older one does not move it back."""
        if started > self._last_verified:
            self._last_verified = started
            self.last_verified.set(started)

    def _advance(self, job: str, value: float) -> None:
        # A manifest read late must not move a newer in-process success backwards.
        if value > self._last_success.get(job, 0.0):
            self._last_success[job] = value
            self.job_last_success.labels(job=job).set(value)

    def observe_disks(self, sizes: dict[str, int], required: dict[tuple[str, str], int],
                      now: float | None) -> None:
        """A look at the disks: binding -> database bytes, (operation, binding) -> storage needed;
        `now` when every database could be read."""
        for binding, size in sizes.items():
            self.database_size.labels(binding=binding).set(size)
        for (operation, binding), needed in required.items():
            self.space_required.labels(operation=operation, binding=binding).set(needed)
        if now is not None:
            self.space_checked.set(now)

    def observe_snapshot_state(self, state: str) -> None:
        """fac-snapshot-db's refresh state (service.refresh_record.STATES): 1 for it, 0 for the rest."""
        for known in STATES:
            self.snapshot_state.labels(state=known).set(1 if known == state else 0)


    def journal_write(self, outcome: str) -> None:
        """A run journal write ended: `written` or `failed` (including timed out)."""
        self.journal_writes.labels(outcome=outcome).inc()

    def observe_rows_dropped(self, tables: int) -> None:
        """Tables flagged by the newest complete backup, unless acknowledged (service.integrity)."""
        self.rows_dropped_tables.set(tables)


    # Stalls
    def job_idle(self, job: str, seconds: float) -> None:
        """How long the running step of `job` has moved nothing (0 once it ends)."""
        self.job_idle_seconds.labels(job=job).set(round(seconds, 1))

    def step_stalled(self, job: str) -> None:
        """The watchdog stopped a step of `job`."""
        self.job_stall_count.labels(job=job).inc()

    def set_start_pending(self, task: str, pending: bool) -> None:
        """A start-up read of the bucket (START_TASKS) is still pending, or done."""
        self.start_pending.labels(task=task).set(1 if pending else 0)


def parse_timestamp(text: str) -> float | None:
    """Unix time of an ISO 8601 string with offset, or None when unreadable."""
    try:
        when = datetime.fromisoformat(text)
    except (TypeError, ValueError):
        return None
    return when.timestamp() if when.tzinfo is not None else None
