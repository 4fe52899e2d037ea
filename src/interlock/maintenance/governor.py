"""governor: slow down on purpose.

A lane whose recent attempts fail too often, or that spends past the day's
limit, is paused until a person resumes it: a system that is failing fast
should stop and ask, not retry harder. Each finding is an event on the
governor's own job and a warning in the log; the pause itself carries the
reason that `interlock lanes` and `interlock health` show. (The tax budget
is weighed by the health snapshot.)

Failures that happened before a person resumed a lane do not count again:
the window of a resumed lane starts at its resume.
"""

from __future__ import annotations

import logging
from typing import Any

from interlock.config import GovernorConfig
from interlock.domain import EventType
from interlock.maintenance.context import MaintenanceContext, Probe
from interlock.tax import DAY, MAINTENANCE_LANE

log = logging.getLogger(__name__)

KIND = "governor"


async def due(probe: Probe) -> bool:
    """A failed attempt inside the window, or a daily cost limit to watch."""
    policy = probe.config.governor
    if policy.daily_cost_limit > 0:
        return True
    return await probe.reads.any_failure_since(probe.clock.now() - policy.window_seconds)


def _span(seconds: float) -> str:
    """A window length as people say it: 90 s, 15 min, 2 h."""
    if seconds < 120:
        return f"{seconds:.0f} s"
    if seconds < 7200:
        return f"{seconds / 60:.0f} min"
    return f"{seconds / 3600:.0f} h"


def failure_finding(
    lane: str, outcomes: dict[str, tuple[int, int]], policy: GovernorConfig
) -> str | None:
    """Why a lane should pause for its failures, or None.

    The worst kind past the limit is named first; failing that, the lane as a
    whole (many kinds, each with too few attempts to judge alone).
    """
    limit = policy.max_failure_rate
    window = _span(policy.window_seconds)
    worst: tuple[float, str, int, int] | None = None
    for kind, (finished, failed) in sorted(outcomes.items()):
        attempts = finished + failed
        if attempts >= policy.min_attempts and failed / attempts > limit:
            rate = failed / attempts
            if worst is None or rate > worst[0]:
                worst = (rate, kind, failed, attempts)
    if worst is not None:
        rate, kind, failed, attempts = worst
        return (
            f"kind {kind} failed {failed} of {attempts} attempts in {window}"
            f" ({rate:.0%} > {limit:.0%})"
        )
    failed = sum(counts[1] for counts in outcomes.values())
    attempts = failed + sum(counts[0] for counts in outcomes.values())
    if attempts >= policy.min_attempts and failed / attempts > limit:
        return (
            f"lane {lane} failed {failed} of {attempts} attempts in {window}"
            f" ({failed / attempts:.0%} > {limit:.0%})"
        )
    return None


async def govern(ctx: MaintenanceContext) -> dict[str, Any]:
    """Pause lanes failing or spending past their limits."""
    hub = ctx.hub
    policy = ctx.config.governor
    now = ctx.clock.now()
    window_start = now - policy.window_seconds
    midnight = now - now % DAY  # UTC: Unix time has no leap seconds
    resumed = await ctx.reads.lanes_resumed_at()

    spent_today = 0.0
    if policy.daily_cost_limit > 0:
        spent_today = sum(row.cost for row in await ctx.reads.usage(midnight, now))

    attempts: dict[str, dict[str, int]] = {}
    findings: dict[str, str] = {}
    for lane in await hub.lanes():
        if lane.name == MAINTENANCE_LANE or lane.paused:
            continue
        after = max(window_start, resumed.get(lane.name, window_start))
        outcomes = await ctx.reads.attempt_outcomes(lane.name, after)
        attempts[lane.name] = {
            "finished": sum(counts[0] for counts in outcomes.values()),
            "failed": sum(counts[1] for counts in outcomes.values()),
        }
        finding = failure_finding(lane.name, outcomes, policy)
        if finding is None and spent_today > policy.daily_cost_limit:
            finding = await _spend_finding(ctx, lane.name, spent_today, midnight, resumed, now)
        if finding is not None:
            findings[lane.name] = finding
            await hub.set_paused(
                lane.name, True, f"governor: {finding}", actor=f"governor (job {ctx.job.id})"
            )
            log.warning("the governor paused lane %s: %s", lane.name, finding)

    if findings:
        await hub.note(
            ctx.job.id,
            EventType.LANE_PAUSED,
            "; ".join(f"paused lane {lane}: {finding}" for lane, finding in findings.items()),
        )
    return {"paused": findings, "attempts": attempts, "spent_today": spent_today}


async def _spend_finding(
    ctx: MaintenanceContext,
    lane: str,
    spent_today: float,
    midnight: float,
    resumed: dict[str, float],
    now: float,
) -> str | None:
    """The day's spend is past the limit: pause the lane if it spent since it was last opened."""
    since = max(midnight, resumed.get(lane, midnight))
    lane_spend = sum(row.cost for row in await ctx.reads.usage(since, now) if row.lane == lane)
    if lane_spend <= 0:
        return None
    limit = ctx.config.governor.daily_cost_limit
    return (
        f"spent {spent_today:.2f} today (UTC) > daily limit {limit:.2f}"
        f" (governor.daily_cost_limit; this lane {lane_spend:.2f})"
    )
