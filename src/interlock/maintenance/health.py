"""health.snapshot: how the daemon is doing, kept as the job's result for `interlock health`.

It also weighs the autonomy tax of the last 24 hours: when maintenance took
more than its budgeted share of wall time, tokens or cost (and there was
enough feature work to judge), the snapshot records a `budget_exceeded`
event on itself and logs a warning.
"""

from __future__ import annotations

import logging
import os
import time
from typing import Any

import anyio
import anyio.lowlevel

from interlock.domain import EventType, JobState
from interlock.maintenance.context import MaintenanceContext
from interlock.tax import DAY, TaxReport

log = logging.getLogger(__name__)

KIND = "health.snapshot"


async def _loop_lag() -> float:
    """Seconds a ready task waits for the event loop right now."""
    started = time.perf_counter()
    await anyio.lowlevel.checkpoint()
    return time.perf_counter() - started


async def _rss_bytes() -> int | None:
    try:
        statm = await anyio.Path("/proc/self/statm").read_text()
    except OSError:
        return None
    return int(statm.split()[1]) * os.sysconf("SC_PAGE_SIZE")


def budget_finding(report: TaxReport) -> str | None:
    """A sentence when maintenance took more than its budgeted share, or None."""
    if not report.over_budget:
        return None
    shares = report.maintenance.shares
    over = ", ".join(
        f"{getattr(shares, name):.0%} of {name.replace('_seconds', ' time').replace('_', ' ')}"
        for name in report.over_budget_on
    )
    return (
        f"maintenance took {over} in the last 24 h, over its budget of {report.budget:.0%}"
        f" (tax.maintenance_budget; {report.feature.totals.jobs} feature jobs)"
    )


async def snapshot(ctx: MaintenanceContext) -> dict[str, Any]:
    """Lane depths, running, oldest wait per lane, stalls, approvals, store size, lag, RSS."""
    hub = ctx.hub
    now = ctx.clock.now()
    lanes = await hub.lanes()
    counts = await hub.counts()
    stalls = await hub.stalls(within_seconds=3600)
    tax = await hub.tax(DAY)
    warning = budget_finding(tax)
    if warning is not None:
        await hub.note(ctx.job.id, EventType.BUDGET_EXCEEDED, warning)
        log.warning("%s", warning)
    return {
        "at": now,
        "lanes": {
            lane.name: {
                "queued": lane.queued,
                "running": lane.running,
                "paused": lane.paused,
                "paused_reason": lane.paused_reason,
                "oldest_queued_seconds": (
                    None if lane.oldest_queued_at is None else round(now - lane.oldest_queued_at, 3)
                ),
            }
            for lane in lanes
        },
        "jobs": {state.value: count for state, count in counts.items()},
        "running": counts[JobState.RUNNING],
        "stalled": {
            "expired_leases": len(stalls["expired"]),
            "waiting_too_long": len(stalls["waiting"]),
            "stalled_last_hour": len(stalls["recent"]),
        },
        "approvals_waiting": counts[JobState.AWAITING_APPROVAL],
        # The autonomy tax of the last 24 h: maintenance's shares, as fractions.
        "tax": {
            "jobs": tax.totals.jobs,
            "jobs_per_day": tax.totals.jobs_per_day,
            "maintenance": tax.maintenance.shares.model_dump(),
            "budget": tax.budget,
            "over_budget": tax.over_budget,
            "over_budget_on": tax.over_budget_on,
        },
        "store_bytes": await ctx.reads.size_bytes(),
        "loop_lag_seconds": round(await _loop_lag(), 6),
        "rss_bytes": await _rss_bytes(),
    }
