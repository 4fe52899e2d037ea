"""inbox.scan: files dropped in the inbox become jobs, exactly once, in a real daemon."""

from __future__ import annotations

import json
import os
import socket
import stat
from collections.abc import Callable
from pathlib import Path
from typing import Any

import anyio
import pytest

from interlock.clock import FakeClock
from interlock.config import Config, InboxConfig, LaneConfig, MaintenanceConfig, TimerConfig
from interlock.daemon import Daemon
from interlock.domain import Event, EventType, JobFilter, JobSpec, JobState, Trigger
from interlock.maintenance.inbox import content_key, parse, take
from tests.fifo import FifoRelease
from tests.harness import running_daemon, settle, wait_for_events, wait_for_state

pytestmark = pytest.mark.anyio

DAY = 86_400.0

TASK = b"""+++
kind = "noop"
lane = "urgent"
priority = 3
project = "site"
reason = "the docs are stale"

[payload]
page = "install"
+++

Rewrite the install section.
"""

SPEC = {"kind": "sleep", "payload": {"seconds": 5}, "priority": -1, "project": "bench"}


async def scan(daemon: Daemon) -> dict[str, Any]:
    """Run one inbox.scan job, as the timer would, and return its result."""
    job = (await daemon.hub.submit(JobSpec(kind="inbox.scan"))).job
    await wait_for_state(daemon, job.id, JobState.DONE, JobState.FAILED, JobState.DEAD)
    done = await daemon.hub.get(job.id)
    assert done.state == JobState.DONE, done.error
    result: dict[str, Any] = done.result
    return result


async def inbox_jobs(daemon: Daemon) -> list[Any]:
    """The jobs made from inbox files (not the scans, whatever triggered them)."""
    jobs = await daemon.hub.list_jobs(JobFilter(limit=1000, with_payload=True))
    return [job for job in jobs if job.trigger == Trigger.INBOX and job.kind != "inbox.scan"]


def drop(daemon: Daemon, name: str, content: bytes) -> Path:
    """Put a file in the inbox (with the rename that a careful writer does)."""
    folder = daemon.paths.inbox_dir
    folder.mkdir(parents=True, exist_ok=True)
    partial = folder / f".{name}.part"
    partial.write_bytes(content)
    return partial.rename(folder / name)


def files(folder: Path) -> list[str]:
    return sorted(path.name for path in folder.iterdir() if path.is_file())


async def test_a_markdown_file_becomes_a_job_with_its_fields_and_moves_to_done(
    daemon: Daemon,
) -> None:
    drop(daemon, "docs.md", TASK)
    result = await scan(daemon)
    ((job,),) = [await inbox_jobs(daemon)]
    assert result["submitted"] == [{"file": "docs.md", "job_id": job.id, "moved_to": "docs.md"}]
    assert (job.kind, job.lane, job.priority, job.project) == ("noop", "urgent", 3, "site")
    assert job.payload == {"text": "Rewrite the install section.", "page": "install"}
    assert job.reason == "inbox file docs.md: the docs are stale"
    assert job.key == content_key(TASK)
    inbox = daemon.paths.inbox_dir
    assert files(inbox) == []
    assert (inbox / "done" / "docs.md").read_bytes() == TASK
    await wait_for_state(daemon, job.id, JobState.DONE)


async def test_a_json_spec_becomes_a_job_with_its_fields(home: Path) -> None:
    content = json.dumps(SPEC).encode()
    async with running_daemon(home, clock=FakeClock()) as daemon:
        drop(daemon, "bench.json", content)
        result = await scan(daemon)
        (job,) = await inbox_jobs(daemon)
        assert [entry["job_id"] for entry in result["submitted"]] == [job.id]
        assert (job.kind, job.payload, job.priority, job.project) == (
            "sleep",
            {"seconds": 5},
            -1,
            "bench",
        )
        assert job.lane == "background"  # the kind's lane, as for any submit that names none
        assert job.reason == "inbox file bench.json"
        assert job.key == content_key(content)
        (submitted,) = [e for e in await daemon.hub.events(job.id) if e.type == "submitted"]
        assert submitted.trigger == Trigger.INBOX
        assert files(daemon.paths.inbox_dir / "done") == ["bench.json"]


async def test_the_same_file_dropped_twice_is_one_job_even_after_it_ended(home: Path) -> None:
    clock = FakeClock()
    async with running_daemon(home, clock=clock) as daemon:
        drop(daemon, "docs.md", TASK)
        drop(daemon, "docs-copy.md", TASK)  # the same content under another name, same scan
        first = await scan(daemon)
        (job,) = await inbox_jobs(daemon)
        assert [entry["job_id"] for entry in first["submitted"] + first["duplicate"]] == [
            job.id,
            job.id,
        ]
        await wait_for_state(daemon, job.id, JobState.DONE)

        clock.advance(7 * DAY)  # next week, long after the job ended
        drop(daemon, "docs.md", TASK)
        second = await scan(daemon)
        assert second["submitted"] == []
        assert second["duplicate"] == [
            {"file": "docs.md", "job_id": job.id, "moved_to": "docs.1.md"}  # never overwritten
        ]
        assert [j.id for j in await inbox_jobs(daemon)] == [job.id]
        await wait_for_events(daemon, job.id, EventType.DUPLICATE, count=2)
        duplicates = [e for e in await daemon.hub.events(job.id) if e.type == "duplicate"]
        assert all("inbox file docs" in event.note for event in duplicates)
        assert files(daemon.paths.inbox_dir / "done") == ["docs-copy.md", "docs.1.md", "docs.md"]
        assert (await daemon.hub.get(job.id)).state == JobState.DONE  # not run again


async def test_past_the_inbox_key_window_the_same_file_is_a_new_job(home: Path) -> None:
    clock = FakeClock()
    config = Config(inbox=InboxConfig(key_window_seconds=DAY))
    async with running_daemon(home, config, clock=clock) as daemon:
        drop(daemon, "docs.md", TASK)
        (first,) = (await scan(daemon))["submitted"]
        await wait_for_state(daemon, first["job_id"], JobState.DONE)
        clock.advance(DAY / 2)
        drop(daemon, "docs.md", TASK)
        assert [e["job_id"] for e in (await scan(daemon))["duplicate"]] == [first["job_id"]]
        clock.advance(DAY)
        drop(daemon, "docs.md", TASK)
        (later,) = (await scan(daemon))["submitted"]
        assert later["job_id"] != first["job_id"]


async def test_a_bad_file_is_rejected_with_a_readable_error_beside_it(daemon: Daemon) -> None:
    drop(daemon, "typo.md", b'+++\nkind = "noop"\nprio = 1\n+++\nDo it.\n')
    drop(daemon, "nokind.json", b'{"kind": "paint"}')
    drop(daemon, "good.json", b'{"kind": "noop"}')
    result = await scan(daemon)
    rejected = {entry["file"]: entry for entry in result["rejected"]}
    assert sorted(rejected) == ["nokind.json", "typo.md"]
    assert [entry["file"] for entry in result["submitted"]] == ["good.json"]
    assert [job.payload for job in await inbox_jobs(daemon)] == [{}]

    folder = daemon.paths.inbox_dir / "rejected"
    assert files(folder) == ["nokind.json", "nokind.json.error", "typo.md", "typo.md.error"]
    typo = (folder / "typo.md.error").read_text()
    assert typo.startswith("typo.md: prio: unknown front matter key; did you mean 'priority'?")
    assert rejected["typo.md"]["error"] in typo
    assert "no handler for job kind 'paint'" in (folder / "nokind.json.error").read_text()
    assert (folder / "typo.md").read_bytes().endswith(b"Do it.\n")  # kept as it was
    assert files(daemon.paths.inbox_dir) == []


async def test_a_second_bad_file_of_the_same_name_does_not_overwrite_the_first(
    daemon: Daemon,
) -> None:
    drop(daemon, "bad.json", b"{")
    await scan(daemon)
    drop(daemon, "bad.json", b"[]")
    (entry,) = (await scan(daemon))["rejected"]
    assert entry["moved_to"] == "bad.1.json"
    folder = daemon.paths.inbox_dir / "rejected"
    assert files(folder) == ["bad.1.json", "bad.1.json.error", "bad.json", "bad.json.error"]
    assert "not valid JSON" in (folder / "bad.json.error").read_text()
    assert "is an object" in (folder / "bad.1.json.error").read_text()


async def test_a_crash_between_submit_and_move_neither_loses_nor_doubles_the_file(
    home: Path,
) -> None:
    clock = FakeClock()
    async with running_daemon(home, clock=clock) as daemon:
        path = drop(daemon, "docs.md", TASK)
        # What a scan that died after its submit left behind: the job, and the file in place.
        spec = parse(path.name, path.read_bytes())
        window = daemon.config.inbox.key_window_seconds
        job = (await daemon.hub.submit(spec, key_window_seconds=window)).job
        await wait_for_state(daemon, job.id, JobState.DONE)
        clock.advance(DAY)  # the daemon came back a day later

        result = await scan(daemon)
        assert result["submitted"] == []
        assert result["duplicate"] == [{"file": "docs.md", "job_id": job.id, "moved_to": "docs.md"}]
        assert [j.id for j in await inbox_jobs(daemon)] == [job.id]
        await wait_for_events(daemon, job.id, EventType.DUPLICATE)
        assert files(daemon.paths.inbox_dir) == []
        assert files(daemon.paths.inbox_dir / "done") == ["docs.md"]
        finished = [e for e in await daemon.hub.events(job.id) if e.type == "finished"]
        assert len(finished) == 1


async def test_a_full_lane_leaves_the_file_for_a_later_scan(home: Path) -> None:
    lanes = Config().lanes | {"urgent": LaneConfig(rank=0, concurrency=1, max_depth=1)}
    async with running_daemon(home, Config(lanes=lanes), clock=FakeClock()) as daemon:
        await daemon.hub.set_paused("urgent", True)
        await daemon.hub.submit(JobSpec(kind="noop", lane="urgent"))  # fills the lane
        drop(daemon, "docs.md", TASK)
        (deferred,) = (await scan(daemon))["deferred"]
        assert deferred["file"] == "docs.md" and "is full" in deferred["error"]
        assert files(daemon.paths.inbox_dir) == ["docs.md"]
        await daemon.hub.set_paused("urgent", False)
        await settle(daemon)
        (entry,) = (await scan(daemon))["submitted"]
        assert entry["file"] == "docs.md"


async def test_hidden_and_half_written_files_wait(daemon: Daemon) -> None:
    folder = daemon.paths.inbox_dir
    folder.mkdir(parents=True)
    (folder / ".docs.md").write_bytes(TASK)
    (folder / "docs.md.part").write_bytes(TASK)
    result = await scan(daemon)
    assert result["submitted"] == result["rejected"] == []
    assert files(folder) == [".docs.md", "docs.md.part"]


async def test_the_inbox_folder_is_configurable_and_made_when_missing(home: Path) -> None:
    config = Config(inbox=InboxConfig(path="drop", watch=False))
    async with running_daemon(home, config, clock=FakeClock()) as daemon:
        assert daemon.paths.inbox_dir == home / "drop"
        assert not (home / "drop").exists()
        assert (await scan(daemon))["folder"] == str(home / "drop")
        assert (home / "drop").is_dir()
        drop(daemon, "docs.md", TASK)
        assert len((await scan(daemon))["submitted"]) == 1


async def test_the_inbox_timer_picks_files_up_by_itself(home: Path) -> None:
    clock = FakeClock()
    timers = {"inbox": TimerConfig(kind="inbox.scan", interval_seconds=10, jitter_seconds=1)}
    config = Config(maintenance=MaintenanceConfig(timers=timers, start_delay_seconds=0))
    async with running_daemon(home, config, clock=clock) as daemon:
        drop(daemon, "docs.md", TASK)
        for _ in range(3):  # at least one slot and its jitter
            clock.advance(5)
            await settle(daemon)
        await settle(daemon)
        (job,) = await inbox_jobs(daemon)
        await wait_for_state(daemon, job.id, JobState.DONE)
        assert files(daemon.paths.inbox_dir / "done") == ["docs.md"]
        scans = await daemon.hub.list_jobs(JobFilter(kind="inbox.scan"))
        assert scans and all(s.trigger == Trigger.TIMER for s in scans)


async def test_a_markdown_sleep_job_with_text_runs_to_done(home) -> None:
    """The body goes to payload.text; the sleep kind ignores keys that are not its own."""
    clock = FakeClock()
    async with running_daemon(home, clock=clock) as daemon:
        inbox = home / "inbox"
        inbox.mkdir(exist_ok=True)
        (inbox / "task.md").write_text(
            '+++\nkind = "sleep"\n[payload]\nseconds = 0\n+++\nDo the thing.\n'
        )
        scan = (await daemon.hub.submit(JobSpec(kind="inbox.scan"))).job
        await wait_for_state(daemon, scan.id, JobState.DONE)
        (job,) = await daemon.hub.list_jobs(JobFilter(kind="sleep"))
        await wait_for_state(daemon, job.id, JobState.DONE)
        assert (await daemon.hub.get(job.id)).payload["text"].strip() == "Do the thing."


# -- one entry at a time: bad ones are rejected alone, odd ones left alone --------------------

SECRET = "hunter2-do-not-leak"
LONG_NAME = "x" * 247 + ".md"  # 250 bytes: its .error would pass NAME_MAX (255)


def names(folder: Path) -> list[str]:
    """Every entry, links and all (files() follows links and keeps only files)."""
    return sorted(os.listdir(folder))


def make_old(path: Path, age: int) -> None:
    """Give an entry an old mtime, so that the scan meets it before the files dropped later."""
    os.utime(path, (age, age), follow_symlinks=False)


def all_job_text(jobs: list[Any]) -> str:
    return json.dumps([job.model_dump(mode="json") for job in jobs])


async def test_each_bad_entry_is_rejected_on_its_own_and_the_rest_is_taken_in_the_same_scan(
    home: Path,
) -> None:
    async with running_daemon(home, clock=FakeClock()) as daemon:
        folder = daemon.paths.inbox_dir
        folder.mkdir(parents=True)
        secret = home / "secret.md"
        secret.write_text(f'+++\nkind = "noop"\n+++\n{SECRET}\n')
        (folder / "loop.md").symlink_to("loop.md")
        (folder / "dangling.md").symlink_to("missing.md")
        (folder / "secret.md").symlink_to(secret)
        # A good file, but a name that is not UTF-8.
        (folder / os.fsdecode(b"\xff.md")).write_bytes(TASK)
        (folder / LONG_NAME).write_bytes(b"no front matter")
        for age, name in enumerate(sorted(os.listdir(folder)), start=1):
            make_old(folder / name, age)
        drop(daemon, "good.json", b'{"kind": "noop"}')

        result = await scan(daemon)

        assert [entry["file"] for entry in result["submitted"]] == ["good.json"]
        rejected = {entry["file"]: entry for entry in result["rejected"]}
        assert sorted(rejected) == sorted(
            ["loop.md", "dangling.md", "secret.md", "\\xff.md", LONG_NAME]
        )
        assert result["failed"] == []
        assert names(folder) == ["done", "rejected"]
        into = folder / "rejected"
        for entry in rejected.values():
            error = into / (entry["moved_to"] + ".error")
            assert len(error.name.encode()) <= 255
            assert error.read_text().startswith(f"{entry['file']}: {entry['error']}")
        for link in ("loop.md", "dangling.md", "secret.md"):
            assert "links are not taken" in rejected[link]["error"]
            assert (into / link).is_symlink()  # the link moved, not what it points at
        assert "not UTF-8" in rejected["\\xff.md"]["error"]
        assert "no front matter" in rejected[LONG_NAME]["error"]
        assert secret.exists()
        assert SECRET not in all_job_text(await daemon.hub.list_jobs(JobFilter(limit=1000)))


async def test_fifos_sockets_folders_and_dot_files_are_left_alone_without_blocking(
    home: Path,
) -> None:
    async with running_daemon(home, clock=FakeClock()) as daemon:
        folder = daemon.paths.inbox_dir
        folder.mkdir(parents=True)
        os.mkfifo(folder / "pipe.md")
        (folder / "folder.md").mkdir()
        (folder / ".hidden.md").write_bytes(TASK)
        (folder / "link-to-pipe.md").symlink_to(folder / "pipe.md")
        with socket.socket(socket.AF_UNIX) as sock:
            sock.bind(str(folder / "sock.md"))
            drop(daemon, "docs.md", TASK)
            with anyio.fail_after(10):
                result = await scan(daemon)
        assert [entry["file"] for entry in result["submitted"]] == ["docs.md"]
        assert [entry["file"] for entry in result["rejected"]] == ["link-to-pipe.md"]
        assert names(folder) == [
            ".hidden.md",
            "done",
            "folder.md",
            "pipe.md",
            "rejected",
            "sock.md",
        ]


async def test_an_entry_swapped_for_a_fifo_after_the_listing_is_left_without_blocking(
    home: Path,
) -> None:
    async with running_daemon(home, clock=FakeClock()) as daemon:
        folder = daemon.paths.inbox_dir
        folder.mkdir(parents=True)
        os.mkfifo(folder / "pipe.md")
        with FifoRelease(folder / "pipe.md", within=5) as release:
            taken = await take(daemon.hub, folder, "pipe.md", daemon.config.inbox)
        assert taken is None and not release.needed.is_set()
        assert names(folder) == ["pipe.md"]


async def test_an_entry_that_cannot_be_moved_is_logged_and_the_scan_goes_on(
    home: Path, caplog: pytest.LogCaptureFixture
) -> None:
    async with running_daemon(home, clock=FakeClock()) as daemon:
        folder = daemon.paths.inbox_dir
        folder.mkdir(parents=True)
        (folder / "rejected").write_bytes(b"")  # in the way: no rejected/ folder can be made
        drop(daemon, "bad.json", b"{")
        make_old(folder / "bad.json", 1)
        drop(daemon, "good.json", b'{"kind": "noop"}')

        result = await scan(daemon)

        (failed,) = result["failed"]
        assert failed["file"] == "bad.json"
        assert "not valid JSON" in failed["error"] and "not moved to rejected/" in failed["error"]
        assert [entry["file"] for entry in result["submitted"]] == ["good.json"]
        assert names(folder) == ["bad.json", "done", "rejected"]
        assert any(
            "bad.json" in r.getMessage() and r.levelname == "WARNING" for r in caplog.records
        )
        # Fixed by a person, the next scan rejects it as usual.
        (folder / "rejected").unlink()
        (entry,) = (await scan(daemon))["rejected"]
        assert entry["file"] == "bad.json"


# -- private files ---------------------------------------------------------------------------


async def test_what_the_inbox_writes_is_private_whatever_the_umask(home: Path) -> None:
    old_umask = os.umask(0o022)
    try:
        config = Config(inbox=InboxConfig(path="drop/box"))
        async with running_daemon(home, config, clock=FakeClock()) as daemon:
            folder = daemon.paths.inbox_dir
            await scan(daemon)  # makes the folder and its parent
            drop(daemon, "bad.json", b"{").chmod(0o644)
            drop(daemon, "good.json", b'{"kind": "noop"}').chmod(0o640)
            await scan(daemon)
    finally:
        os.umask(old_umask)

    def mode(path: Path) -> int:
        return stat.S_IMODE(path.stat().st_mode)

    assert [
        mode(path) for path in (home / "drop", folder, folder / "done", folder / "rejected")
    ] == [0o700] * 4
    assert mode(folder / "rejected" / "bad.json.error") == 0o600
    assert mode(folder / "rejected" / "bad.json") == 0o644  # moved files keep their mode
    assert mode(folder / "done" / "good.json") == 0o640


# -- what arrives while a scan runs ----------------------------------------------------------


def drop_on_each_inbox_submit(daemon: Daemon, names: list[str]) -> Callable[[], None]:
    """While the scan submits the job of one file, drop the next: a file arriving mid-scan."""
    waiting = list(names)

    def on_notices(notices: Any) -> None:
        for notice in notices:
            if (
                isinstance(notice, Event)
                and notice.type == EventType.SUBMITTED
                and notice.trigger == Trigger.INBOX
                and waiting
            ):
                drop(
                    daemon,
                    waiting.pop(0),
                    json.dumps({"kind": "noop", "key": str(notice.job_id)}).encode(),
                )

    return daemon.bus.watch(on_notices)


async def test_a_file_dropped_while_a_scan_runs_is_taken_by_that_scan(daemon: Daemon) -> None:
    drop(daemon, "first.json", b'{"kind": "noop"}')
    stop = drop_on_each_inbox_submit(daemon, ["second.json"])
    try:
        result = await scan(daemon)
    finally:
        stop()
    assert [entry["file"] for entry in result["submitted"]] == ["first.json", "second.json"]
    assert result["passes"] == 3  # the first listing, the one with second.json, an empty one
    assert files(daemon.paths.inbox_dir) == []


async def test_a_scan_lists_the_folder_at_most_max_passes_times(home: Path) -> None:
    config = Config(inbox=InboxConfig(max_passes=3))
    async with running_daemon(home, config, clock=FakeClock()) as daemon:
        drop(daemon, "f0.json", b'{"kind": "noop"}')
        stop = drop_on_each_inbox_submit(daemon, [f"f{n}.json" for n in range(1, 10)])
        try:
            result = await scan(daemon)
        finally:
            stop()
        assert [entry["file"] for entry in result["submitted"]] == ["f0.json", "f1.json", "f2.json"]
        assert result["passes"] == 3
        assert files(daemon.paths.inbox_dir) == ["f3.json"]  # for the next scan


async def test_a_file_left_in_place_is_not_taken_again_by_the_same_scan(home: Path) -> None:
    lanes = Config().lanes | {"urgent": LaneConfig(rank=0, concurrency=1, max_depth=1)}
    async with running_daemon(home, Config(lanes=lanes), clock=FakeClock()) as daemon:
        await daemon.hub.set_paused("urgent", True)
        await daemon.hub.submit(JobSpec(kind="noop", lane="urgent"))  # fills the lane
        drop(daemon, "docs.md", TASK)
        result = await scan(daemon)
        assert [entry["file"] for entry in result["deferred"]] == ["docs.md"]
        assert result["passes"] == 2


async def test_a_submit_that_fails_unexpectedly_leaves_the_file_and_the_scan_goes_on(
    home: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    async with running_daemon(home, clock=FakeClock()) as daemon:
        submit = daemon.hub.submit

        async def failing_for_one_file(spec: JobSpec, **kwargs: Any) -> Any:
            if "poison" in spec.reason:
                raise RuntimeError("the store fell over")
            return await submit(spec, **kwargs)

        monkeypatch.setattr(daemon.hub, "submit", failing_for_one_file)
        make_old(drop(daemon, "poison.json", b'{"kind": "noop"}'), 1)
        drop(daemon, "good.json", b'{"kind": "noop", "key": "good"}')
        result = await scan(daemon)
        assert result["failed"] == [
            {"file": "poison.json", "error": "RuntimeError: the store fell over"}
        ]
        assert [entry["file"] for entry in result["submitted"]] == ["good.json"]
        assert files(daemon.paths.inbox_dir) == ["poison.json"]  # for the next scan


async def test_two_scans_at_once_take_each_file_once_and_replace_nothing(home: Path) -> None:
    """The timer's scan and the watcher's may overlap (the maintenance lane runs two)."""
    count = 40
    async with running_daemon(home, clock=FakeClock()) as daemon:
        for n in range(count):
            drop(daemon, f"f{n:02}.json", json.dumps({"kind": "noop", "key": f"k{n}"}).encode())
            drop(daemon, f"bad{n:02}.json", b"{")
        results = []

        async def one_scan() -> None:
            results.append(await scan(daemon))

        async with anyio.create_task_group() as tasks:
            tasks.start_soon(one_scan)
            tasks.start_soon(one_scan)

        inbox = daemon.paths.inbox_dir
        assert names(inbox) == ["done", "rejected"]
        assert names(inbox / "done") == [f"f{n:02}.json" for n in range(count)]
        expected = sorted(f"bad{n:02}.json{e}" for n in range(count) for e in ("", ".error"))
        assert names(inbox / "rejected") == expected
        assert len(await inbox_jobs(daemon)) == count
        taken = [e["file"] for r in results for e in r["submitted"] + r["duplicate"]]
        assert sorted(set(taken)) == [f"f{n:02}.json" for n in range(count)]
