"""The autonomy tax: every job is maintenance or feature work, and what each costs.

Pure types and arithmetic, no I/O. The store sums usage per lane, kind and
project (`UsageRow`); `summarize` classifies those sums and turns them into
shares, so the rule of what counts as maintenance lives here, not in SQL.
"""

from __future__ import annotations

import enum
from collections.abc import Collection, Iterable
from dataclasses import dataclass
from typing import Literal

from pydantic import BaseModel, ConfigDict

from interlock.config import TaxConfig

DAY = 86_400.0
MAINTENANCE_LANE = "maintenance"

TaxGrouping = Literal["kind", "lane", "project"]


class JobClass(enum.StrEnum):
    """Which side of the tax a job is on."""

    MAINTENANCE = "maintenance"
    FEATURE = "feature"


def classify(lane: str, kind: str, maintenance_kinds: Collection[str]) -> JobClass:
    """Maintenance if the job ran in the maintenance lane or its kind is a maintenance kind."""
    if lane == MAINTENANCE_LANE or kind in maintenance_kinds:
        return JobClass.MAINTENANCE
    return JobClass.FEATURE


@dataclass(frozen=True)
class UsageRow:
    """What the jobs of one lane, kind and project created in a window add up to."""

    lane: str
    kind: str
    project: str | None
    jobs: int
    wall_seconds: float  # finished_at - started_at, summed over the jobs that finished
    tokens: int
    cost: float


class _Report(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


class Shares(_Report):
    """One class's part of the total, as fractions from 0 to 1 (0 when the total is 0)."""

    jobs: float
    wall_seconds: float
    tokens: float
    cost: float


class Totals(_Report):
    """Sums over a set of jobs."""

    jobs: int = 0
    wall_seconds: float = 0.0
    tokens: int = 0
    cost: float = 0.0
    jobs_per_day: float = 0.0


class ClassFigures(_Report):
    """One class's sums and its shares of the whole."""

    totals: Totals
    shares: Shares


class TaxGroup(_Report):
    """The sums of one kind, lane or project within one class."""

    name: str | None  # None: jobs with no project
    job_class: JobClass
    totals: Totals


class TaxReport(_Report):
    """The autonomy tax over a window: maintenance against feature work."""

    since: float
    until: float
    days: float
    by: TaxGrouping | None
    totals: Totals
    maintenance: ClassFigures
    feature: ClassFigures
    groups: list[TaxGroup]
    budget: float  # the largest share of time, tokens or cost maintenance may take
    min_feature_jobs: int  # no verdict before this much feature work in the window
    over_budget: bool
    over_budget_on: list[str]  # which of BUDGETED_SHARES passed the budget


def _share(part: float, whole: float) -> float:
    return part / whole if whole else 0.0


def _totals(rows: Iterable[UsageRow], days: float) -> Totals:
    jobs = tokens = 0
    wall = cost = 0.0
    for row in rows:
        jobs += row.jobs
        wall += row.wall_seconds
        tokens += row.tokens
        cost += row.cost
    return Totals(
        jobs=jobs,
        wall_seconds=wall,
        tokens=tokens,
        cost=cost,
        jobs_per_day=_share(jobs, days),
    )


# What the budget weighs: what work costs. Not the count of jobs: an idle
# daemon's health checks are many and cheap, one agent run is one and dear.
BUDGETED_SHARES = ("wall_seconds", "tokens", "cost")


def summarize(
    rows: Iterable[UsageRow],
    since: float,
    until: float,
    policy: TaxConfig,
    by: TaxGrouping | None = None,
) -> TaxReport:
    """Classify the usage rows of a window and work out each class's shares."""
    maintenance_kinds = policy.maintenance_kinds
    rows = list(rows)
    days = max(until - since, 0.0) / DAY
    classified = [(classify(row.lane, row.kind, maintenance_kinds), row) for row in rows]
    whole = _totals(rows, days)
    figures = {}
    for job_class in JobClass:
        part = _totals((row for side, row in classified if side == job_class), days)
        figures[job_class] = ClassFigures(
            totals=part,
            shares=Shares(
                jobs=_share(part.jobs, whole.jobs),
                wall_seconds=_share(part.wall_seconds, whole.wall_seconds),
                tokens=_share(part.tokens, whole.tokens),
                cost=_share(part.cost, whole.cost),
            ),
        )
    groups: list[TaxGroup] = []
    if by is not None:
        buckets: dict[tuple[JobClass, str | None], list[UsageRow]] = {}
        for side, row in classified:
            name: str | None = getattr(row, by)
            buckets.setdefault((side, name), []).append(row)
        groups = [
            TaxGroup(name=name, job_class=job_class, totals=_totals(members, days))
            for (job_class, name), members in buckets.items()
        ]
        groups.sort(key=lambda group: (group.job_class.value, -group.totals.jobs, group.name or ""))
    maintenance = figures[JobClass.MAINTENANCE]
    feature_jobs = figures[JobClass.FEATURE].totals.jobs
    over = []
    if feature_jobs >= max(policy.min_feature_jobs, 1):
        over = [
            name
            for name in BUDGETED_SHARES
            if getattr(maintenance.shares, name) > policy.maintenance_budget
        ]
    return TaxReport(
        since=since,
        until=until,
        days=days,
        by=by,
        totals=whole,
        maintenance=maintenance,
        feature=figures[JobClass.FEATURE],
        groups=groups,
        budget=policy.maintenance_budget,
        min_feature_jobs=policy.min_feature_jobs,
        over_budget=bool(over),
        over_budget_on=over,
    )
