"""gates.reopen: a done job that skipped a gate of its kind is reported, never run again."""

from __future__ import annotations

from typing import Any

import pytest

from interlock.clock import FakeClock
from interlock.config import Config, KindConfig
from interlock.daemon import Daemon
from interlock.domain import EventType, JobSpec, JobState
from interlock.maintenance import gates
from interlock.maintenance.context import Probe
from tests.harness import run_job, run_maintenance

pytestmark = pytest.mark.anyio


def gated(*names: Any) -> Config:
    kinds = Config().kinds | {"noop": KindConfig(lane="interactive", gates=list(names))}
    return Config(kinds=kinds)


async def done(daemon: Daemon, kind: str = "noop") -> int:
    payload = {"seconds": 0} if kind == "sleep" else {}
    job = await run_job(daemon, JobSpec(kind=kind, payload=payload))
    assert job.state == JobState.DONE
    return job.id


async def claims(daemon: Daemon, job_id: int) -> int:
    return sum(event.type == EventType.CLAIMED for event in await daemon.hub.events(job_id))


@pytest.mark.daemon(config=gated("review"))
async def test_a_job_done_without_its_review_is_reported_once_and_never_rerun(
    daemon: Daemon, clock: FakeClock
) -> None:
    unreviewed = await done(daemon)
    reviewed = await done(daemon)
    await daemon.hub.note(reviewed, EventType.REVIEWED, "looks right")
    ungated = await done(daemon, kind="sleep")

    first = await run_maintenance(daemon, "gates.reopen")
    clock.advance(600)
    second = await run_maintenance(daemon, "gates.reopen")

    assert first == {
        "missing": {str(unreviewed): ["review"]},
        "reported": {str(unreviewed): ["review"]},
    }
    assert second == {"missing": {str(unreviewed): ["review"]}, "reported": {}}
    job = await daemon.hub.get(unreviewed)
    assert job.state == JobState.DONE and await claims(daemon, unreviewed) == 1
    (event,) = [e for e in await daemon.hub.events(unreviewed) if e.type == EventType.GATE_MISSING]
    assert (event.from_state, event.to_state) == (JobState.DONE, JobState.DONE)
    assert "review gate" in event.note and event.data == {"missing_gates": ["review"]}
    for other in (reviewed, ungated):
        assert (await daemon.hub.get(other)).state == JobState.DONE
        assert await claims(daemon, other) == 1


@pytest.mark.daemon(config=gated("review", "approval"))
async def test_each_missing_gate_is_named(daemon: Daemon) -> None:
    neither = await done(daemon)
    reviewed_only = await done(daemon)
    await daemon.hub.note(reviewed_only, EventType.REVIEWED, "fine")
    both = await done(daemon)
    await daemon.hub.note(both, EventType.REVIEWED, "fine")
    await daemon.hub.note(both, EventType.APPROVED, "yes")

    result = await run_maintenance(daemon, "gates.reopen")

    assert result["reported"] == {
        str(neither): ["review", "approval"],
        str(reviewed_only): ["approval"],
    }
    assert (await daemon.hub.get(both)).state == JobState.DONE


async def test_with_no_kind_declaring_gates_the_timer_makes_no_job(daemon: Daemon) -> None:
    jobs = [await done(daemon) for _ in range(3)]
    probe = Probe(daemon.hub.reads, daemon.config, daemon.clock, daemon.paths.state_dir)
    assert not await gates.due(probe)
    assert await run_maintenance(daemon, "gates.reopen") == {"missing": {}, "reported": {}}
    assert {(await daemon.hub.get(job_id)).state for job_id in jobs} == {JobState.DONE}


@pytest.mark.daemon(config=gated("approval"))
async def test_with_a_gated_kind_the_timer_has_work(daemon: Daemon) -> None:
    probe = Probe(daemon.hub.reads, daemon.config, daemon.clock, daemon.paths.state_dir)
    assert await gates.due(probe)
