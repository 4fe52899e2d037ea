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

One entry never stops the scan: a bad one is rejected on its own, one that
cannot even be moved is logged and left, and the scan goes on to the next.
After taking what its listing found, a scan lists the folder again and takes
what arrived meanwhile (at most `inbox.max_passes` listings), so a file
dropped while a scan runs does not wait for the next one.

The parsing is pure (`parse` and its helpers); the file system is
`inbox_files` (plain functions, run in worker threads, never on the event
loop); the handler joins the two through the hub.
"""

from __future__ import annotations

import datetime
import difflib
import hashlib
import json
import logging
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
from interlock.maintenance.inbox_files import (
    DONE,
    REJECTED,
    Read,
    Rejected,
    Waiting,
    has_waiting,
    move_to_done,
    read_entry,
    readable_name,
    reject,
    waiting,
)

log = logging.getLogger(__name__)

MARKDOWN_SUFFIXES = (".md", ".markdown")
JSON_SUFFIXES = (".json",)
FRONT_MATTER_FENCE = "+++"
FRONT_MATTER_KEYS = ("kind", "lane", "priority", "project", "key", "reason", "payload")
SPEC_KEYS = tuple(JobSpec.model_fields)
SOURCE = "inbox"
OUTCOMES = ("submitted", "duplicate", "rejected", "deferred", "failed")


# -- parsing: pure ---------------------------------------------------------------------------


def content_key(content: bytes) -> str:
    """The default idempotency key of an inbox file: a hash of its bytes."""
    return f"inbox:sha256:{hashlib.sha256(content).hexdigest()}"


def parse(name: str, content: bytes) -> JobSpec:
    """The job an inbox file asks for; raises Rejected with a readable reason.

    `name` is the name as the folder listing gives it: bytes that are not
    UTF-8 arrive as lone surrogates, and such a name is refused (it could not
    be stored in the job's reason).
    """
    if readable_name(name) != name:
        raise Rejected(f"the file name is not UTF-8 text ({readable_name(name)}): rename the file")
    suffix = Path(name).suffix.lower()
    if suffix not in MARKDOWN_SUFFIXES + JSON_SUFFIXES:
        raise Rejected(
            f"not an inbox file type: {name!r} should end in .md (Markdown with a +++ front"
            " matter block) or .json (a job spec)"
        )
    text = _text(content)
    try:
        fields = parse_json(text) if suffix in JSON_SUFFIXES else parse_markdown(text)
        return _spec(name, content, fields)
    except RecursionError as exc:
        # Thousands of nested [ or {: the parsers recurse once per level.
        raise Rejected("nested too deeply: arrays or tables inside each other") from exc


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

    file: str  # its name as readable text (see inbox_files.readable_name)
    outcome: str  # one of OUTCOMES
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
    return await anyio.to_thread.run_sync(has_waiting, folder)


async def scan(ctx: MaintenanceContext) -> dict[str, Any]:
    """Take every file waiting in the inbox folder, oldest first, and those that arrive meanwhile.

    The folder is listed again after each listing's files are taken, until a
    listing brings nothing new or `inbox.max_passes` listings were made: the
    watcher's wake-ups collapse into a scan that is already running, so the
    running scan must take what they were about.
    """
    settings = ctx.config.inbox
    folder = settings.folder(ctx.state_dir)
    result: dict[str, Any] = {"folder": str(folder), "passes": 0}
    result |= {outcome: [] for outcome in OUTCOMES}
    seen: set[Waiting] = set()
    for _ in range(settings.max_passes):
        listing = await anyio.to_thread.run_sync(waiting, folder)
        result["passes"] += 1
        # A file this scan left in place (a full lane, a failed move) is not new.
        fresh = [entry for entry in listing if entry not in seen]
        if not fresh:
            break
        for entry in fresh:
            seen.add(entry)
            taken = await take(ctx.hub, folder, entry.name, settings)
            if taken is not None:
                result[taken.outcome].append(taken.as_result())
    return result


async def take(hub: Hub, folder: Path, name: str, settings: InboxConfig) -> Taken | None:
    """Read, submit, move: one inbox entry. None if it went away, or is not a file to take.

    Never raises for anything about the entry: what could not be done is in
    the returned Taken (outcome "failed" if the entry stays in the inbox) and
    in the log.
    """
    path = folder / name
    shown = readable_name(name)
    read: Read | None = None
    try:
        read = await anyio.to_thread.run_sync(read_entry, path, settings.max_file_bytes)
        if read is None:
            return None  # a FIFO, socket or folder now: left alone
        spec = parse(name, read.content)
        submitted = await hub.submit(spec, key_window_seconds=settings.key_window_seconds)
    except FileNotFoundError:
        return None
    except LaneFull as exc:
        # Backpressure: the file waits in the inbox for a later scan.
        return Taken(file=shown, outcome="deferred", error=exc.message)
    except (Rejected, UnknownKind, UnknownLane, UnknownJob, InvalidPayload, KeyConflict) as exc:
        return await _reject(path, shown, str(exc), None if read is None else read.file_id)
    except Exception as exc:
        # Whatever else an entry can provoke, it must not stop the scan; the file
        # stays, and the next scan tries it again.
        log.exception("inbox: %s could not be taken; it stays in the inbox", shown)
        return Taken(file=shown, outcome="failed", error=f"{type(exc).__name__}: {exc}")
    outcome = "duplicate" if submitted.duplicate else "submitted"
    try:
        done_as: str | None = (
            await anyio.to_thread.run_sync(move_to_done, path, read.file_id)
        ).name
    except FileNotFoundError:  # taken away (or replaced) after its job was submitted
        done_as = None
    except OSError as exc:
        # The job exists; the next scan's submit collapses into it and moves the file.
        log.warning(
            "inbox: %s is job %s but could not go to done/: %s", shown, submitted.job.id, exc
        )
        return Taken(
            file=shown,
            outcome=outcome,
            job_id=submitted.job.id,
            error=f"not moved to {DONE}/: {exc}",
        )
    return Taken(file=shown, outcome=outcome, moved_to=done_as, job_id=submitted.job.id)


async def _reject(
    path: Path, shown: str, message: str, file_id: tuple[int, int] | None
) -> Taken | None:
    try:
        rejected_as = await anyio.to_thread.run_sync(reject, path, message, file_id)
    except FileNotFoundError:
        return None
    except OSError as exc:
        log.warning(
            "inbox: %s is rejected (%s) but could not go to %s/: %s; it stays in the inbox",
            shown,
            message,
            REJECTED,
            exc,
        )
        return Taken(
            file=shown, outcome="failed", error=f"{message} (not moved to {REJECTED}/: {exc})"
        )
    return Taken(file=shown, outcome="rejected", moved_to=rejected_as.name, error=message)
