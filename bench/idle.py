"""Idle overhead: the daemon with every default timer and no feature work, CPU over a window.

Starts `interlock daemon` on the embedded defaults under a temporary home,
lets it settle, then reads the process's CPU time (user + system, from
/proc/PID/stat) at the start and end of the window, and prints the share of
one core it used, and how many maintenance jobs ran meanwhile. A benchmark,
not a test: it prints figures and asserts nothing.

    .venv/bin/python bench/idle.py [--seconds 60]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    ticks = int(fields[11]) + int(fields[12])  # utime, stime
    return ticks / os.sysconf("SC_CLK_TCK")


def cli(env: dict[str, str], *args: str) -> str:
    done = subprocess.run(
        [sys.executable, "-m", "interlock", *args], env=env, capture_output=True, text=True
    )
    return done.stdout


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seconds", type=float, default=60.0, help="the measured window")
    parser.add_argument("--settle", type=float, default=5.0, help="seconds before measuring")
    args = parser.parse_args()
    home = Path(tempfile.mkdtemp(prefix="ili.", dir="/tmp"))
    env = {k: v for k, v in os.environ.items() if not k.startswith(("INTERLOCK_", "NOTIFY_"))}
    env["INTERLOCK_HOME"] = str(home)
    daemon = subprocess.Popen(
        [sys.executable, "-m", "interlock", "daemon"],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        deadline = time.monotonic() + 30
        while not (home / "interlock.sock").exists():
            if time.monotonic() > deadline or daemon.poll() is not None:
                raise SystemExit("the daemon did not start")
            time.sleep(0.05)
        time.sleep(args.settle)
        jobs_before = len(json.loads(cli(env, "ls", "--json", "--limit", "10000")))
        cpu_start, wall_start = cpu_seconds(daemon.pid), time.monotonic()
        time.sleep(args.seconds)
        cpu_end, wall_end = cpu_seconds(daemon.pid), time.monotonic()
        jobs = json.loads(cli(env, "ls", "--json", "--limit", "10000"))
        ran = len(jobs) - jobs_before
        kinds = sorted({job["kind"] for job in jobs})
    finally:
        daemon.terminate()
        daemon.wait(timeout=30)
        shutil.rmtree(home, ignore_errors=True)
    share = (cpu_end - cpu_start) / (wall_end - wall_start)
    print(f"idle daemon, default timers ({', '.join(kinds)})")
    print(f"  window          {wall_end - wall_start:.1f} s")
    print(f"  CPU used        {cpu_end - cpu_start:.3f} s")
    print(f"  share of a core {share * 100:.2f} %")
    print(f"  maintenance jobs run in the window: {ran}")


if __name__ == "__main__":
    main()
