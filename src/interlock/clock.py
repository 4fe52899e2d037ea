"""Time, injected: the real clock for the daemon, a controllable one for tests."""

from __future__ import annotations

import math
import time
from typing import Protocol

import anyio


class Clock(Protocol):
    """Where every timer, lease, backoff and age gets its time."""

    def now(self) -> float:
        """Seconds since the epoch."""
        ...

    async def sleep_until(self, deadline: float) -> None:
        """Return once now() >= deadline (cancellable)."""
        ...


class SystemClock:
    """Wall-clock time from the operating system."""

    def now(self) -> float:
        return time.time()

    async def sleep_until(self, deadline: float) -> None:
        delay = deadline - time.time()
        if delay > 0:
            await anyio.sleep(delay)


class FakeClock:
    """A clock that moves only when a test advances it."""

    def __init__(self, start: float = 1_700_000_000.0) -> None:
        self._now = start
        self._changed = anyio.Event()

    def now(self) -> float:
        return self._now

    async def sleep_until(self, deadline: float) -> None:
        while self._now < deadline:
            await self._changed.wait()

    def advance(self, seconds: float) -> None:
        """Move time forward and wake every sleeper whose deadline has come."""
        if seconds < 0 or math.isnan(seconds):
            raise ValueError("time only moves forward")
        self._now += seconds
        self._changed.set()
        self._changed = anyio.Event()
