"""Configuration: read once, typed, frozen, and every problem named in one error."""

from __future__ import annotations

import dataclasses
import json

import pytest

from service.config import load_config
from service.errors import ConfigError

SECRET_DB = "db-pass-Zq81x"
SECRET_S3 = "s3-secret-Hh27k"


def rds(name, host="db.internal", port="5432", db_name="fac", **drop):
    creds = {"host": host, "port": port, "db_name": db_name, "name": db_name, "username": "u_" + name,
             "password": SECRET_DB, "uri": f"postgres://u:{SECRET_DB}@{host}:{port}/{db_name}"}
    for key in drop:
        creds.pop(key)
    return {"name": name, "label": "aws-rds", "credentials": creds}


def s3(name, bucket, endpoint="s3-fips.us-gov-west-1.amazonaws.com", **extra):
    creds = {"access_key_id": "AKIA" + name.upper().replace("-", ""), "secret_access_key": SECRET_S3,
             "region": "us-gov-west-1", "bucket": bucket, "endpoint": endpoint, "uri": "", **extra}
    return {"name": name, "label": "s3", "credentials": creds}


def vcap(**override):
    data = {
        "aws-rds": [rds("fac-db"), rds("fac-snapshot-db", db_name="fac_snapshot")],
        "s3": [s3("fac-private-s3", "media-bucket"), s3("backups", "backups-bucket")],
    }
    data.update(override)
    return json.dumps(data)


def test_reads_the_four_bindings_into_frozen_objects():
    """A cloud.gov VCAP_SERVICES becomes typed, immutable bindings and defaults."""
    config = load_config({"VCAP_SERVICES": vcap()})
    assert config.fac_db.host == "db.internal" and config.fac_db.port == 5432
    assert config.snapshot_db.dbname == "fac_snapshot"
    assert config.backups.bucket == "backups-bucket"
    assert config.settings.timezone.key == "America/Los_Angeles"
    with pytest.raises(dataclasses.FrozenInstanceError):
        config.fac_db.host = "elsewhere"


def test_secrets_are_hidden_from_repr():
    """Passwords and S3 keys never show in a repr (and so never in a logged object)."""
    config = load_config({"VCAP_SERVICES": vcap()})
    text = repr(config)
    assert SECRET_DB not in text and SECRET_S3 not in text and "AKIA" not in text


def test_bare_endpoint_gets_https_and_a_scheme_is_kept():
    """cloud.gov gives a bare host (https); a local endpoint with a scheme is used as given."""
    config = load_config({"VCAP_SERVICES": vcap(s3=[
        s3("fac-private-s3", "m", endpoint="s3.us-gov-west-1.amazonaws.com"),
        s3("backups", "b", endpoint="http://127.0.0.1:9000")])})
    assert config.media.endpoint_url == "https://s3.us-gov-west-1.amazonaws.com"
    assert config.backups.endpoint_url == "http://127.0.0.1:9000"


def test_fips_endpoint_is_preferred_unless_disabled():
    """The FIPS endpoint is used when the binding has one, unless FAC_BACKUP_S3_FIPS=false."""
    media = s3("fac-private-s3", "m", endpoint="s3.example", fips_endpoint="s3-fips.example")
    text = vcap(s3=[media, s3("backups", "b")])
    assert load_config({"VCAP_SERVICES": text}).media.endpoint_url == "https://s3-fips.example"
    off = load_config({"VCAP_SERVICES": text, "FAC_BACKUP_S3_FIPS": "false"})
    assert off.media.endpoint_url == "https://s3.example"


def test_vcap_may_come_from_a_file(tmp_path):
    """FAC_BACKUP_VCAP_FILE names a JSON file of VCAP_SERVICES' shape, for local use."""
    path = tmp_path / "vcap.json"
    path.write_text(vcap())
    assert load_config({"FAC_BACKUP_VCAP_FILE": str(path)}).media.bucket == "media-bucket"


def test_binding_names_can_be_overridden():
    """Each binding name can be changed by an environment variable."""
    text = vcap(**{"aws-rds": [rds("other-db"), rds("fac-snapshot-db", db_name="snap")]})
    config = load_config({"VCAP_SERVICES": text, "FAC_BACKUP_DB_SERVICE": "other-db"})
    assert config.fac_db.name == "other-db"


def test_every_problem_is_listed_at_once_without_secrets():
    """Missing binding, missing key, bad zone and bad number all appear in one error, secret-free."""
    text = vcap(**{"aws-rds": [rds("fac-db", password=None)]})
    with pytest.raises(ConfigError) as info:
        load_config({"VCAP_SERVICES": text, "FAC_BACKUP_TIMEZONE": "Mars/Olympus",
                     "FAC_BACKUP_PARALLEL": "many"})
    message = str(info.value)
    assert "lacks credential key(s): password" in message
    assert "'fac-snapshot-db'" in message
    assert "Mars/Olympus" in message and "FAC_BACKUP_PARALLEL" in message
    assert SECRET_DB not in message and SECRET_S3 not in message
    assert info.value.exit_code == 2


def test_malformed_json_is_named():
    """Malformed VCAP_SERVICES gives the position of the problem."""
    with pytest.raises(ConfigError) as info:
        load_config({"VCAP_SERVICES": '{"aws-rds": [}'})
    assert "not valid JSON" in str(info.value)


def test_missing_vcap_says_what_to_do():
    """With no VCAP at all the error tells how to provide one locally."""
    with pytest.raises(ConfigError) as info:
        load_config({})
    assert "FAC_BACKUP_VCAP_FILE" in str(info.value)


def test_snapshot_pointing_at_fac_db_is_refused():
    """A snapshot binding naming the live database (same host, port, db) is a configuration error."""
    text = vcap(**{"aws-rds": [rds("fac-db"), rds("fac-snapshot-db", host="DB.internal.")]})
    with pytest.raises(ConfigError) as info:
        load_config({"VCAP_SERVICES": text})
    assert "same database" in str(info.value)


def test_process_aws_variables_are_ignored():
    """The S3 client uses the binding's credentials and region, never AWS_* of the process."""
    from service.storage import build_s3_client

    config = load_config({"VCAP_SERVICES": vcap()})
    import os
    saved = {k: os.environ.get(k) for k in ("AWS_ACCESS_KEY_ID", "AWS_DEFAULT_REGION")}
    os.environ.update(AWS_ACCESS_KEY_ID="AKIAPROCESS", AWS_DEFAULT_REGION="eu-west-1")
    try:
        client = build_s3_client(config.backups)
        assert client.meta.region_name == "us-gov-west-1"
        assert client._request_signer._credentials.access_key == config.backups.access_key_id
    finally:
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


def test_the_space_name_comes_from_vcap_application_and_never_stops_the_service():
    """space_name labels notifications; absent or unreadable VCAP_APPLICATION leaves it None, no error."""
    app = json.dumps({"space_name": "staging"})
    assert load_config({"VCAP_SERVICES": vcap(), "VCAP_APPLICATION": app}).space == "staging"
    assert load_config({"VCAP_SERVICES": vcap()}).space is None
    assert load_config({"VCAP_SERVICES": vcap(), "VCAP_APPLICATION": "{not json"}).space is None
    assert load_config({"VCAP_SERVICES": vcap(), "VCAP_APPLICATION": "[1]"}).space is None
