"""A restore's confirmation names the space it overwrites, where the space is known."""

from __future__ import annotations

import contextlib
import json

import pytest
from structlog.testing import capture_logs

from service import jobs, notify
from service.config import load_config
from service.errors import ConfirmationRequiredError, ServiceError
from service.storage import MemoryObjectStore
from tests.unit.test_config import vcap

PRODUCTION = json.dumps({"application_name": "fac-backup", "space_name": "production", "organization_name": "gsa"})


def config_in(space_json: str | None, **env: str):
    environ = {"VCAP_SERVICES": vcap(), **env}
    if space_json is not None:
        environ["VCAP_APPLICATION"] = space_json
    return load_config(environ)


def refusal(config, job: str, confirm: str | None) -> ConfirmationRequiredError:
    spec = jobs.get_job(job)
    args = ("daily-06-14",) * len(spec.arguments)
    with pytest.raises(ConfirmationRequiredError) as caught:
        jobs.validate_request(spec, args, {"confirm": confirm}, config)
    assert caught.value.exit_code == 3
    return caught.value


@pytest.mark.parametrize("job", ["s3_restore", "db_restore"])
def test_in_a_space_the_bare_binding_is_refused_showing_the_exact_confirmation(job):
    """In space production, `--confirm fac-db` is refused; the hint gives `--confirm production/fac-db`."""
    error = refusal(config_in(PRODUCTION), job, "fac-db")
    assert error.message == (f"{job} overwrites fac-db in space production and needs the space in its "
                             "confirmation: --confirm fac-db does not name it; nothing was touched")
    assert error.hint == "repeat the command with --confirm production/fac-db"


def test_in_a_space_another_spaces_confirmation_is_refused_naming_both_spaces():
    """A command copied from the dev runbook (`dev/fac-db`) is refused in production, naming dev."""
    error = refusal(config_in(PRODUCTION), "s3_restore", "dev/fac-db")
    assert error.message == ("s3_restore overwrites fac-db in space production, but the confirmation names "
                             "space dev: check which space you target (cf target); nothing was touched")
    assert error.hint == "repeat the command with --confirm production/fac-db"


@pytest.mark.parametrize("typed", [None, "", "fac-snapshot-db", "production/fac-snapshot-db", "Production/fac-db",
                                   "production/fac-db ", "production/"])
def test_in_a_space_anything_but_the_exact_confirmation_is_refused(typed):
    """Missing, another binding, another case, stray whitespace: all refused with the same hint."""
    error = refusal(config_in(PRODUCTION), "s3_restore", typed)
    assert error.message.startswith("s3_restore overwrites fac-db in space production")
    assert error.message.endswith("; nothing was touched")
    assert error.hint == "repeat the command with --confirm production/fac-db"


def test_in_a_space_the_space_qualified_confirmation_is_accepted():
    """`--confirm production/<binding>` passes in production, for every protected job."""
    config = config_in(PRODUCTION)
    for spec in jobs.JOB_SPECS:
        if spec.protected_target:
            target = getattr(config, spec.protected_target).name
            jobs.validate_request(spec, ("x",) * len(spec.arguments), {"confirm": f"production/{target}"}, config)


def test_the_binding_name_follows_the_configuration():
    """A fac-db binding renamed by FAC_BACKUP_DB_SERVICE is what the confirmation names."""
    renamed = vcap(**{"aws-rds": [
        {"name": "live-db", "label": "aws-rds", "credentials": json.loads(vcap())["aws-rds"][0]["credentials"]},
        json.loads(vcap())["aws-rds"][1]]})
    config = load_config({"VCAP_SERVICES": renamed, "VCAP_APPLICATION": PRODUCTION,
                          "FAC_BACKUP_DB_SERVICE": "live-db"})
    hint = refusal(config, "db_restore", "production/fac-db").hint
    assert hint == "repeat the command with --confirm production/live-db"
    jobs.validate_request(jobs.get_job("db_restore"), (), {"confirm": "production/live-db"}, config)


@pytest.mark.parametrize("space_json", [None, "{}", '{"space_name": ""}', "not json"])
def test_without_a_known_space_the_binding_alone_is_enough(space_json):
    """No (readable) VCAP_APPLICATION: `--confirm fac-db` passes, as before."""
    config = config_in(space_json)
    assert config.space is None
    jobs.validate_request(jobs.get_job("s3_restore"), ("x",), {"confirm": "fac-db"}, config)
    error = refusal(config, "s3_restore", None)
    assert error.message == "s3_restore overwrites fac-db and needs an explicit confirmation; nothing was touched"
    assert error.hint == "repeat the command with --confirm fac-db"


def test_without_a_known_space_a_space_qualified_confirmation_cannot_be_checked():
    """`--confirm production/fac-db` where no space is known is refused: the space typed cannot be verified."""
    error = refusal(config_in(None), "s3_restore", "production/fac-db")
    assert error.message == ("s3_restore overwrites fac-db, but this run does not know its space (no "
                             "VCAP_APPLICATION), so --confirm production/fac-db cannot be checked; "
                             "nothing was touched")
    assert error.hint == "repeat the command with --confirm fac-db"


def test_unprotected_jobs_need_no_confirmation_in_a_space():
    """Backups run in a space with no --confirm at all."""
    config = config_in(PRODUCTION)
    jobs.validate_request(jobs.get_job("on_demand_backup"), (), {}, config)


def MEMORY(_binding):  # noqa: N802 - the run journal's bucket: these configs name AWS endpoints
    return MemoryObjectStore("backups")


def test_a_refused_restore_runs_no_step_and_logs_the_refusal():
    """run_job: the refusal is one `job.rejected` event with the hint, exit 3, no step started."""
    with capture_logs() as logs:
        result = jobs.run_job(config_in(PRODUCTION), "db_restore", (), options={"confirm": "fac-db"},
                              lock_guard=lambda _ctx: contextlib.nullcontext(), store_factory=MEMORY)
    assert result.exit_code == 3 and result.steps == ()
    (rejected,) = [e for e in logs if e["event"] == "job.rejected"]
    assert rejected["hint"] == "repeat the command with --confirm production/fac-db"
    assert not [e for e in logs if e["event"] in ("job.started", "step.started")]


def test_the_result_of_a_restore_carries_space_binding_and_confirmation(monkeypatch):
    """A confirmed run's JobResult names what it overwrote and what was typed; other jobs carry none."""
    monkeypatch.setitem(jobs.STEPS, "db_restore", lambda _ctx: {})
    monkeypatch.setitem(jobs.STEPS, "media_restore", lambda _ctx: {})
    config = config_in(PRODUCTION)
    result = jobs.run_job(config, "db_restore", (), options={"confirm": "production/fac-db"},
                          lock_guard=lambda _ctx: contextlib.nullcontext(), store_factory=MEMORY)
    assert result.outcome == "success"
    assert result.confirmation == {"space": "production", "binding": "fac-db", "confirmation": "production/fac-db"}
    monkeypatch.setitem(jobs.STEPS, "check_tables", lambda _ctx: {})
    other = jobs.run_job(config, "check_tables", lock_guard=lambda _ctx: contextlib.nullcontext(), store_factory=MEMORY)
    assert other.confirmation is None


def test_the_notification_of_a_restore_names_space_binding_and_confirmation():
    """Success or failure, a restore's webhook body says which space's binding it overwrote, and the confirmation."""
    confirmation = {"space": "production", "binding": "fac-db", "confirmation": "production/fac-db"}
    done = jobs.JobResult("s3_restore", "r1", "success", 1.0, confirmation=confirmation)
    body = notify.build_payload(done, space="production")
    assert body["text"] == ("fac-backup (production): s3_restore of production/fac-db "
                            "(--confirm production/fac-db) succeeded (run r1)")
    assert (body["space"], body["binding"], body["confirmation"]) == ("production", "fac-db", "production/fac-db")
    failed = jobs.JobResult("s3_restore", "r2", "failure", 1.0, error=ServiceError("boom", hint="fix"),
                            confirmation=confirmation)
    assert notify.build_payload(failed, space="production")["text"] == (
        "fac-backup (production): s3_restore of production/fac-db (--confirm production/fac-db) failed: boom "
        "(hint: fix) (run r2)")
    local = jobs.JobResult("s3_restore", "r3", "success", 1.0,
                           confirmation={"space": "", "binding": "fac-db", "confirmation": "fac-db"})
    assert notify.build_payload(local)["text"] == ("fac-backup: s3_restore of fac-db (--confirm fac-db) "
                                                   "succeeded (run r3)")
    backup = notify.build_payload(jobs.JobResult("daily_backup", "r4", "failure", 1.0, error=ServiceError("x")))
    assert "binding" not in backup and "confirmation" not in backup


def test_a_restore_is_announced_even_when_it_succeeds(monkeypatch):
    """Successful backups stay quiet; a successful restore posts once (the webhook is the only witness)."""
    posted = []
    monkeypatch.setattr(notify, "post_json", lambda url, payload, **_: posted.append(payload) or 200)
    notify.forget_outcomes()
    config = config_in(PRODUCTION, FAC_BACKUP_WEBHOOK_URL="https://hooks.example/x")
    confirmation = {"space": "production", "binding": "fac-db", "confirmation": "production/fac-db"}
    assert notify.notify_job_end(config, jobs.JobResult("daily_backup", "a", "success", 1.0)) is False
    assert notify.notify_job_end(config, jobs.JobResult("s3_restore", "b", "success", 1.0,
                                                        confirmation=confirmation)) is True
    assert notify.notify_job_end(config, jobs.JobResult("s3_restore", "c", "skipped", 1.0,
                                                        confirmation=confirmation)) is False
    notify.forget_outcomes()
    assert [p["run_id"] for p in posted] == ["b"] and posted[0]["outcome"] == "success"
