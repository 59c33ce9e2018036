"""Read the environment and VCAP_SERVICES once into frozen, typed objects.

`load_config(environ)` either returns a Config or raises one ConfigError that
lists every problem, before any work starts. Service settings all use the
FAC_BACKUP_ prefix; standard names (PORT, VCAP_SERVICES) stay standard.
"""

from __future__ import annotations

import json
import math
import os
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from service.egress import Egress, read_egress
from service.errors import ConfigError
from service.hosts import normalize, shared_address
from service.mail import MailRelay, read_mail
from service.retention import KEEP_LAST_FLOOR, MIN_DAYS_FLOOR, RetentionPolicy
from service.vcap import BucketBinding, DatabaseBinding, bucket_binding, credentials, database_binding, parse_vcap

PREFIX = "FAC_BACKUP_"
DEFAULT_TABLE_MANIFEST = Path(__file__).resolve().parent.parent / "deploy" / "fac-tables.txt"
SSL_MODES = ("disable", "allow", "prefer", "require", "verify-ca", "verify-full")
# Tables whose rows FAC deletes by design: expired sessions, revoked access and permissions
# (a removed audit access is copied to audit_deletedaccess), used one-time access links.
DEFAULT_SHRINK_ALLOWED = ("public.django_session", "public.audit_access", "public.dissemination_onetimeaccess",
                          "public.users_userpermission", "public.auth_user_groups", "public.authtoken_token")


@dataclass(frozen=True)
class Settings:
    """The service's own settings (FAC_BACKUP_*)."""

    timezone: ZoneInfo
    parallel: int = 2
    compression: int = 1
    compression_method: str = "gzip"  # gzip, lz4, zstd (pg_dump 16+ builds that have them) or none
    pg_bin_dir: str | None = None
    pg_root: str | None = None  # <root>/<major>/bin hold the installed clients (default /usr/lib/postgresql)
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
    dump_lock_wait_seconds: int = 600
    restore_lock_wait_seconds: int = 300  # a restore waiting longer for a lock on fac-db gives up, changing nothing
    min_part_size: int = 8 * 1024 * 1024
    log_format: str = "auto"
    sync_concurrency: int = 16  # objects copied at once by the media sync
    retention: RetentionPolicy = RetentionPolicy()
    verify_cron: str = "0 3 * * 0"  # the weekly restore drill (verify_backup)
    prune_after_daily: bool = True  # prune_backups --apply after each successful daily_backup
    progress_seconds: float = 30.0  # one step.progress event per this many seconds of a step; 0: off
    bucket_expiry_days: int | None = None  # the backups bucket's expiry when its rules cannot be read
    # The evidence: run journal, contingency report, integrity watch (service.journal, report, integrity)
    journal_keep_days: int = 365  # the retention deletes journal records and reports older than this
    report_cron: str = "0 7 1 * *"  # the daemon's contingency report of the previous month; "off" disables
    shrink_allowed_tables: tuple[str, ...] = DEFAULT_SHRINK_ALLOWED  # rows may drop without a flag
    shrink_threshold_percent: float = 0.1  # a table losing more than this share of its rows is flagged
    # Allocated storage of each database binding, in GB as the RDS broker's `storage` parameter gives it
    # (service.space: GiB, 2^30 bytes); None: unknown, so the snapshot copy takes the space-safe method
    fac_db_storage_gb: float | None = None
    snapshot_db_storage_gb: float | None = None
    # Stalls: a long step that moves nothing for this long is stopped (service.watchdog); 0: off.
    stall_seconds: float = 300.0


@dataclass(frozen=True)
class Config:
    """Everything a job needs to know about the world, read once."""

    fac_db: DatabaseBinding
    snapshot_db: DatabaseBinding
    media: BucketBinding
    backups: BucketBinding
    settings: Settings
    restore_test_db: DatabaseBinding | None = None  # scratch database of the restore drill
    webhook_url: str | None = field(default=None, repr=False)  # a Slack webhook URL is a credential
    space: str | None = None  # cloud.gov space the app runs in (VCAP_APPLICATION), to say where a message came from
    # Notifications from a restricted-egress space: the proxy they use, and the mail relay
    egress: Egress = Egress()
    mail: MailRelay | None = None

    def secrets(self) -> tuple[str, ...]:
        """Every secret value, for the log redactor."""
        values = [self.fac_db.password, self.snapshot_db.password, self.webhook_url]
        if self.restore_test_db is not None:
            values.append(self.restore_test_db.password)
        for b in (self.media, self.backups):
            values += [b.secret_access_key, b.access_key_id]
        values += self.egress.secrets()
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


COMPRESSION_LEVELS = {"gzip": (0, 9), "lz4": (1, 12), "zstd": (1, 22), "none": (0, 0)}


def _read_compression(text: str, problems: list[str]) -> tuple[str, int]:
    """FAC_BACKUP_COMPRESSION: a gzip level (`1`), `METHOD` or `METHOD:LEVEL` (gzip, lz4, zstd), or `none`."""
    if not text:
        return "gzip", 1
    method, _, level_text = text.partition(":") if not text.isdigit() else ("gzip", "", text)
    method = method.lower()
    if method not in COMPRESSION_LEVELS:
        problems.append(f"{PREFIX}COMPRESSION={text}: the method must be gzip, lz4, zstd or none "
                        "(a level alone means gzip)")
        return "gzip", 1
    low, high = COMPRESSION_LEVELS[method]
    if method == "none":
        return "none", 0
    if not level_text:
        return method, {"gzip": 1, "lz4": 1, "zstd": 3}[method]
    if not level_text.isdigit() or not low <= int(level_text) <= high:
        problems.append(f"{PREFIX}COMPRESSION={text} is outside {low}..{high} (the {method} levels)")
        return "gzip", 1
    return method, int(level_text)


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
    pg_root = r.raw("PG_ROOT")
    if pg_root and not Path(pg_root).is_dir():
        problems.append(f"{PREFIX}PG_ROOT={pg_root!r} is not a directory")
    method, level = _read_compression(environ.get(f"{PREFIX}COMPRESSION", "").strip(), problems)
    return Settings(
        timezone=_read_timezone(r),
        parallel=r.integer("PARALLEL", min(4, os.cpu_count() or 1), 1, 32),
        compression=level,
        compression_method=method,
        pg_bin_dir=pg_bin,
        pg_root=pg_root,
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
        dump_lock_wait_seconds=r.integer("DUMP_LOCK_WAIT_SECONDS", 600, 1, 86400),
        restore_lock_wait_seconds=r.integer("RESTORE_LOCK_WAIT_SECONDS", 300, 1, 86400),
        min_part_size=r.integer("MIN_PART_MIB", 8, 5, 5120) * 1024 * 1024,
        log_format=r.choice("LOG_FORMAT", "auto", ("auto", "json", "console")),
        sync_concurrency=r.integer("SYNC_CONCURRENCY", 16, 1, 64),
        retention=read_retention(r),
        verify_cron=r.text("VERIFY_CRON", "0 3 * * 0"),
        prune_after_daily=r.choice("PRUNE_AFTER_DAILY", "true", ("true", "false")) == "true",
        progress_seconds=r.number("PROGRESS_SECONDS", 30.0, 0.0),
        bucket_expiry_days=r.integer("BUCKET_EXPIRY_DAYS", 0, 1, 36500) if r.raw("BUCKET_EXPIRY_DAYS") else None,
        # The evidence: run journal, contingency report, integrity watch
        journal_keep_days=r.integer("JOURNAL_KEEP_DAYS", 365, 14, 36500),
        report_cron=r.text("REPORT_CRON", "0 7 1 * *"),
        shrink_allowed_tables=read_table_list(r, "SHRINK_ALLOWED_TABLES", DEFAULT_SHRINK_ALLOWED),
        shrink_threshold_percent=r.number("SHRINK_THRESHOLD_PERCENT", 0.1, 0.0),
        # Database storage (the disks production gives each binding)
        fac_db_storage_gb=read_storage_gb(r, "FAC_DB_STORAGE_GB"),
        snapshot_db_storage_gb=read_storage_gb(r, "SNAPSHOT_DB_STORAGE_GB"),
        # Stalls
        stall_seconds=r.number("STALL_SECONDS", 300.0, 0.0),
    )


_TABLE_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_$]*(\.[A-Za-z_][A-Za-z0-9_$]*)?$")


def read_table_list(r: _Reader, name: str, default: tuple[str, ...]) -> tuple[str, ...]:
    """A comma-separated list of `schema.table` or `table` (public); `none` for an empty list."""
    value = r.raw(name)
    if value is None:
        return default
    if value.lower() == "none":
        return ()
    names = [n.strip() for n in value.split(",") if n.strip()]
    bad = [n for n in names if not _TABLE_NAME.match(n)]
    if bad:
        r.problems.append(f"{PREFIX}{name}: {', '.join(map(repr, bad))} is not 'schema.table' or 'table'")
    return tuple(sorted({n if "." in n else f"public.{n}" for n in names}))


def read_storage_gb(r: _Reader, name: str) -> float | None:
    """A binding's allocated storage in GB (decimals allowed, as the broker's `storage`); None when unset."""
    value = r.raw(name)
    if value is None:
        return None
    try:
        number = float(value)
    except ValueError:
        number = float("nan")
    if not math.isfinite(number) or number <= 0 or number > 65536:
        r.problems.append(f"{PREFIX}{name}={value!r} must be the binding's storage in GB, a number above 0 "
                          "and at most 65536, RDS's largest (the `storage` of its RDS plan, e.g. 200; "
                          "decimals allowed)")
        return None
    return number


def read_retention(r: _Reader) -> RetentionPolicy:
    """FAC_BACKUP_RETENTION_*; the floors are those of the team's existing clean-up command."""
    min_days = r.integer("RETENTION_MIN_DAYS", 14, 0, 36500)
    if min_days < MIN_DAYS_FLOOR:
        r.problems.append(f"{PREFIX}RETENTION_MIN_DAYS={min_days}: backups younger than "
                          f"{MIN_DAYS_FLOOR} days must never be pruned")
    keep_last = r.integer("RETENTION_KEEP_LAST", 3, 0, 10000)
    if keep_last < KEEP_LAST_FLOOR:
        r.problems.append(f"{PREFIX}RETENTION_KEEP_LAST={keep_last} must be at least {KEEP_LAST_FLOOR}")
    milestone_days = r.integer("RETENTION_MILESTONE_MIN_DAYS", max(365, min_days), 0, 36500)
    if milestone_days < min_days:
        r.problems.append(f"{PREFIX}RETENTION_MILESTONE_MIN_DAYS={milestone_days} must be at least "
                          f"{PREFIX}RETENTION_MIN_DAYS ({min_days}): initial and pre-restore backups live longer")
    return RetentionPolicy(
        min_days=min_days,
        keep_last=keep_last,
        keep_daily_days=r.integer("RETENTION_KEEP_DAILY_DAYS", 0, 0, 36500),
        keep_weekly_weeks=r.integer("RETENTION_KEEP_WEEKLY_WEEKS", 0, 0, 5200),
        milestone_min_days=milestone_days,
        milestone_keep_last=r.integer("RETENTION_MILESTONE_KEEP_LAST", max(5, keep_last), KEEP_LAST_FLOOR, 10000),
        max_backup_age_hours=r.number("RETENTION_MAX_BACKUP_AGE_HOURS", 48.0, 1.0),
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


def read_restore_test_db(environ: Mapping[str, str], bindings: dict, protected: tuple, problems: list[str]):
    """The drill's scratch database (FAC_BACKUP_RESTORE_TEST_DB_SERVICE names an aws-rds
    binding), or None; one that points at fac-db or fac-snapshot-db is refused."""
    name = (environ.get(PREFIX + "RESTORE_TEST_DB_SERVICE") or "").strip()
    if not name or not bindings:
        return None
    scratch = database_binding(bindings, name, problems)
    for other in protected:
        if scratch is not None and other is not None and scratch.same_database_as(other):
            problems.append(same_database_problem("restore test", scratch, other, "the restore drill would "
                                                  "overwrite it"))
            return None
    return scratch


def same_database_problem(role: str, binding: DatabaseBinding, other: DatabaseBinding, consequence: str) -> str:
    """The problem of a binding that names `other`'s database, saying how it was found out."""
    where = f"{other.host}:{other.port}/{other.dbname}"
    if normalize(binding.host) != normalize(other.host):
        common = shared_address(binding.host, other.host)
        where += f", as {binding.host}" + (f": both resolve to {common}" if common else ": both are this machine")
    return f"the {role} binding {binding.name!r} points at the same database as {other.name!r} ({where}); {consequence}"


def read_webhook_url(environ: Mapping[str, str], bindings: dict, problems: list[str]) -> str | None:
    """The failure webhook: FAC_BACKUP_WEBHOOK_URL, or `credentials.url` of the user-provided
    binding named by FAC_BACKUP_WEBHOOK_SERVICE; never both. The URL is never printed."""
    direct = (environ.get(PREFIX + "WEBHOOK_URL") or "").strip()
    service = (environ.get(PREFIX + "WEBHOOK_SERVICE") or "").strip()
    if direct and service:
        problems.append(f"set only one of {PREFIX}WEBHOOK_URL and {PREFIX}WEBHOOK_SERVICE")
        return None
    url, source = direct, f"{PREFIX}WEBHOOK_URL"
    if service:
        source = f"binding {service!r}"
        if service not in bindings:
            problems.append(f"no service binding named {service!r} in VCAP_SERVICES ({PREFIX}WEBHOOK_SERVICE)")
            return None
        creds = credentials(bindings[service], service, ("url",), problems)
        if creds is None:
            return None
        url = str(creds["url"]).strip()
    if url and not url.lower().startswith(("https://", "http://")):
        problems.append(f"the webhook URL from {source} must start with https:// (or http://)")
        return None
    return url or None


def read_space_name(environ: Mapping[str, str]) -> str | None:
    """The cloud.gov space from VCAP_APPLICATION, or None (a local run, or a value we cannot read:
    it only labels notifications, so it never stops the service)."""
    try:
        value = json.loads(environ.get("VCAP_APPLICATION") or "{}").get("space_name")
    except (ValueError, AttributeError):
        return None
    return value.strip() if isinstance(value, str) and value.strip() else None


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
    if fac_db and snapshot_db and snapshot_db.same_database_as(fac_db):
        problems.append(same_database_problem("snapshot", snapshot_db, fac_db, "the snapshot copy would "
                                              "overwrite the live database, and db_restore copy it onto itself"))
    restore_test_db = read_restore_test_db(environ, bindings, (fac_db, snapshot_db), problems)
    webhook_url = read_webhook_url(environ, bindings, problems)
    # Notifications from a restricted-egress space (service.egress, service.mail)
    egress = read_egress(environ, bindings, problems)
    mail = read_mail(environ, bindings, problems)
    if media and backups and media.same_bucket_as(backups):
        problems.append(
            f"the media binding {media.name!r} and the backups binding {backups.name!r} "
            f"name the same bucket {media.bucket!r} (on {media.endpoint_url or 'AWS'}); the media sync "
            "would copy the bucket onto itself"
        )
    if problems:
        raise ConfigError(
            f"configuration has {len(problems)} problem(s); nothing was started",
            detail="\n".join(f"- {p}" for p in problems),
            hint="fix the environment or the service bindings and start again",
        )
    assert fac_db and snapshot_db and media and backups
    return Config(fac_db, snapshot_db, media, backups, settings, restore_test_db, webhook_url,
                  read_space_name(environ), egress=egress, mail=mail)
