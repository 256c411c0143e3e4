"""The tasks an interface serves, and how a reset picks one: by id, or drawn by a seed (reproducibly)."""

from __future__ import annotations

import random
from pathlib import Path

from forager.errors import UsageError
from forager.models import Task
from forager.tasks.store import load_tasks


class TaskSet:
    """Tasks in a stable order (by id), so the same seed draws the same task on every host."""

    def __init__(self, tasks: list[Task]):
        if not tasks:
            raise UsageError("the task set is empty: make tasks first (`forager tasks synth`, `tasks mine`, "
                             "`tasks import`) or point --tasks at a task file")
        self.tasks = sorted(tasks, key=lambda t: t.id)
        self._by_id = {t.id: t for t in self.tasks}

    @classmethod
    def load(cls, path: str | Path, *, kind: str | None = None, repo: str | None = None) -> "TaskSet":
        """Tasks of a task file or directory (default layout: $FORAGER_HOME/tasks), optionally of one kind/repo."""
        if not Path(path).exists():
            raise UsageError(f"no tasks at {path}")
        tasks = [t for t in load_tasks(path) if (kind is None or t.kind == kind) and (repo is None or t.repo == repo)]
        return cls(tasks)

    def __len__(self) -> int:
        return len(self.tasks)

    def get(self, task_id: str) -> Task:
        task = self._by_id.get(task_id)
        if task is None:
            raise UsageError(f"no task {task_id!r} in this task set ({len(self.tasks)} tasks)")
        return task

    def choose(self, task_id: str | None = None, seed: int | None = None, index: int | None = None) -> Task:
        """The task named, else the one at `index`, else one drawn with `seed` (None: any)."""
        if task_id:
            return self.get(task_id)
        if index is None:
            index = random.Random(seed).randrange(len(self.tasks))
        return self.tasks[index % len(self.tasks)]
