"""The inbox's file-system side: which entries wait, reading one safely, moving it on.

Plain, synchronous functions of paths and settings: the scan runs them in
worker threads, the watcher calls `has_waiting`; nothing here knows about
jobs, the hub or a handler's context.

Each entry is dealt with on its own, so that one bad entry cannot hold up
the rest of the folder:

- a regular file, or a symbolic link, is a candidate (a link only ever to be
  rejected: links are never followed, so a link to a secret cannot carry the
  secret into a job's payload);
- FIFOs, sockets, devices, folders, dot-files and names still being written
  are left where they are, untouched, and never opened (a FIFO would block);
- an entry that cannot be read becomes `Rejected`, with the reason;
- names are shortened where the name in done/ or rejected/ (with `.error`
  after it) would pass NAME_MAX, and undecodable bytes in a name are written
  out as `\\xNN`, so the file can always be moved and its reason always
  written.

Everything written here is private to the daemon's user whatever the umask:
files 0600, folders 0700. A moved file keeps the mode it had.

Two scans may run at once (a timer's and a watcher's): a move chooses its
name and renames under one lock, so no file replaces another, and moves
only the file that was read, not a newer one renamed over its name.
"""

from __future__ import annotations

import errno
import hashlib
import itertools
import os
import stat
import threading
from dataclasses import dataclass
from pathlib import Path

DONE = "done"
REJECTED = "rejected"
ERROR_SUFFIX = ".error"
# The inbox's own folders: never candidates, whatever is under those names.
RESERVED_NAMES = (DONE, REJECTED)
# A file still being written is best written under one of these names, then renamed.
IGNORED_SUFFIXES = ("~", ".tmp", ".part", ".swp")
NAME_MAX = 255  # bytes in one path component (Linux, macOS, the BSDs)
FILE_MODE = 0o600
FOLDER_MODE = 0o700
# A shortened name keeps this much of the hash of the name it stands for.
NAME_HASH_CHARS = 12
# A longer "suffix" (after the last dot) is part of the name, not a file type to keep.
SUFFIX_MAX_BYTES = 16
# O_NOFOLLOW: a link is refused by the open itself, not by a check that can race.
# O_NONBLOCK: an entry swapped for a FIFO after the listing cannot hang the read.
_READ_FLAGS = os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC | os.O_NOCTTY
_WRITE_FLAGS = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC
_READ_CHUNK = 1 << 16
# Choosing a free name and renaming onto it are one step for the scans of this process
# (a timer's and a watcher's may run at once): otherwise both could pick the same name
# and the second rename replace the first file. The daemon is the only writer there.
_placing = threading.Lock()


class Rejected(ValueError):
    """An inbox file that cannot become a job; the message says why, for the .error file."""

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message

    def __str__(self) -> str:
        return self.message


@dataclass(frozen=True)
class Read:
    """A regular file's content, and which file it was (so that the one moved is that one)."""

    content: bytes
    file_id: tuple[int, int]  # device, inode


@dataclass(frozen=True)
class Waiting:
    """A candidate entry as one listing saw it.

    `version` tells this file apart from another dropped later under the same
    name, so that a scan that lists the folder again takes the newcomer and
    not, a second time, a file it already left where it was (a full lane).
    """

    name: str
    version: tuple[int, int, int, int]  # device, inode, size, mtime in ns


# -- names: pure -----------------------------------------------------------------------------


def is_candidate(name: str) -> bool:
    """Whether an entry's name is one to take (not hidden, not being written, not ours)."""
    return (
        not name.startswith(".")
        and not name.endswith(IGNORED_SUFFIXES)
        and name not in RESERVED_NAMES
    )


def readable_name(name: str) -> str:
    """The name as text fit for a log, a job's result, an .error file and a file name.

    A name read from the folder holds any byte that is not UTF-8 as a lone
    surrogate; text with one cannot be stored or written. Such bytes become
    `\\xNN`; a UTF-8 name is returned as it is.
    """
    return os.fsencode(name).decode("utf-8", "backslashreplace")


def fit_name(name: str, room: int = 0) -> str:
    """`name`, or a shortened one that leaves `room` bytes free under NAME_MAX.

    A shortened name keeps the start of the name and its suffix, with a hash
    of the whole name between them: the same name is always shortened the same
    way, and two long names that share a start still differ.
    """
    budget = NAME_MAX - room
    raw = os.fsencode(name)
    if len(raw) <= budget:
        return name
    stem, suffix = _split(name)
    if len(os.fsencode(suffix)) > SUFFIX_MAX_BYTES:
        stem, suffix = name, ""
    tail = f"-{hashlib.sha256(raw).hexdigest()[:NAME_HASH_CHARS]}{suffix}"
    keep = budget - len(tail.encode())
    # Cut on a character boundary: a half character would not be UTF-8.
    start = os.fsencode(stem)[:keep].decode("utf-8", "ignore")
    return start + tail


def _split(name: str) -> tuple[str, str]:
    suffix = Path(name).suffix
    return name[: len(name) - len(suffix)], suffix


# -- listing ---------------------------------------------------------------------------------


def waiting(folder: Path) -> list[Waiting]:
    """The candidate entries of the folder, oldest first; makes the folder if it is missing.

    Nothing is opened or followed: the type comes from lstat, so a FIFO or a
    device is never touched, and a link is listed as the link it is.
    """
    make_private_dir(folder)
    found: list[tuple[int, Waiting]] = []
    with os.scandir(folder) as entries:
        for entry in entries:
            if not is_candidate(entry.name):
                continue
            try:
                info = entry.stat(follow_symlinks=False)
            except OSError:
                continue  # removed while we looked (or unlistable): nothing to take
            if stat.S_ISREG(info.st_mode) or stat.S_ISLNK(info.st_mode):
                version = (info.st_dev, info.st_ino, info.st_size, info.st_mtime_ns)
                found.append((info.st_mtime_ns, Waiting(entry.name, version)))
    found.sort(key=lambda item: (item[0], item[1].name))
    return [entry for _, entry in found]


def has_waiting(folder: Path) -> bool:
    """Whether a scan of the folder would find something to take. Cheap; creates nothing.

    One directory read, no stat on most file systems (the entry type comes
    with the listing). A missing folder has nothing waiting; a folder that
    cannot be read answers True, so that a scan runs and records why.
    """
    try:
        with os.scandir(folder) as entries:
            for entry in entries:
                if not is_candidate(entry.name):
                    continue
                try:
                    if entry.is_symlink() or entry.is_file(follow_symlinks=False):
                        return True
                except OSError:
                    continue  # removed while we looked
    except (FileNotFoundError, NotADirectoryError):
        return False
    except OSError:
        return True
    return False


# -- reading ---------------------------------------------------------------------------------


def read_entry(path: Path, limit: int) -> Read | None:
    """The content of a regular file, at most `limit` bytes; None for any other kind of entry.

    Raises FileNotFoundError if the entry went away, and Rejected if it is a
    link, cannot be read, or is too large. Never follows a link and never
    blocks on a FIFO.
    """
    try:
        fd = os.open(path, _READ_FLAGS)
    except FileNotFoundError:
        raise
    except OSError as exc:
        if exc.errno == errno.ELOOP:  # what O_NOFOLLOW answers for a link
            raise Rejected(_link_reason(path)) from exc
        if exc.errno == errno.ENXIO:
            return None  # a socket (swapped in after the listing): not ours to take
        raise Rejected(f"cannot be read: {exc.strerror}") from exc
    try:
        info = os.fstat(fd)
        if not stat.S_ISREG(info.st_mode):
            return None  # a FIFO, device or folder: left where it is
        if info.st_size > limit:
            raise Rejected(_too_large(limit))
        chunks: list[bytes] = []
        size = 0
        while size <= limit:
            chunk = os.read(fd, min(_READ_CHUNK, limit + 1 - size))
            if not chunk:
                break
            chunks.append(chunk)
            size += len(chunk)
    except OSError as exc:
        raise Rejected(f"cannot be read: {exc.strerror}") from exc
    finally:
        os.close(fd)
    if size > limit:
        raise Rejected(_too_large(limit))  # it grew after the fstat
    return Read(b"".join(chunks), (info.st_dev, info.st_ino))


def _link_reason(path: Path) -> str:
    try:
        target = f" (to {readable_name(os.readlink(path))})"
    except OSError:
        target = ""
    return (
        f"a symbolic link{target}: links are not taken, so that a link cannot carry"
        " a file from elsewhere into a job; put the file itself in the inbox"
    )


def _too_large(limit: int) -> str:
    return f"too large: more than {limit} bytes (inbox.max_file_bytes)"


# -- moving on -------------------------------------------------------------------------------


def make_private_dir(path: Path) -> None:
    """Make the folder, and any missing parent, 0700 whatever the umask; no-op if it exists."""
    if path.is_dir():
        return
    if path.parent != path:
        make_private_dir(path.parent)
    try:
        os.mkdir(path, FOLDER_MODE)
    except FileExistsError:
        if path.is_dir():
            return  # made meanwhile
        raise
    os.chmod(path, FOLDER_MODE)  # mkdir's mode is masked by the umask; this is not


def write_private(path: Path, text: str) -> None:
    """Write a new file, 0600 whatever the umask; never an existing file or a link's target."""
    fd = os.open(path, _WRITE_FLAGS, FILE_MODE)
    try:
        os.fchmod(fd, FILE_MODE)
        data = text.encode("utf-8", "backslashreplace")
        while data:
            data = data[os.write(fd, data) :]
    finally:
        os.close(fd)


def free_name(folder: Path, name: str, companion: str = "") -> Path:
    """`name` in `folder`, or NAME.1.EXT, NAME.2.EXT, ...: never an entry that exists.

    With a `companion`, the name with it appended must be free too and fit
    NAME_MAX. A dangling link counts as existing. The callers hold the
    placing lock from this check to their rename.
    """
    stem, suffix = _split(name)
    for number in itertools.count():
        candidate = fit_name(name if number == 0 else f"{stem}.{number}{suffix}", len(companion))
        path = folder / candidate
        if not os.path.lexists(path) and not (
            companion and os.path.lexists(folder / (candidate + companion))
        ):
            return path
    raise AssertionError("unreachable")  # itertools.count() does not end


def move_to_done(path: Path, file_id: tuple[int, int] | None = None) -> Path:
    """Move a taken file (it became a job) into done/ under a free name; returns where.

    With the `file_id` of the file that was read: FileNotFoundError if the
    entry is no longer that file (a new one was renamed over it; the next
    listing takes the newcomer).
    """
    into = path.parent / DONE
    make_private_dir(into)
    with _placing:
        _check_still(path, file_id)
        target = free_name(into, readable_name(path.name))
        os.rename(path, target)
    return target


def reject(path: Path, message: str, file_id: tuple[int, int] | None = None) -> Path:
    """Move a bad entry (the link itself, for a link) to rejected/, with NAME.error beside it.

    The .error goes first and the move second, so that a rejected file never
    lacks its reason; the .error starts with the entry's original name, which
    the name in rejected/ may have shortened. A crash between the two leaves
    the file in the inbox (and a .error with no file beside it); the next scan
    rejects the file again under a free name. If the move fails, the .error
    is taken back and the error raised. `file_id` as for `move_to_done`.
    """
    into = path.parent / REJECTED
    make_private_dir(into)
    with _placing:
        _check_still(path, file_id)
        target = free_name(into, readable_name(path.name), ERROR_SUFFIX)
        error = target.with_name(target.name + ERROR_SUFFIX)
        write_private(error, f"{readable_name(path.name)}: {message}\n")
        try:
            os.rename(path, target)
        except OSError:
            error.unlink(missing_ok=True)
            raise
    return target


def _check_still(path: Path, file_id: tuple[int, int] | None) -> None:
    if file_id is None:
        return
    info = os.lstat(path)  # FileNotFoundError if it went away
    if (info.st_dev, info.st_ino) != file_id:
        raise FileNotFoundError(errno.ENOENT, "replaced since it was read", str(path))
