"""The CLI against a real daemon subprocess: every command, human and --json, and exit codes."""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

from tests.conftest import base_env, run_cli


def submit(cli, *args: str) -> int:
    done = cli("submit", *args, "--json")
    assert done.code == 0, done.err
    return int(done.json()["id"])


def test_submit_then_wait_reports_done(daemon_process, cli):
    submitted = cli("submit", "noop", "--reason", "smoke test", "--json")
    assert submitted.code == 0, submitted.err
    body = submitted.json()
    assert body["duplicate"] is False and body["state"] in {"queued", "running", "done"}
    waited = cli("wait", str(body["id"]), "--timeout", "10", "--json")
    assert waited.code == 0, waited.err
    assert waited.json()["state"] == "done"


def test_submit_with_a_live_key_says_duplicate(daemon_process, cli):
    first = cli("submit", "sleep", "--payload", '{"seconds": 30}', "--key", "k", "--json").json()
    again = cli("submit", "sleep", "--payload", '{"seconds": 30}', "--key", "k")
    assert again.code == 0
    assert f"duplicate: job {first['id']}" in again.out
    as_json = cli("submit", "sleep", "--payload", '{"seconds": 30}', "--key", "k", "--json")
    assert as_json.json()["duplicate"] is True and as_json.json()["id"] == first["id"]


def test_ls_lists_every_state_newest_first_with_the_promised_fields(daemon_process, cli):
    done_id = submit(cli, "noop")
    assert cli("wait", str(done_id), "--timeout", "10").code == 0
    assert cli("pause", "background").code == 0
    queued_id = submit(cli, "sleep", "--payload", '{"seconds": 1}', "--key", "q")
    listed = cli("ls", "--json")
    assert listed.code == 0
    jobs = listed.json()
    assert [job["id"] for job in jobs] == [queued_id, done_id]
    for field in ("id", "kind", "lane", "state", "key", "attempts"):
        assert field in jobs[0]
    assert jobs[0]["key"] == "q" and jobs[0]["state"] == "queued"
    only_done = cli("ls", "--state", "done", "--json").json()
    assert [job["id"] for job in only_done] == [done_id]
    by_lane = cli("ls", "--lane", "background", "--json").json()
    assert [job["id"] for job in by_lane] == [queued_id]
    human = cli("ls")
    header = human.out.splitlines()[0].split()
    assert header[:4] == ["ID", "KIND", "LANE", "STATE"]
    assert len(cli("ls", "--limit", "1", "--json").json()) == 1


def test_show_and_why_tell_who_asked_when_and_why(daemon_process, cli):
    parent = submit(cli, "noop", "--reason", "the engineer asked")
    child = submit(cli, "noop", "--parent", str(parent), "--reason", "follow-up")
    shown = cli("show", str(child), "--json").json()
    assert shown["job"]["parent_id"] == parent and shown["job"]["root_id"] == parent
    assert shown["events"][0]["type"] == "submitted"
    why = cli("why", str(child))
    assert why.code == 0
    assert "the engineer asked" in why.out and "follow-up" in why.out
    assert why.out.index(f"job {parent}") < why.out.index(f"job {child}")
    chain = cli("why", str(child), "--json").json()["chain"]
    assert [job["id"] for job in chain] == [parent, child]
    human = cli("show", str(child))
    assert "reason" in human.out and "follow-up" in human.out and "submitted" in human.out


def test_cancel_and_retry_round_trip(daemon_process, cli):
    job = submit(cli, "sleep", "--payload", '{"seconds": 60}')
    cancelled = cli("cancel", str(job), "--json")
    assert cancelled.code == 0 and cancelled.json()["state"] == "cancelled"
    assert cli("wait", str(job), "--timeout", "5").code == 1  # ended, but not done
    again = cli("cancel", str(job))
    assert again.code == 1 and f"cannot cancel job {job}: it is cancelled" in again.err
    retried = cli("retry", str(job), "--json")
    assert retried.code == 0 and retried.json()["state"] == "queued"
    assert cli("cancel", str(job)).code == 0


def test_pause_and_resume_a_lane(daemon_process, cli):
    assert cli("pause", "interactive", "--reason", "lunch").code == 0
    lanes = {lane["name"]: lane for lane in cli("lanes", "--json").json()}
    assert lanes["interactive"]["paused"] is True
    job = submit(cli, "noop")
    timed_out = cli("wait", str(job), "--timeout", "0.5")
    assert timed_out.code == 1 and "timed out" in timed_out.err
    resumed = cli("resume", "interactive")
    assert resumed.code == 0
    assert cli("wait", str(job), "--timeout", "10").code == 0
    human = cli("lanes")
    assert "interactive" in human.out and "open" in human.out


def test_health_reports_the_paths_and_counts(daemon_process, cli, home):
    submit(cli, "noop")
    health = cli("health", "--json").json()
    assert health["status"] == "ok"
    assert health["socket_path"] == str(home / "interlock.sock")
    assert sum(health["jobs"].values()) == 1
    assert "interlock" in cli("health").out


def test_failed_requests_exit_1_with_the_daemons_message(daemon_process, cli):
    missing = cli("show", "4242")
    assert missing.code == 1 and "no job with id 4242" in missing.err
    unknown = cli("submit", "frobnicate")
    assert unknown.code == 1 and "no handler for job kind 'frobnicate'" in unknown.err
    lane = cli("pause", "nope")
    assert lane.code == 1 and "no lane named 'nope'" in lane.err
    for result in (missing, unknown, lane):
        assert "Traceback" not in result.err


def test_usage_errors_exit_2(daemon_process, cli):
    assert cli("show", "abc").code == 2
    assert cli("frobnicate").code == 2
    bad_payload = cli("submit", "noop", "--payload", "{not json")
    assert bad_payload.code == 2 and "--payload is not valid JSON" in bad_payload.err
    not_object = cli("submit", "noop", "--payload", "[1]")
    assert not_object.code == 2 and "JSON object" in not_object.err
    bad_state = cli("ls", "--state", "sleepy")
    assert bad_state.code == 2 and "--state must be one of" in bad_state.err


def test_daemon_not_running_names_the_socket(home: Path):
    done = run_cli(home, "ls")
    assert done.code == 1
    assert "not running" in done.err and str(home / "interlock.sock") in done.err
    assert "Traceback" not in done.err


def test_second_daemon_on_the_same_home_refuses_to_start(daemon_process, make_daemon):
    second = make_daemon()
    try:
        second.start(timeout=5)
    except AssertionError as exc:
        assert "already uses" in str(exc)
    else:
        raise AssertionError("a second daemon started on the same state folder")


def test_wait_reports_a_lost_daemon_without_a_traceback(daemon_process, home):
    job = submit_sleep(home)
    waiter = subprocess.Popen(
        [sys.executable, "-m", "interlock", "wait", str(job)],
        env=base_env(home, home / "interlock.toml"),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    time.sleep(1.0)  # let the waiter connect and subscribe (a real process, real time)
    daemon_process.kill()
    _, err = waiter.communicate(timeout=20)
    assert waiter.returncode == 1
    assert "lost the connection" in err and "Traceback" not in err


def submit_sleep(home: Path) -> int:
    done = run_cli(home, "submit", "sleep", "--payload", '{"seconds": 60}', "--json")
    assert done.code == 0, done.err
    return int(done.json()["id"])


def test_limit_out_of_range_is_a_usage_error(daemon_process, cli):
    for bad in ("0", "20000", "x"):
        done = cli("ls", "--limit", bad)
        assert done.code == 2 and "Traceback" not in done.err


def test_wait_ends_when_its_subscription_overflows(make_daemon, home):
    daemon_process = make_daemon("[server]\nsubscriber_queue = 1\n").start()
    job = run_cli(
        home, "submit", "sleep", "--payload", '{"seconds": 0, "fail": "x"}', "--json"
    ).json()["id"]
    waited = run_cli(home, "wait", str(job), "--timeout", "20")
    # Either it saw the end, or it was told it fell behind; it never waits out the timeout.
    assert waited.code == 1
    assert "timed out" not in waited.err
    daemon_process.terminate()


def test_a_corrupt_store_stops_the_daemon_with_a_message(make_daemon, home):
    (home / "interlock.db").write_bytes(b"this is not a database" * 1000)
    daemon_process = make_daemon()
    try:
        daemon_process.start(timeout=15)
    except AssertionError as exc:
        assert "cannot open the store" in str(exc)
        assert daemon_process.process is not None and daemon_process.process.returncode == 1
    else:
        raise AssertionError("the daemon started on a corrupt store")


def test_tick_runs_a_timer_by_hand_and_stalls_lists_nothing_when_healthy(make_daemon, home):
    make_daemon(timers=True).start()
    ticked = run_cli(home, "tick", "stalls", "--json")
    assert ticked.code == 0, ticked.err
    job = ticked.json()["id"]
    assert run_cli(home, "wait", str(job), "--timeout", "20").code == 0
    assert "run by hand" in run_cli(home, "show", str(job)).out
    unknown = run_cli(home, "tick", "nope")
    assert unknown.code == 1 and "no timer named 'nope'" in unknown.err
    stalls = run_cli(home, "stalls", "--json").json()
    assert stalls == {"expired": [], "waiting": [], "recent": []}
