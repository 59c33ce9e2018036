"""The command line: parse arguments, call one function, map errors to exit codes.

Exit codes (also in the README): 0 success; 1 the job failed; 2 bad
configuration or usage; 3 refused (confirmation missing, unsafe target);
4 the service lock stayed busy; 5 aborted by a signal; 6 `ctl` reached no
daemon that would take the request (none listening, or busy), so nothing was
asked of it; 70 internal error.
"""

from __future__ import annotations

import argparse
import json
import signal
import sys
from collections.abc import Sequence

from service import catalog, jobs
from service.commands import CancelScope
from service.config import load_config
from service.errors import ServiceError
from service.log import configure_logging, register_secrets, scrub


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="fac-backup", description=__doc__.split("\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)

    run = sub.add_parser("run", help="run one job to completion (as `cf run-task` does)")
    run.add_argument("job", help="a job name; `fac-backup jobs` lists them")
    run.add_argument("args", nargs="*", help="the job's arguments (e.g. a BACKUP_ID)")
    run.add_argument("--confirm", metavar="SPACE/BINDING",
                     help="name what a restore overwrites: the cloud.gov space and the binding "
                          "(e.g. production/fac-db); the binding alone where no space is known")
    run.add_argument("--apply", action="store_true", help="make changes (jobs that dry-run by default)")
    run.add_argument("--force", action="store_true", help="override a safety limit the job names")

    lister = sub.add_parser("list", help="list the backups in the backups bucket")
    lister.add_argument("--json", action="store_true", help="machine-readable output")

    sub.add_parser("jobs", help="list the jobs of the registry")

    show = sub.add_parser("show", help="show a backup's manifest: tables, rows, bytes, times, versions; "
                                       "or, named fac-snapshot-db, whether the snapshot holds a whole copy")
    show.add_argument("backup_id", metavar="BACKUP_ID", help="an id as `list` prints it (e.g. daily-06-04), or the "
                      "snapshot binding's name (fac-snapshot-db) for its refresh state")
    show.add_argument("--json", action="store_true", help="machine-readable output")

    verify = sub.add_parser("verify", help="check a backup without restoring: sizes, sha256, pg_restore --list")
    verify.add_argument("backup_id", metavar="BACKUP_ID", help="an id as `list` prints it")

    report = sub.add_parser("report", help="the contingency report: backups, drills, restores, the data itself")
    report.add_argument("--since", metavar="DATE", help="first day (YYYY-MM-DD) or ISO time (default: 30 days "
                                                        "before --until)")
    report.add_argument("--until", metavar="DATE", help="last day, included (YYYY-MM-DD), or ISO time (default: now)")
    report.add_argument("--out", metavar="FILE", help="where to write the HTML (default: "
                                                      "contingency-report-SINCE-UNTIL.html here)")
    report.add_argument("--upload", action="store_true", help="also store it in the backups bucket beside the journal")

    demo = sub.add_parser("demo", help="run scheduled_backup on a throwaway PostgreSQL and local S3")
    demo.add_argument("--daemon", action="store_true", help="start the daemon on the sandbox instead")
    demo.add_argument("--rows", type=int, default=5000, help="rows of the main sample table")

    sub.add_parser("daemon", help="the always-on service: schedule, metrics on $PORT, control socket")

    ctl = sub.add_parser("ctl", help="talk to the running daemon over its control socket")
    ctl.add_argument("--socket", metavar="PATH", help="the socket (default: FAC_BACKUP_CONTROL_SOCKET)")
    ctl_sub = ctl.add_subparsers(dest="ctl_command", required=True)
    ctl_sub.add_parser("status", help="running jobs and the last outcome of each job")
    ctl_sub.add_parser("jobs", help="next run time of each schedule")
    trigger = ctl_sub.add_parser("trigger", help="start a job in the daemon now")
    trigger.add_argument("job")
    trigger.add_argument("args", nargs="*")
    trigger.add_argument("--confirm", metavar="SPACE/BINDING",
                         help="as for run: the space and the protected binding (e.g. production/fac-db)")
    trigger.add_argument("--apply", action="store_true")
    trigger.add_argument("--force", action="store_true")
    ctl_sub.add_parser("pause", help="stop firing the schedules (a running job goes on)")
    ctl_sub.add_parser("resume", help="fire the schedules again")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    ns = parser.parse_args(argv)
    handler = COMMANDS[ns.command]
    try:
        return handler(ns)
    except ServiceError as exc:
        print_error(exc)
        return exc.exit_code


def print_error(exc: ServiceError) -> None:
    """A readable error on stderr; secrets scrubbed like the log."""
    print(f"error: {scrub(exc.message)}", file=sys.stderr)
    if exc.detail:
        print(scrub(exc.detail), file=sys.stderr)
    if exc.hint:
        print(f"hint: {scrub(exc.hint)}", file=sys.stderr)


def install_signal_handlers(scope: CancelScope) -> None:
    """SIGTERM/SIGINT cancel the running job: its programs are killed and uploads aborted."""
    def handler(signum, _frame):
        scope.cancel(f"received {signal.Signals(signum).name}")
    signal.signal(signal.SIGTERM, handler)
    signal.signal(signal.SIGINT, handler)


def cmd_run(ns) -> int:
    jobs.get_job(ns.job)  # an unknown job is a usage error before configuration is read
    config = load_config()
    register_secrets(config.secrets())
    configure_logging(config.settings.log_format, sys.stdout)
    scope = CancelScope()
    install_signal_handlers(scope)
    options = {"confirm": ns.confirm, "apply": ns.apply, "force": ns.force}
    # On a terminal a live bar shows each long step; elsewhere (cf run-task, pipes) step.progress events do.
    progress = jobs.progress_for(config.settings, display=sys.stderr.isatty())
    result = jobs.run_job(config, ns.job, tuple(ns.args), options=options, scope=scope, trigger="cli",
                          progress=progress)
    if result.error is not None:
        print_error(result.error)
    return result.exit_code


def cmd_list(ns) -> int:
    config = load_config()
    register_secrets(config.secrets())
    configure_logging(config.settings.log_format, sys.stderr)
    from service.storage import S3ObjectStore

    backups = catalog.list_backups(S3ObjectStore(config.backups))
    if ns.json:
        rows = [{"id": b.id, "job": b.job, "started_at": b.started_at, "finished_at": b.finished_at,
                 "complete": b.complete, "legacy": b.legacy, "tables": b.tables, "bytes": b.bytes}
                for b in backups]
        print(json.dumps(rows, indent=2))
        return 0
    width = max([32, *(len(b.id) for b in backups)])  # the old tool's ids hold a full ISO stamp
    print(f"{'ID':<{width}} {'JOB':<18} {'STARTED':<26} {'STATE':<10} {'TABLES':>6} {'BYTES':>14}")
    for b in backups:
        state = "complete" if b.complete else ("LEGACY" if b.legacy else "INCOMPLETE")
        print(f"{b.id:<{width}} {b.job or '-':<18} {b.started_at or '-':<26} {state:<10} {b.tables:>6} "
              f"{b.bytes:>14,}")
    return 0


def cmd_show(ns) -> int:
    from service.inspection import show_backup

    jobs.check_text("BACKUP_ID", ns.backup_id, jobs.ID_HINT)  # as a job's argument is checked
    return show_backup(ns.backup_id, ns.json)


def cmd_verify(ns) -> int:
    from service.inspection import verify_backup_command

    jobs.check_text("BACKUP_ID", ns.backup_id, jobs.ID_HINT)
    return verify_backup_command(ns.backup_id)



def cmd_jobs(_ns) -> int:
    for spec in sorted(jobs.JOBS.values(), key=lambda s: s.name):
        usage = " ".join([spec.name, *spec.arguments, *(f"[{a}]" for a in spec.optional_arguments)])
        steps = " -> ".join(spec.steps)
        print(f"{usage:<28} {steps:<44} {spec.description}")
    return 0


def cmd_report(ns) -> int:
    from service.storage import S3ObjectStore
    from service.tasks.report import report_command

    config = load_config()
    register_secrets(config.secrets())
    configure_logging(config.settings.log_format, sys.stderr)
    return report_command(ns, config, S3ObjectStore(config.backups))


def cmd_demo(ns) -> int:
    from service.demo import run_demo

    return run_demo(daemon=ns.daemon, rows=ns.rows)




def cmd_daemon(_ns) -> int:
    from service.daemon import run_daemon

    config = load_config()
    register_secrets(config.secrets())
    configure_logging(config.settings.log_format, sys.stdout)
    return run_daemon(config)


def cmd_ctl(ns) -> int:
    from service.config import control_socket_path
    from service.control import send_request

    request: dict = {"command": ns.ctl_command}
    if ns.ctl_command == "trigger":
        request.update(job=ns.job, args=list(ns.args),
                       options={"confirm": ns.confirm, "apply": ns.apply, "force": ns.force})
    reply = send_request(ns.socket or control_socket_path(), request)
    if not reply.get("ok"):
        print_error(ServiceError(reply.get("error") or "the daemon refused the request",
                                 detail=reply.get("detail") or "", hint=reply.get("hint") or ""))
        return int(reply.get("exit_code") or 1)
    reply.pop("ok")
    print(json.dumps(reply, indent=2, default=str))
    return 0


COMMANDS = {
    "run": cmd_run,
    "list": cmd_list,
    "jobs": cmd_jobs,
    "show": cmd_show,
    "verify": cmd_verify,
    "report": cmd_report,
    "demo": cmd_demo,
    "daemon": cmd_daemon,
    "ctl": cmd_ctl,
}
