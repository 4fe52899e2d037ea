"""The store runs whole batches on aiosqlite's thread through a private hook; pin it."""

from __future__ import annotations

import inspect
import threading
from pathlib import Path

import aiosqlite
import pytest

from interlock.store.sqlite import SQLiteStore

pytestmark = pytest.mark.anyio


def test_aiosqlite_still_has_the_hook_the_store_uses() -> None:
    assert inspect.iscoroutinefunction(aiosqlite.Connection._execute)
    assert isinstance(aiosqlite.Connection._conn, property)


async def test_a_function_runs_on_the_connection_thread_in_one_call(home: Path) -> None:
    store = SQLiteStore(home / "x.db")
    await store.open()
    try:
        assert store._writer is not None
        thread = await store._run(store._writer, lambda conn: threading.current_thread())
        assert thread is not threading.current_thread()
        version = await store._run(
            store._writer, lambda conn: conn.execute("PRAGMA user_version").fetchone()[0]
        )
        assert version >= 1  # migrations ran
        assert store.idle
    finally:
        await store.close()
