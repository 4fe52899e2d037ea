"""Wiring: build the parts, run them in one task group, stop them in order."""

from __future__ import annotations

import fcntl
import logging
import os
import signal
import sys
import uuid
from pathlib import Path
from typing import IO, ClassVar

import anyio
from anyio.abc import TaskStatus

from interlock import systemd
from interlock.bus import Bus
from interlock.clock import Clock, SystemClock
from interlock.config import Config, Paths
from interlock.errors import AlreadyRunning
from interlock.handlers import HandlerRegistry, default_registry
from interlock.hub import Hub
from interlock.ipc.server import Server
from interlock.lanes import LaneRunner, lane_order
from interlock.maintenance.scheduler import Scheduler
from interlock.store.sqlite import SQLiteStore

log = logging.getLogger(__name__)


def _lock(path: Path) -> IO[bytes]:
    """Hold an exclusive lock on the state folder for as long as the daemon lives."""
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    handle = open(path, "a+b")  # noqa: SIM115 - held open for the daemon's life
    try:
        fcntl.flock(handle.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        handle.seek(0)
        holder = handle.read().decode(errors="replace").strip() or "another process"
        handle.close()
        raise AlreadyRunning(
            f"another interlock daemon (pid {holder}) already uses {path.parent}"
        ) from None
    handle.seek(0)
    handle.truncate()
    handle.write(str(os.getpid()).encode())
    handle.flush()
    return handle


class Daemon:
    """The whole daemon: store, bus, hub, lanes and the socket server, in one task group."""

    def __init__(
        self,
        config: Config,
        paths: Paths,
        clock: Clock | None = None,
        handlers: HandlerRegistry | None = None,
        handle_signals: bool = False,
    ) -> None:
        self.config = config
        self.paths = paths
        self.clock = clock or SystemClock()
        self.handlers = handlers or default_registry()
        self.handle_signals = handle_signals
        self.holder = f"{os.getpid()}-{uuid.uuid4().hex[:8]}"
        self.store = SQLiteStore(paths.db_path, config.store.durability)
        self.bus = Bus()
        self.hub = Hub(self.store, self.bus, self.clock, config, self.handlers, self.holder)
        self.runners = [
            LaneRunner(
                name, config.lanes[name], self.hub, self.handlers, self.clock, paths.artifacts_dir
            )
            for name in lane_order(config.lanes)
        ]
        self.scheduler = Scheduler(self.hub, self.clock, config.maintenance.timers)
        self._stop = anyio.Event()
        self.server: Server | None = None

    def stop(self) -> None:
        """Ask the daemon to shut down cleanly."""
        self._stop.set()

    async def run(self, *, task_status: TaskStatus[None] = anyio.TASK_STATUS_IGNORED) -> None:
        """Start, report ready, serve until stopped, then drain and close."""
        self.scheduler.check()
        lock = _lock(self.paths.lock_path)
        try:
            await self._run(task_status)
        finally:
            lock.close()

    async def _run(self, task_status: TaskStatus[None]) -> None:
        self.paths.artifacts_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
        await self.store.open()
        try:
            recovered = await self.hub.recover()
            if recovered:
                log.warning("requeued %d job(s) left running by a previous daemon", len(recovered))
            self.server = Server(
                self.hub,
                self.config,
                self.paths.socket_path,
                self.paths.db_path,
                self.clock.now(),
                scheduler=self.scheduler,
            )
            listener = await self.server.listen()
            async with anyio.create_task_group() as tasks:
                tasks.start_soon(self.server.serve, listener)
                tasks.start_soon(self.store.run_checkpoints)
                tasks.start_soon(self.scheduler.run)
                for runner in self.runners:
                    tasks.start_soon(runner.run)
                if self.handle_signals:
                    # Handlers in place before READY=1: a SIGTERM right after it is a clean stop.
                    await tasks.start(self._signals)
                interval = systemd.watchdog_interval()
                if interval is not None:
                    tasks.start_soon(self._watchdog, interval)
                log.info("listening on %s, store %s", self.paths.socket_path, self.paths.db_path)
                systemd.notify("READY=1", f"STATUS=ready; recovered {len(recovered)} job(s)")
                task_status.started()
                await self._stop.wait()
                await self._drain()
                tasks.cancel_scope.cancel()
            requeued = await self.hub.requeue_own(
                "the daemon stopped before the job finished; requeued"
            )
            if requeued:
                log.warning("requeued %d unfinished job(s) for the next start", len(requeued))
        finally:
            # Shielded: when the daemon is cancelled rather than stopped, an
            # unclosed store leaves aiosqlite's threads behind to hang the exit.
            with anyio.move_on_after(10, shield=True):
                await self.store.close()
            self.paths.socket_path.unlink(missing_ok=True)
        log.info("stopped")

    async def _drain(self) -> None:
        """Stop claiming; give running jobs the grace period to finish."""
        grace = self.config.daemon.shutdown_grace_seconds
        running = sum(runner.running for runner in self.runners)
        systemd.notify(
            "STOPPING=1",
            f"STATUS=stopping; waiting up to {grace:g}s for {running} running job(s)",
            f"EXTEND_TIMEOUT_USEC={int((grace + 5) * 1_000_000)}",
        )
        log.info("stopping: %d running job(s), grace %gs", running, grace)
        if self.server is not None:
            self.server.stopping = True
        for runner in self.runners:
            runner.stop_claiming()
        with anyio.move_on_after(grace):
            for runner in self.runners:
                await runner.wait_idle()

    async def _signals(self, *, task_status: TaskStatus[None] = anyio.TASK_STATUS_IGNORED) -> None:
        with anyio.open_signal_receiver(signal.SIGTERM, signal.SIGINT, signal.SIGHUP) as signals:
            task_status.started()
            async for signum in signals:
                if signum == signal.SIGHUP:
                    log.warning("SIGHUP: live reload is not supported; restart to apply changes")
                    continue
                log.info("received %s", signal.Signals(signum).name)
                self.stop()

    async def _watchdog(self, interval: float) -> None:
        # Pinged from the event loop itself, so a stuck loop misses its pings
        # and systemd restarts the daemon. The pings go on while draining, but
        # without STATUS=, so `systemctl status` keeps saying "stopping".
        while True:
            if self._stop.is_set():
                systemd.notify("WATCHDOG=1")
            else:
                running = sum(runner.running for runner in self.runners)
                systemd.notify("WATCHDOG=1", f"STATUS=serving; {running} job(s) running")
            await anyio.sleep(interval)


def setup_logging(level: str) -> None:
    """One line per record on stderr; with a <N> priority prefix when stderr is the journal."""
    to_journal = _stderr_is_journal()
    handler = logging.StreamHandler(sys.stderr)
    if to_journal:
        handler.setFormatter(_JournalFormatter("%(name)s: %(message)s"))
    else:
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())


def _stderr_is_journal() -> bool:
    """Whether stderr itself is the journal stream that $JOURNAL_STREAM names (systemd.exec).

    Comparing device and inode matters: a shell in a terminal that a user unit
    started inherits JOURNAL_STREAM while its stderr is the terminal.
    """
    try:
        status = os.fstat(sys.stderr.fileno())
    except (AttributeError, OSError, ValueError):
        return False  # no stderr, or not a real file
    return os.environ.get("JOURNAL_STREAM") == f"{status.st_dev}:{status.st_ino}"


class _JournalFormatter(logging.Formatter):
    _PRIORITY: ClassVar[dict[int, int]] = {
        logging.DEBUG: 7,
        logging.INFO: 6,
        logging.WARNING: 4,
        logging.ERROR: 3,
    }

    def format(self, record: logging.LogRecord) -> str:
        priority = self._PRIORITY.get(record.levelno, 3 if record.levelno > logging.ERROR else 6)
        return f"<{priority}>{super().format(record)}"
