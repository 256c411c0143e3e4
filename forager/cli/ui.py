"""Terminal output shared by every CLI verb: progress on stderr for people, one JSON document on stdout for
scripts (`--json`), one way to fail, one loop that watches work happen elsewhere."""

from __future__ import annotations

import json
import signal
import sys
import time
from collections.abc import Callable
from typing import Any, NoReturn

import typer

from pydantic import BaseModel
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, SpinnerColumn, TextColumn, TimeElapsedColumn

# Progress and human text go to stderr so `--json` stdout stays machine-readable.
console = Console(stderr=True)


class LineProgress(Progress):
    """Progress for a log file or a CI console: a plain line per task change, at most every few seconds.

    rich draws nothing live when stderr is not a terminal, so a long job would look dead until it
    ends; this keeps the same API and prints `description  done/total  status` lines instead.
    """

    interval = 5.0

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._last_line: dict[Any, tuple[float, str]] = {}

    def update(self, task_id: Any, **kwargs: Any) -> None:  # type: ignore[override]
        super().update(task_id, **kwargs)
        self._log(task_id)

    def advance(self, task_id: Any, advance: float = 1) -> None:
        super().advance(task_id, advance)
        self._log(task_id)

    def _log(self, task_id: Any) -> None:
        if self.disable:
            return
        with self._lock:
            task = self._tasks.get(task_id)
            if task is None:
                return
            total = f"/{int(task.total)}" if task.total is not None else ""
            line = f"{task.description}  {int(task.completed)}{total}  {task.fields.get('status', '')}".rstrip()
            now = time.monotonic()
            last_time, last_line = self._last_line.get(task_id, (0.0, ""))
            finished = task.total is not None and task.completed >= task.total
            if line == last_line or (now - last_time < self.interval and not finished):
                return
            self._last_line[task_id] = (now, line)
        self.console.print(f"[{time.strftime('%H:%M:%S')}] {line}", markup=False, highlight=False)


def progress(disable: bool = False) -> Progress:
    """A progress display on stderr (live bars on a terminal, dated lines in a log). Verbs keep it on
    under --json too: stdout carries the JSON, stderr the progress."""
    cls = Progress if console.is_terminal else LineProgress
    return cls(
        SpinnerColumn(),
        TextColumn("[bold]{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("{task.fields[status]}"),
        TimeElapsedColumn(),
        console=console,
        disable=disable,
        transient=False,
    )


def _plain(obj: Any) -> Any:
    if isinstance(obj, BaseModel):
        return obj.model_dump(mode="json")
    if isinstance(obj, (list, tuple)):
        return [_plain(o) for o in obj]
    if isinstance(obj, dict):
        return {k: _plain(v) for k, v in obj.items()}
    return obj


def print_json(obj: Any) -> None:
    sys.stdout.write(json.dumps(_plain(obj), default=str) + "\n")
    sys.stdout.flush()


def fail(message: str, json_out: bool = False, code: int = 1) -> NoReturn:
    """End the verb: the error on stderr, and as {"ok": false, "error": ...} on stdout under --json."""
    if json_out:
        print_json({"ok": False, "error": message})
    console.print(f"[red]error:[/] {message}", highlight=False)
    raise typer.Exit(code)


def interruptible() -> None:
    """SIGTERM unwinds like Ctrl-C, so every `with` block (sandboxes, services) cleans up on the way out."""

    def raise_interrupt(signum, frame):
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, raise_interrupt)


# (done, total, status line, finished) of whatever is being watched
Poll = Callable[[], tuple[int, int, str, bool]]


def watch(bar: Progress, description: str, poll: Poll, *, interval: float = 1.0, timeout: float | None = None,
          stop_when: Callable[[], bool] | None = None) -> None:
    """Move a bar until `poll` says the work is finished (or `timeout` passes, or `stop_when()` is true)."""
    started = time.monotonic()
    task = bar.add_task(description, total=None, status="")
    while True:
        done, total, status, finished = poll()
        bar.update(task, completed=done, total=max(total, 1), status=status)
        if finished or (timeout is not None and time.monotonic() - started > timeout):
            return
        if stop_when is not None and stop_when():
            return
        time.sleep(interval)
