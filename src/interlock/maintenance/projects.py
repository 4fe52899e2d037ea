"""projects.advance: nobody forgets a project. Each active project with no live work gets its
next step.

Projects are declared in config ([projects.NAME]: a goal and the kind of job
that takes the next step). A step's key names the project and the timer slot
(or the advance job, for a run by hand), so a replayed or retried run collapses into
the step it already submitted.
"""

from __future__ import annotations

from typing import Any

from interlock.domain import Job, JobSpec, Trigger
from interlock.errors import InterlockError
from interlock.maintenance.context import MaintenanceContext, Probe

KIND = "projects.advance"


async def due(probe: Probe) -> bool:
    """An active project with no live job."""
    active = [name for name, project in probe.config.projects.items() if project.active]
    if not active:
        return False
    live = await probe.reads.live_projects()
    return any(name not in live for name in active)


class ProjectsNotAdvanced(Exception):
    """Some projects' next steps could not be submitted (the others were)."""


def step_slot(job: Job) -> str:
    """The advance job's timer slot (its key is timer:NAME:SLOT), or else its own id.

    Either way a retried or replayed advance names the same steps, and a new
    run by hand names new ones.
    """
    if job.key is not None and job.key.startswith("timer:"):
        return job.key.rsplit(":", 1)[-1]
    return f"job{job.id}"


async def advance(ctx: MaintenanceContext) -> dict[str, Any]:
    """Submit the next step of every active project that has no live job in any lane."""
    hub = ctx.hub
    active = {name: project for name, project in ctx.config.projects.items() if project.active}
    if not active:
        return {"submitted": {}, "busy": []}
    live = await ctx.reads.live_projects()
    slot = step_slot(ctx.job)
    submitted: dict[str, int] = {}
    busy: list[str] = []
    errors: dict[str, str] = {}
    for name, project in sorted(active.items()):
        if name in live:
            busy.append(name)
            continue
        spec = JobSpec(
            kind=project.next_kind,
            lane=project.lane,
            project=name,
            payload=project.payload,
            key=f"project:{name}:{slot}",
            trigger=Trigger.TIMER,
            reason=f'project {name} has no live work; next step toward its goal: "{project.goal}"',
            parent_id=ctx.job.id,
            source=KIND,
        )
        try:
            submitted[name] = (await hub.submit(spec)).job.id
        except InterlockError as exc:
            errors[name] = exc.message
    if errors:
        raise ProjectsNotAdvanced(
            "; ".join(f"project {name}: {message}" for name, message in errors.items())
            + (f" (submitted: {', '.join(submitted)})" if submitted else "")
        )
    return {"submitted": submitted, "busy": busy}
