"""The Store protocol: what the hub needs from persistence, in domain terms.

Only this package speaks SQL. The hub is the only caller of the write methods.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

from interlock.domain import (
    Event,
    EventType,
    Job,
    JobFilter,
    JobSpec,
    JobState,
    SubmitResult,
    Trigger,
)
from interlock.tax import UsageRow


@dataclass(frozen=True)
class NewJob:
    """A submit the hub has resolved: lane, attempts and claim order decided."""

    spec: JobSpec
    lane: str
    max_attempts: int
    order_key: float
    max_depth: int
    key_window_seconds: float = 0.0  # a finished job still holds its key this long


@dataclass(frozen=True)
class Change:
    """One compare-and-set transition the hub asks the store to apply."""

    job_id: int
    target: JobState
    allowed_from: frozenset[JobState]
    event_type: EventType
    trigger: Trigger | None
    note: str
    action: str  # the verb for the error message: "cancel", "retry", ...
    data: dict[str, Any] | None = None
    reset_attempts: bool = False
    uncount_attempt: bool = False  # the attempt was cut short through no fault of the job
    lease_expired_before: float | None = None  # only if the lease is still expired then


@dataclass(frozen=True)
class LaneRow:
    """What the store knows of a lane."""

    name: str
    paused: bool
    paused_reason: str | None
    queued: int
    running: int
    oldest_queued_at: float | None


@dataclass(frozen=True)
class Pruned:
    """What a retention pass deleted."""

    jobs: int
    events: int


CommitListener = Callable[[Sequence[Event]], None]


class Store(Protocol):
    """Persistence for jobs and events; every transition commits with its event."""

    async def open(self) -> None:
        """Connect and run the forward migrations."""
        ...

    async def close(self) -> None:
        """Finish pending writes and disconnect."""
        ...

    def on_commit(self, listener: CommitListener) -> None:
        """Call `listener` with each committed batch of events, in commit order."""
        ...

    async def submit(self, new: NewJob, now: float) -> SubmitResult: ...

    async def claim(
        self, lane: str, limit: int, holder: str, now: float, lease_until: float
    ) -> list[Job]: ...

    async def finish(
        self, job_id: int, holder: str, attempt: int, result: Any, now: float
    ) -> None: ...

    async def fail(
        self,
        job_id: int,
        holder: str,
        attempt: int,
        error: str,
        now: float,
        retry_at: float | None,
    ) -> Job: ...

    async def heartbeat(
        self, job_id: int, holder: str, attempt: int, now: float, lease_until: float
    ) -> bool: ...

    async def change(self, change: Change, now: float) -> Job: ...

    async def requeue_running(
        self, now: float, trigger: Trigger, note: str, holder: str | None, uncount_attempt: bool
    ) -> list[Job]: ...

    async def set_lane_paused(self, lane: str, paused: bool, reason: str, now: float) -> None: ...

    async def get(self, job_id: int) -> Job: ...

    async def list_jobs(self, job_filter: JobFilter) -> list[Job]: ...

    async def events(self, job_id: int) -> list[Event]: ...

    async def lineage(self, job_id: int) -> list[Job]: ...

    async def lanes(self, names: Sequence[str]) -> list[LaneRow]: ...

    async def next_due(self, lane: str, now: float) -> float | None: ...

    async def count_by_state(self) -> dict[JobState, int]: ...

    async def expired_leases(self, now: float) -> list[Job]: ...

    async def waiting_since(self, lane: str, before: float) -> list[Job]: ...

    async def recently_stalled(self, since: float) -> list[Job]: ...

    async def flag(self, job_id: int, event_type: EventType, note: str, now: float) -> bool: ...

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

    async def done_lacking(
        self, kinds: Sequence[str], event_type: EventType, after_id: int, limit: int
    ) -> list[Job]:
        """Done jobs of `kinds` that have no event of `event_type`, by id after `after_id`."""
        ...
