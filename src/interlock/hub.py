"""The hub: the clear boss, and the only caller of the store's write methods.

Everything that wants a job to change state asks the hub. The hub applies
policy (config: lanes, retries, timeouts, crash limits), turns each request
into a `store.Change` of named moves, whose allowed sources come from the
transition table in `domain`, asks the store to commit it with its events,
wakes the lane that has new work, and logs what a person should know about.
"""

from __future__ import annotations

import logging
import random
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import anyio

from interlock.bus import Bus, LaneNotice
from interlock.clock import Clock
from interlock.config import Config, RetryPolicy
from interlock.domain import (
    Done,
    Event,
    EventType,
    Fail,
    Job,
    JobFilter,
    JobSpec,
    JobState,
    LaneEvent,
    LaneStatus,
    Move,
    Outcome,
    Retry,
    SubmitResult,
    Trigger,
    request_fingerprint,
)
from interlock.errors import (
    InvalidPayload,
    InvalidTransition,
    KeyConflict,
    LaneFull,
    LeaseLost,
    NotJson,
    ShuttingDown,
    UnknownJob,
    UnknownKind,
    UnknownLane,
)
from interlock.handlers.registry import Kind
from interlock.store import Attempt, Change, Changed, NewJob, Pruned, Step, Store, StoreReads
from interlock.tax import TaxGrouping, TaxReport, summarize

log = logging.getLogger(__name__)

# Refusals a worker expects when it reports on a job: the job changed while it
# ran (cancelled, stalled and requeued, taken over). Anything else is a fault.
CHANGED_MEANWHILE = (InvalidTransition, LeaseLost, UnknownJob)
# Why a follow-up job a handler asked for may be refused (then its attempt failed).
FOLLOW_UP_REFUSED = (UnknownKind, UnknownLane, InvalidPayload, LaneFull, KeyConflict)


@dataclass(frozen=True)
class Lineage:
    """Why a job exists: the chain from its root to it, and its own events."""

    chain: list[Job]
    events: list[Event]


_FINISH = (Step(Move.FINISH),)


def _whole(changed: Changed) -> Job:
    """The job a change that was not lean gives back."""
    assert changed.job is not None, "a lean change was asked for its job"
    return changed.job


def backoff_delay(policy: RetryPolicy, attempts: int, rng: random.Random) -> float:
    """Exponential backoff with jitter: base * 2^(attempts-1), capped, then +/- jitter."""
    growth = 2.0 ** max(attempts - 1, 0)
    delay = min(policy.backoff_max_seconds, policy.backoff_base_seconds * growth)
    spread = delay * policy.backoff_jitter
    return max(0.0, delay + rng.uniform(-spread, spread))


class Hub:
    """Submit, claim, settle, cancel, retry, pause: every job state change passes here."""

    def __init__(
        self,
        store: Store,
        bus: Bus,
        clock: Clock,
        config: Config,
        kinds: Mapping[str, Kind],
        holder: str,
        rng: random.Random | None = None,
    ) -> None:
        self._store = store
        self.bus = bus
        self.clock = clock
        self.config = config
        self.kinds = kinds
        self.holder = holder
        self.accepting = True  # False once the daemon drains: submits are refused
        self._rng = rng or random.Random()
        self._wakers: dict[str, Callable[[], None]] = {}
        self._running_scopes: dict[int, anyio.CancelScope] = {}
        self._policies: dict[str, RetryPolicy] = {}
        self._timeouts: dict[str, float] = {}
        self._key_windows: dict[str, float] = {}
        store.on_commit(bus.publish)

    @property
    def reads(self) -> StoreReads:
        """The store's read interface: what maintenance kinds and servers may look at."""
        return self._store

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

    def _stop_handler(self, job_id: int) -> None:
        scope = self._running_scopes.pop(job_id, None)
        if scope is not None:
            scope.cancel()

    def timeout_for(self, kind: str) -> float:
        """Seconds one attempt of `kind` may run (cached: asked once per job)."""
        timeout = self._timeouts.get(kind)
        if timeout is None:
            timeout = self._timeouts[kind] = self.config.timeout_for(kind)
        return timeout

    def _policy(self, kind: str) -> RetryPolicy:
        policy = self._policies.get(kind)
        if policy is None:
            policy = self._policies[kind] = self.config.retry_policy(kind)
        return policy

    # -- submit ----------------------------------------------------------------------

    def resolve(self, spec: JobSpec, key_window_seconds: float | None = None) -> NewJob:
        """Decide a submit's lane, attempts and claim order; refuse what cannot be valid.

        A live job always holds its key; a finished one holds it for the kind's
        key window, or for `key_window_seconds` when the caller gives one
        (timers and the inbox keep keys longer than the kind would).
        """
        kind = self.kinds.get(spec.kind)
        if kind is None:
            raise UnknownKind(spec.kind, sorted(self.kinds))
        kind.check_payload(spec.payload)
        lane = spec.lane or self.config.lane_for(spec.kind)
        settings = self.config.lanes.get(lane)
        if settings is None:
            raise UnknownLane(lane, list(self.config.lanes))
        if key_window_seconds is None:
            key_window_seconds = self._key_windows.get(spec.kind)
            if key_window_seconds is None:
                key_window_seconds = self._key_windows[spec.kind] = self.config.key_window(
                    spec.kind
                )
        return NewJob(
            spec=spec,
            lane=lane,
            max_attempts=self._policy(spec.kind).max_attempts,
            order_key=self.clock.now() - spec.priority * settings.aging_seconds,
            max_depth=settings.max_depth,
            # Only a key can be reused: a job without one needs no fingerprint.
            fingerprint="" if spec.key is None else request_fingerprint(spec),
            key_window_seconds=key_window_seconds,
        )

    async def submit(self, spec: JobSpec, key_window_seconds: float | None = None) -> SubmitResult:
        """Queue a job, or return the job that already holds its key."""
        if not self.accepting:
            raise ShuttingDown()
        new = self.resolve(spec, key_window_seconds)
        result = await self._store.submit(new, self.clock.now())
        if not result.duplicate:
            self._wake(new.lane)
        return result

    # -- the worker's side -------------------------------------------------------------

    async def claim(self, lane: str, limit: int, now: float | None = None) -> list[Job]:
        """Lease up to `limit` jobs of a lane that are due at `now`, best first."""
        now = self.clock.now() if now is None else now
        lease_until = now + self.config.daemon.lease_seconds
        return await self._store.claim(lane, limit, self.holder, now, lease_until)

    async def renew(self, attempts: Sequence[Attempt], progress: dict[int, str]) -> set[int]:
        """Extend the leases of running attempts in one write; the job ids still ours."""
        now = self.clock.now()
        lease_until = now + self.config.daemon.lease_seconds
        return await self._store.renew_leases(self.holder, attempts, now, lease_until, progress)

    def attempt_of(self, job: Job) -> Attempt:
        """The attempt a claimed job is on, as this daemon holds it."""
        return Attempt(job.id, self.holder, job.attempts)

    async def settle(self, job: Job, outcome: Outcome, event: EventType | None = None) -> None:
        """Record what a handler's attempt came to: done, retried, deferred or failed for good.

        The one place an outcome becomes moves. `event` names the failure
        event when the runner, not the handler, ended the attempt (timed out).
        """
        now = self.clock.now()
        attempt = self.attempt_of(job)
        if isinstance(outcome, Done):
            try:
                follow_ups = tuple(
                    self.resolve(self._follow_up(job, spec)) for spec in outcome.follow_ups
                )
                changed = await self._store.change(
                    Change(
                        job_id=job.id,
                        steps=_FINISH,
                        action="finish",
                        attempt=attempt,
                        result=outcome.result,
                        usage=outcome.usage,
                        follow_ups=follow_ups,
                        lean=True,
                    ),
                    now,
                )
            except NotJson as exc:
                return await self.settle(job, Fail(f"the handler returned {exc.message}"))
            except FOLLOW_UP_REFUSED as exc:  # the attempt failed: it could not hand on
                reason = f"a follow-up job was refused: {exc.message}"
                return await self.settle(job, Retry(reason, usage=outcome.usage))
            for result in changed.follow_ups:
                if not result.duplicate:
                    self._wake(result.job.lane)
            return None
        if isinstance(outcome, Retry) and not outcome.charge_attempt:
            if job.deferrals < self.config.jobs.max_deferrals:
                await self._defer(job, attempt, outcome, now)
                return None
            outcome = Retry(
                f"{outcome.reason} (deferred {job.deferrals} times, the limit"
                " jobs.max_deferrals: this time the attempt counts)",
                outcome.after_seconds,
                True,
                outcome.usage,
            )
        await self._fail(job, outcome, now, attempt=attempt, event=event)
        return None

    def _follow_up(self, parent: Job, spec: JobSpec) -> JobSpec:
        """A follow-up names its parent; its trigger says it came from another job."""
        update: dict[str, Any] = {"parent_id": parent.id}
        if spec.trigger == Trigger.HUMAN:
            update["trigger"] = Trigger.HANDOFF
        if not spec.source:
            update["source"] = f"job {parent.id} ({parent.kind})"
        return spec.model_copy(update=update)

    async def _defer(self, job: Job, attempt: Attempt, outcome: Retry, now: float) -> Job:
        delay = outcome.after_seconds
        if delay is None:
            delay = backoff_delay(self._policy(job.kind), job.deferrals + 1, self._rng)
        changed = await self._store.change(
            Change(
                job_id=job.id,
                steps=(
                    Step(
                        Move.DEFER,
                        f"{outcome.reason}; again in {delay:.1f}s, the attempt not counted",
                        Trigger.RETRY,
                        data={"not_before": now + delay},
                    ),
                ),
                action="defer",
                attempt=attempt,
                usage=outcome.usage,
                not_before=now + delay,
            ),
            now,
        )
        log.info("job %s (%s) deferred %.1fs: %s", job.id, job.kind, delay, outcome.reason)
        self._wake(job.lane)
        return _whole(changed)

    async def _fail(
        self,
        job: Job,
        outcome: Retry | Fail,
        now: float,
        *,
        attempt: Attempt | None = None,
        lease_expired_before: float | None = None,
        event: EventType | None = None,
        trigger: Trigger | None = None,
    ) -> Job:
        """A failed attempt: retried after backoff while attempts last, else dead."""
        permanent = isinstance(outcome, Fail)
        retry_at: float | None = None
        if not permanent and job.attempts < job.max_attempts:
            assert isinstance(outcome, Retry)
            delay = outcome.after_seconds
            if delay is None:
                delay = backoff_delay(self._policy(job.kind), job.attempts, self._rng)
            retry_at = now + delay
        failed = Step(Move.FAIL, outcome.reason, trigger, event)
        if retry_at is not None:
            then = Step(
                Move.SCHEDULE_RETRY,
                f"attempt {job.attempts} of {job.max_attempts} failed;"
                f" next try in {retry_at - now:.1f}s",
                Trigger.RETRY,
                data={"not_before": retry_at},
            )
        elif permanent:
            then = Step(Move.BURY, "failed for good: not retried")
        else:
            then = Step(Move.BURY, f"all {job.max_attempts} attempts failed")
        changed = await self._store.change(
            Change(
                job_id=job.id,
                steps=(failed, then),
                action="fail",
                attempt=attempt,
                lease_expired_before=lease_expired_before,
                error=outcome.reason,
                usage=outcome.usage,
                not_before=retry_at,
            ),
            now,
        )
        if retry_at is not None:
            log.warning(
                "job %s (%s) failed attempt %s of %s: %s; retry in %.1fs",
                job.id,
                job.kind,
                job.attempts,
                job.max_attempts,
                outcome.reason,
                retry_at - now,
            )
            self._wake(job.lane)
        else:
            log.error("job %s (%s) is dead: %s (%s)", job.id, job.kind, outcome.reason, then.note)
        return _whole(changed)

    def slot_freed(self, lane: str) -> None:
        """A worker finished with a job: its lane may claim another."""
        self._wake(lane)

    # -- a person's (or a client's) requests ---------------------------------------------

    async def _single(
        self, job_id: int, step: Step, action: str, data: dict[str, Any] | None = None
    ) -> Job:
        if data is not None:
            step = Step(step.move, step.note, step.trigger, step.event, data)
        changed = await self._store.change(
            Change(job_id=job_id, steps=(step,), action=action), self.clock.now()
        )
        return _whole(changed)

    async def cancel(self, job_id: int, note: str = "cancelled by request") -> Job:
        """Stop a live job; a running one has its handler cancelled."""
        job = await self._single(job_id, Step(Move.CANCEL, note, Trigger.HUMAN), "cancel")
        self._stop_handler(job_id)
        log.info("job %s (%s) cancelled: %s", job.id, job.kind, note)
        return job

    async def retry(self, job_id: int, note: str = "retried by request") -> Job:
        """Give a dead or cancelled job a fresh set of attempts."""
        job = await self._single(job_id, Step(Move.RETRY, note, Trigger.RETRY), "retry")
        self._wake(job.lane)
        return job

    async def reopen(self, job_id: int, note: str, data: dict[str, Any] | None = None) -> Job:
        """A done job goes back to queued with fresh attempts (a gate sent it back)."""
        job = await self._single(job_id, Step(Move.REOPEN, note, Trigger.REVIEW), "reopen", data)
        self._wake(job.lane)
        return job

    async def set_paused(
        self, lane: str, paused: bool, reason: str = "", actor: str = "unknown"
    ) -> LaneStatus:
        """Pause a lane (running jobs finish, nothing new starts) or resume it, on the record."""
        self.check_lane(lane)
        now = self.clock.now()
        await self._store.set_lane_paused(lane, paused, reason, actor, now)
        self.bus.publish([LaneNotice(lane=lane, paused=paused, reason=reason, at=now, actor=actor)])
        log.info(
            "lane %s %s by %s%s", lane, "paused" if paused else "resumed", actor,
            f": {reason}" if reason else "",
        )  # fmt: skip
        if not paused:
            self._wake(lane)
        (status,) = await self.lanes([lane])
        return status

    # -- the daemon's own transitions -----------------------------------------------------

    async def recover(self) -> list[Job]:
        """At start: a job still `running` was held by a process that died; queue it again.

        The attempt is given back (the job did not end it) and counted as a
        crash instead; a job found running at `jobs.max_crashes` starts is dead,
        as it probably kills the daemon.
        """
        now = self.clock.now()
        limit = self.config.jobs.max_crashes
        recovered = []
        for job in await self._store.running():
            crashes = job.crashes + 1
            if crashes >= limit:
                reason = (
                    f"found running at {crashes} starts: its daemon died each time"
                    f" (jobs.max_crashes = {limit}); not run again"
                )
                recovered.append(await self._fail(job, Fail(reason), now, trigger=Trigger.RECOVERY))
                continue
            note = (
                "found running at start: its daemon died; requeued, the attempt not counted"
                f" (crash {crashes} of at most {limit - 1})"
            )
            changed = await self._store.change(
                Change(
                    job_id=job.id,
                    steps=(Step(Move.REQUEUE, note, Trigger.RECOVERY),),
                    action="recover",
                    crash=True,
                ),
                now,
            )
            recovered.append(_whole(changed))
            self._wake(job.lane)
        if recovered:
            log.warning("requeued %d job(s) left running by a daemon that died", len(recovered))
        return recovered

    async def requeue_own(self, note: str) -> list[Job]:
        """At shutdown: put back the jobs this daemon still holds, without charging an attempt."""
        now = self.clock.now()
        requeued = []
        for job in await self._store.running():
            if job.lease_holder != self.holder:
                continue
            try:
                changed = await self._store.change(
                    Change(
                        job_id=job.id,
                        steps=(Step(Move.REQUEUE, note, Trigger.RECOVERY),),
                        action="requeue",
                        holder=self.holder,
                    ),
                    now,
                )
            except CHANGED_MEANWHILE:
                continue
            requeued.append(_whole(changed))
        if requeued:
            log.warning("requeued %d unfinished job(s) for the next start", len(requeued))
        return requeued

    # -- stalls ------------------------------------------------------------------------------

    async def requeue_stalled(self) -> list[Job]:
        """Running jobs whose lease expired (a hung or dead worker): a failed attempt each.

        Retried after backoff while attempts last, else dead. A hung handler in
        this process is cancelled, so it cannot finish an attempt that is no
        longer its own.
        """
        now = self.clock.now()
        changed = []
        for job in await self._store.expired_leases(now):
            reason = (
                f"lease held by {job.lease_holder} expired at {job.lease_expires_at or 0:.3f}"
                f" (last heartbeat {job.heartbeat_at or 0:.3f}): its worker hung or died"
            )
            try:
                after = await self._fail(
                    job,
                    Retry(reason, after_seconds=0),
                    now,
                    lease_expired_before=now,
                    event=EventType.STALLED,
                    trigger=Trigger.RECOVERY,
                )
            except CHANGED_MEANWHILE:
                continue  # it finished or heartbeated meanwhile
            self._stop_handler(job.id)
            changed.append(after)
        return changed

    async def flag_long_waits(self) -> list[Job]:
        """Queued jobs waiting past their lane's stall_after_seconds get one event each."""
        now = self.clock.now()
        flagged = []
        for lane, settings in self.config.lanes.items():
            for job in await self._store.waiting_since(lane, now - settings.stall_after_seconds):
                note = (
                    f"waiting {now - job.created_at:.0f}s in lane {lane},"
                    f" past its {settings.stall_after_seconds:g}s threshold"
                )
                if await self._store.note(job.id, EventType.STALL_FLAGGED, note, now):
                    flagged.append(job)
                    log.warning("job %s (%s): %s", job.id, job.kind, note)
        return flagged

    async def stalls(self, within_seconds: float = 86_400.0) -> dict[str, list[Job]]:
        """Leases expired now, jobs waiting too long, and jobs stalled recently."""
        now = self.clock.now()
        waiting: list[Job] = []
        for lane, settings in self.config.lanes.items():
            waiting += await self._store.waiting_since(lane, now - settings.stall_after_seconds)
        return {
            "expired": await self._store.expired_leases(now),
            "waiting": waiting,
            "recent": await self._store.recently_stalled(now - within_seconds),
        }

    # -- the autonomy tax and notes -------------------------------------------------------------

    async def tax(self, since_seconds: float, by: TaxGrouping | None = None) -> TaxReport:
        """Maintenance against feature work, for the jobs created in the last `since_seconds`."""
        now = self.clock.now()
        since = now - since_seconds
        rows = await self._store.usage(since, now)
        return summarize(rows, since, now, self.config.tax, by)

    async def note(
        self,
        job_id: int,
        event_type: EventType,
        note: str,
        data: dict[str, Any] | None = None,
        once: bool = True,
    ) -> bool:
        """Record an event that changes no state on a job; True if recorded."""
        return await self._store.note(job_id, event_type, note, self.clock.now(), data, once)

    # -- retention and aging (the maintenance kinds' writes) ---------------------------------

    async def prune_finished(self, before: float, max_rows: int) -> Pruned:
        """One bounded write: finished jobs that ended before `before`, and their events, go.

        A job that another job names as parent or root stays (lineage stays
        whole); call again until it deletes nothing.
        """
        return await self._store.prune_finished(before, max_rows)

    async def backup(self, target: Path) -> None:
        """A consistent copy of the store at `target`, taken while the daemon runs."""
        await self._store.backup(target)

    async def record_aging(self, lane: str, now: float, limit: int) -> list[int]:
        """One bounded write: an `aged` event on queued jobs of `lane` that aged another step.

        Only an event: the claim order already ages by construction (see lanes.py).
        """
        aging_seconds = self.config.lanes[lane].aging_seconds
        return await self._store.record_aging(lane, aging_seconds, now, limit)

    # -- reads -----------------------------------------------------------------------------

    async def get(self, job_id: int) -> Job:
        """One job."""
        return await self._store.get(job_id)

    async def list_jobs(self, job_filter: JobFilter, max_bytes: int | None = None) -> list[Job]:
        """Jobs, newest first."""
        for name in (job_filter.lane, *job_filter.exclude_lanes):
            if name is not None:
                self.check_lane(name)
        return await self._store.list_jobs(job_filter, max_bytes)

    async def why(self, job_id: int) -> Lineage:
        """The lineage from the root to this job, and this job's events."""
        chain = await self._store.lineage(job_id)
        events = await self._store.events(job_id)
        return Lineage(chain=chain, events=events)

    async def events(self, job_id: int) -> list[Event]:
        """Every event of one job, oldest first."""
        return await self._store.events(job_id)

    async def lanes(self, names: Sequence[str] | None = None) -> list[LaneStatus]:
        """Each lane's settings and load, in rank order."""
        wanted = list(names) if names is not None else list(self.config.lanes)
        for name in wanted:
            self.check_lane(name)
        statuses = []
        for row in await self._store.lanes(wanted):
            settings = self.config.lanes[row.name]
            statuses.append(
                LaneStatus(
                    name=row.name,
                    rank=settings.rank,
                    concurrency=settings.concurrency,
                    max_depth=settings.max_depth,
                    paused=row.paused,
                    paused_reason=row.paused_reason if row.paused else None,
                    changed_by=row.changed_by,
                    changed_at=row.changed_at,
                    queued=row.queued,
                    running=row.running,
                    oldest_queued_at=row.oldest_queued_at,
                )
            )
        return sorted(statuses, key=lambda status: (status.rank, status.name))

    async def lane_history(self, lane: str, limit: int = 20) -> list[LaneEvent]:
        """A lane's pauses and resumes, newest first: who, why and when."""
        self.check_lane(lane)
        return await self._store.lane_events(lane, limit)

    async def next_due(self, lane: str, after: float) -> float | None:
        """When the earliest job of a lane that was not due at `after` comes due."""
        return await self._store.next_due(lane, after)

    async def counts(self) -> dict[JobState, int]:
        """How many jobs are in each state."""
        return await self._store.count_by_state()

    async def wait_ended(self, job_id: int) -> Job:
        """Return the job once it has ended (done, dead or cancelled): woken by its events."""
        ended = anyio.Event()

        def watch(notices: Sequence[object]) -> None:
            for notice in notices:
                if (
                    isinstance(notice, Event)
                    and notice.job_id == job_id
                    and notice.to_state is not None
                    and notice.to_state.is_terminal
                ):
                    ended.set()

        stop_watching = self.bus.watch(watch)
        try:
            job = await self.get(job_id)
            while not job.state.is_terminal:
                await ended.wait()
                ended = anyio.Event()
                job = await self.get(job_id)
            return job
        finally:
            stop_watching()

    async def latest_done(self, kind: str) -> Job | None:
        """The newest finished job of a kind (the last health snapshot, say)."""
        return await self._store.latest_done(kind)

    def check_lane(self, lane: str) -> None:
        """Raise UnknownLane unless the lane is configured."""
        if lane not in self.config.lanes:
            raise UnknownLane(lane, list(self.config.lanes))
