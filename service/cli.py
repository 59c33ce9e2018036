"""The command line: parse arguments, call one function, map errors to exit codes.

Exit codes (also in `--help` and docs/operations.md): 0 success; 1 the job failed; 2 bad
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
import textwrap
from collections.abc import Sequence

from service import catalog, jobs
from service.commands import CancelScope
from service.config import load_config
from service.errors import ServiceError
from service.log import configure_logging, register_secrets, scrub

PROGRAM = "python -m service"

ABOUT = """\
fac-backup keeps the Federal Audit Clearinghouse's database (fac-db) and its media bucket backed up
in the backups bucket on cloud.gov, refreshes the snapshot database (fac-snapshot-db), and restores
either when something goes wrong. On cloud.gov it runs as one app: `daemon` fires the schedules and
serves /metrics and /healthz; `run` does one job now (as `cf run-task` does); `ctl` talks to the
running daemon from `cf ssh`."""

EXAMPLES = """\
examples:
  python -m service list                                   the backups, newest first
  python -m service show scheduled-12-01-09                one backup: tables, rows, bytes, times
  python -m service verify scheduled-12-01-09              check it without restoring it
  python -m service run on_demand_backup                   back up now: dumps, snapshot, media
  python -m service run s3_restore scheduled-12-01-09 --confirm production/fac-db
  python -m service ctl status                             what the running daemon is doing
  python -m service report --since 2026-11-01 --upload     the contingency report for auditors

exit codes:
  0 success; 1 the job failed; 2 bad configuration or usage (nothing started); 3 refused: a
  protected target not confirmed, an unsafe request, or an id that could mean several backups
  (nothing touched); 4 the service lock stayed busy; 5 aborted by SIGTERM/SIGINT (partial work
  undone); 6 `ctl`: no daemon took the request; 70 internal error (a bug: the log has the trace).

`python -m service COMMAND --help` explains each command. The README and docs/ have the rest."""


RUN_EXAMPLES = """\
  python -m service run on_demand_backup
  python -m service run s3_restore scheduled-12-01-09 --confirm production/fac-db
  python -m service run prune_backups            (a dry run: says what it would delete)
  python -m service run prune_backups --apply
  cf run-task fac-backup --name on_demand_backup -m 1G -k 2G --command "python -m service run on_demand_backup\""""


def job_table(width: int = 100) -> str:
    """Every job of the registry: name and arguments, what it is for, and its steps when it has several."""
    lines = []
    for spec in sorted(jobs.JOBS.values(), key=lambda s: s.name):
        usage = " ".join([spec.name, *spec.arguments, *(f"[{a}]" for a in spec.optional_arguments)])
        text = spec.description + ("" if spec.steps == (spec.name,) else f" (steps: {' -> '.join(spec.steps)})")
        body = textwrap.wrap(text, width - 34, break_on_hyphens=False)
        if len(usage) > 30:
            lines.append(f"  {usage}")
        else:
            lines.append(f"  {usage:<30}  {body.pop(0)}")
        lines.extend(f"  {'':<30}  {more}" for more in body)
    return "\n".join(lines)


def _command(sub, name: str, summary: str, description: str, examples: str, *, before_examples: str = ""):
    """A subcommand whose help says what it does for an operator, then how to type it."""
    return sub.add_parser(name, help=summary, description=textwrap.fill(description, 100, break_on_hyphens=False),
                          epilog=before_examples + "examples:\n" + examples,
                          formatter_class=argparse.RawDescriptionHelpFormatter)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog=PROGRAM, description=ABOUT, epilog=EXAMPLES,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    run = _command(sub, "run", "run one job now, to the end, and exit with its outcome (as `cf run-task` does)",
                   "Run one job of the registry in this process and exit with its outcome. Backups take the "
                   "service lock, so a run waits for the daemon's own run of the same kind. Restores "
                   "overwrite fac-db or the media bucket: they need --confirm naming the space and the "
                   "binding, and a restore of fac-db takes a pre-restore backup first.",
                   RUN_EXAMPLES, before_examples="jobs:\n" + job_table() + "\n\n")
    run.add_argument("job", metavar="JOB", help="one of the jobs listed below")
    run.add_argument("args", nargs="*", metavar="ARG", help="the job's arguments, e.g. a BACKUP_ID as `list` prints it")
    run.add_argument("--confirm", metavar="SPACE/BINDING",
                     help="name what a restore overwrites: the cloud.gov space and the binding "
                          "(e.g. production/fac-db); the binding alone where no space is known")
    run.add_argument("--apply", action="store_true", help="make the changes (prune_backups only says what it "
                                                          "would do without it)")
    run.add_argument("--force", action="store_true", help="override the one safety limit the job's error names "
                                                          "(e.g. db_restore's snapshot age)")

    lister = _command(sub, "list", "list the backups in the backups bucket, newest first",
                      "List every backup in the backups bucket, this service's and the old tool's, newest first, "
                      "with its job, start time, state (complete, INCOMPLETE, LEGACY), tables and bytes. Each id "
                      "is printed exactly as `show`, `verify` and the restores take it.",
                      "  python -m service list\n  python -m service list --json")
    lister.add_argument("--json", action="store_true", help="machine-readable output")

    _command(sub, "jobs", "list the jobs: their arguments, steps and purpose",
             "List every job of the registry with its arguments, its steps in order and what it is for. "
             "The same jobs run from the schedule, from `run` and from `ctl trigger`.",
             "  python -m service jobs")

    show = _command(sub, "show", "show one backup: tables, rows, bytes, times, versions; or the snapshot's state",
                    "Show what a backup holds, read from its manifest: each table's rows and bytes, when it "
                    "started and finished, the PostgreSQL versions, its size once restored, its integrity check "
                    "and the media moment it brings back. Named fac-snapshot-db, it says whether the snapshot "
                    "holds a whole copy (its refresh record: complete, refreshing or failed) and how old it is.",
                    "  python -m service show scheduled-12-01-09\n  python -m service show fac-snapshot-db")
    show.add_argument("backup_id", metavar="BACKUP_ID", help="an id as `list` prints it (e.g. daily-06-04), or the "
                      "snapshot binding's name (fac-snapshot-db) for its refresh state")
    show.add_argument("--json", action="store_true", help="machine-readable output")

    verify = _command(sub, "verify", "check a backup without restoring it: sizes, sha256, pg_restore --list",
                      "Check a backup without restoring anything: every object exists with its recorded size "
                      "and sha256, and pg_restore can read every archive. The restore drill (job "
                      "verify_backup) goes further and restores it for real into a scratch database, rolled back.",
                      "  python -m service verify scheduled-12-01-09")
    verify.add_argument("backup_id", metavar="BACKUP_ID", help="an id as `list` prints it")

    report = _command(sub, "report", "write the contingency report: backups, gaps, drills, restores, the data itself",
                      "Write the contingency report for a period as one self-contained HTML file (readable offline, "
                      "printable to PDF) and print its plain-text summary: the recovery point achieved against "
                      "the schedule, every missed or failed slot, backups and database growth, restore drills, "
                      "restores performed, media, and backups whose row counts shrank. It reads the run journal "
                      "in the backups bucket.",
                      "  python -m service report --since 2026-11-01 --until 2026-11-30 --out november.html\n"
                      "  python -m service report --upload")
    report.add_argument("--since", metavar="DATE", help="first day (YYYY-MM-DD) or ISO time (default: 30 days "
                                                        "before --until)")
    report.add_argument("--until", metavar="DATE", help="last day, included (YYYY-MM-DD), or ISO time (default: now)")
    report.add_argument("--out", metavar="FILE", help="where to write the HTML (default: "
                                                      "contingency-report-SINCE-UNTIL.html here)")
    report.add_argument("--upload", action="store_true", help="also store it in the backups bucket beside the journal")

    demo = _command(sub, "demo", "try it locally: scheduled_backup on a throwaway PostgreSQL and a local S3 server",
                    "Run scheduled_backup end to end on this machine, with no cloud account: a throwaway "
                    "PostgreSQL cluster loaded with FAC-like data and a local S3 server, then print the "
                    "backup's manifest. Everything is removed at the end.",
                    "  python -m service demo\n"
                    "  python -m service demo --daemon      (the daemon, with a fast schedule)")
    demo.add_argument("--daemon", action="store_true", help="start the daemon on the sandbox instead")
    demo.add_argument("--rows", type=int, default=5000, help="rows of the main sample table")

    _command(sub, "daemon", "the always-on service: the schedules, /metrics and /healthz on $PORT, the control socket",
             "Run the always-on service, as cloud.gov's web process does: it fires scheduled_backup and "
             "daily_backup (and the drills, the prune and the report where configured), serves /healthz and "
             "/metrics on $PORT, and listens on the control socket for `ctl`. SIGTERM stops the running job "
             "cleanly, undoing its partial work.",
             "  python -m service daemon")

    ctl = _command(sub, "ctl", "ask the running daemon: status, the schedules, start a job, pause or resume",
                   "Talk to the running daemon over its local control socket. The socket is inside the app's "
                   "container, so from a workstation the command goes through `cf ssh` and the app's launcher "
                   "(last example). A job started this way runs in the daemon, under its lock and its metrics; "
                   "`ctl` answers at once with the run's id.",
                   "  python -m service ctl status\n  python -m service ctl trigger on_demand_backup\n"
                   "  python -m service ctl pause\n"
                   "  cf ssh fac-backup -c \"/tmp/lifecycle/launcher /home/vcap/app "
                   "'python -m service ctl status' ''\"")
    ctl.add_argument("--socket", metavar="PATH", help="the socket (default: FAC_BACKUP_CONTROL_SOCKET)")
    ctl_sub = ctl.add_subparsers(dest="ctl_command", required=True, metavar="REQUEST")
    ctl_sub.add_parser("status", help="running jobs with their progress, the last outcome of each job, the disks")
    ctl_sub.add_parser("jobs", help="the next run time of each schedule")
    trigger = ctl_sub.add_parser("trigger", help="start a job in the daemon now",
                                 description="Start a job in the daemon now; refused while the same job runs.",
                                 epilog="jobs:\n" + job_table(), formatter_class=argparse.RawDescriptionHelpFormatter)
    trigger.add_argument("job", metavar="JOB", help="one of the jobs listed below")
    trigger.add_argument("args", nargs="*", metavar="ARG", help="the job's arguments, e.g. a BACKUP_ID")
    trigger.add_argument("--confirm", metavar="SPACE/BINDING",
                         help="as for run: the space and the protected binding (e.g. production/fac-db)")
    trigger.add_argument("--apply", action="store_true", help="as for run: make the changes")
    trigger.add_argument("--force", action="store_true", help="as for run: override the safety limit named")
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
    print(job_table())
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
