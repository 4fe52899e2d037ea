"""priority.age: an `aged` event per aging step waited, and the claim order left as it was."""

from __future__ import annotations

from typing import Any

import pytest

from interlock.clock import FakeClock
from interlock.config import Config, LaneConfig
from interlock.daemon import Daemon
from interlock.domain import Event, EventType, JobSpec, JobState
from tests.harness import run_maintenance, wait_for_state

pytestmark = pytest.mark.anyio

ONE_SLOT = LaneConfig(rank=2, concurrency=1, max_depth=100, aging_seconds=60)


def config() -> Config:
    return Config(lanes=Config().lanes | {"background": ONE_SLOT})


async def run_aging(daemon: Daemon) -> dict[str, Any]:
    return await run_maintenance(daemon, "priority.age")


async def aged(daemon: Daemon, job_id: int) -> list[Event]:
    return [event for event in await daemon.hub.events(job_id) if event.type == EventType.AGED]


async def background(daemon: Daemon, priority: int = 0) -> int:
    spec = JobSpec(kind="noop", lane="background", priority=priority)
    return (await daemon.hub.submit(spec)).job.id


@pytest.mark.daemon(config=config())
async def test_a_waiting_job_gets_one_event_per_aging_step_with_its_effective_priority(
    daemon: Daemon, clock: FakeClock
) -> None:
    await daemon.hub.set_paused("background", True)
    job_id = await background(daemon, priority=2)
    clock.advance(59)
    assert (await run_aging(daemon))["aged"] == {}  # not a whole step yet
    clock.advance(91)  # 150 s: two steps
    assert (await run_aging(daemon))["aged"] == {"background": 1}
    (event,) = await aged(daemon, job_id)
    assert event.data == {
        "steps": 2,
        "priority": 2,
        "effective_priority": 4,
        "aging_seconds": 60,
    }
    assert event.from_state == event.to_state == JobState.QUEUED
    assert "effective priority 4" in event.note
    clock.advance(20)  # 170 s: still two steps
    assert (await run_aging(daemon))["aged"] == {}
    assert len(await aged(daemon, job_id)) == 1
    clock.advance(200)  # 370 s: six steps, one event for all four new ones
    await run_aging(daemon)
    assert [event.data["effective_priority"] for event in await aged(daemon, job_id)] == [4, 8]
    job = await daemon.hub.get(job_id)
    assert (job.priority, job.state) == (2, JobState.QUEUED)


@pytest.mark.daemon(config=config())
async def test_only_queued_jobs_age(daemon: Daemon, clock: FakeClock) -> None:
    done = (await daemon.hub.submit(JobSpec(kind="noop"))).job.id
    await wait_for_state(daemon, done, JobState.DONE)
    running = (await daemon.hub.submit(JobSpec(kind="sleep", payload={"seconds": 3600}))).job
    await wait_for_state(daemon, running.id, JobState.RUNNING)
    clock.advance(600)
    await run_aging(daemon)
    assert await aged(daemon, done) == []
    assert await aged(daemon, running.id) == []


@pytest.mark.daemon(config=config())
async def test_aging_events_leave_the_claim_order_alone(daemon: Daemon, clock: FakeClock) -> None:
    await daemon.hub.set_paused("background", True)
    old = await background(daemon, priority=0)
    clock.advance(150)
    await run_aging(daemon)  # old: effective priority 2
    assert len(await aged(daemon, old)) == 1
    # Ranks ahead of `old`: 150 s later, but 3 points higher (180 s of aging).
    newer = await background(daemon, priority=3)
    # Had the scan counted the wait into `old`'s order a second time, `old` would go first.
    await daemon.hub.set_paused("background", False)
    for job_id in (old, newer):
        await wait_for_state(daemon, job_id, JobState.DONE)
    claims = {}
    for job_id in (old, newer):
        events = await daemon.hub.events(job_id)
        claims[job_id] = next(e.id for e in events if e.type == EventType.CLAIMED)
    assert claims[newer] < claims[old]


async def test_the_default_aging_timer_runs_every_five_minutes() -> None:
    timer = Config().maintenance.timers["aging"]
    assert (timer.kind, timer.interval_seconds) == ("priority.age", 300)
    assert Config().kinds["priority.age"].lane == "maintenance"
