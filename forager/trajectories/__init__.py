"""Trajectories: the store (store.py), the one renderer of what the model saw (render.py), training
exports (export.py) and near-duplicate removal (dedupe.py)."""

from forager.trajectories.store import TrajectoryStore, trajectory_id

__all__ = ["TrajectoryStore", "trajectory_id"]
