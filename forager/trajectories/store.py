"""The trajectory store: one JSONL record per episode, written atomically, at most one copy per id.

Layout: $FORAGER_HOME/trajectories/<repo>/<trajectory id>.jsonl, one line each, written with
forager.jsonl's replace (temp file, fsync, rename, fsync the directory): a crash leaves either the old
record or the new one, never half a line. The file name is the id (derived from task, attempt, policy
and model), so a retried job overwrites its own record instead of adding one, and many workers on one
host write concurrently without locks.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterator
from pathlib import Path

from pydantic import ValidationError

from forager import jsonl
from forager.config import safe_name
from forager.models import Trajectory

SUFFIX = ".jsonl"


def trajectory_id(task_id: str, attempt: int, policy: str, model: str | None, branch: str | None = None) -> str:
    """Stable id of one episode: same (task, attempt, policy, model[, branch]) → same id, file-name safe."""
    raw = f"{task_id}\x00{attempt}\x00{policy}\x00{model or ''}" + (f"\x00{branch}" if branch else "")
    readable = safe_name(f"{task_id}__{policy}{'-' + model if model else ''}__a{attempt}"
                         + (f"__{branch}" if branch else ""), 150)
    return f"{readable}__{hashlib.sha1(raw.encode()).hexdigest()[:8]}"


class TrajectoryStore:
    def __init__(self, root: str | Path):
        self.root = Path(root)

    def path_for(self, traj: Trajectory) -> Path:
        return self.root / safe_name(traj.repo) / f"{traj.id}{SUFFIX}"

    def write(self, traj: Trajectory) -> Path:
        path = self.path_for(traj)
        # the same id may already sit under another repo dir only if the repo name changed: keep one copy
        for other in self._paths(traj.id):
            if other != path:
                other.unlink(missing_ok=True)
        jsonl.replace(path, [traj])
        return path

    def _paths(self, traj_id: str) -> list[Path]:
        if not self.root.exists():
            return []
        return list(self.root.glob(f"*/{traj_id}{SUFFIX}"))

    def exists(self, traj_id: str) -> bool:
        return bool(self._paths(traj_id))

    def read(self, traj_id: str) -> Trajectory:
        paths = self._paths(traj_id)
        if not paths:
            raise KeyError(f"no trajectory {traj_id!r} in {self.root}")
        return self.load(paths[0])

    @staticmethod
    def load(path: Path) -> Trajectory:
        return Trajectory.model_validate_json(path.read_text(encoding="utf-8").strip())

    def files(self, repo: str | None = None) -> list[Path]:
        if not self.root.exists():
            return []
        pattern = f"{safe_name(repo)}/*{SUFFIX}" if repo else f"*/*{SUFFIX}"
        return sorted(p for p in self.root.glob(pattern) if not p.name.startswith("."))

    def iter(self, repo: str | None = None) -> Iterator[Trajectory]:
        """Every valid record (an unreadable file is skipped: it is reported by `problems()`)."""
        for path in self.files(repo):
            try:
                yield self.load(path)
            except (ValidationError, ValueError, OSError):
                continue

    def problems(self) -> list[str]:
        bad = []
        for path in self.files():
            try:
                self.load(path)
            except (ValidationError, ValueError, OSError) as exc:
                bad.append(f"{path}: {str(exc).splitlines()[0]}")
        return bad

    def count(self, repo: str | None = None) -> int:
        return len(self.files(repo))

    def delete(self, traj_id: str) -> bool:
        paths = self._paths(traj_id)
        for p in paths:
            p.unlink(missing_ok=True)
        return bool(paths)
