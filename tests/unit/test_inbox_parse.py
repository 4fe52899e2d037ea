"""Inbox files -> job specs: Markdown with +++ front matter, JSON specs, and readable refusals."""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

import pytest

from interlock.config import Config, InboxConfig, resolve_paths
from interlock.domain import Trigger
from interlock.maintenance.inbox import Rejected, content_key, parse
from interlock.maintenance.inbox_files import is_candidate

NOTE = b"""+++
kind = "agent"
lane = "interactive"
priority = 5
project = "site"
reason = "the docs are stale"

[payload]
repo = "~/src/site"
depth = 2
+++

Rewrite the install section.

It still says pip.
"""


def rejection(name: str, content: bytes) -> str:
    with pytest.raises(Rejected) as caught:
        parse(name, content)
    return caught.value.message


# -- Markdown ----------------------------------------------------------------------------------


def test_front_matter_sets_the_fields_and_the_body_is_the_text():
    spec = parse("docs.md", NOTE)
    assert (spec.kind, spec.lane, spec.priority, spec.project) == (
        "agent",
        "interactive",
        5,
        "site",
    )
    assert spec.payload == {
        "text": "Rewrite the install section.\n\nIt still says pip.",
        "repo": "~/src/site",
        "depth": 2,
    }


def test_an_inbox_job_has_trigger_inbox_and_a_reason_naming_the_file():
    spec = parse("docs.md", NOTE)
    assert spec.trigger == Trigger.INBOX
    assert spec.reason == "inbox file docs.md: the docs are stale"
    assert spec.source == "inbox"
    assert parse("bare.md", b'+++\nkind = "noop"\n+++\nhi\n').reason == "inbox file bare.md"


def test_the_key_defaults_to_a_hash_of_the_whole_file():
    spec = parse("docs.md", NOTE)
    assert spec.key == content_key(NOTE) == f"inbox:sha256:{hashlib.sha256(NOTE).hexdigest()}"
    assert parse("other-name.md", NOTE).key == spec.key  # the name plays no part
    assert parse("docs.md", NOTE + b"\n").key != spec.key


def test_a_key_in_the_front_matter_wins():
    spec = parse("a.md", b'+++\nkind = "noop"\nkey = "weekly-report"\n+++\n')
    assert spec.key == "weekly-report"
    assert spec.payload == {"text": ""}


def test_windows_line_endings_and_a_byte_order_mark_are_accepted():
    spec = parse("a.md", b'\xef\xbb\xbf+++\r\nkind = "noop"\r\n+++\r\nline one\r\nline two\r\n')
    assert spec.kind == "noop"
    assert spec.payload["text"] == "line one\r\nline two"


def test_toml_dates_in_the_payload_become_iso_text():
    spec = parse("a.md", b'+++\nkind = "noop"\n[payload]\ndue = 2025-03-01\n+++\n')
    assert spec.payload["due"] == "2025-03-01"
    json.dumps(spec.payload)  # storable


def test_the_suffix_is_case_insensitive_and_markdown_may_be_spelt_out():
    assert parse("A.MD", b'+++\nkind = "noop"\n+++\n').kind == "noop"
    assert parse("a.markdown", b'+++\nkind = "noop"\n+++\n').kind == "noop"


@pytest.mark.parametrize(
    ("content", "expected"),
    [
        (b"Just some text.\n", "no front matter"),
        (b"", "no front matter"),
        (b'+++\nkind = "noop"\nno end\n', "never closed"),
        (b"+++\nkind = \n+++\n", "not valid TOML"),
        (b'+++\nkind = "noop"\nprio = 1\n+++\n', "prio: unknown front matter key"),
        (b'+++\nlane = "urgent"\n+++\n', "kind: required"),
        (b'+++\nkind = "noop"\npriority = "high"\n+++\n', "priority: Input should be"),
        (b'+++\nkind = "noop"\npriority = 5000\n+++\n', "priority: Input should be less"),
        (b'+++\nkind = "noop"\npriority = 1.5\n+++\n', "priority:"),
        (b'+++\nkind = "no op"\n+++\n', "kind: Value error, a job kind has no whitespace"),
        (b'+++\nkind = "noop"\npayload = 3\n+++\n', "payload: must be a table"),
        (b'+++\nkind = "noop"\n[payload]\ntext = "x"\n+++\n', "payload.text:"),
        (b'+++\nkind = "noop"\nreason = 7\n+++\n', "reason: Input should be a valid string"),
        (b'+++\nkind = "noop"\nkey = ""\n+++\n', "key: String should have at least 1"),
        (b'+++\nkind = "noop"\n+++\n\xff\n', "not UTF-8 text (line 4)"),
    ],
)
def test_a_bad_markdown_file_is_refused_with_the_reason(content, expected):
    assert expected in rejection("task.md", content)


def test_the_unknown_key_message_suggests_the_nearest_key_and_lists_them_all():
    message = rejection("t.md", b'+++\nkind = "noop"\nprio = 1\n+++\n')
    assert "did you mean 'priority'?" in message
    assert "kind, lane, priority, project, key, reason, payload" in message


def test_a_toml_error_names_the_line_of_the_file():
    message = rejection("t.md", b'+++\nkind = "noop"\nlane = urgent\n+++\n')
    assert "line 3" in message


def test_a_bad_value_message_shows_the_value():
    assert "not 'high'" in rejection("t.md", b'+++\nkind = "noop"\npriority = "high"\n+++\n')


# -- JSON --------------------------------------------------------------------------------------


def test_a_json_spec_gives_its_fields():
    content = json.dumps(
        {"kind": "sleep", "payload": {"seconds": 3}, "priority": -2, "role": "worker"}
    ).encode()
    spec = parse("job.json", content)
    assert (spec.kind, spec.payload, spec.priority, spec.role) == (
        "sleep",
        {"seconds": 3},
        -2,
        "worker",
    )
    assert spec.trigger == Trigger.INBOX
    assert spec.reason == "inbox file job.json"
    assert spec.key == content_key(content)


def test_a_json_spec_may_name_its_key_reason_and_the_inbox_trigger():
    content = b'{"kind": "noop", "key": "k1", "reason": "why not", "trigger": "inbox"}'
    spec = parse("job.json", content)
    assert (spec.key, spec.reason) == ("k1", "inbox file job.json: why not")


def test_a_null_key_in_json_still_gets_the_content_key():
    content = b'{"kind": "noop", "key": null}'
    assert parse("job.json", content).key == content_key(content)


@pytest.mark.parametrize(
    ("content", "expected"),
    [
        (b'{"kind": "noop",}', "not valid JSON: "),
        (b'{\n"kind": "noop",\n}', "(line 3, column 1)"),
        (b"[1, 2]", "a JSON job spec is an object"),
        (b'{"kind": "noop", "colour": "red"}', "colour: unknown key"),
        (b'{"kind": "noop", "payloads": {}}', "did you mean 'payload'?"),
        (b'{"kind": "noop", "trigger": "human"}', "trigger: an inbox job's trigger is 'inbox'"),
        (b'{"kind": "noop", "payload": [1]}', "payload: Input should be a valid dictionary"),
        (b'{"kind": "noop", "not_before": "soon"}', "not_before: Input should be a valid number"),
        (b'{"kind": "noop", "priority": true}', "priority: Input should be a valid integer"),
        (b'{"kind": "noop", "payload": {"x": NaN}}', "NaN is not a number JSON allows"),
        (b'{"payload": {}}', "kind: required"),
    ],
)
def test_a_bad_json_file_is_refused_with_the_reason(content, expected):
    assert expected in rejection("job.json", content)


# -- files that would stop every scan ----------------------------------------------------------


def test_a_name_that_is_not_utf8_is_refused():
    name = os.fsdecode(b"\xff.md")  # as the folder listing gives it
    assert rejection(name, NOTE) == "the file name is not UTF-8 text (\\xff.md): rename the file"


@pytest.mark.parametrize(
    ("name", "content"),
    [
        ("deep.json", b"[" * 100_000 + b"]" * 100_000),
        (
            "deep.json",
            b'{"kind": "noop", "payload": {"a": ' + b"[" * 100_000 + b"]" * 100_000 + b"}}",
        ),
        (
            "deep.md",
            b'+++\nkind = "noop"\n[payload]\na = ' + b"[" * 100_000 + b"]" * 100_000 + b"\n+++\n",
        ),
    ],
)
def test_a_file_nested_too_deeply_is_refused(name, content):
    assert "nested too deeply" in rejection(name, content)


# -- which files -------------------------------------------------------------------------------


def test_a_file_of_another_type_is_refused():
    assert "should end in .md" in rejection("notes.txt", b"hello")
    assert "should end in .md" in rejection("README", b"hello")


@pytest.mark.parametrize(
    ("name", "taken"),
    [
        ("task.md", True),
        ("job.json", True),
        ("odd.txt", True),  # taken, to be rejected with a reason
        (".task.md", False),
        ("task.md~", False),
        ("task.md.tmp", False),
        ("task.md.part", False),
        (".task.md.swp", False),
        ("done", False),  # the inbox's own folders
        ("rejected", False),
    ],
)
def test_hidden_and_half_written_files_are_left_alone(name, taken):
    assert is_candidate(name) is taken


# -- where the inbox is ------------------------------------------------------------------------


def test_the_inbox_folder_defaults_to_the_state_folder_and_takes_relative_paths_from_it():
    state = Path("/state")
    assert InboxConfig().folder(state) == Path("/state/inbox")
    assert InboxConfig(path="drop").folder(state) == Path("/state/drop")
    assert InboxConfig(path="/srv/inbox").folder(state) == Path("/srv/inbox")
    assert InboxConfig(path="~/inbox").folder(state) == Path.home() / "inbox"
    paths = resolve_paths(Config(inbox=InboxConfig(path="drop")), {"INTERLOCK_HOME": "/h"})
    assert paths.inbox_dir == Path("/h/drop")
