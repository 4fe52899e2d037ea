"""The autonomy tax: a store seeded with known jobs gives exactly the expected shares."""

from __future__ import annotations

from typing import Any

import pytest

from interlock.clock import FakeClock
from interlock.config import Config, KindConfig, TaxConfig
from interlock.daemon import Daemon, builtin_kinds
from interlock.domain import EventType, JobFilter, JobSpec, JobState, Usage
from interlock.handlers import Done, JobContext, KindRegistry
from interlock.ipc.client import Client, RemoteError
from tests.harness import run_maintenance, settle, wait_for_state

pytestmark = pytest.mark.anyio

DAY = 86_400.0


def spending_kinds() -> KindRegistry:
    """`spend` reports its payload as the usage a provider would have recorded."""
    kinds = builtin_kinds()

    async def spend(ctx: JobContext) -> Done:
        return Done(usage=Usage.model_validate(ctx.payload))

    kinds.register("spend", spend)
    return kinds


def config(**tax: Any) -> Config:
    base = Config()
    return base.model_copy(
        update={
            "kinds": base.kinds | {"spend": KindConfig(lane="interactive")},
            "tax": TaxConfig(**tax),
        }
    )


SPENDING = pytest.mark.daemon(config=config(), kinds=spending_kinds())


FEATURE = [
    JobSpec(kind="sleep", payload={"seconds": 30}),  # background: 30 s of wall time
    JobSpec(kind="sleep", payload={"seconds": 30}),
    JobSpec(kind="spend", payload={"tokens": 300, "cost": 0.75}),
    JobSpec(kind="noop"),
    JobSpec(kind="noop"),
    JobSpec(kind="noop"),
]
MAINTENANCE = [
    # Maintenance by its kind. (Not health.snapshot: it reads /proc on a worker thread,
    # which settle() cannot see, so it could finish after the clock moved.)
    JobSpec(kind="stalls.scan", lane="interactive"),
    JobSpec(kind="noop", lane="maintenance"),  # maintenance by its lane
    JobSpec(kind="sleep", lane="maintenance", payload={"seconds": 20}),
    JobSpec(kind="spend", lane="maintenance", payload={"tokens": 100, "cost": 0.25}),
]


async def seed(daemon: Daemon, clock: FakeClock) -> list[int]:
    """Ten jobs started at the same instant; the sleeps end 20 s and 30 s later."""
    ids = [(await daemon.hub.submit(spec)).job.id for spec in FEATURE + MAINTENANCE]
    await settle(daemon)
    clock.advance(20)
    await settle(daemon)
    clock.advance(10)
    for job_id in ids:
        await wait_for_state(daemon, job_id, JobState.DONE)
    return ids


@SPENDING
async def test_tax_over_the_socket_gives_the_exact_shares(
    daemon: Daemon, clock: FakeClock, client: Client
) -> None:
    await seed(daemon, clock)
    raw = await client.call("tax", {"since_seconds": DAY})
    report = await client.tax(DAY, by="kind")

    assert raw["totals"] == {
        "jobs": 10,
        "wall_seconds": 80.0,
        "tokens": 400,
        "cost": 1.0,
        "jobs_per_day": 10.0,
    }
    assert raw["maintenance"]["shares"] == {
        "jobs": 4 / 10,
        "wall_seconds": 20 / 80,
        "tokens": 100 / 400,
        "cost": 0.25,
    }
    assert raw["feature"]["shares"] == {
        "jobs": 6 / 10,
        "wall_seconds": 60 / 80,
        "tokens": 300 / 400,
        "cost": 0.75,
    }
    assert raw["maintenance"]["totals"]["jobs_per_day"] == 4.0
    # Maintenance spent 25% of time, tokens and cost: within the 60% budget.
    assert raw["budget"] == 0.6 and raw["over_budget"] is False and raw["over_budget_on"] == []
    assert raw["groups"] == []

    groups = {(group.job_class.value, group.name): group.totals for group in report.groups}
    assert set(groups) == {
        ("feature", "sleep"),
        ("feature", "spend"),
        ("feature", "noop"),
        ("maintenance", "stalls.scan"),
        ("maintenance", "noop"),
        ("maintenance", "sleep"),
        ("maintenance", "spend"),
    }
    assert groups["feature", "sleep"].jobs == 2 and groups["feature", "sleep"].wall_seconds == 60
    assert groups["maintenance", "spend"].tokens == 100
    assert groups["feature", "noop"].jobs == 3


@SPENDING
async def test_the_window_counts_only_jobs_created_inside_it(
    daemon: Daemon, clock: FakeClock
) -> None:
    await seed(daemon, clock)
    clock.advance(2 * DAY)
    job = (await daemon.hub.submit(JobSpec(kind="noop", lane="maintenance"))).job
    await wait_for_state(daemon, job.id, JobState.DONE)
    last_day = await daemon.hub.tax(DAY)
    last_week = await daemon.hub.tax(7 * DAY, by="lane")

    assert last_day.totals.jobs == 1
    assert last_day.maintenance.shares.jobs == 1.0
    assert not last_day.over_budget  # all maintenance, but no feature work to weigh it by
    assert last_week.totals.jobs == 11
    assert last_week.maintenance.shares.jobs == 5 / 11
    assert last_week.totals.jobs_per_day == 11 / 7
    lanes = {(group.job_class.value, group.name): group.totals.jobs for group in last_week.groups}
    assert lanes == {
        ("feature", "background"): 2,
        ("feature", "interactive"): 4,
        ("maintenance", "interactive"): 1,
        ("maintenance", "maintenance"): 4,
    }


@pytest.mark.daemon(config=config(maintenance_kinds=("spend",)), kinds=spending_kinds())
async def test_a_configured_maintenance_kind_counts_as_maintenance(
    daemon: Daemon, clock: FakeClock
) -> None:
    await seed(daemon, clock)
    report = await daemon.hub.tax(DAY, by="kind")
    # spend (both) and the maintenance lane's noop and sleep; stalls.scan is no longer listed.
    assert report.maintenance.totals.jobs == 4
    assert report.maintenance.shares.cost == 1.0
    assert ("feature", "stalls.scan") in {
        (group.job_class.value, group.name) for group in report.groups
    }


@SPENDING
async def test_the_health_snapshot_carries_the_tax_of_the_last_day(
    daemon: Daemon, clock: FakeClock
) -> None:
    await seed(daemon, clock)
    snapshot = await run_maintenance(daemon, "health.snapshot")
    # The snapshot counts itself: 11 jobs, 5 of them maintenance.
    assert snapshot["tax"]["jobs"] == 11
    assert snapshot["tax"]["maintenance"]["jobs"] == 5 / 11
    assert snapshot["tax"]["maintenance"]["cost"] == 0.25
    assert snapshot["tax"]["budget"] == 0.6 and snapshot["tax"]["over_budget"] is False


async def snapshot_events(daemon: Daemon) -> list[Any]:
    await run_maintenance(daemon, "health.snapshot")
    (job,) = await daemon.hub.list_jobs(JobFilter(kind="health.snapshot", limit=1))
    return [e for e in await daemon.hub.events(job.id) if e.type == EventType.BUDGET_EXCEEDED]


async def test_an_idle_daemon_is_never_over_budget(daemon: Daemon) -> None:
    for _ in range(20):  # maintenance only: every share is maintenance's
        await run_maintenance(daemon, "stalls.scan")
    assert not (await daemon.hub.tax(DAY)).over_budget
    assert await snapshot_events(daemon) == []


@pytest.mark.daemon(config=config(min_feature_jobs=3), kinds=spending_kinds())
async def test_maintenance_spending_past_its_budget_is_a_warning_on_the_snapshot(
    daemon: Daemon, clock: FakeClock
) -> None:
    for _ in range(2):  # feature work, but not enough to judge by
        await daemon.hub.submit(JobSpec(kind="spend", payload={"tokens": 10, "cost": 0.01}))
    await settle(daemon)
    heavy = JobSpec(kind="spend", lane="maintenance", payload={"tokens": 900, "cost": 0.9})
    await daemon.hub.submit(heavy)
    await settle(daemon)
    assert await snapshot_events(daemon) == []  # two feature jobs: no verdict yet

    await daemon.hub.submit(JobSpec(kind="spend", payload={"tokens": 10, "cost": 0.01}))
    await settle(daemon)
    report = await daemon.hub.tax(DAY)
    assert report.over_budget and report.over_budget_on == ["tokens", "cost"]
    (warning,) = await snapshot_events(daemon)
    assert warning.note.startswith("maintenance took 97% of tokens, 97% of cost in the last 24 h")
    assert "over its budget of 60%" in warning.note and "3 feature jobs" in warning.note


@SPENDING
async def test_bad_tax_params_are_refused_with_a_reason(client: Client) -> None:
    with pytest.raises(RemoteError, match="by") as caught:
        await client.call("tax", {"by": "colour"})
    assert "bad params for tax" in str(caught.value)


def test_tax_on_the_command_line(make_daemon: Any, cli: Any) -> None:
    make_daemon().start()
    for args in (
        ("noop",),
        ("noop",),
        ("noop",),
        ("noop", "--lane", "maintenance"),
    ):
        submitted = cli("submit", *args, "--json")
        assert submitted.code == 0, submitted.err
        assert cli("wait", str(submitted.json()["id"]), "--timeout", "20").code == 0

    report = cli("tax", "--json")
    assert report.code == 0, report.err
    data = report.json()
    assert data["totals"]["jobs"] == 4
    assert data["maintenance"]["shares"]["jobs"] == 0.25
    assert data["feature"]["shares"]["jobs"] == 0.75
    assert data["until"] - data["since"] == 7 * DAY

    text = cli("tax", "--since", "12h", "--by", "lane")
    assert text.code == 0, text.err
    assert "maintenance 25% of jobs" in text.out
    assert "feature     75% of jobs" in text.out
    assert text.out.startswith("autonomy tax, last 12h: 4 jobs, 8.0 per day")

    bad = cli("tax", "--since", "soon")
    assert bad.code == 2 and "duration" in bad.err
