"""Tasks on disk: one JSONL file per repo under $FORAGER_HOME/tasks/, appended one fsynced line at a time."""

from __future__ import annotations

import json
import os
from collections.abc import Iterable
from pathlib import Path

from pydantic import ValidationError

from forager.models import Task


def tasks_path(tasks_dir: Path, repo: str) -> Path:
    return Path(tasks_dir) / f"{repo}.jsonl"


def append_jsonl(path: Path, rows: Iterable[dict]) -> None:
    """Append whole lines and fsync, so a crash leaves at most one torn last line (skipped on read)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a", encoding="utf-8") as fh:
        for row in rows:
            fh.write(json.dumps(row, separators=(",", ":")) + "\n")
        fh.flush()
        os.fsync(fh.fileno())


def read_jsonl(path: Path) -> Iterable[tuple[int, dict | None, str]]:
    """(line number, parsed object or None if the line is not valid JSON, raw line)."""
    with open(path, encoding="utf-8") as fh:
        for n, line in enumerate(fh, 1):
            if not line.strip():
                continue
            try:
                obj = json.loads(line)
            except json.JSONDecodeError:
                yield n, None, line
                continue
            yield n, obj if isinstance(obj, dict) else None, line


def append_tasks(path: Path, tasks: Iterable[Task]) -> None:
    append_jsonl(path, (t.model_dump(mode="json") for t in tasks))


def load_tasks(path_or_dir: str | Path) -> list[Task]:
    """Tasks from one JSONL file or every *.jsonl task file in a directory; the last record of an id wins.

    A torn or invalid line (a crash mid-append, a hand edit) is skipped, never fatal.
    """
    path = Path(path_or_dir)
    files = sorted(p for p in path.glob("*.jsonl") if not p.name.endswith(".candidates.jsonl")) if path.is_dir() else [path]
    by_id: dict[str, Task] = {}
    for f in files:
        if not f.exists():
            continue
        for _, obj, _ in read_jsonl(f):
            if obj is None:
                continue
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
    raise KeyError(f"no task {task_id!r} in {path_or_dir}")
