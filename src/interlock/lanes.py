"""Lane runners: each lane claims from the store when it has free slots, and sleeps otherwise.

A lane sleeps on an in-process wake-up, set when a job is queued in it, a slot
frees or the lane is resumed, or until its earliest `not_before` comes due.
There is no polling loop. The jobs the lanes run keep their leases through
one `LeaseKeeper`, which renews them all in one write every third of a lease
and stops an attempt that runs past its kind's timeout.
"""

from __future__ import annotations

import logging
import time
from collections import deque
from collections.abc import Callable, Mapping

import anyio

from interlock.clock import Clock
from interlock.config import LaneConfig
from interlock.domain import (
    EventType,
    Fail,
    Job,
    Outcome,
    PermanentFailure,
    Retry,
    RetryLater,
    outcome_of,
)
from interlock.errors import InvalidPayload, StoreError
from interlock.handlers.context import JobContext
from interlock.handlers.registry import Kind
from interlock.hub import CHANGED_MEANWHILE, Hub

log = logging.getLogger(__name__)

# Builds the context a handler gets: the daemon knows which kinds get the
# maintenance context, the lanes do not need to.
ContextFactory = Callable[[Job, Kind, Callable[[str], None]], JobContext]


async def wait_for(clock: Clock, deadline: float | None, event: anyio.Event) -> None:
    """Return once `event` is set, or once the clock reaches `deadline` (None: never)."""
    if deadline is None:
        await event.wait()
        return
    async with anyio.create_task_group() as race:

        async def timer() -> None:
            await clock.sleep_until(deadline)
            race.cancel_scope.cancel()

        async def woken() -> None:
            await event.wait()
            race.cancel_scope.cancel()

        race.start_soon(timer)
        race.start_soon(woken)


class Running:
    """One attempt the keeper looks after (made for every job: kept cheap)."""

    __slots__ = ("deadline", "job", "lost", "progress", "scope", "timed_out", "timeout", "written")

    def __init__(self, job: Job, scope: anyio.CancelScope, deadline: float, timeout: float) -> None:
        self.job = job
        self.scope = scope
        self.deadline = deadline
        self.timeout = timeout
        self.progress: str | None = None
        self.written: str | None = None
        self.timed_out = False
        self.lost = False

    def report(self, note: str) -> None:
        """The handler's progress, kept until the next renewal writes it."""
        self.progress = note


class LeaseKeeper:
    """Renews the leases of every job this daemon runs: one write each third of a lease.

    A handler that awaits a slow call keeps its job, however long it waits.
    An attempt that passes its kind's timeout is cancelled and its lease is
    no longer renewed, so even a handler that ignores the cancel (stuck in a
    thread, say) loses the job to the stall scan once its lease runs out.
    """

    def __init__(self, hub: Hub, clock: Clock, lease_seconds: float) -> None:
        self.hub = hub
        self.clock = clock
        self.interval = max(lease_seconds / 3, 0.001)
        self._running: dict[int, Running] = {}
        self._changed = anyio.Event()
        # When the keeper wakes next (None: it waits for a first job). A new job
        # wakes it only if it must wake sooner: on the hot path nothing happens.
        self._waking_at: float | None = None

    def start(self, job: Job, scope: anyio.CancelScope, timeout: float) -> Running:
        """Look after a claimed job's lease from now until `stop`."""
        deadline = self.clock.now() + timeout
        running = Running(job, scope, deadline, timeout)
        self._running[job.id] = running
        if self._waking_at is None or deadline < self._waking_at:
            self._changed.set()
        return running

    def stop(self, job_id: int) -> None:
        """The attempt is over: its outcome is the hub's business now."""
        self._running.pop(job_id, None)

    async def run(self) -> None:
        """Renew and watch deadlines until cancelled."""
        next_renewal: float | None = None
        while True:
            if not self._running:
                next_renewal = self._waking_at = None
                await self._changed.wait()
                self._changed = anyio.Event()
                continue
            now = self.clock.now()
            if next_renewal is None:
                next_renewal = now + self.interval
            deadlines = [r.deadline for r in self._running.values() if not r.timed_out]
            self._waking_at = min([next_renewal, *deadlines])
            await wait_for(self.clock, self._waking_at, self._changed)
            if self._changed.is_set():
                self._changed = anyio.Event()
            now = self.clock.now()
            self._stop_overdue(now)
            if now >= next_renewal:
                await self._renew()
                next_renewal = now + self.interval

    def _stop_overdue(self, now: float) -> None:
        for running in self._running.values():
            if not running.timed_out and now >= running.deadline:
                running.timed_out = True
                log.warning(
                    "job %s (%s) ran past its timeout of %gs: stopping it",
                    running.job.id,
                    running.job.kind,
                    running.timeout,
                )
                running.scope.cancel()

    async def _renew(self) -> None:
        live = [r for r in self._running.values() if not (r.timed_out or r.lost)]
        if not live:
            return
        progress = {
            r.job.id: r.progress for r in live if r.progress is not None and r.progress != r.written
        }
        try:
            held = await self.hub.renew([self.hub.attempt_of(r.job) for r in live], progress)
        except StoreError as exc:
            log.error("cannot renew the leases of %d running job(s): %s", len(live), exc)
            return
        for running in live:
            if running.job.id in held:
                running.written = running.progress
            elif running.job.id in self._running:
                # Stalled and requeued, or cancelled: the attempt is no longer ours.
                running.lost = True
                log.warning(
                    "job %s (%s) lost its lease while it ran; stopping the handler",
                    running.job.id,
                    running.job.kind,
                )
                running.scope.cancel()


class LaneRunner:
    """Runs the jobs of one lane, at most `concurrency` at a time."""

    def __init__(
        self,
        name: str,
        settings: LaneConfig,
        hub: Hub,
        kinds: Mapping[str, Kind],
        keeper: LeaseKeeper,
        make_context: ContextFactory,
    ) -> None:
        self.name = name
        self.settings = settings
        self.hub = hub
        self.kinds = kinds
        self.keeper = keeper
        self.clock = keeper.clock
        self.make_context = make_context
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
            await wait_for(self.clock, due, self._wake)

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
        outcome: Outcome | None = None
        timed_out = False
        try:
            kind = self.kinds.get(job.kind)
            timeout = self.hub.timeout_for(job.kind)
            running = self.keeper.start(job, scope, timeout)
            try:
                with scope:
                    outcome = await self._run_handler(job, kind, running)
            finally:
                self.keeper.stop(job.id)
                self.hub.untrack(job.id)
                timed_out = running.timed_out
            if outcome is None and timed_out:
                reason = (
                    f"timed out: still running after {timeout:g}s"
                    f" (kinds.{job.kind}.timeout_seconds)"
                )
                await self._settle(job, Retry(reason), EventType.TIMED_OUT)
            elif outcome is not None:
                await self._settle(job, outcome)
            # Otherwise it was cancelled by a person, or its lease went elsewhere:
            # there is nothing of this attempt to record.
        finally:
            self._ended()

    async def _run_handler(self, job: Job, kind: Kind | None, running: Running) -> Outcome:
        if kind is None:
            return Fail(f"no handler for job kind {job.kind!r}: it is no longer configured")
        ctx = self.make_context(job, kind, running.report)
        try:
            return outcome_of(await kind.run(ctx))
        except (RetryLater, PermanentFailure) as said:
            return said.outcome
        except InvalidPayload as refused:
            return Fail(refused.message)
        except anyio.get_cancelled_exc_class():
            raise
        except Exception as exc:  # a handler's failure is recorded on the job, never swallowed
            log.debug("job %s (%s) raised", job.id, job.kind, exc_info=True)
            return Retry(f"{type(exc).__name__}: {exc}")

    async def _settle(self, job: Job, outcome: Outcome, event: EventType | None = None) -> None:
        """Have the hub record the outcome; a failing store is retried for about a lease.

        Past that, the job is left to the stall scan, which fails the attempt
        once its lease has expired: it is never left running in silence.
        """
        delay = 0.05
        give_up_at = time.monotonic() + self.hub.config.daemon.lease_seconds
        while True:
            try:
                await self.hub.settle(job, outcome, event)
                return
            except CHANGED_MEANWHILE as refused:
                # Cancelled while it ran, or its lease went elsewhere: the outcome is dropped.
                log.info("job %s (%s) ended but changed meanwhile: %s", job.id, job.kind, refused)
                return
            except StoreError as exc:
                if time.monotonic() + delay > give_up_at:
                    log.error(
                        "job %s (%s): its outcome could not be recorded (%s); the stall scan"
                        " will fail this attempt once its lease expires",
                        job.id,
                        job.kind,
                        exc,
                    )
                    return
                log.error(
                    "job %s (%s): cannot record its outcome (%s); again in %.2fs",
                    job.id,
                    job.kind,
                    exc,
                    delay,
                )
                await anyio.sleep(delay)
                delay = min(delay * 2, 5.0)
            except Exception:
                log.exception("job %s (%s): recording its outcome failed", job.id, job.kind)
                return


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
