"""The inbox's file-system side, on real folders: listing, safe reads, private moves, names."""

from __future__ import annotations

import os
import socket
import stat
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from interlock.maintenance import inbox_files
from interlock.maintenance.inbox_files import (
    NAME_MAX,
    Rejected,
    fit_name,
    free_name,
    has_waiting,
    move_to_done,
    read_entry,
    readable_name,
    reject,
    waiting,
)
from tests.fifo import FifoRelease

TASK = b'+++\nkind = "noop"\n+++\nDo it.\n'
LONG = "x" * 247 + ".md"  # 250 bytes: fine in the inbox, but NAME.error would be 256


@pytest.fixture
def inbox(tmp_path: Path) -> Path:
    folder = tmp_path / "inbox"
    folder.mkdir()
    return folder


@pytest.fixture(params=[0o022, 0o277], ids=["umask-022", "umask-277"])
def umask(request: pytest.FixtureRequest) -> Iterator[None]:
    """A common umask, and one that takes bits from the owner too (the modes must not move)."""
    old = os.umask(request.param)
    try:
        yield
    finally:
        os.umask(old)


def mode(path: Path) -> int:
    return stat.S_IMODE(os.lstat(path).st_mode)


# -- names -----------------------------------------------------------------------------------


def test_a_name_that_fits_is_kept():
    assert fit_name("docs.md") == "docs.md"
    assert fit_name("x" * 255) == "x" * 255
    assert fit_name(LONG, room=0) == LONG


def test_a_long_name_is_shortened_the_same_way_each_time_and_keeps_its_suffix():
    short = fit_name(LONG, room=len(".error"))
    assert len(short.encode()) + len(".error") <= NAME_MAX
    assert short == fit_name(LONG, room=len(".error"))
    assert short.startswith("xxxx") and short.endswith(".md")
    assert fit_name("y" + LONG[1:], room=6) != short  # the hash tells them apart


def test_a_long_multibyte_name_is_cut_on_a_character_boundary():
    name = "é" * 125 + ".json"  # 255 bytes
    short = fit_name(name, room=10)
    assert len(short.encode()) <= NAME_MAX - 10
    short.encode("utf-8")  # whole characters only
    assert short.endswith(".json")


def test_a_long_suffix_is_not_kept_as_a_file_type():
    name = "a." + "b" * 250
    short = fit_name(name, room=6)
    assert len(short.encode()) <= NAME_MAX - 6
    assert short.startswith("a.bbb")


def test_bytes_that_are_not_utf8_are_shown_as_escapes():
    assert readable_name(os.fsdecode(b"\xff.md")) == "\\xff.md"
    assert readable_name("été.md") == "été.md"


def test_a_free_name_never_lands_on_a_dangling_link(inbox: Path):
    (inbox / "a.md").symlink_to("nowhere")
    assert free_name(inbox, "a.md").name == "a.1.md"


# -- listing ---------------------------------------------------------------------------------


def test_the_listing_takes_files_and_links_oldest_first_and_leaves_the_rest(inbox: Path):
    (inbox / "new.md").write_bytes(TASK)
    (inbox / "old.json").write_bytes(b"{}")
    os.utime(inbox / "old.json", (1, 1))
    (inbox / "link.md").symlink_to(inbox / "new.md")
    os.utime(inbox / "link.md", (2, 2), follow_symlinks=False)
    os.mkfifo(inbox / "pipe.md")
    (inbox / "folder.md").mkdir()
    (inbox / "done").mkdir()
    (inbox / "rejected").write_bytes(b"")  # the inbox's own name, whatever it is
    (inbox / ".hidden.md").write_bytes(TASK)
    (inbox / "half.md.part").write_bytes(TASK)
    with socket.socket(socket.AF_UNIX) as sock:
        sock.bind(str(inbox / "sock.md"))
        assert [entry.name for entry in waiting(inbox)] == ["old.json", "link.md", "new.md"]


def test_a_listing_tells_a_file_dropped_again_under_the_same_name_apart(inbox: Path):
    (inbox / "a.md").write_bytes(TASK)
    (first,) = waiting(inbox)
    (inbox / ".a.md.part").write_bytes(TASK + b"again\n")
    (inbox / ".a.md.part").rename(inbox / "a.md")
    (second,) = waiting(inbox)
    assert first.name == second.name and first != second


def test_the_listing_makes_a_missing_folder_private(tmp_path: Path, umask: None):
    folder = tmp_path / "state" / "inbox"
    assert waiting(folder) == []
    assert mode(folder) == mode(folder.parent) == 0o700


def test_has_waiting_sees_a_file_or_a_link(inbox: Path):
    assert has_waiting(inbox) is False
    (inbox / "a.md").symlink_to("/nowhere")
    assert has_waiting(inbox) is True
    (inbox / "a.md").unlink()
    (inbox / "b.json").write_bytes(b"{}")
    assert has_waiting(inbox) is True


def test_has_waiting_ignores_what_a_scan_would_leave(inbox: Path):
    os.mkfifo(inbox / "pipe.md")
    (inbox / "folder.md").mkdir()
    (inbox / ".hidden.md").write_bytes(TASK)
    (inbox / "half.md.tmp").write_bytes(TASK)
    for own in ("done", "rejected"):
        (inbox / own).mkdir()
        (inbox / own / "taken.md").write_bytes(TASK)
    assert has_waiting(inbox) is False


def test_has_waiting_on_a_missing_folder_is_false_and_makes_nothing(tmp_path: Path):
    assert has_waiting(tmp_path / "inbox") is False
    assert not (tmp_path / "inbox").exists()


# -- reading ---------------------------------------------------------------------------------


def test_a_file_is_read(inbox: Path):
    (inbox / "a.md").write_bytes(TASK)
    read = read_entry(inbox / "a.md", 1000)
    assert read is not None and read.content == TASK
    info = os.stat(inbox / "a.md")
    assert read.file_id == (info.st_dev, info.st_ino)


def test_a_link_is_refused_and_its_target_is_not_read(inbox: Path, tmp_path: Path):
    secret = tmp_path / "secret.txt"
    secret.write_text("hunter2")
    (inbox / "a.md").symlink_to(secret)
    with pytest.raises(Rejected) as caught:
        read_entry(inbox / "a.md", 1000)
    assert "links are not taken" in caught.value.message
    assert "hunter2" not in caught.value.message


@pytest.mark.parametrize("target", ["loop.md", "missing.md"])
def test_a_looping_or_dangling_link_is_refused(inbox: Path, target: str):
    (inbox / "loop.md").symlink_to(target)
    with pytest.raises(Rejected, match="a symbolic link"):
        read_entry(inbox / "loop.md", 1000)


def test_a_fifo_is_not_read_and_does_not_block(inbox: Path):
    """What a file swapped for a FIFO after the listing meets: no read, no hang."""
    os.mkfifo(inbox / "pipe.md")
    with FifoRelease(inbox / "pipe.md", within=5) as release:
        assert read_entry(inbox / "pipe.md", 1000) is None
    assert not release.needed.is_set()


def test_a_socket_or_folder_is_not_read(inbox: Path):
    (inbox / "folder.md").mkdir()
    assert read_entry(inbox / "folder.md", 1000) is None
    with socket.socket(socket.AF_UNIX) as sock:
        sock.bind(str(inbox / "sock.md"))
        assert read_entry(inbox / "sock.md", 1000) is None


def test_a_file_larger_than_the_limit_is_refused(inbox: Path):
    (inbox / "big.md").write_bytes(b"x" * 11)
    with pytest.raises(Rejected, match="too large: more than 10 bytes"):
        read_entry(inbox / "big.md", 10)
    read = read_entry(inbox / "big.md", 11)
    assert read is not None and read.content == b"x" * 11


def test_a_vanished_file_says_so(inbox: Path):
    with pytest.raises(FileNotFoundError):
        read_entry(inbox / "gone.md", 10)


UNREADABLE = """
import ctypes, os, sys
from pathlib import Path
from interlock.maintenance.inbox_files import Rejected, read_entry
if os.geteuid() == 0:
    # Root reads a mode-000 file through CAP_DAC_OVERRIDE and CAP_DAC_READ_SEARCH (1, 2):
    # give both up (prctl PR_CAPBSET_DROP = 24 bounds them, capset drops them now).
    libc = ctypes.CDLL(None, use_errno=True)
    header = (ctypes.c_uint32 * 2)(0x20080522, 0)  # _LINUX_CAPABILITY_VERSION_3, this process
    caps = (ctypes.c_uint32 * 6)()
    assert libc.capget(header, caps) == 0, os.strerror(ctypes.get_errno())
    for word in (0, 1, 2):  # effective, permitted, inheritable of the low 32 capabilities
        caps[word] &= ~0b110
    assert libc.capset(header, caps) == 0, os.strerror(ctypes.get_errno())
try:
    read_entry(Path(sys.argv[1]), 1000)
except Rejected as exc:
    print(exc.message)
"""


def test_a_file_that_cannot_be_read_is_refused_with_the_reason(inbox: Path):
    """Mode 000. Root reads it anyway, so the read runs in a subprocess without root's
    two capabilities that bypass file modes."""
    locked = inbox / "locked.md"
    locked.write_bytes(TASK)
    locked.chmod(0)
    done = subprocess.run(
        [sys.executable, "-c", UNREADABLE, str(locked)],
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "cannot be read: Permission denied"


# -- moving on -------------------------------------------------------------------------------


def test_a_rejected_file_and_its_error_are_private_and_the_file_keeps_its_mode(
    inbox: Path, umask: None
):
    (inbox / "bad.md").write_bytes(b"nope")
    (inbox / "bad.md").chmod(0o640)
    moved = reject(inbox / "bad.md", "no front matter")
    assert moved == inbox / "rejected" / "bad.md"
    assert mode(inbox / "rejected") == 0o700
    assert mode(inbox / "rejected" / "bad.md.error") == 0o600
    assert mode(moved) == 0o640
    assert (inbox / "rejected" / "bad.md.error").read_text() == "bad.md: no front matter\n"


def test_a_done_folder_is_private(inbox: Path, umask: None):
    (inbox / "a.md").write_bytes(TASK)
    assert move_to_done(inbox / "a.md") == inbox / "done" / "a.md"
    assert mode(inbox / "done") == 0o700


def test_a_long_bad_name_is_rejected_under_a_name_that_fits_beside_its_error(inbox: Path):
    (inbox / LONG).write_bytes(b"nope")
    moved = reject(inbox / LONG, "no front matter")
    error = moved.with_name(moved.name + ".error")
    assert len(error.name.encode()) <= NAME_MAX
    assert moved.read_bytes() == b"nope"
    assert error.read_text() == f"{LONG}: no front matter\n"  # the original name, in full


def test_a_long_name_that_collides_in_done_still_fits(inbox: Path):
    name = "d" * 252 + ".md"  # 255 bytes: the numbered name would be 257
    for _ in range(2):
        (inbox / name).write_bytes(TASK)
        moved = move_to_done(inbox / name)
    assert len(moved.name.encode()) <= NAME_MAX and moved.name != name
    assert sorted(os.listdir(inbox / "done")) == sorted([name, moved.name])


def test_a_name_that_is_not_utf8_is_rejected_under_a_readable_name(inbox: Path):
    raw = os.fsencode(inbox) + b"/\xff.md"
    with open(raw, "wb") as file:
        file.write(TASK)
    moved = reject(Path(os.fsdecode(raw)), "the file name is not UTF-8 text")
    assert moved.name == "\\xff.md"
    assert (inbox / "rejected" / "\\xff.md.error").read_text().startswith("\\xff.md: ")


def test_a_link_is_rejected_as_the_link_and_its_target_stays(inbox: Path, tmp_path: Path):
    secret = tmp_path / "secret.txt"
    secret.write_text("hunter2")
    (inbox / "a.md").symlink_to(secret)
    moved = reject(inbox / "a.md", "a symbolic link")
    assert moved.is_symlink() and os.readlink(moved) == str(secret)
    assert secret.read_text() == "hunter2"


def test_a_failed_move_takes_its_error_back(inbox: Path):
    (inbox / "rejected").mkdir()
    with pytest.raises(FileNotFoundError):
        reject(inbox / "gone.md", "whatever")
    assert os.listdir(inbox / "rejected") == []


@pytest.mark.parametrize("move", ["done", "rejected"])
def test_a_file_replaced_after_it_was_read_is_not_moved_in_its_place(inbox: Path, move: str):
    """A writer renamed a new version over the name between the read and the move."""
    (inbox / "a.md").write_bytes(b"v1")
    read = read_entry(inbox / "a.md", 1000)
    assert read is not None
    drop_over = inbox / ".a.md.part"
    drop_over.write_bytes(b"v2")
    drop_over.rename(inbox / "a.md")
    with pytest.raises(FileNotFoundError):
        if move == "done":
            move_to_done(inbox / "a.md", read.file_id)
        else:
            reject(inbox / "a.md", "bad", read.file_id)
    assert (inbox / "a.md").read_bytes() == b"v2"  # for the next listing
    assert os.listdir(inbox / move) == []


def test_two_moves_at_once_never_choose_the_same_name(inbox: Path, monkeypatch: pytest.MonkeyPatch):
    """inbox/a.md goes to done/a.1.md (done/a.md exists), and inbox/a.1.md wants that name too.

    A second scan's move runs while the first is between choosing its name and renaming;
    it may not choose the same name, or one rename would replace the other file.
    """
    done = inbox / "done"
    done.mkdir()
    (done / "a.md").write_bytes(b"old a.md")
    (inbox / "a.md").write_bytes(b"new a.md")
    (inbox / "a.1.md").write_bytes(b"a.1.md")
    real_free_name = inbox_files.free_name
    other: list[threading.Thread] = []

    def another_move_meanwhile(folder: Path, name: str, companion: str = "") -> Path:
        target = real_free_name(folder, name, companion)
        if not other:
            other.append(threading.Thread(target=move_to_done, args=(inbox / "a.1.md",)))
            other[0].start()
            other[0].join(timeout=0.2)  # it waits for this move to end, or else lands first
        return target

    monkeypatch.setattr(inbox_files, "free_name", another_move_meanwhile)
    move_to_done(inbox / "a.md")
    other[0].join()
    assert sorted(path.read_bytes() for path in done.iterdir()) == [
        b"a.1.md",
        b"new a.md",
        b"old a.md",
    ]
