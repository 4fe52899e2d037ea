"""The socket client: typed calls over JSON-RPC, and a stream of notifications."""

from __future__ import annotations

import contextlib
import json
import math
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any, TypeVar

import anyio
from anyio.abc import SocketStream
from anyio.streams.buffered import BufferedByteReceiveStream
from anyio.streams.memory import MemoryObjectReceiveStream, MemoryObjectSendStream
from pydantic import BaseModel

from interlock.config import PROTOCOL_VERSION
from interlock.domain import Event, JobFilter, JobSpec, SubmitResult
from interlock.ipc import protocol as wire
from interlock.tax import TaxReport

M = TypeVar("M", bound=BaseModel)

# Replies can be long (a page of 10,000 jobs); the client trusts its daemon more
# than the daemon trusts its clients.
REPLY_LIMIT = 256 * 1024 * 1024


class ClientError(Exception):
    """Base of what a client call can raise."""


class DaemonNotRunning(ClientError):
    """Nothing listens on the socket."""

    def __init__(self, path: Path, reason: str) -> None:
        super().__init__(
            f"the interlock daemon is not running: cannot connect to {path} ({reason}). "
            "Start it with `interlock daemon` or `systemctl --user start interlock`."
        )
        self.path = path


class RemoteError(ClientError):
    """The daemon answered with an error."""

    def __init__(self, code: int, message: str, data: dict[str, Any] | None = None) -> None:
        super().__init__(message)
        self.code = code
        self.message = message
        self.data = data or {}


class ConnectionLost(ClientError):
    """The daemon closed the connection."""


Notification = Event | wire.LaneChange


class _Pending:
    def __init__(self) -> None:
        self.done = anyio.Event()
        self.reply: dict[str, Any] = {}


class Client:
    """A connection to the daemon. Use `async with connect(path) as client:`."""

    def __init__(self, stream: SocketStream, notify: MemoryObjectSendStream[Notification]) -> None:
        self._stream = stream
        self._reader = BufferedByteReceiveStream(stream)
        self._next_id = 0
        self._pending: dict[int, _Pending] = {}
        self._notify = notify
        self._closed: ClientError | None = None
        self.server: wire.HelloReply | None = None

    async def _read_loop(self) -> None:
        try:
            while True:
                line = await self._reader.receive_until(b"\n", REPLY_LIMIT)
                self._deliver(json.loads(line))
        except (
            anyio.EndOfStream,
            anyio.IncompleteRead,
            anyio.BrokenResourceError,
            ConnectionError,
        ):
            self._fail_all(ConnectionLost("the daemon closed the connection"))
        except anyio.ClosedResourceError:
            self._fail_all(ConnectionLost("the connection was closed"))
        finally:
            self._notify.close()

    def _deliver(self, message: dict[str, Any]) -> None:
        if "method" in message:
            params = message.get("params") or {}
            notice: Notification
            if message["method"] == wire.NOTIFICATION_LANE:
                notice = wire.LaneChange.model_validate(params)
            else:
                notice = Event.model_validate(params)
            with contextlib.suppress(anyio.WouldBlock):  # nobody reads notifications here
                self._notify.send_nowait(notice)
            return
        request_id = message.get("id")
        if request_id is None:
            # An error about the connection itself (refused, oversize, dropped subscriber).
            error = message.get("error") or {}
            self._fail_all(
                RemoteError(error.get("code", 0), error.get("message", "error"), error.get("data"))
            )
            return
        pending = self._pending.pop(request_id, None)
        if pending is not None:
            pending.reply = message
            pending.done.set()

    def _fail_all(self, error: ClientError) -> None:
        self._closed = self._closed or error
        self._notify.close()  # a reader of notifications sees the end, not silence
        for pending in self._pending.values():
            pending.done.set()
        self._pending.clear()

    async def call(self, method: str, params: BaseModel | dict[str, Any] | None = None) -> Any:
        """Send one request and wait for its result; raise RemoteError on an error reply."""
        if self._closed is not None:
            raise self._closed
        self._next_id += 1
        request_id = self._next_id
        if isinstance(params, BaseModel):
            body = params.model_dump(mode="json", exclude_defaults=True)
        else:
            body = params or {}
        pending = self._pending[request_id] = _Pending()
        message = {"jsonrpc": "2.0", "id": request_id, "method": method, "params": body}
        await self._stream.send(wire.encode(message))
        await pending.done.wait()
        if not pending.reply:
            raise self._closed or ConnectionLost("no reply")
        if "error" in pending.reply:
            error = pending.reply["error"]
            raise RemoteError(error.get("code", 0), error.get("message", ""), error.get("data"))
        return pending.reply.get("result")

    async def _typed(
        self, model: type[M], method: str, params: BaseModel | dict[str, Any] | None = None
    ) -> M:
        return model.model_validate(await self.call(method, params))

    async def hello(self, client_name: str) -> wire.HelloReply:
        """Agree the protocol version; the first call on every connection."""
        self.server = await self._typed(
            wire.HelloReply, "hello", {"protocol": PROTOCOL_VERSION, "client": client_name}
        )
        return self.server

    async def submit(self, spec: JobSpec) -> SubmitResult:
        """Queue a job (or get the live job that holds its key)."""
        return await self._typed(SubmitResult, "submit", spec)

    async def list_jobs(self, job_filter: JobFilter) -> wire.JobList:
        """A page of jobs, newest first."""
        return await self._typed(wire.JobList, "list", job_filter)

    async def get(self, job_id: int) -> wire.JobDetail:
        """One job and its events."""
        return await self._typed(wire.JobDetail, "get", {"id": job_id})

    async def why(self, job_id: int) -> wire.WhyReply:
        """The lineage of a job and its events."""
        return await self._typed(wire.WhyReply, "why", {"id": job_id})

    async def cancel(self, job_id: int) -> wire.JobReply:
        """Cancel a live job."""
        return await self._typed(wire.JobReply, "cancel", {"id": job_id})

    async def retry(self, job_id: int) -> wire.JobReply:
        """Queue a dead or cancelled job again."""
        return await self._typed(wire.JobReply, "retry", {"id": job_id})

    async def lanes(self) -> wire.LanesReply:
        """Every lane with its load."""
        return await self._typed(wire.LanesReply, "lanes")

    async def pause(self, lane: str, reason: str = "") -> wire.LanesReply:
        """Pause a lane."""
        return await self._typed(wire.LanesReply, "pause", {"lane": lane, "reason": reason})

    async def resume(self, lane: str) -> wire.LanesReply:
        """Resume a lane."""
        return await self._typed(wire.LanesReply, "resume", {"lane": lane})

    async def health(self) -> wire.HealthReply:
        """The daemon's health."""
        return await self._typed(wire.HealthReply, "health")

    async def tick(self, name: str) -> SubmitResult:
        """Run a timer's job now."""
        return await self._typed(SubmitResult, "tick", {"name": name})

    async def stalls(self) -> wire.StallsReply:
        """Stalled and long-waiting jobs."""
        return await self._typed(wire.StallsReply, "stalls")

    async def tax(self, since_seconds: float | None = None, by: str | None = None) -> TaxReport:
        """The autonomy tax: maintenance against feature work over the window."""
        params: dict[str, Any] = {}
        if since_seconds is not None:
            params["since_seconds"] = since_seconds
        if by is not None:
            params["by"] = by
        return await self._typed(TaxReport, "tax", params)

    async def subscribe(self) -> None:
        """From now on, every committed transition arrives on `notifications`."""
        await self.call("subscribe")


@asynccontextmanager
async def connect(
    path: Path, client_name: str = "interlock", notification_buffer: float = math.inf
) -> AsyncIterator[tuple[Client, MemoryObjectReceiveStream[Notification]]]:
    """Connect, say hello, and yield the client with its notification stream."""
    try:
        stream = await anyio.connect_unix(path)
    except FileNotFoundError:
        raise DaemonNotRunning(path, "no such socket") from None
    except ConnectionRefusedError:
        raise DaemonNotRunning(path, "connection refused") from None
    except OSError as exc:
        raise DaemonNotRunning(path, exc.strerror or str(exc)) from None
    send, receive = anyio.create_memory_object_stream[Notification](notification_buffer)
    failure: Exception | None = None
    async with stream, receive, anyio.create_task_group() as tasks:
        client = Client(stream, send)
        tasks.start_soon(client._read_loop)
        try:
            await client.hello(client_name)
            yield client, receive
        except Exception as exc:
            # Raised again outside the task group, so callers see the error
            # itself rather than an exception group around it.
            failure = exc
        finally:
            tasks.cancel_scope.cancel()
    if failure is not None:
        raise failure
