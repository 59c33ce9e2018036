"""media_sync: fac-private-s3 -> backups (and back for restores)."""

from __future__ import annotations


def sync_media(ctx) -> dict:
    """Placeholder until the media sync lands: logs that nothing was copied."""
    ctx.log.warning("media_sync.not_implemented")
    return {"copied": 0}
