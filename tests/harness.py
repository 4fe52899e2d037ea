"""An in-process daemon for tests, and the waits and runs that tests share.

A real store, hub, lanes and socket in the test's event loop; a fake clock if
given. The waits are event-driven: they check after each committed event of
the job, never by polling on a timer.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import anyio
import anyio.to_thread

from interlock.clock import Clock
from interlock.config import Config, MaintenanceConfig, resolve_paths
from interlock.daemon import Daemon
from interlock.domain import Event, EventType, Job, JobSpec, JobState
from interlock.handlers.registry import KindRegistry


@asynccontextmanager
async def running_daemon(
    home: Path,
    config: Config | None = None,
    clock: Clock | None = None,
    kinds: KindRegistry | None = None,
) -> AsyncIterator[Daemon]:
    """Start a Daemon in this event loop, yield it once ready, stop it cleanly afterwards."""
    config = config or Config()
    if "maintenance" not in config.model_fields_set:
        # Timers submit jobs of their own; tests that want them pass a maintenance config.
        config = config.model_copy(update={"maintenance": MaintenanceConfig(timers={})})
    if "inbox" not in config.model_fields_set:
        # The inbox watcher submits scans of its own; tests that want it pass an inbox config.
        config = config.model_copy(
            update={"inbox": config.inbox.model_copy(update={"watch": False})}
        )
    if "shutdown_grace_seconds" not in config.daemon.model_fields_set:
        # Real seconds: jobs sleeping on a fake clock would hold every test for the default grace.
        config = config.model_copy(
            update={"daemon": config.daemon.model_copy(update={"shutdown_grace_seconds": 0})}
        )
    paths = resolve_paths(config, {"INTERLOCK_HOME": str(home)})
    daemon = Daemon(config, paths, clock=clock, kinds=kinds)
    try:
        async with anyio.create_task_group() as tasks:
            await tasks.start(daemon.run)
            try:
                yield daemon
            finally:
                daemon.stop()
    except BaseExceptionGroup as group:
        # One failure (the daemon refused to start, an assertion in the test):
        # raised as itself, as the CLI would see it.
        if len(group.exceptions) == 1:
            raise group.exceptions[0] from None
        raise


def with_timers(config: Config, **timers: Any) -> Config:
    """`config` with exactly these timers (TimerConfig objects), starting at once."""
    return config.model_copy(
        update={"maintenance": MaintenanceConfig(timers=timers, start_delay_seconds=0)}
    )


async def _wait_until(
    daemon: Daemon, job_id: int, done: Callable[[], Awaitable[bool]], within: float
) -> None:
    """Check `done` now and after each committed event of the job (no polling)."""
    changed = anyio.Event()

    def watch(notices: object) -> None:
        for notice in notices:  # type: ignore[attr-defined]
            if isinstance(notice, Event) and notice.job_id == job_id:
                changed.set()

    stop_watching = daemon.bus.watch(watch)
    try:
        with anyio.fail_after(within):
            while not await done():
                await changed.wait()
                changed = anyio.Event()
    finally:
        stop_watching()


async def until(
    daemon: Daemon, check: Callable[[], Awaitable[bool]], within: float = 10
) -> None:
    """Return once `check()` holds: asked now and after each committed batch of events."""
    changed = anyio.Event()

    def watch(notices: object) -> None:
        changed.set()

    stop_watching = daemon.bus.watch(watch)
    try:
        with anyio.fail_after(within):
            while not await check():
                await changed.wait()
                changed = anyio.Event()
    finally:
        stop_watching()


async def wait_for_state(daemon: Daemon, job_id: int, *states: JobState, within: float = 10) -> Job:
    """Return the job once it is in one of `states`."""
    found: list[Job] = []

    async def reached() -> bool:
        job = await daemon.hub.get(job_id)
        found[:] = [job]
        return job.state in states

    await _wait_until(daemon, job_id, reached, within)
    return found[0]


async def wait_for_events(
    daemon: Daemon, job_id: int, event_type: EventType, count: int = 1, within: float = 10
) -> list[Event]:
    """Return the job's events once it has at least `count` of `event_type`."""
    found: list[Event] = []

    async def recorded() -> bool:
        found[:] = await daemon.hub.events(job_id)
        return sum(1 for event in found if event.type == event_type) >= count

    await _wait_until(daemon, job_id, recorded, within)
    return found


async def run_job(daemon: Daemon, spec: JobSpec, within: float = 10) -> Job:
    """Submit a job and return it once it has ended (done, dead or cancelled)."""
    job = (await daemon.hub.submit(spec)).job
    return await wait_for_state(
        daemon, job.id, JobState.DONE, JobState.DEAD, JobState.CANCELLED, within=within
    )


async def run_maintenance(daemon: Daemon, kind: str, **payload: Any) -> dict[str, Any]:
    """Run one maintenance job now and return its result; fail the test if it did not finish."""
    job = await run_job(daemon, JobSpec(kind=kind, payload=payload))
    assert job.state == JobState.DONE, f"{kind} ended {job.state}: {job.error}"
    result: dict[str, Any] = job.result
    return result


async def _all_tasks_blocked() -> None:
    """Return once every other task waits on a future (anyio's own check, without its
    0.1 s sleep between looks, which made each settle cost a tenth of a second)."""
    this = asyncio.current_task()
    while True:
        await asyncio.sleep(0)
        for task in asyncio.all_tasks():
            waiter = task._fut_waiter  # type: ignore[attr-defined]
            if task is not this and (waiter is None or waiter.done()):
                break
        else:
            return


async def settle(daemon: Daemon) -> None:
    """Return once every task waits on something outside the daemon (the clock, a socket).

    All tasks blocked is not enough: a task awaiting a thread (the store's, or
    a worker thread reading a file) looks blocked while the thread still works.
    The checkpointer's connection waits on an event, not a query, so it counts
    as idle.
    """
    workers = anyio.to_thread.current_default_thread_limiter()
    with anyio.fail_after(10):
        quiet = 0
        while quiet < 2:
            await _all_tasks_blocked()
            if daemon.store.idle and workers.borrowed_tokens == 0:
                quiet += 1
            else:
                quiet = 0
                await anyio.sleep(0.0005)  # a query is running on the store's thread
