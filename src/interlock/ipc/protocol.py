"""The wire: newline-delimited JSON-RPC 2.0 messages, as pydantic models shared by both ends."""

from __future__ import annotations

import json
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from interlock.config import PROTOCOL_VERSION
from interlock.domain import Event, Job, JobFilter, JobSpec, LaneStatus, SubmitResult
from interlock.tax import TaxGrouping, TaxReport

# JSON-RPC 2.0's own error codes; our domain errors carry their own (errors.py).
PARSE_ERROR = -32700
INVALID_REQUEST = -32600
METHOD_NOT_FOUND = -32601
INVALID_PARAMS = -32602
INTERNAL_ERROR = -32603
PEER_REFUSED = -32001
TOO_MANY_CONNECTIONS = -32002
HELLO_REQUIRED = -32003
PROTOCOL_MISMATCH = -32004


class _Message(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class Request(_Message):
    """A call from a client."""

    jsonrpc: Literal["2.0"]
    id: int | str | None = None
    method: str = Field(min_length=1)
    params: dict[str, Any] = Field(default_factory=dict)


class HelloParams(_Message):
    """The first message of every connection."""

    protocol: int
    client: str = ""


class HelloReply(_Message):
    """The protocol the server speaks, and who it is."""

    protocol: int = PROTOCOL_VERSION
    server: str = "interlock"
    version: str
    pid: int


class NoParams(_Message):
    """A method that takes nothing."""


class JobId(_Message):
    """A method about one job."""

    id: int = Field(ge=1, le=2**63 - 1)


class LaneParams(_Message):
    """A method about one lane."""

    lane: str
    reason: str = Field(default="", max_length=1000)


class JobReply(_Message):
    """One job."""

    job: Job


class JobDetail(_Message):
    """One job and every event it has."""

    job: Job
    events: list[Event]


class JobList(_Message):
    """A page of jobs, newest first; pass next_before_id as before_id for the next page."""

    jobs: list[Job]
    next_before_id: int | None


class WhyReply(_Message):
    """The lineage from root to job, and the job's events."""

    chain: list[Job]
    events: list[Event]


class LanesReply(_Message):
    """Every lane."""

    lanes: list[LaneStatus]


class HealthReply(_Message):
    """Is the daemon well, and what does it hold."""

    status: Literal["ok", "stopping"]
    version: str
    pid: int
    uptime_seconds: float
    started_at: float
    jobs: dict[str, int]
    lanes: list[LaneStatus]
    subscribers: int
    connections: int
    store_path: str
    socket_path: str
    snapshot: dict[str, Any] | None = None  # the latest health.snapshot job's result


class TickParams(_Message):
    """Run a timer's job now, by hand."""

    name: str = Field(min_length=1)


class StallsReply(_Message):
    """Jobs whose lease expired, jobs waiting past their lane's threshold, recent stalls."""

    expired: list[Job]
    waiting: list[Job]
    recent: list[Job]


class TaxParams(_Message):
    """The autonomy tax over the last `since_seconds`, optionally by kind, lane or project."""

    since_seconds: float = Field(default=7 * 86_400.0, gt=0, le=3660 * 86_400.0)
    by: TaxGrouping | None = None


class Subscribed(_Message):
    """The connection now also carries notifications."""

    subscribed: bool = True


class LaneChange(_Message):
    """A lane was paused or resumed (the params of a `lane` notification)."""

    lane: str
    paused: bool
    reason: str
    at: float


# method name -> the model its params must fit.
PARAMS: dict[str, type[BaseModel]] = {
    "hello": HelloParams,
    "submit": JobSpec,
    "list": JobFilter,
    "get": JobId,
    "why": JobId,
    "cancel": JobId,
    "retry": JobId,
    "lanes": NoParams,
    "pause": LaneParams,
    "resume": LaneParams,
    "health": NoParams,
    "subscribe": NoParams,
    "tick": TickParams,
    "stalls": NoParams,
    "tax": TaxParams,
}

# method name -> the model of its result.
RESULTS: dict[str, type[BaseModel]] = {
    "hello": HelloReply,
    "submit": SubmitResult,
    "list": JobList,
    "get": JobDetail,
    "why": WhyReply,
    "cancel": JobReply,
    "retry": JobReply,
    "lanes": LanesReply,
    "pause": LanesReply,
    "resume": LanesReply,
    "health": HealthReply,
    "subscribe": Subscribed,
    "tick": SubmitResult,
    "stalls": StallsReply,
    "tax": TaxReport,
}

NOTIFICATION_EVENT = "event"
NOTIFICATION_LANE = "lane"


def encode(message: dict[str, Any]) -> bytes:
    """One message, one line."""
    return json.dumps(message, separators=(",", ":"), ensure_ascii=False).encode() + b"\n"


def result_message(request_id: int | str | None, result: BaseModel) -> bytes:
    """A successful reply."""
    return encode({"jsonrpc": "2.0", "id": request_id, "result": result.model_dump(mode="json")})


def error_message(
    request_id: int | str | None, code: int, message: str, data: dict[str, Any] | None = None
) -> bytes:
    """An error reply."""
    error: dict[str, Any] = {"code": code, "message": message}
    if data:
        error["data"] = data
    return encode({"jsonrpc": "2.0", "id": request_id, "error": error})


def notification(method: str, params: BaseModel) -> bytes:
    """A message that expects no reply."""
    return encode({"jsonrpc": "2.0", "method": method, "params": params.model_dump(mode="json")})


def describe_validation(error: ValidationError) -> str:
    """A pydantic error as one sentence that names the field."""
    parts = []
    for item in error.errors():
        where = ".".join(str(part) for part in item["loc"]) or "params"
        message = "unknown field" if item["type"] == "extra_forbidden" else item["msg"]
        parts.append(f"{where}: {message}")
    return "; ".join(parts)
