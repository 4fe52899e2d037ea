"""store.retention: old finished jobs and their events go, live work and lineage stay; backups."""

from __future__ import annotations

import sqlite3
from pathlib import Path
from typing import Any

import pytest

from interlock.clock import FakeClock
from interlock.config import Config, RetentionConfig
from interlock.daemon import Daemon
from interlock.domain import JobSpec, JobState
from interlock.errors import UnknownJob
from interlock.maintenance import retention
from interlock.maintenance.context import Probe
from interlock.maintenance.retention import backup_name
from tests.harness import run_maintenance, wait_for_state

pytestmark = pytest.mark.anyio

DAY = 86_400.0


async def done_noop(daemon: Daemon, parent_id: int | None = None) -> int:
    job = (await daemon.hub.submit(JobSpec(kind="noop", parent_id=parent_id))).job
    await wait_for_state(daemon, job.id, JobState.DONE)
    return job.id


async def run_retention(daemon: Daemon) -> dict[str, Any]:
    return await run_maintenance(daemon, "store.retention")


async def due(daemon: Daemon) -> bool:
    return await retention.due(
        Probe(daemon.hub.reads, daemon.config, daemon.clock, daemon.paths.state_dir)
    )


def rows(db: Path, sql: str, *params: Any) -> list[tuple[Any, ...]]:
    conn = sqlite3.connect(f"file:{db}?mode=ro", uri=True)
    try:
        return conn.execute(sql, params).fetchall()
    finally:
        conn.close()


def mode_of(path: Path) -> int:
    return path.stat().st_mode & 0o777


async def exists(daemon: Daemon, job_id: int) -> bool:
    try:
        await daemon.hub.get(job_id)
    except UnknownJob:
        return False
    return True


async def test_old_finished_jobs_go_with_their_events_live_work_and_lineage_stay(
    daemon: Daemon, clock: FakeClock
) -> None:
    hub = daemon.hub
    await hub.set_paused("background", True)
    # Old, finished, nobody points at them: pruned (a chain goes leaf first).
    lone = await done_noop(daemon)
    chain_root = await done_noop(daemon)
    chain_leaf = await done_noop(daemon, parent_id=chain_root)
    cancelled = (await hub.submit(JobSpec(kind="sleep", payload={"seconds": 1}))).job.id
    await hub.cancel(cancelled)
    # Old and finished, but a live job below them names them: kept.
    root = await done_noop(daemon)
    middle = await done_noop(daemon, parent_id=root)
    live_leaf = (
        await hub.submit(JobSpec(kind="sleep", payload={"seconds": 1}, parent_id=middle))
    ).job.id
    # Old, but live: kept.
    waiting = (await hub.submit(JobSpec(kind="sleep", payload={"seconds": 1}))).job.id
    clock.advance(31 * DAY)
    recent = await done_noop(daemon)
    assert await due(daemon)

    result = await run_retention(daemon)

    gone = [lone, chain_root, chain_leaf, cancelled]
    kept = [root, middle, live_leaf, waiting, recent]
    assert [job_id for job_id in gone if await exists(daemon, job_id)] == []
    assert [job_id for job_id in kept if not await exists(daemon, job_id)] == []
    assert result["pruned_jobs"] == len(gone)
    marks = ", ".join("?" * len(gone))
    db = daemon.paths.db_path
    assert rows(db, f"SELECT COUNT(*) FROM events WHERE job_id IN ({marks})", *gone) == [(0,)]
    assert result["pruned_events"] == 3 * 3 + 2  # three done noops; a cancel has two
    assert [job_id for job_id in kept if not await hub.events(job_id)] == []
    chain = await hub.why(live_leaf)
    assert [job.id for job in chain.chain] == [root, middle, live_leaf]
    assert (await hub.get(waiting)).state == JobState.QUEUED


@pytest.mark.daemon(config=Config(retention=RetentionConfig(days=30, backups=0)))
async def test_nothing_inside_the_window_is_pruned_and_the_timer_makes_no_job(
    daemon: Daemon, clock: FakeClock, home: Path
) -> None:
    jobs = [await done_noop(daemon) for _ in range(3)]
    clock.advance(29 * DAY)
    await done_noop(daemon)
    assert not await due(daemon)
    result = await run_retention(daemon)
    assert result["pruned_jobs"] == 0 and result["backup"] is None
    assert [job_id for job_id in jobs if not await exists(daemon, job_id)] == []
    assert not (home / "backups").exists()


async def test_pruning_goes_in_bounded_writes(daemon: Daemon, clock: FakeClock) -> None:
    old = [await done_noop(daemon) for _ in range(5)]  # 1 job + 3 events each
    clock.advance(31 * DAY)
    await done_noop(daemon)  # the newest job always stays; this one is recent anyway
    before = clock.now() - 30 * DAY
    sizes = []
    while (pruned := await daemon.hub.prune_finished(before, max_rows=9)).jobs:
        sizes.append((pruned.jobs, pruned.events))
    assert sizes == [(2, 6), (2, 6), (1, 3)]  # 8 rows, 8 rows, 4 rows: never more than 9
    assert [job_id for job_id in old if await exists(daemon, job_id)] == []
    # One job always goes, even when it alone is over the bound.
    await done_noop(daemon)
    clock.advance(31 * DAY)
    await done_noop(daemon)
    pruned = await daemon.hub.prune_finished(clock.now() - 30 * DAY, max_rows=1)
    assert (pruned.jobs, pruned.events) == (1, 3)


async def test_the_newest_job_stays_so_no_id_is_ever_reused(
    daemon: Daemon, clock: FakeClock
) -> None:
    first = await done_noop(daemon)
    last = await done_noop(daemon)
    clock.advance(31 * DAY)
    pruned = await daemon.hub.prune_finished(clock.now() - 30 * DAY, max_rows=5000)
    assert pruned.jobs == 1
    assert not await exists(daemon, first) and await exists(daemon, last)
    assert await done_noop(daemon) == last + 1


async def test_backups_are_whole_databases_taken_daily_and_only_the_newest_stay(
    daemon: Daemon, clock: FakeClock, home: Path
) -> None:
    old = [await done_noop(daemon) for _ in range(3)]
    clock.advance(31 * DAY)
    jobs_before = sum((await daemon.hub.counts()).values())
    result = await run_retention(daemon)
    first = Path(result["backup"])
    assert first == home / "backups" / backup_name(clock.now())
    # Taken before the pruning, while the retention job itself ran.
    assert rows(first, "SELECT COUNT(*) FROM jobs") == [(jobs_before + 1,)]
    assert rows(first, "SELECT COUNT(*) FROM jobs WHERE id IN (?, ?, ?)", *old) == [(3,)]
    assert rows(first, "PRAGMA integrity_check") == [("ok",)]
    assert rows(first, "PRAGMA journal_mode") == [("delete",)]  # one self-contained file
    assert mode_of(first) == 0o600

    clock.advance(3600)  # within the day: no new backup, nothing for the timer to do
    assert not await due(daemon)
    assert (await run_retention(daemon))["backup"] is None

    times = [clock.now() - 3600]
    for _ in range(4):
        clock.advance(DAY)
        times.append(clock.now())
        assert await due(daemon)
        result = await run_retention(daemon)
    names = sorted(path.name for path in (home / "backups").iterdir())
    assert names == [backup_name(at) for at in times[-3:]]
    assert result["backups_removed"] == [backup_name(times[-4])]
    jobs_now = sum((await daemon.hub.counts()).values())
    assert rows(home / "backups" / names[-1], "SELECT COUNT(*) FROM jobs") == [(jobs_now,)]


@pytest.mark.daemon(
    config=Config(retention=RetentionConfig(backups=1, backup_dir="saved", backup_every_seconds=30))
)
async def test_backup_generations_interval_and_folder_are_configurable(
    daemon: Daemon, clock: FakeClock, home: Path
) -> None:
    for _ in range(3):
        await run_retention(daemon)
        clock.advance(60)
    assert [path.name for path in (home / "saved").iterdir()] == [backup_name(clock.now() - 60)]
