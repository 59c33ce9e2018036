"""Every Prometheus metric of the service, in one place.

Names are a public contract (alert rules in deploy/prometheus-alerts.yml use
them). Labels come only from bounded sets: job, step, outcome, reason; never a
backup id. The registry is injectable so tests never share the global one.
"""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

OUTCOMES = ("success", "failure", "skipped", "aborted")
DURATION_BUCKETS = (10, 30, 60, 120, 300, 600, 1200, 1800, 3600, 7200, 10800, 14400)


class Metrics:
    """The service's metrics, registered on one registry."""

    def __init__(self, job_names: tuple[str, ...], registry: CollectorRegistry | None = None):
        self.registry = registry if registry is not None else CollectorRegistry(auto_describe=True)
        r = self.registry
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
            "Unix time at which the job last finished successfully.",
            ["job"],
            registry=r,
        )
        self.job_running = Gauge(
            "fac_backup_job_running", "1 while the job runs in this process.", ["job"], registry=r
        )
        for job in job_names:
            for outcome in OUTCOMES:
                self.job_runs.labels(job=job, outcome=outcome)
            self.job_duration.labels(job=job)
            self.job_running.labels(job=job).set(0)

    def job_started(self, job: str) -> None:
        """A run of `job` began in this process."""
        self.job_running.labels(job=job).set(1)

    def job_finished(self, job: str, outcome: str, duration_seconds: float, finished_at: float) -> None:
        """A run of `job` ended with `outcome` (one of OUTCOMES)."""
        self.job_running.labels(job=job).set(0)
        self.job_runs.labels(job=job, outcome=outcome).inc()
        if outcome in ("success", "failure", "aborted"):
            self.job_duration.labels(job=job).observe(duration_seconds)
        if outcome == "success":
            self.job_last_success.labels(job=job).set(finished_at)
