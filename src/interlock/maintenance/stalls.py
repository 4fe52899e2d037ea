"""stalls.scan: fail the attempts of jobs whose worker hung or died, flag long waits."""

from __future__ import annotations

from typing import Any

from interlock.maintenance.context import MaintenanceContext, Probe

KIND = "stalls.scan"


async def due(probe: Probe) -> bool:
    """An expired lease, or a queued job waiting past its lane's threshold, not yet flagged."""
    now = probe.clock.now()
    if await probe.reads.any_expired_lease(now):
        return True
    for lane, settings in probe.config.lanes.items():
        if await probe.reads.any_unflagged_wait(lane, now - settings.stall_after_seconds):
            return True
    return False


async def scan(ctx: MaintenanceContext) -> dict[str, Any]:
    """Expired leases are failed attempts (retried, or dead once spent); long waits flagged."""
    requeued = await ctx.hub.requeue_stalled()
    flagged = await ctx.hub.flag_long_waits()
    return {
        "requeued": [job.id for job in requeued],
        "flagged": [job.id for job in flagged],
    }
