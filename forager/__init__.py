"""Forager: executable repository environments and agent trajectories."""

__version__ = "0.1.0"
