"""A guard for tests that read a FIFO: a regression fails the test instead of hanging the run."""

from __future__ import annotations

import os
import threading
from pathlib import Path


class FifoRelease:
    """If a read of the FIFO is still blocked after `within` s, open its other end.

    Without it a regression would hang the test run instead of failing it.
    """

    def __init__(self, path: Path, within: float) -> None:
        self.path = path
        self.needed = threading.Event()
        self.timer = threading.Timer(within, self._release)

    def _release(self) -> None:
        try:
            os.close(os.open(self.path, os.O_WRONLY | os.O_NONBLOCK))
        except OSError:
            return  # no reader blocked on it
        self.needed.set()

    def __enter__(self) -> FifoRelease:
        self.timer.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.timer.cancel()
        self.timer.join()
