"""The error hierarchy: each error has a stable code for the wire and a sentence for people."""

from __future__ import annotations

from typing import Any, ClassVar


class InterlockError(Exception):
    """Base of every error a user can cause or meet; never shown as a traceback."""

    code: ClassVar[int] = 500
    name: ClassVar[str] = "internal"

    def __init__(self, message: str, **data: Any) -> None:
        super().__init__(message)
        self.message = message
        self.data = data

    def __str__(self) -> str:
        return self.message


class ConfigError(InterlockError):
    """The configuration file is unreadable or invalid."""

    code = 100
    name = "config"


class BadRequest(InterlockError):
    """A request is well formed on the wire but asks for something impossible."""

    code = 400
    name = "bad_request"


class UnknownJob(InterlockError):
    """No job has this id."""

    code = 404
    name = "unknown_job"

    def __init__(self, job_id: int) -> None:
        super().__init__(f"no job with id {job_id}", job_id=job_id)


class UnknownLane(InterlockError):
    """No lane has this name."""

    code = 405
    name = "unknown_lane"

    def __init__(self, lane: str, known: list[str]) -> None:
        super().__init__(
            f"no lane named {lane!r} (lanes: {', '.join(known)})", lane=lane, known=known
        )


class UnknownKind(InterlockError):
    """No handler is registered for this job kind."""

    code = 406
    name = "unknown_kind"

    def __init__(self, kind: str, known: list[str]) -> None:
        super().__init__(
            f"no handler for job kind {kind!r} (kinds: {', '.join(known)})", kind=kind, known=known
        )


class InvalidTransition(InterlockError):
    """The state machine does not allow this change from the job's current state."""

    code = 409
    name = "invalid_transition"

    def __init__(self, job_id: int, current: str, target: str, action: str) -> None:
        super().__init__(
            f"cannot {action} job {job_id}: it is {current}",
            job_id=job_id,
            current=current,
            target=target,
        )


class KeyInUse(InterlockError):
    """A live job already holds the idempotency key a retry needs."""

    code = 410
    name = "key_in_use"

    def __init__(self, key: str, holder_id: int) -> None:
        super().__init__(
            f"idempotency key {key!r} is held by live job {holder_id}", key=key, holder_id=holder_id
        )


class LaneFull(InterlockError):
    """A lane is at its maximum depth: backpressure."""

    code = 429
    name = "lane_full"

    def __init__(self, lane: str, depth: int, max_depth: int) -> None:
        super().__init__(
            f"lane {lane!r} is full: {depth} jobs waiting, maximum depth {max_depth}",
            lane=lane,
            depth=depth,
            max_depth=max_depth,
        )


class ShuttingDown(InterlockError):
    """The daemon is stopping and takes no new work."""

    code = 503
    name = "shutting_down"

    def __init__(self) -> None:
        super().__init__("the daemon is shutting down")


class AlreadyRunning(InterlockError):
    """Another daemon holds this state folder."""

    code = 504
    name = "already_running"
