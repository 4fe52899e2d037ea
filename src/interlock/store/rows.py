"""Row mapping: SQLite rows to domain objects and back, nothing else.

Rows the store wrote itself are trusted (built without validation, see
`domain.trusted`): they are read on the hot path and were valid when written.
"""

from __future__ import annotations

import json
from collections.abc import Iterator, Sequence
from typing import Any, overload

from interlock.domain import (
    Event,
    EventType,
    Job,
    JobState,
    LaneEvent,
    Trigger,
    trusted,
)

# The jobs columns every job query selects, in this order (see `job_from_row`).
JOB_COLUMN_NAMES = (
    "id",
    "kind",
    "lane",
    "priority",
    "project",
    "role",
    "payload",
    "state",
    "key",
    "trigger",
    "reason",
    "parent_id",
    "root_id",
    "attempts",
    "max_attempts",
    "not_before",
    "lease_holder",
    "lease_expires_at",
    "heartbeat_at",
    "result",
    "error",
    "created_at",
    "updated_at",
    "started_at",
    "finished_at",
    "tokens",
    "cost",
    "progress",
    "crashes",
    "deferrals",
)
JOB_COLUMNS = ", ".join(JOB_COLUMN_NAMES)
# The same, with the payload and result left out (listings that do not ask for them).
JOB_COLUMNS_ELIDED = ", ".join(
    "'{}' AS payload" if name == "payload" else "NULL AS result" if name == "result" else name
    for name in JOB_COLUMN_NAMES
)
EVENT_COLUMNS = "id, job_id, at, type, from_state, to_state, trigger, note, data"
LANE_EVENT_COLUMNS = "id, lane, at, paused, actor, reason"

ATTEMPTS_COLUMN = JOB_COLUMN_NAMES.index("attempts")
MAX_ATTEMPTS_COLUMN = JOB_COLUMN_NAMES.index("max_attempts")
STATE_COLUMN = JOB_COLUMN_NAMES.index("state")
LANE_COLUMN = JOB_COLUMN_NAMES.index("lane")


def job_from_row(row: Sequence[Any], elided: bool = False) -> Job:
    """A jobs row (JOB_COLUMNS order) as a Job."""
    return trusted(
        Job,
        dict(
            id=row[0],
            kind=row[1],
            lane=row[2],
            priority=row[3],
            project=row[4],
            role=row[5],
            payload=json.loads(row[6]),
            state=JobState(row[7]),
            key=row[8],
            trigger=Trigger(row[9]),
            reason=row[10],
            parent_id=row[11],
            root_id=row[12],
            attempts=row[13],
            max_attempts=row[14],
            not_before=row[15],
            lease_holder=row[16],
            lease_expires_at=row[17],
            heartbeat_at=row[18],
            result=None if row[19] is None else json.loads(row[19]),
            error=row[20],
            created_at=row[21],
            updated_at=row[22],
            started_at=row[23],
            finished_at=row[24],
            tokens=row[25],
            cost=row[26],
            progress=row[27],
            crashes=row[28],
            deferrals=row[29],
            payload_elided=elided,
        ),
    )


EventFacts = tuple[Any, ...]


def event_row(
    event_id: int,
    job_id: int,
    at: float,
    event_type: EventType,
    from_state: JobState | None,
    to_state: JobState | None,
    trigger: Trigger | None,
    note: str,
    data: dict[str, Any] | None,
    encoded: str | None = None,
) -> tuple[Any, ...]:
    """An event as the values of its INSERT (`encoded`: the data as JSON, if known)."""
    return (
        event_id,
        job_id,
        at,
        event_type.value,
        None if from_state is None else from_state.value,
        None if to_state is None else to_state.value,
        None if trigger is None else trigger.value,
        note,
        encoded if encoded is not None else None if not data else json.dumps(data),
    )


def event_from_facts(fact: EventFacts) -> Event:
    """An event from the domain values it was recorded with."""
    event_id, job_id, at, event_type, from_state, to_state, trigger, note, data = fact
    return trusted(
        Event,
        dict(
            id=event_id,
            job_id=job_id,
            at=at,
            type=event_type,
            from_state=from_state,
            to_state=to_state,
            trigger=trigger,
            note=note,
            data=data or {},
        ),
    )


def event_from_row(row: Sequence[Any]) -> Event:
    """An events row (EVENT_COLUMNS order) as an Event."""
    return event_from_facts(
        (
            row[0],
            row[1],
            row[2],
            EventType(row[3]),
            None if row[4] is None else JobState(row[4]),
            None if row[5] is None else JobState(row[5]),
            None if row[6] is None else Trigger(row[6]),
            row[7],
            None if row[8] is None else json.loads(row[8]),
        )
    )


def lane_event_from_row(row: Sequence[Any]) -> LaneEvent:
    """A lane_events row (LANE_EVENT_COLUMNS order) as a LaneEvent."""
    return LaneEvent(
        id=row[0], lane=row[1], at=row[2], paused=bool(row[3]), actor=row[4], reason=row[5]
    )


class CommittedEvents(Sequence[Event]):
    """A batch's events, built only if someone reads them (most batches have no reader)."""

    def __init__(self, facts: list[EventFacts]) -> None:
        self._facts = facts
        self._events: list[Event] | None = None

    def _built(self) -> list[Event]:
        if self._events is None:
            self._events = [event_from_facts(fact) for fact in self._facts]
        return self._events

    def __len__(self) -> int:
        return len(self._facts)

    @overload
    def __getitem__(self, index: int) -> Event: ...

    @overload
    def __getitem__(self, index: slice) -> Sequence[Event]: ...

    def __getitem__(self, index: int | slice) -> Event | Sequence[Event]:
        return self._built()[index]

    def __iter__(self) -> Iterator[Event]:
        return iter(self._built())
