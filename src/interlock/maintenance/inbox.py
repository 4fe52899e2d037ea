"""inbox.scan: every file dropped in the inbox folder becomes a job, exactly once.

A file is either Markdown with a TOML front matter block between `+++` lines
(the text after it is the task) or a JSON job spec. Each file is taken in
three steps: read it, submit its job under a key (its own, or a hash of its
content), then move it to `done/`. A crash between the submit and the move
leaves the file in the inbox; the next scan submits it again, the key
(kept for `inbox.key_window_seconds` even after the job ended) collapses the
submit into the job that exists, and the file moves. So nothing is lost and
nothing becomes two jobs. A file that cannot become a job moves to
`rejected/` with `NAME.error` beside it, which says what is wrong.

The parsing is pure (`parse` and its helpers); the handler does the I/O, in
worker threads, never on the event loop.
"""

from __future__ import annotations

import contextlib
import datetime
import difflib
import hashlib
import json
import os
import tomllib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import anyio
from pydantic import ValidationError

from interlock.config import InboxConfig
from interlock.domain import JobSpec, Trigger
from interlock.errors import (
    InvalidPayload,
    KeyConflict,
    LaneFull,
    UnknownJob,
    UnknownKind,
    UnknownLane,
)
from interlock.hub import Hub
from interlock.maintenance.context import MaintenanceContext, Probe

MARKDOWN_SUFFIXES = (".md", ".markdown")
JSON_SUFFIXES = (".json",)
# A file still being written is best written under one of these names, then renamed.
IGNORED_SUFFIXES = ("~", ".tmp", ".part", ".swp")
DONE = "done"
REJECTED = "rejected"
ERROR_SUFFIX = ".error"
FRONT_MATTER_FENCE = "+++"
FRONT_MATTER_KEYS = ("kind", "lane", "priority", "project", "key", "reason", "payload")
SPEC_KEYS = tuple(JobSpec.model_fields)
SOURCE = "inbox"


class Rejected(ValueError):
    """An inbox file that cannot become a job; the message says why, for the .error file."""

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message

    def __str__(self) -> str:
        return self.message


# -- parsing: pure ---------------------------------------------------------------------------


def is_candidate(name: str) -> bool:
    """Whether a file in the inbox is meant to be taken (not hidden, not still being written)."""
    return not name.startswith(".") and not name.endswith(IGNORED_SUFFIXES)


def content_key(content: bytes) -> str:
    """The default idempotency key of an inbox file: a hash of its bytes."""
    return f"inbox:sha256:{hashlib.sha256(content).hexdigest()}"


def parse(name: str, content: bytes) -> JobSpec:
    """The job an inbox file asks for; raises Rejected with a readable reason."""
    suffix = Path(name).suffix.lower()
    if suffix not in MARKDOWN_SUFFIXES + JSON_SUFFIXES:
        raise Rejected(
            f"not an inbox file type: {name!r} should end in .md (Markdown with a +++ front"
            " matter block) or .json (a job spec)"
        )
    text = _text(content)
    fields = parse_json(text) if suffix in JSON_SUFFIXES else parse_markdown(text)
    return _spec(name, content, fields)


def parse_markdown(text: str) -> dict[str, Any]:
    """Front matter between `+++` lines -> the spec's fields; the body -> payload["text"]."""
    lines = text.splitlines(keepends=True)
    if not lines or lines[0].strip() != FRONT_MATTER_FENCE:
        raise Rejected(
            "no front matter: a Markdown inbox file opens with a '+++' line, then TOML"
            " settings (at least kind = \"...\"), then another '+++' line, then the task text"
        )
    closing = next(
        (n for n in range(1, len(lines)) if lines[n].strip() == FRONT_MATTER_FENCE), None
    )
    if closing is None:
        raise Rejected("the front matter opened on line 1 is never closed: no second '+++' line")
    try:
        # A leading newline, so that tomllib's line numbers are the file's.
        front = tomllib.loads("\n" + "".join(lines[1:closing]))
    except tomllib.TOMLDecodeError as exc:
        raise Rejected(f"the front matter is not valid TOML: {exc}") from exc
    _check_keys(front, FRONT_MATTER_KEYS, "front matter key")
    payload = front.pop("payload", {})
    if not isinstance(payload, dict):
        raise Rejected(f"payload: must be a table ([payload]), not {_shown(payload)}")
    if "text" in payload:
        raise Rejected(
            "payload.text: the text after the front matter is the payload's text;"
            " leave payload.text out"
        )
    body = "".join(lines[closing + 1 :]).lstrip("\r\n").rstrip()
    front["payload"] = {"text": body, **_json_safe(payload)}
    return front


def parse_json(text: str) -> dict[str, Any]:
    """A JSON object with the fields of a submit."""
    try:
        data = json.loads(text, parse_constant=_no_constant)
    except json.JSONDecodeError as exc:
        raise Rejected(
            f"not valid JSON: {exc.msg} (line {exc.lineno}, column {exc.colno})"
        ) from exc
    if not isinstance(data, dict):
        raise Rejected(f"a JSON job spec is an object ({{...}}), not {type(data).__name__}")
    _check_keys(data, SPEC_KEYS, "key")
    trigger = data.pop("trigger", Trigger.INBOX.value)
    if trigger != Trigger.INBOX.value:
        raise Rejected(f"trigger: an inbox job's trigger is 'inbox', not {_shown(trigger)}")
    return data


def _spec(name: str, content: bytes, fields: dict[str, Any]) -> JobSpec:
    """Validate the fields strictly; fill in the key, trigger, reason and source."""
    if "kind" not in fields:
        raise Rejected('kind: required, but not set (the job kind to run, say kind = "noop")')
    reason = fields.get("reason", "")
    if not isinstance(reason, str):
        raise Rejected(f"reason: Input should be a valid string, not {_shown(reason)}")
    values = {
        "source": SOURCE,
        **fields,
        "key": content_key(content) if fields.get("key") is None else fields["key"],
        "reason": f"inbox file {name}" + (f": {reason}" if reason else ""),
        "trigger": Trigger.INBOX,
    }
    try:
        return JobSpec.model_validate(values, strict=True)
    except ValidationError as exc:
        raise Rejected(_describe(exc)) from exc


def _text(content: bytes) -> str:
    try:
        return content.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        line = content.count(b"\n", 0, exc.start) + 1
        raise Rejected(f"not UTF-8 text (line {line})") from exc


def _check_keys(data: dict[str, Any], known: tuple[str, ...], what: str) -> None:
    for key in data:
        if key in known:
            continue
        close = difflib.get_close_matches(key, known, n=1)
        hint = f"; did you mean {close[0]!r}?" if close else ""
        raise Rejected(f"{key}: unknown {what}{hint} (the keys are {', '.join(known)})")


def _describe(exc: ValidationError) -> str:
    """One line per error: `dotted.key: why, not VALUE`."""
    lines = []
    for error in exc.errors():
        where = ".".join(str(part) for part in error["loc"]) or "(the spec)"
        why = error["msg"]
        if isinstance(error["input"], str | int | float | bool) and error["type"] != "missing":
            why = f"{why}, not {_shown(error['input'])}"
        lines.append(f"{where}: {why}")
    return "\n".join(lines)


def _shown(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 80 else text[:77] + "..."


def _no_constant(name: str) -> Any:
    raise Rejected(f"not valid JSON: {name} is not a number JSON allows")


def _json_safe(value: Any) -> Any:
    """TOML has dates and times, JSON has not: they go into the payload as ISO 8601 text."""
    if isinstance(value, dict):
        return {key: _json_safe(item) for key, item in value.items()}
    if isinstance(value, list):
        return [_json_safe(item) for item in value]
    if isinstance(value, datetime.date | datetime.time):
        return value.isoformat()
    return value


# -- the scan: file I/O in worker threads, jobs through the hub ------------------------------


@dataclass(frozen=True)
class Taken:
    """What became of one inbox file."""

    file: str
    outcome: str  # "submitted", "duplicate", "rejected" or "deferred"
    moved_to: str | None = None
    job_id: int | None = None
    error: str | None = None

    def as_result(self) -> dict[str, Any]:
        """The entry in the scan job's result."""
        entry: dict[str, Any] = {"file": self.file}
        if self.job_id is not None:
            entry["job_id"] = self.job_id
        if self.moved_to is not None:
            entry["moved_to"] = self.moved_to
        if self.error is not None:
            entry["error"] = self.error
        return entry


async def due(probe: Probe) -> bool:
    """A file waits in the inbox."""
    folder = probe.config.inbox.folder(probe.state_dir)
    return bool(await anyio.to_thread.run_sync(_waiting, folder))


async def scan(ctx: MaintenanceContext) -> dict[str, Any]:
    """Take every file waiting in the inbox folder, oldest first."""
    settings = ctx.config.inbox
    folder = settings.folder(ctx.state_dir)
    names = await anyio.to_thread.run_sync(_waiting, folder)
    result: dict[str, Any] = {
        "folder": str(folder),
        "submitted": [],
        "duplicate": [],
        "rejected": [],
        "deferred": [],
    }
    for name in names:
        taken = await take(ctx.hub, folder, name, settings)
        if taken is not None:
            result[taken.outcome].append(taken.as_result())
    return result


async def take(hub: Hub, folder: Path, name: str, settings: InboxConfig) -> Taken | None:
    """Read, submit, move: one inbox file. None if the file went away meanwhile."""
    path = folder / name
    try:
        content = await anyio.to_thread.run_sync(_read, path, settings.max_file_bytes)
        spec = parse(name, content)
        submitted = await hub.submit(spec, key_window_seconds=settings.key_window_seconds)
    except FileNotFoundError:
        return None
    except LaneFull as exc:
        # Backpressure: the file waits in the inbox for a later scan.
        return Taken(file=name, outcome="deferred", error=exc.message)
    except (Rejected, UnknownKind, UnknownLane, UnknownJob, InvalidPayload, KeyConflict) as exc:
        message = str(exc)
        try:
            rejected_as = await anyio.to_thread.run_sync(_reject, path, message)
        except FileNotFoundError:
            return None
        return Taken(file=name, outcome="rejected", moved_to=rejected_as.name, error=message)
    done_as: str | None = None
    with contextlib.suppress(FileNotFoundError):  # taken away after its job was submitted
        done_as = (await anyio.to_thread.run_sync(_move, path, folder / DONE)).name
    return Taken(
        file=name,
        outcome="duplicate" if submitted.duplicate else "submitted",
        moved_to=done_as,
        job_id=submitted.job.id,
    )


def _waiting(folder: Path) -> list[str]:
    """The names of the files to take, oldest first; makes the folder if it is missing."""
    folder.mkdir(parents=True, exist_ok=True, mode=0o700)
    found = []
    with os.scandir(folder) as entries:
        for entry in entries:
            if not is_candidate(entry.name):
                continue
            try:
                if entry.is_file():
                    found.append((entry.stat().st_mtime, entry.name))
            except FileNotFoundError:
                continue  # removed while we looked
    return [name for _, name in sorted(found)]


def _read(path: Path, limit: int) -> bytes:
    with path.open("rb") as file:
        content = file.read(limit + 1)
    if len(content) > limit:
        raise Rejected(f"too large: more than {limit} bytes (inbox.max_file_bytes)")
    return content


def _free_name(folder: Path, name: str, *companions: str) -> Path:
    """`name` in `folder`, or NAME.1.EXT, NAME.2.EXT, ...: never a file that exists.

    With `companions`, the name plus each of them must be free too. The
    daemon is the only writer of done/ and rejected/, so a check, then a
    rename, cannot race another writer.
    """
    candidate = folder / name
    stem, suffix = Path(name).stem, Path(name).suffix

    def taken(path: Path) -> bool:
        return path.exists() or any(
            path.with_name(path.name + companion).exists() for companion in companions
        )

    number = 0
    while taken(candidate):
        number += 1
        candidate = folder / f"{stem}.{number}{suffix}"
    return candidate


def _move(path: Path, into: Path) -> Path:
    into.mkdir(parents=True, exist_ok=True, mode=0o700)
    target = _free_name(into, path.name)
    path.rename(target)
    return target


def _reject(path: Path, message: str) -> Path:
    """Move a bad file to rejected/, with NAME.error beside it.

    The .error goes first and the move second, so that a rejected file never
    lacks its reason. A crash between the two leaves the file in the inbox
    (and a .error with no file beside it); the next scan rejects the file
    again under a free name.
    """
    into = path.parent / REJECTED
    into.mkdir(parents=True, exist_ok=True, mode=0o700)
    target = _free_name(into, path.name, ERROR_SUFFIX)
    error = target.with_name(target.name + ERROR_SUFFIX)
    error.write_text(f"{path.name}: {message}\n", encoding="utf-8")
    path.rename(target)
    return target
