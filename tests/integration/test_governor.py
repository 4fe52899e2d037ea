"""The governor: a lane failing fast is paused, with an event, until a person resumes it."""

from __future__ import annotations

from typing import Any

import pytest

from interlock.clock import FakeClock
from interlock.config import Config, GovernorConfig, KindConfig
from interlock.daemon import Daemon, builtin_kinds
from interlock.domain import Event, EventType, JobFilter, JobSpec, JobState, Usage
from interlock.handlers import Done, JobContext, KindRegistry
from interlock.ipc.client import connect
from tests.harness import run_maintenance, settle, wait_for_state

pytestmark = pytest.mark.anyio

FAILING = JobSpec(kind="sleep", payload={"seconds": 0, "fail": "x"})
PASSING = JobSpec(kind="sleep", payload={"seconds": 0})


def config(*extra_kinds: str, **governor: Any) -> Config:
    """`sleep` gets one attempt, so each failing job is one failed attempt."""
    base = Config()
    kinds = base.kinds | {"sleep": KindConfig(lane="background", max_attempts=1)}
    kinds |= {kind: KindConfig(lane="background", max_attempts=1) for kind in extra_kinds}
    return base.model_copy(update={"kinds": kinds, "governor": GovernorConfig(**governor)})


async def run_jobs(daemon: Daemon, specs: list[JobSpec]) -> None:
    ids = [(await daemon.hub.submit(spec)).job.id for spec in specs]
    for job_id in ids:
        await wait_for_state(daemon, job_id, JobState.DONE, JobState.DEAD)


async def govern(daemon: Daemon) -> tuple[dict[str, Any], list[Event]]:
    """Run the governor once; its result and its events."""
    result = await run_maintenance(daemon, "governor")
    (job,) = await daemon.hub.list_jobs(JobFilter(kind="governor", limit=1))
    return result, await daemon.hub.events(job.id)


def of_type(events: list[Event], event_type: EventType) -> list[Event]:
    return [event for event in events if event.type == event_type]


REASON = "governor: kind sleep failed 8 of 10 attempts in 15 min (80% > 50%)"


@pytest.mark.daemon(config=config())
async def test_a_kind_failing_fast_pauses_its_lane_until_a_person_resumes_it(
    daemon: Daemon, clock: FakeClock
) -> None:
    await run_jobs(daemon, [FAILING] * 8 + [PASSING] * 2)
    result, events = await govern(daemon)

    assert result["paused"] == {"background": REASON.removeprefix("governor: ")}
    (paused_event,) = of_type(events, EventType.LANE_PAUSED)
    assert paused_event.note == f"paused lane background: {REASON.removeprefix('governor: ')}"
    async with connect(daemon.paths.socket_path) as (client, _):
        (lane,) = [lane for lane in (await client.lanes()).lanes if lane.name == "background"]
        assert lane.paused and lane.paused_reason == REASON
        health = await client.health()
        assert [lane.name for lane in health.lanes if lane.paused] == ["background"]

    # Paused means paused: new work waits, later runs and time change nothing.
    waiting = (await daemon.hub.submit(PASSING)).job
    clock.advance(3600)
    await govern(daemon)
    await settle(daemon)
    assert (await daemon.hub.get(waiting.id)).state == JobState.QUEUED
    (lane,) = await daemon.hub.lanes(["background"])
    assert lane.paused and lane.paused_reason == REASON

    async with connect(daemon.paths.socket_path) as (client, _):
        await client.resume("background")
    await wait_for_state(daemon, waiting.id, JobState.DONE)


@pytest.mark.daemon(config=config())
async def test_failures_from_before_a_resume_do_not_pause_the_lane_again(
    daemon: Daemon, clock: FakeClock
) -> None:
    await run_jobs(daemon, [FAILING] * 10)
    await govern(daemon)
    assert (await daemon.hub.lanes(["background"]))[0].paused

    await daemon.hub.set_paused("background", False)  # a person resumes it, same instant
    result, events = await govern(daemon)
    assert result["paused"] == {}
    assert result["attempts"]["background"] == {"finished": 0, "failed": 0}
    assert of_type(events, EventType.LANE_PAUSED) == []
    assert not (await daemon.hub.lanes(["background"]))[0].paused

    clock.advance(60)
    await run_jobs(daemon, [FAILING] * 10)  # failing again after the resume: paused again
    result, _ = await govern(daemon)
    assert result["paused"] == {
        "background": "kind sleep failed 10 of 10 attempts in 15 min (100% > 50%)"
    }
    assert (await daemon.hub.lanes(["background"]))[0].paused


@pytest.mark.daemon(config=config(window_seconds=600, min_attempts=5))
async def test_failures_outside_the_window_or_too_few_do_not_count(
    daemon: Daemon, clock: FakeClock
) -> None:
    await run_jobs(daemon, [FAILING] * 4)
    result, _ = await govern(daemon)
    assert result["paused"] == {}  # 4 attempts: too few to judge
    clock.advance(601)
    await run_jobs(daemon, [FAILING] * 2 + [PASSING] * 3)
    result, _ = await govern(daemon)
    assert result["paused"] == {}  # the old four are out of the window: 2 of 5 is 40%
    await run_jobs(daemon, [FAILING])
    result, _ = await govern(daemon)
    assert result["paused"] == {}  # 3 of 6 is 50%: at the limit, not past it
    await run_jobs(daemon, [FAILING])
    result, _ = await govern(daemon)
    assert result["paused"] == {
        "background": "kind sleep failed 4 of 7 attempts in 10 min (57% > 50%)"
    }


def broken_kinds() -> KindRegistry:
    kinds = builtin_kinds()

    async def broken(ctx: JobContext) -> None:
        raise RuntimeError("broken")

    kinds.register("broken", broken)
    return kinds


@pytest.mark.daemon(config=config("broken", min_attempts=4), kinds=broken_kinds())
async def test_a_lane_of_many_kinds_is_judged_as_a_whole(daemon: Daemon) -> None:
    # No kind has four attempts alone; the lane has six, and four of them failed.
    broken = JobSpec(kind="broken")
    noop = JobSpec(kind="noop", lane="background")
    await run_jobs(daemon, [FAILING, FAILING, PASSING, broken, broken, noop])
    result, _ = await govern(daemon)
    assert result["paused"] == {
        "background": "lane background failed 4 of 6 attempts in 15 min (67% > 50%)"
    }


@pytest.mark.daemon(config=config())
async def test_the_maintenance_lane_is_never_paused(daemon: Daemon) -> None:
    failing = FAILING.model_copy(update={"lane": "maintenance"})
    await run_jobs(daemon, [failing] * 10)
    result, _ = await govern(daemon)
    assert result["paused"] == {}
    assert not any(lane.paused for lane in await daemon.hub.lanes())


def spending_kinds() -> KindRegistry:
    kinds = builtin_kinds()

    async def spend(ctx: JobContext) -> Done:
        return Done(usage=Usage(tokens=10, cost=ctx.payload["cost"]))

    kinds.register("spend", spend)
    return kinds


@pytest.mark.daemon(config=config("spend", daily_cost_limit=1.0), kinds=spending_kinds())
async def test_the_days_spend_past_its_limit_pauses_the_lanes_that_spent(
    daemon: Daemon, clock: FakeClock
) -> None:
    spend = JobSpec(kind="spend", payload={"cost": 0.6})
    await run_jobs(daemon, [spend])
    result, _ = await govern(daemon)
    assert result["paused"] == {} and result["spent_today"] == 0.6

    await run_jobs(daemon, [spend, JobSpec(kind="noop")])
    result, events = await govern(daemon)
    reason = "spent 1.20 today (UTC) > daily limit 1.00 (governor.daily_cost_limit; this lane 1.20)"
    assert result["paused"] == {"background": reason}  # interactive spent nothing
    assert of_type(events, EventType.LANE_PAUSED)[0].note == f"paused lane background: {reason}"

    clock.advance(1)
    await daemon.hub.set_paused("background", False)
    result, _ = await govern(daemon)
    assert result["paused"] == {}  # nothing spent since the person resumed it


def test_the_governors_pause_shows_in_lanes_and_health_until_resumed(
    make_daemon: Any, cli: Any
) -> None:
    make_daemon("[jobs.retry]\nmax_attempts = 1\n\n[governor]\nmin_attempts = 3\n").start()

    def run(*args: str) -> int:
        submitted = cli("submit", *args, "--json")
        assert submitted.code == 0, submitted.err
        job_id: int = submitted.json()["id"]
        cli("wait", str(job_id), "--timeout", "20")
        return job_id

    for _ in range(3):
        run("sleep", "--payload", '{"seconds": 0, "fail": "x"}')
    governor = run("governor")
    reason = "governor: kind sleep failed 3 of 3 attempts in 15 min (100% > 50%)"

    lanes = cli("lanes")
    assert f"background paused: {reason}" in lanes.out
    (background,) = [lane for lane in cli("lanes", "--json").json() if lane["name"] == "background"]
    assert background["paused"] and background["paused_reason"] == reason
    health = cli("health")
    assert f"background paused: {reason}" in health.out
    events = cli("show", str(governor), "--json").json()["events"]
    assert [event["type"] for event in events if event["type"] == "lane_paused"] == ["lane_paused"]

    assert cli("resume", "background").code == 0
    run("governor")
    assert "paused" not in cli("lanes").out
