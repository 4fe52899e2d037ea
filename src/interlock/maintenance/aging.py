"""priority.age: make the aging of waiting jobs visible, one event per aging step.

Claim order inside a lane is `created_at - priority * aging_seconds`, fixed
when a job is submitted (see the README, "Lanes, order and aging"). Aging is
therefore already built into the order: each aging step a job waits, every
job submitted after it needs one more point of priority to overtake it, and
after enough waiting it comes before anything new. Nothing has to be
rewritten for that to hold.

This kind only records it. A queued job that has waited past one or more
further aging steps since its last `aged` event gets one new event that says
its effective priority now, `priority + floor(wait / aging_seconds)`: at
most one event per step per job, however often the timer runs.

It must not change the claim order. Raising the stored priority or moving the
order key would count the wait twice (the key already accounts for it), so
jobs that aged would jump ahead of equally old jobs the scan had not reached
yet; and it would rewrite the claim index for every waiting job on every
pass, with no change in who runs next.
"""

from __future__ import annotations

from typing import Any

from interlock.maintenance.context import MaintenanceContext, Probe

KIND = "priority.age"
# Events per write: one short transaction, however deep the lane.
BATCH_ROWS = 5000


async def due(probe: Probe) -> bool:
    """A queued job that has waited at least one aging step of its lane."""
    now = probe.clock.now()
    for lane, settings in probe.config.lanes.items():
        if await probe.reads.any_queued_since(lane, now - settings.aging_seconds):
            return True
    return False


async def age(ctx: MaintenanceContext) -> dict[str, Any]:
    """Record an `aged` event on every queued job that waited past another aging step."""
    now = ctx.clock.now()  # one instant for every batch, so the passes converge
    aged: dict[str, int] = {}  # lane -> events recorded (counts: a deep lane has thousands)
    for lane in ctx.config.lanes:
        while True:
            ids = await ctx.hub.record_aging(lane, now, BATCH_ROWS)
            if ids:
                aged[lane] = aged.get(lane, 0) + len(ids)
                ctx.progress(f"aged {sum(aged.values())} job(s)")
            if len(ids) < BATCH_ROWS:
                break
    return {"aged": aged}
