"""`forager replay`: re-run trajectories in fresh envs and say which steps print and change the same again."""

from __future__ import annotations

from pathlib import Path

import typer
from pydantic import ValidationError
from rich.table import Table

from envserver.client import EnvClient
from forager.cli.ui import console, fail, print_json, progress
from forager.config import Settings
from forager.episodes.replay import ReplayReport, replay_trajectory, summarize
from forager.models import Task
from forager.tasks.store import load_tasks
from forager.trajectories.store import SUFFIX, TrajectoryStore

app = typer.Typer()


def resolve(target: str, store: TrajectoryStore) -> list[Path]:
    """A trajectory file, a directory of them (searched recursively), or an id in the store."""
    path = Path(target)
    if path.is_dir():
        return sorted(p for p in path.rglob(f"*{SUFFIX}") if not p.name.startswith("."))
    if path.is_file():
        return [path]
    found = store._paths(target)
    if not found:
        raise FileNotFoundError(f"no trajectory {target!r}: not a file, a directory, or an id in {store.root}")
    return found[:1]


@app.command()
def replay(
    target: str = typer.Argument(..., help="a trajectory file, a directory of trajectories, or a trajectory id"),
    tasks_path: Path | None = typer.Option(None, "--tasks", help="task file or dir (default $FORAGER_HOME/tasks)"),
    limit: int | None = typer.Option(None, "--limit", min=1, help="only the first N trajectories"),
    out: Path | None = typer.Option(None, "--out", "-o", help="also write the per-trajectory reports here (JSONL)"),
    json_out: bool = typer.Option(False, "--json"),
) -> None:
    """Replay trajectories in fresh envs of their tasks; report the share of steps that replay identically
    (masked as docs/world.md says) and the actions that do not (the nondeterminism catalog)."""
    settings = Settings.from_env()
    try:
        paths = resolve(target, TrajectoryStore(settings.trajectories_dir))[: limit or None]
    except FileNotFoundError as exc:
        fail(str(exc), json_out)
    if not paths:
        fail(f"no trajectories under {target}", json_out)
    tasks_src = tasks_path or settings.tasks_dir
    tasks: dict[str, Task] = {t.id: t for t in load_tasks(tasks_src)} if Path(tasks_src).exists() else {}
    reports: list[ReplayReport] = []
    with EnvClient(settings.envserver_url, token=settings.envserver_token) as client, progress() as bar:
        bar_id = bar.add_task("replay", total=len(paths), status="")
        for path in paths:
            reports.append(_replay_one(path, tasks, tasks_src, client))
            last = reports[-1]
            bar.update(bar_id, advance=1, status=f"{last.trajectory[:40]}: "
                       + (last.error or f"{last.identical}/{last.steps} identical"))
    summary = summarize(reports)
    if out is not None:
        from forager import jsonl

        jsonl.replace(out, reports)
    result = {"ok": summary["errors"] == 0, **summary, "reports": [_brief(r) for r in reports]}
    if json_out:
        print_json(result)
    else:
        _print(reports, summary)
    if not result["ok"]:
        raise typer.Exit(1)


def _replay_one(path: Path, tasks: dict[str, Task], tasks_src, client) -> ReplayReport:
    try:
        traj = TrajectoryStore.load(path)
    except (ValidationError, ValueError, OSError) as exc:
        return ReplayReport(trajectory=str(path), task_id="?", error=f"unreadable trajectory: {exc}".splitlines()[0])
    task = tasks.get(traj.task_id)
    if task is None:
        return ReplayReport(trajectory=traj.id, task_id=traj.task_id,
                            error=f"its task {traj.task_id!r} is not in {tasks_src}")
    return replay_trajectory(traj, task, client)


def _brief(r: ReplayReport) -> dict:
    return {"trajectory": r.trajectory, "task_id": r.task_id, "steps": r.steps, "identical": r.identical,
            "share": round(r.share, 4), "digests_compared": r.digests_compared, "error": r.error,
            "seconds": r.seconds, "differing": [d.model_dump() for d in r.differing]}


def _print(reports: list[ReplayReport], summary: dict) -> None:
    table = Table("trajectory", "steps", "identical", "share", "digests", "note")
    for r in reports:
        table.add_row(r.trajectory[:60], str(r.steps), str(r.identical), f"{r.share:.0%}", str(r.digests_compared),
                      r.error or (f"{len(r.differing)} differ" if r.differing else ""))
    console.print(table)
    console.print(f"collection: {summary['identical']}/{summary['steps']} steps identical ({summary['share']:.2%}); "
                  f"{summary['trajectories_identical']}/{summary['trajectories']} trajectories wholly identical; "
                  f"{summary['errors']} could not be replayed")
    if summary["catalog"]:
        catalog = Table("action that did not replay", "times", "example (recorded | replayed)")
        for c in summary["catalog"][:30]:
            catalog.add_row(c["action"][:70], str(c["count"]), c["example"][:120])
        console.print(catalog)
