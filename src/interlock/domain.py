"""Pure domain types: jobs, their states and allowed transitions, events. No I/O."""

from __future__ import annotations

import enum
from typing import Any, TypeVar

from pydantic import BaseModel, ConfigDict, Field, field_validator

M = TypeVar("M", bound=BaseModel)


def trusted(model: type[M], values: dict[str, Any]) -> M:
    """Build a model from values that are already of the right types, without validation.

    For rows the store wrote itself, on the hot path: five times cheaper than
    `model_construct`, which walks every field. `values` must name every field.
    tests/unit/test_domain.py pins that the result equals a validated model.
    """
    instance = model.__new__(model)
    object.__setattr__(instance, "__dict__", values)
    object.__setattr__(instance, "__pydantic_fields_set__", set(values))
    object.__setattr__(instance, "__pydantic_extra__", None)
    object.__setattr__(instance, "__pydantic_private__", None)
    return instance


class JobState(enum.StrEnum):
    """Where a job is in its life."""

    QUEUED = "queued"
    RUNNING = "running"
    REVIEWING = "reviewing"
    AWAITING_APPROVAL = "awaiting_approval"
    FAILED = "failed"
    DONE = "done"
    DEAD = "dead"
    CANCELLED = "cancelled"

    @property
    def is_terminal(self) -> bool:
        """True once nothing will happen to the job unless a person retries it."""
        return self in TERMINAL_STATES

    @property
    def is_live(self) -> bool:
        """True while the job holds its idempotency key."""
        return self not in TERMINAL_STATES


TERMINAL_STATES = frozenset({JobState.DONE, JobState.DEAD, JobState.CANCELLED})
LIVE_STATES = frozenset(JobState) - TERMINAL_STATES

# The state machine of DESIGN.md, as data. The hub asks this table; nobody
# re-encodes the rules in `if` chains.
TRANSITIONS: dict[JobState, frozenset[JobState]] = {
    JobState.QUEUED: frozenset({JobState.RUNNING, JobState.CANCELLED}),
    JobState.RUNNING: frozenset(
        {
            JobState.REVIEWING,
            JobState.AWAITING_APPROVAL,
            JobState.DONE,
            JobState.FAILED,
            JobState.QUEUED,  # lease lost: stalled, recovered or shut down
            JobState.CANCELLED,
        }
    ),
    JobState.REVIEWING: frozenset(
        {JobState.AWAITING_APPROVAL, JobState.DONE, JobState.QUEUED, JobState.CANCELLED}
    ),
    JobState.AWAITING_APPROVAL: frozenset({JobState.DONE, JobState.QUEUED, JobState.CANCELLED}),
    JobState.FAILED: frozenset({JobState.QUEUED, JobState.DEAD, JobState.CANCELLED}),
    JobState.DONE: frozenset({JobState.QUEUED}),  # reopened
    JobState.DEAD: frozenset({JobState.QUEUED}),  # retried by a person
    JobState.CANCELLED: frozenset({JobState.QUEUED}),  # retried by a person
}


def sources_of(target: JobState) -> frozenset[JobState]:
    """Every state from which `target` may be entered."""
    return frozenset(source for source, targets in TRANSITIONS.items() if target in targets)


def can_transition(source: JobState, target: JobState) -> bool:
    """Whether the state machine allows source -> target."""
    return target in TRANSITIONS[source]


class Trigger(enum.StrEnum):
    """What caused a job (or a transition) to happen."""

    HUMAN = "human"
    TIMER = "timer"
    INBOX = "inbox"
    HANDOFF = "handoff"
    RETRY = "retry"
    REVIEW = "review"
    RECOVERY = "recovery"


class EventType(enum.StrEnum):
    """What an event records."""

    SUBMITTED = "submitted"
    DUPLICATE = "duplicate"
    CLAIMED = "claimed"
    FINISHED = "finished"
    FAILED = "failed"
    RETRY_SCHEDULED = "retry_scheduled"
    DEAD = "dead"
    CANCELLED = "cancelled"
    RETRIED = "retried"
    REQUEUED = "requeued"
    STALLED = "stalled"  # a running job's lease expired: its worker hung or died
    STALL_FLAGGED = "stall_flagged"  # a queued job waited past its lane's threshold
    LANE_PAUSED = "lane_paused"  # the governor paused lanes (on the governor's own job)
    BUDGET_EXCEEDED = "budget_exceeded"  # maintenance took more than its share (the governor)
    AGED = "aged"  # a queued job waited past another aging step (priority.age)
    REOPENED = "reopened"  # a done job went back to queued (a gate it lacked, say)
    REVIEWED = "reviewed"  # the review gate passed (recorded by the review step)
    APPROVED = "approved"  # the approval gate passed (recorded by a person's answer)


MAX_ID = 2**63 - 1  # SQLite's integer range


class JobSpec(BaseModel):
    """What a client asks for when it submits a job."""

    model_config = ConfigDict(frozen=True, extra="forbid", allow_inf_nan=False)

    kind: str = Field(min_length=1, max_length=200)
    payload: dict[str, Any] = Field(default_factory=dict)
    key: str | None = Field(default=None, min_length=1, max_length=500)
    lane: str | None = None
    priority: int = Field(default=0, ge=-1000, le=1000)
    project: str | None = Field(default=None, max_length=200)
    role: str | None = Field(default=None, max_length=200)
    reason: str = Field(default="", max_length=4000)
    trigger: Trigger = Trigger.HUMAN
    parent_id: int | None = Field(default=None, ge=1, le=MAX_ID)
    not_before: float | None = None
    source: str = Field(default="", max_length=200)

    @field_validator("kind")
    @classmethod
    def _kind_has_no_spaces(cls, value: str) -> str:
        if any(ch.isspace() for ch in value):
            raise ValueError("a job kind has no whitespace")
        return value


class Job(BaseModel):
    """A job as stored."""

    model_config = ConfigDict(frozen=True)

    id: int
    kind: str
    lane: str
    priority: int
    project: str | None
    role: str | None
    payload: dict[str, Any]
    state: JobState
    key: str | None
    trigger: Trigger
    reason: str
    parent_id: int | None
    root_id: int
    attempts: int
    max_attempts: int
    not_before: float
    lease_holder: str | None
    lease_expires_at: float | None
    heartbeat_at: float | None
    result: Any = None
    error: str | None
    created_at: float
    updated_at: float
    started_at: float | None
    finished_at: float | None


class Event(BaseModel):
    """One committed fact about a job: a transition, or a duplicate submit."""

    model_config = ConfigDict(frozen=True)

    id: int
    job_id: int
    at: float
    type: EventType
    from_state: JobState | None
    to_state: JobState | None
    trigger: Trigger | None
    note: str
    data: dict[str, Any] = Field(default_factory=dict)


class SubmitResult(BaseModel):
    """The job a submit names, and whether it was already there."""

    model_config = ConfigDict(frozen=True)

    job: Job
    duplicate: bool


class LaneStatus(BaseModel):
    """A lane's settings and what it holds right now."""

    model_config = ConfigDict(frozen=True)

    name: str
    rank: int
    concurrency: int
    max_depth: int
    paused: bool
    queued: int
    running: int
    oldest_queued_at: float | None
    paused_reason: str | None = None  # who paused it and why, while paused


class JobFilter(BaseModel):
    """Which jobs a listing wants, newest first."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    states: tuple[JobState, ...] = ()
    lane: str | None = None
    kind: str | None = None
    project: str | None = None
    before_id: int | None = Field(default=None, ge=1, le=MAX_ID)  # paging: older than this
    limit: int = Field(default=50, ge=1, le=10_000)
