"""The Store protocol over one SQLite file: each method is one read or one write.

A write is a function of a `Batch` run by the commit engine (engine.py) in
its own savepoint; the statements are the named ones of queries.sql; rows
become domain objects in rows.py. Every change of state goes through
`_move`, one compare-and-set per `domain.Move`, with the sources the
transition table gives that move.
"""

from __future__ import annotations

import contextlib
import json
import os
import sqlite3
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, Literal, TypeVar

from interlock.clock import Clock
from interlock.domain import (
    MOVES,
    Event,
    EventType,
    Job,
    JobFilter,
    JobState,
    LaneEvent,
    Move,
    SubmitResult,
    Trigger,
    trusted,
)
from interlock.errors import (
    InterlockError,
    InvalidTransition,
    KeyConflict,
    KeyInUse,
    LaneFull,
    LeaseLost,
    NotJson,
    StoreError,
    UnknownJob,
)
from interlock.store import (
    Attempt,
    Change,
    Changed,
    CommitListener,
    LaneRow,
    NewJob,
    Pruned,
    Step,
)
from interlock.store.engine import Batch, Engine
from interlock.store.queries import Q, list_statement, move_statement, with_marks
from interlock.store.rows import (
    ATTEMPTS_COLUMN,
    MAX_ATTEMPTS_COLUMN,
    STATE_COLUMN,
    CommittedEvents,
    event_from_row,
    job_from_row,
    lane_event_from_row,
)
from interlock.tax import UsageRow

T = TypeVar("T")

# The JSON columns a listing's byte budget counts (payload and result).
_PAYLOAD_COLUMN = 6
_RESULT_COLUMN = 19


class SQLiteStore:
    """The Store protocol over one SQLite file."""

    def __init__(
        self,
        path: Path,
        durability: Literal["normal", "full"] = "normal",
        clock: Clock | None = None,
    ) -> None:
        self.path = path
        self._engine = Engine(path, durability, clock)

    # -- lifecycle ---------------------------------------------------------------

    async def open(self) -> None:
        await self._engine.open()

    async def close(self) -> None:
        await self._engine.close()

    async def run_checkpoints(self) -> None:
        await self._engine.run_checkpoints()

    @property
    def idle(self) -> bool:
        return self._engine.idle

    def on_commit(self, listener: CommitListener) -> None:
        self._engine.on_commit(lambda facts: listener(CommittedEvents(facts)))

    async def _write(self, write: Callable[[Batch], T]) -> T:
        result: T = await self._engine.write(write)
        return result

    async def _read(self, read: Callable[[sqlite3.Connection], T]) -> T:
        return await self._engine.read(read)

    # -- writes ------------------------------------------------------------------

    async def submit(self, new: NewJob, now: float) -> SubmitResult:
        payload = _encode(new.spec.payload, "payload")

        def write(batch: Batch) -> tuple[Sequence[Any], bool]:
            return _insert(batch, new, payload, now)

        row, duplicate = await self._write(write)
        return trusted(SubmitResult, {"job": job_from_row(row), "duplicate": duplicate})

    async def claim(
        self, lane: str, limit: int, holder: str, now: float, lease_until: float
    ) -> list[Job]:
        def write(batch: Batch) -> list[Sequence[Any]]:
            conn = batch.conn
            paused = conn.execute(Q["lane_is_paused"], (lane,)).fetchone()
            if paused is not None and paused[0]:
                return []
            ids = [row[0] for row in conn.execute(Q["claim_pick"], (lane, now, limit))]
            if not ids:
                return []
            rows = conn.execute(
                with_marks("move_claim", len(ids)), (holder, lease_until, now, now, now, *ids)
            ).fetchall()
            rows.sort(key=lambda row: ids.index(row[0]))
            batch.adjust_depth(lane, -len(rows))
            rule = MOVES[Move.CLAIM]
            (source,) = rule.sources
            data = {"holder": holder}
            encoded = _JSON.encode(data)  # once for the whole claim
            for row in rows:
                batch.record(
                    row[0],
                    now,
                    rule.event,
                    source,
                    rule.target,
                    None,
                    f"attempt {row[ATTEMPTS_COLUMN]} of {row[MAX_ATTEMPTS_COLUMN]}",
                    data,
                    encoded,
                )
            return rows

        rows = await self._write(write)
        return [job_from_row(row) for row in rows]

    async def change(self, change: Change, now: float) -> Changed:
        values: dict[str, Any] = {
            "id": change.job_id,
            "now": now,
            "result": None if change.result is None else _encode(change.result, "result"),
            "error": change.error,
            "tokens": change.usage.tokens,
            "cost": change.usage.cost,
            "not_before": now if change.not_before is None else change.not_before,
            "crash": int(change.crash),
            "holder": change.attempt.holder if change.attempt else change.holder,
            "attempt": change.attempt.number if change.attempt else None,
            "lease_expired_before": change.lease_expired_before,
        }
        guard = ""
        if change.attempt is not None:
            guard = "guard_attempt"
        elif change.holder is not None:
            guard = "guard_holder"
        elif change.lease_expired_before is not None:
            guard = "guard_lease_expired"
        # Each step's statement and values, ready here on the event loop: the
        # writer's thread only runs them.
        plans = []
        for index, step in enumerate(change.steps):
            sql, names = move_statement(step.move, guard if index == 0 else "", change.lean)
            plans.append((step, sql, tuple(values[name] for name in names)))
        payloads = [_encode(new.spec.payload, "payload") for new in change.follow_ups]

        def write(batch: Batch) -> tuple[Sequence[Any], list[tuple[Sequence[Any], bool]]]:
            row: Sequence[Any] | None = None
            state: JobState | None = None
            for step, sql, params in plans:
                row, state = _move(batch, change, step, sql, params, state, now)
            assert row is not None
            inserted = [
                _insert(batch, new, payload, now)
                for new, payload in zip(change.follow_ups, payloads, strict=True)
            ]
            return row, inserted

        # Rows become objects here, on the event loop: the writer's thread is the
        # bottleneck under load, and a lean change needs no object at all.
        row, inserted = await self._write(write)
        follow_ups: tuple[SubmitResult, ...] = ()
        if inserted:
            follow_ups = tuple(
                trusted(SubmitResult, {"job": job_from_row(job_row), "duplicate": duplicate})
                for job_row, duplicate in inserted
            )
        return Changed(job=None if change.lean else job_from_row(row), follow_ups=follow_ups)

    async def renew_leases(
        self,
        holder: str,
        attempts: Sequence[Attempt],
        now: float,
        lease_until: float,
        progress: dict[int, str],
    ) -> set[int]:
        if not attempts:
            return set()
        expected = {attempt.job_id: attempt.number for attempt in attempts}
        ids = list(expected)

        def write(batch: Batch) -> set[int]:
            conn = batch.conn
            rows = conn.execute(
                with_marks("renew_leases", len(ids)), (now, lease_until, *ids, holder)
            ).fetchall()
            held = {job_id for job_id, number in rows if expected.get(job_id) == number}
            updates = [
                (note, job_id, holder) for job_id, note in progress.items() if job_id in held
            ]
            if updates:
                conn.executemany(Q["set_progress"], updates)
            return held

        return await self._write(write)

    async def note(
        self,
        job_id: int,
        event_type: EventType,
        note: str,
        now: float,
        data: dict[str, Any] | None = None,
        once: bool = True,
    ) -> bool:
        def write(batch: Batch) -> bool:
            row = batch.conn.execute(Q["note_facts"], (job_id, event_type.value, job_id)).fetchone()
            if row is None:
                raise UnknownJob(job_id)
            if once and (row[1] or batch.recorded(job_id, event_type)):
                return False
            state = JobState(row[0])
            batch.record(job_id, now, event_type, state, state, None, note, data)
            return True

        return await self._write(write)

    async def set_lane_paused(
        self, lane: str, paused: bool, reason: str, actor: str, now: float
    ) -> LaneEvent:
        def write(batch: Batch) -> LaneEvent:
            conn = batch.conn
            conn.execute(
                Q["set_lane_paused"], (lane, int(paused), now, reason if paused else None, actor)
            )
            row = conn.execute(Q["insert_lane_event"], (lane, now, int(paused), actor, reason))
            return lane_event_from_row(row.fetchone())

        return await self._write(write)

    async def prune_finished(self, before: float, max_rows: int) -> Pruned:
        """Delete finished jobs that ended before `before`, with their events: one bounded write.

        Oldest first, at most `max_rows` rows (a job and its events count
        together; one job always goes, however many events it has). A job that
        another job names as its parent or root stays until that one is gone,
        so a lineage never has a hole, and a chain goes leaf first over
        several writes. Ids are handed out as MAX(id) + 1, so the newest job
        and the owner of the newest event also stay: no id is ever reused.
        """

        def write(batch: Batch) -> Pruned:
            conn = batch.conn
            rows = conn.execute(Q["prunable"], (before, max_rows)).fetchall()
            # An earlier write of this batch may have recorded an event on one of
            # them (a duplicate submit); its row goes in at the end of the batch.
            pending = {row[1] for row in batch.event_rows}
            ids: list[int] = []
            events = 0
            for job_id, count in rows:
                if job_id in pending:
                    continue
                if ids and len(ids) + events + 1 + count > max_rows:
                    break
                ids.append(job_id)
                events += count
            if not ids:
                return Pruned(jobs=0, events=0)
            deleted_events = conn.execute(with_marks("delete_events_of", len(ids)), ids).rowcount
            deleted_jobs = conn.execute(with_marks("delete_jobs", len(ids)), ids).rowcount
            return Pruned(jobs=deleted_jobs, events=deleted_events)

        return await self._write(write)

    async def backup(self, target: Path) -> None:
        """Write a consistent copy of the whole store to `target`, while the daemon runs.

        SQLite's online backup API on a connection of its own, in a worker
        thread: one step copies every page inside one read transaction, so the
        copy is a snapshot, and in WAL mode writers never wait for it. The copy
        is written beside `target` and renamed into place, so `target` is
        either a whole backup or absent. It is a single file (rollback
        journal), mode 0600.
        """

        def copy() -> None:
            part = target.with_name(target.name + ".part")
            part.unlink(missing_ok=True)
            os.close(os.open(part, os.O_CREAT | os.O_WRONLY | os.O_TRUNC, 0o600))
            source = sqlite3.connect(self.path)
            try:
                source.execute("PRAGMA busy_timeout = 5000")
                destination = sqlite3.connect(part)
                try:
                    source.backup(destination)
                    destination.execute("PRAGMA journal_mode = DELETE")
                finally:
                    destination.close()
            finally:
                source.close()
            with open(part, "rb") as handle:
                os.fsync(handle.fileno())
            os.replace(part, target)
            folder = os.open(target.parent, os.O_RDONLY)
            try:
                os.fsync(folder)
            finally:
                os.close(folder)

        try:
            await self._engine.in_thread(copy)
        except (OSError, sqlite3.Error) as exc:
            raise StoreError(f"the store could not be backed up to {target}: {exc}") from exc

    async def record_aging(
        self, lane: str, aging_seconds: float, now: float, limit: int
    ) -> list[int]:
        """Record an `aged` event on up to `limit` queued jobs of `lane` that aged another step.

        A job's steps are whole aging steps waited since it was submitted; it
        gets an event when they exceed the steps of its last `aged` event
        (kept in the event's data). Nothing about the job itself changes.
        """

        def write(batch: Batch) -> list[int]:
            rows = batch.conn.execute(
                Q["agable"], (now, aging_seconds, lane, now - aging_seconds, limit)
            ).fetchall()
            for job_id, priority, steps in rows:
                effective = priority + steps
                batch.record(
                    job_id,
                    now,
                    EventType.AGED,
                    JobState.QUEUED,
                    JobState.QUEUED,
                    None,
                    f"waited {steps} aging step(s) of {aging_seconds:g}s in lane {lane}:"
                    f" effective priority {effective} (submitted at {priority})",
                    {
                        "steps": steps,
                        "priority": priority,
                        "effective_priority": effective,
                        "aging_seconds": aging_seconds,
                    },
                )
            return [row[0] for row in rows]

        return await self._write(write)

    # -- reads (on their own connection, so they never wait behind a commit) -------

    async def _jobs(self, name: str, params: Sequence[Any]) -> list[Job]:
        sql = Q[name]

        def read(conn: sqlite3.Connection) -> list[Job]:
            return [job_from_row(row) for row in conn.execute(sql, params)]

        return await self._read(read)

    async def _exists(self, name: str, params: Sequence[Any]) -> bool:
        sql = Q[name]
        return await self._read(lambda conn: bool(conn.execute(sql, params).fetchone()[0]))

    async def get(self, job_id: int) -> Job:
        jobs = await self._jobs("job_by_id", (job_id,))
        if not jobs:
            raise UnknownJob(job_id)
        return jobs[0]

    async def list_jobs(self, job_filter: JobFilter, max_bytes: int | None = None) -> list[Job]:
        clauses: list[str] = []
        params: list[Any] = []
        if job_filter.states:
            clauses.append(f"state IN ({', '.join('?' * len(job_filter.states))})")
            params.extend(state.value for state in job_filter.states)
        for column in ("lane", "kind", "project"):
            value = getattr(job_filter, column)
            if value is not None:
                clauses.append(f"{column} = ?")
                params.append(value)
        if job_filter.exclude_lanes:
            clauses.append(f"lane NOT IN ({', '.join('?' * len(job_filter.exclude_lanes))})")
            params.extend(job_filter.exclude_lanes)
        if job_filter.before_id is not None:
            clauses.append("id < ?")
            params.append(job_filter.before_id)
        where = f" WHERE {' AND '.join(clauses)}" if clauses else ""
        sql = list_statement(where, job_filter.with_payload)
        params.append(job_filter.limit)
        elided = not job_filter.with_payload

        def read(conn: sqlite3.Connection) -> list[Job]:
            jobs: list[Job] = []
            size = 0
            for row in conn.execute(sql, params):
                if max_bytes is not None:
                    size += len(row[_PAYLOAD_COLUMN]) + len(row[_RESULT_COLUMN] or "")
                    if jobs and size > max_bytes:
                        break
                jobs.append(job_from_row(row, elided))
            return jobs

        return await self._read(read)

    async def events(self, job_id: int) -> list[Event]:
        sql = Q["events_of_job"]
        return await self._read(
            lambda conn: [event_from_row(row) for row in conn.execute(sql, (job_id,))]
        )

    async def transitions_recorded(self) -> set[tuple[JobState, JobState]]:
        sql = Q["event_pairs"]
        return await self._read(
            lambda conn: {(JobState(a), JobState(b)) for a, b in conn.execute(sql)}
        )

    async def lineage(self, job_id: int) -> list[Job]:
        jobs = await self._jobs("lineage", (job_id,))
        if not jobs:
            raise UnknownJob(job_id)
        return jobs

    async def lanes(self, names: Sequence[str]) -> list[LaneRow]:
        def read(conn: sqlite3.Connection) -> list[LaneRow]:
            flags = {row[0]: row[1:] for row in conn.execute(Q["lane_flags"])}
            counts: dict[tuple[str, str], int] = {
                (row[0], row[1]): row[2] for row in conn.execute(Q["lane_counts"])
            }
            result = []
            for name in names:
                (oldest,) = conn.execute(Q["lane_oldest_queued"], (name,)).fetchone()
                paused, reason, changed_by, changed_at = flags.get(name, (0, None, None, None))
                result.append(
                    LaneRow(
                        name=name,
                        paused=bool(paused),
                        paused_reason=reason,
                        changed_by=changed_by,
                        changed_at=changed_at,
                        queued=counts.get((name, "queued"), 0),
                        running=counts.get((name, "running"), 0),
                        oldest_queued_at=oldest,
                    )
                )
            return result

        return await self._read(read)

    async def lane_events(self, lane: str, limit: int) -> list[LaneEvent]:
        sql = Q["lane_events_of"]
        return await self._read(
            lambda conn: [lane_event_from_row(row) for row in conn.execute(sql, (lane, limit))]
        )

    async def next_due(self, lane: str, now: float) -> float | None:
        sql = Q["lane_next_due"]

        def read(conn: sqlite3.Connection) -> float | None:
            (due,) = conn.execute(sql, (lane, now)).fetchone()
            return None if due is None else float(due)

        return await self._read(read)

    async def count_by_state(self) -> dict[JobState, int]:
        def read(conn: sqlite3.Connection) -> dict[JobState, int]:
            counts = {state: 0 for state in JobState}
            for state, count in conn.execute(Q["count_by_state"]):
                counts[JobState(state)] = count
            return counts

        return await self._read(read)

    async def running(self) -> list[Job]:
        return await self._jobs("running_jobs", ())

    async def expired_leases(self, now: float) -> list[Job]:
        return await self._jobs("expired_leases", (now,))

    async def waiting_since(self, lane: str, before: float) -> list[Job]:
        return await self._jobs("waiting_since", (lane, before))

    async def recently_stalled(self, since: float) -> list[Job]:
        return await self._jobs("recently_stalled", (since,))

    async def latest_done(self, kind: str) -> Job | None:
        jobs = await self._jobs("latest_done", (kind,))
        return jobs[0] if jobs else None

    async def size_bytes(self) -> int:
        """The database and its write-ahead log on disk (stat on the reader's thread)."""

        def read(_conn: sqlite3.Connection) -> int:
            total = 0
            for suffix in ("", "-wal"):
                with contextlib.suppress(OSError):
                    total += os.stat(f"{self.path}{suffix}").st_size
            return total

        return await self._read(read)

    async def usage(self, since: float, until: float) -> list[UsageRow]:
        def read(conn: sqlite3.Connection) -> list[UsageRow]:
            return [
                UsageRow(
                    lane=row[0],
                    kind=row[1],
                    project=row[2],
                    jobs=row[3],
                    wall_seconds=float(row[4]),
                    tokens=int(row[5]),
                    cost=float(row[6]),
                )
                for row in conn.execute(Q["usage"], (since, until))
            ]

        return await self._read(read)

    async def attempt_outcomes(self, lane: str, after: float) -> dict[str, tuple[int, int]]:
        sql = Q["attempt_outcomes"]
        return await self._read(
            lambda conn: {row[0]: (row[1], row[2]) for row in conn.execute(sql, (after, lane))}
        )

    async def lanes_resumed_at(self) -> dict[str, float]:
        sql = Q["lanes_resumed_at"]
        return await self._read(lambda conn: {name: float(at) for name, at in conn.execute(sql)})

    async def live_projects(self) -> set[str]:
        sql = Q["live_projects"]
        return await self._read(lambda conn: {row[0] for row in conn.execute(sql)})

    async def done_lacking(
        self, kinds: Sequence[str], event_type: EventType, after_id: int, limit: int
    ) -> list[Job]:
        if not kinds:
            return []
        sql = with_marks("done_lacking", len(kinds))
        params = (*kinds, after_id, event_type.value, limit)
        return await self._read(
            lambda conn: [job_from_row(row) for row in conn.execute(sql, params)]
        )

    async def any_expired_lease(self, now: float) -> bool:
        return await self._exists("any_expired_lease", (now,))

    async def any_unflagged_wait(self, lane: str, before: float) -> bool:
        return await self._exists("any_unflagged_wait", (lane, before))

    async def any_queued_since(self, lane: str, before: float) -> bool:
        return await self._exists("any_queued_since", (lane, before))

    async def any_failure_since(self, after: float) -> bool:
        return await self._exists("any_failure_since", (after,))

    async def any_finished_before(self, before: float) -> bool:
        return await self._exists("any_finished_before", (before,))


# -- what the writes share --------------------------------------------------------------


# One encoder for every payload and result: json.dumps with options builds a new
# encoder per call, which costs more than the encoding of a small payload.
_JSON = json.JSONEncoder(allow_nan=False, ensure_ascii=False)


def _encode(value: Any, what: str) -> str:
    """A payload or result as JSON text; NaN, infinities and non-JSON values are refused."""
    try:
        return _JSON.encode(value)
    except (TypeError, ValueError) as exc:
        raise NotJson(f"a {what} that is not JSON: {exc}") from None


def _insert(batch: Batch, new: NewJob, payload: str, now: float) -> tuple[Sequence[Any], bool]:
    """A new queued job, or the job that holds its key (then True): the heart of submit."""
    conn = batch.conn
    spec = new.spec
    if spec.key is not None:
        holder = conn.execute(Q["live_key_holder"], (spec.key,)).fetchone()
        if holder is None and new.key_window_seconds > 0:
            holder = conn.execute(
                Q["recent_key_holder"], (spec.key, now - new.key_window_seconds)
            ).fetchone()
        if holder is not None:
            *row, fingerprint = holder
            if fingerprint is not None and fingerprint != new.fingerprint:
                raise KeyConflict(spec.key, row[0], row[1])
            _record_duplicate(batch, row, spec.source, spec.trigger, spec.reason, now)
            return row, True
    depth = batch.queued_depth(new.lane)
    if depth >= new.max_depth:
        raise LaneFull(new.lane, depth, new.max_depth)
    root_id = 0
    if spec.parent_id is not None:
        parent = conn.execute(Q["root_of"], (spec.parent_id,)).fetchone()
        if parent is None:
            raise UnknownJob(spec.parent_id)
        root_id = parent[0]
    not_before = now if spec.not_before is None else spec.not_before
    job_id = batch.take_job_id()
    row = conn.execute(
        Q["insert_job"],
        (
            job_id,
            spec.kind,
            new.lane,
            spec.priority,
            new.order_key,
            spec.project,
            spec.role,
            payload,
            spec.key,
            spec.trigger.value,
            spec.reason,
            spec.parent_id,
            root_id or job_id,
            new.max_attempts,
            not_before,
            now,
            now,
            new.fingerprint or None,
        ),
    ).fetchone()
    batch.adjust_depth(new.lane, +1)
    batch.record(
        job_id,
        now,
        EventType.SUBMITTED,
        None,
        JobState.QUEUED,
        spec.trigger,
        spec.reason,
        {"source": spec.source} if spec.source else None,
    )
    return row, False


def _move(
    batch: Batch,
    change: Change,
    step: Step,
    sql: str,
    params: tuple[Any, ...],
    state: JobState | None,
    now: float,
) -> tuple[Sequence[Any], JobState]:
    """One step of a change: the move's compare-and-set, then its event. The only way
    a stored job changes state (claims apply the same rule to many jobs at once)."""
    conn = batch.conn
    rule = MOVES[step.move]
    if state is None:
        if len(rule.sources) == 1:
            (state,) = rule.sources
        else:  # the event says where the job came from: look before moving
            facts = conn.execute(Q["job_facts"], (change.job_id,)).fetchone()
            if facts is None:
                raise UnknownJob(change.job_id)
            state = JobState(facts[0])
    try:
        row = conn.execute(sql, params).fetchone()
    except sqlite3.IntegrityError:  # the unique live-key index: another job took the key
        holding = conn.execute(Q["key_holder_of"], (change.job_id,)).fetchone()
        if holding is None:
            raise
        raise KeyInUse(holding[0], holding[1]) from None
    if row is None:
        raise _refusal(conn, change, rule.target)
    lane = row[2]
    if state == JobState.QUEUED:
        batch.adjust_depth(lane, -1)
    if rule.target == JobState.QUEUED:
        batch.adjust_depth(lane, +1)
    batch.record(
        change.job_id,
        now,
        step.event or rule.event,
        state,
        rule.target,
        step.trigger,
        step.note,
        step.data,
    )
    return row, rule.target


def _refusal(conn: sqlite3.Connection, change: Change, target: JobState) -> InterlockError:
    """Why a compare-and-set found nothing to change."""
    facts = conn.execute(Q["job_facts"], (change.job_id,)).fetchone()
    if facts is None:
        return UnknownJob(change.job_id)
    state, _lane, holder, attempts = facts
    attempt = change.attempt
    if attempt is not None and state == JobState.RUNNING.value:
        return LeaseLost(change.job_id, attempt.number, holder, attempts)
    return InvalidTransition(change.job_id, state, target.value, change.action)


def _record_duplicate(
    batch: Batch, holder: Sequence[Any], source: str, trigger: Trigger, reason: str, now: float
) -> None:
    who = source or trigger.value
    note = f"duplicate submit from {who}" + (f": {reason}" if reason else "")
    state = JobState(holder[STATE_COLUMN])
    batch.record(
        holder[0],
        now,
        EventType.DUPLICATE,
        state,
        state,
        trigger,
        note,
        {"source": source} if source else None,
    )


__all__ = ["SQLiteStore"]
