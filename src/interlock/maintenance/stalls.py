"""stalls.scan: requeue jobs whose worker hung or died, flag jobs that wait too long."""

from __future__ import annotations

from typing import Any

from interlock.handlers import JobContext


async def scan(ctx: JobContext) -> dict[str, Any]:
    """Expired leases are requeued (or dead once attempts are spent); long waits are flagged."""
    requeued = await ctx.hub.requeue_stalled()
    flagged = await ctx.hub.flag_long_waits()
    return {
        "requeued": [job.id for job in requeued],
        "flagged": [job.id for job in flagged],
    }
