"""The SQLite store, through aiosqlite, with group commit.

Every write is a small function that runs on the connection's thread. Writes
that arrive while a batch is committing wait and go together in the next one:
one thread round trip and one transaction carry the whole batch. Each write
runs inside its own savepoint, so a refused write (a domain error) leaves no
trace while the rest of its batch commits; a transition and its event always
commit together, because they are written by the same function.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import math
import os
import sqlite3
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any, Literal, TypeVar, overload

import aiosqlite
import anyio
import anyio.to_thread

from interlock.domain import (
    LIVE_STATES,
    TERMINAL_STATES,
    Event,
    EventType,
    Job,
    JobFilter,
    JobState,
    SubmitResult,
    Trigger,
    trusted,
)
from interlock.errors import InterlockError, InvalidTransition, KeyInUse, LaneFull, UnknownJob
from interlock.store import Change, CommitListener, LaneRow, NewJob, Pruned
from interlock.tax import UsageRow

T = TypeVar("T")

log = logging.getLogger(__name__)

# Batches one writer may commit for others before it hands the lead on: enough
# to keep the database thread busy under load, few enough (a few milliseconds)
# that no caller waits long for its own result.
BATCHES_PER_LEADER = 8

# Rows written between two background checkpoints: a few MB of WAL at most.
CHECKPOINT_EVERY_WRITES = 4000

JOB_COLUMNS = (
    "id, kind, lane, priority, project, role, payload, state, key, trigger, reason, parent_id,"
    " root_id, attempts, max_attempts, not_before, lease_holder, lease_expires_at, heartbeat_at,"
    " result, error, created_at, updated_at, started_at, finished_at"
)
EVENT_COLUMNS = "id, job_id, at, type, from_state, to_state, trigger, note, data"
_TERMINAL_SQL = ", ".join(f"'{state.value}'" for state in sorted(TERMINAL_STATES))


class StoreError(InterlockError):
    """The database refused a write (disk full, corrupt file, ...)."""

    code = 507
    name = "store"


def _job(row: Sequence[Any]) -> Job:
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
        ),
    )


def _event(row: Sequence[Any]) -> Event:
    """An events row as an Event (the columns in EVENT_COLUMNS order)."""
    return _event_from_facts(
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


@dataclass
class _Batch:
    """What the writes of one transaction share.

    Ids are handed out here (the store is the file's only writer, and the batch
    holds the write lock), so a job's root can be set in its INSERT and all the
    batch's events go in with one executemany at the end.
    """

    conn: sqlite3.Connection
    depths: dict[str, int]
    next_job_id: int
    next_event_id: int
    # (row for INSERT, the same event as domain values): Event objects are built
    # on the event loop after the commit, not on this thread, which is the
    # bottleneck under load.
    event_rows: list[tuple[Any, ...]] = field(default_factory=list)
    event_facts: list[tuple[Any, ...]] = field(default_factory=list)

    def record(
        self,
        job_id: int,
        now: float,
        event_type: EventType,
        from_state: JobState | None,
        to_state: JobState | None,
        trigger: Trigger | None,
        note: str,
        data: dict[str, Any] | None = None,
    ) -> None:
        event_id = self.next_event_id
        self.next_event_id += 1
        self.event_rows.append(
            (
                event_id,
                job_id,
                now,
                event_type.value,
                None if from_state is None else from_state.value,
                None if to_state is None else to_state.value,
                None if trigger is None else trigger.value,
                note,
                None if not data else json.dumps(data),
            )
        )
        self.event_facts.append(
            (event_id, job_id, now, event_type, from_state, to_state, trigger, note, data)
        )

    def take_job_id(self) -> int:
        job_id = self.next_job_id
        self.next_job_id += 1
        return job_id

    def queued_depth(self, lane: str) -> int:
        if lane not in self.depths:
            (count,) = self.conn.execute(
                "SELECT COUNT(*) FROM jobs WHERE state = 'queued' AND lane = ?", (lane,)
            ).fetchone()
            self.depths[lane] = count
        return self.depths[lane]

    def adjust_depth(self, lane: str, delta: int) -> None:
        if lane in self.depths:
            self.depths[lane] += delta

    def mark(self) -> tuple[int, int, int, dict[str, int]]:
        return len(self.event_rows), self.next_job_id, self.next_event_id, dict(self.depths)

    def undo(self, mark: tuple[int, int, int, dict[str, int]]) -> None:
        events, self.next_job_id, self.next_event_id, self.depths = mark
        del self.event_facts[events:]
        del self.event_rows[events:]

    def write_events(self) -> None:
        self.conn.executemany(
            "INSERT INTO events (id, job_id, at, type, from_state, to_state, trigger, note, data)"
            " VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
            self.event_rows,
        )


_Write = Callable[[_Batch], Any]


def _wake(pending: _Pending) -> None:
    if pending.wake is not None and not pending.wake.done():
        pending.wake.set_result(None)


@dataclass
class _Pending:
    """One write waiting for a batch: woken with its outcome, or to lead the next batch."""

    write: _Write
    # Made only when the writer has to wait; a bare future, as this runs per write.
    wake: asyncio.Future[None] | None = None
    outcome: tuple[bool, Any] | None = None
    promoted: bool = False
    abandoned: bool = False  # its caller was cancelled while it waited


def _refusal(
    conn: sqlite3.Connection, job_id: int, target: JobState, action: str
) -> InterlockError:
    """Why a compare-and-set found nothing to change."""
    row = conn.execute("SELECT state FROM jobs WHERE id = ?", (job_id,)).fetchone()
    if row is None:
        return UnknownJob(job_id)
    return InvalidTransition(job_id, row[0], target.value, action)


class SQLiteStore:
    """The Store protocol over one SQLite file: a writer connection and a reader connection."""

    def __init__(self, path: Path, durability: Literal["normal", "full"] = "normal") -> None:
        self.path = path
        self.durability = durability
        self._writer: aiosqlite.Connection | None = None
        self._reader: aiosqlite.Connection | None = None
        self._pending: list[_Pending] = []
        self._flushing = False
        self._flushed = anyio.Event()  # set each time a leader finishes committing
        self._listeners: list[CommitListener] = []
        self._checkpointer: aiosqlite.Connection | None = None
        self._in_flight = 0
        self._writes_since_checkpoint = 0
        self._checkpoint_due = anyio.Event()
        # Queued jobs per lane, for the depth check; counted once, then kept
        # up to date by every committed batch (this store is the only writer).
        self._depths: dict[str, int] = {}

    # -- lifecycle ---------------------------------------------------------------

    async def open(self) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        try:
            self._writer = await aiosqlite.connect(self.path, isolation_level=None)
            await self._run(self._writer, self._configure)
            await self._run(self._writer, _migrate)
            self._reader = await aiosqlite.connect(self.path, isolation_level=None)
            await self._run(self._reader, self._configure)
        except sqlite3.Error as exc:
            # Close what opened, or its thread keeps the process alive.
            for conn in (self._reader, self._writer):
                if conn is not None:
                    with contextlib.suppress(Exception):
                        await conn.close()
            self._reader = self._writer = None
            raise StoreError(f"cannot open the store {self.path}: {exc}") from exc

    def _configure(self, conn: sqlite3.Connection) -> None:
        conn.execute("PRAGMA busy_timeout = 5000")
        conn.execute("PRAGMA journal_mode = WAL")
        conn.execute(f"PRAGMA synchronous = {self.durability.upper()}")
        conn.execute("PRAGMA foreign_keys = ON")

    async def run_checkpoints(self) -> None:
        """Copy the WAL back into the database off the commit path, until cancelled.

        SQLite's automatic checkpoint runs inside whichever commit crosses the
        threshold and stalls it for milliseconds; here a third connection does
        the work on its own thread, and commits never wait for it.
        """
        writer = self._connection(self._writer)
        self._checkpointer = await aiosqlite.connect(self.path, isolation_level=None)
        try:
            await self._run(self._checkpointer, self._configure)
            await self._run(writer, lambda conn: conn.execute("PRAGMA wal_autocheckpoint = 0"))
            while True:
                await self._checkpoint_due.wait()
                self._checkpoint_due = anyio.Event()
                self._writes_since_checkpoint = 0
                await self._run(
                    self._checkpointer, lambda conn: conn.execute("PRAGMA wal_checkpoint(PASSIVE)")
                )
        finally:
            with anyio.CancelScope(shield=True):
                if self._writer is not None:
                    await self._run(
                        self._writer, lambda conn: conn.execute("PRAGMA wal_autocheckpoint = 1000")
                    )
                await self._checkpointer.close()
                self._checkpointer = None

    async def close(self) -> None:
        if self._flushing:
            await self._flushed.wait()
        if self._pending:  # writes whose callers were cancelled: commit them too
            await self._write(lambda batch: None)
        if self._writer is not None:
            await self._run(
                self._writer, lambda conn: conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
            )
        for conn in (self._reader, self._writer):
            if conn is not None:
                await conn.close()
        self._reader = self._writer = None

    def on_commit(self, listener: CommitListener) -> None:
        self._listeners.append(listener)

    async def _run(
        self, conn: aiosqlite.Connection, function: Callable[[sqlite3.Connection], T]
    ) -> T:
        # aiosqlite's public calls each cost one thread round trip (120-150 us);
        # its `_execute` runs a whole function on the connection's thread in
        # one. aiosqlite is pinned to a minor version for this reason, and
        # tests/unit/test_store.py fails loudly if the hook disappears.
        raw = conn._conn  # the sqlite3.Connection, touched only on its thread

        def call() -> T:
            return function(raw)

        self._in_flight += 1
        try:
            result: T = await conn._execute(call)  # type: ignore[no-untyped-call]
        finally:
            self._in_flight -= 1
        return result

    @property
    def idle(self) -> bool:
        """No database call is waiting or running (tests use this to let the daemon settle)."""
        return self._in_flight == 0 and not self._pending and not self._flushing

    def _connection(self, which: aiosqlite.Connection | None) -> aiosqlite.Connection:
        if which is None:
            raise StoreError("the store is closed")
        return which

    # -- group commit ------------------------------------------------------------

    async def _write(self, write: _Write) -> Any:
        """Queue a write and return its result once its batch has committed.

        The first writer to find no batch in progress leads: it commits
        everything queued, its own write included, then hands the lead to the
        oldest waiter still waiting, so nobody leads for more than a few batches.
        A queued write always commits, even if its caller is cancelled while
        it waits (the next leader, or the store's close, commits it); the
        cancelled caller just never sees the result.
        """
        item = _Pending(write)
        self._pending.append(item)
        if self._flushing:
            item.wake = asyncio.get_running_loop().create_future()
            try:
                await item.wake
            except BaseException:
                item.abandoned = True
                if item.promoted and item.outcome is None:
                    item.promoted = False
                    self._hand_on()  # it was handed the lead too late to take it
                raise
        if item.outcome is None:  # nobody was leading, or we were handed the lead
            # The leader commits for everyone: it must not stop half way.
            with anyio.CancelScope(shield=True):
                await self._lead(item)
        assert item.outcome is not None
        ok, value = item.outcome
        if not ok:
            raise value
        return value

    async def _lead(self, item: _Pending) -> None:
        self._flushing = True
        self._flushed = anyio.Event()
        led = 0
        try:
            # Past its own write, a leader keeps the thread busy for a few more
            # batches (handing over costs the thread an idle gap), then lets go.
            while item.outcome is None or (self._pending and led < BATCHES_PER_LEADER):
                batch, self._pending = self._pending, []
                await self._commit(batch)
                led += 1
        finally:
            self._hand_on()

    def _hand_on(self) -> None:
        """Give the lead to the oldest live waiter, or end the flush."""
        for waiting in self._pending:
            if not waiting.abandoned:
                waiting.promoted = True
                _wake(waiting)
                return
        self._flushing = False
        self._flushed.set()

    async def _commit(self, batch: list[_Pending]) -> None:
        try:
            writer = self._connection(self._writer)
            outcomes, facts, depths = await self._run(
                writer, lambda conn: _apply(conn, batch, self._depths)
            )
        except Exception as exc:  # the transaction as a whole failed
            error = StoreError(f"the store could not commit: {exc}")
            for pending in batch:
                pending.outcome = (False, error)
                _wake(pending)
            return
        self._depths = depths  # adopted only once committed
        events = _CommittedEvents(facts)
        self._writes_since_checkpoint += len(batch) + len(events)
        if self._writes_since_checkpoint >= CHECKPOINT_EVERY_WRITES:
            self._checkpoint_due.set()
        for pending, outcome in zip(batch, outcomes, strict=True):
            pending.outcome = outcome
            _wake(pending)
        if events:
            for listener in self._listeners:
                try:
                    listener(events)
                except Exception:
                    log.exception("a commit listener failed; the commit stands")

    # -- writes ------------------------------------------------------------------

    async def submit(self, new: NewJob, now: float) -> SubmitResult:
        spec = new.spec

        def write(batch: _Batch) -> tuple[Sequence[Any], bool]:
            conn = batch.conn
            if spec.key is not None:
                holder = conn.execute(
                    f"SELECT {JOB_COLUMNS} FROM jobs WHERE key = ?"
                    f" AND state NOT IN ({_TERMINAL_SQL})",
                    (spec.key,),
                ).fetchone()
                if holder is None and new.key_window_seconds > 0:
                    # The kind keeps keys past the end of a job: the newest
                    # job with this key that ended inside the window answers.
                    holder = conn.execute(
                        f"SELECT {JOB_COLUMNS} FROM jobs WHERE key = ? AND finished_at >= ?"
                        " ORDER BY id DESC LIMIT 1",
                        (spec.key, now - new.key_window_seconds),
                    ).fetchone()
                if holder is not None:
                    _record_duplicate(batch, holder, spec.source, spec.trigger, spec.reason, now)
                    return holder, True
            depth = batch.queued_depth(new.lane)
            if depth >= new.max_depth:
                raise LaneFull(new.lane, depth, new.max_depth)
            root_id = 0
            if spec.parent_id is not None:
                parent = conn.execute(
                    "SELECT root_id FROM jobs WHERE id = ?", (spec.parent_id,)
                ).fetchone()
                if parent is None:
                    raise UnknownJob(spec.parent_id)
                root_id = parent[0]
            not_before = now if spec.not_before is None else spec.not_before
            job_id = batch.take_job_id()
            row = conn.execute(
                "INSERT INTO jobs (id, kind, lane, priority, order_key, project, role, payload,"
                " state, key, trigger, reason, parent_id, root_id, max_attempts, not_before,"
                " created_at, updated_at)"
                " VALUES (?, ?, ?, ?, ?, ?, ?, ?, 'queued', ?, ?, ?, ?, ?, ?, ?, ?, ?)"
                f" RETURNING {JOB_COLUMNS}",
                (
                    job_id,
                    spec.kind,
                    new.lane,
                    spec.priority,
                    new.order_key,
                    spec.project,
                    spec.role,
                    json.dumps(spec.payload),
                    spec.key,
                    spec.trigger.value,
                    spec.reason,
                    spec.parent_id,
                    root_id or job_id,
                    new.max_attempts,
                    not_before,
                    now,
                    now,
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

        row, duplicate = await self._write(write)
        return trusted(SubmitResult, {"job": _job(row), "duplicate": duplicate})

    async def claim(
        self, lane: str, limit: int, holder: str, now: float, lease_until: float
    ) -> list[Job]:
        def write(batch: _Batch) -> list[Sequence[Any]]:
            conn = batch.conn
            paused = conn.execute("SELECT paused FROM lanes WHERE name = ?", (lane,)).fetchone()
            if paused is not None and paused[0]:
                return []
            ids = [
                row[0]
                for row in conn.execute(
                    # Walk the lane in claim order and skip what is not yet due; left
                    # to itself the planner picks the not_before index and sorts the
                    # whole lane on every claim.
                    "SELECT id FROM jobs INDEXED BY jobs_claim_order"
                    " WHERE state = 'queued' AND lane = ? AND not_before <= ?"
                    " ORDER BY order_key LIMIT ?",
                    (lane, now, limit),
                )
            ]
            if not ids:
                return []
            marks = ", ".join("?" * len(ids))
            rows = conn.execute(
                "UPDATE jobs SET state = 'running', attempts = attempts + 1, lease_holder = ?,"
                " lease_expires_at = ?, heartbeat_at = ?, started_at = ?, updated_at = ?"
                f" WHERE id IN ({marks}) RETURNING {JOB_COLUMNS}",
                (holder, lease_until, now, now, now, *ids),
            ).fetchall()
            rows.sort(key=lambda row: ids.index(row[0]))
            batch.adjust_depth(lane, -len(rows))
            for row in rows:
                batch.record(
                    row[0],
                    now,
                    EventType.CLAIMED,
                    JobState.QUEUED,
                    JobState.RUNNING,
                    None,
                    f"attempt {row[13]} of {row[14]}",
                    {"holder": holder},
                )
            return rows

        rows: list[Sequence[Any]] = await self._write(write)
        return [_job(row) for row in rows]

    async def finish(self, job_id: int, holder: str, attempt: int, result: Any, now: float) -> None:
        encoded = json.dumps(result)
        tokens, cost = _usage_of(result)

        def write(batch: _Batch) -> Sequence[Any]:
            # Usage adds up: a reopened job that runs again spends again.
            row: Sequence[Any] | None = batch.conn.execute(
                "UPDATE jobs SET state = 'done', result = ?, error = NULL, finished_at = ?,"
                " updated_at = ?, lease_holder = NULL, lease_expires_at = NULL,"
                " tokens = tokens + ?, cost = cost + ?"
                " WHERE id = ? AND state = 'running' AND lease_holder = ? AND attempts = ?"
                " RETURNING id",
                (encoded, now, now, tokens, cost, job_id, holder, attempt),
            ).fetchone()
            if row is None:
                raise _refusal(batch.conn, job_id, JobState.DONE, "finish")
            batch.record(job_id, now, EventType.FINISHED, JobState.RUNNING, JobState.DONE, None, "")
            return row

        await self._write(write)

    async def fail(
        self,
        job_id: int,
        holder: str,
        attempt: int,
        error: str,
        now: float,
        retry_at: float | None,
    ) -> Job:
        def write(batch: _Batch) -> Job:
            conn = batch.conn
            row = conn.execute(
                "UPDATE jobs SET state = 'failed', error = ?, updated_at = ?,"
                " lease_holder = NULL, lease_expires_at = NULL"
                " WHERE id = ? AND state = 'running' AND lease_holder = ? AND attempts = ?"
                " RETURNING attempts, max_attempts, lane",
                (error, now, job_id, holder, attempt),
            ).fetchone()
            if row is None:
                raise _refusal(conn, job_id, JobState.FAILED, "fail")
            attempts, max_attempts, lane = row
            batch.record(
                job_id, now, EventType.FAILED, JobState.RUNNING, JobState.FAILED, None, error
            )
            if retry_at is not None:
                conn.execute(
                    "UPDATE jobs SET state = 'queued', not_before = ?, updated_at = ? WHERE id = ?",
                    (retry_at, now, job_id),
                )
                batch.adjust_depth(lane, +1)
                batch.record(
                    job_id,
                    now,
                    EventType.RETRY_SCHEDULED,
                    JobState.FAILED,
                    JobState.QUEUED,
                    Trigger.RETRY,
                    f"attempt {attempts} of {max_attempts} failed; next try in"
                    f" {max(0.0, retry_at - now):.1f}s",
                    {"not_before": retry_at},
                )
            else:
                conn.execute(
                    "UPDATE jobs SET state = 'dead', finished_at = ?, updated_at = ? WHERE id = ?",
                    (now, now, job_id),
                )
                batch.record(
                    job_id,
                    now,
                    EventType.DEAD,
                    JobState.FAILED,
                    JobState.DEAD,
                    None,
                    f"all {max_attempts} attempts failed",
                )
            return _job(
                conn.execute(f"SELECT {JOB_COLUMNS} FROM jobs WHERE id = ?", (job_id,)).fetchone()
            )

        job: Job = await self._write(write)
        return job

    async def heartbeat(
        self, job_id: int, holder: str, attempt: int, now: float, lease_until: float
    ) -> bool:
        def write(batch: _Batch) -> bool:
            cursor = batch.conn.execute(
                "UPDATE jobs SET heartbeat_at = ?, lease_expires_at = ?"
                " WHERE id = ? AND state = 'running' AND lease_holder = ? AND attempts = ?",
                (now, lease_until, job_id, holder, attempt),
            )
            return cursor.rowcount == 1

        held: bool = await self._write(write)
        return held

    async def change(self, change: Change, now: float) -> Job:
        target = change.target
        sources = sorted(state.value for state in change.allowed_from)
        marks = ", ".join("?" * len(sources))
        attempts_sql = "attempts"
        if change.reset_attempts:
            attempts_sql = "0"
        elif change.uncount_attempt:
            attempts_sql = "MAX(attempts - 1, 0)"
        finished_sql = "?" if target in TERMINAL_STATES else "NULL"

        def write(batch: _Batch) -> Job:
            conn = batch.conn
            before = conn.execute(
                "SELECT state, lane FROM jobs WHERE id = ?", (change.job_id,)
            ).fetchone()
            if before is None:
                raise UnknownJob(change.job_id)
            params: list[Any] = [target.value, now]
            if target in TERMINAL_STATES:
                params.append(now)
            lease_sql = ""
            if change.lease_expired_before is not None:
                lease_sql = " AND lease_expires_at < ?"
                params_lease: tuple[float, ...] = (change.lease_expired_before,)
            else:
                params_lease = ()
            try:
                row = conn.execute(
                    f"UPDATE jobs SET state = ?, updated_at = ?, finished_at = {finished_sql},"
                    f" attempts = {attempts_sql}, lease_holder = NULL, lease_expires_at = NULL,"
                    " not_before ="
                    " CASE WHEN ? = 'queued' THEN MAX(not_before, ?) ELSE not_before END"
                    f" WHERE id = ? AND state IN ({marks}){lease_sql} RETURNING {JOB_COLUMNS}",
                    (*params, target.value, now, change.job_id, *sources, *params_lease),
                ).fetchone()
            except sqlite3.IntegrityError:
                key, holder_id = conn.execute(
                    "SELECT j.key, h.id FROM jobs j JOIN jobs h ON h.key = j.key"
                    f" WHERE j.id = ? AND h.state NOT IN ({_TERMINAL_SQL})",
                    (change.job_id,),
                ).fetchone()
                raise KeyInUse(key, holder_id) from None
            if row is None:
                raise _refusal(conn, change.job_id, target, change.action)
            from_state = JobState(before[0])
            if from_state == JobState.QUEUED:
                batch.adjust_depth(before[1], -1)
            if target == JobState.QUEUED:
                batch.adjust_depth(before[1], +1)
            batch.record(
                change.job_id,
                now,
                change.event_type,
                from_state,
                target,
                change.trigger,
                change.note,
                change.data,
            )
            return _job(row)

        job: Job = await self._write(write)
        return job

    async def requeue_running(
        self, now: float, trigger: Trigger, note: str, holder: str | None, uncount_attempt: bool
    ) -> list[Job]:
        attempts_sql = "MAX(attempts - 1, 0)" if uncount_attempt else "attempts"
        holder_sql = "" if holder is None else " AND lease_holder = ?"
        holder_params: tuple[str, ...] = () if holder is None else (holder,)

        def write(batch: _Batch) -> list[Job]:
            if not uncount_attempt:
                # An attempt that died with its daemon counts: a job that kills
                # the daemon every time (out of memory, a crash) must not loop.
                spent = batch.conn.execute(
                    "UPDATE jobs SET state = 'dead', lease_holder = NULL, lease_expires_at = NULL,"
                    " finished_at = ?, updated_at = ?, error = ?"
                    f" WHERE state = 'running'{holder_sql} AND attempts >= max_attempts"
                    " RETURNING id, attempts",
                    (now, now, "attempts spent: the last one died with its daemon", *holder_params),
                ).fetchall()
                for job_id, attempts in spent:
                    batch.record(
                        job_id,
                        now,
                        EventType.DEAD,
                        JobState.RUNNING,
                        JobState.DEAD,
                        trigger,
                        f"{note}; but all {attempts} attempts are spent: dead",
                    )
            rows = batch.conn.execute(
                f"UPDATE jobs SET state = 'queued', attempts = {attempts_sql}, lease_holder = NULL,"
                " lease_expires_at = NULL, not_before = ?, updated_at = ?"
                f" WHERE state = 'running'{holder_sql} RETURNING {JOB_COLUMNS}",
                (now, now, *holder_params),
            ).fetchall()
            jobs = [_job(row) for row in rows]
            for job in jobs:
                batch.adjust_depth(job.lane, +1)
                batch.record(
                    job.id,
                    now,
                    EventType.REQUEUED,
                    JobState.RUNNING,
                    JobState.QUEUED,
                    trigger,
                    note,
                )
            return jobs

        jobs: list[Job] = await self._write(write)
        return jobs

    async def set_lane_paused(self, lane: str, paused: bool, reason: str, now: float) -> None:
        def write(batch: _Batch) -> None:
            batch.conn.execute(
                "INSERT INTO lanes (name, paused, changed_at, paused_reason) VALUES (?, ?, ?, ?)"
                " ON CONFLICT (name) DO UPDATE SET paused = excluded.paused,"
                " changed_at = excluded.changed_at, paused_reason = excluded.paused_reason",
                (lane, int(paused), now, reason if paused else None),
            )

        await self._write(write)

    # -- reads (on their own connection, so they never wait behind a commit) -------

    async def _read(self, function: Callable[[sqlite3.Connection], T]) -> T:
        return await self._run(self._connection(self._reader), function)

    async def get(self, job_id: int) -> Job:
        def read(conn: sqlite3.Connection) -> Job:
            row = conn.execute(f"SELECT {JOB_COLUMNS} FROM jobs WHERE id = ?", (job_id,)).fetchone()
            if row is None:
                raise UnknownJob(job_id)
            return _job(row)

        return await self._read(read)

    async def list_jobs(self, job_filter: JobFilter) -> list[Job]:
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
        if job_filter.before_id is not None:
            clauses.append("id < ?")
            params.append(job_filter.before_id)
        where = f" WHERE {' AND '.join(clauses)}" if clauses else ""
        sql = f"SELECT {JOB_COLUMNS} FROM jobs{where} ORDER BY id DESC LIMIT ?"
        params.append(job_filter.limit)

        def read(conn: sqlite3.Connection) -> list[Job]:
            return [_job(row) for row in conn.execute(sql, params)]

        return await self._read(read)

    async def events(self, job_id: int) -> list[Event]:
        def read(conn: sqlite3.Connection) -> list[Event]:
            return [
                _event(row)
                for row in conn.execute(
                    f"SELECT {EVENT_COLUMNS} FROM events WHERE job_id = ? ORDER BY id", (job_id,)
                )
            ]

        return await self._read(read)

    async def lineage(self, job_id: int) -> list[Job]:
        def read(conn: sqlite3.Connection) -> list[Job]:
            rows = conn.execute(
                "WITH RECURSIVE chain(id, depth) AS ("
                " SELECT id, 0 FROM jobs WHERE id = ?"
                " UNION ALL SELECT jobs.parent_id, chain.depth + 1 FROM jobs"
                " JOIN chain ON jobs.id = chain.id WHERE jobs.parent_id IS NOT NULL)"
                f" SELECT {', '.join('jobs.' + c.strip() for c in JOB_COLUMNS.split(','))}"
                " FROM chain JOIN jobs ON jobs.id = chain.id ORDER BY chain.depth DESC",
                (job_id,),
            ).fetchall()
            if not rows:
                raise UnknownJob(job_id)
            return [_job(row) for row in rows]

        return await self._read(read)

    async def lanes(self, names: Sequence[str]) -> list[LaneRow]:
        def read(conn: sqlite3.Connection) -> list[LaneRow]:
            flags = {
                row[0]: (bool(row[1]), row[2])
                for row in conn.execute("SELECT name, paused, paused_reason FROM lanes")
            }
            counts: dict[tuple[str, str], int] = {
                (row[0], row[1]): row[2]
                for row in conn.execute(
                    "SELECT lane, state, COUNT(*) FROM jobs"
                    " WHERE state IN ('queued', 'running') GROUP BY lane, state"
                )
            }
            result = []
            for name in names:
                (oldest,) = conn.execute(
                    "SELECT MIN(created_at) FROM jobs WHERE state = 'queued' AND lane = ?", (name,)
                ).fetchone()
                paused, reason = flags.get(name, (False, None))
                result.append(
                    LaneRow(
                        name=name,
                        paused=paused,
                        paused_reason=reason,
                        queued=counts.get((name, "queued"), 0),
                        running=counts.get((name, "running"), 0),
                        oldest_queued_at=oldest,
                    )
                )
            return result

        return await self._read(read)

    async def next_due(self, lane: str, now: float) -> float | None:
        def read(conn: sqlite3.Connection) -> float | None:
            (due,) = conn.execute(
                "SELECT MIN(not_before) FROM jobs WHERE state = 'queued' AND lane = ?"
                " AND not_before > ?",
                (lane, now),
            ).fetchone()
            return None if due is None else float(due)

        return await self._read(read)

    async def _select_jobs(self, where: str, params: Sequence[Any]) -> list[Job]:
        """Jobs matching a WHERE clause (with its ORDER BY and LIMIT), on the reader."""
        sql = f"SELECT {JOB_COLUMNS} FROM jobs WHERE {where}"

        def read(conn: sqlite3.Connection) -> list[Job]:
            return [_job(row) for row in conn.execute(sql, params)]

        return await self._read(read)

    async def expired_leases(self, now: float) -> list[Job]:
        return await self._select_jobs(
            "state = 'running' AND lease_expires_at < ? ORDER BY id", (now,)
        )

    async def waiting_since(self, lane: str, before: float) -> list[Job]:
        return await self._select_jobs(
            "state = 'queued' AND lane = ? AND created_at < ? ORDER BY id LIMIT 1000",
            (lane, before),
        )

    async def recently_stalled(self, since: float) -> list[Job]:
        return await self._select_jobs(
            "id IN (SELECT job_id FROM events WHERE type = 'stalled' AND at >= ?)"
            " ORDER BY id DESC LIMIT 1000",
            (since,),
        )

    async def flag(self, job_id: int, event_type: EventType, note: str, now: float) -> bool:
        """Record an event that changes no state, once per job and type; True if recorded."""

        def write(batch: _Batch) -> bool:
            row = batch.conn.execute(
                "SELECT state, EXISTS (SELECT 1 FROM events WHERE job_id = ? AND type = ?)"
                " FROM jobs WHERE id = ?",
                (job_id, event_type.value, job_id),
            ).fetchone()
            if row is None:
                raise UnknownJob(job_id)
            already_in_batch = any(
                fact[1] == job_id and fact[3] == event_type for fact in batch.event_facts
            )
            if row[1] or already_in_batch:
                return False
            state = JobState(row[0])
            batch.record(job_id, now, event_type, state, state, None, note)
            return True

        flagged: bool = await self._write(write)
        return flagged

    async def latest_done(self, kind: str) -> Job | None:
        def read(conn: sqlite3.Connection) -> Job | None:
            row = conn.execute(
                f"SELECT {JOB_COLUMNS} FROM jobs WHERE kind = ? AND state = 'done'"
                " ORDER BY id DESC LIMIT 1",
                (kind,),
            ).fetchone()
            return None if row is None else _job(row)

        return await self._read(read)

    async def size_bytes(self) -> int:
        """The database and its write-ahead log on disk (stat on the reader's thread)."""

        def read(_conn: sqlite3.Connection) -> int:
            total = 0
            for suffix in ("", "-wal"):
                with contextlib.suppress(OSError):
                    total += os.stat(f"{self.path}{suffix}").st_size
            return total

        return await self._read(read)

    async def count_by_state(self) -> dict[JobState, int]:
        def read(conn: sqlite3.Connection) -> dict[JobState, int]:
            counts = {state: 0 for state in JobState}
            for state, count in conn.execute("SELECT state, COUNT(*) FROM jobs GROUP BY state"):
                counts[JobState(state)] = count
            return counts

        return await self._read(read)

    # -- the autonomy tax, the governor and projects (maintenance) -------------------------

    async def usage(self, since: float, until: float) -> list[UsageRow]:
        """Jobs created in [since, until], summed per lane, kind and project."""

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
                for row in conn.execute(
                    "SELECT lane, kind, project, COUNT(*),"
                    " TOTAL(CASE WHEN finished_at IS NOT NULL AND started_at IS NOT NULL"
                    " THEN MAX(finished_at - started_at, 0) END), TOTAL(tokens), TOTAL(cost)"
                    " FROM jobs INDEXED BY jobs_by_created WHERE created_at BETWEEN ? AND ?"
                    " GROUP BY lane, kind, project",
                    (since, until),
                )
            ]

        return await self._read(read)

    async def attempt_outcomes(self, lane: str, after: float) -> dict[str, tuple[int, int]]:
        """Per kind, the attempts of a lane's jobs that ended after `after`: (finished, failed)."""

        def read(conn: sqlite3.Connection) -> dict[str, tuple[int, int]]:
            return {
                row[0]: (row[1], row[2])
                for row in conn.execute(
                    "SELECT jobs.kind, SUM(events.type = 'finished'), SUM(events.type = 'failed')"
                    " FROM events INDEXED BY events_outcomes JOIN jobs ON jobs.id = events.job_id"
                    " WHERE events.type IN ('finished', 'failed') AND events.at > ?"
                    " AND jobs.lane = ? GROUP BY jobs.kind",
                    (after, lane),
                )
            }

        return await self._read(read)

    async def lanes_resumed_at(self) -> dict[str, float]:
        """Open lanes that were paused once, with the time they were last resumed."""

        def read(conn: sqlite3.Connection) -> dict[str, float]:
            return {
                name: float(at)
                for name, at in conn.execute(
                    "SELECT name, changed_at FROM lanes WHERE paused = 0 AND changed_at IS NOT NULL"
                )
            }

        return await self._read(read)

    async def live_projects(self) -> set[str]:
        """Projects that have a live job (in any lane)."""
        live = ", ".join(f"'{state.value}'" for state in sorted(LIVE_STATES))

        def read(conn: sqlite3.Connection) -> set[str]:
            return {
                row[0]
                for row in conn.execute(
                    f"SELECT DISTINCT project FROM jobs WHERE state IN ({live})"
                    " AND project IS NOT NULL"
                )
            }

        return await self._read(read)

    # -- retention, aging and gates (maintenance) ----------------------------------------

    async def prune_finished(self, before: float, max_rows: int) -> Pruned:
        """Delete finished jobs that ended before `before`, with their events: one bounded write.

        Oldest first, at most `max_rows` rows (a job and its events count
        together; one job always goes, however many events it has). A job that
        another job names as its parent or root stays until that one is gone,
        so a lineage never has a hole, and a chain goes leaf first over
        several writes. Ids are handed out as MAX(id) + 1, so the newest job
        and the owner of the newest event also stay: no id is ever reused.
        """

        def write(batch: _Batch) -> Pruned:
            conn = batch.conn
            rows = conn.execute(
                # Oldest first along the finished_at index, stopping at the limit;
                # left to itself the planner walks every finished job by state.
                "SELECT j.id, (SELECT COUNT(*) FROM events e WHERE e.job_id = j.id)"
                " FROM jobs j INDEXED BY jobs_by_finished"
                f" WHERE j.finished_at < ? AND j.state IN ({_TERMINAL_SQL})"
                " AND j.id < (SELECT MAX(id) FROM jobs)"
                " AND j.id IS NOT (SELECT job_id FROM events ORDER BY id DESC LIMIT 1)"
                " AND NOT EXISTS (SELECT 1 FROM jobs c WHERE c.parent_id = j.id)"
                " AND NOT EXISTS (SELECT 1 FROM jobs c WHERE c.root_id = j.id AND c.id != j.id)"
                " ORDER BY j.finished_at, j.id LIMIT ?",
                (before, max_rows),
            ).fetchall()
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
            marks = ", ".join("?" * len(ids))
            deleted_events = conn.execute(
                f"DELETE FROM events WHERE job_id IN ({marks})", ids
            ).rowcount
            deleted_jobs = conn.execute(f"DELETE FROM jobs WHERE id IN ({marks})", ids).rowcount
            return Pruned(jobs=deleted_jobs, events=deleted_events)

        pruned: Pruned = await self._write(write)
        return pruned

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

        self._connection(self._writer)  # refuse once closed, like every other call
        self._in_flight += 1
        try:
            await anyio.to_thread.run_sync(copy)
        except (OSError, sqlite3.Error) as exc:
            raise StoreError(f"the store could not be backed up to {target}: {exc}") from exc
        finally:
            self._in_flight -= 1

    async def record_aging(
        self, lane: str, aging_seconds: float, now: float, limit: int
    ) -> list[int]:
        """Record an `aged` event on up to `limit` queued jobs of `lane` that aged another step.

        A job's steps are whole aging steps waited since it was submitted; it
        gets an event when they exceed the steps of its last `aged` event
        (kept in the event's data). Nothing about the job itself changes.
        """

        def write(batch: _Batch) -> list[int]:
            rows = batch.conn.execute(
                "SELECT id, priority, steps FROM (SELECT id, priority, order_key,"
                " CAST((? - created_at) / ? AS INTEGER) AS steps,"
                " IFNULL((SELECT json_extract(data, '$.steps') FROM events"
                "  WHERE events.job_id = jobs.id AND type = ? ORDER BY id DESC LIMIT 1), 0) AS last"
                " FROM jobs WHERE state = 'queued' AND lane = ? AND created_at <= ?)"
                " WHERE steps > last ORDER BY order_key LIMIT ?",
                (now, aging_seconds, EventType.AGED.value, lane, now - aging_seconds, limit),
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

        aged: list[int] = await self._write(write)
        return aged

    async def done_lacking(
        self, kinds: Sequence[str], event_type: EventType, after_id: int, limit: int
    ) -> list[Job]:
        """Done jobs of `kinds` with no event of `event_type`, by id after `after_id`."""
        if not kinds:
            return []
        marks = ", ".join("?" * len(kinds))

        def read(conn: sqlite3.Connection) -> list[Job]:
            return [
                _job(row)
                for row in conn.execute(
                    f"SELECT {JOB_COLUMNS} FROM jobs WHERE state = 'done' AND kind IN ({marks})"
                    " AND id > ? AND NOT EXISTS (SELECT 1 FROM events"
                    " WHERE events.job_id = jobs.id AND events.type = ?) ORDER BY id LIMIT ?",
                    (*kinds, after_id, event_type.value, limit),
                )
            ]

        return await self._read(read)


def _usage_of(result: Any) -> tuple[int, float]:
    """(tokens, cost) from a result shaped {"usage": {"tokens": N, "cost": C}}; else nothing."""
    usage = result.get("usage") if isinstance(result, dict) else None
    if not isinstance(usage, dict):
        return 0, 0.0
    return int(_amount(usage.get("tokens"))), _amount(usage.get("cost"))


def _amount(value: Any) -> float:
    """A usage figure: a finite number, 0 or more; anything else counts as 0."""
    if isinstance(value, bool) or not isinstance(value, int | float):
        return 0.0
    return float(value) if math.isfinite(value) and value >= 0 else 0.0


def _record_duplicate(
    batch: _Batch, holder: Sequence[Any], source: str, trigger: Trigger, reason: str, now: float
) -> None:
    who = source or trigger.value
    note = f"duplicate submit from {who}" + (f": {reason}" if reason else "")
    state = JobState(holder[7])
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


class _CommittedEvents(Sequence[Event]):
    """A batch's events, built only if someone reads them (most batches have no reader)."""

    def __init__(self, facts: list[tuple[Any, ...]]) -> None:
        self._facts = facts
        self._events: list[Event] | None = None

    def _built(self) -> list[Event]:
        if self._events is None:
            self._events = [_event_from_facts(fact) for fact in self._facts]
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


def _event_from_facts(fact: tuple[Any, ...]) -> Event:
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


def _apply(
    conn: sqlite3.Connection, pending: list[_Pending], depths: dict[str, int]
) -> tuple[list[tuple[bool, Any]], list[tuple[Any, ...]], dict[str, int]]:
    """Run a batch of writes in one transaction.

    Every write checks before it writes, and its first write is the
    compare-and-set that can refuse; so a domain error leaves nothing behind
    and needs no savepoint. Anything else (a bug, an I/O error) rolls the
    whole transaction back, fails that one write, and runs the rest again.
    """
    outcomes: dict[int, tuple[bool, Any]] = {}
    while True:
        conn.execute("BEGIN IMMEDIATE")
        try:
            (last_job,) = conn.execute("SELECT IFNULL(MAX(id), 0) FROM jobs").fetchone()
            (last_event,) = conn.execute("SELECT IFNULL(MAX(id), 0) FROM events").fetchone()
            batch = _Batch(conn, dict(depths), last_job + 1, last_event + 1)
            results: dict[int, tuple[bool, Any]] = {}
            culprit: tuple[int, Exception] | None = None
            for index, item in enumerate(pending):
                if index in outcomes:
                    continue
                mark = batch.mark()
                try:
                    results[index] = (True, item.write(batch))
                except InterlockError as exc:
                    batch.undo(mark)
                    results[index] = (False, exc)
                except Exception as exc:
                    culprit = (index, exc)
                    break
            if culprit is None:
                batch.write_events()
                conn.execute("COMMIT")
                outcomes.update(results)
                ordered = [outcomes[i] for i in range(len(pending))]
                return ordered, batch.event_facts, batch.depths
        except BaseException:
            if conn.in_transaction:
                conn.execute("ROLLBACK")
            raise
        conn.execute("ROLLBACK")
        outcomes[culprit[0]] = (False, culprit[1])


def _migrate(conn: sqlite3.Connection) -> None:
    """Apply every migration newer than the file's user_version, each in its own transaction."""
    (version,) = conn.execute("PRAGMA user_version").fetchone()
    folder = resources.files("interlock.store") / "migrations"
    scripts = sorted(
        (entry.name, entry) for entry in folder.iterdir() if entry.name.endswith(".sql")
    )
    for name, entry in scripts:
        number = int(name.split("_", 1)[0])
        if number <= version:
            continue
        sql = entry.read_text(encoding="utf-8")
        conn.executescript(f"BEGIN IMMEDIATE;\n{sql}\nPRAGMA user_version = {number};\nCOMMIT;")


__all__ = ["LIVE_STATES", "SQLiteStore", "StoreError"]
