"""What a job of each kind does: the registry from kind to handler, and a handler's context."""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from interlock.clock import Clock
from interlock.domain import Job
from interlock.hub import Hub


@dataclass(frozen=True)
class JobContext:
    """What a handler gets: its job, the clock, a way to say it is alive, a folder for artifacts."""

    job: Job
    clock: Clock
    heartbeat: Callable[[], Awaitable[bool]]
    lease_seconds: float
    artifacts_root: Path
    hub: Hub  # maintenance kinds read and act through it, like every other part

    @property
    def artifacts_dir(self) -> Path:
        """<state>/artifacts/<job id>/: where the job may leave files (create it when needed)."""
        return self.artifacts_root / str(self.job.id)


Handler = Callable[[JobContext], Awaitable[Any]]


class HandlerRegistry(Mapping[str, Handler]):
    """Job kind -> handler. A kind with no handler cannot be submitted."""

    def __init__(self) -> None:
        self._handlers: dict[str, Handler] = {}

    def register(self, kind: str, handler: Handler) -> None:
        """Add a handler; a kind has exactly one."""
        if kind in self._handlers:
            raise ValueError(f"job kind {kind!r} already has a handler")
        self._handlers[kind] = handler

    def __getitem__(self, kind: str) -> Handler:
        return self._handlers[kind]

    def __iter__(self) -> Iterator[str]:
        return iter(self._handlers)

    def __len__(self) -> int:
        return len(self._handlers)


def default_registry() -> HandlerRegistry:
    """Every built-in kind."""
    from interlock import maintenance
    from interlock.handlers import diagnostics

    registry = HandlerRegistry()
    diagnostics.register(registry)
    maintenance.register(registry)
    return registry
