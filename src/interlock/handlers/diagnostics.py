"""Diagnostic kinds that smoke tests and benchmarks use: `noop` and `sleep`."""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from interlock.errors import BadRequest
from interlock.handlers import HandlerRegistry, JobContext


class SleepPayload(BaseModel):
    """`sleep` sleeps this long, heartbeating; `fail` makes it raise afterwards (for tests)."""

    # Other keys are the submitter's own (an inbox file's text, say).
    model_config = ConfigDict(extra="ignore")

    seconds: float = Field(ge=0, le=7 * 24 * 3600)
    fail: str | None = None


async def noop(ctx: JobContext) -> dict[str, Any]:
    """Completes at once."""
    return {}


async def sleep(ctx: JobContext) -> dict[str, Any]:
    """Sleeps for payload.seconds by the job's clock, heartbeating a few times per lease."""
    try:
        payload = SleepPayload.model_validate(ctx.job.payload)
    except ValidationError as exc:
        raise BadRequest(f"sleep payload: {exc.errors()[0]['msg']}") from exc
    started = ctx.clock.now()
    deadline = started + payload.seconds
    beat = max(ctx.lease_seconds / 3, 0.01)
    while (now := ctx.clock.now()) < deadline:
        await ctx.clock.sleep_until(min(deadline, now + beat))
        if ctx.clock.now() < deadline:
            await ctx.heartbeat()
    if payload.fail:
        raise RuntimeError(payload.fail)
    return {"slept": round(ctx.clock.now() - started, 3)}


def register(registry: HandlerRegistry) -> None:
    """Add the diagnostic kinds."""
    registry.register("noop", noop)
    registry.register("sleep", sleep)
