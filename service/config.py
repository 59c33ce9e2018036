"""Read the environment and VCAP_SERVICES once into frozen, typed objects.

`load_config(environ)` either returns a Config or raises one ConfigError that
lists every problem, before any work starts. Service settings all use the
FAC_BACKUP_ prefix; standard names (PORT, VCAP_SERVICES) stay standard.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from service.errors import ConfigError
from service.vcap import BucketBinding, DatabaseBinding, bucket_binding, database_binding, parse_vcap

PREFIX = "FAC_BACKUP_"
DEFAULT_TABLE_MANIFEST = Path(__file__).resolve().parent.parent / "deploy" / "fac-tables.txt"
SSL_MODES = ("disable", "allow", "prefer", "require", "verify-ca", "verify-full")


@dataclass(frozen=True)
class Settings:
    """The service's own settings (FAC_BACKUP_*)."""

    timezone: ZoneInfo
    parallel: int = 2
    compression: int = 1
    pg_bin_dir: str | None = None
    pg_sslmode: str = "prefer"
    table_manifest: Path = DEFAULT_TABLE_MANIFEST
    control_socket: Path = Path("/tmp/fac-backup.sock")
    http_port: int = 8080
    scheduled_cron: str = "0 6-18/2 * * *"
    daily_cron: str = "0 20 * * *"
    check_cron: str = "45 5 * * *"  # check_tables, before working hours; "off" disables a schedule
    catch_up: bool = True
    metrics_refresh_seconds: float = 60.0
    lock_wait_seconds: float = 3600.0
    snapshot_max_age_hours: float = 48.0
    min_part_size: int = 8 * 1024 * 1024
    log_format: str = "auto"


@dataclass(frozen=True)
class Config:
    """Everything a job needs to know about the world, read once."""

    fac_db: DatabaseBinding
    snapshot_db: DatabaseBinding
    media: BucketBinding
    backups: BucketBinding
    settings: Settings

    def secrets(self) -> tuple[str, ...]:
        """Every secret value, for the log redactor."""
        values = [self.fac_db.password, self.snapshot_db.password]
        for b in (self.media, self.backups):
            values += [b.secret_access_key, b.access_key_id]
        return tuple(v for v in values if v)


class _Reader:
    """Reads typed FAC_BACKUP_* values, collecting problems instead of raising."""

    def __init__(self, environ: Mapping[str, str], problems: list[str]) -> None:
        self.environ = environ
        self.problems = problems

    def raw(self, name: str) -> str | None:
        value = self.environ.get(PREFIX + name)
        return value.strip() if value is not None and value.strip() != "" else None

    def text(self, name: str, default: str) -> str:
        return self.raw(name) or default

    def integer(self, name: str, default: int, low: int, high: int) -> int:
        value = self.raw(name)
        if value is None:
            return default
        try:
            number = int(value)
        except ValueError:
            self.problems.append(f"{PREFIX}{name}={value!r} is not a whole number")
            return default
        if not low <= number <= high:
            self.problems.append(f"{PREFIX}{name}={number} is outside {low}..{high}")
        return number

    def number(self, name: str, default: float, low: float) -> float:
        value = self.raw(name)
        if value is None:
            return default
        try:
            number = float(value)
        except ValueError:
            self.problems.append(f"{PREFIX}{name}={value!r} is not a number")
            return default
        if number < low:
            self.problems.append(f"{PREFIX}{name}={number} must be at least {low}")
        return number

    def choice(self, name: str, default: str, allowed: tuple[str, ...]) -> str:
        value = self.text(name, default)
        if value not in allowed:
            self.problems.append(f"{PREFIX}{name}={value!r} must be one of {', '.join(allowed)}")
        return value


def _read_timezone(reader: _Reader) -> ZoneInfo:
    name = reader.text("TIMEZONE", "America/Los_Angeles")
    try:
        return ZoneInfo(name)
    except (ZoneInfoNotFoundError, ValueError):
        reader.problems.append(
            f"{PREFIX}TIMEZONE={name!r} is not a known IANA time zone (e.g. America/Los_Angeles)"
        )
        return ZoneInfo("UTC")


def load_settings(environ: Mapping[str, str], problems: list[str]) -> Settings:
    """Read FAC_BACKUP_* settings; append every problem to `problems`."""
    r = _Reader(environ, problems)
    port_text = environ.get("PORT", "").strip()
    http_port = 8080
    if port_text:
        if port_text.isdigit() and 0 < int(port_text) < 65536:
            http_port = int(port_text)
        else:
            problems.append(f"PORT={port_text!r} is not a TCP port number")
    pg_bin = r.raw("PG_BIN")
    if pg_bin and not Path(pg_bin).is_dir():
        problems.append(f"{PREFIX}PG_BIN={pg_bin!r} is not a directory")
    return Settings(
        timezone=_read_timezone(r),
        parallel=r.integer("PARALLEL", min(4, os.cpu_count() or 1), 1, 32),
        compression=r.integer("COMPRESSION", 1, 0, 9),
        pg_bin_dir=pg_bin,
        pg_sslmode=r.choice("PGSSLMODE", "prefer", SSL_MODES),
        table_manifest=Path(r.text("TABLE_MANIFEST", str(DEFAULT_TABLE_MANIFEST))),
        control_socket=Path(r.text("CONTROL_SOCKET", "/tmp/fac-backup.sock")),
        http_port=http_port,
        scheduled_cron=r.text("SCHEDULED_CRON", "0 6-18/2 * * *"),
        daily_cron=r.text("DAILY_CRON", "0 20 * * *"),
        check_cron=r.text("CHECK_CRON", "45 5 * * *"),
        catch_up=r.choice("CATCH_UP", "true", ("true", "false")) == "true",
        metrics_refresh_seconds=r.number("METRICS_REFRESH_SECONDS", 60.0, 1.0),
        lock_wait_seconds=r.number("LOCK_WAIT_SECONDS", 3600.0, 0.0),
        snapshot_max_age_hours=r.number("SNAPSHOT_MAX_AGE_HOURS", 48.0, 0.0),
        min_part_size=r.integer("MIN_PART_MIB", 8, 5, 5120) * 1024 * 1024,
        log_format=r.choice("LOG_FORMAT", "auto", ("auto", "json", "console")),
    )


def control_socket_path(environ: Mapping[str, str] | None = None) -> Path:
    """The control socket's path alone: `ctl` needs nothing else of the configuration."""
    environ = os.environ if environ is None else environ
    value = (environ.get(PREFIX + "CONTROL_SOCKET") or "").strip()
    return Path(value) if value else Settings.__dataclass_fields__["control_socket"].default


def read_vcap_text(environ: Mapping[str, str], problems: list[str]) -> tuple[str, str] | None:
    """VCAP_SERVICES itself, or the file named by FAC_BACKUP_VCAP_FILE for local use."""
    path = environ.get(PREFIX + "VCAP_FILE")
    if path:
        try:
            return Path(path).read_text(encoding="utf-8"), f"{PREFIX}VCAP_FILE ({path})"
        except OSError as exc:
            problems.append(f"{PREFIX}VCAP_FILE={path!r} cannot be read: {exc.strerror}")
            return None
    text = environ.get("VCAP_SERVICES")
    if not text:
        problems.append(
            "VCAP_SERVICES is not set (on cloud.gov bind the services; locally set "
            f"{PREFIX}VCAP_FILE to a JSON file of the same shape)"
        )
        return None
    return text, "VCAP_SERVICES"


def load_config(environ: Mapping[str, str] | None = None) -> Config:
    """Read everything once; raise ConfigError naming every problem."""
    environ = os.environ if environ is None else environ
    problems: list[str] = []
    settings = load_settings(environ, problems)
    names = {
        "fac_db": environ.get(PREFIX + "DB_SERVICE") or "fac-db",
        "snapshot_db": environ.get(PREFIX + "SNAPSHOT_DB_SERVICE") or "fac-snapshot-db",
        "media": environ.get(PREFIX + "MEDIA_SERVICE") or "fac-private-s3",
        "backups": environ.get(PREFIX + "BACKUPS_SERVICE") or "backups",
    }
    bindings: dict = {}
    source = read_vcap_text(environ, problems)
    if source is not None:
        parsed, vcap_problems = parse_vcap(*source)
        problems += vcap_problems
        bindings = parsed
    fips = environ.get(PREFIX + "S3_FIPS", "true").strip().lower() not in ("0", "false", "no")
    fac_db = snapshot_db = media = backups = None
    if bindings:
        fac_db = database_binding(bindings, names["fac_db"], problems)
        snapshot_db = database_binding(bindings, names["snapshot_db"], problems)
        media = bucket_binding(bindings, names["media"], problems, prefer_fips=fips)
        backups = bucket_binding(bindings, names["backups"], problems, prefer_fips=fips)
    elif source is not None and not problems:
        problems.append("VCAP_SERVICES holds no bindings")
    if fac_db and snapshot_db and fac_db.same_database_as(snapshot_db):
        problems.append(
            f"the snapshot binding {snapshot_db.name!r} points at the same database as "
            f"{fac_db.name!r} ({fac_db.host}:{fac_db.port}/{fac_db.dbname}); the snapshot copy "
            "would overwrite the live database"
        )
    if media and backups and media.bucket == backups.bucket:
        problems.append(
            f"the media binding {media.name!r} and the backups binding {backups.name!r} "
            f"name the same bucket {media.bucket!r}"
        )
    if problems:
        raise ConfigError(
            f"configuration has {len(problems)} problem(s); nothing was started",
            detail="\n".join(f"- {p}" for p in problems),
            hint="fix the environment or the service bindings and start again",
        )
    assert fac_db and snapshot_db and media and backups
    return Config(fac_db, snapshot_db, media, backups, settings)
