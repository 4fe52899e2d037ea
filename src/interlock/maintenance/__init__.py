"""Maintenance: timers that submit jobs, and the kinds that keep the daemon coherent."""

from __future__ import annotations

from interlock.handlers.registry import KindRegistry
from interlock.maintenance import (
    aging,
    gates,
    governor,
    health,
    inbox,
    projects,
    retention,
    stalls,
)


def register(registry: KindRegistry) -> None:
    """Add every maintenance kind, with the probe that tells its timer whether it has work."""
    registry.register_maintenance(health.KIND, health.snapshot)
    registry.register_maintenance(stalls.KIND, stalls.scan, stalls.due)
    registry.register_maintenance(governor.KIND, governor.govern, governor.due)
    registry.register_maintenance(projects.KIND, projects.advance, projects.due)
    registry.register_maintenance("inbox.scan", inbox.scan, inbox.due)
    registry.register_maintenance(retention.KIND, retention.retention, retention.due)
    registry.register_maintenance(aging.KIND, aging.age, aging.due)
    registry.register_maintenance(gates.KIND, gates.reopen, gates.due)
