"""projects.advance: each active project with no live work gets its next step, once."""

from __future__ import annotations

from pathlib import Path

import pytest

from interlock.clock import FakeClock
from interlock.config import Config, LaneConfig, ProjectConfig, TimerConfig, load_config
from interlock.daemon import Daemon
from interlock.domain import EventType, Job, JobFilter, JobSpec, JobState, Trigger
from interlock.errors import ConfigError
from interlock.maintenance import projects
from interlock.maintenance.context import Probe
from interlock.maintenance.scheduler import slot_key, slot_of
from tests.harness import (
    run_job,
    running_daemon,
    settle,
    wait_for_events,
    wait_for_state,
    with_timers,
)

pytestmark = pytest.mark.anyio

DOCS = ProjectConfig(goal="Keep the docs in step with the code", next_kind="noop")


def config(**named: ProjectConfig) -> Config:
    return Config().model_copy(update={"projects": named})


async def advance(daemon: Daemon) -> Job:
    """Run projects.advance once; the finished (or failed) advance job."""
    return await run_job(daemon, JobSpec(kind="projects.advance"))


async def steps(daemon: Daemon, project: str) -> list[Job]:
    return await daemon.hub.list_jobs(JobFilter(project=project, limit=100))


def probe(daemon: Daemon) -> Probe:
    return Probe(daemon.hub.reads, daemon.config, daemon.clock, daemon.paths.state_dir)


@pytest.mark.daemon(config=config(docs=DOCS.model_copy(update={"lane": "background"})))
async def test_an_idle_project_gets_its_next_step_with_the_goal_as_its_reason(
    daemon: Daemon,
) -> None:
    runner = await advance(daemon)
    (step,) = await steps(daemon, "docs")
    await wait_for_state(daemon, step.id, JobState.DONE)
    assert runner.result == {"submitted": {"docs": step.id}, "busy": []}
    assert step.kind == "noop" and step.lane == "background"
    assert step.trigger == Trigger.TIMER
    assert step.reason == (
        "project docs has no live work; next step toward its goal:"
        ' "Keep the docs in step with the code"'
    )
    assert step.parent_id == runner.id  # `interlock why` leads back to the advance job
    assert step.key == f"project:docs:job{runner.id}"  # a run by hand: keyed by its own job


@pytest.mark.daemon(config=config(docs=DOCS))
async def test_a_project_with_live_work_is_left_alone(daemon: Daemon) -> None:
    await daemon.hub.set_paused("interactive", True)  # the step stays queued: live
    await advance(daemon)
    assert not await projects.due(probe(daemon))  # the timer would make no job
    second = await advance(daemon)
    assert second.result == {"submitted": {}, "busy": ["docs"]}
    assert len(await steps(daemon, "docs")) == 1

    await daemon.hub.set_paused("interactive", False)
    (step,) = await steps(daemon, "docs")
    await wait_for_state(daemon, step.id, JobState.DONE)
    assert await projects.due(probe(daemon))
    third = await advance(daemon)  # done: the next step is due
    assert list(third.result["submitted"]) == ["docs"]
    assert len(await steps(daemon, "docs")) == 2


@pytest.mark.daemon(config=config(idle=DOCS.model_copy(update={"active": False})))
async def test_inactive_projects_and_no_projects_do_nothing(daemon: Daemon) -> None:
    assert not await projects.due(probe(daemon))
    runner = await advance(daemon)
    assert runner.result == {"submitted": {}, "busy": []}
    assert await steps(daemon, "idle") == []


TIMER = TimerConfig(kind="projects.advance", interval_seconds=300)


@pytest.mark.daemon(config=with_timers(config(docs=DOCS), projects=TIMER))
async def test_a_timer_run_keys_each_step_by_its_slot(daemon: Daemon, clock: FakeClock) -> None:
    await settle(daemon)
    slot = slot_of(TIMER, clock.now())
    (runner,) = await daemon.hub.list_jobs(JobFilter(kind="projects.advance"))
    assert runner.key == slot_key("projects", slot)
    await wait_for_state(daemon, runner.id, JobState.DONE)
    (step,) = await steps(daemon, "docs")
    assert step.key == f"project:docs:{slot}"


NARROW = Config().lanes | {"narrow": LaneConfig(rank=5, concurrency=1, max_depth=1)}
FULL_LANE = config(
    blocked=ProjectConfig(goal="Never", next_kind="noop", lane="narrow"), docs=DOCS
).model_copy(update={"lanes": NARROW})


@pytest.mark.daemon(config=FULL_LANE)
async def test_a_project_that_cannot_advance_fails_the_run_after_the_others(
    daemon: Daemon,
) -> None:
    await daemon.hub.set_paused("narrow", True)
    await daemon.hub.submit(JobSpec(kind="noop", lane="narrow"))  # the lane is full now
    runner = (await daemon.hub.submit(JobSpec(kind="projects.advance"))).job
    events = await wait_for_events(daemon, runner.id, EventType.FAILED)
    (failed,) = [e for e in events if e.type == EventType.FAILED]
    assert failed.note.startswith("ProjectsNotAdvanced: project blocked: lane 'narrow' is full")
    assert failed.note.endswith("(submitted: docs)")
    assert len(await steps(daemon, "docs")) == 1


async def test_a_project_whose_next_kind_has_no_handler_stops_the_start(home: Path) -> None:
    broken = config(broken=ProjectConfig(goal="Never", next_kind="no.such.kind"))
    with pytest.raises(ConfigError, match=r"projects\.broken\.next_kind: no handler.*no\.such"):
        async with running_daemon(home, broken):
            pass


def test_a_project_in_an_unknown_lane_is_a_config_error(tmp_path: Path) -> None:
    path = tmp_path / "interlock.toml"
    path.write_text('[projects.docs]\ngoal = "Docs"\nnext_kind = "noop"\nlane = "nowhere"\n')
    with pytest.raises(ConfigError) as caught:
        load_config(path)
    assert "projects.docs.lane: no lane named 'nowhere'" in caught.value.message
    assert "(line 4)" in caught.value.message


def test_projects_load_from_toml(tmp_path: Path) -> None:
    path = tmp_path / "interlock.toml"
    path.write_text(
        '[projects.docs]\ngoal = "Docs"\nnext_kind = "noop"\n\n'
        '[projects.old]\ngoal = "Old"\nnext_kind = "noop"\nactive = false\n'
    )
    loaded = load_config(path).projects
    assert loaded["docs"] == ProjectConfig(goal="Docs", next_kind="noop")
    assert loaded["old"].active is False
