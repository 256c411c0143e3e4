"""Near-duplicate trajectories within a repo, by Jaccard similarity of their action sequences (as CWM does).

An action is its tool plus its arguments with whitespace collapsed; a trajectory's set of actions is
compared to every kept trajectory of the same repo. Kept first: solved over unsolved, then shorter.
Dropped records are moved aside (never deleted), so a dedupe can be undone by moving them back.
"""

from __future__ import annotations

import json
import os
import re
from collections import defaultdict
from pathlib import Path

from forager.models import Trajectory
from forager.trajectories.store import TrajectoryStore

DEFAULT_THRESHOLD = 0.9


def action_set(traj: Trajectory) -> frozenset[str]:
    return frozenset(f"{s.action.tool}:{_squash(json.dumps(s.action.arguments, sort_keys=True))}"
                     for s in traj.steps if s.action.tool)


def _squash(text: str) -> str:
    return re.sub(r"\s+", " ", text).strip()


def jaccard(a: frozenset[str], b: frozenset[str]) -> float:
    if not a and not b:
        return 1.0
    return len(a & b) / len(a | b)


def near_duplicates(trajectories: list[Trajectory], threshold: float = DEFAULT_THRESHOLD) -> list[tuple[str, str, float]]:
    """(dropped id, the kept id it duplicates, similarity) for every drop, repo by repo."""
    if not 0.0 < threshold <= 1.0:
        raise ValueError(f"threshold must be in (0, 1], got {threshold}")
    by_repo: dict[str, list[Trajectory]] = defaultdict(list)
    for t in trajectories:
        by_repo[t.repo].append(t)
    drops: list[tuple[str, str, float]] = []
    for repo_trajs in by_repo.values():
        repo_trajs.sort(key=lambda t: (-t.result.reward, len(t.steps), t.id))
        kept: list[tuple[str, frozenset[str]]] = []
        for t in repo_trajs:
            actions = action_set(t)
            match = None
            for kid, kactions in kept:
                small, big = sorted((len(actions), len(kactions)))
                if big and small / big < threshold:  # Jaccard can't reach the threshold: skip the set maths
                    continue
                sim = jaccard(actions, kactions)
                if sim >= threshold:
                    match = (kid, sim)
                    break
            if match:
                drops.append((t.id, match[0], round(match[1], 4)))
            else:
                kept.append((t.id, actions))
    return drops


def dedupe_store(store: TrajectoryStore, dropped_dir: str | Path, threshold: float = DEFAULT_THRESHOLD,
                 dry_run: bool = False) -> dict:
    trajectories = list(store.iter())
    drops = near_duplicates(trajectories, threshold)
    if not dry_run:
        by_id = {t.id: t for t in trajectories}
        for tid, _, _ in drops:
            src = store.path_for(by_id[tid])
            dst = Path(dropped_dir) / src.parent.name / src.name
            dst.parent.mkdir(parents=True, exist_ok=True)
            os.replace(src, dst)
    return {"total": len(trajectories), "dropped": len(drops), "kept": len(trajectories) - len(drops),
            "threshold": threshold, "dry_run": dry_run,
            "drops": [{"id": d, "duplicate_of": k, "similarity": s} for d, k, s in drops]}
