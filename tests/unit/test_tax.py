"""The tax's arithmetic, the governor's findings and the CLI's durations, without a daemon."""

from __future__ import annotations

import argparse

import pytest

from interlock.cli import _duration
from interlock.config import GovernorConfig, TaxConfig
from interlock.maintenance.governor import failure_finding
from interlock.tax import JobClass, UsageRow, classify, summarize

KINDS = ("health.snapshot",)
POLICY_60 = TaxConfig(maintenance_kinds=KINDS, maintenance_budget=0.6, min_feature_jobs=2)


def row(lane: str, kind: str, jobs: int, **usage: float) -> UsageRow:
    return UsageRow(
        lane=lane,
        kind=kind,
        project=None,
        jobs=jobs,
        wall_seconds=usage.get("wall", 0.0),
        tokens=int(usage.get("tokens", 0)),
        cost=usage.get("cost", 0.0),
    )


def test_a_job_is_maintenance_by_its_lane_or_its_kind() -> None:
    assert classify("maintenance", "noop", KINDS) == JobClass.MAINTENANCE
    assert classify("urgent", "health.snapshot", KINDS) == JobClass.MAINTENANCE
    assert classify("urgent", "noop", KINDS) == JobClass.FEATURE


def test_an_empty_window_has_zero_shares_and_is_within_budget() -> None:
    report = summarize([], 0.0, 86_400.0, POLICY_60)
    assert report.totals.jobs == 0
    assert report.maintenance.shares.jobs == 0.0 and report.feature.shares.cost == 0.0
    assert not report.over_budget


def test_the_budget_weighs_time_tokens_and_cost_not_the_count_of_jobs() -> None:
    many_cheap = [row("maintenance", "noop", 90, wall=9), row("urgent", "noop", 10, wall=91)]
    report = summarize(many_cheap, 0.0, 86_400.0, POLICY_60)
    assert report.maintenance.shares.jobs == 0.9 and not report.over_budget


def test_the_budget_is_exceeded_only_past_it() -> None:
    rows = [row("maintenance", "noop", 3, wall=6, cost=3), row("urgent", "noop", 2, wall=4, cost=2)]
    at_it = summarize(rows, 0.0, 86_400.0, POLICY_60)  # 60% of the time: at it, not past
    assert not at_it.over_budget and at_it.over_budget_on == []
    past = summarize(rows, 0.0, 86_400.0, POLICY_60.model_copy(update={"maintenance_budget": 0.5}))
    assert past.over_budget and past.over_budget_on == ["wall_seconds", "cost"]


def test_no_verdict_before_enough_feature_work() -> None:
    rows = [row("maintenance", "noop", 3, wall=60), row("urgent", "noop", 1, wall=1)]
    assert not summarize(rows, 0.0, 86_400.0, POLICY_60).over_budget  # one feature job of two
    rows.append(row("urgent", "noop", 1, wall=1))
    assert summarize(rows, 0.0, 86_400.0, POLICY_60).over_budget


def test_shares_and_jobs_per_day() -> None:
    rows = [
        row("maintenance", "noop", 1, wall=10, tokens=5, cost=0.5),
        row("urgent", "noop", 3, wall=30, tokens=15, cost=1.5),
    ]
    report = summarize(rows, 0.0, 2 * 86_400.0, POLICY_60)
    assert report.maintenance.shares.model_dump() == {
        "jobs": 0.25,
        "wall_seconds": 0.25,
        "tokens": 0.25,
        "cost": 0.25,
    }
    assert report.totals.jobs_per_day == 2.0
    assert report.feature.totals.jobs_per_day == 1.5


POLICY = GovernorConfig(min_attempts=10, max_failure_rate=0.5)


def test_the_governor_names_the_worst_kind_past_the_limit() -> None:
    outcomes = {"a": (2, 8), "b": (1, 9), "c": (10, 0)}
    assert failure_finding("background", outcomes, POLICY) == (
        "kind b failed 9 of 10 attempts in 15 min (90% > 50%)"
    )


def test_the_governor_judges_the_lane_when_no_kind_has_enough_attempts() -> None:
    outcomes = {"a": (1, 4), "b": (1, 4)}
    assert failure_finding("background", outcomes, POLICY) == (
        "lane background failed 8 of 10 attempts in 15 min (80% > 50%)"
    )


def test_the_governor_leaves_a_lane_at_the_limit_or_with_too_few_attempts() -> None:
    assert failure_finding("background", {"a": (5, 5)}, POLICY) is None
    assert failure_finding("background", {"a": (0, 9)}, POLICY) is None


@pytest.mark.parametrize(
    ("text", "seconds"),
    [("30m", 1800.0), ("12h", 43_200.0), ("7d", 604_800.0), ("2w", 1_209_600.0), ("90", 90.0)],
)
def test_durations(text: str, seconds: float) -> None:
    assert _duration(text) == seconds


@pytest.mark.parametrize("text", ["soon", "0d", "-1h", "5y", ""])
def test_bad_durations(text: str) -> None:
    with pytest.raises(argparse.ArgumentTypeError):
        _duration(text)
