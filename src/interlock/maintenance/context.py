"""The maintenance kinds' context: wider than a handler's, still not the store.

A maintenance job reads through the store's read interface (`reads`) and
changes things only by asking the hub, like every other part of the daemon.
A timer asks a kind's probe, with a `Probe` context, whether there is
anything to do before it makes a job: a quiet daemon makes no jobs that only
record that nothing happened.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from interlock.clock import Clock
from interlock.config import Config
from interlock.domain import Job
from interlock.handlers.context import JobContext
from interlock.hub import Hub
from interlock.store import StoreReads


class MaintenanceContext(JobContext):
    """A maintenance job's view: its own job, plus the hub, the reads and the config."""

    def __init__(
        self,
        job: Job,
        clock: Clock,
        artifacts_root: Path,
        report_progress: Callable[[str], None] | None,
        hub: Hub,
        state_dir: Path,
    ) -> None:
        super().__init__(job, clock, artifacts_root, report_progress)
        self.hub = hub
        self.reads: StoreReads = hub.reads
        self.config: Config = hub.config
        self.state_dir = state_dir


@dataclass(frozen=True)
class Probe:
    """What a maintenance kind's probe may look at to tell whether it has work."""

    reads: StoreReads
    config: Config
    clock: Clock
    state_dir: Path
