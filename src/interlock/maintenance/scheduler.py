"""Timers: each submits one maintenance job per time slot, keyed by the slot.

Slot n of a timer starts at n * interval (seconds since the epoch) and fires
a fixed fraction of the jitter later, derived from the timer's name and the
slot, so a restarted daemon computes the same moment and the same key. A
tick that is doubled or replayed collapses into the job that already ran
(the maintenance kinds keep their keys for a day); after downtime a timer
fires once, for the current slot, not once per slot it missed.
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import math
from datetime import UTC, datetime, timedelta

import anyio
from cronsim import CronSim

from interlock.clock import Clock
from interlock.config import TimerConfig
from interlock.domain import JobSpec, SubmitResult, Trigger
from interlock.errors import BadRequest, ConfigError, InterlockError
from interlock.hub import Hub

log = logging.getLogger(__name__)

DAY = 86_400.0


def slot_of(timer: TimerConfig, now: float) -> int:
    """The slot `now` falls in: an interval's number, or a cron time's epoch second."""
    if timer.cron is not None:
        moment = datetime.fromtimestamp(now).astimezone() + timedelta(seconds=1)
        return int(next(CronSim(timer.cron, moment, reverse=True)).timestamp())
    assert timer.interval_seconds is not None
    return math.floor(now / timer.interval_seconds)


def slot_start(timer: TimerConfig, slot: int) -> float:
    """When a slot begins."""
    if timer.cron is not None:
        return float(slot)
    assert timer.interval_seconds is not None
    return slot * timer.interval_seconds


def next_slot(timer: TimerConfig, slot: int) -> int:
    """The slot after `slot`."""
    if timer.cron is not None:
        after = datetime.fromtimestamp(slot).astimezone()
        return int(next(CronSim(timer.cron, after)).timestamp())
    return slot + 1


def jitter_of(name: str, slot: int, jitter_seconds: float) -> float:
    """A fixed offset in [0, jitter_seconds) for this timer and slot."""
    if jitter_seconds <= 0:
        return 0.0
    digest = hashlib.blake2b(f"{name}:{slot}".encode(), digest_size=8).digest()
    fraction = int.from_bytes(digest, "big") / 2**64
    return fraction * jitter_seconds


def fire_at(name: str, timer: TimerConfig, slot: int) -> float:
    """When slot `slot` of the timer fires."""
    return slot_start(timer, slot) + jitter_of(name, slot, timer.jitter_seconds)


def slot_key(name: str, slot: int) -> str:
    """The idempotency key of a timer's slot."""
    return f"timer:{name}:{slot}"


class Scheduler:
    """Runs every enabled timer inside the daemon's task group."""

    def __init__(self, hub: Hub, clock: Clock, timers: dict[str, TimerConfig]) -> None:
        self.hub = hub
        self.clock = clock
        self.timers = timers

    def check(self) -> None:
        """Every timer names a kind that has a handler (called before the daemon starts)."""
        for name, timer in self.timers.items():
            if timer.kind not in self.hub.kinds:
                raise ConfigError(
                    f"maintenance.timers.{name}.kind: no handler for job kind {timer.kind!r}"
                    f" (kinds: {', '.join(sorted(self.hub.kinds))})"
                )

    async def run(self) -> None:
        """Run the enabled timers until cancelled."""
        async with anyio.create_task_group() as timers:
            for name, timer in self.timers.items():
                if timer.enabled:
                    timers.start_soon(self._run_timer, name, timer)

    async def _run_timer(self, name: str, timer: TimerConfig) -> None:
        slot = slot_of(timer, self.clock.now())
        while True:
            await self.clock.sleep_until(fire_at(name, timer, slot))
            with contextlib.suppress(InterlockError):  # logged by tick; the next slot retries
                await self.tick(name, slot)
            # The next slot, or the current one if we fell behind (downtime,
            # a suspended laptop): once, not once per missed slot.
            slot = max(next_slot(timer, slot), slot_of(timer, self.clock.now()))

    async def tick(self, name: str, slot: int | None = None) -> SubmitResult:
        """Submit the timer's job for `slot`; with no slot, run it now by hand (no key)."""
        timer = self.timers.get(name)
        if timer is None:
            known = ", ".join(sorted(self.timers)) or "none"
            raise BadRequest(f"no timer named {name!r} (timers: {known})")
        if slot is None:
            spec = JobSpec(
                kind=timer.kind,
                lane=timer.lane,
                payload=timer.payload,
                trigger=Trigger.HUMAN,
                reason=f"timer {name} run by hand",
                source="tick",
            )
            return await self.hub.submit(spec)
        due = datetime.fromtimestamp(slot_start(timer, slot), UTC).isoformat()
        spec = JobSpec(
            kind=timer.kind,
            lane=timer.lane,
            payload=timer.payload,
            key=slot_key(name, slot),
            trigger=Trigger.TIMER,
            reason=f"timer {name}, slot {slot} (from {due})",
            source=f"timer {name}",
        )
        # The slot's key outlives the job for a day (or two intervals, if longer),
        # whatever the kind's own window: a replayed tick must collapse.
        window = max(DAY, 2 * (timer.interval_seconds or 0), self.hub.config.key_window(timer.kind))
        try:
            return await self.hub.submit(spec, key_window_seconds=window)
        except InterlockError as exc:
            log.error("timer %s: slot %s was not submitted: %s", name, slot, exc)
            raise
