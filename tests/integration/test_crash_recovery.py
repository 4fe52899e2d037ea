"""kill -9 in the middle of work, then a restart: every job done once, none lost."""

from __future__ import annotations

import anyio
import pytest

from interlock.domain import Event, EventType, JobFilter, JobSpec, JobState, Trigger
from interlock.ipc.client import connect

pytestmark = pytest.mark.anyio

CONFIG = """
[lanes.urgent]
rank = 0
concurrency = 4
max_depth = 1000
[lanes.interactive]
rank = 1
concurrency = 4
max_depth = 1000
[lanes.background]
rank = 2
concurrency = 6
max_depth = 1000
[lanes.maintenance]
rank = 3
concurrency = 2
max_depth = 1000
"""


async def test_kill_9_while_sleep_jobs_run_then_restart_finishes_every_job_once(make_daemon):
    daemon = make_daemon(CONFIG).start()
    async with connect(daemon.socket_path) as (client, notes):
        await client.subscribe()
        ids = []
        for index in range(10):
            spec = JobSpec(kind="sleep", payload={"seconds": 1.5}, key=f"job-{index}")
            ids.append((await client.submit(spec)).job.id)
        started: set[int] = set()
        with anyio.fail_after(20):
            while len(started) < 6:  # the lane's six slots are all busy
                notice = await notes.receive()
                if isinstance(notice, Event) and notice.type == EventType.CLAIMED:
                    started.add(notice.job_id)
        daemon.kill()  # SIGKILL: no cleanup, rows stay 'running'

    restarted = make_daemon(CONFIG).start()
    async with connect(restarted.socket_path) as (client, notes):
        await client.subscribe()
        with anyio.fail_after(30):
            for job_id in ids:
                while (await client.get(job_id)).job.state != JobState.DONE:
                    await notes.receive()
        for job_id in ids:
            detail = await client.get(job_id)
            types = [event.type for event in detail.events]
            assert types.count(EventType.FINISHED) == 1, types
            requeued = [event for event in detail.events if event.type == EventType.REQUEUED]
            if job_id in started:
                assert [event.trigger for event in requeued] == [Trigger.RECOVERY]
                assert "daemon died" in requeued[0].note
            else:
                assert requeued == []
        listed = (await client.list_jobs(JobFilter(limit=100))).jobs
        assert sorted(job.id for job in listed) == sorted(ids)
    assert restarted.terminate() == 0
