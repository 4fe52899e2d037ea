"""Throughput and latency of the daemon core, in-process and over the socket.

Pushes N no-op jobs through a real daemon (real SQLite file, real socket) and
prints jobs/s for submit and for the full cycle (submit, claim, run, finish,
with every audit event), and the p50/p99 time from submit to start on an idle
daemon. A benchmark, not a test: it prints figures and asserts nothing.

    .venv/bin/python bench/throughput.py [--jobs 20000] [--samples 1000]
"""

from __future__ import annotations

import argparse
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import anyio

from interlock.config import Config, LaneConfig, MaintenanceConfig, Paths, resolve_paths
from interlock.daemon import Daemon, builtin_kinds
from interlock.domain import Event, EventType, JobSpec, JobState
from interlock.handlers import JobContext
from interlock.ipc.client import connect

SUBMITTERS = 64  # concurrent submitters, in-process and over the socket
# The built-in timers, each switched off: their jobs would be counted as the benchmark's own.
TIMERS = tuple(Config().maintenance.timers)
CONNECTIONS = 8


def bench_config(jobs: int, concurrency: int) -> Config:
    lanes = Config().lanes
    lanes["interactive"] = LaneConfig(rank=1, concurrency=concurrency, max_depth=jobs + 10_000)
    # No timers: their maintenance jobs would be counted as the benchmark's own.
    return Config(lanes=lanes, maintenance=MaintenanceConfig(timers={}))


def percentile(values: list[float], fraction: float) -> float:
    ordered = sorted(values)
    index = min(len(ordered) - 1, max(0, round(fraction * (len(ordered) - 1))))
    return ordered[index]


def write_config(path: Path, jobs: int, concurrency: int) -> None:
    path.write_text(
        "[lanes.urgent]\nrank = 0\nconcurrency = 4\nmax_depth = 1000\n"
        f"[lanes.interactive]\nrank = 1\nconcurrency = {concurrency}\nmax_depth = {jobs + 10_000}\n"
        "[lanes.background]\nrank = 2\nconcurrency = 2\nmax_depth = 10000\n"
        "[lanes.maintenance]\nrank = 3\nconcurrency = 2\nmax_depth = 1000\n"
        + "".join(f"[maintenance.timers.{name}]\nenabled = false\n" for name in TIMERS)
    )


async def in_process(jobs: int, samples: int, concurrency: int, home: Path) -> dict[str, float]:
    config = bench_config(jobs, concurrency)
    paths = resolve_paths(config, {"INTERLOCK_HOME": str(home)})
    kinds = builtin_kinds()
    started: dict[int, float] = {}

    async def probe(ctx: JobContext) -> dict[str, float]:
        started[ctx.job.id] = time.perf_counter()
        return {}

    kinds.register("probe", probe)
    daemon = Daemon(config, paths, kinds=kinds)
    figures: dict[str, float] = {}
    done = anyio.Event()
    finished = 0

    def count(notices: object) -> None:
        nonlocal finished
        for notice in notices:  # type: ignore[attr-defined]
            if isinstance(notice, Event) and notice.type == EventType.FINISHED:
                finished += 1
                if finished >= target:
                    done.set()

    target = jobs
    daemon.bus.watch(count)
    async with anyio.create_task_group() as tasks:
        await tasks.start(daemon.run)
        hub = daemon.hub

        async def submit_many(count_each: int) -> None:
            for _ in range(count_each):
                await hub.submit(JobSpec(kind="noop", lane="interactive"))

        # 1. Submit alone: the lane is paused, so nothing competes with the inserts.
        await hub.set_paused("interactive", True)
        began = time.perf_counter()
        async with anyio.create_task_group() as submitters:
            for _ in range(SUBMITTERS):
                submitters.start_soon(submit_many, jobs // SUBMITTERS)
        figures["submit_jobs_per_s"] = (jobs // SUBMITTERS * SUBMITTERS) / (
            time.perf_counter() - began
        )

        # 2. Drain: claim, run, finish what is queued.
        target = jobs // SUBMITTERS * SUBMITTERS
        began = time.perf_counter()
        await hub.set_paused("interactive", False)
        await done.wait()
        figures["drain_jobs_per_s"] = target / (time.perf_counter() - began)

        # 3. Full cycle: submit and run at the same time, until the last is done.
        finished = 0
        done = anyio.Event()
        began = time.perf_counter()
        async with anyio.create_task_group() as submitters:
            for _ in range(SUBMITTERS):
                submitters.start_soon(submit_many, jobs // SUBMITTERS)
        await done.wait()
        figures["cycle_jobs_per_s"] = target / (time.perf_counter() - began)

        # 4. Latency on an idle daemon: one job at a time, submit -> handler start.
        latencies = []
        for _ in range(samples):
            finished, target, done = 0, 1, anyio.Event()
            await anyio.sleep(0.002)  # let the lane settle: the daemon is idle when we submit
            t0 = time.perf_counter()
            result = await hub.submit(JobSpec(kind="probe", lane="interactive"))
            await done.wait()
            latencies.append((started[result.job.id] - t0) * 1000)
        figures["latency_p50_ms"] = statistics.median(latencies)
        figures["latency_p99_ms"] = percentile(latencies, 0.99)
        counts = await hub.counts()
        assert counts[JobState.DONE] == 2 * (jobs // SUBMITTERS * SUBMITTERS) + samples
        daemon.stop()
    return figures


async def over_socket(jobs: int, samples: int, concurrency: int, home: Path) -> dict[str, float]:
    config_file = home / "bench.toml"
    write_config(config_file, jobs, concurrency)
    env = dict(os.environ, INTERLOCK_HOME=str(home), INTERLOCK_CONFIG=str(config_file))
    paths: Paths = resolve_paths(Config(), env)
    daemon = await anyio.open_process(
        [sys.executable, "-m", "interlock", "daemon"],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    figures: dict[str, float] = {}
    try:
        deadline = time.monotonic() + 30
        while not paths.socket_path.exists():  # the daemon binds the socket when ready
            if time.monotonic() > deadline or daemon.returncode is not None:
                raise RuntimeError("the daemon did not start")
            await anyio.sleep(0.05)
        async with connect(paths.socket_path, "bench-watch") as (watcher, notes):
            await watcher.subscribe()
            total = jobs // SUBMITTERS * SUBMITTERS

            async def wait_finished(count: int) -> None:
                seen = 0
                while seen < count:
                    notice = await notes.receive()
                    if isinstance(notice, Event) and notice.type == EventType.FINISHED:
                        seen += 1

            async def submit_round() -> float:
                began = time.perf_counter()
                async with anyio.create_task_group() as tasks:
                    for index in range(CONNECTIONS):
                        tasks.start_soon(connection_submits, index)
                return time.perf_counter() - began

            async def connection_submits(index: int) -> None:
                async with connect(paths.socket_path, f"bench-{index}") as (client, _):
                    per_task = total // CONNECTIONS // (SUBMITTERS // CONNECTIONS)

                    async def loop() -> None:
                        for _ in range(per_task):
                            await client.submit(JobSpec(kind="noop", lane="interactive"))

                    async with anyio.create_task_group() as tasks:
                        for _ in range(SUBMITTERS // CONNECTIONS):
                            tasks.start_soon(loop)

            await watcher.pause("interactive")
            figures["submit_jobs_per_s"] = total / await submit_round()
            began = time.perf_counter()
            await watcher.resume("interactive")
            await wait_finished(total)
            figures["drain_jobs_per_s"] = total / (time.perf_counter() - began)

            began = time.perf_counter()
            async with anyio.create_task_group() as tasks:
                tasks.start_soon(submit_round)
                await wait_finished(total)
            figures["cycle_jobs_per_s"] = total / (time.perf_counter() - began)

            latencies = []
            for _ in range(samples):
                await anyio.sleep(0.002)  # idle daemon
                t0 = time.perf_counter()
                result = await watcher.submit(JobSpec(kind="noop", lane="interactive"))
                while True:
                    notice = await notes.receive()
                    if (
                        isinstance(notice, Event)
                        and notice.job_id == result.job.id
                        and notice.type == EventType.CLAIMED
                    ):
                        latencies.append((time.perf_counter() - t0) * 1000)
                    if (
                        isinstance(notice, Event)
                        and notice.job_id == result.job.id
                        and notice.type == EventType.FINISHED
                    ):
                        break
            figures["latency_p50_ms"] = statistics.median(latencies)
            figures["latency_p99_ms"] = percentile(latencies, 0.99)
    finally:
        daemon.terminate()
        with anyio.fail_after(30):
            await daemon.wait()
    return figures


def machine() -> str:
    cpu = "unknown CPU"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return (
        f"{os.cpu_count()} cores ({cpu}), Python {platform.python_version()},"
        f" SQLite {__import__('sqlite3').sqlite_version}, {platform.system()} {platform.release()}"
    )


def report(title: str, figures: dict[str, float]) -> None:
    print(f"\n{title}")
    print(f"  submit                 {figures['submit_jobs_per_s']:>9,.0f} jobs/s")
    print(f"  drain (claim+run+done) {figures['drain_jobs_per_s']:>9,.0f} jobs/s")
    print(f"  full cycle             {figures['cycle_jobs_per_s']:>9,.0f} jobs/s")
    print(
        f"  submit -> start, idle  p50 {figures['latency_p50_ms']:.3f} ms"
        f"   p99 {figures['latency_p99_ms']:.3f} ms"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--jobs", type=int, default=20_000)
    parser.add_argument("--samples", type=int, default=1000, help="latency samples")
    parser.add_argument("--concurrency", type=int, default=64, help="the lane's slots")
    parser.add_argument("--only", choices=["in-process", "socket"])
    parser.add_argument(
        "--repeat", type=int, default=1, help="runs of each part; the median of each figure"
    )
    args = parser.parse_args()
    print(f"machine: {machine()}")
    print(f"{args.jobs:,} no-op jobs, lane concurrency {args.concurrency}, {SUBMITTERS} submitters")
    for title, run in (("in-process", in_process), ("socket", over_socket)):
        if args.only and args.only != title:
            continue
        runs = []
        for _ in range(args.repeat):
            home = Path(tempfile.mkdtemp(prefix="ilb.", dir="/tmp"))
            try:
                runs.append(anyio.run(run, args.jobs, args.samples, args.concurrency, home))
            finally:
                shutil.rmtree(home, ignore_errors=True)
        median = {name: statistics.median(r[name] for r in runs) for name in runs[0]}
        suffix = f", median of {args.repeat} runs" if args.repeat > 1 else ""
        report(title + suffix, median)


if __name__ == "__main__":
    main()
