"""The store's SQL, loaded by name from queries.sql (as procrastinate keeps its queries).

Each `-- name: NAME` line opens a statement that runs to the next one. The
state sets and each move's sources and target come from `domain`, so the
transition table is the only place that says which state may follow which.
"""

from __future__ import annotations

import re
from functools import cache
from importlib import resources

from interlock.domain import LIVE_STATES, MOVES, TERMINAL_STATES, JobState, Move
from interlock.store.rows import (
    EVENT_COLUMNS,
    JOB_COLUMN_NAMES,
    JOB_COLUMNS,
    JOB_COLUMNS_ELIDED,
    LANE_EVENT_COLUMNS,
)

_NAME = "-- name: "


def _states(states: frozenset[JobState]) -> str:
    return ", ".join(f"'{state.value}'" for state in sorted(states))


class _KeepUnknown(dict[str, str]):
    """Leaves the per-call placeholders ({marks}, {guard}, ...) for later."""

    def __missing__(self, key: str) -> str:
        return "{" + key + "}"


def _parse(text: str) -> dict[str, str]:
    statements: dict[str, list[str]] = {}
    current: list[str] | None = None
    for line in text.splitlines():
        if line.startswith(_NAME):
            name = line[len(_NAME) :].strip()
            if name in statements:
                raise ValueError(f"queries.sql names {name!r} twice")
            current = statements[name] = []
        elif current is not None and not line.lstrip().startswith("--"):
            current.append(line)
    return {name: "\n".join(lines).strip() for name, lines in statements.items()}


def _load() -> dict[str, str]:
    text = (resources.files("interlock.store") / "queries.sql").read_text(encoding="utf-8")
    common = {
        "job_columns": JOB_COLUMNS,
        "job_columns_elided": JOB_COLUMNS_ELIDED,
        "job_columns_of_jobs": ", ".join(f"jobs.{name}" for name in JOB_COLUMN_NAMES),
        "event_columns": EVENT_COLUMNS,
        "lane_event_columns": LANE_EVENT_COLUMNS,
        "terminal": _states(TERMINAL_STATES),
        "live": _states(LIVE_STATES),
    }
    loaded = {}
    for name, sql in _parse(text).items():
        values = _KeepUnknown(common)
        if name.startswith("move_"):
            rule = MOVES[Move(name.removeprefix("move_"))]
            values["sources"] = _states(rule.sources)
            values["target"] = f"'{rule.target.value}'"
        loaded[name] = sql.format_map(values)
    missing = {f"move_{move.value}" for move in Move} - set(loaded)
    if missing:
        raise ValueError(f"queries.sql has no statement for {', '.join(sorted(missing))}")
    return loaded


Q: dict[str, str] = _load()


@cache
def with_marks(name: str, count: int) -> str:
    """A statement with `count` question marks in its IN list."""
    return Q[name].replace("{marks}", ", ".join("?" * count))


# What a move gives back when the caller does not want the whole job: the
# columns the commit needs (its lane, for the queue depths), in JOB_COLUMNS order.
LEAN_RETURNING = "id, kind, lane"


_NAMED = re.compile(r":([a-z_]+)")


@cache
def move_statement(move: Move, guard: str = "", lean: bool = False) -> tuple[str, tuple[str, ...]]:
    """A move's compare-and-set, with the named guard it must also pass ('' for none).

    The :names of queries.sql become plain ? marks, and the names come back in
    their order: positional values bind faster than a dict, on the thread that
    every write waits for.
    """
    sql = Q[f"move_{move.value}"].replace("{guard}", " " + Q[guard] if guard else "")
    sql = sql.replace("{returning}", LEAN_RETURNING if lean else JOB_COLUMNS)
    names = tuple(_NAMED.findall(sql))
    return _NAMED.sub("?", sql), names


def list_statement(where: str, with_payload: bool) -> str:
    """A listing of jobs newest first, with the filter's WHERE clause."""
    columns = JOB_COLUMNS if with_payload else JOB_COLUMNS_ELIDED
    return Q["list_jobs"].replace("{columns}", columns).replace("{where}", where)
