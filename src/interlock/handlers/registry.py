"""Job kinds: the registry from a kind's name to what runs it and what it accepts.

The registry knows no kind of its own. The daemon's wiring fills it (the
diagnostic kinds, the maintenance kinds, and later the kinds declared in
config), so nothing here imports the modules that register.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Iterator, Mapping
from dataclasses import dataclass
from typing import Any, Literal

from pydantic import BaseModel, ValidationError

from interlock.errors import InvalidPayload
from interlock.handlers.context import JobContext

Handler = Callable[[JobContext], Awaitable[Any]]
# A maintenance kind's handler takes the wider maintenance context, and may
# have a probe that tells a timer whether there is anything to do.
MaintenanceHandler = Callable[[Any], Awaitable[Any]]
Probe = Callable[[Any], Awaitable[bool]]


@dataclass(frozen=True)
class Kind:
    """One job kind: its handler, the context it takes, the payload it accepts."""

    name: str
    run: Callable[[Any], Awaitable[Any]]
    context: Literal["job", "maintenance"] = "job"
    payload: type[BaseModel] | None = None  # checked at submit: a bad payload is refused
    due: Probe | None = None  # maintenance only: is there anything to do now?

    def check_payload(self, payload: dict[str, Any]) -> None:
        """Raise InvalidPayload, naming the field, unless the payload can be valid here."""
        if self.payload is None:
            return
        try:
            self.payload.model_validate(payload)
        except ValidationError as exc:
            raise InvalidPayload(self.name, describe(exc)) from None


def describe(exc: ValidationError) -> str:
    """A pydantic error as one sentence per problem, each naming its field."""
    parts = []
    for error in exc.errors():
        where = ".".join(str(part) for part in error["loc"]) or "payload"
        message = "unknown field" if error["type"] == "extra_forbidden" else error["msg"]
        parts.append(f"{where}: {message}")
    return "; ".join(parts)


class KindRegistry(Mapping[str, Kind]):
    """Job kind -> Kind. A kind with no entry cannot be submitted."""

    def __init__(self) -> None:
        self._kinds: dict[str, Kind] = {}

    def add(self, kind: Kind) -> None:
        """Add a kind; a name has exactly one."""
        if kind.name in self._kinds:
            raise ValueError(f"job kind {kind.name!r} is already registered")
        self._kinds[kind.name] = kind

    def register(self, name: str, handler: Handler, payload: type[BaseModel] | None = None) -> None:
        """Add a kind whose handler takes the job context."""
        self.add(Kind(name, handler, "job", payload))

    def register_maintenance(
        self, name: str, handler: MaintenanceHandler, due: Probe | None = None
    ) -> None:
        """Add a maintenance kind: its handler takes the maintenance context."""
        self.add(Kind(name, handler, "maintenance", None, due))

    def __getitem__(self, name: str) -> Kind:
        return self._kinds[name]

    def get(self, name: str, default: Kind | None = None) -> Kind | None:  # type: ignore[override]
        """The kind of this name, or `default` (one dict lookup: asked for every job)."""
        return self._kinds.get(name, default)

    def __iter__(self) -> Iterator[str]:
        return iter(self._kinds)

    def __len__(self) -> int:
        return len(self._kinds)
