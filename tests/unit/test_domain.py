"""Pure domain logic: the state machine table, trusted construction, backoff."""

from __future__ import annotations

import random

import pytest
from pydantic import ValidationError

from interlock.config import RetryPolicy
from interlock.domain import (
    TERMINAL_STATES,
    TRANSITIONS,
    Job,
    JobSpec,
    JobState,
    Trigger,
    can_transition,
    sources_of,
    trusted,
)
from interlock.hub import backoff_delay


def test_every_state_has_a_row_in_the_transition_table() -> None:
    assert set(TRANSITIONS) == set(JobState)


def test_terminal_states_only_leave_through_a_person() -> None:
    for state in TERMINAL_STATES:
        assert TRANSITIONS[state] == {JobState.QUEUED}


def test_cancel_reaches_every_live_state_and_no_terminal_one() -> None:
    assert sources_of(JobState.CANCELLED) == frozenset(JobState) - TERMINAL_STATES


def test_a_queued_job_cannot_be_done_without_running() -> None:
    assert not can_transition(JobState.QUEUED, JobState.DONE)
    assert can_transition(JobState.RUNNING, JobState.DONE)


def test_kind_with_whitespace_is_refused() -> None:
    with pytest.raises(ValidationError, match="whitespace"):
        JobSpec(kind="two words")


def test_trusted_construction_equals_validated_model() -> None:
    values = {
        "id": 7, "kind": "noop", "lane": "urgent", "priority": 2, "project": None,
        "role": None, "payload": {"a": 1}, "state": JobState.RUNNING, "key": "k",
        "trigger": Trigger.TIMER, "reason": "r", "parent_id": None, "root_id": 7,
        "attempts": 1, "max_attempts": 3, "not_before": 1.0, "lease_holder": "h",
        "lease_expires_at": 2.0, "heartbeat_at": 1.5, "result": None, "error": None,
        "created_at": 1.0, "updated_at": 1.5, "started_at": 1.5, "finished_at": None,
        "tokens": 10, "cost": 0.5, "progress": "half", "crashes": 1, "deferrals": 2,
        "payload_elided": False,
    }  # fmt: skip
    fast = trusted(Job, dict(values))
    checked = Job.model_validate(values)
    assert fast == checked
    assert fast.model_dump(mode="json") == checked.model_dump(mode="json")
    assert fast.model_copy(update={"attempts": 2}).attempts == 2
    with pytest.raises(ValidationError):
        fast.attempts = 5  # type: ignore[misc]  # still frozen


def test_backoff_doubles_and_stops_at_the_cap() -> None:
    policy = RetryPolicy(backoff_base_seconds=2, backoff_max_seconds=10, backoff_jitter=0)
    rng = random.Random(1)
    assert [backoff_delay(policy, n, rng) for n in (1, 2, 3, 4, 5)] == [2, 4, 8, 10, 10]


def test_backoff_jitter_stays_within_its_fraction() -> None:
    policy = RetryPolicy(backoff_base_seconds=10, backoff_max_seconds=100, backoff_jitter=0.2)
    rng = random.Random(7)
    delays = [backoff_delay(policy, 1, rng) for _ in range(2000)]
    assert min(delays) >= 8 and max(delays) <= 12
    assert max(delays) - min(delays) > 3  # it does spread
