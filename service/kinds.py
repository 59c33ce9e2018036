"""Which jobs make backups, and the kind of id (a layout.ID_FORMATS key) each one writes.

The job registry (service.jobs) names its db_to_s3 backups from here, and the
prune (service.tasks.prune) reads here which jobs' failures must stop it:
both import this module, neither imports the other.
"""

from __future__ import annotations

# job -> the kind (a layout.ID_FORMATS key) of the backup its db_to_s3 step writes
BACKUP_KINDS: dict[str, str] = {
    "initial_backup": "initial",
    "deploy_backup": "deploy",
    "scheduled_backup": "scheduled",
    "daily_backup": "daily",
    "on_demand_backup": "on-demand",
    "db_to_s3": "on-demand",
}
# What a restore writes before it replaces fac-db (s3_restore, db_restore).
PRE_RESTORE = "pre-restore"
DEFAULT_KIND = "on-demand"

BACKUP_JOBS: frozenset[str] = frozenset(BACKUP_KINDS)


def backup_kind(job: str) -> str:
    """The id kind of a backup made by `job` (an on-demand id for a job not listed)."""
    return BACKUP_KINDS.get(job, DEFAULT_KIND)
