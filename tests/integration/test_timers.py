"""Timers inside a real in-process daemon, on a fake clock: no test waits for a real interval."""

from __future__ import annotations

from pathlib import Path

import anyio
import pytest

from interlock.clock import FakeClock
from interlock.config import Config, MaintenanceConfig, TimerConfig, resolve_paths
from interlock.daemon import Daemon
from interlock.domain import EventType, JobFilter, JobState, Trigger
from interlock.errors import BadRequest, ConfigError
from interlock.maintenance.scheduler import fire_at, slot_key, slot_of
from tests.harness import running_daemon, settle, wait_for_state

pytestmark = pytest.mark.anyio

START = 1_700_000_000.0  # a slot boundary for 60 s and 30 s timers
TIMER = TimerConfig(kind="noop", interval_seconds=60, jitter_seconds=10, lane="maintenance")


def with_timer(timer: TimerConfig = TIMER) -> Config:
    return Config(maintenance=MaintenanceConfig(timers={"beat": timer}))


async def timer_jobs(daemon: Daemon) -> list[int]:
    jobs = await daemon.hub.list_jobs(JobFilter(limit=1000, kind="noop"))
    return sorted(job.id for job in jobs if job.trigger == Trigger.TIMER)


async def test_one_job_per_slot(home: Path) -> None:
    clock = FakeClock(START)
    async with running_daemon(home, with_timer(), clock=clock) as daemon:
        await settle(daemon)
        first_slot = slot_of(TIMER, START)
        if fire_at("beat", TIMER, first_slot) > START:  # this slot fires a little later
            clock.advance(fire_at("beat", TIMER, first_slot) - START)
            await settle(daemon)
        assert len(await timer_jobs(daemon)) == 1
        for expected in range(2, 6):
            clock.advance(60)
            await settle(daemon)
            assert len(await timer_jobs(daemon)) == expected
        keys = {job.key for job in await daemon.hub.list_jobs(JobFilter(limit=100, kind="noop"))}
        assert keys == {slot_key("beat", first_slot + n) for n in range(5)}


async def test_a_tick_fires_only_once_its_jitter_has_passed(home: Path) -> None:
    clock = FakeClock(START)
    slot = slot_of(TIMER, START) + 1
    async with running_daemon(home, with_timer(), clock=clock) as daemon:
        await settle(daemon)
        before = len(await timer_jobs(daemon))
        due = fire_at("beat", TIMER, slot)
        clock.advance(due - START - 0.001)
        await settle(daemon)
        assert len(await timer_jobs(daemon)) == before
        clock.advance(0.001)
        await settle(daemon)
        assert len(await timer_jobs(daemon)) == before + 1


async def test_after_downtime_a_timer_runs_once_not_once_per_missed_slot(home: Path) -> None:
    clock = FakeClock(START)
    async with running_daemon(home, with_timer(), clock=clock) as daemon:
        await settle(daemon)
        ran_before = len(await timer_jobs(daemon))
    clock.advance(10 * 60)  # the daemon was down for ten slots
    async with running_daemon(home, with_timer(), clock=clock) as daemon:
        await settle(daemon)
        now_slot = slot_of(TIMER, clock.now())
        if fire_at("beat", TIMER, now_slot) > clock.now():
            clock.advance(fire_at("beat", TIMER, now_slot) - clock.now())
            await settle(daemon)
        assert len(await timer_jobs(daemon)) == ran_before + 1


async def test_a_doubled_or_replayed_tick_collapses_into_one_job(home: Path) -> None:
    clock = FakeClock(START)
    config = with_timer(TIMER.model_copy(update={"enabled": False}))
    async with running_daemon(home, config, clock=clock) as daemon:
        slot = slot_of(TIMER, START)
        first = await daemon.scheduler.tick("beat", slot)
        doubled = await daemon.scheduler.tick("beat", slot)
        assert doubled.duplicate and doubled.job.id == first.job.id
        await wait_for_state(daemon, first.job.id, JobState.DONE)
        clock.advance(3600)  # long after the job ended: the kind keeps keys for a day
        replayed = await daemon.scheduler.tick("beat", slot)
        assert replayed.duplicate and replayed.job.id == first.job.id
        events = await daemon.hub.events(first.job.id)
        assert sum(event.type == EventType.DUPLICATE for event in events) == 2


async def test_tick_by_hand_always_runs_and_says_so(home: Path) -> None:
    async with running_daemon(home, with_timer()) as daemon:
        one = await daemon.scheduler.tick("beat")
        two = await daemon.scheduler.tick("beat")
        assert one.job.id != two.job.id
        assert one.job.trigger == Trigger.HUMAN and "by hand" in one.job.reason
        with pytest.raises(BadRequest, match="no timer named 'nope'"):
            await daemon.scheduler.tick("nope")


async def test_a_timer_whose_kind_has_no_handler_stops_the_daemon_by_name(home: Path) -> None:
    config = with_timer(TIMER.model_copy(update={"kind": "nothing.here"}))
    daemon = Daemon(config, resolve_paths(config, {"INTERLOCK_HOME": str(home)}))
    with pytest.raises(ConfigError, match=r"maintenance\.timers\.beat\.kind"):
        await daemon.run()
    assert not (home / "interlock.sock").exists()


def test_the_daemon_command_reports_a_timer_without_a_handler(make_daemon) -> None:
    daemon = make_daemon(
        '[maintenance.timers.beat]\nkind = "nothing.here"\ninterval_seconds = 60\n'
    )
    with pytest.raises(AssertionError, match=r"maintenance\.timers\.beat\.kind: no handler"):
        daemon.start(timeout=10)


async def test_default_timers_run_their_maintenance_jobs(home: Path) -> None:
    clock = FakeClock(START)
    async with running_daemon(home, Config(maintenance=MaintenanceConfig()), clock=clock) as daemon:
        # Let every default timer reach its first slot.
        longest = max(t.interval_seconds for t in daemon.config.maintenance.timers.values())
        clock.advance(longest)
        await settle(daemon)
        with anyio.fail_after(10):
            while True:
                done = await daemon.hub.list_jobs(
                    JobFilter(limit=100, lane="maintenance", states=(JobState.DONE,))
                )
                if {job.kind for job in done} >= {"health.snapshot", "stalls.scan"}:
                    break
                await settle(daemon)
                clock.advance(1)
        snapshot = await daemon.hub.latest_done("health.snapshot")
        assert snapshot is not None and "lanes" in snapshot.result


async def test_a_cron_timer_runs_once_per_scheduled_moment(home: Path) -> None:
    quarter = 1_700_000_100.0  # a quarter hour
    clock = FakeClock(quarter + 60)
    timer = TimerConfig(kind="noop", cron="*/15 * * * *", lane="maintenance")
    async with running_daemon(home, with_timer(timer), clock=clock) as daemon:
        await settle(daemon)
        assert len(await timer_jobs(daemon)) == 1  # the current slot, late but once
        clock.advance(600)
        await settle(daemon)
        assert len(await timer_jobs(daemon)) == 1  # 22:26: the next slot is 22:30
        clock.advance(240)
        await settle(daemon)
        assert len(await timer_jobs(daemon)) == 2
        keys = {job.key for job in await daemon.hub.list_jobs(JobFilter(limit=10, kind="noop"))}
        assert keys == {f"timer:beat:{int(quarter)}", f"timer:beat:{int(quarter) + 900}"}
