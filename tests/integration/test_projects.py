"""projects.advance: each active project with no live work gets its next step, once."""

from __future__ import annotations

from pathlib import Path

import pytest

from interlock.clock import FakeClock
from interlock.config import Config, MaintenanceConfig, ProjectConfig, TimerConfig, load_config
from interlock.daemon import Daemon
from interlock.domain import EventType, Job, JobFilter, JobSpec, JobState, Trigger
from interlock.errors import ConfigError
from interlock.maintenance.scheduler import slot_key, slot_of
from tests.harness import running_daemon, settle, wait_for_events, wait_for_state

pytestmark = pytest.mark.anyio

DOCS = ProjectConfig(goal="Keep the docs in step with the code", next_kind="noop")


def config(**projects: ProjectConfig) -> Config:
    return Config().model_copy(update={"projects": projects})


async def advance(daemon: Daemon, state: JobState = JobState.DONE) -> Job:
    """Run projects.advance once; the finished (or failed) advance job."""
    job = (await daemon.hub.submit(JobSpec(kind="projects.advance"))).job
    await wait_for_state(daemon, job.id, state)
    return await daemon.hub.get(job.id)


async def steps(daemon: Daemon, project: str) -> list[Job]:
    return await daemon.hub.list_jobs(JobFilter(project=project, limit=100))


async def test_an_idle_project_gets_its_next_step_with_the_goal_as_its_reason(
    home: Path,
) -> None:
    clock = FakeClock()
    cfg = config(docs=DOCS.model_copy(update={"lane": "background"}))
    async with running_daemon(home, cfg, clock) as daemon:
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
        assert step.key == "project:docs:2023-11-14"  # a run by hand: keyed by the UTC day


async def test_a_project_with_live_work_is_left_alone(home: Path) -> None:
    async with running_daemon(home, config(docs=DOCS), FakeClock()) as daemon:
        await daemon.hub.set_paused("interactive", True)  # the step stays queued: live
        await advance(daemon)
        second = await advance(daemon)
        assert second.result == {"submitted": {}, "busy": ["docs"]}
        assert len(await steps(daemon, "docs")) == 1

        await daemon.hub.set_paused("interactive", False)
        (step,) = await steps(daemon, "docs")
        await wait_for_state(daemon, step.id, JobState.DONE)
        third = await advance(daemon)  # done: the next step is due
        assert list(third.result["submitted"]) == ["docs"]
        assert len(await steps(daemon, "docs")) == 2


async def test_inactive_projects_and_no_projects_do_nothing(home: Path) -> None:
    idle = DOCS.model_copy(update={"active": False})
    async with running_daemon(home, config(idle=idle), FakeClock()) as daemon:
        runner = await advance(daemon)
        assert runner.result == {"submitted": {}, "busy": []}
        assert await steps(daemon, "idle") == []


async def test_a_timer_run_keys_each_step_by_its_slot(home: Path) -> None:
    clock = FakeClock()
    timer = TimerConfig(kind="projects.advance", interval_seconds=300)
    cfg = config(docs=DOCS).model_copy(
        update={"maintenance": MaintenanceConfig(timers={"projects": timer})}
    )
    async with running_daemon(home, cfg, clock) as daemon:
        await settle(daemon)
        slot = slot_of(timer, clock.now())
        (runner,) = await daemon.hub.list_jobs(JobFilter(kind="projects.advance"))
        assert runner.key == slot_key("projects", slot)
        await wait_for_state(daemon, runner.id, JobState.DONE)
        (step,) = await steps(daemon, "docs")
        assert step.key == f"project:docs:{slot}"


async def test_a_project_that_cannot_advance_fails_the_run_after_the_others(
    home: Path,
) -> None:
    broken = ProjectConfig(goal="Never", next_kind="no.such.kind")
    async with running_daemon(home, config(broken=broken, docs=DOCS), FakeClock()) as daemon:
        runner = (await daemon.hub.submit(JobSpec(kind="projects.advance"))).job
        await wait_for_events(daemon, runner.id, EventType.FAILED)
        failed = await daemon.hub.get(runner.id)
        assert failed.error is not None
        assert failed.error.startswith(
            "ProjectsNotAdvanced: project broken: no handler for job kind"
        )
        assert failed.error.endswith("(submitted: docs)")
        assert len(await steps(daemon, "docs")) == 1


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
    projects = load_config(path).projects
    assert projects["docs"] == ProjectConfig(goal="Docs", next_kind="noop")
    assert projects["old"].active is False
