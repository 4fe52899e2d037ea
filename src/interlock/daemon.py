"""Wiring: build the parts, run them in one task group, stop them in order."""

from __future__ import annotations

import fcntl
import logging
import os
import signal
import sys
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import IO, ClassVar

import anyio
import anyio.to_thread
from anyio.abc import TaskStatus

from interlock import maintenance, systemd
from interlock.bus import Bus
from interlock.clock import Clock, SystemClock
from interlock.config import Config, Paths, check_kinds
from interlock.domain import Job, JobSpec, Trigger
from interlock.errors import AlreadyRunning, StartupError
from interlock.handlers import diagnostics
from interlock.handlers.context import JobContext
from interlock.handlers.registry import Kind, KindRegistry
from interlock.hub import Hub
from interlock.ipc.server import Server
from interlock.lanes import LaneRunner, LeaseKeeper, lane_order
from interlock.maintenance.context import MaintenanceContext
from interlock.maintenance.inbox_files import has_waiting
from interlock.maintenance.inbox_watch import watch_inbox
from interlock.maintenance.scheduler import Scheduler
from interlock.store.sqlite import SQLiteStore

log = logging.getLogger(__name__)

# AF_UNIX socket paths stop here (sun_path is 108 bytes, with its NUL).
MAX_SOCKET_PATH = 107


def builtin_kinds() -> KindRegistry:
    """Every built-in kind: the diagnostic ones and the maintenance ones."""
    registry = KindRegistry()
    diagnostics.register(registry)
    maintenance.register(registry)
    return registry


def check_paths(paths: Paths) -> None:
    """Refuse to start, in one sentence, when a path the daemon needs cannot serve.

    Checked before anything is opened: the state folder (a folder, writable),
    the store (not a folder), the socket path (short enough for AF_UNIX).
    """
    state = paths.state_dir
    if state.exists() and not state.is_dir():
        raise StartupError(f"the state folder {state} is a file, not a folder")
    try:
        state.mkdir(parents=True, exist_ok=True, mode=0o700)
    except OSError as exc:
        raise StartupError(
            f"cannot create the state folder {state}: {exc.strerror or exc}"
        ) from None
    if not os.access(state, os.W_OK | os.X_OK):
        raise StartupError(f"the state folder {state} is not writable")
    if paths.db_path.is_dir():
        raise StartupError(f"store.path names a folder, not a file: {paths.db_path}")
    if not os.access(paths.db_path.parent, os.W_OK | os.X_OK):
        raise StartupError(f"the store's folder {paths.db_path.parent} is not writable")
    if paths.db_path.exists() and not os.access(paths.db_path, os.R_OK | os.W_OK):
        raise StartupError(f"the store {paths.db_path} is read-only")
    encoded = os.fsencode(paths.socket_path)
    if len(encoded) > MAX_SOCKET_PATH:
        raise StartupError(
            f"the socket path {paths.socket_path} is {len(encoded)} bytes, longer than the"
            f" {MAX_SOCKET_PATH} a Unix socket allows; set server.path or INTERLOCK_HOME shorter"
        )
    mode = state.stat().st_mode
    if mode & 0o077:
        log.warning(
            "the state folder %s can be read by other users (mode %o); chmod 700 it",
            state,
            mode & 0o777,
        )


def _lock(path: Path) -> IO[bytes]:
    """Hold an exclusive lock on the state folder for as long as the daemon lives."""
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
    handle = os.fdopen(fd, "a+b")
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
        kinds: KindRegistry | None = None,
        handle_signals: bool = False,
    ) -> None:
        self.config = config
        self.paths = paths
        self.clock = clock or SystemClock()
        self.kinds = kinds if kinds is not None else builtin_kinds()
        self.handle_signals = handle_signals
        self.holder = f"{os.getpid()}-{uuid.uuid4().hex[:8]}"
        self.store = SQLiteStore(paths.db_path, config.store.durability, self.clock)
        self.bus = Bus()
        self.hub = Hub(self.store, self.bus, self.clock, config, self.kinds, self.holder)
        self.keeper = LeaseKeeper(self.hub, self.clock, config.daemon.lease_seconds)
        self.runners = [
            LaneRunner(name, config.lanes[name], self.hub, self.kinds, self.keeper, self._context)
            for name in lane_order(config.lanes)
        ]
        self.scheduler = Scheduler(
            self.hub,
            self.clock,
            config.maintenance.timers,
            self.kinds,
            paths.state_dir,
            config.maintenance.start_delay_seconds,
        )
        self._stop = anyio.Event()
        self.server: Server | None = None

    def _context(self, job: Job, kind: Kind, report: Callable[[str], None]) -> JobContext:
        """The context a handler of `kind` gets: the narrow one, or maintenance's wider one."""
        if kind.context == "maintenance":
            return MaintenanceContext(
                job, self.clock, self.paths.artifacts_dir, report, self.hub, self.paths.state_dir
            )
        return JobContext(job, self.clock, self.paths.artifacts_dir, report)

    def stop(self) -> None:
        """Ask the daemon to shut down cleanly."""
        self._stop.set()

    async def run(self, *, task_status: TaskStatus[None] = anyio.TASK_STATUS_IGNORED) -> None:
        """Start, report ready, serve until stopped, then drain and close.

        Files the daemon makes are its user's alone (umask 077, whatever the
        unit or the shell said); every reason it cannot start is one sentence.
        """
        check_kinds(self.config, self.kinds)
        umask = os.umask(0o077)
        try:
            check_paths(self.paths)
            lock = _lock(self.paths.lock_path)
            try:
                await self._run(task_status)
            finally:
                lock.close()
        finally:
            os.umask(umask)

    async def _run(self, task_status: TaskStatus[None]) -> None:
        self.paths.artifacts_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
        await self.store.open()
        try:
            recovered = await self.hub.recover()
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
                tasks.start_soon(self.keeper.run)
                tasks.start_soon(self.scheduler.run)
                if self.config.inbox.watch:
                    await tasks.start(self._watch_inbox)
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
            await self.hub.requeue_own(
                "the daemon stopped before the job finished; requeued, the attempt not counted"
            )
        finally:
            # Shielded: when the daemon is cancelled rather than stopped, an
            # unclosed store leaves aiosqlite's threads behind to hang the exit.
            with anyio.move_on_after(10, shield=True):
                await self.store.close()
            self.paths.socket_path.unlink(missing_ok=True)
        log.info("stopped")

    async def _watch_inbox(
        self, *, task_status: TaskStatus[None] = anyio.TASK_STATUS_IGNORED
    ) -> None:
        """Scan the inbox as soon as a file arrives (the inbox timer is the safety net)."""
        await watch_inbox(
            self.paths.inbox_dir,
            self.scan_inbox_now,
            debounce_ms=self.config.inbox.watch_debounce_ms,
            task_status=task_status,
        )

    async def scan_inbox_now(self) -> None:
        """Submit an inbox scan, unless one is already queued or running.

        A file that arrives as a running scan makes its last listing would
        wait for the timer; so when the submit collapses into a running scan,
        wait for it to end and look again.
        """
        spec = JobSpec(
            kind="inbox.scan",
            key="inbox:watch",
            trigger=Trigger.INBOX,
            reason="files arrived in the inbox",
            source="inbox watch",
        )
        folder = self.paths.inbox_dir
        while True:
            # Window 0: collapse only into a scan that is still live.
            result = await self.hub.submit(spec, key_window_seconds=0)
            if not result.duplicate:
                return
            await self.hub.wait_ended(result.job.id)
            if not await anyio.to_thread.run_sync(has_waiting, folder):
                return

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
        self.hub.accepting = False
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
    # aiosqlite logs every call at debug: noise, even when the daemon's own debug is wanted.
    logging.getLogger("aiosqlite").setLevel(logging.WARNING)


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
