"""Lane runners: each lane claims from the store when it has free slots, and sleeps otherwise.

A lane sleeps on an in-process wake-up, set when a job is queued in it, a slot
frees or the lane is resumed, or until its earliest `not_before` comes due.
There is no polling loop.
"""

from __future__ import annotations

import logging
import math
from pathlib import Path

import anyio
from anyio.streams.memory import MemoryObjectReceiveStream, MemoryObjectSendStream

from interlock.clock import Clock
from interlock.config import LaneConfig
from interlock.domain import Job
from interlock.errors import InterlockError
from interlock.handlers import HandlerRegistry, JobContext
from interlock.hub import Hub

log = logging.getLogger(__name__)


class LaneRunner:
    """Runs the jobs of one lane, at most `concurrency` at a time."""

    def __init__(
        self,
        name: str,
        settings: LaneConfig,
        hub: Hub,
        handlers: HandlerRegistry,
        clock: Clock,
        artifacts_dir: Path,
    ) -> None:
        self.name = name
        self.settings = settings
        self.hub = hub
        self.handlers = handlers
        self.clock = clock
        self.artifacts_dir = artifacts_dir
        self.running = 0
        self.claiming = True
        self._wake = anyio.Event()
        self._idle = anyio.Event()
        self._idle.set()
        hub.register_lane(name, self.wake)

    def wake(self) -> None:
        """Something changed: look at the store again."""
        self._wake.set()

    def stop_claiming(self) -> None:
        """Shutdown: finish what runs, start nothing new."""
        self.claiming = False
        self._wake.set()

    async def wait_idle(self) -> None:
        """Return once no job of this lane is running."""
        await self._idle.wait()

    async def run(self) -> None:
        """Claim and run jobs until cancelled or told to stop claiming.

        One worker per slot takes claimed jobs from an in-process hand-off;
        the lane never holds more jobs than it has slots, so the store stays
        the queue.
        """
        hand_off, claimed_jobs = anyio.create_memory_object_stream[tuple[Job, anyio.CancelScope]](
            math.inf
        )
        async with anyio.create_task_group() as workers:
            for _ in range(self.settings.concurrency):
                workers.start_soon(self._worker, claimed_jobs.clone())
            claimed_jobs.close()
            async with hand_off:
                await self._claim_loop(hand_off)

    async def _worker(self, jobs: MemoryObjectReceiveStream[tuple[Job, anyio.CancelScope]]) -> None:
        async with jobs:
            async for job, scope in jobs:
                await self._work(job, scope)

    async def _claim_loop(
        self, hand_off: MemoryObjectSendStream[tuple[Job, anyio.CancelScope]]
    ) -> None:
        failures = 0
        while self.claiming:
            # A fresh wake-up before looking, so a submit that commits
            # while we claim is not missed.
            self._wake = anyio.Event()
            free = self.settings.concurrency - self.running
            claimed: list[Job] = []
            # One instant for the claim and for the next due time: a job that
            # comes due between the two is then found by one or the other.
            looked_at = self.clock.now()
            try:
                if free > 0:
                    claimed = await self.hub.claim(self.name, free, looked_at)
                due = None
                if free > 0 and not claimed:  # nothing due now: when is the next?
                    due = await self.hub.next_due(self.name, looked_at)
            except Exception as exc:  # the store failed: try again later, never give up
                failures += 1
                delay = min(30.0, 0.1 * 2**failures)
                log.error("lane %s: cannot claim (%s); again in %.1fs", self.name, exc, delay)
                await anyio.sleep(delay)
                continue
            failures = 0
            if claimed:
                try:
                    for job in claimed:
                        # The scope exists from the claim on, so a cancel that
                        # arrives before a worker picks the job up still stops it.
                        scope = anyio.CancelScope()
                        self.hub.track(job.id, scope)
                        self._started()
                        hand_off.send_nowait((job, scope))
                except anyio.BrokenResourceError:
                    # The workers were cancelled while this claim committed (the
                    # daemon is stopping): the jobs stay leased to this daemon and
                    # its shutdown requeues them.
                    return
                continue  # took what was there (or filled the lane): look again
            await self._sleep(due)

    async def _sleep(self, due: float | None) -> None:
        """Wait for a wake-up, or for the next job of the lane to come due."""
        if due is None:
            await self._wake.wait()
            return
        async with anyio.create_task_group() as race:

            async def timer() -> None:
                await self.clock.sleep_until(due)
                race.cancel_scope.cancel()

            async def woken() -> None:
                await self._wake.wait()
                race.cancel_scope.cancel()

            race.start_soon(timer)
            race.start_soon(woken)

    def _started(self) -> None:
        self.running += 1
        if self._idle.is_set():
            self._idle = anyio.Event()

    def _ended(self) -> None:
        self.running -= 1
        if self.running == 0:
            self._idle.set()
        self._wake.set()

    async def _work(self, job: Job, scope: anyio.CancelScope) -> None:
        try:
            with scope:
                await self._run_handler(job)
        finally:
            self.hub.untrack(job.id)
            self._ended()

    async def _run_handler(self, job: Job) -> None:
        handler = self.handlers.get(job.kind)
        ctx = JobContext(
            job=job,
            clock=self.clock,
            heartbeat=lambda: self.hub.heartbeat(job),
            lease_seconds=self.hub.config.daemon.lease_seconds,
            artifacts_root=self.artifacts_dir,
            hub=self.hub,
        )
        try:
            if handler is None:
                raise LookupError(f"no handler for job kind {job.kind!r}")
            result = await handler(ctx)
        except anyio.get_cancelled_exc_class():
            raise
        except Exception as exc:  # a handler's failure is recorded on the job, never swallowed
            try:
                await self.hub.fail(job, exc)
            except InterlockError as refused:
                log.info("job %s failed (%s) but changed meanwhile: %s", job.id, exc, refused)
        else:
            try:
                await self.hub.finish(job, result)
            except InterlockError as refused:
                # Cancelled while it ran, or its lease went elsewhere: the result is dropped.
                log.info("job %s finished but changed meanwhile: %s", job.id, refused)


def lane_order(lanes: dict[str, LaneConfig]) -> list[str]:
    """Lane names by rank, the most urgent first."""
    return sorted(lanes, key=lambda name: (lanes[name].rank, name))
