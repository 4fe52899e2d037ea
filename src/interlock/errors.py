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


class LeaseLost(InterlockError):
    """The attempt a worker ran is no longer the job's: it was stalled, requeued or cancelled."""

    code = 409
    name = "lease_lost"

    def __init__(self, job_id: int, attempt: int, holder: str | None, current: int) -> None:
        super().__init__(
            f"job {job_id} is no longer held by attempt {attempt}"
            f" (now attempt {current}, held by {holder or 'nobody'})",
            job_id=job_id,
        )


class NotJson(InterlockError):
    """A payload or result that cannot be stored as JSON."""

    code = 400
    name = "not_json"


class KeyInUse(InterlockError):
    """A live job already holds the idempotency key a retry needs."""

    code = 410
    name = "key_in_use"

    def __init__(self, key: str, holder_id: int) -> None:
        super().__init__(
            f"idempotency key {key!r} is held by live job {holder_id}", key=key, holder_id=holder_id
        )


class KeyConflict(InterlockError):
    """An idempotency key is held by a job that was asked for with other parameters."""

    code = 412
    name = "key_conflict"

    def __init__(self, key: str, holder_id: int, holder_kind: str) -> None:
        super().__init__(
            f"idempotency key {key!r} is held by job {holder_id} ({holder_kind}), which was"
            " submitted with other parameters; use a new key for a different request",
            key=key,
            holder_id=holder_id,
        )


class InvalidPayload(InterlockError):
    """A payload that cannot be valid for its kind: refused at submit, never retried."""

    code = 422
    name = "invalid_payload"

    def __init__(self, kind: str, reason: str) -> None:
        super().__init__(f"invalid payload for {kind}: {reason}", kind=kind, reason=reason)


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


class StartupError(InterlockError):
    """The daemon cannot start: a path it needs is missing, unwritable or the wrong kind."""

    code = 505
    name = "startup"


class StoreError(InterlockError):
    """The database refused a read or a write (disk full, corrupt file, read-only, ...)."""

    code = 507
    name = "store"
