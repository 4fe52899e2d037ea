"""watch_inbox on a real folder: files that arrive call on_files, nothing else does."""

from __future__ import annotations

import errno
import functools
import logging
import os
import shutil
import stat
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from pathlib import Path
from typing import TypeVar

import anyio
import pytest

from interlock.config import Config, InboxConfig
from interlock.daemon import Daemon
from interlock.domain import JobFilter, JobSpec, JobState, Trigger
from interlock.maintenance.inbox_watch import Verdict, verdict, watch_inbox
from tests.harness import settle, until, wait_for_state

pytestmark = pytest.mark.anyio

TASK = b'+++\nkind = "noop"\n+++\nDo it.\n'
OnFiles = TypeVar("OnFiles", bound=Callable[[], Awaitable[None]])
DEADLINE = 5.0
# How long "nothing happened" is watched for. A negative cannot be waited for by an
# event; with a debounce of 0 the watcher reacts in well under a millisecond.
QUIET = 0.3


class Calls:
    """An on_files that counts its calls and lets a test wait for the next one."""

    def __init__(self, fail: bool = False) -> None:
        self.count = 0
        self.fail = fail
        self._changed = anyio.Event()

    async def __call__(self) -> None:
        self.count += 1
        self._changed.set()
        self._changed = anyio.Event()
        if self.fail:
            raise RuntimeError("the hub said no")

    async def reach(self, count: int, within: float = DEADLINE) -> None:
        with anyio.fail_after(within):
            while self.count < count:
                await self._changed.wait()

    async def stay(self, count: int) -> None:
        with anyio.move_on_after(QUIET):
            await self.reach(count + 1)
        assert self.count == count


@asynccontextmanager
async def watching(folder: Path, calls: OnFiles, debounce_ms: int = 0) -> AsyncIterator[OnFiles]:
    async with anyio.create_task_group() as tasks:
        await tasks.start(functools.partial(watch_inbox, debounce_ms=debounce_ms), folder, calls)
        yield calls
        tasks.cancel_scope.cancel()


def drop(folder: Path, name: str, content: bytes = TASK) -> Path:
    """As a careful writer does: a temporary name, then a rename into place."""
    partial = folder / f".{name}.part"
    partial.write_bytes(content)
    return partial.rename(folder / name)


async def made_again(folder: Path) -> None:
    """Return once the watcher has made the folder again (a deadline poll: no event says so)."""
    with anyio.fail_after(DEADLINE):
        while not await anyio.Path(folder).is_dir():  # noqa: ASYNC110 - no event says so
            await anyio.sleep(0.01)


@pytest.fixture
def inbox(tmp_path: Path) -> Path:
    folder = tmp_path / "inbox"
    folder.mkdir()
    return folder


# -- what calls on_files ---------------------------------------------------------------------


async def test_a_file_renamed_into_the_folder_calls_on_files(inbox: Path) -> None:
    async with watching(inbox, Calls()) as calls:
        drop(inbox, "docs.md")
        await calls.reach(1)


async def test_a_file_written_in_place_calls_on_files_once_it_is_closed(inbox: Path) -> None:
    async with watching(inbox, Calls()) as calls:
        with (inbox / "docs.md").open("wb") as file:
            file.write(TASK[:5])
            file.flush()
            await calls.stay(0)  # created and half written: a scan now would reject it
            file.write(TASK[5:])
        await calls.reach(1)


async def test_a_link_or_a_hard_link_made_in_the_folder_calls_on_files(
    inbox: Path, tmp_path: Path
) -> None:
    elsewhere = tmp_path / "elsewhere.md"
    elsewhere.write_bytes(TASK)
    async with watching(inbox, Calls()) as calls:
        (inbox / "link.md").symlink_to(elsewhere)  # to be rejected by the scan, but seen
        await calls.reach(1)
        os.link(elsewhere, inbox / "hard.md")
        await calls.reach(2)


async def test_files_already_waiting_call_on_files_at_the_start(inbox: Path) -> None:
    drop(inbox, "docs.md")
    async with watching(inbox, Calls()) as calls:
        await calls.reach(1)


async def test_a_burst_of_files_is_one_call(inbox: Path) -> None:
    async with watching(inbox, Calls(), debounce_ms=500) as calls:
        for n in range(5):
            drop(inbox, f"f{n}.md")
        await calls.reach(1)
        await calls.stay(1)


# -- what does not ---------------------------------------------------------------------------


async def test_done_rejected_ignored_names_folders_and_fifos_do_not_call_on_files(
    inbox: Path,
) -> None:
    (inbox / "done").mkdir()
    (inbox / "rejected").mkdir()
    async with watching(inbox, Calls()) as calls:
        drop(inbox / "done", "taken.md")
        (inbox / "done" / "written.md").write_bytes(TASK)
        (inbox / "rejected" / "bad.md.error").write_bytes(b"why")
        (inbox / ".hidden.md").write_bytes(TASK)
        (inbox / "half.md.part").write_bytes(TASK)
        (inbox / "sub.md").mkdir()
        os.mkfifo(inbox / "pipe.md")
        (inbox / "gone.md").symlink_to("x")
        (inbox / "gone.md").unlink()  # appeared and went: nothing to take by the time we look
        await calls.stay(0)
        drop(inbox, "docs.md")  # and the watcher was listening all along
        await calls.reach(1)


# -- the folder itself -----------------------------------------------------------------------


async def test_a_missing_folder_is_made_private_and_watched(tmp_path: Path) -> None:
    folder = tmp_path / "state" / "inbox"
    async with watching(folder, Calls()) as calls:
        assert stat.S_IMODE(folder.stat().st_mode) == 0o700
        drop(folder, "docs.md")
        await calls.reach(1)


async def test_a_deleted_folder_is_made_again_and_watched(inbox: Path) -> None:
    async with watching(inbox, Calls()) as calls:
        shutil.rmtree(inbox)
        os.makedirs(inbox, exist_ok=True)  # a person re-creating it; the watcher may be first
        drop(inbox, "docs.md")
        await calls.reach(1)


async def test_a_folder_moved_away_is_no_longer_watched_and_a_new_one_is(inbox: Path) -> None:
    async with watching(inbox, Calls()) as calls:
        moved = inbox.with_name("old-inbox")
        os.rename(inbox, moved)
        await made_again(inbox)
        drop(moved, "elsewhere.md")
        await calls.stay(0)
        drop(inbox, "docs.md")
        await calls.reach(1)


async def test_when_the_folder_cannot_be_made_the_watcher_waits_quietly(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    (tmp_path / "state").write_bytes(b"a file, where the inbox's parent should be")
    with caplog.at_level(logging.WARNING):
        async with watching(tmp_path / "state" / "inbox", Calls()) as calls:
            await calls.stay(0)
    assert any("cannot watch" in record.getMessage() for record in caplog.records)


async def test_without_inotify_the_watcher_does_nothing_and_says_why(
    inbox: Path, caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    import asyncinotify

    def no_instance_left() -> None:
        raise OSError(errno.EMFILE, "Too many open files")  # fs.inotify.max_user_instances

    monkeypatch.setattr(asyncinotify, "Inotify", no_instance_left)
    with caplog.at_level(logging.WARNING):
        async with watching(inbox, Calls()) as calls:
            drop(inbox, "docs.md")
            await calls.stay(0)  # the timer's scan takes it
    assert any("cannot watch" in record.getMessage() for record in caplog.records)


async def test_an_on_files_that_fails_is_logged_and_watching_goes_on(
    inbox: Path, caplog: pytest.LogCaptureFixture
) -> None:
    async with watching(inbox, Calls(fail=True)) as calls:
        drop(inbox, "a.md")
        await calls.reach(1)
        drop(inbox, "b.md")
        await calls.reach(2)
    assert any(record.exc_info for record in caplog.records)


# -- wired to a daemon, as daemon.py is to do ------------------------------------------------


class ScanNow:
    """What the daemon's on_files is to do: submit an inbox.scan that collapses only into a
    scan still queued or running (a key window of 0), so a running scan takes the new files."""

    def __init__(self, daemon: Daemon) -> None:
        self.daemon = daemon
        self.scans: list[int] = []
        self.submitted = anyio.Event()

    async def __call__(self) -> None:
        spec = JobSpec(
            kind="inbox.scan",
            key="inbox:watch",
            trigger=Trigger.INBOX,
            reason="files arrived in the inbox",
            source="inbox watch",
        )
        submitted = await self.daemon.hub.submit(spec, key_window_seconds=0)
        self.scans.append(submitted.job.id)
        self.submitted.set()


WATCHING = Config(inbox=InboxConfig(watch=True, watch_debounce_ms=20))


@pytest.mark.daemon(config=WATCHING)
async def test_a_dropped_file_becomes_a_job_with_no_timer_running(daemon: Daemon) -> None:
    drop(daemon.paths.inbox_dir, "docs.md")

    async def made() -> bool:
        return bool(await daemon.hub.list_jobs(JobFilter(kind="noop")))

    await until(daemon, made, within=DEADLINE)
    (job,) = await daemon.hub.list_jobs(JobFilter(kind="noop"))
    assert job.trigger == Trigger.INBOX and job.reason == "inbox file docs.md"
    await wait_for_state(daemon, job.id, JobState.DONE)
    (scan,) = await daemon.hub.list_jobs(JobFilter(kind="inbox.scan"))
    assert (scan.trigger, scan.key) == (Trigger.INBOX, "inbox:watch")
    assert os.listdir(daemon.paths.inbox_dir / "done") == ["docs.md"]


async def test_a_file_that_arrives_as_a_scan_ends_is_scanned_again(daemon: Daemon) -> None:
    # No watcher here: the daemon's wake-up is called by hand, as the watcher would.
    await daemon.hub.set_paused("maintenance", True)  # the first scan waits, live
    first = await daemon.hub.submit(
        JobSpec(kind="inbox.scan", key="inbox:watch", trigger=Trigger.INBOX),
        key_window_seconds=0,
    )
    async with anyio.create_task_group() as tasks:
        tasks.start_soon(daemon.scan_inbox_now)  # collapses into the live scan, and waits
        await settle(daemon)
        await daemon.hub.cancel(first.job.id)  # it ends having seen nothing...
        daemon.paths.inbox_dir.mkdir()
        drop(daemon.paths.inbox_dir, "late.md")  # ...and a file is there now
        await daemon.hub.set_paused("maintenance", False)
    first_scan, second_scan = sorted(
        job.id for job in await daemon.hub.list_jobs(JobFilter(kind="inbox.scan"))
    )
    assert first_scan == first.job.id
    await wait_for_state(daemon, second_scan, JobState.DONE)
    (job,) = await daemon.hub.list_jobs(JobFilter(kind="noop"))
    assert job.reason == "inbox file late.md"


# -- the verdict on one event: pure ----------------------------------------------------------

IN_CLOSE_WRITE, IN_MOVED_TO, IN_CREATE, IN_DELETE_SELF = 0x8, 0x80, 0x100, 0x400
IN_MOVE_SELF, IN_Q_OVERFLOW, IN_IGNORED, IN_ISDIR = 0x800, 0x4000, 0x8000, 0x4000_0000


@pytest.mark.parametrize(
    ("mask", "name", "expected"),
    [
        (IN_MOVED_TO, "docs.md", Verdict.ARRIVED),
        (IN_CLOSE_WRITE, "docs.md", Verdict.ARRIVED),
        (IN_CREATE, "docs.md", Verdict.CREATED),
        (IN_MOVED_TO, ".docs.md", Verdict.NOTHING),
        (IN_CLOSE_WRITE, "docs.md.part", Verdict.NOTHING),
        (IN_CREATE | IN_ISDIR, "done", Verdict.NOTHING),
        (IN_MOVED_TO | IN_ISDIR, "sub.md", Verdict.NOTHING),
        (IN_MOVED_TO, "done", Verdict.NOTHING),
        (IN_DELETE_SELF, None, Verdict.GONE),
        (IN_MOVE_SELF, None, Verdict.GONE),
        (IN_IGNORED, None, Verdict.GONE),
        (IN_Q_OVERFLOW, None, Verdict.OVERFLOW),
    ],
)
def test_the_verdict_on_one_event(mask: int, name: str | None, expected: Verdict) -> None:
    assert verdict(mask, name) is expected
