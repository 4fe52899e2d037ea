"""gates.reopen: a done job that skipped a gate of its kind is queued again, with an event."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from interlock.clock import FakeClock
from interlock.config import Config, KindConfig
from interlock.daemon import Daemon
from interlock.domain import EventType, JobSpec, JobState, Trigger
from tests.harness import running_daemon, wait_for_state

pytestmark = pytest.mark.anyio


def gated(*gates: Any) -> Config:
    kinds = Config().kinds | {"noop": KindConfig(lane="interactive", gates=list(gates))}
    return Config(kinds=kinds)


async def run_gates(daemon: Daemon) -> dict[str, Any]:
    job = (await daemon.hub.submit(JobSpec(kind="gates.reopen"))).job
    await wait_for_state(daemon, job.id, JobState.DONE, JobState.DEAD)
    finished = await daemon.hub.get(job.id)
    assert finished.state == JobState.DONE, finished.error
    result: dict[str, Any] = finished.result
    return result


async def done(daemon: Daemon, kind: str = "noop") -> int:
    payload = {"seconds": 0} if kind == "sleep" else {}
    job = (await daemon.hub.submit(JobSpec(kind=kind, payload=payload))).job
    await wait_for_state(daemon, job.id, JobState.DONE)
    return job.id


async def test_a_job_done_without_its_review_is_reopened_naming_the_gate(home: Path) -> None:
    clock = FakeClock()
    async with running_daemon(home, gated("review"), clock) as daemon:
        hub = daemon.hub
        unreviewed = await done(daemon)
        reviewed = await done(daemon)
        await daemon.store.flag(reviewed, EventType.REVIEWED, "looks right", clock.now())
        ungated = await done(daemon, kind="sleep")
        await hub.set_paused("interactive", True)  # keep the reopened job where we can see it

        result = await run_gates(daemon)

        assert result == {"reopened": [unreviewed], "refused": []}
        job = await hub.get(unreviewed)
        assert (job.state, job.attempts, job.finished_at) == (JobState.QUEUED, 0, None)
        event = (await hub.events(unreviewed))[-1]
        assert event.type == EventType.REOPENED
        assert (event.from_state, event.to_state) == (JobState.DONE, JobState.QUEUED)
        assert event.trigger == Trigger.REVIEW
        assert "review gate" in event.note
        assert event.data == {"missing_gates": ["review"]}
        assert (await hub.get(reviewed)).state == JobState.DONE
        assert (await hub.get(ungated)).state == JobState.DONE
        # The reopened job runs again once its lane does.
        await hub.set_paused("interactive", False)
        await wait_for_state(daemon, unreviewed, JobState.DONE)


async def test_each_missing_gate_is_named(home: Path) -> None:
    clock = FakeClock()
    async with running_daemon(home, gated("review", "approval"), clock) as daemon:
        neither = await done(daemon)
        reviewed_only = await done(daemon)
        await daemon.store.flag(reviewed_only, EventType.REVIEWED, "fine", clock.now())
        both = await done(daemon)
        await daemon.store.flag(both, EventType.REVIEWED, "fine", clock.now())
        await daemon.store.flag(both, EventType.APPROVED, "yes", clock.now())
        await daemon.hub.set_paused("interactive", True)

        result = await run_gates(daemon)

        assert result["reopened"] == [neither, reviewed_only]
        missing = {}
        for job_id in (neither, reviewed_only):
            event = (await daemon.hub.events(job_id))[-1]
            missing[job_id] = event.data["missing_gates"]
        assert missing == {neither: ["review", "approval"], reviewed_only: ["approval"]}
        assert (await daemon.hub.get(both)).state == JobState.DONE


async def test_with_no_kind_declaring_gates_nothing_is_reopened(home: Path) -> None:
    clock = FakeClock()
    async with running_daemon(home, Config(), clock) as daemon:
        jobs = [await done(daemon) for _ in range(3)]
        assert await run_gates(daemon) == {"reopened": [], "refused": []}
        assert {(await daemon.hub.get(job_id)).state for job_id in jobs} == {JobState.DONE}


async def test_the_default_gates_timer_runs_every_ten_minutes() -> None:
    timer = Config().maintenance.timers["gates"]
    assert (timer.kind, timer.interval_seconds) == ("gates.reopen", 600)
    assert all(settings.gates == [] for settings in Config().kinds.values())
