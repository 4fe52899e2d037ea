"""Committed transitions fanned out to subscribers, bounded per subscriber.

A subscriber that falls behind is dropped rather than allowed to slow the
daemon: it learns so through `overflowed` and can reconnect and re-read.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import anyio

from interlock.domain import Event


@dataclass(frozen=True)
class LaneNotice:
    """A lane was paused or resumed."""

    lane: str
    paused: bool
    reason: str
    at: float
    actor: str = ""


Notice = Event | LaneNotice


class Subscription:
    """One subscriber's bounded inbox."""

    def __init__(self, bus: Bus, capacity: int) -> None:
        self._bus = bus
        self._capacity = capacity
        self._queue: deque[Notice] = deque()
        self._ready = anyio.Event()
        self.overflowed = False
        self.closed = False

    def _offer(self, notices: Sequence[Notice]) -> None:
        if self.closed:
            return
        if len(self._queue) + len(notices) > self._capacity:
            self.overflowed = True
            self.close()
            return
        self._queue.extend(notices)
        self._ready.set()

    async def receive(self) -> list[Notice]:
        """Wait for at least one notice and return all that are waiting; [] once closed."""
        while not self._queue and not self.closed:
            await self._ready.wait()
            self._ready = anyio.Event()
        taken = list(self._queue)
        self._queue.clear()
        return taken

    def close(self) -> None:
        """Stop receiving; wakes a pending receive."""
        if not self.closed:
            self.closed = True
            self._bus._remove(self)
            self._ready.set()


class Bus:
    """The in-process event bus: publish after commit, fan out to every subscriber."""

    def __init__(self) -> None:
        self._subscriptions: list[Subscription] = []
        self._watchers: list[Callable[[Sequence[Notice]], None]] = []

    def subscribe(self, capacity: int) -> Subscription:
        """A new subscription that sees every notice published from now on."""
        subscription = Subscription(self, capacity)
        self._subscriptions.append(subscription)
        return subscription

    def watch(self, callback: Callable[[Sequence[Notice]], None]) -> Callable[[], None]:
        """Call `callback` synchronously on every publish; returns a function that stops it."""
        self._watchers.append(callback)
        return lambda: self._watchers.remove(callback)

    def publish(self, notices: Sequence[Notice]) -> None:
        """Hand committed notices to everyone listening."""
        for watcher in self._watchers:
            watcher(notices)
        for subscription in list(self._subscriptions):
            subscription._offer(notices)

    def _remove(self, subscription: Subscription) -> None:
        if subscription in self._subscriptions:
            self._subscriptions.remove(subscription)

    @property
    def subscriber_count(self) -> int:
        """How many subscriptions are open."""
        return len(self._subscriptions)
