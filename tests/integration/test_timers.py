"""Timers inside a real in-process daemon, on a fake clock: no test waits for a real interval."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from interlock.clock import FakeClock
from interlock.config import Config, MaintenanceConfig, TimerConfig, resolve_paths
from interlock.daemon import Daemon
from interlock.domain import EventType, JobFilter, JobSpec, JobState, Trigger
from interlock.errors import BadRequest, ConfigError
from interlock.maintenance.scheduler import fire_at, slot_key, slot_of
from tests.harness import running_daemon, settle, wait_for_state, with_timers

pytestmark = pytest.mark.anyio

START = 1_700_000_000.0  # the fake clock's start: a slot boundary for 60 s and 30 s timers
TIMER = TimerConfig(kind="noop", interval_seconds=60, jitter_seconds=10, lane="maintenance")


def with_timer(timer: TimerConfig = TIMER) -> Config:
    return with_timers(Config(), beat=timer)


async def timer_jobs(daemon: Daemon, kind: str = "noop") -> list[int]:
    jobs = await daemon.hub.list_jobs(JobFilter(limit=1000, kind=kind))
    return sorted(job.id for job in jobs if job.trigger == Trigger.TIMER)


async def reach_first_fire(daemon: Daemon, clock: FakeClock) -> None:
    await settle(daemon)
    due = fire_at("beat", TIMER, slot_of(TIMER, clock.now()))
    if due > clock.now():  # this slot fires a little later
        clock.advance(due - clock.now())
        await settle(daemon)


@pytest.mark.daemon(config=with_timer())
async def test_one_job_per_slot(daemon: Daemon, clock: FakeClock) -> None:
    first_slot = slot_of(TIMER, START)
    await reach_first_fire(daemon, clock)
    assert len(await timer_jobs(daemon)) == 1
    for expected in range(2, 6):
        clock.advance(60)
        await settle(daemon)
        assert len(await timer_jobs(daemon)) == expected
    keys = {job.key for job in await daemon.hub.list_jobs(JobFilter(limit=100, kind="noop"))}
    assert keys == {slot_key("beat", first_slot + n) for n in range(5)}
    assert daemon.scheduler.stats["beat"].submitted == 5


@pytest.mark.daemon(config=with_timer())
async def test_a_tick_fires_only_once_its_jitter_has_passed(
    daemon: Daemon, clock: FakeClock
) -> None:
    slot = slot_of(TIMER, START) + 1
    await settle(daemon)
    before = len(await timer_jobs(daemon))
    due = fire_at("beat", TIMER, slot)
    clock.advance(due - START - 0.001)
    await settle(daemon)
    assert len(await timer_jobs(daemon)) == before
    clock.advance(0.001)
    await settle(daemon)
    assert len(await timer_jobs(daemon)) == before + 1


async def test_timers_wait_the_start_delay_so_a_new_daemon_serves_its_user_first(
    home: Path, clock: FakeClock
) -> None:
    config = with_timer().model_copy(
        update={"maintenance": MaintenanceConfig(timers={"beat": TIMER})}  # the default delay
    )
    async with running_daemon(home, config, clock) as daemon:
        first = (await daemon.hub.submit(JobSpec(kind="noop"))).job
        assert first.id == 1
        clock.advance(59)
        await settle(daemon)
        assert await timer_jobs(daemon) == []
        clock.advance(1 + 60)  # the delay is over, and the next slot has come
        await settle(daemon)
        assert len(await timer_jobs(daemon)) == 1


async def test_after_downtime_a_timer_runs_once_not_once_per_missed_slot(
    home: Path, clock: FakeClock
) -> None:
    async with running_daemon(home, with_timer(), clock=clock) as daemon:
        await reach_first_fire(daemon, clock)
        ran_before = len(await timer_jobs(daemon))
    clock.advance(10 * 60)  # the daemon was down for ten slots
    async with running_daemon(home, with_timer(), clock=clock) as daemon:
        await reach_first_fire(daemon, clock)
        assert len(await timer_jobs(daemon)) == ran_before + 1


@pytest.mark.daemon(config=with_timer(TIMER.model_copy(update={"enabled": False})))
async def test_a_doubled_or_replayed_tick_collapses_into_one_job(
    daemon: Daemon, clock: FakeClock
) -> None:
    slot = slot_of(TIMER, START)
    first = await daemon.scheduler.tick("beat", slot)
    doubled = await daemon.scheduler.tick("beat", slot)
    assert first is not None and doubled is not None
    assert doubled.duplicate and doubled.job.id == first.job.id
    await wait_for_state(daemon, first.job.id, JobState.DONE)
    clock.advance(3600)  # long after the job ended: the slot keeps its key for a day
    replayed = await daemon.scheduler.tick("beat", slot)
    assert replayed is not None and replayed.duplicate and replayed.job.id == first.job.id
    events = await daemon.hub.events(first.job.id)
    assert sum(event.type == EventType.DUPLICATE for event in events) == 2


@pytest.mark.daemon(config=with_timer())
async def test_tick_by_hand_always_runs_and_says_so(daemon: Daemon) -> None:
    one = await daemon.scheduler.tick("beat")
    two = await daemon.scheduler.tick("beat")
    assert one.job.id != two.job.id
    assert one.job.trigger == Trigger.HUMAN and "by hand" in one.job.reason
    with pytest.raises(BadRequest, match="no timer named 'nope'"):
        await daemon.scheduler.tick("nope")


STALLS = TimerConfig(kind="stalls.scan", interval_seconds=30)


@pytest.mark.daemon(config=with_timers(Config(), stalls=STALLS))
async def test_a_tick_whose_kind_has_nothing_to_do_makes_no_job(
    daemon: Daemon, clock: FakeClock
) -> None:
    for _ in range(10):  # five minutes of a healthy daemon
        clock.advance(30)
        await settle(daemon)
    stats = daemon.scheduler.stats["stalls"]
    assert stats.ticks >= 10 and stats.skipped == stats.ticks and stats.submitted == 0
    assert await timer_jobs(daemon, "stalls.scan") == []


async def test_a_timer_whose_kind_has_no_handler_stops_the_daemon_by_name(home: Path) -> None:
    config = with_timer(TIMER.model_copy(update={"kind": "nothing.here"}))
    daemon = Daemon(config, resolve_paths(config, {"INTERLOCK_HOME": str(home)}))
    with pytest.raises(ConfigError, match=r"maintenance\.timers\.beat\.kind"):
        await daemon.run()
    assert not (home / "interlock.sock").exists()


def test_the_daemon_command_reports_a_timer_without_a_handler(make_daemon: Any) -> None:
    daemon = make_daemon(
        '[maintenance.timers.beat]\nkind = "nothing.here"\ninterval_seconds = 60\n'
    )
    with pytest.raises(AssertionError, match=r"maintenance\.timers\.beat\.kind: no handler"):
        daemon.start(timeout=10)


DEFAULTS = Config(maintenance=MaintenanceConfig(start_delay_seconds=0))


@pytest.mark.daemon(config=DEFAULTS)
async def test_an_idle_day_with_every_default_timer_makes_a_few_dozen_jobs(
    daemon: Daemon, clock: FakeClock
) -> None:
    await settle(daemon)  # the first ticks' jobs run before time moves on
    for _ in range(24 * 12):  # a day, five minutes at a time
        clock.advance(300)
        await settle(daemon)
    jobs = await daemon.hub.list_jobs(JobFilter(limit=10_000))
    kinds = sorted({job.kind for job in jobs})
    assert kinds == ["health.snapshot", "store.retention"], kinds
    assert 24 <= len(jobs) <= 26  # a snapshot an hour, a backup a day
    skipped = sum(stats.skipped for stats in daemon.scheduler.stats.values())
    assert skipped > 1000  # the other ticks looked, found nothing to do, made nothing
    snapshot = await daemon.hub.latest_done("health.snapshot")
    assert snapshot is not None and "lanes" in snapshot.result


@pytest.mark.daemon(config=with_timer(TimerConfig(kind="noop", cron="*/15 * * * *")))
async def test_a_cron_timer_runs_once_per_scheduled_moment(
    daemon: Daemon, clock: FakeClock
) -> None:
    quarter = 1_700_000_100.0  # a quarter hour, 100 s after the clock's start
    await settle(daemon)
    assert len(await timer_jobs(daemon)) == 1  # the current slot (22:00 local), late but once
    clock.advance(quarter + 60 - START)  # 22:16
    await settle(daemon)
    assert len(await timer_jobs(daemon)) == 2  # 22:15's
    clock.advance(600)  # 22:26: the next slot is 22:30
    await settle(daemon)
    assert len(await timer_jobs(daemon)) == 2
    clock.advance(240)
    await settle(daemon)
    assert len(await timer_jobs(daemon)) == 3
    keys = {job.key for job in await daemon.hub.list_jobs(JobFilter(limit=10, kind="noop"))}
    assert {f"timer:beat:{int(quarter)}", f"timer:beat:{int(quarter) + 900}"} <= keys
