"""Maintenance: timers that submit jobs, and the handlers of the maintenance kinds."""

from __future__ import annotations

from interlock.handlers import HandlerRegistry


def register(registry: HandlerRegistry) -> None:
    """Add every maintenance kind."""
    from interlock.maintenance import aging, gates, governor, inbox, projects, retention
    from interlock.maintenance.health import snapshot
    from interlock.maintenance.stalls import scan

    registry.register("health.snapshot", snapshot)
    registry.register("stalls.scan", scan)
    registry.register(governor.KIND, governor.govern)
    registry.register(projects.KIND, projects.advance)
    registry.register("inbox.scan", inbox.scan)
    registry.register(retention.KIND, retention.retention)
    registry.register(aging.KIND, aging.age)
    registry.register(gates.KIND, gates.reopen)
