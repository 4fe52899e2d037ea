"""interlock: a control plane for AI-agent work on one workstation."""

__version__ = "0.1.0"
