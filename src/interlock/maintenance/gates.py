"""gates.reopen: report done jobs that closed without a gate their kind requires.

A kind's `gates` (config: [kinds.NAME] gates) name what a job must pass
before it may stay done: "review" is passed once the job has an event of
type `reviewed`, "approval" once it has one of type `approved`. A job that
closed without them gets one `gate_missing` event naming each missing gate,
and a warning in the log.

It only reports. Until `finish` itself honours gates (a job of a gated kind
goes to review or approval instead of done), reopening would run the job
again on every pass, for ever: with a model behind it, unbounded spend.
"""

from __future__ import annotations

import logging
from typing import Any, Literal

from interlock.domain import EventType
from interlock.maintenance.context import MaintenanceContext, Probe

log = logging.getLogger(__name__)

KIND = "gates.reopen"
# Jobs read per query: the scan pages through done jobs by id.
BATCH_JOBS = 1000

Gate = Literal["review", "approval"]
PASSED_BY: dict[Gate, EventType] = {
    "review": EventType.REVIEWED,
    "approval": EventType.APPROVED,
}


async def due(probe: Probe) -> bool:
    """Only when some kind declares gates."""
    return any(settings.gates for settings in probe.config.kinds.values())


async def reopen(ctx: MaintenanceContext) -> dict[str, Any]:
    """Name every done job of a gated kind that lacks one of its gates, once per job."""
    kinds_by_gate: dict[Gate, list[str]] = {gate: [] for gate in PASSED_BY}
    for kind, settings in sorted(ctx.config.kinds.items()):
        for gate in settings.gates:
            kinds_by_gate[gate].append(kind)
    missing: dict[int, list[Gate]] = {}  # job id -> its missing gates, in PASSED_BY order
    for gate, kinds in kinds_by_gate.items():
        after = 0
        while kinds:
            jobs = await ctx.reads.done_lacking(kinds, PASSED_BY[gate], after, BATCH_JOBS)
            for job in jobs:
                missing.setdefault(job.id, []).append(gate)
            if len(jobs) < BATCH_JOBS:
                break
            after = jobs[-1].id
    reported: dict[str, list[Gate]] = {}
    for job_id, gates in sorted(missing.items()):
        names = ", ".join(gates)
        note = f"done without its {names} gate{'s' if len(gates) > 1 else ''}"
        if await ctx.hub.note(job_id, EventType.GATE_MISSING, note, {"missing_gates": gates}):
            reported[str(job_id)] = gates
            log.warning("job %s is %s", job_id, note)
    return {
        "missing": {str(job_id): gates for job_id, gates in missing.items()},
        "reported": reported,
    }
