"""Watching the inbox folder, so that a dropped file is scanned at once, not at the next tick.

`watch_inbox` follows the folder with inotify and calls `on_files()` (the
daemon's "submit an inbox.scan") when a file to take may have arrived:
moved in, or written and closed, or a link or hard link made. A burst of
arrivals is one call, `debounce_ms` after the first. Nothing inside done/
or rejected/ is watched (the watch is on the folder alone), and dot-files,
names still being written, folders and FIFOs are not arrivals. A file that
is created and then written in place wakes the watcher when it is closed,
not when it appears empty.

Watching is a speed-up, never the only way in: the inbox timer's scan is
the safety net. So when watching is impossible (no inotify on this system,
the watch limit reached) the watcher logs why and does nothing, or tries
again later; a folder that goes away is made again and watched anew.

inotify comes through asyncinotify rather than watchfiles: asyncinotify
reads the inotify descriptor on the event loop itself, so no thread is held
for the daemon's lifetime and cancellation is immediate (watchfiles parks a
worker thread in its Rust watcher and a cancel waits for that thread's
timeout), and it gives the kernel's own events, so "closed after writing"
and "the folder itself was deleted" are said, not guessed from
added/modified/deleted. It is pure Python and Linux-only; interlock's
daemon runs on Linux (systemd) and on asyncio.
"""

from __future__ import annotations

import enum
import logging
import os
import stat
from collections.abc import Awaitable, Callable
from contextlib import suppress
from pathlib import Path
from typing import TYPE_CHECKING

import anyio
from anyio.abc import TaskStatus
from anyio.streams.memory import MemoryObjectReceiveStream

from interlock.config import InboxConfig
from interlock.maintenance.inbox_files import has_waiting, is_candidate, make_private_dir

if TYPE_CHECKING:
    from asyncinotify import Inotify, Watch

log = logging.getLogger(__name__)

DEBOUNCE_MS: int = InboxConfig.model_fields["watch_debounce_ms"].default
# The folder could not be made or watched (a permission, the watch limit): try again
# after this long, doubling up to the cap. The timer's scan takes files meanwhile.
RETRY_FIRST_SECONDS = 1.0
RETRY_MAX_SECONDS = 60.0

# inotify's event bits, from <sys/inotify.h>: the kernel's ABI, fixed since 2.6.13.
IN_CLOSE_WRITE = 0x0000_0008
IN_MOVED_TO = 0x0000_0080
IN_CREATE = 0x0000_0100
IN_DELETE_SELF = 0x0000_0400
IN_MOVE_SELF = 0x0000_0800
IN_UNMOUNT = 0x0000_2000
IN_Q_OVERFLOW = 0x0000_4000
IN_IGNORED = 0x0000_8000
IN_ONLYDIR = 0x0100_0000
IN_ISDIR = 0x4000_0000
WATCHED = IN_CLOSE_WRITE | IN_MOVED_TO | IN_CREATE | IN_DELETE_SELF | IN_MOVE_SELF | IN_ONLYDIR
_GONE = IN_DELETE_SELF | IN_MOVE_SELF | IN_UNMOUNT | IN_IGNORED


class Verdict(enum.Enum):
    """What one inotify event on the inbox folder means for the watcher."""

    NOTHING = "nothing"  # not about a file to take
    ARRIVED = "arrived"  # moved in, or closed after writing: a file, if lstat agrees
    CREATED = "created"  # a new name: a link is complete now, a file only once closed
    OVERFLOW = "overflow"  # the kernel dropped events: something may have arrived
    GONE = "gone"  # the folder itself was deleted, moved or unmounted


def verdict(mask: int, name: str | None) -> Verdict:
    """Classify one event by its bits and the name it is about. Pure."""
    if mask & IN_Q_OVERFLOW:
        return Verdict.OVERFLOW
    if mask & _GONE:
        return Verdict.GONE
    if name is None or mask & IN_ISDIR or not is_candidate(name):
        return Verdict.NOTHING
    if mask & (IN_MOVED_TO | IN_CLOSE_WRITE):
        return Verdict.ARRIVED
    if mask & IN_CREATE:
        return Verdict.CREATED
    return Verdict.NOTHING


def is_arrival(path: Path, created: bool) -> bool:
    """Whether the entry is one a scan would take, complete: a link, or a written file.

    A regular file that was only just created, with one link, is still being
    written; its IN_CLOSE_WRITE follows. One with more links is a hard link
    to a file that was already complete.
    """
    try:
        info = os.lstat(path)
    except OSError:
        return False  # gone again
    if stat.S_ISLNK(info.st_mode):
        return True
    return stat.S_ISREG(info.st_mode) and not (created and info.st_nlink == 1)


async def watch_inbox(
    folder: Path,
    on_files: Callable[[], Awaitable[None]],
    *,
    debounce_ms: int = DEBOUNCE_MS,
    task_status: TaskStatus[None] = anyio.TASK_STATUS_IGNORED,
) -> None:
    """Call `on_files()` when files to take arrive in `folder`; return only when cancelled.

    Makes the folder (0700) if it is missing, again if it is deleted; calls
    `on_files()` once at the start if files are already waiting. Calls never
    overlap, and one that raises is logged: watching goes on. With
    `tasks.start(...)`, returns to the starter once the folder is watched (or
    watching was found impossible). Runs on anyio's asyncio backend (the
    inotify descriptor is read through the asyncio loop), as the daemon does.
    """
    inotify = _open_inotify(folder)
    if inotify is None:
        task_status.started()
        await anyio.sleep_forever()
        return
    # One pending wake-up at most: many arrivals before the call are one call.
    send, receive = anyio.create_memory_object_stream[None](1)

    def wake() -> None:
        with suppress(anyio.WouldBlock):
            send.send_nowait(None)

    with inotify, send, receive:
        async with anyio.create_task_group() as tasks:
            tasks.start_soon(_deliver, receive, on_files, debounce_ms / 1000)
            await _watch(inotify, folder, wake, task_status)


def _open_inotify(folder: Path) -> Inotify | None:
    """An inotify instance, or None (logged) where there is none to be had."""
    try:
        from asyncinotify import Inotify

        return Inotify()
    except (ImportError, RuntimeError, AttributeError, OSError) as exc:
        # Another system (no inotify), or no instance left (fs.inotify.max_user_instances).
        log.warning(
            "inbox: cannot watch %s (%s); files wait for the inbox timer's scan", folder, exc
        )
        return None


async def _deliver(
    wakes: MemoryObjectReceiveStream[None],
    on_files: Callable[[], Awaitable[None]],
    debounce: float,
) -> None:
    async for _ in wakes:
        await anyio.sleep(debounce)  # real time: it is the writer's burst we wait out
        with suppress(anyio.WouldBlock):
            wakes.receive_nowait()  # arrivals during the wait: this call covers them
        try:
            await on_files()
        except Exception:
            log.exception("inbox: reacting to new files failed; the inbox timer's scan will")


async def _watch(
    inotify: Inotify, folder: Path, wake: Callable[[], None], task_status: TaskStatus[None]
) -> None:
    """Watch the folder, and again each time it goes away; never returns."""
    retry = RETRY_FIRST_SECONDS
    ready = False
    while True:
        try:
            watch = await anyio.to_thread.run_sync(_start, inotify, folder)
        except OSError as exc:
            log.warning(
                "inbox: cannot watch %s: %s; trying again in %.0f s, and the inbox timer's"
                " scan takes files meanwhile",
                folder,
                exc,
                retry,
            )
            if not ready:
                task_status.started()
                ready = True
            await anyio.sleep(retry)
            retry = min(retry * 2, RETRY_MAX_SECONDS)
            continue
        retry = RETRY_FIRST_SECONDS
        # Files that came before the watch, or with a folder moved into place.
        if await anyio.to_thread.run_sync(has_waiting, folder):
            wake()
        if not ready:
            task_status.started()  # from here on, every arrival is an event
            ready = True
        await _follow(inotify, watch, folder, wake)
        log.info("inbox: %s went away; making it again", folder)


def _start(inotify: Inotify, folder: Path) -> Watch:
    from asyncinotify import Mask

    make_private_dir(folder)
    return inotify.add_watch(folder, Mask(WATCHED))


async def _follow(inotify: Inotify, watch: Watch, folder: Path, wake: Callable[[], None]) -> None:
    """Turn the watch's events into wake-ups; return when the folder goes away."""
    async for event in inotify:
        mask = int(event.mask)
        if event.watch is not watch and not mask & IN_Q_OVERFLOW:
            continue  # the last events of a watch on a folder that went away
        name = None if event.name is None else str(event.name)
        seen = verdict(mask, name)
        if seen is Verdict.GONE:
            with suppress(OSError):  # a moved folder is still watched; a deleted one is not
                inotify.rm_watch(watch)
            return
        if seen is Verdict.OVERFLOW:
            wake()
        elif seen in (Verdict.ARRIVED, Verdict.CREATED) and name is not None:
            created = seen is Verdict.CREATED
            if await anyio.to_thread.run_sync(is_arrival, folder / name, created):
                wake()
