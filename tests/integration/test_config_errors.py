"""A broken config stops a real daemon, or the CLI, with one sentence naming the key."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import base_env, run_cli

SAMPLE = Path(__file__).resolve().parents[2] / "config" / "interlock.toml"

BROKEN = [
    ("[lanes.urgent]\nrank = 0\nconcurrency = 0\nmax_depth = 5\n", "lanes.urgent.concurrency"),
    ("[server]\nsokcet = '/tmp/x.sock'\n", "server.sokcet: unknown key"),
    ('[jobs]\ndefault_lane = "nope"\n', "jobs.default_lane: no lane named 'nope'"),
    ("[daemon]\nlog_level = 'loud'\n", "daemon.log_level"),
]


def run_daemon(home: Path, config: Path, timeout: float = 30) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "interlock", "daemon"],
        env=base_env(home, config),
        capture_output=True,
        text=True,
        timeout=timeout,
    )


@pytest.mark.parametrize(("text", "named"), BROKEN)
def test_daemon_with_a_broken_config_exits_1_naming_the_key(home, text, named):
    config = home / "interlock.toml"
    config.write_text(text)
    done = run_daemon(home, config)
    assert done.returncode == 1, done.stderr
    assert named in done.stderr
    assert f"interlock: {config}: " in done.stderr
    assert "Traceback" not in done.stderr
    assert not (home / "interlock.db").exists()  # refused before touching anything


def test_daemon_with_a_toml_syntax_error_exits_1_with_line_and_column(home):
    config = home / "interlock.toml"
    config.write_text("[server]\npath =\n")
    done = run_daemon(home, config)
    assert done.returncode == 1, done.stderr
    assert "not valid TOML: Invalid value (at line 2, column 7)" in done.stderr
    assert "Traceback" not in done.stderr


def test_daemon_with_a_missing_config_file_exits_1(home):
    done = run_daemon(home, home / "nowhere.toml")
    assert done.returncode == 1, done.stderr
    assert "nowhere.toml: cannot read the config file" in done.stderr
    assert "Traceback" not in done.stderr


@pytest.mark.parametrize(
    "argv",
    [
        ("ls", "--config", "{bad}"),
        ("--config", "{bad}", "ls"),
    ],
)
def test_cli_with_a_broken_config_exits_1_naming_the_key(home, argv):
    bad = home / "bad.toml"
    bad.write_text("[server]\nmax_connections = 0\n")
    done = run_cli(home, *(arg.format(bad=bad) for arg in argv))
    assert done.code == 1, done.err
    assert "server.max_connections: Input should be greater than or equal to 1" in done.err
    assert "(line 2)" in done.err
    assert "Traceback" not in done.err


def test_daemon_starts_and_stops_cleanly_on_the_shipped_sample(make_daemon):
    daemon = make_daemon(SAMPLE.read_text()).start()
    assert daemon.terminate() == 0, daemon.log()
