"""prune_backups: apply the retention policy (service.retention) to the backups bucket.

1. List everything under `backups/` once and classify each backup prefix:
   complete (a readable manifest), incomplete (this service's `schema.dump`
   but no manifest: a failed run's leftover), or foreign (anything else, such
   as the old tool's backups, which have neither; never deleted by a rule).
2. Refuse, as a safety error, when backups look broken: the newest backup has
   no manifest, none is complete, the newest complete one is too old, or the
   last backup run seen by this process failed. A failing system must not eat
   its own history.
3. Decide, and log every decision with its reason (a backup held by the
   integrity watch is kept: retention.decide). Without options["apply"]
   this is a dry run: nothing is deleted (the CLI's default).
4. Delete oldest first, each backup's manifest before its dumps and its
   schema.dump last: an interrupted prune leaves at worst an incomplete backup
   (which the next prune removes), never one that looks complete but lacks a dump.
5. Then the kept media versions no kept backup needs, and the run journal's
   records and stored reports older than FAC_BACKUP_JOURNAL_KEEP_DAYS.
"""

from __future__ import annotations

from datetime import UTC, datetime

from service import bucket_rules, catalog, integrity, journal, kinds, layout, notify
from service.errors import BackupNotFoundError, IntegrityError, SafetyError, ServiceError
from service.retention import COMPLETE, FOREIGN, INCOMPLETE, Decision, Record, decide, refusal
from service.storage import ObjectInfo, ObjectStore
from service.tasks.prune_versions import prune_media_versions

EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


def group_prefixes(store: ObjectStore) -> dict[str, list[ObjectInfo]]:
    """backup id -> every object under `backups/<id>/` (nested keys included)."""
    groups: dict[str, list[ObjectInfo]] = {}
    for obj in catalog.list_backup_objects(store):
        rest = obj.key[len(layout.BACKUPS_PREFIX):]
        if "/" in rest:
            groups.setdefault(rest.split("/", 1)[0], []).append(obj)
    return groups


def classify(store: ObjectStore, backup_id: str, objects: list[ObjectInfo]) -> Record:
    """The retention record of one prefix; see the module docstring for the three states."""
    size = sum(o.size for o in objects)
    newest_write = max((o.last_modified for o in objects if o.last_modified), default=None)
    names = {o.key[len(layout.backup_prefix(backup_id)):] for o in objects}
    nested = any("/" in name for name in names)
    if not nested and layout.MANIFEST_NAME in names:
        try:
            manifest = catalog.read_manifest(store, backup_id)
            started = datetime.fromisoformat(manifest.started_at)
            holds = manifest.integrity.get("baseline", "") if integrity.dropped_tables(manifest) and \
                layout.ACKNOWLEDGED_NAME not in names else ""
            return Record(backup_id, COMPLETE, started if started.tzinfo else started.replace(tzinfo=UTC), size,
                          holds)
        except (IntegrityError, BackupNotFoundError, ValueError):
            pass  # an unreadable manifest: nobody can tell what the backup holds; keep it
    elif not nested and names & {layout.SCHEMA_NAME, layout.PRIVILEGES_NAME} and newest_write is not None:
        return Record(backup_id, INCOMPLETE, newest_write, size)
    return Record(backup_id, FOREIGN, newest_write or EPOCH, size)


def read_records(store: ObjectStore) -> tuple[list[Record], dict[str, list[ObjectInfo]]]:
    """Every prefix under `backups/` as a record, and its objects (what a deletion removes)."""
    groups = group_prefixes(store)
    return [classify(store, backup_id, objects) for backup_id, objects in groups.items()], groups


def failed_backup_run() -> str | None:
    """The backup job whose run, the newest of any backup job in this process, failed."""
    outcomes = [(when, job, outcome) for job, (outcome, when) in notify.last_outcomes().items()
                if job in kinds.BACKUP_JOBS]
    if not outcomes:
        return None
    _, job, outcome = max(outcomes)
    return job if outcome in notify.FAILED else None


def delete_backup(store: ObjectStore, backup_id: str, objects: list[ObjectInfo]) -> None:
    """The manifest first (the backup stops being complete), the table dumps, schema.dump
    and privileges.json last.

    Whenever this stops, what is left either still has every object its manifest
    names, or has no manifest and keeps its schema.dump (or privileges.json), which marks it as this
    service's incomplete backup for the next prune to remove.
    """
    manifest = layout.manifest_key(backup_id)
    markers = (layout.schema_key(backup_id), layout.privileges_key(backup_id))
    keys = [o.key for o in objects]
    for batch in ([manifest], [k for k in keys if k != manifest and k not in markers], list(markers)):
        batch = [k for k in batch if k in keys]
        if batch:
            store.delete_objects(batch)


def bucket_will_expire(ctx, store: ObjectStore, decisions: list[Decision], now) -> list:
    """Kept backups that the bucket's own lifecycle rule will delete first, each logged
    (`prune.bucket_will_expire`); a prune never fails for want of the rules."""
    settings = ctx.config.settings
    try:
        expiry = bucket_rules.read_bucket_expiry(store, settings.bucket_expiry_days)
    except ServiceError as exc:
        ctx.log.warning("bucket.rules_check_failed", error=exc.message, detail=exc.detail)
        return []
    if not expiry.readable:
        ctx.log.info("bucket.lifecycle_unreadable", bucket=store.bucket, source=expiry.source,
                     expiry_days=expiry.days, detail=expiry.detail)
    at_risk = bucket_rules.backups_at_risk(decisions, expiry, now, settings.retention)
    for risk in at_risk:
        ctx.log.warning("prune.bucket_will_expire", backup_id=risk.backup_id,
                        expires_at=risk.expires_at.isoformat(timespec="seconds"),
                        kept_because=risk.kept_because, rule=expiry.describe())
    return at_risk


def prune_backups(ctx) -> dict:
    """The prune_backups step: a dry run unless ctx.options['apply']; returns kept/deleted figures."""
    policy = ctx.config.settings.retention
    store = ctx.backups_store()
    apply = bool(ctx.options.get("apply"))
    now = ctx.now()
    records, groups = read_records(store)
    failed = failed_backup_run()
    reason = f"the last {failed} run in this process failed" if failed else refusal(records, now, policy)
    if reason:
        raise SafetyError(f"prune refused: {reason}; nothing was deleted",
                          hint="let a backup succeed first (python -m service list shows the backups)")
    decisions = decide(records, now, policy)
    for d in decisions:
        ctx.log.info("prune.keep" if d.keep else ("prune.delete" if apply else "prune.would_delete"),
                     backup_id=d.record.id, state=d.record.state, bytes=d.record.bytes, reason=d.reason)
    expiring = bucket_will_expire(ctx, store, decisions, now)
    doomed: list[Decision] = sorted((d for d in decisions if not d.keep), key=lambda d: (d.record.when, d.record.id))
    deleted = deleted_bytes = 0
    if apply:
        for d in doomed:
            ctx.scope.check()
            delete_backup(store, d.record.id, groups[d.record.id])
            deleted, deleted_bytes = deleted + 1, deleted_bytes + d.record.bytes
            ctx.log.info("prune.deleted", backup_id=d.record.id, bytes=d.record.bytes)
    else:
        deleted, deleted_bytes = len(doomed), sum(d.record.bytes for d in doomed)
    # After the backups: a backup must never outlive the versions its media restore needs.
    versions = prune_media_versions(ctx, store, decisions, now, apply)
    journaled = journal.prune_journal(store, now, ctx.config.settings.journal_keep_days, apply=apply, log=ctx.log)
    kept = [d for d in decisions if d.keep]
    return {
        **versions,
        **journaled,
        "applied": apply,
        "kept": len(kept),
        "kept_bytes": sum(d.record.bytes for d in kept),
        "deleted": deleted,  # in a dry run: what --apply would delete
        "deleted_bytes": deleted_bytes,
        "foreign": sum(1 for d in decisions if d.record.state == FOREIGN),
        "held": sum(1 for d in decisions if d.held),
        "bucket_will_expire": len(expiring),
        "bucket_expiring": [r.as_dict() for r in expiring],
        "decisions": [{"id": d.record.id, "keep": d.keep, "reason": d.reason, "bytes": d.record.bytes}
                      for d in decisions],
    }
