"""Every id `list` prints means that backup and no other, against PostgreSQL and the moto server.

One bucket holds every id shape this service and the old tool write: ours
(`scheduled-12-01-09` and the `-2` of the same hour, `scheduled-06-04-10-2`
allocated beside the old tool's flat `scheduled-06-04-10`, `daily-`, `initial-`,
`deploy-`, `on-demand-`, and the `pre-restore-` backups the restores take, which
land in one minute and are suffixed too) and the old tool's flat, nested and
nested ISO-stamp backups. Each holds rows of its own (a label naming it, and a
row count no other backup has) and, for ours, a media object of its own at its
moment, so the restored database and media say which backup came back.
"""

from __future__ import annotations

import json
from datetime import datetime

import pytest
from structlog.testing import capture_logs

from service import jobs, layout
from service.errors import AmbiguousBackupError
from service.log import get_logger
from tests.integration.test_daemon import start_daemon, wait_for  # noqa: F401 - start_daemon is a fixture
from tests.integration.test_legacy_restore import write_old_tool_backup

pytestmark = pytest.mark.integration

CONFIRM = {"confirm": "fac-db"}
MARKER = "marker.pdf"  # the media object whose content names the backup it came from
SCHEMA = """
CREATE TABLE public.marker (label text PRIMARY KEY);
CREATE TABLE public.item (n integer PRIMARY KEY, note text NOT NULL);
"""
OLD_TOOL = ("scheduled-06-04-10", "scheduled/06-04-10", "scheduled/2026-06-25T09:03:26-0400")
# (job, when it ran in the service's time zone, the id it must be given)
OURS = (
    ("scheduled_backup", (2026, 6, 4, 10, 20), "scheduled-06-04-10-2"),  # beside the old tool's flat one
    ("scheduled_backup", (2026, 12, 1, 9, 0), "scheduled-12-01-09"),
    ("scheduled_backup", (2026, 12, 1, 9, 40), "scheduled-12-01-09-2"),  # a second backup in the same hour
    ("daily_backup", (2026, 12, 1, 20, 0), "daily-12-01"),
    ("initial_backup", (2026, 12, 1, 8, 0), "initial-202612010800"),
    ("deploy_backup", (2026, 12, 1, 8, 30), "deploy-202612010830"),
    ("on_demand_backup", (2026, 12, 1, 10, 15), "on-demand-202612011015"),
)


def fill(box, label: str, rows: int) -> None:
    """fac-db holds `label` and `rows` items (and fac-private-s3 a marker saying `label`)."""
    with box.connect() as conn:
        conn.execute("TRUNCATE public.marker, public.item")
        conn.execute("INSERT INTO public.marker VALUES (%s)", (label,))
        conn.execute("INSERT INTO public.item SELECT n, repeat(%s, n) FROM generate_series(1, %s) n", (label, rows))
    box.media_store().put_bytes(MARKER, label.encode())


def content(box) -> tuple[str, int, bytes]:
    """Which backup fac-db and fac-private-s3 came from: the label, the item count, the marker."""
    with box.connect() as conn:
        labels = [label for (label,) in conn.execute("SELECT label FROM public.marker").fetchall()]
        rows = conn.execute("SELECT count(*) FROM public.item").fetchone()[0]
    assert len(labels) == 1, labels
    return labels[0], rows, box.media_store().get_bytes(MARKER)


def write_backup(box, job: str, when: tuple) -> str:
    """The backup `job` writes at `when` (its db_to_s3 and media_sync steps, as the job runs them)."""
    config = box.config()
    moment = datetime(*when, tzinfo=config.settings.timezone)
    ctx = jobs.JobContext(config, jobs.JOBS[job], "test", log=get_logger(), clock=lambda: moment)
    backup_id = jobs.STEPS["db_to_s3"](ctx)["backup_id"]
    jobs.STEPS["media_sync"](ctx)
    return backup_id


RESTORE_CLOCK = (2026, 12, 2, 11, 0)  # the restores run in one minute: their pre-restore backups get -2, -3...


def restore(box, typed: str) -> str:
    """s3_restore `typed` (the database step, then the media step); the pre-restore backup's id."""
    config = box.config()
    moment = datetime(*RESTORE_CLOCK, tzinfo=config.settings.timezone)
    result = box.run("s3_restore", typed, options=CONFIRM, clock=lambda: moment)
    assert result.outcome == "success", (result.error, result.error and result.error.detail)
    assert result.steps[0].figures["backup_id"] == typed
    return result.steps[0].figures["pre_restore_backup"]


def build_bucket(box, old_tool: tuple[str, ...], ours: tuple[tuple, ...]) -> dict[str, tuple[str, int]]:
    """The old tool's backups, then ours, each of its own content, then fac-db's live content;
    returns {id: (label, rows)}: what fac-db holds after a restore of that id ("live": now)."""
    with box.connect() as conn:
        conn.execute(SCHEMA)
    expected: dict[str, tuple[str, int]] = {}

    def take(label: str) -> None:
        expected[label] = (label, 10 * (len(expected) + 1))  # a row count no other backup has
        fill(box, *expected[label])

    for legacy_id in old_tool:  # before this service took over
        take(legacy_id)
        write_old_tool_backup(box, legacy_id)
    for job, when, backup_id in ours:
        take(backup_id)
        assert write_backup(box, job, when) == backup_id
    take("live")
    return expected


def show_and_verify(box, backup_id: str, listed: dict, label: str, rows: int) -> None:
    """`show --json` and `verify BACKUP_ID` report the backup `list` printed as `backup_id`: its id, its
    size, and (ours) its row counts, or (the old tool's) its own dumps."""
    shown = box.cli("show", backup_id, "--json")
    assert shown.returncode == 0, (backup_id, shown.stderr)
    data = json.loads(shown.stdout)
    assert (data["id"], data["typed_as"], data["total_bytes"]) == (backup_id, "", listed["bytes"])
    if data["legacy"]:
        assert {t["key"] for t in data["tables"]} == {f"backups/{backup_id}/public-{t}.dump"
                                                     for t in ("item", "marker")}
        objects = 2
    else:
        assert {t["table"]: t["rows"] for t in data["tables"]} == {"item": rows, "marker": 1}
        objects = 4  # and schema.dump, privileges.json
    verified = box.cli("verify", backup_id)
    assert verified.returncode == 0, (backup_id, verified.stderr)
    assert verified.stdout.startswith(f"backup {backup_id}: OK, {objects} objects, {listed['bytes']:,} bytes;"), \
        verified.stdout


def last_run(daemon, run_id: str) -> dict | None:
    """The daemon's record of run `run_id` of s3_restore, once it has ended."""
    last = daemon.ctl("status")["last"].get("s3_restore")
    return last if last and last["run_id"] == run_id else None


def test_every_id_list_prints_is_shown_verified_and_restored_as_that_backup(sandbox):
    """For each id exactly as `list` prints it, `s3_restore`, `media_restore`, `verify_backup`, `show` and
    `verify` act on that backup and no other.

    Restored for real (the database's rows and, for ours, the media say which backup came back): the
    earlier `scheduled-12-01-09` beside its newer `-2`, and that `-2`; the old tool's flat
    `scheduled-06-04-10` beside its nested twin and our `scheduled-06-04-10-2`, and the nested
    `scheduled/06-04-10`. `media_restore scheduled-12-01-09` and `verify_backup` run alone on both of the
    pair. Every id, those and the rest (the other kinds, the ISO stamp, `scheduled-06-04-10-2`, the
    suffixed pre-restore backups), goes through `show --json` and `verify` as an operator runs them: the
    same find_backup a restore calls, so the backup they report is the one a restore would load.
    """
    box = sandbox
    expected = build_bucket(box, OLD_TOOL, OURS)
    not_chosen = {"scheduled-12-01-09": ["scheduled-12-01-09-2"], "scheduled-12-01-09-2": None,
                  "scheduled-06-04-10": ["scheduled-06-04-10-2", "scheduled/06-04-10"], "scheduled/06-04-10": None}
    for typed, others in not_chosen.items():
        before = content(box)
        with capture_logs() as logs:
            pre_restore = restore(box, typed)
        resolved = [e for e in logs if e["event"] == "restore.id_resolved"]
        assert [sorted(e["not_chosen"]) for e in resolved] == ([others] if others else []), typed
        expected[pre_restore] = before[:2]
        label, rows, media = content(box)
        assert (label, rows) == expected[typed], typed
        if typed.startswith("scheduled-12"):  # ours: the media as of that backup (a legacy one has no moment)
            assert media == typed.encode()
    pre_restores = [i for i in expected if i.startswith("pre-restore-")]
    assert [i.removeprefix(pre_restores[0]) for i in pre_restores] == ["", "-2", "-3", "-4"]
    assert expected[pre_restores[0]] == expected["live"]

    media = box.run("media_restore", "scheduled-12-01-09", options={"confirm": box.config().media.name})
    assert media.outcome == "success", media.error
    assert content(box)[2] == b"scheduled-12-01-09"  # not the -2 of the same hour, whose media is there now
    for typed in ("scheduled-12-01-09", "scheduled-12-01-09-2"):
        drill = box.run("verify_backup", typed)
        assert drill.outcome == "success", drill.error
        figures = drill.steps[0].figures
        assert (figures["backup_id"], figures["rows"]) == (typed, expected[typed][1] + 1)

    listed = box.cli("list", "--json")
    assert listed.returncode == 0, listed.stderr
    rows = {row["id"]: row for row in json.loads(listed.stdout)}
    assert set(rows) == expected.keys() - {"live"}
    assert len({r["bytes"] for r in rows.values()}) == len(rows), "no two backups share a size"
    for backup_id, row in rows.items():
        show_and_verify(box, backup_id, row, *expected[backup_id])
    exact = json.loads(box.cli("show", "scheduled-12-01-09", "--json").stdout)
    assert exact["others"] == ["scheduled-12-01-09-2"]  # named, not chosen


def test_an_id_that_could_mean_two_backups_is_refused_before_anything_is_touched(sandbox, start_daemon):  # noqa: F811
    """Once the old tool's flat `scheduled-06-04-10` has expired, `scheduled-06-04-10` could mean our
    `scheduled-06-04-10-2` or the nested `scheduled/06-04-10`: s3_restore, media_restore and verify_backup,
    from the command line, in-process and through the control socket, refuse with exit 3, naming both with
    their times, and fac-db, fac-private-s3 and the bucket are as they were. Through the socket, the
    exact id of the earlier backup of an hour still restores that one."""
    box = sandbox
    expected = build_bucket(box, OLD_TOOL[:2], OURS[:3])
    store = box.store()
    store.delete_objects([o.key for o in store.list_objects("backups/scheduled-06-04-10/")])  # the 60-day expiry
    before, objects = content(box), {o.key: o.etag for o in store.list_objects()}

    def refused(result) -> None:
        assert (result.outcome, result.exit_code) == ("failure", 3), result.error
        assert isinstance(result.error, AmbiguousBackupError)
        assert "scheduled-06-04-10-2   complete, started 20" in result.error.detail
        assert "scheduled/06-04-10   legacy (old tool), started 20" in result.error.detail

    refused(box.run("s3_restore", "scheduled-06-04-10", options=CONFIRM))
    refused(box.run("media_restore", "scheduled-06-04-10", options={"confirm": box.config().media.name}))
    refused(box.run("verify_backup", "scheduled-06-04-10"))
    for argv in (("run", "s3_restore", "scheduled-06-04-10", "--confirm", "fac-db"), ("show", "scheduled-06-04-10")):
        cli = box.cli(*argv)
        assert cli.returncode == 3, cli.stderr
        assert "could mean 2 backups" in cli.stderr and "scheduled/06-04-10   legacy" in cli.stderr
    assert content(box) == before
    # No pre-restore backup, no media kept; only the run journal records the four refused runs.
    after = {o.key: o.etag for o in store.list_objects()}
    journaled = sorted(k for k in after if k.startswith(layout.JOURNAL_RUNS_PREFIX))
    assert {k: v for k, v in after.items() if k not in journaled} == objects
    assert [k.rsplit("/", 1)[1].split("_", 1)[1].rsplit("_", 1)[0] for k in journaled] == \
        ["s3_restore", "media_restore", "verify_backup", "s3_restore"]

    daemon = start_daemon()
    daemon.wait_healthy()
    for typed in ("scheduled-06-04-10", "scheduled-12-01-09"):
        reply = daemon.ctl("trigger", job="s3_restore", args=[typed], options=CONFIRM)
        assert reply["ok"], reply
        run_id = reply["run_id"]
        last = wait_for(lambda run_id=run_id: last_run(daemon, run_id), 120, f"s3_restore {typed} to end")
        if typed == "scheduled-06-04-10":
            assert last["outcome"] == "failure" and "could mean 2 backups" in last["error"]
            assert content(box) == before
        else:
            assert last["outcome"] == "success", last
            assert content(box) == (*expected[typed], typed.encode())
