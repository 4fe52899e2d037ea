"""governor: slow down on purpose.

A lane whose recent attempts fail too often, or that spends past the day's
limit, is paused until a person resumes it: a system that is failing fast
should stop and ask, not retry harder. Maintenance taking more than its
budgeted share of the jobs is a warning, not a pause. Each finding is an
event on the governor's own job; the pause itself carries the reason that
`interlock lanes` and `interlock health` show.

Failures that happened before a person resumed a lane do not count again:
the window of a resumed lane starts at its resume.
"""

from __future__ import annotations

from typing import Any

from interlock.config import GovernorConfig
from interlock.domain import EventType
from interlock.handlers import JobContext
from interlock.tax import DAY, MAINTENANCE_LANE, TaxReport

KIND = "governor"


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


def budget_finding(report: TaxReport) -> str | None:
    """A sentence when maintenance took more than its budgeted share of the jobs, or None."""
    if not report.over_budget:
        return None
    share = report.maintenance.shares.jobs
    return (
        f"maintenance took {share:.0%} of the {report.totals.jobs} jobs of the last"
        f" {_span(report.until - report.since)}, over its budget of {report.budget:.0%}"
        " (tax.maintenance_budget)"
    )


async def govern(ctx: JobContext) -> dict[str, Any]:
    """Pause lanes failing or spending past their limits; warn when maintenance is over budget."""
    hub = ctx.hub
    policy = hub.config.governor
    now = ctx.clock.now()
    window_start = now - policy.window_seconds
    midnight = now - now % DAY  # UTC: Unix time has no leap seconds
    resumed = await hub.store.lanes_resumed_at()

    spent_today = 0.0
    if policy.daily_cost_limit > 0:
        spent_today = sum(row.cost for row in await hub.store.usage(midnight, now))

    attempts: dict[str, dict[str, int]] = {}
    findings: dict[str, str] = {}
    for lane in await hub.lanes():
        if lane.name == MAINTENANCE_LANE or lane.paused:
            continue
        after = max(window_start, resumed.get(lane.name, window_start))
        outcomes = await hub.store.attempt_outcomes(lane.name, after)
        attempts[lane.name] = {
            "finished": sum(counts[0] for counts in outcomes.values()),
            "failed": sum(counts[1] for counts in outcomes.values()),
        }
        finding = failure_finding(lane.name, outcomes, policy)
        if finding is None and spent_today > policy.daily_cost_limit:
            finding = await _spend_finding(ctx, lane.name, spent_today, midnight, resumed, now)
        if finding is not None:
            findings[lane.name] = finding
            await hub.set_paused(lane.name, True, f"governor: {finding}")

    if findings:
        await hub.note(
            ctx.job.id,
            EventType.LANE_PAUSED,
            "; ".join(f"paused lane {lane}: {finding}" for lane, finding in findings.items()),
        )
    report = await hub.tax(DAY)
    warning = budget_finding(report)
    if warning is not None:
        await hub.note(ctx.job.id, EventType.BUDGET_EXCEEDED, warning)
    return {
        "paused": findings,
        "attempts": attempts,
        "spent_today": spent_today,
        "maintenance_share": report.maintenance.shares.jobs,
        "over_budget": report.over_budget,
    }


async def _spend_finding(
    ctx: JobContext,
    lane: str,
    spent_today: float,
    midnight: float,
    resumed: dict[str, float],
    now: float,
) -> str | None:
    """The day's spend is past the limit: pause the lane if it spent since it was last opened."""
    since = max(midnight, resumed.get(lane, midnight))
    lane_spend = sum(row.cost for row in await ctx.hub.store.usage(since, now) if row.lane == lane)
    if lane_spend <= 0:
        return None
    limit = ctx.hub.config.governor.daily_cost_limit
    return (
        f"spent {spent_today:.2f} today (UTC) > daily limit {limit:.2f}"
        f" (governor.daily_cost_limit; this lane {lane_spend:.2f})"
    )
