"""The hub, lanes and store together in one process: a real SQLite file, a fake clock."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import anyio
import pytest

from interlock.clock import FakeClock
from interlock.config import DAY, Config, JobsConfig, KindConfig, LaneConfig, RetryPolicy
from interlock.daemon import Daemon, builtin_kinds
from interlock.domain import EventType, JobFilter, JobSpec, JobState, Trigger
from interlock.errors import (
    InvalidTransition,
    KeyInUse,
    LaneFull,
    ShuttingDown,
    UnknownJob,
    UnknownKind,
    UnknownLane,
)
from interlock.handlers import JobContext
from tests.harness import (
    run_job,
    running_daemon,
    settle,
    wait_for_events,
    wait_for_state,
)

pytestmark = pytest.mark.anyio


def config_with(**lanes: LaneConfig) -> Config:
    return Config(lanes=Config().lanes | lanes)


ONE_SLOT = LaneConfig(rank=2, concurrency=1, max_depth=100, aging_seconds=10)
SHORT_BACKGROUND = config_with(background=LaneConfig(rank=2, concurrency=1, max_depth=2))
NO_KEY_WINDOW = Config(jobs=JobsConfig(key_window_seconds=0))
ONE_ATTEMPT = Config(kinds=Config().kinds | {"sleep": KindConfig(max_attempts=1)})


async def test_second_submit_with_live_key_returns_first_job(daemon: Daemon) -> None:
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


async def test_a_finished_job_holds_its_key_for_a_day_then_frees_it(
    daemon: Daemon, clock: FakeClock
) -> None:
    first = await run_job(daemon, JobSpec(kind="noop", key="k"))
    again = await daemon.hub.submit(JobSpec(kind="noop", key="k"))
    assert again.duplicate and again.job.id == first.id  # a retried submit: the job that ran
    clock.advance(DAY + 1)
    later = await daemon.hub.submit(JobSpec(kind="noop", key="k"))
    assert not later.duplicate and later.job.id != first.id


@pytest.mark.daemon(config=NO_KEY_WINDOW)
async def test_with_no_key_window_the_key_is_free_once_the_job_ended(daemon: Daemon) -> None:
    first = await run_job(daemon, JobSpec(kind="noop", key="k"))
    second = await daemon.hub.submit(JobSpec(kind="noop", key="k"))
    assert not second.duplicate and second.job.id != first.id


@pytest.mark.daemon(config=SHORT_BACKGROUND)
async def test_a_full_lane_refuses_new_work_by_name_but_a_duplicate_returns_the_live_job(
    daemon: Daemon,
) -> None:
    await daemon.hub.set_paused("background", True)
    keyed = await daemon.hub.submit(JobSpec(kind="noop", lane="background", key="x"))
    await daemon.hub.submit(JobSpec(kind="noop", lane="background"))
    with pytest.raises(LaneFull) as refused:
        await daemon.hub.submit(JobSpec(kind="noop", lane="background"))
    assert "'background'" in str(refused.value) and "maximum depth 2" in str(refused.value)
    again = await daemon.hub.submit(JobSpec(kind="noop", lane="background", key="x"))
    assert again.duplicate and again.job.id == keyed.job.id


async def test_unknown_kind_and_lane_are_refused_by_name(daemon: Daemon) -> None:
    with pytest.raises(UnknownKind, match="'nope'"):
        await daemon.hub.submit(JobSpec(kind="nope"))
    with pytest.raises(UnknownLane, match="'fast'"):
        await daemon.hub.submit(JobSpec(kind="noop", lane="fast"))
    with pytest.raises(UnknownJob):
        await daemon.hub.get(999)


async def claim_order(daemon: Daemon, job_ids: list[int]) -> list[int]:
    """Resume the paused one-slot background lane and read back the order jobs started in."""
    await daemon.hub.set_paused("background", False)
    claims = []
    for job_id in job_ids:
        await wait_for_state(daemon, job_id, JobState.DONE)
        events = await daemon.hub.events(job_id)
        claims.append(next(e.id for e in events if e.type == EventType.CLAIMED))
    return [job_id for _, job_id in sorted(zip(claims, job_ids, strict=True))]


@pytest.mark.daemon(config=config_with(background=ONE_SLOT))
async def test_claim_order_is_priority_then_age(daemon: Daemon, clock: FakeClock) -> None:
    hub = daemon.hub
    await hub.set_paused("background", True)
    low_old = await hub.submit(JobSpec(kind="noop", lane="background", priority=0))
    clock.advance(1)
    high = await hub.submit(JobSpec(kind="noop", lane="background", priority=5))
    clock.advance(1)
    low_new = await hub.submit(JobSpec(kind="noop", lane="background", priority=0))
    order = await claim_order(daemon, [low_old.job.id, high.job.id, low_new.job.id])
    assert order == [high.job.id, low_old.job.id, low_new.job.id]


@pytest.mark.daemon(config=config_with(background=ONE_SLOT))
async def test_waiting_jobs_age_past_newer_higher_priority_ones(
    daemon: Daemon, clock: FakeClock
) -> None:
    hub = daemon.hub
    await hub.set_paused("background", True)
    old = await hub.submit(JobSpec(kind="noop", lane="background", priority=0))
    clock.advance(31)  # three aging steps (10 s each) and a bit
    newer = await hub.submit(JobSpec(kind="noop", lane="background", priority=3))
    newest = await hub.submit(JobSpec(kind="noop", lane="background", priority=4))
    order = await claim_order(daemon, [old.job.id, newer.job.id, newest.job.id])
    assert order == [newest.job.id, old.job.id, newer.job.id]


async def test_job_waits_for_not_before_and_the_lane_wakes_when_it_comes_due(
    daemon: Daemon, clock: FakeClock
) -> None:
    job = (await daemon.hub.submit(JobSpec(kind="noop", not_before=clock.now() + 30))).job
    await settle(daemon)
    assert (await daemon.hub.get(job.id)).state == JobState.QUEUED
    clock.advance(29)
    await settle(daemon)
    assert (await daemon.hub.get(job.id)).state == JobState.QUEUED
    clock.advance(1)
    await wait_for_state(daemon, job.id, JobState.DONE)


RETRIES = Config(
    jobs=JobsConfig(retry=RetryPolicy(max_attempts=3, backoff_base_seconds=10, backoff_jitter=0))
)


@pytest.mark.daemon(config=RETRIES)
async def test_failing_handler_retries_with_backoff_then_dies(
    daemon: Daemon, clock: FakeClock
) -> None:
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


@pytest.mark.daemon(config=ONE_ATTEMPT)
async def test_kind_policy_overrides_the_default_attempts(daemon: Daemon) -> None:
    job = await run_job(daemon, JobSpec(kind="sleep", payload={"seconds": 0, "fail": "x"}))
    assert (job.state, job.attempts) == (JobState.DEAD, 1)


async def test_cancel_stops_a_running_handler(daemon: Daemon) -> None:
    job = (await daemon.hub.submit(JobSpec(kind="sleep", payload={"seconds": 3600}))).job
    await wait_for_state(daemon, job.id, JobState.RUNNING)
    cancelled = await daemon.hub.cancel(job.id)
    assert cancelled.state == JobState.CANCELLED
    await settle(daemon)
    assert sum(runner.running for runner in daemon.runners) == 0
    assert (await daemon.hub.get(job.id)).state == JobState.CANCELLED
    with pytest.raises(InvalidTransition, match="it is cancelled"):
        await daemon.hub.cancel(job.id)


@pytest.mark.daemon(config=ONE_ATTEMPT)
async def test_retry_requeues_a_dead_job_with_fresh_attempts(daemon: Daemon) -> None:
    job = await run_job(daemon, JobSpec(kind="sleep", payload={"seconds": 0, "fail": "x"}))
    await daemon.hub.retry(job.id)
    await wait_for_events(daemon, job.id, EventType.DEAD, count=2)
    events = [event.type for event in await daemon.hub.events(job.id)]
    assert events.count(EventType.RETRIED) == 1
    assert events.count(EventType.CLAIMED) == 2


@pytest.mark.daemon(config=NO_KEY_WINDOW)
async def test_retry_refuses_when_a_live_job_took_the_key(daemon: Daemon) -> None:
    await daemon.hub.set_paused("background", True)
    first = (await daemon.hub.submit(JobSpec(kind="noop", lane="background", key="k"))).job
    await daemon.hub.cancel(first.id)
    second = (await daemon.hub.submit(JobSpec(kind="noop", lane="background", key="k"))).job
    with pytest.raises(KeyInUse, match=f"live job {second.id}"):
        await daemon.hub.retry(first.id)
    with pytest.raises(InvalidTransition):
        await daemon.hub.retry(second.id)  # it is queued: nothing to retry


async def test_paused_lane_starts_nothing_until_resumed(daemon: Daemon) -> None:
    await daemon.hub.set_paused("interactive", True, "looking into it", actor="uid 1000")
    job = (await daemon.hub.submit(JobSpec(kind="noop"))).job
    await settle(daemon)
    assert (await daemon.hub.get(job.id)).state == JobState.QUEUED
    (status,) = await daemon.hub.lanes(["interactive"])
    assert status.paused and status.queued == 1
    await daemon.hub.set_paused("interactive", False, actor="uid 1000")
    await wait_for_state(daemon, job.id, JobState.DONE)


async def test_a_pause_and_a_resume_are_audited_with_who_and_why(
    daemon: Daemon, clock: FakeClock
) -> None:
    await daemon.hub.set_paused("urgent", True, "deploy freeze", actor="uid 1000 (pid 7, cli)")
    clock.advance(5)
    status = await daemon.hub.set_paused("urgent", False, "freeze over", actor="uid 1000")
    assert (status.changed_by, status.changed_at) == ("uid 1000", clock.now())
    history = await daemon.hub.lane_history("urgent")
    assert [(e.paused, e.actor, e.reason) for e in history] == [
        (False, "uid 1000", "freeze over"),
        (True, "uid 1000 (pid 7, cli)", "deploy freeze"),
    ]
    assert history[1].at == clock.now() - 5


@pytest.mark.daemon(config=config_with(background=LaneConfig(rank=2, concurrency=2, max_depth=9)))
async def test_lane_runs_at_most_its_concurrency(daemon: Daemon, clock: FakeClock) -> None:
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


async def test_urgent_work_does_not_wait_behind_a_full_background_lane(daemon: Daemon) -> None:
    for _ in range(4):
        await daemon.hub.submit(JobSpec(kind="sleep", payload={"seconds": 60}))
    urgent = await run_job(daemon, JobSpec(kind="noop", lane="urgent"))
    assert urgent.state == JobState.DONE


async def crash(home: Path, config: Config, clock: FakeClock, spec: JobSpec) -> int:
    """Start a daemon, get a job running, then cancel the daemon as a kill -9 would end it:
    no drain, no requeue, the row still says running."""
    with anyio.CancelScope() as scope:
        async with running_daemon(home, config, clock) as daemon:
            job = (await daemon.hub.submit(spec)).job
            await wait_for_state(daemon, job.id, JobState.RUNNING)
            scope.cancel()
    return job.id


async def test_a_job_left_running_by_a_dead_daemon_runs_again_at_the_next_start(
    home: Path, clock: FakeClock
) -> None:
    job_id = await crash(home, Config(), clock, JobSpec(kind="sleep", payload={"seconds": 60}))
    async with running_daemon(home, clock=clock) as daemon:
        job = await wait_for_state(daemon, job_id, JobState.RUNNING)
        assert (job.attempts, job.crashes) == (1, 1)  # the crash did not use up an attempt
        (requeued,) = [e for e in await daemon.hub.events(job_id) if e.type == EventType.REQUEUED]
        assert requeued.trigger == Trigger.RECOVERY and "daemon died" in requeued.note
        clock.advance(60)
        await wait_for_state(daemon, job_id, JobState.DONE)


async def test_a_job_found_running_at_every_start_is_stopped_after_max_crashes(
    home: Path, clock: FakeClock
) -> None:
    config = Config(jobs=JobsConfig(max_crashes=3))
    job_id = await crash(home, config, clock, JobSpec(kind="sleep", payload={"seconds": 60}))
    for _ in range(2):
        with anyio.CancelScope() as scope:
            async with running_daemon(home, config, clock) as daemon:
                await wait_for_state(daemon, job_id, JobState.RUNNING, JobState.DEAD)
                scope.cancel()
    async with running_daemon(home, config, clock) as daemon:
        job = await wait_for_state(daemon, job_id, JobState.DEAD)
        assert job.attempts == 1 and job.crashes == 2
        assert "found running at 3 starts" in (job.error or "")


async def test_shutdown_requeues_unfinished_jobs_without_charging_an_attempt(
    home: Path, clock: FakeClock
) -> None:
    async with running_daemon(home, clock=clock) as daemon:
        job = (await daemon.hub.submit(JobSpec(kind="sleep", payload={"seconds": 60}))).job
        await wait_for_state(daemon, job.id, JobState.RUNNING)
    async with running_daemon(home, clock=clock) as daemon:
        again = await wait_for_state(daemon, job.id, JobState.RUNNING)
        assert (again.attempts, again.crashes) == (1, 0)  # not counted, and not a crash
        notes = [event.note for event in await daemon.hub.events(job.id)]
        assert any("stopped before the job finished" in note for note in notes)


async def test_submits_while_the_daemon_drains_are_refused(home: Path, clock: FakeClock) -> None:
    async with running_daemon(home, clock=clock) as daemon:
        daemon.hub.accepting = False  # what the drain sets first
        with pytest.raises(ShuttingDown, match="shutting down"):
            await daemon.hub.submit(JobSpec(kind="noop"))


async def test_every_transition_commits_with_its_event(daemon: Daemon) -> None:
    ids = [(await daemon.hub.submit(JobSpec(kind="noop"))).job.id for _ in range(20)]
    for job_id in ids:
        await wait_for_state(daemon, job_id, JobState.DONE)
        states = [(e.from_state, e.to_state) for e in await daemon.hub.events(job_id)]
        assert states == [
            (None, JobState.QUEUED),
            (JobState.QUEUED, JobState.RUNNING),
            (JobState.RUNNING, JobState.DONE),
        ]


async def test_why_walks_from_root_to_job(daemon: Daemon) -> None:
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


async def test_list_pages_newest_first_with_filters(daemon: Daemon) -> None:
    await daemon.hub.set_paused("background", True)
    ids = [
        (await daemon.hub.submit(JobSpec(kind="noop", lane="background"))).job.id for _ in range(5)
    ]
    page = await daemon.hub.list_jobs(JobFilter(limit=2, lane="background"))
    assert [job.id for job in page] == ids[::-1][:2]
    rest = await daemon.hub.list_jobs(JobFilter(limit=10, before_id=page[-1].id))
    assert [job.id for job in rest] == ids[::-1][2:]
    assert await daemon.hub.list_jobs(JobFilter(states=(JobState.DONE,))) == []
    assert await daemon.hub.list_jobs(JobFilter(exclude_lanes=("background",))) == []


def echo_kinds() -> Any:
    kinds = builtin_kinds()

    async def echo(ctx: JobContext) -> dict[str, Any]:
        return {"echo": ctx.payload, "attempt": ctx.job.attempts}

    kinds.register("echo", echo)
    return kinds


@pytest.mark.daemon(kinds=echo_kinds())
async def test_handler_sees_its_job_and_result_is_stored(daemon: Daemon) -> None:
    job = await run_job(daemon, JobSpec(kind="echo", payload={"x": [1, 2]}))
    assert job.result == {"echo": {"x": [1, 2]}, "attempt": 1}
