"""stalls.scan: a hung worker's job is requeued once its lease expires, then finishes once."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import anyio
import pytest

from interlock.clock import FakeClock
from interlock.config import Config, KindConfig, LaneConfig
from interlock.domain import EventType, JobSpec, JobState, Trigger
from interlock.handlers import JobContext, default_registry
from interlock.ipc.client import connect
from tests.harness import running_daemon, settle, wait_for_events, wait_for_state

pytestmark = pytest.mark.anyio

LEASE = 30.0


def hanging_registry(started: list[int]) -> Any:
    """`stuck` hangs without a heartbeat on its first attempt (a hung worker), then succeeds."""
    registry = default_registry()
    never = anyio.Event()

    async def stuck(ctx: JobContext) -> dict[str, Any]:
        started.append(ctx.job.attempts)
        if ctx.job.attempts == 1:
            await never.wait()
        return {"attempt": ctx.job.attempts}

    registry.register("stuck", stuck)
    return registry


def config(**changes: Any) -> Config:
    base = Config(daemon={"lease_seconds": LEASE})
    kinds = base.kinds | {"stuck": KindConfig(lane="background")}
    return base.model_copy(update={"kinds": kinds, **changes})


async def scan(daemon: Any) -> dict[str, Any]:
    job = (await daemon.hub.submit(JobSpec(kind="stalls.scan"))).job
    await wait_for_state(daemon, job.id, JobState.DONE)
    result: dict[str, Any] = (await daemon.hub.get(job.id)).result
    return result


async def test_hung_worker_is_requeued_after_its_lease_expires_and_finishes_once(
    home: Path,
) -> None:
    clock = FakeClock()
    started: list[int] = []
    async with running_daemon(home, config(), clock, hanging_registry(started)) as daemon:
        job = (await daemon.hub.submit(JobSpec(kind="stuck"))).job
        await wait_for_state(daemon, job.id, JobState.RUNNING)
        assert (await scan(daemon))["requeued"] == []  # lease still good
        clock.advance(LEASE + 1)
        result = await scan(daemon)
        assert result["requeued"] == [job.id]
        await wait_for_state(daemon, job.id, JobState.DONE)
        events = await daemon.hub.events(job.id)
        stalled = [event for event in events if event.type == EventType.STALLED]
        assert len(stalled) == 1
        assert stalled[0].trigger == Trigger.RECOVERY and "expired" in stalled[0].note
        assert [event.type for event in events].count(EventType.FINISHED) == 1
        assert (await daemon.hub.get(job.id)).result == {"attempt": 2}
        assert started == [1, 2]


async def test_a_heartbeating_job_is_never_taken_for_a_stall(home: Path) -> None:
    clock = FakeClock()
    async with running_daemon(home, config(), clock) as daemon:
        job = (await daemon.hub.submit(JobSpec(kind="sleep", payload={"seconds": 300}))).job
        await wait_for_state(daemon, job.id, JobState.RUNNING)
        for _ in range(12):  # 120 s, four leases, with heartbeats every lease/3
            clock.advance(10)
            await settle(daemon)
        assert (await scan(daemon))["requeued"] == []
        assert (await daemon.hub.get(job.id)).state == JobState.RUNNING


async def test_a_stalled_job_with_no_attempts_left_is_dead(home: Path) -> None:
    clock = FakeClock()
    cfg = config(kinds=config().kinds | {"stuck": KindConfig(lane="background", max_attempts=1)})
    async with running_daemon(home, cfg, clock, hanging_registry([])) as daemon:
        job = (await daemon.hub.submit(JobSpec(kind="stuck"))).job
        await wait_for_state(daemon, job.id, JobState.RUNNING)
        clock.advance(LEASE + 1)
        await scan(daemon)
        await wait_for_state(daemon, job.id, JobState.DEAD)
        await settle(daemon)
        assert sum(runner.running for runner in daemon.runners) == 0  # the hung handler is gone


async def test_long_waits_are_flagged_once_and_listed(home: Path) -> None:
    clock = FakeClock()
    lanes = Config().lanes | {
        "background": LaneConfig(rank=2, concurrency=1, max_depth=100, stall_after_seconds=60)
    }
    async with running_daemon(home, config(lanes=lanes), clock) as daemon:
        await daemon.hub.set_paused("background", True)
        job = (await daemon.hub.submit(JobSpec(kind="sleep", payload={"seconds": 1}))).job
        assert (await scan(daemon))["flagged"] == []
        clock.advance(61)
        assert (await scan(daemon))["flagged"] == [job.id]
        assert (await scan(daemon))["flagged"] == []  # once per job
        await wait_for_events(daemon, job.id, EventType.STALL_FLAGGED)
        async with connect(daemon.paths.socket_path) as (client, _):
            stalls = await client.stalls()
        assert [j.id for j in stalls.waiting] == [job.id]
        assert stalls.expired == []


async def test_a_killed_sleep_handler_is_requeued_by_the_scan_and_finishes_once(
    home: Path,
) -> None:
    clock = FakeClock()
    async with running_daemon(home, config(), clock) as daemon:
        job = (await daemon.hub.submit(JobSpec(kind="sleep", payload={"seconds": 5}))).job
        await wait_for_state(daemon, job.id, JobState.RUNNING)
        # Kill the handler behind the hub's back, as a crash of the worker would:
        # the row still says running and nobody heartbeats any more.
        daemon.hub._running_scopes[job.id].cancel()
        await settle(daemon)
        assert (await daemon.hub.get(job.id)).state == JobState.RUNNING
        clock.advance(LEASE + 1)
        assert (await scan(daemon))["requeued"] == [job.id]
        await wait_for_state(daemon, job.id, JobState.RUNNING)
        clock.advance(5)
        await wait_for_state(daemon, job.id, JobState.DONE)
        types = [event.type for event in await daemon.hub.events(job.id)]
        assert types.count(EventType.STALLED) == 1
        assert types.count(EventType.FINISHED) == 1
