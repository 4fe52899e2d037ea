"""sd_notify and the watchdog, in a few lines and no dependency (see sd_notify(3))."""

from __future__ import annotations

import os
import socket
from collections.abc import Mapping

# What the service manager passes to the daemon alone: a child that inherited
# these could notify for us, misread our watchdog or socket fds, or read our
# credentials.
MANAGER_ENV = frozenset(
    {
        "NOTIFY_SOCKET",
        "WATCHDOG_USEC",
        "WATCHDOG_PID",
        "LISTEN_PID",
        "LISTEN_FDS",
        "LISTEN_FDNAMES",
        "CREDENTIALS_DIRECTORY",
    }
)


def notify(*fields: str, env: Mapping[str, str] | None = None) -> bool:
    """Send KEY=VALUE fields to the service manager; False when there is none.

    One datagram, fields separated by newlines. A leading '@' names an abstract socket.
    """
    env = os.environ if env is None else env
    address = env.get("NOTIFY_SOCKET")
    if not address or not fields:
        return False
    if address.startswith("@"):
        address = "\0" + address[1:]
    message = "\n".join(fields).encode()
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC) as sock:
        sock.setblocking(False)  # never stall the event loop on a full manager queue
        try:
            sock.connect(address)
            sock.sendall(message)
        except OSError:
            return False  # the manager went away; nothing to tell
    return True


def watchdog_interval(env: Mapping[str, str] | None = None) -> float | None:
    """Seconds between WATCHDOG=1 pings (half of WatchdogSec), or None when no watchdog is set."""
    env = os.environ if env is None else env
    usec = _unsigned(env.get("WATCHDOG_USEC"))
    if not usec:
        return None
    if "WATCHDOG_PID" in env and _unsigned(env["WATCHDOG_PID"]) != os.getpid():
        return None  # meant for another process (or unreadable, as sd_watchdog_enabled says)
    return usec / 2 / 1_000_000


def _unsigned(text: str | None) -> int | None:
    """A plain decimal number, as systemd writes it; int() alone would take ' 1_0 ' or '+1'."""
    if text is None or not (text.isascii() and text.isdecimal()):
        return None
    return int(text)


def clean_child_environment(env: Mapping[str, str]) -> dict[str, str]:
    """The environment without the service manager's variables, for processes we start."""
    return {name: value for name, value in env.items() if name not in MANAGER_ENV}
