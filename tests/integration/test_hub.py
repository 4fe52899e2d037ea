"""The hub, lanes and store together in one process: a real SQLite file, a fake clock."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from interlock.clock import FakeClock
from interlock.config import Config, KindConfig, LaneConfig, RetryPolicy
from interlock.domain import EventType, JobFilter, JobSpec, JobState, Trigger
from interlock.errors import (
    InvalidTransition,
    KeyInUse,
    LaneFull,
    UnknownJob,
    UnknownKind,
    UnknownLane,
)
from interlock.handlers import JobContext, default_registry
from tests.harness import running_daemon, settle, wait_for_events, wait_for_state

pytestmark = pytest.mark.anyio


def config_with(**lanes: LaneConfig) -> Config:
    merged = Config().lanes | lanes
    return Config(lanes=merged)


async def test_second_submit_with_live_key_returns_first_job(home: Path) -> None:
    async with running_daemon(home) as daemon:
        await daemon.hub.set_paused("background", True)
        first = await daemon.hub.submit(JobSpec(kind="sleep", payload={"seconds": 1}, key="k"))
        second = await daemon.hub.submit(
            JobSpec(kind="sleep", payload={"seconds": 1}, key="k", source="timer", reason="again")
        )
        assert not first.duplicate
        assert second.duplicate
        assert second.job.id == first.job.id
        events = await daemon.hub.events(first.job.id)
        duplicate = [event for event in events if event.type == EventType.DUPLICATE]
        assert len(duplicate) == 1
        assert "timer" in duplicate[0].note and "again" in duplicate[0].note


async def test_key_is_free_again_once_the_job_has_ended(home: Path) -> None:
    async with running_daemon(home) as daemon:
        first = await daemon.hub.submit(JobSpec(kind="noop", key="k"))
        await wait_for_state(daemon, first.job.id, JobState.DONE)
        second = await daemon.hub.submit(JobSpec(kind="noop", key="k"))
        assert not second.duplicate
        assert second.job.id != first.job.id


async def test_submit_over_max_depth_names_lane_and_depth(home: Path) -> None:
    config = config_with(background=LaneConfig(rank=2, concurrency=1, max_depth=2))
    async with running_daemon(home, config) as daemon:
        await daemon.hub.set_paused("background", True)
        for _ in range(2):
            await daemon.hub.submit(JobSpec(kind="noop", lane="background"))
        with pytest.raises(LaneFull) as refused:
            await daemon.hub.submit(JobSpec(kind="noop", lane="background"))
        assert "background" in str(refused.value) and "2" in str(refused.value)
        # A duplicate of a live key still collapses when the lane is full.
        await daemon.hub.submit(JobSpec(kind="noop", lane="urgent", key="x"))


async def test_unknown_kind_and_lane_are_refused_by_name(home: Path) -> None:
    async with running_daemon(home) as daemon:
        with pytest.raises(UnknownKind, match="'nope'"):
            await daemon.hub.submit(JobSpec(kind="nope"))
        with pytest.raises(UnknownLane, match="'fast'"):
            await daemon.hub.submit(JobSpec(kind="noop", lane="fast"))
        with pytest.raises(UnknownJob):
            await daemon.hub.get(999)


async def claim_order(daemon: Any, job_ids: list[int]) -> list[int]:
    """Resume the paused one-slot background lane and read back the order jobs started in."""
    await daemon.hub.set_paused("background", False)
    for job_id in job_ids:
        await wait_for_state(daemon, job_id, JobState.DONE)
    claims = []
    for job_id in job_ids:
        events = await daemon.hub.events(job_id)
        claims.append(next(e.id for e in events if e.type == EventType.CLAIMED))
    return [job_id for _, job_id in sorted(zip(claims, job_ids, strict=True))]


ONE_SLOT = LaneConfig(rank=2, concurrency=1, max_depth=100, aging_seconds=10)


async def test_claim_order_is_priority_then_age(home: Path) -> None:
    clock = FakeClock()
    async with running_daemon(home, config_with(background=ONE_SLOT), clock=clock) as daemon:
        hub = daemon.hub
        await hub.set_paused("background", True)
        low_old = await hub.submit(JobSpec(kind="noop", lane="background", priority=0))
        clock.advance(1)
        high = await hub.submit(JobSpec(kind="noop", lane="background", priority=5))
        clock.advance(1)
        low_new = await hub.submit(JobSpec(kind="noop", lane="background", priority=0))
        order = await claim_order(daemon, [low_old.job.id, high.job.id, low_new.job.id])
        assert order == [high.job.id, low_old.job.id, low_new.job.id]


async def test_waiting_jobs_age_past_newer_higher_priority_ones(home: Path) -> None:
    clock = FakeClock()
    async with running_daemon(home, config_with(background=ONE_SLOT), clock=clock) as daemon:
        hub = daemon.hub
        await hub.set_paused("background", True)
        old = await hub.submit(JobSpec(kind="noop", lane="background", priority=0))
        clock.advance(31)  # three aging steps (10 s each) and a bit
        newer = await hub.submit(JobSpec(kind="noop", lane="background", priority=3))
        newest = await hub.submit(JobSpec(kind="noop", lane="background", priority=4))
        order = await claim_order(daemon, [old.job.id, newer.job.id, newest.job.id])
        assert order == [newest.job.id, old.job.id, newer.job.id]


async def test_job_waits_for_not_before_and_the_lane_wakes_when_it_comes_due(home: Path) -> None:
    clock = FakeClock()
    async with running_daemon(home, clock=clock) as daemon:
        due = clock.now() + 30
        job = (await daemon.hub.submit(JobSpec(kind="noop", not_before=due))).job
        await settle(daemon)
        assert (await daemon.hub.get(job.id)).state == JobState.QUEUED
        clock.advance(29)
        await settle(daemon)
        assert (await daemon.hub.get(job.id)).state == JobState.QUEUED
        clock.advance(1)
        await wait_for_state(daemon, job.id, JobState.DONE)


async def test_failing_handler_retries_with_backoff_then_dies(home: Path) -> None:
    clock = FakeClock()
    config = Config(
        jobs={"retry": RetryPolicy(max_attempts=3, backoff_base_seconds=10, backoff_jitter=0)},
    )
    async with running_daemon(home, config, clock=clock) as daemon:
        spec = JobSpec(kind="sleep", payload={"seconds": 0, "fail": "boom"})
        job = (await daemon.hub.submit(spec)).job
        await wait_for_events(daemon, job.id, EventType.RETRY_SCHEDULED)
        after_first = await daemon.hub.get(job.id)
        assert after_first.attempts == 1
        assert after_first.error == "RuntimeError: boom"
        assert after_first.not_before == pytest.approx(clock.now() + 10)
        clock.advance(10)
        await wait_for_events(daemon, job.id, EventType.RETRY_SCHEDULED, count=2)
        second = await daemon.hub.get(job.id)
        assert second.attempts == 2
        assert second.not_before == pytest.approx(clock.now() + 20)  # doubled
        clock.advance(20)
        await wait_for_state(daemon, job.id, JobState.DEAD)
        events = [event.type for event in await daemon.hub.events(job.id)]
        assert events.count(EventType.FAILED) == 3
        assert events.count(EventType.RETRY_SCHEDULED) == 2
        assert events[-1] == EventType.DEAD


async def test_kind_policy_overrides_the_default_attempts(home: Path) -> None:
    config = Config(kinds=Config().kinds | {"sleep": KindConfig(max_attempts=1)})
    async with running_daemon(home, config) as daemon:
        job = (
            await daemon.hub.submit(JobSpec(kind="sleep", payload={"seconds": 0, "fail": "x"}))
        ).job
        await wait_for_state(daemon, job.id, JobState.DEAD)
        assert (await daemon.hub.get(job.id)).attempts == 1


async def test_cancel_stops_a_running_handler(home: Path) -> None:
    clock = FakeClock()
    async with running_daemon(home, clock=clock) as daemon:
        job = (await daemon.hub.submit(JobSpec(kind="sleep", payload={"seconds": 3600}))).job
        await wait_for_state(daemon, job.id, JobState.RUNNING)
        cancelled = await daemon.hub.cancel(job.id)
        assert cancelled.state == JobState.CANCELLED
        await settle(daemon)
        assert sum(runner.running for runner in daemon.runners) == 0
        assert (await daemon.hub.get(job.id)).state == JobState.CANCELLED
        with pytest.raises(InvalidTransition, match="it is cancelled"):
            await daemon.hub.cancel(job.id)


async def test_retry_requeues_a_dead_job_with_fresh_attempts(home: Path) -> None:
    config = Config(kinds=Config().kinds | {"sleep": KindConfig(max_attempts=1)})
    async with running_daemon(home, config) as daemon:
        job = (
            await daemon.hub.submit(JobSpec(kind="sleep", payload={"seconds": 0, "fail": "x"}))
        ).job
        await wait_for_state(daemon, job.id, JobState.DEAD)
        await daemon.hub.retry(job.id)
        await wait_for_state(daemon, job.id, JobState.DEAD)
        events = [event.type for event in await daemon.hub.events(job.id)]
        assert events.count(EventType.RETRIED) == 1
        assert events.count(EventType.CLAIMED) == 2


async def test_retry_refuses_when_a_live_job_took_the_key(home: Path) -> None:
    async with running_daemon(home) as daemon:
        await daemon.hub.set_paused("background", True)
        first = (await daemon.hub.submit(JobSpec(kind="noop", lane="background", key="k"))).job
        await daemon.hub.cancel(first.id)
        second = (await daemon.hub.submit(JobSpec(kind="noop", lane="background", key="k"))).job
        with pytest.raises(KeyInUse, match=f"live job {second.id}"):
            await daemon.hub.retry(first.id)
        with pytest.raises(InvalidTransition):
            await daemon.hub.retry(second.id)  # it is queued: nothing to retry


async def test_paused_lane_starts_nothing_until_resumed(home: Path) -> None:
    async with running_daemon(home) as daemon:
        await daemon.hub.set_paused("interactive", True)
        job = (await daemon.hub.submit(JobSpec(kind="noop"))).job
        await settle(daemon)
        assert (await daemon.hub.get(job.id)).state == JobState.QUEUED
        (status,) = await daemon.hub.lanes(["interactive"])
        assert status.paused and status.queued == 1
        await daemon.hub.set_paused("interactive", False)
        await wait_for_state(daemon, job.id, JobState.DONE)


async def test_lane_runs_at_most_its_concurrency(home: Path) -> None:
    clock = FakeClock()
    config = config_with(background=LaneConfig(rank=2, concurrency=2, max_depth=100))
    async with running_daemon(home, config, clock=clock) as daemon:
        jobs = [
            (await daemon.hub.submit(JobSpec(kind="sleep", payload={"seconds": 5}))).job
            for _ in range(5)
        ]
        await wait_for_state(daemon, jobs[1].id, JobState.RUNNING)
        await settle(daemon)
        counts = await daemon.hub.counts()
        assert counts[JobState.RUNNING] == 2 and counts[JobState.QUEUED] == 3
        clock.advance(5)
        await wait_for_state(daemon, jobs[3].id, JobState.RUNNING)
        await settle(daemon)
        assert (await daemon.hub.counts())[JobState.RUNNING] == 2


async def test_urgent_work_does_not_wait_behind_a_full_background_lane(home: Path) -> None:
    clock = FakeClock()
    async with running_daemon(home, clock=clock) as daemon:
        for _ in range(4):
            await daemon.hub.submit(JobSpec(kind="sleep", payload={"seconds": 60}))
        urgent = (await daemon.hub.submit(JobSpec(kind="noop", lane="urgent"))).job
        await wait_for_state(daemon, urgent.id, JobState.DONE)


async def test_restart_requeues_jobs_left_running_with_a_recovery_event(home: Path) -> None:
    clock = FakeClock()
    async with running_daemon(home, clock=clock) as daemon:
        job = (await daemon.hub.submit(JobSpec(kind="sleep", payload={"seconds": 60}))).job
        await wait_for_state(daemon, job.id, JobState.RUNNING)
        # What a kill -9 leaves behind: the row still says running.
        recovered = await daemon.hub.recover()
    assert [j.id for j in recovered] == [job.id]
    async with running_daemon(home, clock=clock) as daemon:
        events = await daemon.hub.events(job.id)
        requeued = [event for event in events if event.type == EventType.REQUEUED]
        assert requeued[0].trigger == Trigger.RECOVERY


async def test_shutdown_requeues_unfinished_jobs_without_charging_an_attempt(home: Path) -> None:
    clock = FakeClock()
    config = Config(daemon={"shutdown_grace_seconds": 0})
    async with running_daemon(home, config, clock=clock) as daemon:
        job = (await daemon.hub.submit(JobSpec(kind="sleep", payload={"seconds": 60}))).job
        await wait_for_state(daemon, job.id, JobState.RUNNING)
    async with running_daemon(home, config, clock=clock) as daemon:
        await wait_for_state(daemon, job.id, JobState.RUNNING)
        again = await daemon.hub.get(job.id)
        assert again.attempts == 1  # the interrupted attempt was not counted
        notes = [event.note for event in await daemon.hub.events(job.id)]
        assert any("stopped before the job finished" in note for note in notes)


async def test_every_transition_commits_with_its_event(home: Path) -> None:
    async with running_daemon(home) as daemon:
        ids = [(await daemon.hub.submit(JobSpec(kind="noop"))).job.id for _ in range(20)]
        for job_id in ids:
            await wait_for_state(daemon, job_id, JobState.DONE)
        for job_id in ids:
            events = await daemon.hub.events(job_id)
            states = [(e.from_state, e.to_state) for e in events]
            assert states == [
                (None, JobState.QUEUED),
                (JobState.QUEUED, JobState.RUNNING),
                (JobState.RUNNING, JobState.DONE),
            ]


async def test_why_walks_from_root_to_job(home: Path) -> None:
    async with running_daemon(home) as daemon:
        root = (await daemon.hub.submit(JobSpec(kind="noop", reason="a person asked"))).job
        child = (
            await daemon.hub.submit(
                JobSpec(kind="noop", parent_id=root.id, trigger=Trigger.HANDOFF, reason="step 2")
            )
        ).job
        grandchild = (await daemon.hub.submit(JobSpec(kind="noop", parent_id=child.id))).job
        lineage = await daemon.hub.why(grandchild.id)
        assert [job.id for job in lineage.chain] == [root.id, child.id, grandchild.id]
        assert grandchild.root_id == root.id
        with pytest.raises(UnknownJob):
            await daemon.hub.submit(JobSpec(kind="noop", parent_id=999))


async def test_sleep_heartbeats_extend_the_lease(home: Path) -> None:
    clock = FakeClock()
    config = Config(daemon={"lease_seconds": 30})
    async with running_daemon(home, config, clock=clock) as daemon:
        job = (await daemon.hub.submit(JobSpec(kind="sleep", payload={"seconds": 100}))).job
        await wait_for_state(daemon, job.id, JobState.RUNNING)
        first = (await daemon.hub.get(job.id)).lease_expires_at
        assert first is not None
        for _ in range(3):
            clock.advance(10)
            await settle(daemon)
        later = (await daemon.hub.get(job.id)).lease_expires_at
        assert later is not None and later > first


async def test_list_pages_newest_first_with_filters(home: Path) -> None:
    async with running_daemon(home) as daemon:
        await daemon.hub.set_paused("background", True)
        ids = [
            (await daemon.hub.submit(JobSpec(kind="noop", lane="background"))).job.id
            for _ in range(5)
        ]
        page = await daemon.hub.list_jobs(JobFilter(limit=2, lane="background"))
        assert [job.id for job in page] == ids[::-1][:2]
        rest = await daemon.hub.list_jobs(JobFilter(limit=10, before_id=page[-1].id))
        assert [job.id for job in rest] == ids[::-1][2:]
        assert await daemon.hub.list_jobs(JobFilter(states=(JobState.DONE,))) == []


async def test_handler_sees_its_job_and_result_is_stored(home: Path) -> None:
    registry = default_registry()

    async def echo(ctx: JobContext) -> dict[str, Any]:
        return {"echo": ctx.job.payload, "attempt": ctx.job.attempts}

    registry.register("echo", echo)
    async with running_daemon(home, handlers=registry) as daemon:
        job = (await daemon.hub.submit(JobSpec(kind="echo", payload={"x": [1, 2]}))).job
        await wait_for_state(daemon, job.id, JobState.DONE)
        assert (await daemon.hub.get(job.id)).result == {"echo": {"x": [1, 2]}, "attempt": 1}


async def test_recovery_kills_a_job_whose_attempts_are_spent(home: Path) -> None:
    clock = FakeClock()
    config = Config(kinds=Config().kinds | {"sleep": KindConfig(max_attempts=1)})
    async with running_daemon(home, config, clock=clock) as daemon:
        job = (await daemon.hub.submit(JobSpec(kind="sleep", payload={"seconds": 60}))).job
        await wait_for_state(daemon, job.id, JobState.RUNNING)
        await daemon.hub.recover()  # what a restart finds after a kill -9
        await wait_for_state(daemon, job.id, JobState.DEAD)
        events = await daemon.hub.events(job.id)
        assert events[-1].type == EventType.DEAD and "spent" in events[-1].note
