"""Trajectory verbs: `forager episode` (one episode, here), `forager export` (training formats), `forager dedupe`."""

from __future__ import annotations

from pathlib import Path

import typer

from envserver.client import EnvClient
from forager.cli.fleet import make_policy_config
from forager.cli.ui import console, fail, print_json, progress
from forager.config import Settings
from forager.episodes.loop import run_episode
from forager.episodes.policies import POLICY_NAMES
from forager.errors import ForagerError
from forager.interfaces.parquet import export_dataset
from forager.tasks.store import find_task, load_tasks
from forager.tasks.swebench import instance_records
from forager.trace.export import export_traces, trace_rows
from forager.trajectories.dedupe import dedupe_store
from forager.trajectories.export import FORMATS, TREE_MODES, export_trajectories
from forager.trajectories.export import records as trajectory_records
from forager.trajectories.store import TrajectoryStore
from images.catalog import load_catalog

app = typer.Typer()


@app.command()
def episode(
    task_id: str = typer.Argument(..., help="a task id (see `forager tasks list`)"),
    policy: str = typer.Option("oracle", "--policy", "-p", help=" | ".join(POLICY_NAMES)),
    model: str | None = typer.Option(None, "--model", help="model for the openai policy (default FORAGER_MODEL)"),
    protocol: str | None = typer.Option(None, "--protocol", help="openai: tools (function calling) | text (CWM tags)"),
    policy_param: list[str] = typer.Option([], "--policy-param", help="KEY=VALUE passed to the policy (JSON values)"),
    attempt: int = typer.Option(0, "--attempt", min=0),
    max_turns: int = typer.Option(30, "--max-turns", min=1),
    max_tokens: int | None = typer.Option(None, "--max-tokens", min=1, help="context budget in tokens"),
    wall_clock: float = typer.Option(1800, "--wall-clock", min=1, help="seconds"),
    tasks_path: Path | None = typer.Option(None, "--tasks", help="task file or dir (default $FORAGER_HOME/tasks)"),
    json_out: bool = typer.Option(False, "--json"),
) -> None:
    """Run one task with a policy against the env server; the trajectory goes to the store."""
    settings = Settings.from_env()
    try:
        task = find_task(tasks_path or settings.tasks_dir, task_id)
    except ForagerError as exc:
        fail(str(exc), json_out)
    params = list(policy_param) + ([f"protocol={protocol}"] if protocol and policy == "openai" else [])
    pol = make_policy_config(policy, model, params, settings, json_out).make(settings)
    with EnvClient(settings.envserver_url, token=settings.envserver_token) as client:
        with progress() as bar:
            t = bar.add_task(f"episode {task.id}", total=max_turns, status=policy)

            class _Watch:  # advance the bar once per turn without touching the loop
                info = pol.info

                def next_action(self, ep):
                    bar.update(t, completed=len(ep.steps), status=f"turn {len(ep.steps) + 1}")
                    return pol.next_action(ep)

            traj = run_episode(task, _Watch(), client, attempt=attempt, max_turns=max_turns,
                               max_tokens=max_tokens, wall_clock=wall_clock)
            bar.update(t, completed=len(traj.steps), status=traj.exit_reason)
    path = TrajectoryStore(settings.trajectories_dir).write(traj)
    summary = {"ok": traj.exit_reason != "infra_error", "trajectory": traj.id, "path": str(path),
               "exit_reason": traj.exit_reason, "reward": traj.result.reward, "steps": len(traj.steps),
               "error": traj.error}
    if json_out:
        print_json(summary)
    else:
        console.print(f"{traj.id}: {traj.exit_reason}, reward {traj.result.reward}, {len(traj.steps)} steps → {path}")
    if traj.exit_reason == "infra_error":
        raise typer.Exit(1)


@app.command()
def export(
    fmt: str = typer.Option(..., "--format", "-f", help="cwm | chat | cwm-trace | parquet"),
    out: Path = typer.Option(..., "--out", "-o", help="output JSONL file (parquet: a dataset directory)"),
    min_reward: float | None = typer.Option(None, "--min-reward", help="only trajectories with reward ≥ this"),
    repo: str | None = typer.Option(None, "--repo"),
    source: Path | None = typer.Option(None, "--from", help="input dir (default: the trajectory or trace store)"),
    with_state: bool = typer.Option(False, "--with-state", help="add each step's state record as its own field"),
    tree: str = typer.Option("episodes", "--tree", help="episodes (one record per trajectory) | triples "
                             "((state, action) -> observation per step; branches share their state)"),
    records: str = typer.Option("chat", "--records", help="parquet: the trajectory records, chat | cwm"),
    json_out: bool = typer.Option(False, "--json"),
) -> None:
    """Export trajectories as CWM text or chat messages (SFT), traces in CWM's trace format, or all of it with the
    tasks as a Parquet dataset for the hub (`--format parquet`: shards and a dataset card)."""
    if fmt not in (*FORMATS, "parquet"):
        fail(f"unknown format {fmt!r}: use {', '.join(FORMATS)}, parquet", json_out)
    if tree not in TREE_MODES:
        fail(f"unknown tree mode {tree!r}: use {' or '.join(TREE_MODES)}", json_out)
    if fmt == "parquet" and records not in ("chat", "cwm"):
        fail(f"unknown --records {records!r}: use chat or cwm", json_out)
    settings = Settings.from_env()
    if source is not None and fmt != "cwm-trace" and not source.is_dir():
        fail(f"no trajectory store at {source}", json_out)
    with progress() as bar:
        t = bar.add_task(f"export {fmt}", total=None, status=str(out))
        if fmt == "parquet":
            res = parquet_export(settings, out, records, source, repo, min_reward, with_state, tree,
                                 lambda name, n: bar.update(t, status=f"{name}: {n} rows"))
        elif fmt == "cwm-trace":
            src = source or settings.traces_dir
            if not src.exists():
                fail(f"no traces at {src}", json_out)
            res = {"format": "cwm-trace", **export_traces(src, out)}
        else:
            store = TrajectoryStore(source or settings.trajectories_dir)
            res = export_trajectories(store.iter(repo), fmt, out, min_reward=min_reward, with_state=with_state,
                                      tree=tree)
        bar.update(t, total=1, completed=1, status=f"{res['written']} written")
    if json_out:
        print_json({"ok": True, **res})
    else:
        console.print(f"{res['written']} records → {out}")


def parquet_export(settings: Settings, out: Path, fmt: str, source: Path | None, repo: str | None,
                   min_reward: float | None, with_state: bool, tree: str, on_part) -> dict:
    """Trajectories (as `fmt` records), tasks (SWE-bench records) and traces (cwm-trace records) as one dataset."""
    store = TrajectoryStore(source or settings.trajectories_dir)
    tasks = [t for t in load_tasks(settings.tasks_dir) if not repo or t.repo == repo] if settings.tasks_dir.exists() else []
    catalog = load_catalog(settings.catalog_path) if settings.catalog_path.exists() else {}
    problems: list[str] = []
    parts = {
        "trajectories": lambda: trajectory_records(store.iter(repo), fmt, min_reward=min_reward, with_state=with_state,
                                                   tree=tree),
        "tasks": lambda: instance_records(tasks, catalog),
        "traces": lambda: trace_rows(settings.traces_dir, problems) if settings.traces_dir.exists() else [],
    }
    how = f"forager export --format parquet --records {fmt} --tree {tree}" + (" --with-state" if with_state else "")
    counts = export_dataset(parts, out, how=how, on_part=on_part)
    return {"format": "parquet", "records": fmt, "tree": tree, "rows": counts, "written": sum(counts.values()),
            "bad_lines": sorted(set(problems)), "out": str(out)}


@app.command()
def dedupe(
    threshold: float = typer.Option(0.9, "--threshold", min=0.01, max=1.0, help="Jaccard similarity of action sets"),
    dry_run: bool = typer.Option(False, "--dry-run", help="report, move nothing"),
    json_out: bool = typer.Option(False, "--json"),
) -> None:
    """Drop near-duplicate trajectories within each repo (moved to $FORAGER_HOME/trajectories_dropped)."""
    settings = Settings.from_env()
    store = TrajectoryStore(settings.trajectories_dir)
    with progress() as bar:
        t = bar.add_task("dedupe", total=None, status=f"threshold {threshold}")
        res = dedupe_store(store, settings.home / "trajectories_dropped", threshold, dry_run=dry_run)
        bar.update(t, total=1, completed=1, status=f"{res['dropped']} dropped")
    if json_out:
        print_json({"ok": True, **res})
    else:
        console.print(f"{res['dropped']} of {res['total']} dropped (threshold {threshold})"
                      + (" [dry run]" if dry_run else ""))
