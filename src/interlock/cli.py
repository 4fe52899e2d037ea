"""Argument parsing -> one client call -> printing. The CLI is a client of the socket only."""

from __future__ import annotations

import argparse
import json
import math
import re
import sys
import time
from collections.abc import Callable, Coroutine, Sequence
from datetime import datetime
from pathlib import Path
from typing import Any

import anyio
from pydantic import BaseModel, ValidationError

from interlock import __version__
from interlock.config import config_path, load_config, resolve_paths
from interlock.domain import Event, Job, JobFilter, JobSpec, JobState, LaneStatus, SubmitResult
from interlock.errors import InterlockError
from interlock.ipc.client import Client, ClientError, RemoteError, connect
from interlock.ipc.protocol import LaneChange

EXIT_OK = 0
EXIT_FAILED = 1
EXIT_USAGE = 2


class UsageError(Exception):
    """The command line asks for something malformed (exit 2)."""


# -- output helpers ------------------------------------------------------------------


def _emit_json(value: Any) -> None:
    print(json.dumps(value, indent=2, ensure_ascii=False, default=_jsonable))


def _jsonable(value: Any) -> Any:
    """Models anywhere in a JSON document (json.dumps calls this for what it cannot encode)."""
    if isinstance(value, BaseModel):
        return value.model_dump(mode="json")
    raise TypeError(f"cannot print a {type(value).__name__} as JSON")


def _table(headers: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    widths = [len(header) for header in headers]
    for row in rows:
        widths = [max(width, len(cell)) for width, cell in zip(widths, row, strict=True)]
    lines = [
        "  ".join(cell.ljust(width) for cell, width in zip(headers, widths, strict=True)).rstrip()
    ]
    for row in rows:
        lines.append(
            "  ".join(cell.ljust(width) for cell, width in zip(row, widths, strict=True)).rstrip()
        )
    return "\n".join(lines)


def _age(seconds: float) -> str:
    seconds = max(0.0, seconds)
    if seconds < 60:
        return f"{seconds:.0f}s"
    if seconds < 3600:
        return f"{seconds // 60:.0f}m"
    if seconds < 86400:
        return f"{seconds // 3600:.0f}h{(seconds % 3600) // 60:02.0f}m"
    return f"{seconds // 86400:.0f}d{(seconds % 86400) // 3600:.0f}h"


def _when(at: float | None) -> str:
    if at is None:
        return "-"
    return datetime.fromtimestamp(at).astimezone().isoformat(timespec="milliseconds")


def _clip(text: str, width: int) -> str:
    text = " ".join(text.split())
    return text if len(text) <= width else text[: width - 1] + "…"


def _submitted(result: SubmitResult) -> dict[str, Any]:
    """What `submit --json` and `tick --json` print."""
    job = result.job
    return {"id": job.id, "state": job.state.value, "duplicate": result.duplicate, "job": job}


def _job_line(job: Job) -> str:
    return f"job {job.id} {job.kind} in lane {job.lane}: {job.state.value}"


def _event_rows(events: Sequence[Event]) -> list[list[str]]:
    rows = []
    for event in events:
        change = ""
        if event.from_state != event.to_state or event.from_state is None:
            change = f"{event.from_state.value if event.from_state else '-'} -> "
            change += event.to_state.value if event.to_state else "-"
        rows.append(
            [
                _when(event.at),
                event.type.value,
                change,
                event.trigger.value if event.trigger else "",
                _clip(event.note, 70),
            ]
        )
    return rows


def _print_events(events: Sequence[Event]) -> None:
    print(_table(["AT", "EVENT", "STATE", "TRIGGER", "NOTE"], _event_rows(events)))


def _print_job(job: Job) -> None:
    fields: list[tuple[str, str]] = [
        ("id", str(job.id)),
        ("kind", job.kind),
        ("state", job.state.value),
        ("lane", job.lane),
        ("priority", str(job.priority)),
        ("project", job.project or "-"),
        ("key", job.key or "-"),
        ("trigger", job.trigger.value),
        ("reason", job.reason or "-"),
        ("parent", str(job.parent_id) if job.parent_id else "-"),
        ("root", str(job.root_id)),
        ("attempts", f"{job.attempts} of {job.max_attempts}"),
        ("created", _when(job.created_at)),
        ("not before", _when(job.not_before) if job.not_before > job.created_at else "-"),
        ("started", _when(job.started_at)),
        ("finished", _when(job.finished_at)),
        (
            "lease",
            f"{job.lease_holder} until {_when(job.lease_expires_at)}" if job.lease_holder else "-",
        ),
        ("payload", json.dumps(job.payload, ensure_ascii=False)),
        ("result", json.dumps(job.result, ensure_ascii=False) if job.result is not None else "-"),
        ("error", job.error or "-"),
    ]
    width = max(len(name) for name, _ in fields)
    for name, value in fields:
        print(f"{name.rjust(width)}  {value}")


def _print_lanes(lanes: Sequence[LaneStatus]) -> None:
    now = time.time()
    rows = [
        [
            lane.name,
            "paused" if lane.paused else "open",
            f"{lane.running}/{lane.concurrency}",
            f"{lane.queued}/{lane.max_depth}",
            _age(now - lane.oldest_queued_at) if lane.oldest_queued_at else "-",
        ]
        for lane in lanes
    ]
    print(_table(["LANE", "STATUS", "RUNNING", "QUEUED", "OLDEST"], rows))
    for lane in lanes:
        if lane.paused and lane.paused_reason:
            print(f"{lane.name} paused: {lane.paused_reason}")


# -- commands -----------------------------------------------------------------------------

Command = Callable[[Client, argparse.Namespace], Coroutine[Any, Any, int]]


async def cmd_submit(client: Client, args: argparse.Namespace) -> int:
    try:
        payload = json.loads(args.payload) if args.payload else {}
    except json.JSONDecodeError as exc:
        raise UsageError(f"--payload is not valid JSON: {exc}") from None
    if not isinstance(payload, dict):
        raise UsageError("--payload must be a JSON object, like '{\"seconds\": 5}'")
    try:
        spec = JobSpec(
            kind=args.kind,
            payload=payload,
            key=args.key,
            lane=args.lane,
            priority=args.priority,
            project=args.project,
            reason=args.reason or "",
            parent_id=args.parent,
            source="cli",
        )
    except ValidationError as exc:
        raise UsageError(_validation_sentence(exc)) from None
    result = await client.submit(spec)
    if args.json:
        _emit_json(_submitted(result))
    elif result.duplicate:
        print(f"duplicate: {_job_line(result.job)} already holds key {result.job.key!r}")
    else:
        print(f"queued {_job_line(result.job)}")
    return EXIT_OK


async def cmd_ls(client: Client, args: argparse.Namespace) -> int:
    try:
        states = tuple(JobState(state) for state in args.state or ())
    except ValueError:
        raise UsageError(
            f"--state must be one of: {', '.join(state.value for state in JobState)}"
        ) from None
    page = await client.list_jobs(JobFilter(states=states, lane=args.lane, limit=args.limit))
    if args.json:
        _emit_json(page.jobs)
        return EXIT_OK
    now = time.time()
    rows = [
        [
            str(job.id),
            job.kind,
            job.lane,
            job.state.value,
            str(job.priority),
            f"{job.attempts}/{job.max_attempts}",
            _clip(job.key or "-", 24),
            _age(now - job.created_at),
            _clip(job.reason or "-", 40),
        ]
        for job in page.jobs
    ]
    if rows:
        print(_table(["ID", "KIND", "LANE", "STATE", "PRI", "TRIES", "KEY", "AGE", "REASON"], rows))
    else:
        print("no jobs")
    return EXIT_OK


async def cmd_show(client: Client, args: argparse.Namespace) -> int:
    detail = await client.get(args.id)
    if args.json:
        _emit_json(detail)
        return EXIT_OK
    _print_job(detail.job)
    print()
    _print_events(detail.events)
    return EXIT_OK


async def cmd_why(client: Client, args: argparse.Namespace) -> int:
    why = await client.why(args.id)
    if args.json:
        _emit_json(why)
        return EXIT_OK
    for depth, job in enumerate(why.chain):
        indent = "  " * depth
        branch = "└─ " if depth else ""
        reason = f": {job.reason}" if job.reason else ""
        print(
            f"{indent}{branch}job {job.id} {job.kind} [{job.state.value}]"
            f" asked by {job.trigger.value} at {_when(job.created_at)}{reason}"
        )
    print()
    _print_events(why.events)
    return EXIT_OK


async def cmd_wait(client: Client, args: argparse.Namespace, notes: Any) -> int:
    await client.subscribe()
    job = (await client.get(args.id)).job  # read after subscribing, so no transition slips by
    timeout = math.inf if args.timeout is None else args.timeout
    with anyio.move_on_after(timeout):
        while not job.state.is_terminal:
            try:
                notice = await notes.receive()
            except (anyio.EndOfStream, anyio.ClosedResourceError):
                raise ClientError(
                    f"lost the connection to the daemon while waiting for job {args.id}"
                ) from None
            if isinstance(notice, Event) and notice.job_id == args.id and notice.to_state:
                job = (await client.get(args.id)).job
    timed_out = not job.state.is_terminal
    if args.json:
        _emit_json(
            {
                "id": job.id,
                "state": job.state.value,
                "timed_out": timed_out,
                "job": job,
            }
        )
    elif timed_out:
        print(f"timed out after {args.timeout:g}s: {_job_line(job)}", file=sys.stderr)
    else:
        print(
            _job_line(job) + (f" ({job.error})" if job.error and job.state != JobState.DONE else "")
        )
    return EXIT_OK if job.state == JobState.DONE else EXIT_FAILED


async def cmd_cancel(client: Client, args: argparse.Namespace) -> int:
    job = (await client.cancel(args.id)).job
    _emit_json(job) if args.json else print(f"cancelled {_job_line(job)}")
    return EXIT_OK


async def cmd_retry(client: Client, args: argparse.Namespace) -> int:
    job = (await client.retry(args.id)).job
    _emit_json(job) if args.json else print(f"requeued {_job_line(job)}")
    return EXIT_OK


async def cmd_lanes(client: Client, args: argparse.Namespace) -> int:
    lanes = (await client.lanes()).lanes
    _emit_json(lanes) if args.json else _print_lanes(lanes)
    return EXIT_OK


async def cmd_pause(client: Client, args: argparse.Namespace) -> int:
    lanes = (await client.pause(args.lane, args.reason or "")).lanes
    _emit_json(lanes[0]) if args.json else print(
        f"lane {args.lane} paused: running jobs finish, nothing new starts"
    )
    return EXIT_OK


async def cmd_resume(client: Client, args: argparse.Namespace) -> int:
    lanes = (await client.resume(args.lane)).lanes
    _emit_json(lanes[0]) if args.json else print(f"lane {args.lane} resumed")
    return EXIT_OK


async def cmd_health(client: Client, args: argparse.Namespace) -> int:
    health = await client.health()
    if args.json:
        _emit_json(health)
        return EXIT_OK
    uptime = _age(health.uptime_seconds)
    print(f"interlock {health.version}: {health.status}, pid {health.pid}, up {uptime}")
    print(f"store   {health.store_path}")
    print(f"socket  {health.socket_path}")
    counts = ", ".join(f"{count} {state}" for state, count in health.jobs.items() if count)
    print(f"jobs    {counts or 'none'}")
    print(f"clients {health.connections} connected, {health.subscribers} subscribed")
    tax = (health.snapshot or {}).get("tax")
    if tax:
        over = "over budget" if tax["over_budget"] else "within budget"
        print(
            f"tax     maintenance {tax['maintenance']['jobs']:.0%} of {tax['jobs']} jobs"
            f" in the last 24 h ({over}: {tax['budget']:.0%})"
        )
    print()
    _print_lanes(health.lanes)
    return EXIT_OK


def _window(seconds: float) -> str:
    """A window as it was probably asked for: 7d, 12h, 30m, 45s."""
    for unit, size in (("d", 86_400), ("h", 3600), ("m", 60)):
        if seconds >= size and seconds % size == 0:
            return f"{seconds / size:.0f}{unit}"
    return f"{seconds:g}s"


async def cmd_tax(client: Client, args: argparse.Namespace) -> int:
    report = await client.tax(args.since, args.by)
    if args.json:
        _emit_json(report)
        return EXIT_OK
    totals = report.totals
    print(
        f"autonomy tax, last {_window(report.until - report.since)}:"
        f" {totals.jobs} jobs, {totals.jobs_per_day:.1f} per day"
    )
    for name, figures in (("maintenance", report.maintenance), ("feature", report.feature)):
        shares = figures.shares
        print(
            f"{name.ljust(11)} {shares.jobs:.0%} of jobs, {shares.wall_seconds:.0%} of wall time,"
            f" {shares.tokens:.0%} of tokens, {shares.cost:.0%} of cost"
            f" ({figures.totals.jobs} jobs, {figures.totals.jobs_per_day:.1f} per day)"
        )
    verdict = "OVER BUDGET" if report.over_budget else "within budget"
    print(f"budget      maintenance up to {report.budget:.0%} of jobs: {verdict}")
    if report.groups:
        rows = [
            [
                group.job_class.value,
                group.name if group.name is not None else "(none)",
                str(group.totals.jobs),
                f"{group.totals.jobs_per_day:.1f}",
                _age(group.totals.wall_seconds),
                str(group.totals.tokens),
                f"{group.totals.cost:.2f}",
            ]
            for group in report.groups
        ]
        print()
        headers = ["CLASS", (report.by or "").upper(), "JOBS", "PER DAY", "WALL"]
        print(_table([*headers, "TOKENS", "COST"], rows))
    return EXIT_OK


async def cmd_tick(client: Client, args: argparse.Namespace) -> int:
    result = await client.tick(args.name)
    if args.json:
        _emit_json(_submitted(result))
    else:
        print(f"queued {_job_line(result.job)}")
    return EXIT_OK


async def cmd_stalls(client: Client, args: argparse.Namespace) -> int:
    found = await client.stalls()
    if args.json:
        _emit_json(found)
        return EXIT_OK
    now = time.time()
    rows = []
    for why, jobs in (
        ("lease expired", found.expired),
        ("waiting too long", found.waiting),
        ("stalled recently", found.recent),
    ):
        for job in jobs:
            rows.append(
                [str(job.id), job.kind, job.lane, job.state.value, why, _age(now - job.created_at)]
            )
    if rows:
        print(_table(["ID", "KIND", "LANE", "STATE", "WHY", "AGE"], rows))
    else:
        print("no stalls")
    return EXIT_OK


def _validation_sentence(exc: ValidationError) -> str:
    parts = []
    for error in exc.errors():
        where = ".".join(str(part) for part in error["loc"])
        parts.append(f"{where}: {error['msg']}")
    return "; ".join(parts)


# -- parsing ---------------------------------------------------------------------------------


_DURATION = re.compile(r"(\d+(?:\.\d+)?)\s*([smhdw]?)")
_UNIT_SECONDS = {"": 1.0, "s": 1.0, "m": 60.0, "h": 3600.0, "d": 86_400.0, "w": 604_800.0}


def _duration(text: str) -> float:
    """30m, 12h, 7d, 2w, or plain seconds: more than 0."""
    match = _DURATION.fullmatch(text.strip().lower())
    if match is None:
        raise argparse.ArgumentTypeError(
            f"a duration is a number with s, m, h, d or w after it (30m, 12h, 7d), not {text!r}"
        )
    seconds = float(match.group(1)) * _UNIT_SECONDS[match.group(2)]
    if seconds <= 0:
        raise argparse.ArgumentTypeError("a duration must be more than 0")
    return seconds


def _positive_float(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number: {text!r}") from None
    if value < 0 or math.isnan(value):
        raise argparse.ArgumentTypeError("must be zero or more")
    return value


def _limit(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a whole number: {text!r}") from None
    if not 1 <= value <= 10_000:
        raise argparse.ArgumentTypeError("must be between 1 and 10000")
    return value


def _job_id(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"a job id is a positive integer, not {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"a job id is a positive integer, not {text!r}")
    return value


def build_parser() -> argparse.ArgumentParser:
    # --json and --config work before or after the command; SUPPRESS keeps a
    # subcommand from overwriting a value given before it.
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument(
        "--json", action="store_true", default=argparse.SUPPRESS, help="print one JSON document"
    )
    common.add_argument(
        "--config",
        metavar="PATH",
        default=argparse.SUPPRESS,
        help="config file (default: $INTERLOCK_CONFIG, then ~/.config/interlock/interlock.toml)",
    )

    parser = argparse.ArgumentParser(
        prog="interlock", description="A control plane for AI-agent work on one workstation."
    )
    parser.add_argument("--version", action="version", version=f"interlock {__version__}")
    parser.add_argument("--json", action="store_true", help="print one JSON document")
    parser.add_argument("--config", metavar="PATH", help="config file")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    sub.add_parser("daemon", parents=[common], help="run the daemon in the foreground")

    p = sub.add_parser("submit", parents=[common], help="submit a job")
    p.add_argument("kind")
    p.add_argument("--payload", metavar="JSON", help="the job's input, a JSON object")
    p.add_argument("--key", help="idempotency key: a live job with this key is returned instead")
    p.add_argument("--lane")
    p.add_argument("--priority", type=int, default=0, help="higher runs sooner (-1000..1000)")
    p.add_argument("--project")
    p.add_argument("--reason", help="why this job exists, for `interlock why`")
    p.add_argument("--parent", type=_job_id, metavar="ID", help="the job that asked for this one")

    p = sub.add_parser("ls", parents=[common], help="list jobs, newest first")
    p.add_argument("--state", action="append", help="only this state (repeatable)")
    p.add_argument("--lane")
    p.add_argument("--limit", type=_limit, default=50, help="at most this many (1-10000)")

    for name, text in (
        ("show", "one job and its events"),
        ("why", "why a job exists: its lineage and events"),
        ("cancel", "cancel a live job"),
        ("retry", "queue a dead or cancelled job again"),
    ):
        p = sub.add_parser(name, parents=[common], help=text)
        p.add_argument("id", type=_job_id)

    p = sub.add_parser("wait", parents=[common], help="wait until a job ends (exit 0 if done)")
    p.add_argument("id", type=_job_id)
    p.add_argument("--timeout", type=_positive_float, metavar="S")

    sub.add_parser("lanes", parents=[common], help="lanes and their load")
    p = sub.add_parser("pause", parents=[common], help="pause a lane")
    p.add_argument("lane")
    p.add_argument("--reason")
    p = sub.add_parser("resume", parents=[common], help="resume a lane")
    p.add_argument("lane")
    sub.add_parser("health", parents=[common], help="is the daemon well")
    p = sub.add_parser("tick", parents=[common], help="run a maintenance timer's job now")
    p.add_argument("name")
    sub.add_parser("stalls", parents=[common], help="stalled and long-waiting jobs")
    p = sub.add_parser(
        "tax", parents=[common], help="the autonomy tax: maintenance against feature work"
    )
    p.add_argument(
        "--since", type=_duration, default=7 * 86_400.0, metavar="DURATION", help="default 7d"
    )
    p.add_argument("--by", choices=("kind", "lane", "project"))
    sub.add_parser(
        "paths", parents=[common], help="print the resolved config, store and socket paths"
    )
    return parser


COMMANDS: dict[str, Command] = {
    "submit": cmd_submit,
    "ls": cmd_ls,
    "show": cmd_show,
    "why": cmd_why,
    "cancel": cmd_cancel,
    "retry": cmd_retry,
    "lanes": cmd_lanes,
    "pause": cmd_pause,
    "resume": cmd_resume,
    "health": cmd_health,
    "tick": cmd_tick,
    "stalls": cmd_stalls,
    "tax": cmd_tax,
}


def _fail(message: str, code: int = EXIT_FAILED) -> int:
    for line in message.splitlines() or [""]:
        print(f"interlock: {line}", file=sys.stderr)
    return code


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the `interlock` command."""
    args = build_parser().parse_args(argv)
    try:
        config_file = config_path(args.config)
        config = load_config(config_file)
    except InterlockError as exc:
        return _fail(exc.message)
    paths = resolve_paths(config)

    if args.command == "daemon":
        return _run_daemon(config, paths)
    if args.command == "paths":
        info = {
            "config": str(config_file) if config_file else None,
            "state": str(paths.state_dir),
            "store": str(paths.db_path),
            "socket": str(paths.socket_path),
            "artifacts": str(paths.artifacts_dir),
            "inbox": str(paths.inbox_dir),
        }
        if args.json:
            _emit_json(info)
        else:
            for name, value in info.items():
                print(f"{name.rjust(9)}  {value or '(built-in defaults)'}")
        return EXIT_OK

    async def call() -> int:
        async with connect(paths.socket_path, f"interlock-cli/{__version__}") as (client, notes):
            if args.command == "wait":
                return await cmd_wait(client, args, notes)
            return await COMMANDS[args.command](client, args)

    try:
        return anyio.run(call)
    except UsageError as exc:
        return _fail(str(exc), EXIT_USAGE)
    except RemoteError as exc:
        return _fail(exc.message)
    except ClientError as exc:
        return _fail(str(exc))
    except KeyboardInterrupt:
        return 130


def _run_daemon(config: Any, paths: Any) -> int:
    from interlock.daemon import Daemon, setup_logging

    setup_logging(config.daemon.log_level)
    daemon = Daemon(config, paths, handle_signals=True)
    try:
        anyio.run(daemon.run)
    except InterlockError as exc:
        return _fail(exc.message)
    except KeyboardInterrupt:
        return EXIT_OK
    return EXIT_OK


__all__ = ["LaneChange", "Path", "main"]
