"""Parse cloud.gov's VCAP_SERVICES into typed, frozen bindings.

VCAP_SERVICES maps a label (`aws-rds`, `s3`, `user-provided`) to a list of
bindings; we find a binding by its `name`, whatever its label. Problems are
collected, not raised one by one, so the operator sees every one at once.
Every value is checked for what it must be (a port 1-65535, a region name, an
endpoint that is an http(s) URL or a host), so nothing malformed fails later,
halfway through a job. Secrets are `repr=False` and never appear in a message.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlsplit

from service.errors import quote_input
from service.hosts import same_host

HOST_LABEL = re.compile(r"^(?!-)[a-z0-9-]{1,63}(?<!-)$")
REGION = re.compile(r"^[a-z0-9]+(-[a-z0-9]+)*$")
BUCKET = re.compile(r"^[A-Za-z0-9._-]{1,255}$")
AWS_S3_SUFFIX = ".amazonaws.com"

RDS_KEYS = ("host", "port", "db_name", "username", "password")
S3_KEYS = ("access_key_id", "secret_access_key", "region", "bucket")


@dataclass(frozen=True)
class DatabaseBinding:
    """Where and how to reach one PostgreSQL database."""

    name: str
    host: str
    port: int
    dbname: str
    username: str
    password: str = field(repr=False)

    def same_database_as(self, other: DatabaseBinding) -> bool:
        """True when both point at one database, whatever the binding names say: the same
        database name and port on the same server (service.hosts: `LOCALHOST` is 127.0.0.1)."""
        return self.port == other.port and self.dbname == other.dbname and same_host(self.host, other.host)


@dataclass(frozen=True)
class BucketBinding:
    """One S3 bucket and the credentials the binding grants."""

    name: str
    bucket: str
    region: str
    endpoint_url: str | None
    access_key_id: str = field(repr=False)
    secret_access_key: str = field(repr=False)
    additional_buckets: tuple[str, ...] = ()

    def can_reach(self, bucket: str) -> bool:
        """True when these credentials are granted `bucket` too (server-side copy)."""
        return bucket == self.bucket or bucket in self.additional_buckets

    def same_bucket_as(self, other: BucketBinding) -> bool:
        """True when both name one bucket: the same name on one S3 service. AWS endpoints
        (FIPS or not, any region) share one namespace of bucket names; any other endpoint is
        its own service, one server (service.hosts) and port."""
        return self.bucket == other.bucket and same_s3_service(self.endpoint_url, other.endpoint_url)


def same_s3_service(a: str | None, b: str | None) -> bool:
    """True when two endpoint URLs (None: AWS's default) reach one S3 service."""
    left, right = (urlsplit(u) if u else None for u in (a, b))
    if all(p is None or (p.hostname or "").endswith(AWS_S3_SUFFIX) for p in (left, right)):
        return True
    if left is None or right is None:
        return False
    ports = [p.port or (443 if p.scheme == "https" else 80) for p in (left, right)]
    return ports[0] == ports[1] and same_host(left.hostname or "", right.hostname or "")


def parse_vcap(text: str, source: str) -> tuple[dict[str, dict[str, Any]], list[str]]:
    """Return {binding name: binding} and the problems found."""
    try:
        data = json.loads(text)
    except json.JSONDecodeError as exc:
        return {}, [f"{source} is not valid JSON ({exc.msg} at line {exc.lineno} column {exc.colno})"]
    if not isinstance(data, dict):
        return {}, [f"{source} must be a JSON object of label -> list of bindings"]
    by_name: dict[str, dict[str, Any]] = {}
    for label, bindings in data.items():
        if not isinstance(bindings, list):
            return {}, [f"{source}: label {label!r} must hold a list of bindings"]
        for binding in bindings:
            if isinstance(binding, dict) and isinstance(binding.get("name"), str):
                by_name[binding["name"]] = binding
    return by_name, []


def credentials(binding: Any, name: str, keys: tuple[str, ...], problems: list[str]) -> dict | None:
    """The binding's credentials holding every one of `keys`, or None with a problem naming what lacks."""
    creds = binding.get("credentials") if isinstance(binding, dict) else None
    if not isinstance(creds, dict):
        problems.append(f"binding {name!r} has no credentials object")
        return None
    missing = [k for k in keys if creds.get(k) in (None, "")]
    if missing:
        problems.append(f"binding {name!r} lacks credential key(s): {', '.join(missing)}")
        return None
    return creds


def _text(creds: dict, key: str, name: str, problems: list[str], *, secret: bool = False) -> str | None:
    """creds[key] as a string, or None with a problem naming what it was instead."""
    value = creds[key]
    if isinstance(value, str):
        return value
    shown = type(value).__name__ if secret else quote_input(value)
    problems.append(f"binding {name!r}: {key} must be text, not {shown}")
    return None


def tcp_port(value: Any, where: str, problems: list[str]) -> int | None:
    """A TCP port from cloud.gov's string (or a number, or a setting), or None with a problem naming
    `where` it came from ("binding 'fac-db'", "FAC_BACKUP_SMTP_PORT")."""
    text = str(value).strip() if isinstance(value, (str, int)) and not isinstance(value, bool) else ""
    if text.isdigit() and 0 < int(text) < 65536:
        return int(text)
    problems.append(f"{where}: port {quote_input(value)} is not a TCP port (1-65535)")
    return None


def database_binding(bindings: dict, name: str, problems: list[str]) -> DatabaseBinding | None:
    """Build a DatabaseBinding from an aws-rds style binding, or record why not."""
    binding = bindings.get(name)
    if binding is None:
        problems.append(f"no service binding named {name!r} in VCAP_SERVICES")
        return None
    creds = credentials(binding, name, RDS_KEYS, problems)
    if creds is None:
        return None
    found = len(problems)
    port = tcp_port(creds["port"], f"binding {name!r}", problems)
    host, dbname, username = (_text(creds, k, name, problems) for k in ("host", "db_name", "username"))
    password = _text(creds, "password", name, problems, secret=True)
    if len(problems) > found:
        return None
    return DatabaseBinding(name=name, host=host, port=port, dbname=dbname, username=username,
                           password=password)


def build_endpoint_url(creds: dict[str, Any], prefer_fips: bool) -> str | None:
    """cloud.gov gives a bare host (use https); a value with a scheme is used as given."""
    host = (creds.get("fips_endpoint") if prefer_fips else None) or creds.get("endpoint")
    if not host:
        return None
    host = str(host).strip()
    if "://" in host:
        return host.rstrip("/")
    return f"https://{host}"


def endpoint_problem(value: Any) -> str:
    """Why `value` cannot be an S3 endpoint (a bare host, or an http(s) URL with at most a
    port and a final slash), or "" when it can."""
    if not isinstance(value, str):
        return "it is not text"
    url = value.strip() if "://" in value else f"https://{value.strip()}"
    try:
        parts = urlsplit(url)
        port = parts.port  # ValueError when not a number in 0-65535
    except ValueError as exc:
        return str(exc)
    if parts.scheme not in ("http", "https"):
        return f"the scheme must be http or https, not {parts.scheme!r}"
    if parts.username is not None or parts.password is not None:
        return "credentials belong in the binding's keys, not in the URL"
    if parts.path not in ("", "/") or parts.query or parts.fragment:
        return "it must not have a path, a query or a fragment"
    host = parts.hostname or ""
    if not host:
        return "it names no host"
    if port == 0:
        return "port 0"
    if ":" not in host and not all(HOST_LABEL.match(label) for label in host.split(".")):
        return f"{host!r} is not a host name"
    return ""


def _shown_endpoint(value: Any) -> str:
    """The endpoint for a message, any user:password@ part masked."""
    if isinstance(value, str) and "@" in value:
        scheme, _, rest = value.rpartition("://")
        value = f"{scheme}://***@{rest.rpartition('@')[2]}" if scheme else f"***@{rest.rpartition('@')[2]}"
    return quote_input(value)


def bucket_binding(
    bindings: dict, name: str, problems: list[str], *, prefer_fips: bool = True
) -> BucketBinding | None:
    """Build a BucketBinding from an s3 binding, or record why not."""
    binding = bindings.get(name)
    if binding is None:
        problems.append(f"no service binding named {name!r} in VCAP_SERVICES")
        return None
    creds = credentials(binding, name, S3_KEYS, problems)
    if creds is None:
        return None
    found = len(problems)
    bucket, region = _text(creds, "bucket", name, problems), creds["region"]
    key_id = _text(creds, "access_key_id", name, problems, secret=True)
    secret = _text(creds, "secret_access_key", name, problems, secret=True)
    if bucket is not None and not BUCKET.match(bucket):
        problems.append(f"binding {name!r}: bucket {quote_input(bucket)} is not a bucket name")
    if not (isinstance(region, str) and REGION.match(region)):
        problems.append(f"binding {name!r}: region {quote_input(region)} is not a region name (e.g. us-gov-west-1)")
    for key in ("endpoint", "fips_endpoint"):
        value = creds.get(key)
        why = endpoint_problem(value) if value not in (None, "") else ""
        if why:
            problems.append(f"binding {name!r}: {key} {_shown_endpoint(value)} is not an http(s) URL or "
                            f"host name ({why})")
    extra = creds.get("additional_buckets") or []
    if not (isinstance(extra, list) and all(isinstance(b, str) for b in extra)):
        problems.append(f"binding {name!r}: additional_buckets must be a list of bucket names")
    if len(problems) > found:
        return None
    return BucketBinding(
        name=name,
        bucket=bucket,
        region=region,
        endpoint_url=build_endpoint_url(creds, prefer_fips),
        access_key_id=key_id,
        secret_access_key=secret,
        additional_buckets=tuple(extra),
    )
