"""Bindings that cannot point a job at itself, and binding values that are what they say, at start."""

from __future__ import annotations

import socket

import pytest

from service import hosts
from service.config import load_config
from service.errors import ConfigError
from tests.unit.test_config import rds, s3, vcap


def problems_of(text: str, **env: str) -> str:
    with pytest.raises(ConfigError) as info:
        load_config({"VCAP_SERVICES": text, **env})
    assert info.value.exit_code == 2
    return info.value.detail


def databases(fac_host: str, snapshot_host: str, snapshot_db: str = "fac", **extra) -> str:
    return vcap(**{"aws-rds": [rds("fac-db", host=fac_host), rds("fac-snapshot-db", host=snapshot_host,
                                                                  db_name=snapshot_db), *extra.values()]})


class Resolver:
    """Names that resolve as a small DNS says; any other name does not resolve."""

    def __init__(self) -> None:
        self.table: dict[str, list[str]] = {}
        self.asked: list[str] = []

    def getaddrinfo(self, host, port, *args, **kwargs):
        self.asked.append(host)
        if host not in self.table:
            raise socket.gaierror(socket.EAI_NONAME, "Name or service not known")
        return [(socket.AF_INET, socket.SOCK_STREAM, 6, "", (a, port or 0)) for a in self.table[host]]


@pytest.fixture
def resolver(monkeypatch) -> Resolver:
    fake = Resolver()
    monkeypatch.setattr(hosts.socket, "getaddrinfo", fake.getaddrinfo)
    return fake


@pytest.mark.parametrize("fac_host,snapshot_host", [
    ("127.0.0.1", "LOCALHOST"), ("localhost", "127.0.0.1"), ("db.internal", "DB.internal."),
    ("127.0.0.1", "::1"), ("localhost", "[::1]"), ("127.0.0.1", "127.0.0.2"), ("::ffff:127.0.0.1", "localhost"),
])
def test_the_snapshot_binding_naming_fac_db_under_another_spelling_is_refused(fac_host, snapshot_host):
    """Host names are compared after resolving them: LOCALHOST, localhost, 127.0.0.1 and ::1 are one
    machine, so db_to_db (and db_restore, its reverse) could never run against the live database."""
    detail = problems_of(databases(fac_host, snapshot_host))
    assert "'fac-snapshot-db' points at the same database as 'fac-db'" in detail


def test_two_names_that_resolve_to_one_address_are_one_server(resolver):
    """A CNAME (or a second record) for the live database's instance counts as that instance."""
    resolver.table.update({"fac-db.internal": ["10.0.0.5"], "snapshot.internal": ["10.0.0.9", "10.0.0.5"]})
    detail = problems_of(databases("fac-db.internal", "snapshot.internal"))
    assert "same database" in detail and "10.0.0.5" in detail


def test_one_server_two_databases_is_allowed():
    """fac-db and fac-snapshot-db as two databases of one server (the test sandbox's shape) start."""
    config = load_config({"VCAP_SERVICES": databases("127.0.0.1", "localhost", snapshot_db="fac_snapshot")})
    assert config.snapshot_db.dbname == "fac_snapshot"


def test_names_that_do_not_resolve_are_compared_as_written(resolver):
    """A DNS failure at start is not a startup failure: two different names that cannot be
    resolved now are taken as two servers, as written."""
    config = load_config({"VCAP_SERVICES": databases("db-a.internal", "db-b.internal")})
    assert config.snapshot_db.host == "db-b.internal"
    assert set(resolver.asked) == {"db-a.internal", "db-b.internal"}


def test_the_drills_scratch_binding_naming_a_protected_database_is_refused():
    """FAC_BACKUP_RESTORE_TEST_DB_SERVICE naming fac-db as 'LOCALHOST' is refused like the snapshot."""
    text = databases("127.0.0.1", "127.0.0.1", snapshot_db="fac_snapshot",
                     scratch=rds("scratch", host="LOCALHOST", db_name="fac_snapshot"))
    detail = problems_of(text, FAC_BACKUP_RESTORE_TEST_DB_SERVICE="scratch")
    assert "'scratch' points at the same database as 'fac-snapshot-db'" in detail


def buckets(media: dict, backups: dict) -> str:
    return vcap(s3=[media, backups])


@pytest.mark.parametrize("media_endpoint,backups_endpoint", [
    ("s3-fips.us-gov-west-1.amazonaws.com", "s3-fips.us-gov-west-1.amazonaws.com"),
    ("s3-fips.us-gov-west-1.amazonaws.com", "s3.us-gov-west-1.amazonaws.com"),  # AWS: one namespace
    ("http://127.0.0.1:9000", "http://LOCALHOST:9000/"),
    ("https://minio.internal", "https://MINIO.internal:443"),
])
def test_the_media_and_backups_bindings_naming_one_bucket_are_refused(media_endpoint, backups_endpoint):
    """One bucket name on one S3 service, however its endpoint is spelled: the media sync would copy
    the bucket onto itself and the backups would sit among the media."""
    detail = problems_of(buckets(s3("fac-private-s3", "shared", endpoint=media_endpoint),
                                 s3("backups", "shared", endpoint=backups_endpoint)))
    assert "name the same bucket 'shared'" in detail


def test_one_bucket_name_on_two_s3_services_is_allowed():
    """The same bucket name on two different endpoints (two S3-compatible servers) is two buckets."""
    config = load_config({"VCAP_SERVICES": buckets(s3("fac-private-s3", "shared", endpoint="http://127.0.0.1:9000"),
                                                   s3("backups", "shared", endpoint="http://127.0.0.1:9001"))})
    assert config.media.endpoint_url != config.backups.endpoint_url


def test_malformed_binding_values_are_listed_together_before_anything_runs():
    """A port of 99999, a region given as an object, endpoints that are not URLs: each is a
    configuration problem (exit 2), all listed in one error."""
    text = vcap(**{
        "aws-rds": [rds("fac-db", port="99999"), rds("fac-snapshot-db", port={"n": 5432}, db_name="snap")],
        "s3": [s3("fac-private-s3", "media-bucket", endpoint="not a url", region={"name": "us-gov-west-1"}),
               s3("backups", "backups-bucket", endpoint="ftp://s3.example.com")],
    })
    detail = problems_of(text)
    for expected in ("'fac-db': port '99999' is not a TCP port (1-65535)",
                     "'fac-snapshot-db': port {'n': 5432} is not a TCP port (1-65535)",
                     "'fac-private-s3': region {'name': 'us-gov-west-1'} is not a region name",
                     "'fac-private-s3': endpoint 'not a url' is not an http(s) URL or host name",
                     "'backups': endpoint 'ftp://s3.example.com' is not an http(s) URL or host name"):
        assert expected in detail, detail


@pytest.mark.parametrize("endpoint", [
    "https://", "https://host:99999", "https://user:secret-pw@host", "https://host/some/path", "https://host?x=1",
    "https://ho st", "http://[::1", "s3 .amazonaws.com", "https://host:port",
])
def test_an_endpoint_that_is_not_a_url_is_a_configuration_error(endpoint):
    """Every endpoint botocore would refuse later (and a few it would take and misuse) is refused at
    start, with the binding's name; a password in the URL is never echoed."""
    detail = problems_of(buckets(s3("fac-private-s3", "media-bucket", endpoint=endpoint),
                                 s3("backups", "backups-bucket")))
    assert "'fac-private-s3': endpoint" in detail and "secret-pw" not in detail


@pytest.mark.parametrize("endpoint", [
    "s3-fips.us-gov-west-1.amazonaws.com", "https://s3.us-gov-west-1.amazonaws.com", "http://127.0.0.1:9000",
    "http://localhost:9000/", "https://[::1]:9000", "minio.internal:9000",
])
def test_good_endpoints_are_taken(endpoint):
    """cloud.gov's bare host, a URL with or without a port, an IPv6 literal."""
    config = load_config({"VCAP_SERVICES": buckets(s3("fac-private-s3", "media-bucket", endpoint=endpoint),
                                                   s3("backups", "backups-bucket"))})
    assert config.media.endpoint_url.startswith(("http://", "https://"))
