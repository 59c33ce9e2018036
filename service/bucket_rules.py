"""The backups bucket's own lifecycle rules against what the retention promises.

cloud.gov puts a lifecycle rule on the buckets it brokers that deletes every
object some days (60 for FAC) after it was written, whatever this service's
retention decided, and the team may not change it (nor, often, read it). S3
applies it per object: it deletes `initial-*` backups that the retention keeps
for a year, the newest backup of a kind that stopped running, and the media
copies at the bucket's root (the next media sync then copies them all again).

This module reads the rules where the credentials allow, else takes
FAC_BACKUP_BUCKET_EXPIRY_DAYS (unset: unknown), and works out which backups
the retention keeps but the bucket will delete ("at risk"): those kept by an
age rule longer than the expiry (`min_days`, `milestone_min_days`, the daily
and weekly windows), the newest backups of a kind (kept whatever their
age) that the bucket deletes within `SOON`, and every baseline the integrity
watch holds (kept until acknowledged, however old). It never works around the rule:
rewriting objects to reset their age would make a backup's objects lie about
when they were made.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime, time, timedelta

from service import layout
from service.errors import AccessDeniedError, ServiceError
from service.retention import COMPLETE, MILESTONE_KINDS, Decision, RetentionPolicy

SOON = timedelta(days=7)  # a kept backup that the bucket deletes within this is at risk whatever keeps it
MEDIA_NOTE = ("the rule also deletes the media copies at the bucket's root; the next media_sync copies "
              "every one of them again")


@dataclass(frozen=True)
class BucketExpiry:
    """How long the bucket keeps a backup's objects: `days` None when unknown or never."""

    days: int | None
    source: str  # "rule" (read from the bucket), "setting", "none" (no rule) or "unknown"
    rule_id: str = ""
    prefix: str = ""
    readable: bool = True  # False when the credentials may not read the rules
    covers_media: bool = False
    detail: str = ""  # why the rules could not be read

    def describe(self) -> str:
        if self.source == "rule":
            where = f"prefix {self.prefix!r}" if self.prefix else "every key"
            return f"lifecycle rule {self.rule_id!r}: objects deleted {self.days} days after they are written ({where})"
        if self.source == "setting":
            return f"FAC_BACKUP_BUCKET_EXPIRY_DAYS={self.days} (the bucket's rules could not be read)"
        return "no expiry known"

    def expires_at(self, written: datetime) -> datetime:
        """When S3 deletes an object written at `written`: `days` later, at the next midnight UTC."""
        assert self.days is not None
        day = (written.astimezone(UTC) + timedelta(days=self.days)).date()
        return datetime.combine(day + timedelta(days=1), time(0), tzinfo=UTC)


@dataclass(frozen=True)
class AtRisk:
    """A backup the retention keeps and the bucket will delete, and when."""

    backup_id: str
    expires_at: datetime
    kept_because: str

    def as_dict(self) -> dict:
        return {"id": self.backup_id, "expires_at": self.expires_at.isoformat(timespec="seconds"),
                "kept_because": self.kept_because}


def read_bucket_expiry(store, setting_days: int | None) -> BucketExpiry:
    """The shortest expiry that applies to backups in `store`, from its rules or the setting.

    Raises StorageError for failures other than a denied read (the caller decides
    whether that may stop it).
    """
    try:
        rules = store.read_expiry_rules()
    except AccessDeniedError as exc:
        source = "setting" if setting_days else "unknown"
        return BucketExpiry(setting_days, source, readable=False, covers_media=bool(setting_days),
                            detail=exc.detail or exc.message)
    backups = [r for r in rules if r.covers(layout.BACKUPS_PREFIX)]
    if not backups:
        return BucketExpiry(None, "none")
    rule = min(backups, key=lambda r: r.days)
    media = any(not r.prefix.startswith(layout.BACKUPS_PREFIX) for r in rules)
    return BucketExpiry(rule.days, "rule", rule.rule_id, rule.prefix, covers_media=media)


def longest_promise_days(policy: RetentionPolicy) -> int:
    """The longest age to which the retention's age rules keep some backup."""
    return max(policy.min_days, policy.milestone_min_days, policy.keep_daily_days, policy.keep_weekly_weeks * 7)


def _age_limit(kind: str | None, policy: RetentionPolicy) -> int:
    if kind in MILESTONE_KINDS:
        return policy.milestone_min_days
    return max(policy.min_days, policy.keep_daily_days, policy.keep_weekly_weeks * 7)


def backups_at_risk(decisions: list[Decision], expiry: BucketExpiry, now: datetime,
                    policy: RetentionPolicy) -> list[AtRisk]:
    """Complete backups the retention keeps that the bucket will delete first (see the module docstring)."""
    if expiry.days is None:
        return []
    newest_of_kind: dict[str, int] = {}
    found = []
    for d in sorted(decisions, key=lambda d: d.record.when, reverse=True):
        record = d.record
        if not d.keep or record.state != COMPLETE or record.kind is None:
            continue
        rank = newest_of_kind[record.kind] = newest_of_kind.get(record.kind, 0) + 1
        expires = expiry.expires_at(record.when)
        age_limit = _age_limit(record.kind, policy)
        _, keep_last = policy.for_kind(record.kind)
        by_age = age_limit > expiry.days and now - record.when < timedelta(days=age_limit)
        by_rank = rank <= keep_last and expires - now <= SOON
        # The integrity watch's hold keeps a baseline however old: only the bucket can delete it.
        if by_age or by_rank or d.held:
            found.append(AtRisk(record.id, expires, d.reason))
    return sorted(found, key=lambda r: (r.expires_at, r.backup_id))


def expiry_warning(expiry: BucketExpiry, at_risk: list[AtRisk], policy: RetentionPolicy) -> dict | None:
    """The fields of one `bucket.expiry_shorter_than_retention` warning, or None when nothing is at odds."""
    if expiry.days is None:
        return None
    promise = longest_promise_days(policy)
    if promise <= expiry.days and not at_risk:
        return None
    return {"rule": expiry.describe(), "expiry_days": expiry.days, "retention_longest_days": promise,
            "at_risk": [r.as_dict() for r in at_risk],
            "media": MEDIA_NOTE if expiry.covers_media else "",
            "hint": "lower FAC_BACKUP_RETENTION_MILESTONE_MIN_DAYS (and the daily/weekly windows) to the "
                    "expiry or less, and copy a backup that must outlive it to storage of your own "
                    "(docs/retention.md: The bucket's own expiry)"}


class BucketRulesWatcher:
    """Reads the rules at start and once a day for the daemon; warns once per change."""

    def __init__(self, store, settings, metrics, log, *, read_records) -> None:
        self.store, self.settings, self.metrics, self.log = store, settings, metrics, log
        self._read_records = read_records  # tasks.prune.read_records, injected (it imports the registry)
        self._said_denied = False
        self._warned: tuple | None = None

    def refresh(self, now: datetime | None = None) -> BucketExpiry | None:
        """Read the rules and the backups; update the metrics; log what changed. Never raises."""
        from service.retention import decide

        try:
            expiry = read_bucket_expiry(self.store, self.settings.bucket_expiry_days)
            if not expiry.readable and not self._said_denied:
                self._said_denied = True
                self.log.warning("bucket.lifecycle_unreadable", bucket=self.store.bucket, detail=expiry.detail,
                                 expiry_days=expiry.days, source=expiry.source,
                                 hint="cloud.gov manages the rule; set FAC_BACKUP_BUCKET_EXPIRY_DAYS to its "
                                      "days (60 for FAC) so the service can warn about it")
            policy = self.settings.retention
            now = now or datetime.now(self.settings.timezone)
            records, _ = self._read_records(self.store)
            at_risk = backups_at_risk(decide(records, now, policy), expiry, now, policy)
        except ServiceError as exc:
            self.log.warning("bucket.rules_check_failed", error=exc.message, detail=exc.detail)
            return None
        self.metrics.observe_bucket_expiry(expiry.days or 0, longest_promise_days(policy), len(at_risk))
        warning = expiry_warning(expiry, at_risk, policy)
        key = (expiry.days, expiry.rule_id, tuple(r.backup_id for r in at_risk))
        if warning is not None and key != self._warned:
            self._warned = key
            self.log.warning("bucket.expiry_shorter_than_retention", bucket=self.store.bucket, **warning)
        return expiry
