"""gates.reopen: a done job that skipped a gate its kind requires goes back to queued.

A kind's `gates` (config: [kinds.NAME] gates) name what a job must pass
before it may stay done: "review" is passed once the job has an event of
type `reviewed`, "approval" once it has one of type `approved`. A job that
closed without them (marked done by hand, or under an older policy) is
reopened by the hub, with trigger `review` and an event that names each
missing gate. With no kind declaring gates there is nothing to look at.
"""

from __future__ import annotations

from typing import Any, Literal

from interlock.domain import EventType
from interlock.errors import InterlockError
from interlock.handlers import JobContext

KIND = "gates.reopen"
# Jobs read per query: the scan pages through done jobs by id.
BATCH_JOBS = 1000

Gate = Literal["review", "approval"]
PASSED_BY: dict[Gate, EventType] = {
    "review": EventType.REVIEWED,
    "approval": EventType.APPROVED,
}


async def reopen(ctx: JobContext) -> dict[str, Any]:
    """Reopen every done job of a gated kind that lacks one of its gates."""
    hub = ctx.hub
    kinds_by_gate: dict[Gate, list[str]] = {gate: [] for gate in PASSED_BY}
    for kind, settings in sorted(hub.config.kinds.items()):
        for gate in settings.gates:
            kinds_by_gate[gate].append(kind)
    missing: dict[int, list[Gate]] = {}  # job id -> its missing gates, in PASSED_BY order
    for gate, kinds in kinds_by_gate.items():
        after = 0
        while kinds:
            jobs = await hub.done_lacking(kinds, PASSED_BY[gate], after, BATCH_JOBS)
            for job in jobs:
                missing.setdefault(job.id, []).append(gate)
            if len(jobs) < BATCH_JOBS:
                break
            after = jobs[-1].id
    reopened: list[int] = []
    refused: list[dict[str, Any]] = []
    beat_every = ctx.lease_seconds / 3
    last_beat = ctx.clock.now()
    for job_id, gates in sorted(missing.items()):
        names = ", ".join(gates)
        note = f"closed without its {names} gate{'s' if len(gates) > 1 else ''}; reopened"
        try:
            await hub.reopen(job_id, note, {"missing_gates": list(gates)})
        except InterlockError as exc:  # ended otherwise meanwhile, or its key is taken again
            refused.append({"job": job_id, "error": exc.message})
        else:
            reopened.append(job_id)
        if ctx.clock.now() - last_beat >= beat_every:
            if not await ctx.heartbeat():
                break  # no longer ours; the next scan finds the rest
            last_beat = ctx.clock.now()
    return {"reopened": reopened, "refused": refused}
