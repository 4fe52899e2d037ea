"""The commit engine: group commit over one SQLite file, through aiosqlite.

A write is a small function that runs on the writer connection's thread and
is handed a `Batch`. Writes that arrive while a batch commits wait, and go
together in the next one: one thread round trip and one transaction carry
the whole batch.

Inside the transaction each write runs in its own savepoint. A write that
raises, whatever it had written before it raised, is rolled back to its
savepoint alone, and its caller gets the exception; the batch's other writes
commit. Only when SQLite itself abandons the transaction (a full disk can do
that) is the batch run again without the write that failed. A transition and
its event always commit together, because one write records both.

Reads run on a second connection, so they never wait behind a commit, and
WAL checkpoints on a third, off the commit path. The engine knows nothing of
jobs: the queries and their meaning live in sqlite.py and queries.sql.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import sqlite3
from collections.abc import Callable
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any, Literal, TypeVar

import aiosqlite
import anyio
import anyio.to_thread

from interlock.clock import Clock, SystemClock
from interlock.domain import EventType, JobState, Trigger
from interlock.errors import StoreError
from interlock.store.queries import Q
from interlock.store.rows import EventFacts, event_row

T = TypeVar("T")

log = logging.getLogger(__name__)

# Batches one writer may commit for others before it hands the lead on: enough
# to keep the database thread busy under load, few enough (a few milliseconds)
# that no caller waits long for its own result.
BATCHES_PER_LEADER = 8

# A checkpoint runs after this many rows were written (a few MB of WAL at
# most), or once this long has passed since the last one with anything
# written: the WAL of a quiet daemon is folded back in too.
CHECKPOINT_EVERY_ROWS = 10_000
CHECKPOINT_EVERY_SECONDS = 30.0
# After a checkpoint, the WAL file is cut back to this size when SQLite next
# starts it over (journal_size_limit): a burst does not leave a big file behind.
WAL_SIZE_LIMIT = 4 * 1024 * 1024

_SAVEPOINT = "SAVEPOINT write"
_RELEASE = "RELEASE write"
_ROLLBACK_TO = "ROLLBACK TO write"


@dataclass
class Batch:
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
    event_facts: list[EventFacts] = field(default_factory=list)

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
        encoded: str | None = None,
    ) -> None:
        """An event, written with the batch; `encoded` is `data` as JSON, if already known."""
        event_id = self.next_event_id
        self.next_event_id += 1
        facts = (event_id, job_id, now, event_type, from_state, to_state, trigger, note, data)
        self.event_rows.append(event_row(*facts, encoded))
        self.event_facts.append(facts)

    def recorded(self, job_id: int, event_type: EventType) -> bool:
        """Whether this batch already holds an event of this type for the job."""
        return any(fact[1] == job_id and fact[3] == event_type for fact in self.event_facts)

    def take_job_id(self) -> int:
        """The id of the next job inserted."""
        job_id = self.next_job_id
        self.next_job_id += 1
        return job_id

    def queued_depth(self, lane: str) -> int:
        """Queued jobs in a lane, counted once per store and kept up to date."""
        if lane not in self.depths:
            (count,) = self.conn.execute(Q["queued_depth"], (lane,)).fetchone()
            self.depths[lane] = count
        return self.depths[lane]

    def adjust_depth(self, lane: str, delta: int) -> None:
        """A job entered (+1) or left (-1) a lane's queue."""
        if lane in self.depths:
            self.depths[lane] += delta

    def _mark(self) -> tuple[int, int, int, dict[str, int]]:
        return len(self.event_rows), self.next_job_id, self.next_event_id, dict(self.depths)

    def _undo(self, mark: tuple[int, int, int, dict[str, int]]) -> None:
        events, self.next_job_id, self.next_event_id, self.depths = mark
        del self.event_facts[events:]
        del self.event_rows[events:]

    def _write_events(self) -> None:
        self.conn.executemany(Q["insert_events"], self.event_rows)


Write = Callable[[Batch], Any]
CommitListener = Callable[[list[EventFacts]], None]


def _wake(pending: _Pending) -> None:
    if pending.wake is not None and not pending.wake.done():
        pending.wake.set_result(None)


@dataclass
class _Pending:
    """One write waiting for a batch: woken with its outcome, or to lead the next batch."""

    write: Write
    # Made only when the writer has to wait; a bare future, as this runs per write.
    wake: asyncio.Future[None] | None = None
    outcome: tuple[bool, Any] | None = None
    promoted: bool = False
    abandoned: bool = False  # its caller was cancelled while it waited


class Engine:
    """One SQLite file: a writer with group commit, a reader, and a checkpointer."""

    def __init__(
        self,
        path: Path,
        durability: Literal["normal", "full"] = "normal",
        clock: Clock | None = None,
    ) -> None:
        self.path = path
        self.durability = durability
        self.clock = clock or SystemClock()
        self._writer: aiosqlite.Connection | None = None
        self._reader: aiosqlite.Connection | None = None
        self._checkpointer: aiosqlite.Connection | None = None
        self._pending: list[_Pending] = []
        self._flushing = False
        self._flushed = anyio.Event()  # set each time a leader finishes committing
        self._listeners: list[CommitListener] = []
        self._in_flight = 0
        self._rows_since_checkpoint = 0
        self._checkpoint_due = anyio.Event()
        # Queued jobs per lane, for the depth check; counted once, then kept
        # up to date by every committed batch (this engine is the only writer).
        self._depths: dict[str, int] = {}

    # -- lifecycle ---------------------------------------------------------------

    async def open(self) -> None:
        """Connect, check the schema version and run the forward migrations."""
        try:
            self._writer = await aiosqlite.connect(self.path, isolation_level=None)
            await self._run(self._writer, self._configure)
            await self._run(self._writer, lambda conn: migrate(conn, self.path))
            self._reader = await aiosqlite.connect(self.path, isolation_level=None)
            await self._run(self._reader, self._configure)
        except BaseException as exc:
            # Close what opened, or its thread keeps the process alive.
            with anyio.CancelScope(shield=True):
                await self._close_connections()
            if isinstance(exc, sqlite3.Error):
                raise StoreError(f"cannot open the store {self.path}: {exc}") from exc
            raise

    def _configure(self, conn: sqlite3.Connection) -> None:
        conn.execute("PRAGMA busy_timeout = 5000")
        conn.execute("PRAGMA journal_mode = WAL")
        conn.execute(f"PRAGMA synchronous = {self.durability.upper()}")
        conn.execute("PRAGMA foreign_keys = ON")
        conn.execute(f"PRAGMA journal_size_limit = {WAL_SIZE_LIMIT}")

    async def run_checkpoints(self) -> None:
        """Copy the WAL back into the database off the commit path, until cancelled.

        SQLite's automatic checkpoint runs inside whichever commit crosses the
        threshold and stalls it for milliseconds; here a third connection does
        the work on its own thread, and commits never wait for it. It runs
        after CHECKPOINT_EVERY_ROWS rows, or CHECKPOINT_EVERY_SECONDS after
        anything was written, so a quiet daemon's WAL stays small too.
        """
        writer = self._connection(self._writer)
        self._checkpointer = await aiosqlite.connect(self.path, isolation_level=None)
        try:
            await self._run(self._checkpointer, self._configure)
            await self._run(writer, lambda conn: conn.execute("PRAGMA wal_autocheckpoint = 0"))
            while True:
                with anyio.move_on_after(CHECKPOINT_EVERY_SECONDS):
                    await self._checkpoint_due.wait()
                if self._rows_since_checkpoint == 0:
                    continue
                self._checkpoint_due = anyio.Event()
                self._rows_since_checkpoint = 0
                try:
                    await self._run(
                        self._checkpointer,
                        lambda conn: conn.execute("PRAGMA wal_checkpoint(PASSIVE)"),
                    )
                except sqlite3.Error as exc:
                    log.error("checkpoint of %s failed: %s", self.path, exc)
        finally:
            with anyio.CancelScope(shield=True):
                if self._writer is not None:
                    with contextlib.suppress(Exception):
                        await self._run(
                            self._writer,
                            lambda conn: conn.execute("PRAGMA wal_autocheckpoint = 1000"),
                        )
                checkpointer, self._checkpointer = self._checkpointer, None
                with contextlib.suppress(Exception):
                    await checkpointer.close()

    async def close(self) -> None:
        """Commit what is pending, fold the WAL in, disconnect: always, whatever fails.

        A failing final checkpoint (a full disk, a read-only file) is logged;
        the connections close anyway, or aiosqlite's threads would keep the
        process alive holding the lock.
        """
        try:
            if self._flushing:
                await self._flushed.wait()
            if self._pending:  # writes whose callers were cancelled: commit them too
                with contextlib.suppress(StoreError):
                    await self.write(lambda batch: None)
            if self._writer is not None:
                await self._run(
                    self._writer, lambda conn: conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
                )
        except Exception as exc:
            log.error("the store %s did not close cleanly: %s", self.path, exc)
        finally:
            await self._close_connections()

    async def _close_connections(self) -> None:
        connections = (self._reader, self._writer)
        self._reader = self._writer = None
        for conn in connections:
            if conn is not None:
                try:
                    await conn.close()
                except Exception as exc:
                    log.error("closing a connection to %s failed: %s", self.path, exc)
                    with contextlib.suppress(Exception):
                        conn.stop()  # end its thread anyway

    def on_commit(self, listener: CommitListener) -> None:
        """Call `listener` with the events of each committed batch, in commit order."""
        self._listeners.append(listener)

    async def _run(
        self, conn: aiosqlite.Connection, function: Callable[[sqlite3.Connection], T]
    ) -> T:
        # aiosqlite's public calls each cost one thread round trip (120-150 us);
        # its `_execute` runs a whole function on the connection's thread in
        # one. aiosqlite is pinned to a minor version for this reason, and
        # tests/unit/test_store_hook.py fails loudly if the hook disappears.
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
            raise StoreError(f"the store {self.path} is closed")
        return which

    async def in_thread(self, function: Callable[[], T]) -> T:
        """Run blocking file work (a backup) in a worker thread, counted as store work."""
        self._connection(self._writer)  # refuse once closed, like every other call
        self._in_flight += 1
        try:
            return await anyio.to_thread.run_sync(function)
        finally:
            self._in_flight -= 1

    # -- reads ---------------------------------------------------------------------

    async def read(self, function: Callable[[sqlite3.Connection], T]) -> T:
        """Run a read on the reader connection."""
        try:
            return await self._run(self._connection(self._reader), function)
        except sqlite3.Error as exc:
            raise StoreError(f"the store {self.path} could not be read: {exc}") from exc

    # -- group commit ------------------------------------------------------------

    async def write(self, write: Write) -> Any:
        """Queue a write and return its result once its batch has committed.

        The first writer to find no batch in progress leads: it commits
        everything queued, its own write included, then hands the lead to the
        oldest waiter still waiting, so nobody leads for more than a few batches.
        A queued write always commits, even if its caller is cancelled while
        it waits (the next leader, or close, commits it); the cancelled caller
        just never sees the result.
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
            outcomes, facts, depths, rows = await self._run(
                writer, lambda conn: _apply(conn, batch, self._depths)
            )
        except Exception as exc:  # the transaction as a whole failed
            error = (
                exc
                if isinstance(exc, StoreError)
                else StoreError(f"the store {self.path} could not commit: {exc}")
            )
            for pending in batch:
                pending.outcome = (False, error)
                _wake(pending)
            return
        self._depths = depths  # adopted only once committed
        self._rows_since_checkpoint += rows
        if self._rows_since_checkpoint >= CHECKPOINT_EVERY_ROWS:
            self._checkpoint_due.set()
        for pending, outcome in zip(batch, outcomes, strict=True):
            pending.outcome = outcome
            _wake(pending)
        if facts:
            for listener in self._listeners:
                try:
                    listener(facts)
                except Exception:
                    log.exception("a commit listener failed; the commit stands")


def _apply(
    conn: sqlite3.Connection, pending: list[_Pending], depths: dict[str, int]
) -> tuple[list[tuple[bool, Any]], list[EventFacts], dict[str, int], int]:
    """Run a batch of writes in one transaction, each in its own savepoint.

    Returns each write's outcome, the committed events, the lane depths after
    the batch and about how many rows it wrote (for the checkpoint pacing).
    """
    outcomes: dict[int, tuple[bool, Any]] = {}
    while True:
        conn.execute("BEGIN IMMEDIATE")
        changes_before = conn.total_changes
        try:
            (last_job,) = conn.execute(Q["max_job_id"]).fetchone()
            (last_event,) = conn.execute(Q["max_event_id"]).fetchone()
            batch = Batch(conn, dict(depths), last_job + 1, last_event + 1)
            results: dict[int, tuple[bool, Any]] = {}
            abandoned: tuple[int, Exception] | None = None
            for index, item in enumerate(pending):
                if index in outcomes:
                    continue
                mark = batch._mark()
                conn.execute(_SAVEPOINT)
                try:
                    results[index] = (True, item.write(batch))
                except Exception as exc:
                    batch._undo(mark)
                    if not conn.in_transaction:
                        # SQLite gave the whole transaction up (SQLITE_FULL can):
                        # run the batch again without this write.
                        abandoned = (index, _as_store_error(exc))
                        break
                    conn.execute(_ROLLBACK_TO)
                    conn.execute(_RELEASE)
                    results[index] = (False, _as_store_error(exc))
                else:
                    conn.execute(_RELEASE)
            if abandoned is None:
                batch._write_events()
                conn.execute("COMMIT")
                outcomes.update(results)
                ordered = [outcomes[i] for i in range(len(pending))]
                rows = conn.total_changes - changes_before
                return ordered, batch.event_facts, batch.depths, rows
        except BaseException:
            if conn.in_transaction:
                conn.execute("ROLLBACK")
            raise
        outcomes[abandoned[0]] = (False, abandoned[1])


def _as_store_error(exc: Exception) -> Exception:
    """A database error as the store's own error; domain errors and bugs stay as they are."""
    if isinstance(exc, sqlite3.Error):
        return StoreError(f"the store could not write: {exc}")
    return exc


def migrate(conn: sqlite3.Connection, path: Path) -> None:
    """Apply every migration newer than the file's user_version, each in its own transaction.

    A file from a newer interlock (a version past the last migration known
    here) is refused before anything is written to it.
    """
    (version,) = conn.execute(Q["schema_version"]).fetchone()
    folder = resources.files("interlock.store") / "migrations"
    scripts = sorted(
        (int(entry.name.split("_", 1)[0]), entry)
        for entry in folder.iterdir()
        if entry.name.endswith(".sql")
    )
    newest = scripts[-1][0] if scripts else 0
    if version > newest:
        raise StoreError(
            f"the store {path} has schema version {version}, newer than this interlock knows"
            f" (up to {newest}): upgrade interlock, or point store.path at another file"
        )
    for number, entry in scripts:
        if number <= version:
            continue
        sql = entry.read_text(encoding="utf-8")
        conn.executescript(f"BEGIN IMMEDIATE;\n{sql}\nPRAGMA user_version = {number};\nCOMMIT;")
