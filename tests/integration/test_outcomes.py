"""What handlers say and what the runner does for them: typed outcomes, follow-ups, leases."""

from __future__ import annotations

import logging
from typing import Any

import anyio
import pytest
from pydantic import BaseModel, ConfigDict

from interlock.clock import FakeClock
from interlock.config import Config, DaemonConfig, JobsConfig, KindConfig, LaneConfig
from interlock.daemon import Daemon, builtin_kinds
from interlock.domain import EventType, JobFilter, JobSpec, JobState, Trigger, Usage
from interlock.errors import InvalidPayload
from interlock.handlers import (
    Done,
    Fail,
    JobContext,
    KindRegistry,
    PermanentFailure,
    Retry,
    RetryLater,
)
from tests.harness import run_job, run_maintenance, settle, wait_for_events, wait_for_state

pytestmark = pytest.mark.anyio

LEASE = 30.0


class Order(BaseModel):
    """The payload of the `order` test kind."""

    model_config = ConfigDict(extra="forbid")

    item: str
    count: int


def outcome_kinds(**handlers: Any) -> KindRegistry:
    kinds = builtin_kinds()
    for name, handler in handlers.items():
        kinds.register(name, handler)
    return kinds


def config(**kinds: KindConfig) -> Config:
    lanes = Config().lanes | {"narrow": LaneConfig(rank=5, concurrency=1, max_depth=1)}
    return Config(
        daemon=DaemonConfig(lease_seconds=LEASE),
        lanes=lanes,
        kinds=Config().kinds | kinds,
        jobs=JobsConfig(max_deferrals=2),
    )


# -- done, with usage and follow-ups -----------------------------------------------------


async def spends(ctx: JobContext) -> Done:
    return Done(result={"answer": 42}, usage=Usage(tokens=1200, cost=0.03))


async def hands_on(ctx: JobContext) -> Done:
    step = JobSpec(kind="noop", reason="the next step", payload={"from": ctx.job.id})
    return Done(result={"handed": 1}, follow_ups=(step,))


async def overflows(ctx: JobContext) -> Done:
    # Two follow-ups into a lane of depth 1: the second is refused.
    steps = tuple(JobSpec(kind="noop", lane="narrow", payload={"n": n}) for n in range(2))
    return Done(result={"handed": 2}, follow_ups=steps)


KINDS = outcome_kinds(spends=spends, hands_on=hands_on, overflows=overflows)


@pytest.mark.daemon(config=config(), kinds=KINDS)
async def test_done_records_the_result_and_what_it_spent(daemon: Daemon) -> None:
    job = await run_job(daemon, JobSpec(kind="spends"))
    assert (job.state, job.result, job.tokens, job.cost) == (
        JobState.DONE,
        {"answer": 42},
        1200,
        0.03,
    )


@pytest.mark.daemon(config=config(), kinds=KINDS)
async def test_follow_ups_commit_with_the_finish_and_name_their_parent(daemon: Daemon) -> None:
    parent = await run_job(daemon, JobSpec(kind="hands_on"))
    (child,) = await daemon.hub.list_jobs(JobFilter(kind="noop", with_payload=True))
    assert (child.parent_id, child.root_id, child.trigger) == (
        parent.id,
        parent.id,
        Trigger.HANDOFF,
    )
    assert child.payload == {"from": parent.id} and child.reason == "the next step"
    (submitted,) = [e for e in await daemon.hub.events(child.id) if e.type == "submitted"]
    assert submitted.data == {"source": f"job {parent.id} (hands_on)"}
    await wait_for_state(daemon, child.id, JobState.DONE)


@pytest.mark.daemon(config=config(overflows=KindConfig(max_attempts=1)), kinds=KINDS)
async def test_a_refused_follow_up_fails_the_attempt_and_leaves_no_orphan(
    daemon: Daemon,
) -> None:
    await daemon.hub.set_paused("narrow", True)
    parent = await run_job(daemon, JobSpec(kind="overflows"))
    assert parent.state == JobState.DEAD
    assert "a follow-up job was refused" in (parent.error or "")
    assert "'narrow' is full" in (parent.error or "")
    # The first follow-up fitted, but it went with the refused finish: nothing is left.
    assert await daemon.hub.list_jobs(JobFilter(lane="narrow")) == []


# -- retry, deferral, failure -----------------------------------------------------------


async def rate_limited(ctx: JobContext) -> Retry | dict[str, int]:
    if ctx.job.deferrals < 1:
        return Retry("the provider said 429", after_seconds=30, charge_attempt=False)
    return {"deferrals": ctx.job.deferrals}


async def always_limited(ctx: JobContext) -> Retry:
    return Retry("the provider said 429", after_seconds=5, charge_attempt=False)


async def flaky(ctx: JobContext) -> Retry | str:
    if ctx.job.attempts == 1:
        return Retry("not yet", after_seconds=7)
    return "second time lucky"


async def refuses(ctx: JobContext) -> Fail:
    return Fail("the repository does not exist")


async def raises_retry_later(ctx: JobContext) -> str:
    if ctx.job.deferrals == 0:
        raise RetryLater("busy", after_seconds=3, charge_attempt=False)
    raise PermanentFailure("bad input after all")


async def not_json(ctx: JobContext) -> set[int]:
    return {1, 2}


RETRY_KINDS = outcome_kinds(
    rate_limited=rate_limited,
    always_limited=always_limited,
    flaky=flaky,
    refuses=refuses,
    raises_retry_later=raises_retry_later,
    not_json=not_json,
)


@pytest.mark.daemon(config=config(), kinds=RETRY_KINDS)
async def test_a_deferral_waits_without_spending_an_attempt(
    daemon: Daemon, clock: FakeClock
) -> None:
    job = (await daemon.hub.submit(JobSpec(kind="rate_limited"))).job
    (*_, deferred) = await wait_for_events(daemon, job.id, EventType.DEFERRED)
    waiting = await daemon.hub.get(job.id)
    assert (waiting.state, waiting.attempts, waiting.deferrals) == (JobState.QUEUED, 0, 1)
    assert waiting.not_before == clock.now() + 30
    assert (deferred.from_state, deferred.to_state) == (JobState.RUNNING, JobState.QUEUED)
    assert "429" in deferred.note and "not counted" in deferred.note
    clock.advance(30)
    done = await wait_for_state(daemon, job.id, JobState.DONE)
    assert (done.attempts, done.result) == (1, {"deferrals": 1})


@pytest.mark.daemon(config=config(always_limited=KindConfig(max_attempts=1)), kinds=RETRY_KINDS)
async def test_past_max_deferrals_a_deferral_is_charged(daemon: Daemon, clock: FakeClock) -> None:
    job = (await daemon.hub.submit(JobSpec(kind="always_limited"))).job
    for count in (1, 2):
        await wait_for_events(daemon, job.id, EventType.DEFERRED, count=count)
        clock.advance(5)
    dead = await wait_for_state(daemon, job.id, JobState.DEAD)
    assert (dead.attempts, dead.deferrals) == (1, 2)
    assert "jobs.max_deferrals" in (dead.error or "")


@pytest.mark.daemon(config=config(), kinds=RETRY_KINDS)
async def test_a_charged_retry_waits_as_long_as_the_handler_asked(
    daemon: Daemon, clock: FakeClock
) -> None:
    job = (await daemon.hub.submit(JobSpec(kind="flaky"))).job
    await wait_for_events(daemon, job.id, EventType.RETRY_SCHEDULED)
    waiting = await daemon.hub.get(job.id)
    assert (waiting.attempts, waiting.error) == (1, "not yet")
    assert waiting.not_before == clock.now() + 7
    clock.advance(7)
    done = await wait_for_state(daemon, job.id, JobState.DONE)
    assert (done.attempts, done.result) == (2, "second time lucky")


@pytest.mark.daemon(config=config(), kinds=RETRY_KINDS)
async def test_fail_ends_the_job_at_once_without_a_retry(daemon: Daemon) -> None:
    job = await run_job(daemon, JobSpec(kind="refuses"))
    assert (job.state, job.attempts, job.error) == (
        JobState.DEAD,
        1,
        "the repository does not exist",
    )
    types = [event.type for event in await daemon.hub.events(job.id)]
    assert EventType.RETRY_SCHEDULED not in types
    assert types[-2:] == [EventType.FAILED, EventType.DEAD]


@pytest.mark.daemon(config=config(), kinds=RETRY_KINDS)
async def test_raised_outcomes_mean_the_same_as_returned_ones(
    daemon: Daemon, clock: FakeClock
) -> None:
    job = (await daemon.hub.submit(JobSpec(kind="raises_retry_later"))).job
    await wait_for_events(daemon, job.id, EventType.DEFERRED)
    clock.advance(3)
    dead = await wait_for_state(daemon, job.id, JobState.DEAD)
    assert (dead.attempts, dead.error) == (1, "bad input after all")


@pytest.mark.daemon(config=config(), kinds=RETRY_KINDS)
async def test_a_result_that_is_not_json_fails_the_job_for_good(daemon: Daemon) -> None:
    job = await run_job(daemon, JobSpec(kind="not_json"))
    assert job.state == JobState.DEAD and job.attempts == 1
    assert "not JSON" in (job.error or "")


# -- payloads refused at submit ----------------------------------------------------------


def order_kinds() -> KindRegistry:
    kinds = builtin_kinds()

    async def order(ctx: JobContext) -> dict[str, Any]:
        return Order.model_validate(ctx.payload).model_dump()

    kinds.register("order", order, payload=Order)
    return kinds


@pytest.mark.daemon(kinds=order_kinds())
async def test_a_payload_that_cannot_be_valid_is_refused_at_submit_naming_the_field(
    daemon: Daemon,
) -> None:
    with pytest.raises(InvalidPayload, match=r"invalid payload for order: count: .*integer"):
        await daemon.hub.submit(JobSpec(kind="order", payload={"item": "tea", "count": "many"}))
    with pytest.raises(InvalidPayload, match="invalid payload for sleep: seconds: Field required"):
        await daemon.hub.submit(JobSpec(kind="sleep", payload={}))
    assert await daemon.hub.list_jobs(JobFilter()) == []
    good = await run_job(daemon, JobSpec(kind="order", payload={"item": "tea", "count": 2}))
    assert good.result == {"item": "tea", "count": 2}


# -- leases: the runner's heartbeats, timeouts, hung handlers ----------------------------------


async def slow_call(ctx: JobContext) -> dict[str, float]:
    """A handler awaiting a 90-second model call: it never heartbeats by hand."""
    started = ctx.clock.now()
    ctx.progress("waiting for the model")
    await ctx.clock.sleep_until(started + 90)
    return {"waited": ctx.clock.now() - started}


RELEASE = anyio.Event()


async def forever(ctx: JobContext) -> str:
    if ctx.job.attempts == 1:
        await anyio.Event().wait()
    return "second attempt"


async def ignores_cancel(ctx: JobContext) -> str:
    """Hung for real: deaf to its own cancellation (stuck in a thread, say)."""
    if ctx.job.attempts == 1:
        with anyio.CancelScope(shield=True):
            await RELEASE.wait()
    return "second attempt"


LEASE_KINDS = outcome_kinds(slow_call=slow_call, forever=forever, ignores_cancel=ignores_cancel)
TIMED = config(
    forever=KindConfig(timeout_seconds=100), ignores_cancel=KindConfig(timeout_seconds=100)
)


async def step(daemon: Daemon, clock: FakeClock, seconds: float) -> None:
    """Let `seconds` pass as time does, a little at a time, the daemon catching up each time."""
    while seconds > 0:
        moved = min(seconds, 5.0)
        clock.advance(moved)
        seconds -= moved
        await settle(daemon)


@pytest.mark.daemon(config=config(), kinds=LEASE_KINDS)
async def test_a_handler_awaiting_a_90_second_call_is_not_declared_stalled(
    daemon: Daemon, clock: FakeClock
) -> None:
    job = (await daemon.hub.submit(JobSpec(kind="slow_call"))).job
    await wait_for_state(daemon, job.id, JobState.RUNNING)
    for _ in range(8):  # 80 s: more than two leases of 30 s, renewed every 10 s
        await step(daemon, clock, 10)
        assert (await run_maintenance(daemon, "stalls.scan"))["requeued"] == []
    running = await daemon.hub.get(job.id)
    assert running.progress == "waiting for the model"
    assert running.lease_expires_at is not None and running.lease_expires_at > clock.now()
    await step(daemon, clock, 10)
    done = await wait_for_state(daemon, job.id, JobState.DONE)
    assert (done.attempts, done.result) == (1, {"waited": 90.0})
    types = [event.type for event in await daemon.hub.events(job.id)]
    assert EventType.STALLED not in types and types.count(EventType.CLAIMED) == 1


@pytest.mark.daemon(config=TIMED, kinds=LEASE_KINDS)
async def test_a_handler_past_its_timeout_is_stopped_and_its_attempt_fails(
    daemon: Daemon, clock: FakeClock
) -> None:
    job = (await daemon.hub.submit(JobSpec(kind="forever"))).job
    await wait_for_state(daemon, job.id, JobState.RUNNING)
    await step(daemon, clock, 99)
    assert (await daemon.hub.get(job.id)).state == JobState.RUNNING
    await step(daemon, clock, 1)
    events = await wait_for_events(daemon, job.id, EventType.TIMED_OUT)
    timed_out = next(event for event in events if event.type == EventType.TIMED_OUT)
    assert "timed out" in timed_out.note and "kinds.forever.timeout_seconds" in timed_out.note
    clock.advance(600)  # past any backoff
    done = await wait_for_state(daemon, job.id, JobState.DONE)
    assert (done.attempts, done.result) == (2, "second attempt")


@pytest.mark.daemon(config=TIMED, kinds=LEASE_KINDS)
async def test_a_handler_deaf_to_its_cancel_loses_its_job_to_the_stall_scan(
    daemon: Daemon, clock: FakeClock
) -> None:
    job = (await daemon.hub.submit(JobSpec(kind="ignores_cancel"))).job
    await wait_for_state(daemon, job.id, JobState.RUNNING)
    try:
        await step(daemon, clock, 100)  # the timeout: cancelled, but it does not stop
        assert (await run_maintenance(daemon, "stalls.scan"))["requeued"] == []
        await step(daemon, clock, LEASE)  # no renewals since: the lease runs out
        assert (await run_maintenance(daemon, "stalls.scan"))["requeued"] == [job.id]
        clock.advance(600)
        done = await wait_for_state(daemon, job.id, JobState.DONE)
        assert done.result == "second attempt"
        types = [event.type for event in await daemon.hub.events(job.id)]
        assert types.count(EventType.STALLED) == 1 and types.count(EventType.FINISHED) == 1
    finally:
        RELEASE.set()  # let the deaf handler end, or the daemon cannot stop


# -- a failing store is not "changed meanwhile" -----------------------------------------------


async def big_result(ctx: JobContext) -> str:
    return "x" * 200_000


class ErrorsSeen(logging.Handler):
    """Wakes the test once the daemon has logged `count` errors."""

    def __init__(self, count: int) -> None:
        super().__init__(logging.ERROR)
        self.count = count
        self.messages: list[str] = []
        self.enough = anyio.Event()

    def emit(self, record: logging.LogRecord) -> None:
        self.messages.append(record.getMessage())
        if len(self.messages) >= self.count:
            self.enough.set()


async def set_max_pages(daemon: Daemon, pages: int | None) -> int:
    """The disk fills up: SQLite's own cap on the file's size, on the writer's connection."""
    engine = daemon.store._engine
    writer = engine._connection(engine._writer)
    if pages is None:
        (pages,) = await engine._run(writer, lambda c: c.execute("PRAGMA page_count").fetchone())
    sql = f"PRAGMA max_page_count = {pages}"
    (now,) = await engine._run(writer, lambda c: c.execute(sql).fetchone())
    return int(now)


@pytest.mark.daemon(config=config(), kinds=outcome_kinds(big_result=big_result), real_clock=True)
async def test_an_outcome_the_store_cannot_write_is_logged_at_error_and_written_once_it_can(
    daemon: Daemon,
) -> None:
    seen = ErrorsSeen(count=2)
    logging.getLogger("interlock").addHandler(seen)
    try:
        await set_max_pages(daemon, None)  # no room for anything more
        job = (await daemon.hub.submit(JobSpec(kind="big_result"))).job
        with anyio.fail_after(10):
            await seen.enough.wait()
        assert (await daemon.hub.get(job.id)).state == JobState.RUNNING
        await set_max_pages(daemon, 1_000_000)  # room again
        done = await wait_for_state(daemon, job.id, JobState.DONE)
        assert done.result == "x" * 200_000
    finally:
        logging.getLogger("interlock").removeHandler(seen)
    assert all("cannot record its outcome" in message for message in seen.messages[:2])
    assert all("full" in message for message in seen.messages[:2])
