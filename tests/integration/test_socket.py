"""The wire against a real daemon subprocess: concurrency, bad input, peers."""

from __future__ import annotations

import json
import os
import socket
from pathlib import Path
from typing import Any

import anyio
import pytest

from interlock.domain import EventType, JobSpec
from interlock.ipc.client import RemoteError, connect
from interlock.ipc.server import peer_allowed, peer_credentials

pytestmark = pytest.mark.anyio


class RawConnection:
    """A plain blocking socket that speaks lines: for input no client of ours would send."""

    def __init__(self, path: Path) -> None:
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.sock.settimeout(10)
        self.sock.connect(str(path))
        self.buffer = b""

    def send(self, data: bytes) -> None:
        self.sock.sendall(data)

    def receive(self) -> dict[str, Any]:
        while b"\n" not in self.buffer:
            chunk = self.sock.recv(65536)
            if not chunk:
                raise ConnectionError("closed")
            self.buffer += chunk
        line, self.buffer = self.buffer.split(b"\n", 1)
        return json.loads(line)  # type: ignore[no-any-return]

    def call(
        self, method: str, params: dict[str, Any] | None = None, id: int = 1
    ) -> dict[str, Any]:
        message = {"jsonrpc": "2.0", "id": id, "method": method, "params": params or {}}
        self.send(json.dumps(message).encode() + b"\n")
        return self.receive()

    def hello(self) -> None:
        assert "result" in self.call("hello", {"protocol": 1, "client": "raw"})

    def closed_by_peer(self) -> bool:
        try:
            return self.sock.recv(1) == b""
        except ConnectionResetError:
            return True

    def close(self) -> None:
        self.sock.close()


async def test_200_concurrent_submits_of_one_key_give_one_job(daemon_process) -> None:
    results: list[Any] = []

    async def submit_once() -> None:
        async with connect(daemon_process.socket_path) as (client, _):
            spec = JobSpec(kind="sleep", payload={"seconds": 30}, key="one-key", reason="race")
            results.append(await client.submit(spec))

    async with anyio.create_task_group() as tasks:
        for _ in range(200):
            tasks.start_soon(submit_once)

    assert len(results) == 200
    ids = {result.job.id for result in results}
    assert len(ids) == 1
    assert sum(not result.duplicate for result in results) == 1
    assert sum(result.duplicate for result in results) == 199
    async with connect(daemon_process.socket_path) as (client, _):
        detail = await client.get(ids.pop())
        duplicates = [event for event in detail.events if event.type == EventType.DUPLICATE]
        assert len(duplicates) == 199
        assert len((await client.list_jobs(_all())).jobs) == 1


def _all() -> Any:
    from interlock.domain import JobFilter

    return JobFilter(limit=1000)


def test_invalid_json_gets_a_parse_error_and_the_connection_lives_on(daemon_process) -> None:
    conn = RawConnection(daemon_process.socket_path)
    conn.hello()
    conn.send(b'{"jsonrpc": "2.0", "id": 1, "method": \n')
    reply = conn.receive()
    assert reply["error"]["code"] == -32700
    assert "invalid JSON" in reply["error"]["message"]
    assert "result" in conn.call("health", id=2)
    conn.close()


@pytest.mark.parametrize(
    ("message", "code", "words"),
    [
        (b'{"id": 1, "method": "health"}', -32600, "jsonrpc"),
        (b"[1, 2, 3]", -32600, "JSON-RPC"),
        (b'{"jsonrpc": "2.0", "id": 1, "method": "explode"}', -32601, "unknown method 'explode'"),
        (b'{"jsonrpc": "2.0", "id": 1, "method": "get", "params": {"id": "x"}}', -32602, "id"),
        (b'{"jsonrpc": "2.0", "id": 1, "method": "submit", "params": {}}', -32602, "kind"),
        (
            b'{"jsonrpc": "2.0", "id": 1, "method": "submit", "params": {"kind": "noop", "x": 1}}',
            -32602,
            "x: unknown field",
        ),
        (
            b'{"jsonrpc": "2.0", "id": 1, "method": "submit", "params": {"kind": "nope"}}',
            406,
            "no handler for job kind 'nope'",
        ),
        (b'{"jsonrpc": "2.0", "id": 1, "method": "cancel", "params": {"id": 4242}}', 404, "4242"),
        (
            b'{"jsonrpc": "2.0", "id": 1, "method": "pause", "params": {"lane": "nope"}}',
            405,
            "'nope'",
        ),
    ],
)
def test_bad_requests_get_errors_that_name_the_problem(
    daemon_process, message, code, words
) -> None:
    conn = RawConnection(daemon_process.socket_path)
    conn.hello()
    conn.send(message + b"\n")
    reply = conn.receive()
    assert reply["error"]["code"] == code, reply
    assert words in reply["error"]["message"]
    assert "result" in conn.call("health", id=2)  # still serving this connection
    conn.close()


def test_requests_before_hello_are_refused(daemon_process) -> None:
    conn = RawConnection(daemon_process.socket_path)
    reply = conn.call("health")
    assert reply["error"]["code"] == -32003
    assert "hello" in reply["error"]["message"]
    mismatch = conn.call("hello", {"protocol": 99})
    assert "protocol 99 is not supported" in mismatch["error"]["message"]
    conn.close()


def test_oversize_message_is_refused_and_others_keep_being_served(daemon_process) -> None:
    bystander = RawConnection(daemon_process.socket_path)
    bystander.hello()
    offender = RawConnection(daemon_process.socket_path)
    offender.hello()
    big = b'{"jsonrpc": "2.0", "id": 1, "method": "submit", "params": {"kind": "noop", "reason": "'
    offender.send(big + b"x" * (1024 * 1024 + 10) + b'"}}\n')
    reply = offender.receive()
    assert reply["error"]["code"] == -32600
    assert "too large" in reply["error"]["message"] and "1048576" in reply["error"]["message"]
    assert offender.closed_by_peer()
    assert "result" in bystander.call("health")
    fresh = RawConnection(daemon_process.socket_path)
    fresh.hello()
    assert "result" in fresh.call("health")
    for conn in (bystander, offender, fresh):
        conn.close()


def test_a_client_that_vanishes_mid_message_does_not_hurt_the_daemon(daemon_process) -> None:
    conn = RawConnection(daemon_process.socket_path)
    conn.hello()
    conn.send(b'{"jsonrpc": "2.0", "id": 1, "method": "sub')
    conn.close()
    other = RawConnection(daemon_process.socket_path)
    other.hello()
    assert "result" in other.call("health")
    other.close()


def test_socket_file_is_private_to_its_user(daemon_process) -> None:
    mode = daemon_process.socket_path.stat().st_mode & 0o777
    assert mode == 0o600


def test_peer_credentials_are_read_from_the_kernel() -> None:
    left, right = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
    with left, right:
        pid, uid, gid = peer_credentials(left)
    assert (pid, uid, gid) == (os.getpid(), os.getuid(), os.getgid())


def test_only_the_same_user_or_root_is_allowed() -> None:
    assert peer_allowed(1000, own_uid=1000)
    assert peer_allowed(0, own_uid=1000)
    assert not peer_allowed(1001, own_uid=1000)


def test_a_peer_with_another_uid_is_refused_and_disconnected(make_daemon, home: Path) -> None:
    """With root available, connect as a different uid for real."""
    if os.getuid() != 0:
        pytest.fail("this test connects as another uid and needs root (CI runs as root)")
    daemon_process = make_daemon().start()
    home.chmod(0o755)  # let the other uid reach the socket file itself
    daemon_process.socket_path.chmod(0o777)
    pid = os.fork()
    if pid == 0:  # the child becomes nobody and tries to talk
        code = 1
        try:
            os.setgid(65534)
            os.setuid(65534)
            conn = RawConnection(daemon_process.socket_path)
            reply = conn.receive()
            refused = "refused: uid 65534" in reply["error"]["message"]
            code = 0 if refused and conn.closed_by_peer() else 2
        finally:
            os._exit(code)
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0
    assert "uid 65534" in daemon_process.log()


async def test_subscribers_see_every_committed_transition(daemon_process) -> None:
    async with connect(daemon_process.socket_path) as (watcher, notes):
        await watcher.subscribe()
        async with connect(daemon_process.socket_path) as (client, _):
            job = (await client.submit(JobSpec(kind="noop"))).job
        seen = []
        with anyio.fail_after(10):
            while not seen or seen[-1] != EventType.FINISHED:
                notice = await notes.receive()
                if getattr(notice, "job_id", None) == job.id:
                    seen.append(notice.type)
        assert seen == [EventType.SUBMITTED, EventType.CLAIMED, EventType.FINISHED]


async def test_remote_errors_reach_the_client_as_sentences(daemon_process) -> None:
    async with connect(daemon_process.socket_path) as (client, _):
        with pytest.raises(RemoteError, match="no job with id 77"):
            await client.get(77)
        # and the connection is still good
        assert (await client.health()).status == "ok"


def test_a_client_that_hangs_up_before_reading_its_reply_does_not_stop_the_daemon(
    daemon_process,
) -> None:
    for _ in range(20):
        conn = RawConnection(daemon_process.socket_path)
        hello = {"jsonrpc": "2.0", "id": 1, "method": "hello", "params": {"protocol": 1}}
        health = {"jsonrpc": "2.0", "id": 2, "method": "health", "params": {}}
        conn.send(json.dumps(hello).encode() + b"\n" + json.dumps(health).encode() + b"\n")
        conn.close()
    survivor = RawConnection(daemon_process.socket_path)
    survivor.hello()
    assert "result" in survivor.call("health", id=3)
    survivor.close()
    assert daemon_process.process is not None and daemon_process.process.poll() is None


def test_subscribing_twice_sends_each_notice_once(daemon_process) -> None:
    conn = RawConnection(daemon_process.socket_path)
    conn.hello()
    assert "result" in conn.call("subscribe", id=2)
    assert "result" in conn.call("subscribe", id=3)
    reply = conn.call("submit", {"kind": "noop", "lane": "urgent"}, id=4)
    job_id = reply["result"]["job"]["id"]
    seen = []
    while "finished" not in seen:
        message = conn.receive()
        if message.get("method") == "event" and message["params"]["job_id"] == job_id:
            seen.append(message["params"]["type"])
    assert seen == ["submitted", "claimed", "finished"]
    conn.close()


def test_a_notification_gets_no_reply_even_when_it_fails(daemon_process) -> None:
    conn = RawConnection(daemon_process.socket_path)
    conn.hello()
    conn.send(b'{"jsonrpc": "2.0", "method": "explode"}\n')  # no id: a notification
    conn.send(b'{"jsonrpc": "2.0", "method": "cancel", "params": {"id": 999}}\n')
    reply = conn.call("health", id=7)
    assert reply["id"] == 7 and "result" in reply  # the first thing back is the health reply
    conn.close()
