"""Timer slots and jitter: pure arithmetic."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from interlock.config import TimerConfig
from interlock.maintenance.scheduler import fire_at, jitter_of, next_slot, slot_key, slot_of

TIMER = TimerConfig(kind="noop", interval_seconds=60, jitter_seconds=10)


def test_slot_is_the_interval_that_contains_now() -> None:
    assert slot_of(TIMER, 0) == 0
    assert slot_of(TIMER, 59.999) == 0
    assert slot_of(TIMER, 60) == 1
    assert slot_of(TIMER, 1_700_000_000) == 1_700_000_000 // 60


def test_jitter_stays_inside_its_bounds_and_spreads() -> None:
    offsets = [jitter_of("health", slot, 10) for slot in range(5000)]
    assert min(offsets) >= 0 and max(offsets) < 10
    assert max(offsets) - min(offsets) > 9  # it does spread over the range
    assert len({round(offset, 6) for offset in offsets}) > 4000


def test_jitter_is_the_same_after_a_restart() -> None:
    assert jitter_of("health", 42, 10) == jitter_of("health", 42, 10)
    assert jitter_of("health", 42, 10) != jitter_of("stalls", 42, 10)


def test_fire_time_is_slot_start_plus_its_jitter() -> None:
    for slot in range(100):
        at = fire_at("health", TIMER, slot)
        assert slot * 60 <= at < slot * 60 + 10


def test_no_jitter_fires_at_the_slot_start() -> None:
    timer = TimerConfig(kind="noop", interval_seconds=30)
    assert fire_at("x", timer, 7) == 210


def test_key_names_the_timer_and_the_slot() -> None:
    assert slot_key("health", 12) == "timer:health:12"


CRON = TimerConfig(kind="noop", cron="*/15 * * * *", jitter_seconds=20)
QUARTER = 1_700_000_100.0  # 2023-11-14 22:15:00 UTC, a quarter hour


def test_a_cron_slot_is_the_latest_scheduled_moment() -> None:
    assert slot_of(CRON, QUARTER) == int(QUARTER)
    assert slot_of(CRON, QUARTER + 899) == int(QUARTER)
    assert slot_of(CRON, QUARTER + 900) == int(QUARTER) + 900


def test_the_next_cron_slot_is_the_next_scheduled_moment() -> None:
    assert next_slot(CRON, int(QUARTER)) == int(QUARTER) + 900


def test_a_cron_tick_fires_inside_its_jitter() -> None:
    at = fire_at("q", CRON, int(QUARTER))
    assert QUARTER <= at < QUARTER + 20


def test_timer_needs_exactly_one_schedule_and_a_valid_cron() -> None:
    with pytest.raises(ValidationError, match="either interval_seconds or cron"):
        TimerConfig(kind="noop")
    with pytest.raises(ValidationError, match="either interval_seconds or cron"):
        TimerConfig(kind="noop", interval_seconds=60, cron="* * * * *")
    with pytest.raises(ValidationError, match="not a cron expression"):
        TimerConfig(kind="noop", cron="61 * * * *")
    with pytest.raises(ValidationError, match="under 60"):
        TimerConfig(kind="noop", cron="* * * * *", jitter_seconds=60)
