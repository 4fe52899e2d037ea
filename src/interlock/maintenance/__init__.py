"""Maintenance: timers that submit jobs, and the handlers of the maintenance kinds."""

from __future__ import annotations

from interlock.handlers import HandlerRegistry


def register(registry: HandlerRegistry) -> None:
    """Add every maintenance kind."""
    from interlock.maintenance.health import snapshot
    from interlock.maintenance.stalls import scan

    registry.register("health.snapshot", snapshot)
    registry.register("stalls.scan", scan)
