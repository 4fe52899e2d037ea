"""The hub: the clear boss, and the only caller of the store's write methods.

Everything that wants a job to change state asks the hub; the hub checks the
state machine in `domain`, applies the policy in `config`, asks the store to
commit the transition with its event, and wakes the lane that has new work.
"""

from __future__ import annotations

import logging
import random
from collections.abc import Callable, Collection, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import anyio

from interlock.bus import Bus, LaneNotice
from interlock.clock import Clock
from interlock.config import Config, RetryPolicy
from interlock.domain import (
    Event,
    EventType,
    Job,
    JobFilter,
    JobSpec,
    JobState,
    LaneStatus,
    SubmitResult,
    Trigger,
    sources_of,
)
from interlock.errors import BadRequest, InterlockError, UnknownKind, UnknownLane
from interlock.store import Change, NewJob, Pruned, Store
from interlock.tax import TaxGrouping, TaxReport, summarize

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Lineage:
    """Why a job exists: the chain from its root to it, and its own events."""

    chain: list[Job]
    events: list[Event]


def backoff_delay(policy: RetryPolicy, attempts: int, rng: random.Random) -> float:
    """Exponential backoff with jitter: base * 2^(attempts-1), capped, then +/- jitter."""
    growth = 2.0 ** max(attempts - 1, 0)
    delay = min(policy.backoff_max_seconds, policy.backoff_base_seconds * growth)
    spread = delay * policy.backoff_jitter
    return max(0.0, delay + rng.uniform(-spread, spread))


class Hub:
    """Submit, claim, finish, fail, cancel, retry, pause: every job state change passes here."""

    def __init__(
        self,
        store: Store,
        bus: Bus,
        clock: Clock,
        config: Config,
        kinds: Collection[str],
        holder: str,
        rng: random.Random | None = None,
    ) -> None:
        self.store = store
        self.bus = bus
        self.clock = clock
        self.config = config
        self.kinds = kinds
        self.holder = holder
        self._rng = rng or random.Random()
        self._wakers: dict[str, Callable[[], None]] = {}
        self._running_scopes: dict[int, anyio.CancelScope] = {}
        self._policies: dict[str, RetryPolicy] = {}
        store.on_commit(bus.publish)

    # -- wiring for lanes ----------------------------------------------------------

    def register_lane(self, lane: str, wake: Callable[[], None]) -> None:
        """A lane runner asks to be woken when its lane may have new work."""
        self._wakers[lane] = wake

    def _wake(self, lane: str) -> None:
        waker = self._wakers.get(lane)
        if waker is not None:
            waker()

    def track(self, job_id: int, scope: anyio.CancelScope) -> None:
        """A worker says which cancel scope runs a job, so a cancel can reach it."""
        self._running_scopes[job_id] = scope

    def untrack(self, job_id: int) -> None:
        """The worker is done with the job."""
        self._running_scopes.pop(job_id, None)

    def _policy(self, kind: str) -> RetryPolicy:
        policy = self._policies.get(kind)
        if policy is None:
            policy = self._policies[kind] = self.config.retry_policy(kind)
        return policy

    # -- submit ----------------------------------------------------------------------

    async def submit(self, spec: JobSpec, key_window_seconds: float | None = None) -> SubmitResult:
        """Queue a job, or return the job that already holds its key.

        A live job always holds its key; a finished one holds it for the kind's
        key window, or for `key_window_seconds` when the caller gives one
        (timers and the inbox keep keys longer than the kind would).
        """
        if spec.kind not in self.kinds:
            raise UnknownKind(spec.kind, sorted(self.kinds))
        lane = spec.lane or self.config.lane_for(spec.kind)
        settings = self.config.lanes.get(lane)
        if settings is None:
            raise UnknownLane(lane, list(self.config.lanes))
        now = self.clock.now()
        policy = self._policy(spec.kind)
        new = NewJob(
            spec=spec,
            lane=lane,
            max_attempts=policy.max_attempts,
            order_key=now - spec.priority * settings.aging_seconds,
            max_depth=settings.max_depth,
            key_window_seconds=(
                self.config.key_window(spec.kind)
                if key_window_seconds is None
                else key_window_seconds
            ),
        )
        result = await self.store.submit(new, now)
        if not result.duplicate:
            self._wake(lane)
        return result

    # -- the worker's side -------------------------------------------------------------

    async def claim(self, lane: str, limit: int, now: float | None = None) -> list[Job]:
        """Lease up to `limit` jobs of a lane that are due at `now`, best first."""
        now = self.clock.now() if now is None else now
        lease_until = now + self.config.daemon.lease_seconds
        return await self.store.claim(lane, limit, self.holder, now, lease_until)

    async def heartbeat(self, job: Job) -> bool:
        """Extend a running job's lease; False once the job is no longer ours."""
        now = self.clock.now()
        lease_until = now + self.config.daemon.lease_seconds
        return await self.store.heartbeat(job.id, self.holder, job.attempts, now, lease_until)

    async def finish(self, job: Job, result: Any) -> None:
        """A handler returned: the job is done."""
        await self.store.finish(job.id, self.holder, job.attempts, result, self.clock.now())

    async def fail(self, job: Job, error: BaseException) -> Job:
        """A handler raised: record why, then retry after backoff or give up."""
        now = self.clock.now()
        policy = self._policy(job.kind)
        retry_at: float | None = None
        if job.attempts < job.max_attempts:
            retry_at = now + backoff_delay(policy, job.attempts, self._rng)
        message = f"{type(error).__name__}: {error}"
        failed = await self.store.fail(job.id, self.holder, job.attempts, message, now, retry_at)
        if retry_at is not None:
            self._wake(job.lane)
        return failed

    def slot_freed(self, lane: str) -> None:
        """A worker finished with a job: its lane may claim another."""
        self._wake(lane)

    # -- a person's (or a client's) requests ---------------------------------------------

    async def cancel(self, job_id: int, note: str = "cancelled by request") -> Job:
        """Stop a live job; a running one has its handler cancelled."""
        job = await self.store.change(
            Change(
                job_id=job_id,
                target=JobState.CANCELLED,
                allowed_from=sources_of(JobState.CANCELLED),
                event_type=EventType.CANCELLED,
                trigger=Trigger.HUMAN,
                note=note,
                action="cancel",
            ),
            self.clock.now(),
        )
        scope = self._running_scopes.pop(job_id, None)
        if scope is not None:
            scope.cancel()
        return job

    async def retry(self, job_id: int, note: str = "retried by request") -> Job:
        """Give a dead or cancelled job a fresh set of attempts."""
        job = await self.store.change(
            Change(
                job_id=job_id,
                target=JobState.QUEUED,
                allowed_from=frozenset({JobState.DEAD, JobState.CANCELLED, JobState.FAILED}),
                event_type=EventType.RETRIED,
                trigger=Trigger.RETRY,
                note=note,
                action="retry",
                reset_attempts=True,
            ),
            self.clock.now(),
        )
        self._wake(job.lane)
        return job

    async def set_paused(self, lane: str, paused: bool, reason: str = "") -> LaneStatus:
        """Pause a lane (running jobs finish, nothing new starts) or resume it."""
        if lane not in self.config.lanes:
            raise UnknownLane(lane, list(self.config.lanes))
        now = self.clock.now()
        await self.store.set_lane_paused(lane, paused, reason, now)
        self.bus.publish([LaneNotice(lane=lane, paused=paused, reason=reason, at=now)])
        if not paused:
            self._wake(lane)
        (status,) = await self.lanes([lane])
        return status

    # -- the daemon's own transitions -----------------------------------------------------

    async def recover(self) -> list[Job]:
        """At start: a job still `running` was held by a process that died; queue it again."""
        jobs = await self.store.requeue_running(
            self.clock.now(),
            Trigger.RECOVERY,
            "found running at start: its daemon died; requeued",
            holder=None,
            uncount_attempt=False,
        )
        for lane in {job.lane for job in jobs}:
            self._wake(lane)
        return jobs

    async def requeue_own(self, note: str) -> list[Job]:
        """At shutdown: put back the jobs this daemon still holds, without charging an attempt."""
        return await self.store.requeue_running(
            self.clock.now(), Trigger.RECOVERY, note, holder=self.holder, uncount_attempt=True
        )

    # -- stalls ------------------------------------------------------------------------------

    async def requeue_stalled(self) -> list[Job]:
        """Running jobs whose lease expired (a hung or dead worker): queue them again.

        A job whose attempts are spent is dead instead. A hung handler in this
        process is cancelled, so it cannot finish an attempt that is no longer its own.
        """
        now = self.clock.now()
        changed = []
        for job in await self.store.expired_leases(now):
            spent = job.attempts >= job.max_attempts
            target = JobState.DEAD if spent else JobState.QUEUED
            note = (
                f"lease held by {job.lease_holder} expired at {job.lease_expires_at or 0:.3f}"
                f" (last heartbeat {job.heartbeat_at or 0:.3f}); "
                + ("attempts spent: dead" if spent else "requeued")
            )
            try:
                changed.append(
                    await self.store.change(
                        Change(
                            job_id=job.id,
                            target=target,
                            allowed_from=frozenset({JobState.RUNNING}),
                            event_type=EventType.STALLED,
                            trigger=Trigger.RECOVERY,
                            note=note,
                            action="requeue",
                            lease_expired_before=now,
                        ),
                        now,
                    )
                )
            except InterlockError:
                continue  # it finished or heartbeated meanwhile
            scope = self._running_scopes.pop(job.id, None)
            if scope is not None:
                scope.cancel()
            self._wake(job.lane)
        return changed

    async def flag_long_waits(self) -> list[Job]:
        """Queued jobs waiting past their lane's stall_after_seconds get one event each."""
        now = self.clock.now()
        flagged = []
        for lane, settings in self.config.lanes.items():
            for job in await self.store.waiting_since(lane, now - settings.stall_after_seconds):
                note = (
                    f"waiting {now - job.created_at:.0f}s in lane {lane},"
                    f" past its {settings.stall_after_seconds:g}s threshold"
                )
                if await self.store.flag(job.id, EventType.STALL_FLAGGED, note, now):
                    flagged.append(job)
        return flagged

    async def stalls(self, within_seconds: float = 86_400.0) -> dict[str, list[Job]]:
        """Leases expired now, jobs waiting too long, and jobs stalled recently."""
        now = self.clock.now()
        waiting: list[Job] = []
        for lane, settings in self.config.lanes.items():
            waiting += await self.store.waiting_since(lane, now - settings.stall_after_seconds)
        return {
            "expired": await self.store.expired_leases(now),
            "waiting": waiting,
            "recent": await self.store.recently_stalled(now - within_seconds),
        }

    async def latest_done(self, kind: str) -> Job | None:
        """The newest finished job of a kind (the last health snapshot, say)."""
        return await self.store.latest_done(kind)

    # -- the autonomy tax and the governor ----------------------------------------------------

    async def tax(self, since_seconds: float, by: TaxGrouping | None = None) -> TaxReport:
        """Maintenance against feature work, for the jobs created in the last `since_seconds`."""
        now = self.clock.now()
        since = now - since_seconds
        rows = await self.store.usage(since, now)
        policy = self.config.tax
        return summarize(rows, since, now, policy.maintenance_kinds, policy.maintenance_budget, by)

    async def note(self, job_id: int, event_type: EventType, note: str) -> bool:
        """Record an event that changes no state on a job, once per type; True if recorded."""
        return await self.store.flag(job_id, event_type, note, self.clock.now())

    # -- retention, aging and gates (the maintenance kinds' writes) ---------------------------

    async def prune_finished(self, before: float, max_rows: int) -> Pruned:
        """One bounded write: finished jobs that ended before `before`, and their events, go.

        A job that another job names as parent or root stays (lineage stays
        whole); call again until it deletes nothing.
        """
        return await self.store.prune_finished(before, max_rows)

    async def backup(self, target: Path) -> None:
        """A consistent copy of the store at `target`, taken while the daemon runs."""
        await self.store.backup(target)

    async def record_aging(self, lane: str, now: float, limit: int) -> list[int]:
        """One bounded write: an `aged` event on queued jobs of `lane` that aged another step.

        Only an event: the claim order already ages by construction (see lanes.py).
        """
        aging_seconds = self.config.lanes[lane].aging_seconds
        return await self.store.record_aging(lane, aging_seconds, now, limit)

    async def done_lacking(
        self, kinds: Sequence[str], event_type: EventType, after_id: int, limit: int
    ) -> list[Job]:
        """Done jobs of `kinds` with no event of `event_type`, by id after `after_id`."""
        return await self.store.done_lacking(kinds, event_type, after_id, limit)

    async def reopen(self, job_id: int, note: str, data: dict[str, Any] | None = None) -> Job:
        """A done job goes back to queued with fresh attempts (it closed without a gate)."""
        job = await self.store.change(
            Change(
                job_id=job_id,
                target=JobState.QUEUED,
                allowed_from=frozenset({JobState.DONE}),
                event_type=EventType.REOPENED,
                trigger=Trigger.REVIEW,
                note=note,
                action="reopen",
                data=data,
                reset_attempts=True,
            ),
            self.clock.now(),
        )
        self._wake(job.lane)
        return job

    # -- reads -----------------------------------------------------------------------------

    async def get(self, job_id: int) -> Job:
        """One job."""
        return await self.store.get(job_id)

    async def list_jobs(self, job_filter: JobFilter) -> list[Job]:
        """Jobs, newest first."""
        for name in (job_filter.lane,):
            if name is not None and name not in self.config.lanes:
                raise UnknownLane(name, list(self.config.lanes))
        return await self.store.list_jobs(job_filter)

    async def why(self, job_id: int) -> Lineage:
        """The lineage from the root to this job, and this job's events."""
        chain = await self.store.lineage(job_id)
        events = await self.store.events(job_id)
        return Lineage(chain=chain, events=events)

    async def events(self, job_id: int) -> list[Event]:
        """Every event of one job, oldest first."""
        return await self.store.events(job_id)

    async def lanes(self, names: Sequence[str] | None = None) -> list[LaneStatus]:
        """Each lane's settings and load, in rank order."""
        wanted = list(names) if names is not None else list(self.config.lanes)
        for name in wanted:
            if name not in self.config.lanes:
                raise UnknownLane(name, list(self.config.lanes))
        rows = await self.store.lanes(wanted)
        statuses = []
        for row in rows:
            settings = self.config.lanes[row.name]
            statuses.append(
                LaneStatus(
                    name=row.name,
                    rank=settings.rank,
                    concurrency=settings.concurrency,
                    max_depth=settings.max_depth,
                    paused=row.paused,
                    paused_reason=row.paused_reason if row.paused else None,
                    queued=row.queued,
                    running=row.running,
                    oldest_queued_at=row.oldest_queued_at,
                )
            )
        return sorted(statuses, key=lambda status: (status.rank, status.name))

    async def next_due(self, lane: str, after: float) -> float | None:
        """When the earliest job of a lane that was not due at `after` comes due."""
        return await self.store.next_due(lane, after)

    async def counts(self) -> dict[JobState, int]:
        """How many jobs are in each state."""
        return await self.store.count_by_state()

    def check_lane(self, lane: str) -> None:
        """Raise UnknownLane unless the lane is configured."""
        if lane not in self.config.lanes:
            raise UnknownLane(lane, list(self.config.lanes))

    def check_limit(self, limit: int) -> None:
        """Paging limits are bounded."""
        if not 1 <= limit <= 10_000:
            raise BadRequest(f"limit must be between 1 and 10000, got {limit}")
