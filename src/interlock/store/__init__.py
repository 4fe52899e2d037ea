"""The Store protocol: what the hub needs from persistence, in domain terms.

Only this package speaks SQL. `StoreReads` is what anyone may read (the
maintenance kinds get it through the hub); `Store` adds the writes, and the
hub is their only caller. Every change of a job's state is a `Change` of one
or more `Step`s, each a `domain.Move`; a store applies the steps in order, in
one transaction, each as a compare-and-set on the states the move's rule
allows. tests/contract/ holds the suite every implementation must pass.

The hot path's messages (NewJob, Attempt, Step, Change, Changed) are plain
slotted dataclasses, not frozen ones: a frozen one costs four times as much to
build, and several are built for every job. Treat them as values all the same.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

from interlock.domain import (
    NO_USAGE,
    Event,
    EventType,
    Job,
    JobFilter,
    JobSpec,
    JobState,
    LaneEvent,
    Move,
    SubmitResult,
    Trigger,
    Usage,
)
from interlock.tax import UsageRow


@dataclass(slots=True)
class NewJob:
    """A submit the hub has resolved: lane, attempts and claim order decided."""

    spec: JobSpec
    lane: str
    max_attempts: int
    order_key: float
    max_depth: int
    fingerprint: str
    key_window_seconds: float = 0.0  # a finished job still holds its key this long


@dataclass(slots=True)
class Attempt:
    """One attempt of a job, as the worker holding its lease knows it."""

    job_id: int
    holder: str
    number: int


@dataclass(slots=True)
class Step:
    """One move of a change, with what its event says."""

    move: Move
    note: str = ""
    trigger: Trigger | None = None
    event: EventType | None = None  # None: the move's own event type
    data: dict[str, Any] | None = None


@dataclass(slots=True)
class Change:
    """Moves the hub asks the store to apply to one job, together, in order.

    The guards apply to the first step: `attempt` (only the holder of this
    attempt may make the change), `holder` (only jobs this holder leases),
    `lease_expired_before` (only if the lease is still expired then).
    """

    job_id: int
    steps: tuple[Step, ...]
    action: str  # the verb for the error message: "cancel", "retry", ...
    attempt: Attempt | None = None
    holder: str | None = None
    lease_expired_before: float | None = None
    result: Any = None
    error: str | None = None
    usage: Usage = NO_USAGE
    not_before: float | None = None
    crash: bool = False  # a requeue because the job's daemon died
    follow_ups: tuple[NewJob, ...] = ()
    # The caller does not need the job back (a finish on the hot path): the
    # store may skip reading and building it, and `Changed.job` is None.
    lean: bool = False


@dataclass(slots=True)
class Changed:
    """The job after a change (None for a lean change), and the follow-ups it submitted."""

    job: Job | None
    follow_ups: tuple[SubmitResult, ...] = ()


@dataclass(frozen=True)
class LaneRow:
    """What the store knows of a lane."""

    name: str
    paused: bool
    paused_reason: str | None
    changed_by: str | None
    changed_at: float | None
    queued: int
    running: int
    oldest_queued_at: float | None


@dataclass(frozen=True)
class Pruned:
    """What a retention pass deleted."""

    jobs: int
    events: int


CommitListener = Callable[[Sequence[Event]], None]


class StoreReads(Protocol):
    """What may be read, by anyone; none of it changes anything."""

    async def get(self, job_id: int) -> Job: ...

    async def list_jobs(self, job_filter: JobFilter, max_bytes: int | None = None) -> list[Job]:
        """Jobs newest first; with `max_bytes`, the page ends before it would pass that size."""
        ...

    async def events(self, job_id: int) -> list[Event]: ...

    async def transitions_recorded(self) -> set[tuple[JobState, JobState]]:
        """Every (from, to) change of state any event ever recorded."""
        ...

    async def lineage(self, job_id: int) -> list[Job]: ...

    async def lanes(self, names: Sequence[str]) -> list[LaneRow]: ...

    async def lane_events(self, lane: str, limit: int) -> list[LaneEvent]: ...

    async def next_due(self, lane: str, now: float) -> float | None: ...

    async def count_by_state(self) -> dict[JobState, int]: ...

    async def running(self) -> list[Job]: ...

    async def expired_leases(self, now: float) -> list[Job]: ...

    async def waiting_since(self, lane: str, before: float) -> list[Job]: ...

    async def recently_stalled(self, since: float) -> list[Job]: ...

    async def latest_done(self, kind: str) -> Job | None: ...

    async def size_bytes(self) -> int: ...

    async def usage(self, since: float, until: float) -> list[UsageRow]:
        """Jobs created in [since, until], summed per lane, kind and project (the tax)."""
        ...

    async def attempt_outcomes(self, lane: str, after: float) -> dict[str, tuple[int, int]]:
        """Per kind, a lane's attempts that ended after `after`: (finished, failed)."""
        ...

    async def lanes_resumed_at(self) -> dict[str, float]:
        """Open lanes that were paused once, with the time they were last resumed."""
        ...

    async def live_projects(self) -> set[str]:
        """Projects that have a live job in any lane."""
        ...

    async def done_lacking(
        self, kinds: Sequence[str], event_type: EventType, after_id: int, limit: int
    ) -> list[Job]:
        """Done jobs of `kinds` that have no event of `event_type`, by id after `after_id`."""
        ...

    # Probes: one cheap question each, so a timer can tell whether its kind has work.

    async def any_expired_lease(self, now: float) -> bool: ...

    async def any_unflagged_wait(self, lane: str, before: float) -> bool: ...

    async def any_queued_since(self, lane: str, before: float) -> bool: ...

    async def any_failure_since(self, after: float) -> bool: ...

    async def any_finished_before(self, before: float) -> bool: ...


class Store(StoreReads, Protocol):
    """Persistence for jobs and events; every transition commits with its event."""

    async def open(self) -> None:
        """Connect and run the forward migrations."""
        ...

    async def close(self) -> None:
        """Finish pending writes and disconnect, whatever fails on the way."""
        ...

    async def run_checkpoints(self) -> None:
        """Background upkeep of the storage until cancelled (WAL checkpoints for SQLite)."""
        ...

    @property
    def idle(self) -> bool:
        """No read or write is waiting or running."""
        ...

    def on_commit(self, listener: CommitListener) -> None:
        """Call `listener` with each committed batch of events, in commit order."""
        ...

    async def submit(self, new: NewJob, now: float) -> SubmitResult:
        """Insert a queued job, or return the job that holds its key."""
        ...

    async def claim(
        self, lane: str, limit: int, holder: str, now: float, lease_until: float
    ) -> list[Job]:
        """Lease up to `limit` due jobs of an open lane, best first."""
        ...

    async def change(self, change: Change, now: float) -> Changed:
        """Apply a change's steps in order, in one transaction, or none of them."""
        ...

    async def renew_leases(
        self,
        holder: str,
        attempts: Sequence[Attempt],
        now: float,
        lease_until: float,
        progress: dict[int, str],
    ) -> set[int]:
        """Extend the leases of these attempts in one write; the job ids still held."""
        ...

    async def note(
        self,
        job_id: int,
        event_type: EventType,
        note: str,
        now: float,
        data: dict[str, Any] | None = None,
        once: bool = True,
    ) -> bool:
        """Record an event that changes no state (once per type unless told); True if recorded."""
        ...

    async def set_lane_paused(
        self, lane: str, paused: bool, reason: str, actor: str, now: float
    ) -> LaneEvent: ...

    async def prune_finished(self, before: float, max_rows: int) -> Pruned:
        """Delete up to `max_rows` rows of finished jobs ended before `before`, with events."""
        ...

    async def backup(self, target: Path) -> None:
        """Write a consistent copy of the whole store to `target`, online."""
        ...

    async def record_aging(
        self, lane: str, aging_seconds: float, now: float, limit: int
    ) -> list[int]:
        """Record an `aged` event on queued jobs of a lane that waited another aging step."""
        ...
