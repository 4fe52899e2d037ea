"""sd_notify, the watchdog interval and the child environment, without a service manager."""

from __future__ import annotations

import logging
import os
import socket
import sys
import tempfile
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from interlock.daemon import setup_logging
from interlock.systemd import clean_child_environment, notify, watchdog_interval

Manager = tuple[socket.socket, str]


@pytest.fixture
def manager_socket() -> Iterator[Manager]:
    """A datagram socket at a short path, standing in for the service manager."""
    folder = Path(tempfile.mkdtemp(prefix="il.", dir="/tmp"))
    path = folder / "notify.sock"
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
        sock.bind(str(path))
        sock.settimeout(2)
        yield sock, str(path)
    path.unlink(missing_ok=True)
    folder.rmdir()


def datagrams_waiting(sock: socket.socket) -> int:
    sock.setblocking(False)
    count = 0
    try:
        while True:
            sock.recv(65536)
            count += 1
    except BlockingIOError:
        return count


# -- notify -------------------------------------------------------------------------


def test_notify_sends_the_field_to_a_path_socket(manager_socket: Manager) -> None:
    sock, path = manager_socket
    assert notify("READY=1", env={"NOTIFY_SOCKET": path}) is True
    assert sock.recv(65536) == b"READY=1"


def test_notify_sends_to_an_abstract_socket_named_with_at() -> None:
    name = f"interlock-test-{uuid.uuid4().hex}"
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
        sock.bind("\0" + name)
        sock.settimeout(2)
        assert notify("WATCHDOG=1", env={"NOTIFY_SOCKET": "@" + name}) is True
        assert sock.recv(65536) == b"WATCHDOG=1"


def test_notify_sends_several_fields_in_one_datagram(manager_socket: Manager) -> None:
    sock, path = manager_socket
    assert notify("READY=1", "STATUS=ready; 3 jobs", env={"NOTIFY_SOCKET": path}) is True
    assert sock.recv(65536) == b"READY=1\nSTATUS=ready; 3 jobs"
    assert datagrams_waiting(sock) == 0


def test_notify_returns_false_without_notify_socket() -> None:
    assert notify("READY=1", env={}) is False
    assert notify("READY=1", env={"NOTIFY_SOCKET": ""}) is False


def test_notify_returns_false_when_the_manager_is_gone(tmp_path: Path) -> None:
    assert notify("READY=1", env={"NOTIFY_SOCKET": str(tmp_path / "gone.sock")}) is False


def test_notify_uses_os_environ_by_default(
    manager_socket: Manager, monkeypatch: pytest.MonkeyPatch
) -> None:
    sock, path = manager_socket
    monkeypatch.setenv("NOTIFY_SOCKET", path)
    assert notify("STOPPING=1") is True
    assert sock.recv(65536) == b"STOPPING=1"


# -- watchdog_interval ----------------------------------------------------------------


def test_watchdog_interval_is_half_of_watchdog_usec() -> None:
    assert watchdog_interval({"WATCHDOG_USEC": "30000000"}) == 15.0
    assert watchdog_interval({"WATCHDOG_USEC": "200000"}) == 0.1


def test_watchdog_interval_is_none_without_watchdog_usec() -> None:
    assert watchdog_interval({}) is None


def test_watchdog_interval_honours_a_watchdog_pid_of_this_process() -> None:
    env = {"WATCHDOG_USEC": "30000000", "WATCHDOG_PID": str(os.getpid())}
    assert watchdog_interval(env) == 15.0


def test_watchdog_interval_ignores_a_watchdog_meant_for_another_process() -> None:
    env = {"WATCHDOG_USEC": "30000000", "WATCHDOG_PID": str(os.getpid() + 1)}
    assert watchdog_interval(env) is None


@pytest.mark.parametrize("usec", ["", "0", "abc", "-5", "+5", " 5", "1_000", "1.5", "١٢"])
def test_watchdog_interval_rejects_a_garbled_watchdog_usec(usec: str) -> None:
    assert watchdog_interval({"WATCHDOG_USEC": usec}) is None


@pytest.mark.parametrize("pid", ["", "abc", "-1", f"{os.getpid()}x"])
def test_watchdog_interval_rejects_a_garbled_watchdog_pid(pid: str) -> None:
    assert watchdog_interval({"WATCHDOG_USEC": "30000000", "WATCHDOG_PID": pid}) is None


# -- clean_child_environment ------------------------------------------------------------


def test_clean_child_environment_drops_the_managers_variables() -> None:
    env = {
        "PATH": "/usr/bin",
        "HOME": "/home/you",
        "NOTIFY_SOCKET": "/run/user/1000/systemd/notify",
        "WATCHDOG_USEC": "30000000",
        "WATCHDOG_PID": "42",
        "LISTEN_PID": "42",
        "LISTEN_FDS": "1",
        "LISTEN_FDNAMES": "interlock",
        "CREDENTIALS_DIRECTORY": "/run/user/1000/credentials/interlock.service",
    }
    assert clean_child_environment(env) == {"PATH": "/usr/bin", "HOME": "/home/you"}
    assert "NOTIFY_SOCKET" in env  # the caller's mapping is left alone


# -- logging to the journal ------------------------------------------------------------


@pytest.fixture
def root_logger() -> Iterator[logging.Logger]:
    """The root logger, put back as it was after setup_logging() replaced its handlers."""
    root = logging.getLogger()
    handlers, level = root.handlers[:], root.level
    try:
        yield root
    finally:
        root.handlers[:] = handlers
        root.setLevel(level)


@pytest.mark.parametrize(
    ("journal_stream", "prefixed"),
    [("this stderr", True), ("another stream", False), (None, False)],
)
def test_log_lines_carry_a_priority_prefix_only_when_stderr_is_the_journal(
    root_logger: logging.Logger,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    journal_stream: str | None,
    prefixed: bool,
) -> None:
    # A shell started from a user unit inherits JOURNAL_STREAM while its stderr
    # is a terminal: only a matching device:inode means the journal.
    with open(tmp_path / "stderr", "w") as stderr:
        monkeypatch.setattr(sys, "stderr", stderr)
        status = os.fstat(stderr.fileno())
        if journal_stream == "this stderr":
            monkeypatch.setenv("JOURNAL_STREAM", f"{status.st_dev}:{status.st_ino}")
        elif journal_stream == "another stream":
            monkeypatch.setenv("JOURNAL_STREAM", f"{status.st_dev}:{status.st_ino + 1}")
        else:
            monkeypatch.delenv("JOURNAL_STREAM", raising=False)
        setup_logging("info")
        logging.getLogger("interlock.test").warning("hello")
    line = (tmp_path / "stderr").read_text()
    assert line.startswith("<4>interlock.test: hello") is prefixed, line
