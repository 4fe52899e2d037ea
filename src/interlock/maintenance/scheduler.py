"""Timers: each submits one maintenance job per time slot, keyed by the slot.

Slot n of a timer starts at n * interval (seconds since the epoch) and fires
a fixed fraction of the jitter later, derived from the timer's name and the
slot, so a restarted daemon computes the same moment and the same key. A
tick that is doubled or replayed collapses into the job that already ran
(the maintenance kinds keep their keys for a day); after downtime a timer
fires once, for the current slot, not once per slot it missed.

Before it submits, a tick asks the kind's probe whether there is anything to
do (an expired lease, a file in the inbox, ...): a quiet daemon makes no job
that would only record that nothing happened. Skipped ticks are counted, and
`interlock health` shows them. A tick by hand always submits.
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import math
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import overload

import anyio
from cronsim import CronSim

from interlock.clock import Clock
from interlock.config import TimerConfig
from interlock.domain import JobSpec, SubmitResult, Trigger
from interlock.errors import BadRequest, InterlockError
from interlock.handlers.registry import Kind
from interlock.hub import Hub
from interlock.maintenance.context import Probe

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


@dataclass
class TimerStats:
    """What a timer did since the daemon started."""

    ticks: int = 0  # slots it fired for
    submitted: int = 0  # ticks that made a job (or found the slot's job)
    skipped: int = 0  # ticks whose probe found nothing to do
    last_tick_at: float | None = None
    last_job_id: int | None = None


class Scheduler:
    """Runs every enabled timer inside the daemon's task group."""

    def __init__(
        self,
        hub: Hub,
        clock: Clock,
        timers: dict[str, TimerConfig],
        kinds: Mapping[str, Kind],
        state_dir: Path,
        start_delay_seconds: float = 0.0,
    ) -> None:
        self.hub = hub
        self.clock = clock
        self.timers = timers
        self.kinds = kinds
        self.start_delay_seconds = start_delay_seconds
        self.stats = {name: TimerStats() for name in timers}
        self._probe = Probe(hub.reads, hub.config, clock, state_dir)

    async def run(self) -> None:
        """Run the enabled timers until cancelled, after the start delay."""
        if self.start_delay_seconds > 0:
            await self.clock.sleep_until(self.clock.now() + self.start_delay_seconds)
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

    @overload
    async def tick(self, name: str) -> SubmitResult: ...

    @overload
    async def tick(self, name: str, slot: int) -> SubmitResult | None: ...

    async def tick(self, name: str, slot: int | None = None) -> SubmitResult | None:
        """Submit the timer's job for `slot` if its kind has work; with no slot, now, by hand."""
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
        stats = self.stats[name]
        stats.ticks += 1
        stats.last_tick_at = self.clock.now()
        kind = self.kinds.get(timer.kind)
        if kind is not None and kind.due is not None:
            try:
                if not await kind.due(self._probe):
                    stats.skipped += 1
                    return None
            except Exception as exc:  # a probe must not stop its timer
                log.error("timer %s: its probe failed (%s); submitting anyway", name, exc)
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
            result = await self.hub.submit(spec, key_window_seconds=window)
        except InterlockError as exc:
            log.error("timer %s: slot %s was not submitted: %s", name, slot, exc)
            raise
        stats.submitted += 1
        stats.last_job_id = result.job.id
        return result
