"""store.retention: back the store up, then delete finished jobs past the retention window.

The backup comes first, so whatever a pass deletes is still in the newest
backups for a while. It is SQLite's online backup (a consistent snapshot,
taken while the daemon keeps writing) into <backup folder>/interlock-<UTC
time>.db, taken when the newest backup is older than
`retention.backup_every_seconds` (a day); after it, only the newest
`retention.backups` generations stay.

Then finished jobs (done, dead, cancelled) that ended more than
`retention.days` ago go, with their events, oldest first, a few thousand rows
per write so no other write waits long for the lock. A live job is never
touched, and a job that another job still names as its parent or root stays
until that job has gone too, so `interlock why` never meets a hole.
"""

from __future__ import annotations

import os
import re
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import anyio
import anyio.to_thread

from interlock.config import RetentionConfig
from interlock.maintenance.context import MaintenanceContext, Probe

KIND = "store.retention"
DAY = 86_400.0
# Rows (a job and its events) per delete transaction: a few milliseconds of write lock.
BATCH_ROWS = 5000
_BACKUP = re.compile(r"interlock-\d{8}T\d{6}Z\.db")


def backup_name(at: float) -> str:
    """interlock-20250102T030405Z.db: sorts by time, as a name."""
    return f"interlock-{datetime.fromtimestamp(at, UTC):%Y%m%dT%H%M%SZ}.db"


def newest_backup(folder: Path) -> str | None:
    """The name of the newest whole backup in `folder`, if any (blocking: run in a thread)."""
    try:
        names = [entry.name for entry in os.scandir(folder) if _BACKUP.fullmatch(entry.name)]
    except FileNotFoundError:
        return None
    return max(names, default=None)


def backup_due(settings: RetentionConfig, folder: Path, now: float) -> bool:
    """Whether the newest backup is older than the backup interval (blocking)."""
    if settings.backups == 0:
        return False
    newest = newest_backup(folder)
    return newest is None or newest <= backup_name(now - settings.backup_every_seconds)


async def due(probe: Probe) -> bool:
    """Finished jobs past the window, or a backup that is due."""
    settings = probe.config.retention
    now = probe.clock.now()
    folder = settings.folder(probe.state_dir)
    if await anyio.to_thread.run_sync(backup_due, settings, folder, now):
        return True
    return await probe.reads.any_finished_before(now - settings.days * DAY)


async def retention(ctx: MaintenanceContext) -> dict[str, Any]:
    """Back the store up when due and keep the newest generations; prune what ended before."""
    settings = ctx.config.retention
    now = ctx.clock.now()
    before = now - settings.days * DAY
    result: dict[str, Any] = {"backup": None, "backups_removed": [], "before": before}
    folder = settings.folder(ctx.state_dir)
    if await anyio.to_thread.run_sync(backup_due, settings, folder, now):
        target = await _back_up(ctx, folder, now)
        result["backup"] = str(target)
        result["backups_removed"] = await _rotate(folder, settings.backups, now)
    jobs = events = 0
    while True:
        pruned = await ctx.hub.prune_finished(before, BATCH_ROWS)
        if pruned.jobs == 0:
            break
        jobs += pruned.jobs
        events += pruned.events
        ctx.progress(f"pruned {jobs} job(s)")
    result["pruned_jobs"] = jobs
    result["pruned_events"] = events
    return result


async def _back_up(ctx: MaintenanceContext, folder: Path, now: float) -> Path:
    await anyio.Path(folder).mkdir(parents=True, exist_ok=True, mode=0o700)
    target = folder / backup_name(now)
    await ctx.hub.backup(target)
    return target


async def _rotate(folder: Path, keep: int, now: float) -> list[str]:
    """Delete all but the newest `keep` backups, and what an interrupted backup left behind.

    A partial copy is taken for a leftover only once it is a day old: a
    younger one may belong to a backup that another pass is still writing.
    """
    names: list[str] = []
    leftovers: list[str] = []
    stale = backup_name(now - DAY)
    async for entry in anyio.Path(folder).iterdir():
        name = entry.name
        if _BACKUP.fullmatch(name):
            names.append(name)
        elif name.endswith(".part"):
            base = name.removesuffix(".part")
            if _BACKUP.fullmatch(base) and base < stale:
                leftovers.append(name)
    names.sort()
    removed = names[:-keep]
    for name in removed + leftovers:
        await anyio.Path(folder / name).unlink(missing_ok=True)
    return removed
