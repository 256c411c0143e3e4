"""Tasks on disk: one JSONL file per repo under $FORAGER_HOME/tasks/, appended with forager.jsonl."""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path

from pydantic import ValidationError

from forager import jsonl
from forager.errors import UsageError
from forager.models import Task


def tasks_path(tasks_dir: Path, repo: str) -> Path:
    return Path(tasks_dir) / f"{repo}.jsonl"


def append_tasks(path: Path, tasks: Iterable[Task]) -> None:
    jsonl.append(path, (t.model_dump(mode="json") for t in tasks))


def task_files(path_or_dir: str | Path) -> list[Path]:
    path = Path(path_or_dir)
    if path.is_dir():
        return sorted(p for p in path.glob("*.jsonl") if not p.name.endswith(".candidates.jsonl")
                      and not p.name.endswith(".mined.jsonl"))
    return [path]


def load_tasks(path_or_dir: str | Path) -> list[Task]:
    """Tasks from one JSONL file or every task file in a directory; the last record of an id wins.

    A torn or invalid line (a crash mid-append, a hand edit) is skipped, never fatal.
    """
    by_id: dict[str, Task] = {}
    for f in task_files(path_or_dir):
        for obj in jsonl.objects(f):
            try:
                task = Task.model_validate(obj)
            except ValidationError:
                continue
            by_id[task.id] = task
    return list(by_id.values())


def find_task(path_or_dir: str | Path, task_id: str) -> Task:
    for task in load_tasks(path_or_dir):
        if task.id == task_id:
            return task
    raise UsageError(f"no task {task_id!r} in {path_or_dir}")
