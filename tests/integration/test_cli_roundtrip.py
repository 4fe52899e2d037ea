"""The CLI against a real daemon subprocess: every command, human and --json."""

from __future__ import annotations


def test_submit_then_wait_reports_done(daemon, cli):
    submitted = cli("submit", "noop", "--reason", "smoke test", "--json")
    assert submitted.code == 0, submitted.err
    body = submitted.json()
    assert body["duplicate"] is False
    waited = cli("wait", str(body["id"]), "--timeout", "10", "--json")
    assert waited.code == 0, waited.err
    assert waited.json()["state"] == "done"
