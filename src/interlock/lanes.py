"""Lane runners: each lane claims from the store when it has free slots, and sleeps otherwise.

A lane sleeps on an in-process wake-up, set when a job is queued in it, a slot
frees or the lane is resumed, or until its earliest `not_before` comes due.
There is no polling loop.
"""

from __future__ import annotations

import logging
from collections import deque
from pathlib import Path

import anyio

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
        self._hand_off = _HandOff()
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
        async with anyio.create_task_group() as workers:
            for _ in range(self.settings.concurrency):
                workers.start_soon(self._worker)
            try:
                await self._claim_loop()
            finally:
                self._hand_off.close()

    async def _worker(self) -> None:
        while (claimed := await self._hand_off.take()) is not None:
            await self._work(*claimed)

    async def _claim_loop(self) -> None:
        hand_off = self._hand_off
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
                        hand_off.give((job, scope))
                except anyio.ClosedResourceError:
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


class _HandOff:
    """Claimed jobs to idle workers: a parked worker is woken with its job directly.

    Cheaper per job than a memory object stream, which bookkeeps the waiting
    task on every receive; at thousands of jobs a second that shows.
    """

    def __init__(self) -> None:
        self._ready: deque[tuple[Job, anyio.CancelScope]] = deque()
        self._parked: deque[_Parked] = deque()
        self._closed = False

    def give(self, claimed: tuple[Job, anyio.CancelScope]) -> None:
        if self._closed:
            raise anyio.ClosedResourceError
        while self._parked:
            parked = self._parked.popleft()
            if not parked.gone:
                parked.claimed = claimed
                parked.event.set()
                return
        self._ready.append(claimed)

    async def take(self) -> tuple[Job, anyio.CancelScope] | None:
        """The next claimed job, or None once closed and drained."""
        if self._ready:
            return self._ready.popleft()
        if self._closed:
            return None
        parked = _Parked()
        self._parked.append(parked)
        try:
            await parked.event.wait()
        except BaseException:
            parked.gone = True
            if parked.claimed is not None:  # handed a job as it was cancelled: pass it on
                self._ready.appendleft(parked.claimed)
            raise
        return parked.claimed

    def close(self) -> None:
        """No more jobs: parked workers end."""
        self._closed = True
        while self._parked:
            self._parked.popleft().event.set()


class _Parked:
    __slots__ = ("claimed", "event", "gone")

    def __init__(self) -> None:
        self.event = anyio.Event()
        self.claimed: tuple[Job, anyio.CancelScope] | None = None
        self.gone = False


def lane_order(lanes: dict[str, LaneConfig]) -> list[str]:
    """Lane names by rank, the most urgent first."""
    return sorted(lanes, key=lambda name: (lanes[name].rank, name))
