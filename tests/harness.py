"""An in-process daemon for tests: real store, hub, lanes and socket; a fake clock if asked."""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from pathlib import Path

import anyio

from interlock.clock import Clock
from interlock.config import Config, MaintenanceConfig, resolve_paths
from interlock.daemon import Daemon
from interlock.domain import Event, EventType, JobState
from interlock.handlers import HandlerRegistry


@asynccontextmanager
async def running_daemon(
    home: Path,
    config: Config | None = None,
    clock: Clock | None = None,
    handlers: HandlerRegistry | None = None,
) -> AsyncIterator[Daemon]:
    """Start a Daemon in this event loop, yield it once ready, stop it cleanly afterwards."""
    config = config or Config()
    if "maintenance" not in config.model_fields_set:
        # Timers submit jobs of their own; tests that want them pass a maintenance config.
        config = config.model_copy(update={"maintenance": MaintenanceConfig(timers={})})
    if "shutdown_grace_seconds" not in config.daemon.model_fields_set:
        # Real seconds: jobs sleeping on a fake clock would hold every test for the default grace.
        config = config.model_copy(
            update={"daemon": config.daemon.model_copy(update={"shutdown_grace_seconds": 0})}
        )
    paths = resolve_paths(config, {"INTERLOCK_HOME": str(home)})
    daemon = Daemon(config, paths, clock=clock, handlers=handlers)
    async with anyio.create_task_group() as tasks:
        await tasks.start(daemon.run)
        try:
            yield daemon
        finally:
            daemon.stop()


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


async def wait_for_state(
    daemon: Daemon, job_id: int, *states: JobState, within: float = 10
) -> None:
    """Return once the job is in one of `states`."""

    async def reached() -> bool:
        return (await daemon.hub.get(job_id)).state in states

    await _wait_until(daemon, job_id, reached, within)


async def settle(daemon: Daemon) -> None:
    """Return once every task waits on something outside the daemon (the clock, a socket).

    `wait_all_tasks_blocked` alone is not enough: a task awaiting the store's
    thread looks blocked while its query still runs. The checkpointer's
    connection waits on an event, not a query, so it counts as idle.
    """
    with anyio.fail_after(10):
        quiet = 0
        while quiet < 2:
            await anyio.wait_all_tasks_blocked()
            if daemon.store.idle:
                quiet += 1
            else:
                quiet = 0
                await anyio.sleep(0.0005)  # a query is running on the store's thread


async def wait_for_events(
    daemon: Daemon, job_id: int, event_type: EventType, count: int = 1, within: float = 10
) -> None:
    """Return once the job has at least `count` events of `event_type`."""

    async def recorded() -> bool:
        events = await daemon.hub.events(job_id)
        return sum(1 for event in events if event.type == event_type) >= count

    await _wait_until(daemon, job_id, recorded, within)
