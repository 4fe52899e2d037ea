"""Pure domain types: jobs, their states, the moves between states, outcomes, events. No I/O."""

from __future__ import annotations

import enum
import hashlib
import json
import math
from dataclasses import dataclass
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

# The state machine of DESIGN.md, as data. Every move below is checked against
# it when this module loads, and the store builds each move's compare-and-set
# from it, so no other code decides which state may follow which.
TRANSITIONS: dict[JobState, frozenset[JobState]] = {
    JobState.QUEUED: frozenset({JobState.RUNNING, JobState.CANCELLED}),
    JobState.RUNNING: frozenset(
        {
            JobState.REVIEWING,
            JobState.AWAITING_APPROVAL,
            JobState.DONE,
            JobState.FAILED,
            JobState.QUEUED,  # lease given back: the daemon stopped or died, or a deferral
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
    DEFERRED = "deferred"  # the handler asked to run later, without spending an attempt
    DEAD = "dead"
    CANCELLED = "cancelled"
    RETRIED = "retried"
    REQUEUED = "requeued"
    STALLED = "stalled"  # a running job's lease expired: its worker hung or died
    TIMED_OUT = "timed_out"  # a handler ran past its kind's timeout and was stopped
    STALL_FLAGGED = "stall_flagged"  # a queued job waited past its lane's threshold
    LANE_PAUSED = "lane_paused"  # the governor paused lanes (on the governor's own job)
    BUDGET_EXCEEDED = "budget_exceeded"  # maintenance took more than its share
    AGED = "aged"  # a queued job waited past another aging step (priority.age)
    GATE_MISSING = "gate_missing"  # a done job lacks a gate its kind requires (gates.reopen)
    REOPENED = "reopened"  # a done job went back to queued
    REVIEWED = "reviewed"  # the review gate passed (recorded by the review step)
    APPROVED = "approved"  # the approval gate passed (recorded by a person's answer)


class Move(enum.StrEnum):
    """A named change of state: the only ways a stored job's state changes."""

    CLAIM = "claim"
    FINISH = "finish"
    FAIL = "fail"
    SCHEDULE_RETRY = "schedule_retry"
    BURY = "bury"
    DEFER = "defer"
    REQUEUE = "requeue"
    CANCEL = "cancel"
    RETRY = "retry"
    REOPEN = "reopen"


@dataclass(frozen=True)
class MoveRule:
    """Where a move may start, where it ends, and the event it records by default."""

    sources: frozenset[JobState]
    target: JobState
    event: EventType


def _rule(sources: frozenset[JobState], target: JobState, event: EventType) -> MoveRule:
    illegal = {source for source in sources if not can_transition(source, target)}
    if illegal:
        names = ", ".join(sorted(state.value for state in illegal))
        raise AssertionError(f"the transition table forbids {names} -> {target.value}")
    return MoveRule(sources, target, event)


_ONE = frozenset
MOVES: dict[Move, MoveRule] = {
    Move.CLAIM: _rule(_ONE({JobState.QUEUED}), JobState.RUNNING, EventType.CLAIMED),
    Move.FINISH: _rule(_ONE({JobState.RUNNING}), JobState.DONE, EventType.FINISHED),
    Move.FAIL: _rule(_ONE({JobState.RUNNING}), JobState.FAILED, EventType.FAILED),
    Move.SCHEDULE_RETRY: _rule(_ONE({JobState.FAILED}), JobState.QUEUED, EventType.RETRY_SCHEDULED),
    Move.BURY: _rule(_ONE({JobState.FAILED}), JobState.DEAD, EventType.DEAD),
    Move.DEFER: _rule(_ONE({JobState.RUNNING}), JobState.QUEUED, EventType.DEFERRED),
    Move.REQUEUE: _rule(_ONE({JobState.RUNNING}), JobState.QUEUED, EventType.REQUEUED),
    Move.CANCEL: _rule(sources_of(JobState.CANCELLED), JobState.CANCELLED, EventType.CANCELLED),
    # A person's retry: what ended without success gets fresh attempts.
    Move.RETRY: _rule(
        _ONE({JobState.DEAD, JobState.CANCELLED, JobState.FAILED}),
        JobState.QUEUED,
        EventType.RETRIED,
    ),
    Move.REOPEN: _rule(_ONE({JobState.DONE}), JobState.QUEUED, EventType.REOPENED),
}

# What a move sets besides the state, and which facts of the job it checks.
# Moves that end an attempt hold the attempt's lease: only the holder of the
# attempt that is running may end it.
ATTEMPT_MOVES = frozenset({Move.FINISH, Move.FAIL, Move.DEFER})


MAX_ID = 2**63 - 1  # SQLite's integer range


def _finite(value: Any, where: str = "payload") -> None:
    """Refuse NaN and infinities anywhere in a JSON value: JSON has no such numbers."""
    if isinstance(value, float) and not math.isfinite(value):
        raise ValueError(f"{where}: {value} is not a number JSON allows")
    if isinstance(value, dict):
        for key, item in value.items():
            _finite(item, f"{where}.{key}")
    elif isinstance(value, list):
        for index, item in enumerate(value):
            _finite(item, f"{where}[{index}]")


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

    @field_validator("payload")
    @classmethod
    def _payload_is_json(cls, value: dict[str, Any]) -> dict[str, Any]:
        _finite(value)
        return value


_CANONICAL = json.JSONEncoder(sort_keys=True, separators=(",", ":"), ensure_ascii=False)


def request_fingerprint(spec: JobSpec) -> str:
    """What makes two submits the same request, for a key reused by another request.

    The kind, payload, lane, priority, project and role: what the job would do
    and where. Not where the request came from (its reason, source, trigger or
    parent): a retried submit may come by another path, a timer's tick may be
    replayed by another job, and it is still the same request.
    """
    request = [spec.kind, spec.payload, spec.lane, spec.priority, spec.project, spec.role]
    canonical = _CANONICAL.encode(request)
    return hashlib.blake2b(canonical.encode(), digest_size=16).hexdigest()


class Usage(BaseModel):
    """What an attempt spent: model tokens and money."""

    model_config = ConfigDict(frozen=True, extra="forbid", allow_inf_nan=False)

    tokens: int = Field(default=0, ge=0)
    cost: float = Field(default=0.0, ge=0)

    def __add__(self, other: Usage) -> Usage:
        return Usage(tokens=self.tokens + other.tokens, cost=self.cost + other.cost)


NO_USAGE = Usage()


# -- outcomes: what a handler says happened ------------------------------------------------


@dataclass(frozen=True)
class Done:
    """The job is done: its result, what it spent, and the jobs it asks for next.

    The follow-up jobs commit in the same transaction as the finish: a job
    that does not finish leaves none behind.
    """

    result: Any = None
    usage: Usage = NO_USAGE
    follow_ups: tuple[JobSpec, ...] = ()


@dataclass(frozen=True)
class Retry:
    """Run the job again later.

    `after_seconds` None waits the kind's backoff. `charge_attempt` False is
    for what is not the job's fault (a rate limit, a provider that is down):
    the attempt is given back, up to the kind's limit of deferrals.
    """

    reason: str
    after_seconds: float | None = None
    charge_attempt: bool = True
    usage: Usage = NO_USAGE


@dataclass(frozen=True)
class Fail:
    """The job failed for good (bad input, say): it is never retried."""

    reason: str
    usage: Usage = NO_USAGE


Outcome = Done | Retry | Fail


class RetryLater(Exception):
    """Raised from deep inside a handler: the same as returning `Retry`."""

    def __init__(
        self, reason: str, after_seconds: float | None = None, charge_attempt: bool = True
    ) -> None:
        super().__init__(reason)
        self.outcome = Retry(reason, after_seconds, charge_attempt)


class PermanentFailure(Exception):
    """Raised from deep inside a handler: the same as returning `Fail`."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.outcome = Fail(reason)


_OUTCOMES = (Done, Retry, Fail)


def outcome_of(returned: Any) -> Outcome:
    """A handler's return value as an outcome: a plain value is a result."""
    if isinstance(returned, _OUTCOMES):
        return returned
    return Done(result=returned)


# -- stored things ----------------------------------------------------------------------------


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
    tokens: int = 0
    cost: float = 0.0
    progress: str | None = None  # the handler's last word on how far it got
    crashes: int = 0  # times the job was running when its daemon died
    deferrals: int = 0  # attempts given back at the handler's request
    payload_elided: bool = False  # a listing left the payload and result out


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
    paused_reason: str | None = None  # why it was paused, while paused
    changed_by: str | None = None  # who paused or resumed it last
    changed_at: float | None = None


class LaneEvent(BaseModel):
    """A lane was paused or resumed: by whom, why and when."""

    model_config = ConfigDict(frozen=True)

    id: int
    lane: str
    at: float
    paused: bool
    actor: str
    reason: str


class JobFilter(BaseModel):
    """Which jobs a listing wants, newest first."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    states: tuple[JobState, ...] = ()
    lane: str | None = None
    exclude_lanes: tuple[str, ...] = ()
    kind: str | None = None
    project: str | None = None
    before_id: int | None = Field(default=None, ge=1, le=MAX_ID)  # paging: older than this
    limit: int = Field(default=50, ge=1, le=10_000)
    # Payloads and results are left out unless asked for: a page of big jobs
    # would otherwise cost the daemon their whole size at once.
    with_payload: bool = False
