"""Shared fixtures: a short temporary home, in-process daemons, daemon subprocesses, the CLI.

In-process (`daemon`, `clock`, `client`): a real store, hub, lanes and socket
in the test's own event loop, on a fake clock unless the test asks for the
real one. Per test, `@pytest.mark.daemon(config=..., kinds=..., real_clock=True)`.

Subprocesses (`daemon_process`, `make_daemon`, `cli`): `interlock daemon` as a
user starts it, for kill -9, signals, systemd and the command line.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from interlock.clock import FakeClock
from interlock.daemon import Daemon
from interlock.ipc.client import Client, connect
from tests.harness import running_daemon


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


@pytest.fixture
def clock() -> FakeClock:
    """The clock of the in-process daemon: time moves only when the test advances it."""
    return FakeClock()


@pytest.fixture
async def daemon(home: Path, clock: FakeClock, request: pytest.FixtureRequest) -> Any:
    """A running in-process daemon under `home`; settings from @pytest.mark.daemon(...)."""
    marker = request.node.get_closest_marker("daemon")
    options: dict[str, Any] = dict(marker.kwargs) if marker else {}
    unknown = set(options) - {"config", "kinds", "real_clock"}
    if unknown:
        raise TypeError(f"@pytest.mark.daemon takes config, kinds, real_clock; not {unknown}")
    used_clock = None if options.get("real_clock") else clock
    async with running_daemon(home, options.get("config"), used_clock, options.get("kinds")) as d:
        yield d


@pytest.fixture
async def client(daemon: Daemon) -> Any:
    """A socket client of the in-process daemon, hello said."""
    async with connect(daemon.paths.socket_path, "tests") as (connected, _notes):
        yield connected


__all__ = ["Client"]


@pytest.fixture
def home() -> Iterator[Path]:
    """A short temporary INTERLOCK_HOME: AF_UNIX paths must stay under 108 bytes."""
    path = Path(tempfile.mkdtemp(prefix="il.", dir="/tmp"))
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)


def base_env(home: Path, config: Path | None = None) -> dict[str, str]:
    env = {
        name: value
        for name, value in os.environ.items()
        if not name.startswith(("INTERLOCK_", "NOTIFY_", "WATCHDOG_", "XDG_"))
    }
    env["INTERLOCK_HOME"] = str(home)
    env["PYTHONUNBUFFERED"] = "1"
    if config is not None:
        env["INTERLOCK_CONFIG"] = str(config)
    return env


@dataclass
class DaemonProcess:
    """A real `interlock daemon` in a subprocess, started and stopped by tests."""

    home: Path
    config: Path | None = None
    extra_env: dict[str, str] = field(default_factory=dict)
    process: subprocess.Popen[bytes] | None = None
    notifications: list[str] = field(default_factory=list)
    _notify: socket.socket | None = None

    @property
    def socket_path(self) -> Path:
        return self.home / "interlock.sock"

    @property
    def db_path(self) -> Path:
        return self.home / "interlock.db"

    @property
    def log_path(self) -> Path:
        return self.home / "daemon.log"

    def env(self) -> dict[str, str]:
        return {**base_env(self.home, self.config), **self.extra_env}

    def start(self, timeout: float = 20.0) -> DaemonProcess:
        """Start and wait for READY=1 on a notify socket of our own: readiness, not a guess."""
        notify_path = self.home / "notify.sock"
        notify_path.unlink(missing_ok=True)
        self._notify = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self._notify.bind(str(notify_path))
        self._notify.settimeout(0.2)
        env = self.env()
        env.setdefault("NOTIFY_SOCKET", str(notify_path))
        log = open(self.log_path, "ab")  # noqa: SIM115 - closed with the process
        self.process = subprocess.Popen(
            [sys.executable, "-m", "interlock", "daemon"], env=env, stdout=log, stderr=log
        )
        log.close()
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise AssertionError(f"daemon exited with {self.process.returncode}:\n{self.log()}")
            if "READY=1" in self.read_notifications():
                return self
        raise AssertionError(f"daemon not ready after {timeout}s:\n{self.log()}")

    def read_notifications(self) -> list[str]:
        """Every notify field received so far."""
        assert self._notify is not None
        while True:
            try:
                data = self._notify.recv(65536)
            except (TimeoutError, BlockingIOError):
                break
            self.notifications.extend(data.decode().split("\n"))
            self._notify.settimeout(0.01)
        self._notify.settimeout(0.2)
        return self.notifications

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def terminate(self, timeout: float = 30.0) -> int:
        assert self.process is not None
        self.process.send_signal(signal.SIGTERM)
        return self.process.wait(timeout=timeout)

    def kill(self) -> None:
        assert self.process is not None
        self.process.kill()
        self.process.wait(timeout=10)

    def close(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.kill()
        if self._notify is not None:
            self._notify.close()
            self._notify = None


# Timers submit maintenance jobs of their own; tests that count jobs switch them off
# (a [maintenance.timers.X] table merges over the built-in X, so each is disabled).
TIMER_NAMES = ("health", "stalls", "governor", "projects", "inbox", "retention", "aging", "gates")
NO_TIMERS = "".join(f"\n[maintenance.timers.{name}]\nenabled = false\n" for name in TIMER_NAMES)


@pytest.fixture
def daemon_process(home: Path) -> Iterator[DaemonProcess]:
    """A running daemon subprocess under `home`: the embedded defaults, without timers."""
    config = home / "interlock.toml"
    config.write_text(NO_TIMERS)
    process = DaemonProcess(home, config).start()
    try:
        yield process
    finally:
        process.close()


@pytest.fixture
def make_daemon(home: Path) -> Iterator[Any]:
    """A factory for daemons with a config of the test's own (TOML text)."""
    started: list[DaemonProcess] = []

    def make(
        config_text: str | None = None, timers: bool = False, **extra_env: str
    ) -> DaemonProcess:
        """A daemon (not yet started) with this config; timers off unless asked for."""
        text = config_text or ""
        if not timers and "[maintenance.timers" not in text:
            text += NO_TIMERS
        config = None
        if text:
            config = home / "interlock.toml"
            config.write_text(text)
        process = DaemonProcess(home, config, extra_env)
        started.append(process)
        return process

    try:
        yield make
    finally:
        for process in started:
            process.close()


@dataclass
class CliResult:
    code: int
    out: str
    err: str

    def json(self) -> Any:
        return json.loads(self.out)


def run_cli(home: Path, *args: str, config: Path | None = None, timeout: float = 30) -> CliResult:
    if config is None and (home / "interlock.toml").exists():
        config = home / "interlock.toml"  # the same file as the test's daemon
    """Run `interlock ARGS` as a user would, against the daemon under `home`."""
    done = subprocess.run(
        [sys.executable, "-m", "interlock", *args],
        env=base_env(home, config),
        capture_output=True,
        text=True,
        timeout=timeout,
    )
    return CliResult(done.returncode, done.stdout, done.stderr)


@pytest.fixture
def cli(home: Path) -> Any:
    """`cli("submit", "noop")` runs the real command against the test's home."""

    def call(*args: str) -> CliResult:
        return run_cli(home, *args)

    return call
