"""What a handler sees while it runs: its job, its payload, the clock, a folder, progress.

Not the hub and not the store: a handler says what happened by returning an
outcome (`domain.Done`, `Retry`, `Fail`), and the lane runner that ran it
asks the hub to record it. The runner also renews the job's lease while the
handler runs, however long it awaits; a handler never heartbeats by hand.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

from interlock.clock import Clock
from interlock.domain import Job


class JobContext:
    """One run of one job, as its handler sees it."""

    __slots__ = ("__dict__", "_artifacts_root", "_report_progress", "clock", "job")

    def __init__(
        self,
        job: Job,
        clock: Clock,
        artifacts_root: Path,
        report_progress: Callable[[str], None] | None = None,
    ) -> None:
        self.job = job
        self.clock = clock
        self._artifacts_root = artifacts_root
        self._report_progress = report_progress

    @property
    def payload(self) -> dict[str, Any]:
        """The job's input, as submitted (and checked against its kind's payload model)."""
        return self.job.payload

    @property
    def artifacts_dir(self) -> Path:
        """<state>/artifacts/<job id>/: where the job may leave files (create it when needed)."""
        return self._artifacts_root / str(self.job.id)

    def progress(self, note: str) -> None:
        """Say how far the job got; kept on the job with its next lease renewal."""
        if self._report_progress is not None:
            self._report_progress(note[:1000])
