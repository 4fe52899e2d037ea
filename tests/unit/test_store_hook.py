"""The store runs whole batches on aiosqlite's thread through a private hook; pin it."""

from __future__ import annotations

import inspect
import threading
from pathlib import Path

import aiosqlite
import pytest

from interlock.store.engine import Engine

pytestmark = pytest.mark.anyio


def test_aiosqlite_still_has_the_hook_the_store_uses() -> None:
    assert inspect.iscoroutinefunction(aiosqlite.Connection._execute)
    assert isinstance(aiosqlite.Connection._conn, property)


async def test_a_function_runs_on_the_connection_thread_in_one_call(home: Path) -> None:
    engine = Engine(home / "x.db")
    await engine.open()
    try:
        writer = engine._connection(engine._writer)
        thread = await engine._run(writer, lambda conn: threading.current_thread())
        assert thread is not threading.current_thread()
        version = await engine._run(
            writer, lambda conn: conn.execute("PRAGMA user_version").fetchone()[0]
        )
        assert version >= 1  # migrations ran
        assert engine.idle
    finally:
        await engine.close()
