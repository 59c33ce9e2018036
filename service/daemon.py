"""`python -m service daemon`: the always-on process and its lifecycle.

Start: read the schedules (a bad cron stops here, before anything runs), serve
/metrics and /healthz on $PORT, open the control socket, start the scheduler,
and say so: /healthz answers 200 from then on, whatever S3 does. In the
background (`StartupReads`), rebuild the metrics from the manifests in the
backups bucket and run a catch-up scheduled_backup when a slot was missed
while the app was down, and read the bucket's lifecycle rules; until each
succeeds, `daemon.start_pending` says what waits and why, and
fac_backup_start_pending{task} is 1. A silent S3 never keeps the daemon from
starting (cloud.gov would restart it after 180 s, with no cause stated).

Run: the scheduler fires jobs through the Runner (jobs.run_job, the safe
boundary); every `metrics_refresh_seconds` the bucket's manifests are read
again, so runs made by `cf run-task` in other containers show in the gauges.

Stop (SIGTERM from `cf stop` or a redeploy, SIGINT on a terminal): stop
scheduling, cancel the running jobs (their pg_dump process groups are killed,
S3 requests in flight interrupted, uploads aborted, no manifest written),
interrupt the housekeeping reads of the bucket, close the socket and the HTTP
server and exit 0, inside cloud.gov's 10-second grace before SIGKILL.
"""

from __future__ import annotations

import os
import signal
import sys
import threading
import time
from datetime import datetime

from prometheus_client import CollectorRegistry

from service import catalog, clients, integrity, jobs, layout
from service.bucket_rules import BucketRulesWatcher
from service.control import ControlServer
from service.daemon_runs import Runner
from service.errors import BackupNotFoundError, IntegrityError, ObjectNotFoundError, ServiceError
from service.httpserver import MetricsServer
from service.log import get_logger
from service.metrics import Metrics, parse_timestamp
from service.scheduler import JobScheduler, follow_up, needs_catch_up, parse_schedules
from service.space_watch import SpaceWatcher
from service.storage import S3ObjectStore
from service.tasks.prune import read_records

STOP_WAIT_SECONDS = 7.0  # of cloud.gov's 10: leaves room to close sockets and flush logs
BUCKET_RULES_SECONDS = 86400.0  # cloud.gov may change the bucket's lifecycle rule at any time


class CatalogWatcher:
    """Reads the backups bucket's manifests into the metrics; manifests never change, so
    each is read once and later refreshes only list the backup prefixes."""

    def __init__(self, store, metrics: Metrics) -> None:
        self.store = store
        self.metrics = metrics
        self.known: dict[str, catalog.BackupSummary] = {}
        self._lock = threading.Lock()  # the periodic tick and the end of a run may overlap
        self.log = get_logger(component="catalog")

    def first_listing(self) -> list[catalog.BackupSummary]:
        """Every backup (catalog.list_backups); seeds the cache and the gauges."""
        with self._lock:  # the periodic tick may run meanwhile: the start-up read is in the background
            summaries = catalog.list_backups(self.store)
            self.known = {s.id: s for s in summaries if s.complete}
            self.metrics.observe_backups(summaries, time.time())
        self.observe_integrity(summaries)
        return summaries

    def observe_integrity(self, summaries) -> None:
        """fac_backup_rows_dropped_tables from the newest complete backup: its flagged tables
        unless acknowledged (one HEAD per refresh, only while it is flagged)."""
        complete = [s for s in summaries if s.complete and s.manifest is not None]
        newest = max(complete, key=lambda s: (s.started_at, s.id), default=None)
        dropped = integrity.dropped_tables(newest.manifest) if newest is not None else []
        if dropped and not newest.acknowledged_at:
            try:
                self.store.head(layout.acknowledged_key(newest.id))
                dropped = []
            except ObjectNotFoundError:
                pass
        elif newest is not None and newest.acknowledged_at:
            dropped = []
        self.metrics.observe_rows_dropped(len(dropped))

    def newest_complete(self) -> catalog.Manifest | None:
        """The manifest of the newest complete backup seen (a restore of it is what the disk gauges
        size)."""
        with self._lock:
            manifests = [s.manifest for s in self.known.values() if s.complete and s.manifest is not None]
        return max(manifests, key=lambda m: (parse_timestamp(m.started_at) or 0.0, m.id), default=None)

    def refresh(self) -> None:
        """Read manifests that appeared since the last look; never raises."""
        with self._lock:
            self._refresh()

    def _refresh(self) -> None:
        try:
            ids = [p[len(layout.BACKUPS_PREFIX):].rstrip("/")
                   for p in self.store.list_prefixes(layout.BACKUPS_PREFIX) if p not in layout.RESERVED_PREFIXES]
            for backup_id in ids:
                if backup_id in self.known:
                    continue
                try:
                    m = catalog.read_manifest(self.store, backup_id)
                except BackupNotFoundError:
                    continue  # still being written, or a failed run being cleaned up
                except IntegrityError:
                    m = None
                self.known[backup_id] = catalog.BackupSummary(
                    backup_id, m is not None, m.job if m else "", m.started_at if m else "",
                    m.finished_at if m else "", len(m.tables) if m else 0,
                    m.total_bytes if m else 0, m)
            self.known = {k: v for k, v in self.known.items() if k in set(ids)}
            self.metrics.observe_backups(list(self.known.values()), time.time())
            self.observe_integrity(list(self.known.values()))
        except ServiceError as exc:
            self.log.warning("catalog.refresh_failed", error=exc.message, detail=exc.detail)
        except Exception:  # noqa: BLE001 - housekeeping must never stop the daemon
            self.log.exception("catalog.refresh_crashed")


def newest_started(summaries, kind: str) -> datetime | None:
    """Start time of the newest complete backup whose id is of `kind` (layout.id_kind)."""
    times = [datetime.fromisoformat(s.started_at) for s in summaries
             if s.complete and s.started_at and layout.id_kind(s.id) == kind]
    return max(times, default=None)


def run_scheduled(runner: Runner, job: str, settings) -> None:
    """One scheduled fire: the job, then the run its outcome calls for (scheduler.follow_up:
    prune_backups --apply after a successful daily_backup, nothing after a failed one)."""
    result = runner.run(job, trigger="scheduler")
    chained = follow_up(job, result.outcome if result is not None else "", settings)
    if chained is not None:
        runner.run(chained[0], options=chained[1], trigger="scheduler")


def run_daemon(config, *, store_factory=S3ObjectStore) -> int:
    """Run until SIGTERM/SIGINT; return the exit status (0 after a clean stop)."""
    log = get_logger(component="daemon")
    settings = config.settings
    triggers = parse_schedules(settings)  # ConfigError before anything is started
    metrics = Metrics(tuple(jobs.JOBS), registry=CollectorRegistry(auto_describe=True))
    watcher = CatalogWatcher(store_factory(config.backups), metrics)
    disks = SpaceWatcher(config, metrics, watcher.newest_complete, get_logger(component="space"))
    runner = Runner(config, metrics, after_run=watcher.refresh, store_factory=store_factory)
    stop, ready = threading.Event(), threading.Event()
    reason: list[str] = []

    def fire(job: str) -> None:
        metrics.set_next_runs(scheduler.next_runs())
        run_scheduled(runner, job, settings)

    scheduler = JobScheduler(settings.timezone, fire, runner.record_skip)
    for job, trigger in triggers.items():
        scheduler.add_cron(job, trigger)

    def on_signal(signum, _frame) -> None:
        reason.append(f"received {signal.Signals(signum).name}")
        stop.set()

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    http = MetricsServer(settings.http_port, metrics.registry,
                         lambda: ready.is_set() and scheduler.running and not stop.is_set()).start()
    try:
        control = ControlServer(settings.control_socket,
                                build_control_handler(runner, scheduler, metrics, disks=disks.status)).start()
    except ServiceError:
        http.close()
        raise
    rules = BucketRulesWatcher(store_factory(config.backups), settings, metrics, log,
                               read_records=read_records)
    startup = StartupReads(config, scheduler, watcher, rules, triggers, metrics, log, stop)
    try:
        scheduler.start()
        scheduler.add_interval("bucket-rules", BUCKET_RULES_SECONDS, rules.refresh)

        def tick() -> None:
            watcher.refresh()
            metrics.set_next_runs(scheduler.next_runs())

        # The first look in the background: an unreachable database must not delay /healthz.
        threading.Thread(target=observe_versions, args=(config, metrics, log), name="versions",
                         daemon=True).start()
        scheduler.add_interval("refresh-metrics", settings.metrics_refresh_seconds, tick)
        # Apart from the catalog's tick: a database that does not answer (30 s connect timeout)
        # must not hold up the other gauges.
        scheduler.add_interval("refresh-versions", settings.metrics_refresh_seconds,
                               lambda: observe_versions(config, metrics, log))
        # The disks likewise: sizes, the room a refresh and a restore need, the snapshot's state.
        threading.Thread(target=disks.refresh, name="disks", daemon=True).start()
        scheduler.add_interval("refresh-disks", settings.metrics_refresh_seconds, disks.refresh)
        metrics.set_next_runs(scheduler.next_runs())
        ready.set()  # /healthz says 200 from here: scheduled, socket open; the bucket is read next
        log.info("daemon.started", port=settings.http_port, socket=str(settings.control_socket),
                 timezone=str(settings.timezone),
                 schedules={job: str(t) for job, t in triggers.items()}, pending=list(startup.pending))
        startup.start()
        stop.wait()
    finally:
        why = reason[0] if reason else "stopping"
        log.info("daemon.stopping", reason=why)
        scheduler.shutdown()
        cancelled = runner.cancel_all(why)
        for store in (watcher.store, rules.store):  # housekeeping reads blocked on a silent S3
            store.interrupt(why)
        control.close()
        idle = runner.wait_idle(STOP_WAIT_SECONDS)
        http.close()
        log.info("daemon.stopped", cancelled=cancelled, clean=idle)
    if not idle:
        # A run ignored its cancel; cloud.gov would SIGKILL us anyway: leave now, cleanly logged.
        sys.stdout.flush()
        os._exit(0)
    return 0


def observe_versions(config, metrics: Metrics, log) -> None:
    """Each database's server version and the client serving it, into the metrics; never raises."""
    try:
        metrics.set_database_versions(clients.read_versions(config, log))
    except Exception:  # noqa: BLE001 - housekeeping must never stop the daemon
        log.exception("versions.refresh_crashed")


class StartupReads:
    """The start's reads of the backups bucket, on a thread of their own, retried until they succeed.

    `catalog`: the first listing (the gauges) and the catch-up decision, which is made once
    the listing arrives, however late. `bucket_rules`: the lifecycle rules against the
    retention. While one is pending its gauge is 1; each failure logs `daemon.start_pending`
    with the error, and the read is tried again after `retry_seconds`.
    """

    def __init__(self, config, scheduler: JobScheduler, watcher: CatalogWatcher, rules, triggers,
                 metrics: Metrics, log, stop: threading.Event, retry_seconds: float | None = None) -> None:
        self.config, self.scheduler, self.watcher, self.rules = config, scheduler, watcher, rules
        self.triggers, self.metrics, self.log, self.stop = triggers, metrics, log, stop
        self.retry_seconds = retry_seconds or min(60.0, config.settings.metrics_refresh_seconds)
        self.pending = {"catalog": self._read_catalog, "bucket_rules": self._read_rules}
        for task in self.pending:
            metrics.set_start_pending(task, True)

    def start(self) -> None:
        threading.Thread(target=self._run, name="startup-reads", daemon=True).start()

    def _run(self) -> None:
        while self.pending and not self.stop.is_set():
            for task, read in list(self.pending.items()):
                try:
                    read()
                except ServiceError as exc:
                    self.log.warning("daemon.start_pending", task=task, error=exc.message, detail=exc.detail,
                                     pending=sorted(self.pending), retry_seconds=self.retry_seconds,
                                     hint="the daemon is up and scheduling; "
                                          + PENDING_WHY[task] + " once the backups bucket answers")
                    continue
                except Exception:  # noqa: BLE001 - housekeeping must never stop the daemon
                    self.log.exception("daemon.start_read_crashed", task=task)
                    continue
                del self.pending[task]
                self.metrics.set_start_pending(task, False)
            if self.pending:
                self.stop.wait(self.retry_seconds)

    def _read_catalog(self) -> None:
        catch_up(self.config, self.scheduler, self.watcher, self.triggers, self.log)

    def _read_rules(self) -> None:
        if self.rules.refresh() is None:  # it logged why (bucket.rules_check_failed)
            raise ServiceError("the backups bucket's lifecycle rules could not be read")


PENDING_WHY = {"catalog": "the gauges from the bucket and the catch-up decision follow",
               "bucket_rules": "the check of the bucket's expiry against the retention follows"}


def catch_up(config, scheduler: JobScheduler, watcher: CatalogWatcher, triggers, log) -> None:
    """Rebuild the gauges from the bucket; queue a scheduled_backup if a slot was missed.
    Raises the listing's ServiceError (nothing is decided without it)."""
    summaries = watcher.first_listing()
    trigger = triggers.get("scheduled_backup")
    if not config.settings.catch_up or trigger is None:
        return
    newest = newest_started(summaries, "scheduled")
    now = datetime.now(config.settings.timezone)
    if needs_catch_up(trigger, newest, now):
        log.info("daemon.catch_up", job="scheduled_backup",
                 newest=newest.isoformat() if newest else None)
        scheduler.run_now("scheduled_backup", "catch-up")


def build_control_handler(runner: Runner, scheduler: JobScheduler, metrics: Metrics, *, disks=None):
    """The daemon's answers to control-socket requests (see service.control); `disks` gives the last
    look at the databases' space and the snapshot's state, for `status`."""
    log = get_logger(component="control")
    state = {"paused": False}

    def handle(request: dict) -> dict:
        command = request["command"]
        if command == "status":
            return {"scheduler_running": scheduler.running,
                    "paused": state["paused"], **runner.status(),
                    **({"disks": disks()} if disks is not None else {})}
        if command == "jobs":
            return {"next_runs": {job: when.isoformat() if when else None
                                  for job, when in scheduler.next_runs().items()},
                    "jobs": sorted(jobs.JOBS)}
        if command == "trigger":
            # Options go through as sent: jobs.validate_request refuses unknown ones and wrong types.
            run_id = runner.submit(request["job"], tuple(request["args"]), request["options"])
            log.info("control.triggered", job=request["job"], run_id=run_id)
            return {"accepted": True, "job": request["job"], "run_id": run_id}
        paused = state["paused"] = command == "pause"
        scheduler.pause() if paused else scheduler.resume()
        metrics.schedule_paused.set(1 if paused else 0)
        metrics.set_next_runs(scheduler.next_runs())
        log.info("control.paused" if paused else "control.resumed")
        return {"paused": paused}

    return handle
