"""interlock.toml -> validated pydantic models, and the paths (XDG, INTERLOCK_HOME)."""

from __future__ import annotations

import os
import re
import tomllib
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from interlock.errors import ConfigError

PROTOCOL_VERSION = 1
MiB = 1024 * 1024


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class DaemonConfig(_Section):
    """How the daemon runs."""

    shutdown_grace_seconds: float = Field(default=10.0, ge=0)
    lease_seconds: float = Field(default=60.0, gt=0)
    log_level: Literal["debug", "info", "warning", "error"] = "info"


class StoreConfig(_Section):
    """Where and how the state is kept."""

    path: str = ""  # empty: <state folder>/interlock.db
    durability: Literal["normal", "full"] = "normal"


class ServerConfig(_Section):
    """The local socket."""

    path: str = ""  # empty: $XDG_RUNTIME_DIR/interlock/interlock.sock
    max_message_bytes: int = Field(default=MiB, ge=1024, le=64 * MiB)
    max_connections: int = Field(default=256, ge=1)
    subscriber_queue: int = Field(default=10_000, ge=1)


class LaneConfig(_Section):
    """One lane: its place, its slots, its depth and how fast waiting jobs age."""

    rank: int = Field(ge=0)
    concurrency: int = Field(ge=1, le=10_000)
    max_depth: int = Field(ge=1)
    aging_seconds: float = Field(default=60.0, gt=0)


class RetryPolicy(_Section):
    """How often a failing job of a kind is tried, and how long it waits between tries."""

    max_attempts: int = Field(default=3, ge=1, le=1000)
    backoff_base_seconds: float = Field(default=2.0, ge=0)
    backoff_max_seconds: float = Field(default=600.0, ge=0)
    backoff_jitter: float = Field(default=0.2, ge=0, le=1)


class KindConfig(_Section):
    """Per-kind settings: the lane a kind goes to unless asked otherwise, its retry policy."""

    lane: str | None = None
    max_attempts: int | None = Field(default=None, ge=1, le=1000)
    backoff_base_seconds: float | None = Field(default=None, ge=0)
    backoff_max_seconds: float | None = Field(default=None, ge=0)
    backoff_jitter: float | None = Field(default=None, ge=0, le=1)


class JobsConfig(_Section):
    """Defaults for every job kind."""

    default_lane: str = "background"
    retry: RetryPolicy = RetryPolicy()


def _default_lanes() -> dict[str, LaneConfig]:
    return {
        "urgent": LaneConfig(rank=0, concurrency=4, max_depth=1_000),
        "interactive": LaneConfig(rank=1, concurrency=4, max_depth=1_000),
        "background": LaneConfig(rank=2, concurrency=2, max_depth=10_000),
        "maintenance": LaneConfig(rank=3, concurrency=2, max_depth=1_000),
    }


def _default_kinds() -> dict[str, KindConfig]:
    return {"noop": KindConfig(lane="interactive"), "sleep": KindConfig(lane="background")}


class Config(_Section):
    """The whole configuration."""

    daemon: DaemonConfig = DaemonConfig()
    store: StoreConfig = StoreConfig()
    server: ServerConfig = ServerConfig()
    jobs: JobsConfig = JobsConfig()
    lanes: dict[str, LaneConfig] = Field(default_factory=_default_lanes, min_length=1)
    kinds: dict[str, KindConfig] = Field(default_factory=_default_kinds)

    @model_validator(mode="after")
    def _lanes_exist(self) -> Config:
        for name in self.lanes:
            if not re.fullmatch(r"[a-z][a-z0-9_-]{0,39}", name):
                raise ValueError(f"lanes.{name}: a lane name is lower-case letters, digits, - or _")
        if self.jobs.default_lane not in self.lanes:
            raise ValueError(f"jobs.default_lane: no lane named {self.jobs.default_lane!r}")
        for kind, settings in self.kinds.items():
            if settings.lane is not None and settings.lane not in self.lanes:
                raise ValueError(f"kinds.{kind}.lane: no lane named {settings.lane!r}")
        return self

    def lane_for(self, kind: str) -> str:
        """The lane a job of `kind` goes to when the submit names none."""
        settings = self.kinds.get(kind)
        if settings is not None and settings.lane is not None:
            return settings.lane
        return self.jobs.default_lane

    def retry_policy(self, kind: str) -> RetryPolicy:
        """The retry policy of `kind`: its own settings over the defaults."""
        settings = self.kinds.get(kind)
        base = self.jobs.retry
        if settings is None:
            return base
        overrides = {
            name: value
            for name, value in settings.model_dump(exclude={"lane"}).items()
            if value is not None
        }
        return base.model_copy(update=overrides)


def load_config(path: Path | None) -> Config:
    """Read and validate a TOML file; None gives the embedded defaults."""
    if path is None:
        return Config()
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read the config file: {exc.strerror}") from exc
    try:
        raw = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{path}: not valid TOML: {exc}") from exc
    try:
        return Config.model_validate(raw)
    except ValidationError as exc:
        raise ConfigError(_describe(path, text, exc)) from exc


def _describe(path: Path, text: str, exc: ValidationError) -> str:
    lines = []
    for error in exc.errors():
        dotted = ".".join(str(part) for part in error["loc"])
        message = error["msg"]
        if error["type"] == "extra_forbidden":
            message = "unknown key"
        elif error["type"] == "value_error":
            # Our own validators already name the key in the message.
            message = message.removeprefix("Value error, ")
            lines.append(f"{path}: {message}")
            continue
        where = _line_of(text, str(error["loc"][-1])) if error["loc"] else None
        suffix = f" (line {where})" if where else ""
        lines.append(f"{path}: {dotted or '(top level)'}: {message}{suffix}")
    return "\n".join(lines)


def _line_of(text: str, key: str) -> int | None:
    pattern = re.compile(rf"^\s*{re.escape(key)}\s*=|^\s*\[.*\b{re.escape(key)}\]")
    for number, line in enumerate(text.splitlines(), start=1):
        if pattern.search(line):
            return number
    return None


@dataclass(frozen=True)
class Paths:
    """Every place on disk the daemon and its clients use."""

    state_dir: Path
    db_path: Path
    socket_path: Path
    artifacts_dir: Path
    lock_path: Path


def resolve_paths(config: Config, env: dict[str, str] | None = None) -> Paths:
    """INTERLOCK_HOME puts everything under one folder; otherwise the XDG base directories."""
    env = dict(os.environ) if env is None else env
    home = env.get("INTERLOCK_HOME")
    if home:
        state_dir = Path(home).expanduser()
        runtime_dir = state_dir
    else:
        xdg_state = env.get("XDG_STATE_HOME") or str(Path.home() / ".local" / "state")
        state_dir = Path(xdg_state) / "interlock"
        xdg_runtime = env.get("XDG_RUNTIME_DIR")
        runtime_dir = Path(xdg_runtime) / "interlock" if xdg_runtime else state_dir
    db_path = (
        Path(config.store.path).expanduser() if config.store.path else state_dir / "interlock.db"
    )
    socket_path = (
        Path(config.server.path).expanduser()
        if config.server.path
        else runtime_dir / "interlock.sock"
    )
    return Paths(
        state_dir=state_dir,
        db_path=db_path,
        socket_path=socket_path,
        artifacts_dir=state_dir / "artifacts",
        lock_path=state_dir / "interlock.lock",
    )


def config_path(cli_value: str | None, env: dict[str, str] | None = None) -> Path | None:
    """--config beats INTERLOCK_CONFIG beats $XDG_CONFIG_HOME/interlock/interlock.toml."""
    env = dict(os.environ) if env is None else env
    if cli_value:
        return Path(cli_value).expanduser()
    if env.get("INTERLOCK_CONFIG"):
        return Path(env["INTERLOCK_CONFIG"]).expanduser()
    xdg_config = env.get("XDG_CONFIG_HOME") or str(Path.home() / ".config")
    candidate = Path(xdg_config) / "interlock" / "interlock.toml"
    return candidate if candidate.is_file() else None
