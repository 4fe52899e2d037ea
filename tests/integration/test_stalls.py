"""stalls.scan: a hung worker's attempt fails once its lease expires; the job runs again once."""

from __future__ import annotations

from typing import Any

import anyio
import pytest

from interlock.clock import FakeClock
from interlock.config import Config, DaemonConfig, KindConfig, LaneConfig
from interlock.daemon import Daemon, builtin_kinds
from interlock.domain import EventType, JobSpec, JobState, Trigger
from interlock.handlers import JobContext, KindRegistry
from tests.harness import run_maintenance, settle, wait_for_events, wait_for_state

pytestmark = pytest.mark.anyio

LEASE = 30.0
STARTED: list[int] = []


def hanging_kinds() -> KindRegistry:
    """`stuck` hangs on its first attempt, its worker gone as if dead, then succeeds."""
    kinds = builtin_kinds()

    async def stuck(ctx: JobContext) -> dict[str, Any]:
        STARTED.append(ctx.job.attempts)
        if ctx.job.attempts == 1:
            await anyio.Event().wait()
        return {"attempt": ctx.job.attempts}

    kinds.register("stuck", stuck)
    return kinds


def config(stuck: KindConfig | None = None, **changes: Any) -> Config:
    """A 30 s lease; with `stuck`, the settings of the stuck kind."""
    base = Config(daemon=DaemonConfig(lease_seconds=LEASE))
    kinds = base.kinds | ({"stuck": stuck} if stuck else {})
    return base.model_copy(update={"kinds": kinds, **changes})


async def lose_the_worker(daemon: Daemon, job_id: int) -> None:
    """What a dead or wedged worker leaves: the row says running, nobody renews the lease."""
    await settle(daemon)  # the worker has the job (and its lease keeper knows it)
    assert job_id in daemon.keeper._running
    daemon.keeper.stop(job_id)


async def scan(daemon: Daemon) -> dict[str, Any]:
    return await run_maintenance(daemon, "stalls.scan")


@pytest.mark.daemon(config=config(stuck=KindConfig(lane="background")), kinds=hanging_kinds())
async def test_a_lost_worker_s_job_fails_its_attempt_once_the_lease_expires_and_finishes_once(
    daemon: Daemon, clock: FakeClock
) -> None:
    STARTED.clear()
    job = (await daemon.hub.submit(JobSpec(kind="stuck"))).job
    await wait_for_state(daemon, job.id, JobState.RUNNING)
    await lose_the_worker(daemon, job.id)
    assert (await scan(daemon))["requeued"] == []  # the lease is still good
    clock.advance(LEASE + 1)
    assert (await scan(daemon))["requeued"] == [job.id]
    done = await wait_for_state(daemon, job.id, JobState.DONE)
    assert done.result == {"attempt": 2} and STARTED == [1, 2]
    events = await daemon.hub.events(job.id)
    (stalled,) = [event for event in events if event.type == EventType.STALLED]
    assert stalled.trigger == Trigger.RECOVERY and "expired" in stalled.note
    assert (stalled.from_state, stalled.to_state) == (JobState.RUNNING, JobState.FAILED)
    assert [event.type for event in events].count(EventType.FINISHED) == 1


@pytest.mark.daemon(config=config())
async def test_a_running_job_is_never_taken_for_a_stall(daemon: Daemon, clock: FakeClock) -> None:
    job = (await daemon.hub.submit(JobSpec(kind="sleep", payload={"seconds": 300}))).job
    await wait_for_state(daemon, job.id, JobState.RUNNING)
    for _ in range(12):  # 120 s, four leases, renewed by the runner every lease/3
        clock.advance(10)
        await settle(daemon)
    assert (await scan(daemon))["requeued"] == []
    assert (await daemon.hub.get(job.id)).state == JobState.RUNNING


@pytest.mark.daemon(
    config=config(stuck=KindConfig(lane="background", max_attempts=1)), kinds=hanging_kinds()
)
async def test_a_stalled_job_with_no_attempts_left_is_dead(
    daemon: Daemon, clock: FakeClock
) -> None:
    job = (await daemon.hub.submit(JobSpec(kind="stuck"))).job
    await wait_for_state(daemon, job.id, JobState.RUNNING)
    await lose_the_worker(daemon, job.id)
    clock.advance(LEASE + 1)
    await scan(daemon)
    dead = await wait_for_state(daemon, job.id, JobState.DEAD)
    assert "expired" in (dead.error or "")
    await settle(daemon)
    assert sum(runner.running for runner in daemon.runners) == 0  # the hung handler is gone


STALL_AFTER = Config().lanes | {
    "background": LaneConfig(rank=2, concurrency=1, max_depth=100, stall_after_seconds=60)
}


@pytest.mark.daemon(config=config(lanes=STALL_AFTER))
async def test_long_waits_are_flagged_once_and_listed(daemon: Daemon, clock: FakeClock) -> None:
    await daemon.hub.set_paused("background", True)
    job = (await daemon.hub.submit(JobSpec(kind="sleep", payload={"seconds": 1}))).job
    assert (await scan(daemon))["flagged"] == []
    clock.advance(61)
    assert (await scan(daemon))["flagged"] == [job.id]
    assert (await scan(daemon))["flagged"] == []  # once per job
    await wait_for_events(daemon, job.id, EventType.STALL_FLAGGED)
    stalls = await daemon.hub.stalls()
    assert [j.id for j in stalls["waiting"]] == [job.id]
    assert stalls["expired"] == []


@pytest.mark.daemon(config=config())
async def test_a_killed_sleep_handler_is_requeued_by_the_scan_and_finishes_once(
    daemon: Daemon, clock: FakeClock
) -> None:
    job = (await daemon.hub.submit(JobSpec(kind="sleep", payload={"seconds": 5}))).job
    await wait_for_state(daemon, job.id, JobState.RUNNING)
    # Kill the handler behind the hub's back, as a crash of the worker would:
    # the row still says running and nobody renews the lease.
    await lose_the_worker(daemon, job.id)
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
