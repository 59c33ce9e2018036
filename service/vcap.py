"""Parse cloud.gov's VCAP_SERVICES into typed, frozen bindings.

VCAP_SERVICES maps a label (`aws-rds`, `s3`, `user-provided`) to a list of
bindings; we find a binding by its `name`, whatever its label. Problems are
collected, not raised one by one, so the operator sees every one at once.
Secrets are `repr=False` and never appear in a message.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any

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
        """True when both point at one database, whatever the binding names say."""
        return (
            self.host.strip().lower().rstrip(".") == other.host.strip().lower().rstrip(".")
            and self.port == other.port
            and self.dbname == other.dbname
        )


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


def _credentials(binding: dict[str, Any], name: str, keys: tuple[str, ...], problems: list[str]):
    creds = binding.get("credentials")
    if not isinstance(creds, dict):
        problems.append(f"binding {name!r} has no credentials object")
        return None
    missing = [k for k in keys if creds.get(k) in (None, "")]
    if missing:
        problems.append(f"binding {name!r} lacks credential key(s): {', '.join(missing)}")
        return None
    return creds


def database_binding(bindings: dict, name: str, problems: list[str]) -> DatabaseBinding | None:
    """Build a DatabaseBinding from an aws-rds style binding, or record why not."""
    binding = bindings.get(name)
    if binding is None:
        problems.append(f"no service binding named {name!r} in VCAP_SERVICES")
        return None
    creds = _credentials(binding, name, RDS_KEYS, problems)
    if creds is None:
        return None
    try:
        port = int(str(creds["port"]))
    except ValueError:
        problems.append(f"binding {name!r}: port {creds['port']!r} is not a number")
        return None
    return DatabaseBinding(
        name=name,
        host=str(creds["host"]),
        port=port,
        dbname=str(creds["db_name"]),
        username=str(creds["username"]),
        password=str(creds["password"]),
    )


def build_endpoint_url(creds: dict[str, Any], prefer_fips: bool) -> str | None:
    """cloud.gov gives a bare host (use https); a value with a scheme is used as given."""
    host = (creds.get("fips_endpoint") if prefer_fips else None) or creds.get("endpoint")
    if not host:
        return None
    host = str(host).strip()
    if "://" in host:
        return host.rstrip("/")
    return f"https://{host}"


def bucket_binding(
    bindings: dict, name: str, problems: list[str], *, prefer_fips: bool = True
) -> BucketBinding | None:
    """Build a BucketBinding from an s3 binding, or record why not."""
    binding = bindings.get(name)
    if binding is None:
        problems.append(f"no service binding named {name!r} in VCAP_SERVICES")
        return None
    creds = _credentials(binding, name, S3_KEYS, problems)
    if creds is None:
        return None
    extra = creds.get("additional_buckets") or []
    if not isinstance(extra, list):
        problems.append(f"binding {name!r}: additional_buckets must be a list")
        extra = []
    return BucketBinding(
        name=name,
        bucket=str(creds["bucket"]),
        region=str(creds["region"]),
        endpoint_url=build_endpoint_url(creds, prefer_fips),
        access_key_id=str(creds["access_key_id"]),
        secret_access_key=str(creds["secret_access_key"]),
        additional_buckets=tuple(str(b) for b in extra),
    )
