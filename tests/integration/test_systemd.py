"""The unit file as systemd reads it, and a real daemon speaking sd_notify to a fake manager."""

from __future__ import annotations

import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import anyio
import pytest

from interlock import systemd
from interlock.config import Config, resolve_paths
from interlock.daemon import Daemon
from tests.conftest import DaemonProcess, base_env
from tests.harness import running_daemon

UNIT = Path(__file__).resolve().parents[2] / "systemd" / "interlock.service"
SYSTEMD_ANALYZE = shutil.which("systemd-analyze") or "/usr/bin/systemd-analyze"


def unit_settings() -> dict[str, list[str]]:
    """KEY -> every value it is given in the unit, comments left out."""
    settings: dict[str, list[str]] = {}
    for line in UNIT.read_text().splitlines():
        if "=" in line and not line.startswith(("#", ";", "[")):
            key, _, value = line.partition("=")
            settings.setdefault(key.strip(), []).append(value.strip())
    return settings


def wait_for(
    daemon_process: DaemonProcess, predicate: Callable[[list[str]], bool], seconds: float
) -> None:
    """Poll the notifications until `predicate` holds; fail with what did arrive."""
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if predicate(daemon_process.read_notifications()):
            return
    raise AssertionError(f"not within {seconds}s; notifications: {daemon_process.notifications}")


# -- the unit file ----------------------------------------------------------------------


def test_unit_passes_systemd_analyze_user_verify_without_a_warning() -> None:
    if not Path(SYSTEMD_ANALYZE).is_file():
        pytest.fail(
            "systemd-analyze is missing: install Debian's systemd package "
            "(apt-get install systemd) to check the unit file"
        )
    interlock = Path(sys.executable).parent / "interlock"
    assert interlock.is_file(), f"{interlock} is missing: pip install -e . in the venv"
    text, replaced = re.subn(
        r"^ExecStart=.*$", f"ExecStart={interlock} daemon", UNIT.read_text(), flags=re.M
    )
    assert replaced == 1, "the unit should have exactly one ExecStart= line"
    with tempfile.TemporaryDirectory(prefix="il.", dir="/tmp") as folder:
        copy = Path(folder) / "interlock.service"
        copy.write_text(text)
        runtime = Path(folder) / "runtime"
        runtime.mkdir(mode=0o700)
        done = subprocess.run(
            [SYSTEMD_ANALYZE, "--user", "verify", str(copy)],
            env={"PATH": "/usr/bin:/bin", "HOME": folder, "XDG_RUNTIME_DIR": str(runtime)},
            capture_output=True,
            text=True,
            timeout=30,
        )
    # verify exits 0 on unknown keys and bad values: they show up only on stderr.
    assert done.returncode == 0, done.stderr
    assert done.stderr == ""


def test_unit_declares_the_lifecycle_the_daemon_implements() -> None:
    settings = unit_settings()
    expected = {
        "Type": "notify",
        "ExecStart": "%h/.local/bin/interlock daemon",
        "Restart": "on-failure",
        "KillMode": "mixed",
        "OOMPolicy": "continue",
        "WatchdogSec": "30s",
        "UMask": "0077",
        "RuntimeDirectory": "interlock",
        "RuntimeDirectoryMode": "0700",
        "WantedBy": "default.target",
    }
    assert {key: settings.get(key) for key in expected} == {
        key: [value] for key, value in expected.items()
    }
    # ProtectHome= would hide /home and /run/user from agents working under $HOME.
    assert "ProtectHome" not in settings


# -- the daemon and its fake service manager ----------------------------------------


def test_socket_accepts_a_connection_once_ready_has_arrived(daemon_process: DaemonProcess) -> None:
    assert "READY=1" in daemon_process.notifications  # start() returns at READY=1, not later
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as client:
        client.settimeout(2)
        client.connect(str(daemon_process.socket_path))


@pytest.mark.anyio
async def test_socket_already_listens_at_the_instant_ready_is_sent(
    home: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The subprocess test above cannot see a READY=1 sent a moment before
    # listen(): the daemon wins that race. Here the connect happens inside
    # notify(), before the daemon can run another line.
    socket_path = resolve_paths(Config(), {"INTERLOCK_HOME": str(home)}).socket_path
    connects: list[str] = []
    real_notify = systemd.notify

    def notify(*fields: str, env: Mapping[str, str] | None = None) -> bool:
        if "READY=1" in fields:
            with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as client:
                try:
                    client.connect(str(socket_path))
                    connects.append("connected")
                except OSError as exc:
                    connects.append(repr(exc))
        return real_notify(*fields, env=env)

    monkeypatch.setattr(systemd, "notify", notify)
    async with running_daemon(home):
        pass
    assert connects == ["connected"]


def test_status_arrives_in_the_same_message_as_ready(daemon_process: DaemonProcess) -> None:
    fields = daemon_process.notifications
    ready = fields.index("READY=1")
    # One datagram's fields are consecutive here, and nothing else was sent yet.
    assert fields[ready + 1].startswith("STATUS=ready"), fields


def test_watchdog_pings_arrive_repeatedly_when_watchdog_usec_is_set(make_daemon: Any) -> None:
    daemon_process = make_daemon(None, WATCHDOG_USEC="200000").start()
    wait_for(daemon_process, lambda fields: fields.count("WATCHDOG=1") >= 4, seconds=2.5)


def test_no_watchdog_pings_without_watchdog_usec(daemon_process: DaemonProcess) -> None:
    # A ping every 0.1 s in the test above; none in 0.5 s here.
    deadline = time.monotonic() + 0.5
    while time.monotonic() < deadline:
        assert "WATCHDOG=1" not in daemon_process.read_notifications()


def test_sigterm_sends_stopping_exits_zero_and_removes_the_socket(
    daemon_process: DaemonProcess,
) -> None:
    assert daemon_process.socket_path.exists()
    assert daemon_process.process is not None
    daemon_process.process.send_signal(signal.SIGTERM)
    assert daemon_process.process.wait(timeout=10) == 0, daemon_process.log()
    fields = daemon_process.read_notifications()
    assert "STOPPING=1" in fields
    assert any(field.startswith("EXTEND_TIMEOUT_USEC=") for field in fields), fields
    assert not daemon_process.socket_path.exists()


def test_watchdog_pings_go_on_while_draining_without_overwriting_the_stopping_status(
    make_daemon: Any, cli: Any
) -> None:
    daemon_process = make_daemon("[daemon]\nshutdown_grace_seconds = 0.6\n", WATCHDOG_USEC="200000")
    daemon_process.start()
    submitted = cli("submit", "sleep", "--payload", '{"seconds": 30}')
    assert submitted.code == 0, submitted.err
    wait_for(daemon_process, lambda fields: "STATUS=serving; 1 job(s) running" in fields, seconds=2)
    assert daemon_process.process is not None
    daemon_process.process.send_signal(signal.SIGTERM)
    assert daemon_process.process.wait(timeout=10) == 0, daemon_process.log()
    fields = daemon_process.read_notifications()
    after_stopping = fields[fields.index("STOPPING=1") :]
    assert "STATUS=stopping; waiting up to 0.6s for 1 running job(s)" in after_stopping
    assert after_stopping.count("WATCHDOG=1") >= 2, fields
    assert not any(field.startswith("STATUS=serving") for field in after_stopping), fields


def test_sigterm_the_instant_ready_arrives_is_a_clean_stop(home: Path) -> None:
    # systemd may stop the unit right after READY=1; the fixture reads on for a
    # few ms after READY, so this test keeps its own manager socket.
    notify_path = home / "manager.sock"
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as manager:
        manager.bind(str(notify_path))
        manager.settimeout(10)
        env = {**base_env(home), "NOTIFY_SOCKET": str(notify_path)}
        process = subprocess.Popen(
            [sys.executable, "-m", "interlock", "daemon"],
            env=env,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
        )
        try:
            while b"READY=1" not in manager.recv(65536).split(b"\n"):
                pass
            process.send_signal(signal.SIGTERM)
            _, err = process.communicate(timeout=10)
        finally:
            if process.poll() is None:
                process.kill()
                process.wait()
    assert process.returncode == 0, err.decode(errors="replace")
    assert not (home / "interlock.sock").exists()


@pytest.mark.anyio
async def test_a_cancelled_daemon_still_closes_its_store(home: Path) -> None:
    # Cancelled rather than stopped (an error elsewhere in the task group): an
    # unclosed store leaves aiosqlite's worker threads behind, and they keep
    # the process from exiting.
    def store_threads() -> list[threading.Thread]:
        return [t for t in threading.enumerate() if "_connection_worker_thread" in t.name]

    before = set(store_threads())
    daemon_process = Daemon(Config(), resolve_paths(Config(), {"INTERLOCK_HOME": str(home)}))
    async with anyio.create_task_group() as tasks:
        await tasks.start(daemon_process.run)
        assert set(store_threads()) - before
        tasks.cancel_scope.cancel()
    for thread in set(store_threads()) - before:
        thread.join(timeout=2)
    assert not set(store_threads()) - before
    assert not daemon_process.paths.socket_path.exists()
