"""interlock.toml -> validated pydantic models, and the paths (XDG, INTERLOCK_HOME)."""

from __future__ import annotations

import difflib
import os
import re
import tomllib
from collections.abc import Collection, Mapping
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any, Literal, get_args, get_origin

from cronsim import CronSim, CronSimError
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from interlock.errors import ConfigError

PROTOCOL_VERSION = 1
MiB = 1024 * 1024


class _Section(BaseModel):
    # TOML spells inf and nan; no setting here means anything by them.
    model_config = ConfigDict(extra="forbid", frozen=True, allow_inf_nan=False)


class DaemonConfig(_Section):
    """How the daemon runs."""

    shutdown_grace_seconds: float = Field(default=10.0, ge=0)
    lease_seconds: float = Field(default=60.0, gt=0)
    log_level: Literal["debug", "info", "warning", "error"] = "info"


class StoreConfig(_Section):
    """Where and how the state is kept."""

    path: str = ""  # empty: <state folder>/interlock.db; relative: under the state folder
    durability: Literal["normal", "full"] = "normal"


class ServerConfig(_Section):
    """The local socket."""

    path: str = ""  # empty: <runtime folder>/interlock.sock; relative: under the runtime folder
    max_message_bytes: int = Field(default=MiB, ge=1024, le=64 * MiB)
    max_connections: int = Field(default=256, ge=1)
    subscriber_queue: int = Field(default=10_000, ge=1)


class LaneConfig(_Section):
    """One lane: its place, its slots, its depth and how fast waiting jobs age."""

    rank: int = Field(ge=0)
    concurrency: int = Field(ge=1, le=10_000)
    max_depth: int = Field(ge=1)
    aging_seconds: float = Field(default=60.0, gt=0)
    stall_after_seconds: float = Field(default=3600.0, gt=0)


class RetryPolicy(_Section):
    """How often a failing job of a kind is tried, and how long it waits between tries."""

    max_attempts: int = Field(default=3, ge=1, le=1000)
    backoff_base_seconds: float = Field(default=2.0, ge=0)
    backoff_max_seconds: float = Field(default=600.0, ge=0)
    backoff_jitter: float = Field(default=0.2, ge=0, le=1)


class KindConfig(_Section):
    """Per-kind settings over the defaults of [jobs]: lane, retries, key window, timeout, gates."""

    lane: str | None = None
    max_attempts: int | None = Field(default=None, ge=1, le=1000)
    backoff_base_seconds: float | None = Field(default=None, ge=0)
    backoff_max_seconds: float | None = Field(default=None, ge=0)
    backoff_jitter: float | None = Field(default=None, ge=0, le=1)
    key_window_seconds: float | None = Field(default=None, ge=0)
    # How long one attempt may run before it is stopped and counted as failed.
    timeout_seconds: float | None = Field(default=None, gt=0)
    # What a job of this kind must pass before it may stay done (gates.reopen reports
    # the jobs that lack them).
    gates: list[Literal["review", "approval"]] = []


DAY = 86_400.0


class JobsConfig(_Section):
    """Defaults for every job kind."""

    default_lane: str = "background"
    # How long a finished job keeps its idempotency key: a client that retries a
    # submit whose reply it lost gets the job that ran, not a second one. A day,
    # as Stripe keeps its keys. 0: only while the job is live.
    key_window_seconds: float = Field(default=DAY, ge=0)
    retry: RetryPolicy = RetryPolicy()
    # How long one attempt may run before it is stopped and counted as failed.
    timeout_seconds: float = Field(default=3600.0, gt=0)
    # A job found running at this many daemon starts (its daemon died each time)
    # is dead: it probably kills the daemon. Crashes are not attempts, so a crash
    # loop does not use up the attempts of the jobs that happened to be running.
    max_crashes: int = Field(default=5, ge=1, le=1000)
    # Retries a handler asks for without charging an attempt (a rate limit):
    # past this many, they are charged, so a job cannot defer for ever.
    max_deferrals: int = Field(default=50, ge=0)


_LANE_NAME = re.compile(r"[a-z][a-z0-9_-]{0,39}")


class _BadSetting(ValueError):
    """A check across settings failed; carries the dotted key it is about, for the message."""

    def __init__(self, loc: tuple[str, ...], reason: str) -> None:
        super().__init__(f"{'.'.join(loc)}: {reason}")
        self.loc = loc
        self.reason = reason


class TimerConfig(_Section):
    """A timer: each slot (an interval, or a cron schedule) it submits one maintenance job."""

    enabled: bool = True
    kind: str = Field(min_length=1)
    interval_seconds: float | None = Field(default=None, gt=0, le=366 * 86400)
    # A cron expression (minute hour day-of-month month day-of-week), in the
    # daemon's local time, instead of interval_seconds.
    cron: str | None = None
    jitter_seconds: float = Field(default=0.0, ge=0)
    lane: str = "maintenance"
    payload: dict[str, Any] = Field(default_factory=dict)

    @model_validator(mode="after")
    def _one_schedule(self) -> TimerConfig:
        if (self.interval_seconds is None) == (self.cron is None):
            raise ValueError("give either interval_seconds or cron, not both, not neither")
        if self.cron is not None:
            try:
                CronSim(self.cron, datetime.now().astimezone())
            except CronSimError as exc:
                raise ValueError(f"cron {self.cron!r} is not a cron expression: {exc}") from None
            if self.jitter_seconds >= 60:
                raise ValueError("jitter_seconds must be under 60 for a cron timer")
        elif self.interval_seconds is not None and self.jitter_seconds >= self.interval_seconds:
            raise ValueError("jitter_seconds must be less than interval_seconds")
        return self


def _default_timers() -> dict[str, TimerConfig]:
    return {
        "health": TimerConfig(kind="health.snapshot", interval_seconds=3600, jitter_seconds=60),
        "stalls": TimerConfig(kind="stalls.scan", interval_seconds=30, jitter_seconds=3),
        "governor": TimerConfig(kind="governor", interval_seconds=60, jitter_seconds=5),
        "projects": TimerConfig(kind="projects.advance", interval_seconds=300, jitter_seconds=15),
        # A safety net: the daemon watches the inbox folder and scans when a file arrives.
        "inbox": TimerConfig(kind="inbox.scan", interval_seconds=300, jitter_seconds=15),
        "retention": TimerConfig(kind="store.retention", interval_seconds=3600, jitter_seconds=60),
        "aging": TimerConfig(kind="priority.age", interval_seconds=300, jitter_seconds=15),
        "gates": TimerConfig(kind="gates.reopen", interval_seconds=600, jitter_seconds=30),
    }


class MaintenanceConfig(_Section):
    """The timers that keep the daemon coherent, each a job in the maintenance lane."""

    timers: dict[str, TimerConfig] = Field(default_factory=_default_timers)
    # After a start, timers wait this long before their first tick: a daemon that
    # has just started serves its user first.
    start_delay_seconds: float = Field(default=60.0, ge=0)


# The kinds that keep the daemon coherent: maintenance in the tax, whatever lane they ran in.
BUILTIN_MAINTENANCE_KINDS = (
    "health.snapshot",
    "stalls.scan",
    "inbox.scan",
    "store.retention",
    "priority.age",
    "gates.reopen",
    "governor",
    "projects.advance",
)


class TaxConfig(_Section):
    """The autonomy tax: which jobs count as maintenance, and how large a share is too large."""

    # A job is maintenance if it ran in the maintenance lane or its kind is listed here.
    maintenance_kinds: tuple[str, ...] = BUILTIN_MAINTENANCE_KINDS
    # The largest share of wall time, tokens or cost (last 24 h) maintenance may
    # take before the health snapshot warns. Counted in what work costs, not in
    # jobs: a hundred idle health checks cost less than one agent run.
    maintenance_budget: float = Field(default=0.6, ge=0, le=1)
    # No warning before this many feature jobs in the window: on an idle daemon
    # every share is maintenance's, and that is no alarm.
    min_feature_jobs: int = Field(default=10, ge=0)


class GovernorConfig(_Section):
    """When the governor pauses a lane: too many recent failures, or too much spent today."""

    window_seconds: float = Field(default=900.0, gt=0)
    min_attempts: int = Field(default=10, ge=1)
    max_failure_rate: float = Field(default=0.5, ge=0, le=1)
    daily_cost_limit: float = Field(default=0.0, ge=0)  # 0: no limit


class ProjectConfig(_Section):
    """A project: a goal, and the kind of job that takes its next step."""

    goal: str = Field(min_length=1, max_length=2000)
    next_kind: str = Field(min_length=1, max_length=200, pattern=r"^\S+$")
    active: bool = True
    lane: str | None = None  # None: the next kind's lane
    payload: dict[str, Any] = Field(default_factory=dict)


class InboxConfig(_Section):
    """The folder whose files become jobs (the inbox.scan maintenance kind)."""

    path: str = ""  # empty: <state folder>/inbox; relative: under the state folder
    # How long an inbox job keeps its key (by default a hash of the file) after it ended.
    key_window_seconds: float = Field(default=30 * 86_400.0, ge=0)
    max_file_bytes: int = Field(default=MiB, ge=1, le=64 * MiB)
    # A scan lists the folder again for files that arrived while it ran; at most this often.
    max_passes: int = Field(default=10, ge=1, le=1_000)
    # Watch the folder (inotify) and scan when a file arrives, not only on the timer.
    watch: bool = True
    # After the first arrival, wait this long for the rest of a burst: one scan for many files.
    watch_debounce_ms: int = Field(default=250, ge=0, le=60_000)

    def folder(self, state_dir: Path) -> Path:
        """The inbox folder: `path` taken from the state folder, or <state folder>/inbox."""
        return state_dir / Path(self.path or "inbox").expanduser()


class RetentionConfig(_Section):
    """How long finished jobs are kept, and the store's backups (the store.retention kind)."""

    days: float = Field(default=30.0, gt=0)  # finished jobs and their events, after they ended
    backups: int = Field(default=3, ge=0, le=1000)  # generations kept; 0: no backups
    # A backup is taken when the newest one is older than this.
    backup_every_seconds: float = Field(default=86_400.0, gt=0)
    backup_dir: str = ""  # empty: <state folder>/backups; relative: under the state folder

    def folder(self, state_dir: Path) -> Path:
        """The backups folder: `backup_dir` taken from the state folder, or <state>/backups."""
        return state_dir / Path(self.backup_dir or "backups").expanduser()


def _default_lanes() -> dict[str, LaneConfig]:
    return {
        "urgent": LaneConfig(rank=0, concurrency=4, max_depth=1_000),
        "interactive": LaneConfig(rank=1, concurrency=4, max_depth=1_000),
        "background": LaneConfig(rank=2, concurrency=2, max_depth=10_000),
        "maintenance": LaneConfig(rank=3, concurrency=2, max_depth=1_000),
    }


def _default_kinds() -> dict[str, KindConfig]:
    day = 86_400.0
    return {
        "noop": KindConfig(lane="interactive"),
        "sleep": KindConfig(lane="background"),
        # A timer's key names its slot; keeping it a day makes a replayed tick collapse.
        "health.snapshot": KindConfig(lane="maintenance", key_window_seconds=day),
        "stalls.scan": KindConfig(lane="maintenance", key_window_seconds=day),
        "governor": KindConfig(lane="maintenance", key_window_seconds=day),
        "projects.advance": KindConfig(lane="maintenance", key_window_seconds=day),
        "inbox.scan": KindConfig(lane="maintenance", key_window_seconds=day),
        "store.retention": KindConfig(lane="maintenance", key_window_seconds=day),
        "priority.age": KindConfig(lane="maintenance", key_window_seconds=day),
        "gates.reopen": KindConfig(lane="maintenance", key_window_seconds=day),
    }


class Config(_Section):
    """The whole configuration."""

    daemon: DaemonConfig = DaemonConfig()
    store: StoreConfig = StoreConfig()
    server: ServerConfig = ServerConfig()
    jobs: JobsConfig = JobsConfig()
    lanes: dict[str, LaneConfig] = Field(default_factory=_default_lanes, min_length=1)
    kinds: dict[str, KindConfig] = Field(default_factory=_default_kinds)
    maintenance: MaintenanceConfig = MaintenanceConfig()
    tax: TaxConfig = TaxConfig()
    governor: GovernorConfig = GovernorConfig()
    projects: dict[str, ProjectConfig] = Field(default_factory=dict)
    inbox: InboxConfig = InboxConfig()
    retention: RetentionConfig = RetentionConfig()

    @model_validator(mode="before")
    @classmethod
    def _merge_over_defaults(cls, data: Any) -> Any:
        """A [lanes.X], [kinds.X] or [maintenance.timers.X] table changes the built-in X's
        settings it names and keeps the others, instead of replacing all of X."""
        if not isinstance(data, dict):
            return data
        data = dict(data)
        for name, defaults in (("lanes", _default_lanes()), ("kinds", _default_kinds())):
            if isinstance(data.get(name), dict):
                data[name] = _merged(defaults, data[name])
        maintenance = data.get("maintenance")
        if isinstance(maintenance, dict) and isinstance(maintenance.get("timers"), dict):
            data["maintenance"] = {
                **maintenance,
                "timers": _merged(_default_timers(), maintenance["timers"], _TIMER_SCHEDULES),
            }
        return data

    @model_validator(mode="after")
    def _lanes_exist(self) -> Config:
        for name in self.lanes:
            if not _LANE_NAME.fullmatch(name):
                raise _BadSetting(
                    ("lanes", name),
                    "a lane name is a lower-case letter, then up to 39 of a-z, 0-9, - and _",
                )
        known = ", ".join(self.lanes)
        if self.jobs.default_lane not in self.lanes:
            raise _BadSetting(
                ("jobs", "default_lane"),
                f"no lane named {self.jobs.default_lane!r}; the lanes are {known}",
            )
        for name, timer in self.maintenance.timers.items():
            if timer.lane not in self.lanes:
                raise _BadSetting(
                    ("maintenance", "timers", name, "lane"),
                    f"no lane named {timer.lane!r}; the lanes are {known}",
                )
        for kind, settings in self.kinds.items():
            if settings.lane is not None and settings.lane not in self.lanes:
                raise _BadSetting(
                    ("kinds", kind, "lane"),
                    f"no lane named {settings.lane!r}; the lanes are {known}",
                )
        for name, project in self.projects.items():
            if not 1 <= len(name) <= 200:
                raise _BadSetting(("projects", name), "a project name is 1 to 200 characters")
            if project.lane is not None and project.lane not in self.lanes:
                raise _BadSetting(
                    ("projects", name, "lane"),
                    f"no lane named {project.lane!r}; the lanes are {known}",
                )
        return self

    def lane_for(self, kind: str) -> str:
        """The lane a job of `kind` goes to when the submit names none."""
        settings = self.kinds.get(kind)
        if settings is not None and settings.lane is not None:
            return settings.lane
        return self.jobs.default_lane

    def key_window(self, kind: str) -> float:
        """Seconds a finished job of `kind` still holds its key (0: only while live)."""
        settings = self.kinds.get(kind)
        if settings is not None and settings.key_window_seconds is not None:
            return settings.key_window_seconds
        return self.jobs.key_window_seconds

    def timeout_for(self, kind: str) -> float:
        """Seconds one attempt of `kind` may run before it is stopped."""
        settings = self.kinds.get(kind)
        if settings is not None and settings.timeout_seconds is not None:
            return settings.timeout_seconds
        return self.jobs.timeout_seconds

    def retry_policy(self, kind: str) -> RetryPolicy:
        """The retry policy of `kind`: its own settings over the defaults."""
        settings = self.kinds.get(kind)
        base = self.jobs.retry
        if settings is None:
            return base
        overrides = {
            name: value
            # Only the retry fields: a kind's other settings (lane, gates, ...) are not policy.
            for name, value in settings.model_dump(include=set(RetryPolicy.model_fields)).items()
            if value is not None
        }
        return base.model_copy(update=overrides)


# A timer has one schedule: naming either of these replaces the built-in one.
_TIMER_SCHEDULES = frozenset({"interval_seconds", "cron"})


def _merged(
    defaults: Mapping[str, BaseModel],
    given: dict[str, Any],
    exclusive: frozenset[str] = frozenset(),
) -> dict[str, Any]:
    """The user's tables over the built-in ones, key by key (tables given as models replace)."""
    merged: dict[str, Any] = dict(defaults)
    for name, table in given.items():
        base = defaults.get(name)
        if isinstance(table, dict) and base is not None:
            settings = base.model_dump(exclude_unset=True)
            if exclusive & table.keys():
                settings = {key: value for key, value in settings.items() if key not in exclusive}
            merged[name] = {**settings, **table}
        else:
            merged[name] = table
    return merged


def check_kinds(config: Config, known: Collection[str]) -> None:
    """Every kind that config names (a kind's settings, a timer, a project) has a handler."""
    listed = ", ".join(sorted(known))
    problems = []
    for kind in config.kinds:
        if kind not in known:
            problems.append(f"kinds.{kind}: no handler for job kind {kind!r} (kinds: {listed})")
    for name, timer in config.maintenance.timers.items():
        if timer.kind not in known:
            problems.append(
                f"maintenance.timers.{name}.kind: no handler for job kind {timer.kind!r}"
                f" (kinds: {listed})"
            )
    for name, project in config.projects.items():
        if project.next_kind not in known:
            problems.append(
                f"projects.{name}.next_kind: no handler for job kind {project.next_kind!r}"
                f" (kinds: {listed})"
            )
    if problems:
        raise ConfigError("\n".join(problems))


def load_config(path: Path | None) -> Config:
    """Read and validate a TOML file; None gives the embedded defaults."""
    if path is None:
        return Config()
    try:
        data = path.read_bytes()
    except OSError as exc:
        reason = exc.strerror or str(exc)
        raise ConfigError(f"{path}: cannot read the config file: {reason}") from exc
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as exc:
        line = data.count(b"\n", 0, exc.start) + 1
        raise ConfigError(f"{path}: not UTF-8 text (line {line})") from exc
    try:
        raw = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        # tomllib's message already ends with "(at line L, column C)".
        raise ConfigError(f"{path}: not valid TOML: {exc}") from exc
    try:
        return Config.model_validate(raw)
    except ValidationError as exc:
        raise ConfigError(_describe(path, text, exc)) from exc


def _describe(path: Path, text: str, exc: ValidationError) -> str:
    """One line per error: `file: dotted.key: why (line N)`."""
    lines = []
    for error in exc.errors():
        loc = tuple(str(part) for part in error["loc"])
        why = error["msg"]
        cause = error.get("ctx", {}).get("error")
        if isinstance(cause, _BadSetting):
            loc, why = cause.loc, cause.reason
        elif error["type"] == "extra_forbidden":
            why = _unknown_key(loc)
        elif error["type"] == "missing":
            why = "required, but not set"
        elif isinstance(error["input"], str | int | float | bool):
            why = f"{why}, not {error['input']!r}"
        where = _line_of(text, loc)
        suffix = f" (line {where})" if where else ""
        lines.append(f"{path}: {'.'.join(loc) or '(top level)'}: {why}{suffix}")
    return "\n".join(lines)


def _unknown_key(loc: tuple[str, ...]) -> str:
    """The reason for an unknown key: the nearest known key, or the list of them."""
    model = _model_at(loc[:-1])
    if model is None:
        return "unknown key"
    known = list(model.model_fields)
    close = difflib.get_close_matches(loc[-1], known, n=1)
    if close:
        return f"unknown key; did you mean {close[0]!r}?"
    return f"unknown key; the keys here are {', '.join(known)}"


def _model_at(loc: tuple[str, ...]) -> type[BaseModel] | None:
    """The model whose table sits at `loc`, stepping over the names of lanes and kinds."""
    model: type[BaseModel] = Config
    parts = list(loc)
    while parts:
        field = model.model_fields.get(parts.pop(0))
        if field is None:
            return None
        annotation: Any = field.annotation
        if get_origin(annotation) is dict:
            if not parts:
                return None  # the table of lanes or kinds itself: any name goes
            parts.pop(0)
            annotation = get_args(annotation)[1]
        if not (isinstance(annotation, type) and issubclass(annotation, BaseModel)):
            return None
        model = annotation
    return model


_BARE_KEY = re.compile(r"[A-Za-z0-9_-]+")
_QUOTED_KEY = re.compile(r"\"((?:[^\"\\]|\\.)*)\"|'([^']*)'")


def _line_of(text: str, loc: tuple[str, ...]) -> int | None:
    """Best effort, as tomllib keeps no positions: the line that sets `loc`.

    Tracks the current [table] so that `lanes.urgent.concurrency` finds the
    `concurrency =` under [lanes.urgent], or a dotted or inline-table key that
    spells the same path. Failing an exact match, the line of the nearest
    enclosing table or key (a missing key points at its table).
    """
    table: tuple[str, ...] = ()
    best: tuple[int, int] | None = None  # (matched depth, line)
    closing: str | None = None  # inside a multi-line string until this delimiter
    for number, line in enumerate(text.splitlines(), start=1):
        if closing is not None:
            if line.count(closing) % 2 == 1:
                closing = None
            continue
        stripped = line.strip()
        if not stripped or stripped.startswith("#"):
            continue
        if stripped.startswith("["):
            parsed = _dotted_key(stripped.lstrip("["))
            if parsed is None:
                continue
            table = path = parsed[0]
        else:
            parsed = _dotted_key(stripped)
            if parsed is None or not parsed[1].startswith("="):
                continue
            path = table + parsed[0]
            for delimiter in ('"""', "'''"):
                if parsed[1].count(delimiter) % 2 == 1:
                    closing = delimiter
        if path == loc:
            return number
        if loc[: len(path)] == path and (best is None or len(path) > best[0]):
            best = (len(path), number)
    return best[1] if best else None


def _dotted_key(text: str) -> tuple[tuple[str, ...], str] | None:
    """`a."b c".d = 1` -> (("a", "b c", "d"), "= 1"); None if `text` opens with no key."""
    parts: list[str] = []
    rest = text
    while True:
        rest = rest.lstrip()
        match = _BARE_KEY.match(rest)
        if match:
            parts.append(match.group(0))
        else:
            match = _QUOTED_KEY.match(rest)
            if not match:
                return None
            parts.append(match.group(1) if match.group(1) is not None else match.group(2))
        rest = rest[match.end() :].lstrip()
        if not rest.startswith("."):
            return tuple(parts), rest
        rest = rest[1:]


@dataclass(frozen=True)
class Paths:
    """Every place on disk the daemon and its clients use."""

    state_dir: Path
    db_path: Path
    socket_path: Path
    artifacts_dir: Path
    lock_path: Path
    inbox_dir: Path


def _xdg(env: dict[str, str], name: str) -> Path | None:
    """An XDG base directory if set; the spec says to ignore a relative one."""
    value = env.get(name, "")
    return Path(value) if value and Path(value).is_absolute() else None


def resolve_paths(config: Config, env: dict[str, str] | None = None) -> Paths:
    """INTERLOCK_HOME puts everything under one folder; otherwise the XDG base directories."""
    env = dict(os.environ) if env is None else env
    home = env.get("INTERLOCK_HOME")
    if home:
        state_dir = Path(home).expanduser()
        runtime_dir = state_dir
    else:
        state_home = _xdg(env, "XDG_STATE_HOME") or Path.home() / ".local" / "state"
        state_dir = state_home / "interlock"
        runtime_home = _xdg(env, "XDG_RUNTIME_DIR")
        # No runtime folder (a cron job, a container): the socket goes with the state.
        runtime_dir = runtime_home / "interlock" if runtime_home else state_dir
    # A relative path is taken from its folder, not from the daemon's working directory;
    # joining an absolute path gives that path.
    db_path = state_dir / Path(config.store.path or "interlock.db").expanduser()
    socket_path = runtime_dir / Path(config.server.path or "interlock.sock").expanduser()
    return Paths(
        state_dir=state_dir,
        db_path=db_path,
        socket_path=socket_path,
        artifacts_dir=state_dir / "artifacts",
        lock_path=state_dir / "interlock.lock",
        inbox_dir=config.inbox.folder(state_dir),
    )


def config_path(cli_value: str | None, env: dict[str, str] | None = None) -> Path | None:
    """--config beats INTERLOCK_CONFIG beats $XDG_CONFIG_HOME/interlock/interlock.toml."""
    env = dict(os.environ) if env is None else env
    if cli_value:
        return Path(cli_value).expanduser()
    if env.get("INTERLOCK_CONFIG"):
        return Path(env["INTERLOCK_CONFIG"]).expanduser()
    config_home = _xdg(env, "XDG_CONFIG_HOME") or Path.home() / ".config"
    candidate = config_home / "interlock" / "interlock.toml"
    return candidate if candidate.is_file() else None
