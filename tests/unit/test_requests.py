"""A request means exactly what it says: every argument and option of every job is checked by type."""

from __future__ import annotations

import pytest

from service import jobs
from service.config import load_config
from service.errors import ServiceError, UsageError
from tests.unit.test_config import vcap

NOT_BOOLEANS = ["false", "true", "no", "", 0, 1, None, [], {}, [False]]


@pytest.fixture
def config():
    return load_config({"VCAP_SERVICES": vcap()})


def args_for(spec: jobs.JobSpec) -> tuple[str, ...]:
    return ("daily-06-14",) * len(spec.arguments)


def refusal(config, job: str, options: dict, args: tuple | None = None) -> UsageError:
    spec = jobs.get_job(job)
    with pytest.raises(UsageError) as caught:
        jobs.validate_request(spec, args_for(spec) if args is None else args, options, config)
    assert caught.value.exit_code == 2
    return caught.value


@pytest.mark.parametrize("option", ["apply", "force"])
@pytest.mark.parametrize("value", NOT_BOOLEANS, ids=repr)
def test_a_boolean_option_takes_only_true_or_false(config, option, value):
    """`apply: "false"` on prune_backups (or `force: "false"` on db_restore) is refused, naming the
    option and the type it takes, instead of counting as true."""
    error = refusal(config, "prune_backups", {option: value})
    assert f"option {option!r}" in error.message and "true or false" in error.message
    assert repr(value)[:20] in error.message


@pytest.mark.parametrize("value", [True, False, ["fac-db"], {"binding": "fac-db"}, 3], ids=repr)
def test_confirm_takes_only_text(config, value):
    """`confirm: true` or `confirm: ["fac-db"]` is a usage error naming the option, not a crash."""
    error = refusal(config, "s3_restore", {"confirm": value})
    assert "option 'confirm'" in error.message and "text" in error.message


@pytest.mark.parametrize("name", ["aply", "Apply", "confirmation", "dry_run", ""])
def test_an_unknown_option_is_refused_not_dropped(config, name):
    """An option no job knows is refused with the list of the known ones."""
    error = refusal(config, "media_sync", {name: True})
    assert f"unknown option {name!r}" in error.message
    assert "apply" in error.hint and "confirm" in error.hint and "force" in error.hint


@pytest.mark.parametrize("args", [(5,), (None,), (b"daily-06-14",), (["daily-06-14"],)], ids=repr)
def test_arguments_are_text(config, args):
    """A BACKUP_ID that is not a string is refused before anything looks it up."""
    error = refusal(config, "s3_restore", {"confirm": "fac-db"}, args)
    assert "argument 1" in error.message and "text" in error.message


def test_what_the_cli_sends_is_accepted_for_every_job(config):
    """The CLI sends confirm None (not given) and apply/force False: every job takes that."""
    for spec in jobs.JOBS.values():
        options = {"confirm": None, "apply": False, "force": False}
        if spec.protected_target:
            options["confirm"] = getattr(config, spec.protected_target).name
        jobs.validate_request(spec, args_for(spec), options, config)
        jobs.validate_request(spec, args_for(spec), {"confirm": options["confirm"], "apply": True,
                                                     "force": True}, config)


def test_an_overlong_argument_is_refused_and_echoed_cut(config):
    """A 60 kB id is refused; the message shows a readable piece of it and its length."""
    huge = "scheduled-" + "9" * 60_000
    error = refusal(config, "s3_restore", {"confirm": "fac-db"}, (huge,))
    text = str(error)
    assert len(text) < 400
    assert "60010 characters" in text and "scheduled-99" in text


@pytest.mark.parametrize("value", ["x" * 60_000, "fac-db" * 10_000])
def test_an_overlong_confirmation_is_refused_and_echoed_cut(config, value):
    """A 60 kB confirmation never reaches the confirmation check's messages whole."""
    error = refusal(config, "s3_restore", {"confirm": value})
    assert len(str(error)) < 400 and f"{len(value)} characters" in str(error)


def test_an_unknown_overlong_job_name_is_echoed_cut():
    """An unknown job of 60 kB: the error names a readable piece of it."""
    with pytest.raises(ServiceError) as caught:
        jobs.get_job("j" * 60_000)
    assert len(str(caught.value)) < 600 and "60000 characters" in caught.value.message


def test_a_refused_request_never_reaches_a_step(config, monkeypatch):
    """run_job refuses `apply: "false"` before the prune step is called."""
    called = []
    monkeypatch.setitem(jobs.STEPS, "prune_backups", lambda ctx: called.append(ctx) or {})
    result = jobs.run_job(config, "prune_backups", options={"apply": "false"})
    assert result.outcome == "failure" and result.exit_code == 2 and called == []


@pytest.mark.parametrize("command", ["show", "verify"])
def test_show_and_verify_refuse_an_overlong_id_before_reading_anything(command, capsys):
    """The CLI's other id entry points take the same rule: a 60 kB id is refused (exit 2), echoed cut,
    before configuration is read or the bucket listed."""
    from service.cli import main

    assert main([command, "daily-" + "1" * 60_000]) == 2
    err = capsys.readouterr().err
    assert len(err) < 600 and "60006 characters" in err
