"""Diagnostic kinds that smoke tests and benchmarks use: `noop` and `sleep`."""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from interlock.handlers.context import JobContext
from interlock.handlers.registry import KindRegistry


class SleepPayload(BaseModel):
    """`sleep` sleeps this long; `fail` makes it raise afterwards (for tests)."""

    # Other keys are the submitter's own (an inbox file's text, say).
    model_config = ConfigDict(extra="ignore", allow_inf_nan=False)

    seconds: float = Field(ge=0, le=7 * 24 * 3600)
    fail: str | None = None


async def noop(ctx: JobContext) -> dict[str, Any]:
    """Completes at once."""
    return {}


async def sleep(ctx: JobContext) -> dict[str, Any]:
    """Sleeps for payload.seconds by the job's clock; the lane runner keeps its lease."""
    payload = SleepPayload.model_validate(ctx.payload)
    started = ctx.clock.now()
    await ctx.clock.sleep_until(started + payload.seconds)
    if payload.fail:
        raise RuntimeError(payload.fail)
    return {"slept": round(ctx.clock.now() - started, 3)}


def register(registry: KindRegistry) -> None:
    """Add the diagnostic kinds."""
    registry.register("noop", noop)
    registry.register("sleep", sleep, payload=SleepPayload)
