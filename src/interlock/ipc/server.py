"""The socket server: JSON-RPC 2.0 over a Unix socket, one line per message.

The server never crashes on input: every malformed, oversize or impossible
request gets an error reply that names the problem, and only the connection
that sent an unreadable message is closed.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import socket
import struct
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import anyio
from anyio.abc import SocketAttribute, SocketStream
from anyio.streams.buffered import BufferedByteReceiveStream
from pydantic import BaseModel, ValidationError

from interlock import __version__
from interlock.bus import LaneNotice, Notice
from interlock.config import PROTOCOL_VERSION, Config
from interlock.domain import JobFilter, JobSpec
from interlock.errors import BadRequest, InterlockError
from interlock.hub import Hub
from interlock.ipc import protocol as wire
from interlock.maintenance.health import KIND as HEALTH_KIND
from interlock.maintenance.scheduler import Scheduler

log = logging.getLogger(__name__)

Method = Callable[[Any], Awaitable[BaseModel]]


def peer_credentials(sock: socket.socket) -> tuple[int, int, int]:
    """(pid, uid, gid) of the process at the other end of a Unix socket (SO_PEERCRED)."""
    raw = sock.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, struct.calcsize("3i"))
    pid, uid, gid = struct.unpack("3i", raw)
    return pid, uid, gid


def peer_allowed(uid: int, own_uid: int) -> bool:
    """Only our own user (and root) may talk to the daemon."""
    return uid in (own_uid, 0)


class _Connection:
    """One client: its stream, whether it said hello, and who it is."""

    def __init__(self, stream: SocketStream, pid: int, uid: int) -> None:
        self.stream = stream
        self.pid = pid
        self.uid = uid
        self.greeted = False
        self.subscribed = False
        self.client = ""
        self.send_lock = anyio.Lock()

    async def send(self, data: bytes) -> None:
        async with self.send_lock:
            await self.stream.send(data)


class Server:
    """Serves the hub over the socket."""

    def __init__(
        self,
        hub: Hub,
        config: Config,
        socket_path: Path,
        store_path: Path,
        started_at: float,
        own_uid: int | None = None,
        scheduler: Scheduler | None = None,
    ) -> None:
        self.hub = hub
        self.config = config
        self.socket_path = socket_path
        self.store_path = store_path
        self.started_at = started_at
        self.own_uid = os.getuid() if own_uid is None else own_uid
        self.scheduler = scheduler
        self.connections = 0
        self.stopping = False
        self._methods: dict[str, Method] = {
            "submit": self._submit,
            "list": self._list,
            "get": self._get,
            "why": self._why,
            "cancel": self._cancel,
            "retry": self._retry,
            "lanes": self._lanes,
            "pause": self._pause,
            "resume": self._resume,
            "health": self._health,
            "tick": self._tick,
            "stalls": self._stalls,
            "tax": self._tax,
        }

    async def listen(self) -> anyio.abc.SocketListener:
        """Bind the socket (mode 0600, in a 0700 folder); call before serving."""
        self.socket_path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        old_umask = os.umask(0o177)  # the socket is born 0600: no window with wider rights
        try:
            return await anyio.create_unix_listener(self.socket_path, mode=0o600)
        finally:
            os.umask(old_umask)

    async def serve(self, listener: anyio.abc.SocketListener) -> None:
        """Accept connections until cancelled."""
        async with listener:
            await listener.serve(self._handle)

    # -- one connection ---------------------------------------------------------------

    async def _handle(self, stream: SocketStream) -> None:
        async with stream:
            raw = stream.extra(SocketAttribute.raw_socket)
            pid, uid, _gid = peer_credentials(raw)
            if not peer_allowed(uid, self.own_uid):
                log.warning("refused a connection from pid %s: uid %s is not ours", pid, uid)
                await self._try_send(
                    stream,
                    wire.error_message(
                        None,
                        wire.PEER_REFUSED,
                        f"refused: uid {uid} may not use this daemon"
                        f" (it runs as uid {self.own_uid})",
                    ),
                )
                return
            if self.connections >= self.config.server.max_connections:
                await self._try_send(
                    stream,
                    wire.error_message(
                        None,
                        wire.TOO_MANY_CONNECTIONS,
                        f"too many connections (limit {self.config.server.max_connections})",
                    ),
                )
                return
            self.connections += 1
            try:
                connection = _Connection(stream, pid, uid)
                async with anyio.create_task_group() as tasks:
                    await self._read_loop(connection, tasks)
                    tasks.cancel_scope.cancel()
            except* (anyio.BrokenResourceError, anyio.ClosedResourceError, ConnectionError):
                pass  # the client went away, perhaps before reading its reply
            except* Exception:
                # Nothing a client does may reach the listener and stop the daemon.
                log.exception("connection from pid %s failed", pid)
            finally:
                self.connections -= 1

    async def _try_send(self, stream: SocketStream, data: bytes) -> None:
        with contextlib.suppress(
            anyio.BrokenResourceError, anyio.ClosedResourceError, ConnectionError
        ):
            await stream.send(data)

    async def _read_loop(self, connection: _Connection, tasks: anyio.abc.TaskGroup) -> None:
        limit = self.config.server.max_message_bytes
        reader = BufferedByteReceiveStream(connection.stream)
        while True:
            too_large = False
            try:
                line = await reader.receive_until(b"\n", limit)
                # receive_until only enforces its limit while it has not yet seen a
                # newline; a long line that arrived whole must be refused here.
                too_large = len(line) > limit
            except anyio.IncompleteRead:
                return  # closed, possibly mid-message
            except anyio.DelimiterNotFound:
                too_large = True
            except anyio.EndOfStream:
                return
            if too_large:
                # Where the next message starts is unknown: say why, then hang up.
                await connection.send(
                    wire.error_message(
                        None,
                        wire.INVALID_REQUEST,
                        f"message too large: the limit is {limit} bytes per line",
                    )
                )
                return
            if not line.strip():
                continue
            reply = await self._dispatch(connection, line, tasks)
            if reply is not None:
                await connection.send(reply)

    async def _dispatch(
        self, connection: _Connection, line: bytes, tasks: anyio.abc.TaskGroup
    ) -> bytes | None:
        try:
            request = wire.Request.model_validate_json(line)
        except ValidationError as exc:
            if any(error["type"] == "json_invalid" for error in exc.errors()):
                return wire.error_message(None, wire.PARSE_ERROR, "invalid JSON: " + _first(exc))
            return wire.error_message(
                _guess_id(line),
                wire.INVALID_REQUEST,
                "not a JSON-RPC 2.0 request: " + wire.describe_validation(exc),
            )
        reply = await self._answer(connection, request, tasks)
        # A request without an id is a notification: JSON-RPC 2.0 forbids any reply.
        return None if request.id is None else reply

    async def _answer(
        self, connection: _Connection, request: wire.Request, tasks: anyio.abc.TaskGroup
    ) -> bytes:
        request_id = request.id
        params_model = wire.PARAMS.get(request.method)
        if params_model is None:
            return wire.error_message(
                request_id,
                wire.METHOD_NOT_FOUND,
                f"unknown method {request.method!r} (methods: {', '.join(sorted(wire.PARAMS))})",
            )
        try:
            params = params_model.model_validate(request.params)
        except ValidationError as exc:
            return wire.error_message(
                request_id,
                wire.INVALID_PARAMS,
                f"bad params for {request.method}: {wire.describe_validation(exc)}",
            )
        if request.method == "hello":
            assert isinstance(params, wire.HelloParams)
            return self._hello(connection, request_id, params)
        if not connection.greeted:
            return wire.error_message(
                request_id, wire.HELLO_REQUIRED, "send hello first to agree the protocol version"
            )
        if request.method == "subscribe":
            if not connection.subscribed:  # a second subscribe changes nothing
                connection.subscribed = True
                tasks.start_soon(self._forward, connection)
            return wire.result_message(request_id, wire.Subscribed())
        if isinstance(params, JobSpec):
            # The server, not the client, says where a submit came from.
            who = params.source or connection.client or "socket"
            params = params.model_copy(update={"source": f"{who} (pid {connection.pid})"})
        try:
            result = await self._methods[request.method](params)
        except InterlockError as exc:
            return wire.error_message(
                request_id, exc.code, exc.message, {"error": exc.name, **exc.data}
            )
        except Exception:
            log.exception("method %s failed", request.method)
            return wire.error_message(
                request_id,
                wire.INTERNAL_ERROR,
                f"internal error in {request.method}; see the daemon log",
            )
        return wire.result_message(request_id, result)

    def _hello(
        self, connection: _Connection, request_id: int | str | None, params: wire.HelloParams
    ) -> bytes:
        if params.protocol != PROTOCOL_VERSION:
            return wire.error_message(
                request_id,
                wire.PROTOCOL_MISMATCH,
                f"protocol {params.protocol} is not supported;"
                f" this daemon speaks {PROTOCOL_VERSION}",
                {"supported": [PROTOCOL_VERSION]},
            )
        connection.greeted = True
        connection.client = params.client
        return wire.result_message(
            request_id, wire.HelloReply(version=__version__, pid=os.getpid())
        )

    async def _forward(self, connection: _Connection) -> None:
        subscription = self.hub.bus.subscribe(self.config.server.subscriber_queue)
        try:
            while True:
                notices = await subscription.receive()
                if not notices:
                    if subscription.overflowed:
                        await connection.send(
                            wire.error_message(
                                None,
                                wire.INTERNAL_ERROR,
                                "subscriber fell behind and was dropped; reconnect and re-read",
                            )
                        )
                        # Hang up: the client must not wait for notices that never come.
                        await connection.stream.aclose()
                    return
                await connection.send(b"".join(_notice_line(notice) for notice in notices))
        finally:
            subscription.close()

    # -- methods ----------------------------------------------------------------------------

    async def _submit(self, spec: JobSpec) -> BaseModel:
        return await self.hub.submit(spec)

    async def _list(self, job_filter: JobFilter) -> BaseModel:
        jobs = await self.hub.list_jobs(job_filter)
        next_before = jobs[-1].id if len(jobs) == job_filter.limit else None
        return wire.JobList(jobs=jobs, next_before_id=next_before)

    async def _get(self, params: wire.JobId) -> BaseModel:
        job = await self.hub.get(params.id)
        return wire.JobDetail(job=job, events=await self.hub.events(params.id))

    async def _why(self, params: wire.JobId) -> BaseModel:
        lineage = await self.hub.why(params.id)
        return wire.WhyReply(chain=lineage.chain, events=lineage.events)

    async def _cancel(self, params: wire.JobId) -> BaseModel:
        return wire.JobReply(job=await self.hub.cancel(params.id))

    async def _retry(self, params: wire.JobId) -> BaseModel:
        return wire.JobReply(job=await self.hub.retry(params.id))

    async def _lanes(self, _params: wire.NoParams) -> BaseModel:
        return wire.LanesReply(lanes=await self.hub.lanes())

    async def _pause(self, params: wire.LaneParams) -> BaseModel:
        status = await self.hub.set_paused(params.lane, True, params.reason or "paused by request")
        return wire.LanesReply(lanes=[status])

    async def _resume(self, params: wire.LaneParams) -> BaseModel:
        status = await self.hub.set_paused(params.lane, False)
        return wire.LanesReply(lanes=[status])

    async def _tick(self, params: wire.TickParams) -> BaseModel:
        if self.scheduler is None:
            raise BadRequest("this daemon runs no timers")
        return await self.scheduler.tick(params.name)

    async def _stalls(self, _params: wire.NoParams) -> BaseModel:
        found = await self.hub.stalls()
        return wire.StallsReply(**found)

    async def _tax(self, params: wire.TaxParams) -> BaseModel:
        return await self.hub.tax(params.since_seconds, params.by)

    async def _health(self, _params: wire.NoParams) -> BaseModel:
        counts = await self.hub.counts()
        latest = await self.hub.latest_done(HEALTH_KIND)
        now = time.time()
        return wire.HealthReply(
            status="stopping" if self.stopping else "ok",
            version=__version__,
            pid=os.getpid(),
            uptime_seconds=round(now - self.started_at, 3),
            started_at=self.started_at,
            jobs={state.value: count for state, count in counts.items()},
            lanes=await self.hub.lanes(),
            subscribers=self.hub.bus.subscriber_count,
            connections=self.connections,
            store_path=str(self.store_path),
            socket_path=str(self.socket_path),
            snapshot=None if latest is None else latest.result,
        )


def _notice_line(notice: Notice) -> bytes:
    if isinstance(notice, LaneNotice):
        return wire.notification(
            wire.NOTIFICATION_LANE,
            wire.LaneChange(
                lane=notice.lane, paused=notice.paused, reason=notice.reason, at=notice.at
            ),
        )
    return wire.notification(wire.NOTIFICATION_EVENT, notice)


def _first(exc: ValidationError) -> str:
    errors = exc.errors()
    return errors[0]["msg"] if errors else str(exc)


def _guess_id(line: bytes) -> int | str | None:
    """The id of a request that is JSON but not a valid request, if it has a usable one."""
    try:
        value = json.loads(line)
    except ValueError:
        return None
    if isinstance(value, dict):
        request_id = value.get("id")
        if isinstance(request_id, int | str) and not isinstance(request_id, bool):
            return request_id
    return None
