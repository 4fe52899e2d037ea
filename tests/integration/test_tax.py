"""The autonomy tax: a store seeded with known jobs gives exactly the expected shares."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from interlock.clock import FakeClock
from interlock.config import Config, KindConfig
from interlock.daemon import Daemon
from interlock.domain import JobSpec, JobState
from interlock.handlers import HandlerRegistry, JobContext, default_registry
from interlock.ipc.client import RemoteError, connect
from tests.harness import running_daemon, settle, wait_for_state

pytestmark = pytest.mark.anyio

DAY = 86_400.0


def spending_registry() -> HandlerRegistry:
    """`spend` reports its payload as the usage a provider would have recorded."""
    registry = default_registry()

    async def spend(ctx: JobContext) -> dict[str, Any]:
        return {"usage": ctx.job.payload}

    registry.register("spend", spend)
    return registry


def config() -> Config:
    base = Config()
    return base.model_copy(update={"kinds": base.kinds | {"spend": KindConfig(lane="interactive")}})


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


async def test_tax_over_the_socket_gives_the_exact_shares(home: Path) -> None:
    clock = FakeClock()
    async with running_daemon(home, config(), clock, spending_registry()) as daemon:
        await seed(daemon, clock)
        async with connect(daemon.paths.socket_path) as (client, _):
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
    assert raw["budget"] == 0.6 and raw["over_budget"] is False
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


async def test_the_window_counts_only_jobs_created_inside_it(home: Path) -> None:
    clock = FakeClock()
    async with running_daemon(home, config(), clock, spending_registry()) as daemon:
        await seed(daemon, clock)
        clock.advance(2 * DAY)
        job = (await daemon.hub.submit(JobSpec(kind="noop", lane="maintenance"))).job
        await wait_for_state(daemon, job.id, JobState.DONE)
        last_day = await daemon.hub.tax(DAY)
        last_week = await daemon.hub.tax(7 * DAY, by="lane")

    assert last_day.totals.jobs == 1
    assert last_day.maintenance.shares.jobs == 1.0
    assert last_day.over_budget  # 100% maintenance, over the default 60% budget
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


async def test_a_configured_maintenance_kind_counts_as_maintenance(home: Path) -> None:
    clock = FakeClock()
    cfg = config().model_copy(
        update={"tax": Config().tax.model_copy(update={"maintenance_kinds": ("spend",)})}
    )
    async with running_daemon(home, cfg, clock, spending_registry()) as daemon:
        await seed(daemon, clock)
        report = await daemon.hub.tax(DAY, by="kind")
    # spend (both) and the maintenance lane's noop and sleep; stalls.scan is no longer listed.
    assert report.maintenance.totals.jobs == 4
    assert report.maintenance.shares.cost == 1.0
    assert ("feature", "stalls.scan") in {
        (group.job_class.value, group.name) for group in report.groups
    }


async def test_the_health_snapshot_carries_the_tax_of_the_last_day(home: Path) -> None:
    clock = FakeClock()
    async with running_daemon(home, config(), clock, spending_registry()) as daemon:
        await seed(daemon, clock)
        job = (await daemon.hub.submit(JobSpec(kind="health.snapshot"))).job
        await wait_for_state(daemon, job.id, JobState.DONE)
        snapshot = (await daemon.hub.get(job.id)).result
    # The snapshot counts itself: 11 jobs, 5 of them maintenance.
    assert snapshot["tax"]["jobs"] == 11
    assert snapshot["tax"]["maintenance"]["jobs"] == 5 / 11
    assert snapshot["tax"]["maintenance"]["cost"] == 0.25
    assert snapshot["tax"]["budget"] == 0.6 and snapshot["tax"]["over_budget"] is False


async def test_bad_tax_params_are_refused_with_a_reason(home: Path) -> None:
    async with (
        running_daemon(home, config(), FakeClock()) as daemon,
        connect(daemon.paths.socket_path) as (client, _),
    ):
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
