"""Verbs for other trainers' and harnesses' formats: `forager openenv` (an OpenEnv server over Forager's tasks)
and `forager evaluate` (SWE-bench predictions graded as submits)."""

from __future__ import annotations

import threading
import time
from pathlib import Path

import typer
import uvicorn

from envserver.client import EnvClient
from forager.cli.mining import env_grader
from forager.cli.ui import console, fail, print_json, progress
from forager.config import Settings
from forager.errors import ForagerError
from forager.interfaces.evaluate import Evaluation, read_predictions
from forager.interfaces.openenv import OpenEnvServer
from forager.interfaces.openenv_app import create_app
from forager.interfaces.taskset import TaskSet
from forager.tasks.store import load_tasks
from forager.trajectories.store import TrajectoryStore

app = typer.Typer()
LOOPBACK = {"127.0.0.1", "localhost", "::1"}


@app.command()
def openenv(
    host: str = typer.Option("127.0.0.1", help="bind address; anything but loopback needs --token-file"),
    port: int = typer.Option(8000, help="OpenEnv's usual port"),
    tasks: Path | None = typer.Option(None, "--tasks", help="task file or dir (default $FORAGER_HOME/tasks)"),
    kind: str | None = typer.Option(None, "--kind", help="only tasks of this kind (mutate-fix | issue-fix)"),
    repo: str | None = typer.Option(None, "--repo", help="only this repository's tasks"),
    max_sessions: int = typer.Option(32, "--max-sessions", min=1, help="sessions (envs) at once; more are refused"),
    session_timeout: float = typer.Option(600.0, "--session-timeout", min=1, help="s a session may idle before its env goes"),
    max_turns: int = typer.Option(100, "--max-turns", min=1, help="steps before an episode ends unsubmitted (reward 0)"),
    out: Path | None = typer.Option(None, "--out", help="trajectory store (default $FORAGER_HOME/trajectories)"),
    token_file: Path | None = typer.Option(None, "--token-file", help="clients must send `Authorization: Bearer` it"),
    json_out: bool = typer.Option(False, "--json", help="one JSON line on stdout once serving"),
) -> None:
    """Serve Forager's tasks over OpenEnv's API (reset/step/state over HTTP and WebSocket, MCP tool listing);
    every episode is recorded as a trajectory."""
    settings = Settings.from_env()
    token = token_file.read_text().strip() if token_file else None
    if token_file and not token:
        fail(f"{token_file} is empty", json_out)
    if host not in LOOPBACK and not token:
        fail(f"--host {host} is not loopback: give --token-file so only your clients can make envs", json_out)
    try:
        task_set = TaskSet.load(tasks or settings.tasks_dir, kind=kind, repo=repo)
    except ForagerError as exc:
        fail(str(exc), json_out)
    store = TrajectoryStore(out or settings.trajectories_dir)
    with env_grader(settings, log=lambda m: console.print(f"[cyan]openenv[/] {m}")) as client:
        server = OpenEnvServer(task_set, client, store, max_sessions=max_sessions, session_timeout=session_timeout,
                               max_turns=max_turns, token=token)
        config = uvicorn.Config(create_app(server), host=host, port=port, log_level="warning",
                                ws_ping_interval=20, ws_ping_timeout=20)
        web = uvicorn.Server(config)
        url = f"http://{host}:{port}"

        def announce() -> None:  # once the socket is bound, not before
            while not web.started and not web.should_exit:
                time.sleep(0.05)
            if web.started:
                console.print(f"[cyan]openenv[/] serving {len(task_set)} tasks at {url} (ws: {url.replace('http', 'ws')}"
                              f"/ws, up to {max_sessions} sessions); trajectories -> {store.root}")
                if json_out:
                    print_json({"ok": True, "url": url, "tasks": len(task_set), "max_sessions": max_sessions,
                                "trajectories": str(store.root), "envserver": client.url})

        threading.Thread(target=announce, daemon=True).start()
        web.run()
    if not web.started:
        fail(f"could not serve on {host}:{port} (port taken?)", json_out)


@app.command()
def evaluate(
    predictions: Path = typer.Argument(..., help="SWE-bench predictions: JSON (list or {id: prediction}) or JSONL"),
    tasks: Path | None = typer.Option(None, "--tasks", help="task file or dir (default $FORAGER_HOME/tasks)"),
    run_id: str | None = typer.Option(None, "--run-id", help="names the run (default: the predictions file's name)"),
    jobs: int = typer.Option(4, "-j", "--jobs", min=1, help="gradings at once"),
    out: Path | None = typer.Option(None, "--out", help="run directory (default $FORAGER_HOME/evaluations/RUN_ID)"),
    json_out: bool = typer.Option(False, "--json", help="print the report as one JSON document"),
) -> None:
    """Grade each prediction in a fresh container of its task, exactly as a submit is; resumable; SWE-bench's report."""
    settings = Settings.from_env()
    if not (tasks or settings.tasks_dir).exists():
        fail(f"no tasks at {tasks or settings.tasks_dir} (--tasks, or FORAGER_HOME)", json_out)
    try:
        preds, problems = read_predictions(predictions)
        task_list = load_tasks(tasks or settings.tasks_dir)
    except (ForagerError, OSError) as exc:
        fail(str(exc), json_out)
    run = run_id or predictions.stem
    run_dir = out or settings.home / "evaluations" / run
    with env_grader(settings, log=lambda m: console.print(f"[cyan]evaluate[/] {m}")) as client:
        evaluation = Evaluation(task_list, client, run_dir, run_id=run)
        with progress() as bar:
            t = bar.add_task(f"evaluate {run}", total=len(preds), status="")

            def advance(result) -> None:
                bar.update(t, advance=1, status=f"{result.instance_id}: {result.verdict}")

            report = evaluation.run(preds, problems, jobs=jobs, on_result=advance)
    if json_out:
        print_json({"ok": True, **report})
    else:
        console.print(f"resolved {report['resolved_instances']}, unresolved {report['unresolved_instances']} "
                      f"(empty patch {report['empty_patch_instances']}), error {report['error_instances']} of "
                      f"{report['submitted_instances']} predictions -> {run_dir / 'report.json'}")
        for error in report["errors"]:
            console.print(f"[red]error:[/] {error}", highlight=False)


__all__ = ["app", "EnvClient"]
