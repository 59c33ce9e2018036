"""Settings of retention, the restore drill and the failure webhook."""

from __future__ import annotations

import json

import pytest

from service.config import load_config
from service.errors import ConfigError
from tests.unit.test_config import rds, vcap


def load(**env):
    return load_config({"VCAP_SERVICES": env.pop("VCAP_SERVICES", vcap()), **env})


def problems_of(**env) -> str:
    with pytest.raises(ConfigError) as err:
        load(**env)
    return err.value.detail


def test_retention_defaults_keep_two_weeks_three_of_each_kind_and_milestones_a_year():
    """Without settings: 14 days, 3 newest per kind, initial/pre-restore 365 days and 5 newest."""
    policy = load().settings.retention
    assert (policy.min_days, policy.keep_last) == (14, 3)
    assert (policy.milestone_min_days, policy.milestone_keep_last) == (365, 5)
    assert (policy.keep_daily_days, policy.keep_weekly_weeks) == (0, 0)


def test_retention_settings_are_read():
    """FAC_BACKUP_RETENTION_* set every part of the policy."""
    policy = load(FAC_BACKUP_RETENTION_MIN_DAYS="30", FAC_BACKUP_RETENTION_KEEP_LAST="5",
                  FAC_BACKUP_RETENTION_KEEP_DAILY_DAYS="31", FAC_BACKUP_RETENTION_KEEP_WEEKLY_WEEKS="13",
                  FAC_BACKUP_RETENTION_MILESTONE_MIN_DAYS="730").settings.retention
    assert (policy.min_days, policy.keep_last, policy.keep_daily_days, policy.keep_weekly_weeks,
            policy.milestone_min_days) == (30, 5, 31, 13, 730)


@pytest.mark.parametrize("env, text", [
    ({"FAC_BACKUP_RETENTION_MIN_DAYS": "13"}, "younger than 14 days must never be pruned"),
    ({"FAC_BACKUP_RETENTION_KEEP_LAST": "2"}, "must be at least 3"),
    ({"FAC_BACKUP_RETENTION_MIN_DAYS": "60", "FAC_BACKUP_RETENTION_MILESTONE_MIN_DAYS": "30"}, "live longer"),
])
def test_a_retention_below_the_floors_is_a_configuration_error(env, text):
    """Fewer than 14 days, fewer than 3 kept, or milestones shorter than the rest: nothing starts."""
    assert text in problems_of(**env)


def scratch_vcap(scratch):
    return vcap(**{"aws-rds": [rds("fac-db"), rds("fac-snapshot-db", db_name="fac_snapshot"), scratch]})


def test_the_scratch_database_binding_is_optional_and_read_when_named():
    """FAC_BACKUP_RESTORE_TEST_DB_SERVICE names an aws-rds binding for the drill."""
    assert load().restore_test_db is None
    config = load(VCAP_SERVICES=scratch_vcap(rds("fac-restore-test-db", db_name="scratch")),
                  FAC_BACKUP_RESTORE_TEST_DB_SERVICE="fac-restore-test-db")
    assert config.restore_test_db.dbname == "scratch"


@pytest.mark.parametrize("db_name", ["fac", "fac_snapshot"])
def test_a_scratch_binding_pointing_at_a_protected_database_is_refused(db_name):
    """A scratch binding on fac-db's or fac-snapshot-db's database is a configuration error."""
    text = problems_of(VCAP_SERVICES=scratch_vcap(rds("fac-restore-test-db", db_name=db_name)),
                       FAC_BACKUP_RESTORE_TEST_DB_SERVICE="fac-restore-test-db")
    assert "the restore drill would overwrite it" in text


def test_webhook_from_the_environment_or_a_user_provided_binding():
    """The URL comes from FAC_BACKUP_WEBHOOK_URL or credentials.url of a user-provided binding."""
    url = "https://hooks.example.test/services/T0/B0/secret-token"
    assert load(FAC_BACKUP_WEBHOOK_URL=url).webhook_url == url
    provided = {"name": "fac-backup-webhook", "label": "user-provided", "credentials": {"url": url}}
    data = json.loads(vcap())
    data["user-provided"] = [provided]
    config = load(VCAP_SERVICES=json.dumps(data), FAC_BACKUP_WEBHOOK_SERVICE="fac-backup-webhook")
    assert config.webhook_url == url
    assert url not in repr(config) and url in config.secrets()


@pytest.mark.parametrize("env, text", [
    ({"FAC_BACKUP_WEBHOOK_URL": "ftp://x", }, "must start with https://"),
    ({"FAC_BACKUP_WEBHOOK_SERVICE": "nope"}, "no service binding named 'nope'"),
    ({"FAC_BACKUP_WEBHOOK_URL": "https://a", "FAC_BACKUP_WEBHOOK_SERVICE": "b"}, "only one of"),
])
def test_a_bad_webhook_setting_is_a_configuration_error(env, text):
    """A URL without http(s), a missing binding, or two sources at once stop the start."""
    detail = problems_of(**env)
    assert text in detail and "secret" not in detail


