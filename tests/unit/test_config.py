"""interlock.toml: the shipped sample, the error messages, the policies and the paths."""

from __future__ import annotations

import re
import tomllib
from pathlib import Path
from typing import Any, get_args, get_origin

import pytest
from pydantic import BaseModel

from interlock.config import (
    Config,
    RetryPolicy,
    check_kinds,
    config_path,
    load_config,
    resolve_paths,
)
from interlock.errors import ConfigError

SAMPLE = Path(__file__).resolve().parents[2] / "config" / "interlock.toml"


def load_text(tmp_path: Path, text: str) -> Config:
    path = tmp_path / "interlock.toml"
    path.write_text(text)
    return load_config(path)


def error_of(tmp_path: Path, text: str) -> str:
    with pytest.raises(ConfigError) as caught:
        load_text(tmp_path, text)
    return caught.value.message


def line_after(text: str, header: str, key: str) -> int:
    """The 1-based line of `key =` in the first table `header` of `text`."""
    lines = text.splitlines()
    start = lines.index(header)
    return next(n for n in range(start, len(lines)) if lines[n].startswith(f"{key} =")) + 1


def uncommented(text: str) -> str:
    """The sample with its unset settings (`#key = value`) switched on; prose stays comment."""
    return re.sub(r"(?m)^#(?=[A-Za-z_\[])", "", text)


def undocumented(model: type[BaseModel], tables: list[dict[str, Any]], where: str) -> list[str]:
    """Dotted names of the fields of `model` (and its sub-models) that no table sets."""
    missing = []
    for name, field in model.model_fields.items():
        dotted = f"{where}.{name}" if where else name
        values = [table[name] for table in tables if name in table]
        if not values:
            missing.append(dotted)
            continue
        annotation: Any = field.annotation
        if get_origin(annotation) is dict:
            value_type = get_args(annotation)[1]
            if isinstance(value_type, type) and issubclass(value_type, BaseModel):
                # lanes.*, kinds.*, timers.*: every field appears in at least one entry.
                entries = [entry for value in values for entry in value.values()]
                missing += undocumented(value_type, entries, f"{dotted}.*")
        elif isinstance(annotation, type) and issubclass(annotation, BaseModel):
            missing += undocumented(annotation, values, dotted)
    return missing


# -- the shipped sample ----------------------------------------------------------------------


def test_shipped_sample_loads_to_exactly_the_embedded_defaults():
    assert load_config(SAMPLE).model_dump() == Config().model_dump()


def test_shipped_sample_documents_every_field_of_every_model():
    raw = tomllib.loads(uncommented(SAMPLE.read_text()))
    assert undocumented(Config, [raw], "") == []


def test_the_documentation_check_notices_a_missing_key():
    raw = tomllib.loads(uncommented(SAMPLE.read_text()))
    del raw["server"]["max_connections"]
    for lane in raw["lanes"].values():
        del lane["aging_seconds"]
    assert undocumented(Config, [raw], "") == ["server.max_connections", "lanes.*.aging_seconds"]


def test_shipped_sample_unset_settings_are_valid_when_switched_on():
    config = Config.model_validate(tomllib.loads(uncommented(SAMPLE.read_text())))
    assert config.retry_policy("noop") == Config().jobs.retry


def test_every_key_in_the_shipped_sample_has_a_comment_above_it():
    lines = SAMPLE.read_text().splitlines()
    bare = [
        f"line {n + 1}: {line}"
        for n, line in enumerate(lines)
        if re.match(r"#?[a-z_]+ = ", line) and not lines[n - 1].startswith("# ")
    ]
    assert bare == []


# -- errors name the dotted key, the reason and the line -------------------------------------

LANES = """\
[lanes.interactive]
rank = 1
concurrency = 4
max_depth = 10

[lanes.urgent]
rank = 0
concurrency = {urgent}
max_depth = 10

[jobs]
default_lane = "urgent"

[kinds]
"""


def test_bad_value_names_the_key_in_its_own_table_and_that_line(tmp_path):
    message = error_of(tmp_path, LANES.format(urgent=0))
    assert message == (
        f"{tmp_path / 'interlock.toml'}: lanes.urgent.concurrency:"
        " Input should be greater than or equal to 1, not 0 (line 8)"
    )


def test_bad_value_in_the_shipped_sample_points_at_its_lane(tmp_path):
    text = SAMPLE.read_text()
    header = "[lanes.background]"
    start = text.index(header)
    broken = text[:start] + text[start:].replace("concurrency = 2", "concurrency = 0", 1)
    message = error_of(tmp_path, broken)
    line = line_after(broken, header, "concurrency")
    assert "lanes.background.concurrency: Input should be greater than or equal to 1" in message
    assert message.endswith(f"(line {line})")


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        (
            "[server]\npath = ''\nsokcet = 1\n",
            "server.sokcet: unknown key; the keys here are path,",
        ),
        (
            "[daemon]\nlease_second = 5\n",
            "daemon.lease_second: unknown key; did you mean 'lease_seconds'?",
        ),
        ("[sever]\n", "sever: unknown key; did you mean 'server'?"),
        (
            '[jobs]\n\ndefault_lane = "nope"\n',
            "jobs.default_lane: no lane named 'nope'; the lanes are urgent,",
        ),
        ('[kinds.x]\nlane = "nope"\n', "kinds.x.lane: no lane named 'nope'"),
        (
            "[store]\ndurability = 'fast'\n",
            "store.durability: Input should be 'normal' or 'full', not 'fast'",
        ),
        (
            "[daemon]\nlease_seconds = inf\n",
            "daemon.lease_seconds: Input should be a finite number",
        ),
    ],
)
def test_error_names_the_dotted_key_and_why_with_its_line(tmp_path, text, expected):
    message = error_of(tmp_path, text)
    line = len(text.splitlines())  # each case's mistake is on its last line
    assert expected in message
    assert message.endswith(f"(line {line})")


def test_bad_lane_name_points_at_its_table(tmp_path):
    text = "[jobs]\n\n[lanes.Fast]\nrank = 0\nconcurrency = 1\nmax_depth = 1\n"
    message = error_of(tmp_path, text)
    assert "lanes.Fast: a lane name is a lower-case letter" in message
    assert message.endswith("(line 3)")


def test_missing_lane_key_points_at_the_lane_table(tmp_path):
    # urgent is built in: its table changes its rank and keeps the rest; fast is new.
    message = error_of(tmp_path, "[lanes.urgent]\nrank = 0\n\n[lanes.fast]\nrank = 0\n")
    assert message.splitlines() == [
        f"{tmp_path / 'interlock.toml'}: lanes.fast.concurrency: required, but not set (line 4)",
        f"{tmp_path / 'interlock.toml'}: lanes.fast.max_depth: required, but not set (line 4)",
    ]


def test_dotted_and_inline_keys_are_found_too(tmp_path):
    text = (
        "jobs.default_lane = 'fast'\nkinds = {}\n"
        "[lanes]\nslow = { rank = 1, concurrency = 1, max_depth = 1 }\n"
        "fast = { rank = 0, concurrency = 0, max_depth = 1 }\n"
    )
    assert error_of(tmp_path, text).endswith(
        "lanes.fast.concurrency: Input should be greater than or equal to 1, not 0 (line 5)"
    )


def test_key_text_inside_a_multiline_string_is_not_mistaken_for_a_table(tmp_path):
    text = 'note = """\n[server]\nsokcet = 1\n"""\n[server]\nsokcet = 1\n'
    message = error_of(tmp_path, text)
    assert (
        f"{tmp_path / 'interlock.toml'}: server.sokcet: unknown key; "
        "the keys here are path, max_message_bytes, max_connections, subscriber_queue (line 6)"
    ) in message.splitlines()


def test_every_error_is_reported_not_just_the_first(tmp_path):
    message = error_of(tmp_path, "[daemon]\nlease_seconds = 0\nlog_level = 'loud'\n")
    assert [line.split(": ")[1] for line in message.splitlines()] == [
        "daemon.lease_seconds",
        "daemon.log_level",
    ]


def test_toml_syntax_error_keeps_tomllibs_line_and_column(tmp_path):
    message = error_of(tmp_path, "[server]\npath =\n")
    assert message == (
        f"{tmp_path / 'interlock.toml'}: not valid TOML: Invalid value (at line 2, column 7)"
    )


def test_unreadable_file_says_so(tmp_path):
    with pytest.raises(ConfigError, match=r"missing\.toml: cannot read the config file: No such"):
        load_config(tmp_path / "missing.toml")
    with pytest.raises(ConfigError, match=r": cannot read the config file: Is a directory"):
        load_config(tmp_path)


def test_file_that_is_not_utf8_names_the_line(tmp_path):
    path = tmp_path / "interlock.toml"
    path.write_bytes(b"[server]\npath = '\xff'\n")
    with pytest.raises(ConfigError, match=r"not UTF-8 text \(line 2\)"):
        load_config(path)


def test_no_file_gives_the_embedded_defaults():
    assert load_config(None) == Config()


# -- policies --------------------------------------------------------------------------------

POLICIES = """\
[jobs]
default_lane = "background"

[jobs.retry]
max_attempts = 4
backoff_base_seconds = 1.5

[kinds.agent]
lane = "urgent"
max_attempts = 7
backoff_jitter = 0.0

[kinds.review]
backoff_max_seconds = 30.0
"""


def test_retry_policy_merges_a_kinds_overrides_over_the_defaults(tmp_path):
    config = load_text(tmp_path, POLICIES)
    assert config.retry_policy("agent") == RetryPolicy(
        max_attempts=7, backoff_base_seconds=1.5, backoff_max_seconds=600.0, backoff_jitter=0.0
    )
    assert config.retry_policy("review") == RetryPolicy(
        max_attempts=4, backoff_base_seconds=1.5, backoff_max_seconds=30.0, backoff_jitter=0.2
    )


def test_retry_policy_of_an_unconfigured_kind_is_the_default(tmp_path):
    config = load_text(tmp_path, POLICIES)
    assert config.retry_policy("other") == config.jobs.retry


def test_lane_for_uses_the_kinds_lane_else_the_default_lane(tmp_path):
    config = load_text(tmp_path, POLICIES)
    assert config.lane_for("agent") == "urgent"
    assert config.lane_for("review") == "background"  # configured, but no lane of its own
    assert config.lane_for("other") == "background"
    assert Config().lane_for("noop") == "interactive"


# -- tables merge over the built-in ones -----------------------------------------------------


def test_a_kind_table_changes_only_what_it_names_and_keeps_the_built_in_kinds(tmp_path):
    config = load_text(
        tmp_path, "[kinds.noop]\nmax_attempts = 5\n\n[kinds.mine]\nlane = 'urgent'\n"
    )
    assert config.lane_for("noop") == "interactive"  # kept from the built-in noop
    assert config.retry_policy("noop").max_attempts == 5
    assert config.key_window("health.snapshot") == 86_400.0  # other kinds untouched
    assert config.lane_for("mine") == "urgent"
    assert set(Config().kinds) < set(config.kinds)


def test_a_lane_table_for_a_built_in_lane_changes_only_what_it_names(tmp_path):
    config = load_text(tmp_path, "[lanes.urgent]\nconcurrency = 8\n")
    assert config.lanes["urgent"].concurrency == 8
    assert config.lanes["urgent"].max_depth == Config().lanes["urgent"].max_depth
    assert set(config.lanes) == set(Config().lanes)


def test_a_timer_table_merges_and_a_cron_replaces_the_interval(tmp_path):
    config = load_text(
        tmp_path,
        "[maintenance.timers.stalls]\nenabled = false\n\n"
        "[maintenance.timers.retention]\ncron = '30 3 * * *'\njitter_seconds = 10\n",
    )
    timers = config.maintenance.timers
    assert not timers["stalls"].enabled and timers["stalls"].interval_seconds == 30
    assert timers["retention"].cron == "30 3 * * *" and timers["retention"].interval_seconds is None
    assert timers["retention"].kind == "store.retention"
    assert set(timers) == set(Config().maintenance.timers)


def test_kinds_named_in_config_without_a_handler_are_each_refused(tmp_path):
    config = load_text(
        tmp_path,
        "[kinds.ghost]\nlane = 'urgent'\n\n"
        "[maintenance.timers.beat]\nkind = 'phantom'\ninterval_seconds = 60\n\n"
        "[projects.docs]\ngoal = 'Docs'\nnext_kind = 'spectre'\n",
    )
    with pytest.raises(ConfigError) as caught:
        check_kinds(config, {"noop", *Config().kinds})
    lines = caught.value.message.splitlines()
    assert [line.split(":")[0] for line in lines] == [
        "kinds.ghost",
        "maintenance.timers.beat.kind",
        "projects.docs.next_kind",
    ]
    check_kinds(Config(), set(Config().kinds))  # the built-in config names only real kinds


# -- paths -----------------------------------------------------------------------------------


def test_interlock_home_holds_everything_and_beats_xdg():
    env = {"INTERLOCK_HOME": "/h", "XDG_STATE_HOME": "/s", "XDG_RUNTIME_DIR": "/r"}
    paths = resolve_paths(Config(), env)
    assert paths.state_dir == Path("/h")
    assert paths.db_path == Path("/h/interlock.db")
    assert paths.socket_path == Path("/h/interlock.sock")
    assert paths.artifacts_dir == Path("/h/artifacts")
    assert paths.lock_path == Path("/h/interlock.lock")


def test_xdg_state_and_runtime_folders():
    paths = resolve_paths(Config(), {"XDG_STATE_HOME": "/s", "XDG_RUNTIME_DIR": "/r"})
    assert paths.state_dir == Path("/s/interlock")
    assert paths.db_path == Path("/s/interlock/interlock.db")
    assert paths.socket_path == Path("/r/interlock/interlock.sock")
    assert paths.artifacts_dir == Path("/s/interlock/artifacts")


def test_without_a_runtime_folder_the_socket_goes_to_the_state_folder():
    paths = resolve_paths(Config(), {"XDG_STATE_HOME": "/s"})
    assert paths.socket_path == Path("/s/interlock/interlock.sock")


def test_without_xdg_variables_the_state_is_under_home(monkeypatch, tmp_path):
    monkeypatch.setenv("HOME", str(tmp_path))
    paths = resolve_paths(Config(), {})
    assert paths.state_dir == tmp_path / ".local" / "state" / "interlock"
    assert paths.socket_path == paths.state_dir / "interlock.sock"


def test_relative_xdg_folders_are_ignored_as_the_spec_asks(monkeypatch, tmp_path):
    monkeypatch.setenv("HOME", str(tmp_path))
    paths = resolve_paths(Config(), {"XDG_STATE_HOME": "rel", "XDG_RUNTIME_DIR": "run"})
    assert paths.state_dir == tmp_path / ".local" / "state" / "interlock"
    assert paths.socket_path == paths.state_dir / "interlock.sock"


def test_store_and_server_paths_override_the_folders(tmp_path):
    config = load_text(tmp_path, '[store]\npath = "/data/il.db"\n[server]\npath = "/run/il.sock"\n')
    paths = resolve_paths(config, {"XDG_STATE_HOME": "/s", "XDG_RUNTIME_DIR": "/r"})
    assert paths.db_path == Path("/data/il.db")
    assert paths.socket_path == Path("/run/il.sock")
    assert paths.state_dir == Path("/s/interlock")  # artifacts and the lock stay here


def test_relative_store_and_server_paths_are_under_their_folders(monkeypatch, tmp_path):
    monkeypatch.setenv("HOME", str(tmp_path))
    config = load_text(tmp_path, '[store]\npath = "db/il.db"\n[server]\npath = "~/il.sock"\n')
    paths = resolve_paths(config, {"XDG_STATE_HOME": "/s", "XDG_RUNTIME_DIR": "/r"})
    assert paths.db_path == Path("/s/interlock/db/il.db")
    assert paths.socket_path == tmp_path / "il.sock"


def test_config_flag_beats_the_environment_beats_the_xdg_file(tmp_path):
    xdg_file = tmp_path / "interlock" / "interlock.toml"
    xdg_file.parent.mkdir()
    xdg_file.write_text("")
    env = {"INTERLOCK_CONFIG": "/env.toml", "XDG_CONFIG_HOME": str(tmp_path)}
    assert config_path("/flag.toml", env) == Path("/flag.toml")
    assert config_path(None, env) == Path("/env.toml")
    assert config_path(None, {"XDG_CONFIG_HOME": str(tmp_path)}) == xdg_file


def test_the_xdg_file_counts_only_if_it_exists(tmp_path):
    assert config_path(None, {"XDG_CONFIG_HOME": str(tmp_path)}) is None


def test_without_xdg_config_home_the_file_is_under_home(monkeypatch, tmp_path):
    monkeypatch.setenv("HOME", str(tmp_path))
    assert config_path(None, {}) is None
    default = tmp_path / ".config" / "interlock" / "interlock.toml"
    default.parent.mkdir(parents=True)
    default.write_text("")
    assert config_path(None, {}) == default


def test_config_paths_expand_the_home_folder(monkeypatch, tmp_path):
    monkeypatch.setenv("HOME", str(tmp_path))
    assert config_path("~/a.toml", {}) == tmp_path / "a.toml"
    assert config_path(None, {"INTERLOCK_CONFIG": "~/b.toml"}) == tmp_path / "b.toml"
