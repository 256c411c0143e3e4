"""The trajectory store: one JSONL record per episode, written atomically, at most one copy per id.

Layout: $FORAGER_HOME/trajectories/<repo>/<trajectory id>.jsonl, one line each. A record is written to
a temp file in the same directory, fsynced, then os.replace'd over its final name, so a crash leaves
either the old record or the new one, never half a line; and because the file name is the id (derived
from task, attempt, policy and model), a retried job overwrites its own record instead of adding one.
Many workers on one host can write concurrently without locks.
"""

from __future__ import annotations

import hashlib
import os
import re
import tempfile
from collections.abc import Iterator
from pathlib import Path

from pydantic import ValidationError

from forager.models import Trajectory

SUFFIX = ".jsonl"


def trajectory_id(task_id: str, attempt: int, policy: str, model: str | None) -> str:
    """Stable id of one episode: same (task, attempt, policy, model) → same id, file-name safe."""
    raw = f"{task_id}\x00{attempt}\x00{policy}\x00{model or ''}"
    readable = re.sub(r"[^A-Za-z0-9._-]+", "-", f"{task_id}__{policy}{'-' + model if model else ''}__a{attempt}")
    return f"{readable[:150]}__{hashlib.sha1(raw.encode()).hexdigest()[:8]}"


def _safe(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]+", "-", name) or "_"


class TrajectoryStore:
    def __init__(self, root: str | Path):
        self.root = Path(root)

    def path_for(self, traj: Trajectory) -> Path:
        return self.root / _safe(traj.repo) / f"{traj.id}{SUFFIX}"

    def write(self, traj: Trajectory) -> Path:
        path = self.path_for(traj)
        path.parent.mkdir(parents=True, exist_ok=True)
        line = traj.model_dump_json() + "\n"
        fd, tmp = tempfile.mkstemp(prefix=".tmp-", suffix=SUFFIX, dir=path.parent)
        try:
            with os.fdopen(fd, "w", encoding="utf-8") as fh:
                fh.write(line)
                fh.flush()
                os.fsync(fh.fileno())
            # the same id may already sit under another repo dir only if the repo name changed: keep one copy
            for other in self._paths(traj.id):
                if other != path:
                    other.unlink(missing_ok=True)
            os.replace(tmp, path)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise
        dir_fd = os.open(path.parent, os.O_RDONLY)
        try:
            os.fsync(dir_fd)  # make the rename itself durable
        finally:
            os.close(dir_fd)
        return path

    def _paths(self, traj_id: str) -> list[Path]:
        if not self.root.exists():
            return []
        return [p for p in self.root.glob(f"*/{traj_id}{SUFFIX}")]

    def exists(self, traj_id: str) -> bool:
        return bool(self._paths(traj_id))

    def read(self, traj_id: str) -> Trajectory:
        paths = self._paths(traj_id)
        if not paths:
            raise KeyError(f"no trajectory {traj_id!r} in {self.root}")
        return Trajectory.model_validate_json(paths[0].read_text(encoding="utf-8").strip())

    def files(self, repo: str | None = None) -> list[Path]:
        if not self.root.exists():
            return []
        pattern = f"{_safe(repo)}/*{SUFFIX}" if repo else f"*/*{SUFFIX}"
        return sorted(p for p in self.root.glob(pattern) if not p.name.startswith(".tmp-"))

    def iter(self, repo: str | None = None) -> Iterator[Trajectory]:
        """Every valid record (an unreadable file is skipped: it is reported by `problems()`)."""
        for path in self.files(repo):
            try:
                yield Trajectory.model_validate_json(path.read_text(encoding="utf-8").strip())
            except (ValidationError, ValueError, OSError):
                continue

    def problems(self) -> list[str]:
        bad = []
        for path in self.files():
            try:
                Trajectory.model_validate_json(path.read_text(encoding="utf-8").strip())
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
