"""Task and trajectory verbs: `forager tasks synth|import|list`, `forager episode`, `forager export`, `forager dedupe`."""

from __future__ import annotations

from pathlib import Path

import typer

from forager.config import Settings
from forager.ui import console, print_json, progress


def _fail(message: str, json_out: bool) -> None:
    if json_out:
        print_json({"ok": False, "error": message})
    console.print(f"[red]error:[/] {message}")
    raise typer.Exit(1)


def register(app: typer.Typer) -> None:
    tasks_app = typer.Typer(no_args_is_help=True, help="Repair tasks: synthesize (mutate-fix), import (SWE-bench), list.")
    app.add_typer(tasks_app, name="tasks")

    @tasks_app.command("synth")
    def synth(
        repos: list[str] = typer.Argument(None, help="repo names from the catalog (default: every ok image)"),
        max_tasks: int = typer.Option(20, "--max-tasks", min=1, help="target validated tasks per repo image"),
        max_candidates: int = typer.Option(300, "--max-candidates", min=1, help="candidate mutations validated per repo"),
        timeout: float | None = typer.Option(None, "--timeout", min=1, help="seconds per test run before a candidate counts as a hang (default: 5x the suite, at least 10)"),
        time_budget: float | None = typer.Option(None, "--time-budget", min=1, help="seconds of candidate validation per repo (after the baseline run)"),
        seed: int = typer.Option(0, "--seed"),
        workers: int | None = typer.Option(None, "--workers", "-w", min=1,
                                           help="sandboxes validating candidates in parallel per repo (default: CPUs, at most 4)"),
        show_tests: bool = typer.Option(False, "--show-tests", help="name the failing tests in problem statements"),
        json_out: bool = typer.Option(False, "--json", help="print one JSON document on stdout"),
    ) -> None:
        """Mutate-fix synthesis over ok catalog images (resumable: reruns skip decided candidates)."""
        import docker

        from forager.tasks.synth import SynthesisError, run_synthesis
        from images.catalog import ok_records

        settings = Settings.from_env()
        if not settings.catalog_path.exists():
            _fail(f"no catalog at {settings.catalog_path}: build images first (`forager build`)", json_out)
        records = ok_records(settings.catalog_path)
        if repos:
            unknown = set(repos) - {r.repo for r in records}
            if unknown:
                _fail(f"no ok image for: {', '.join(sorted(unknown))}", json_out)
            records = [r for r in records if r.repo in repos]
        if not records:
            _fail("no ok images in the catalog", json_out)
        client = docker.from_env(timeout=600)
        results = []
        with progress(disable=json_out) as bar:
            overall = bar.add_task("repos", total=len(records), status="")
            for rec in records:
                t = bar.add_task(rec.repo, total=max_candidates, status="probing tests")
                try:
                    rep = run_synthesis(rec, settings, max_tasks=max_tasks, max_candidates=max_candidates,
                                        timeout=timeout, seed=seed, hide_tests=not show_tests, client=client,
                                        time_budget=time_budget, workers=workers,
                                        on_progress=lambda d, n, s, t=t: bar.update(t, completed=d, total=n, status=s))
                    results.append({"repo": rec.repo, "image": rec.tag, "ok": True, "tasks": len(rep.tasks),
                                    "new_tasks": rep.new_tasks, "tried": rep.tried, "skipped": rep.skipped,
                                    "verdicts": rep.verdicts, "functions": rep.functions,
                                    "out_of_time": rep.out_of_time,
                                    "seconds": round(rep.seconds, 2)})
                    bar.update(t, status=f"{len(rep.tasks)} tasks")
                except SynthesisError as exc:
                    results.append({"repo": rec.repo, "image": rec.tag, "ok": False, "error": str(exc)})
                    bar.update(t, status="[red]failed")
                bar.update(overall, advance=1)
        total = sum(r.get("tasks", 0) for r in results)
        if json_out:
            print_json({"ok": all(r["ok"] for r in results), "tasks": total, "repos": results,
                        "tasks_dir": str(settings.tasks_dir)})
        else:
            for r in results:
                line = (f"{r['tasks']} tasks ({r['new_tasks']} new, {r['tried']} candidates tried)"
                        if r["ok"] else f"[red]{r['error']}")
                console.print(f"{r['repo']}: {line}")
            console.print(f"{total} tasks in {settings.tasks_dir}")
        if not all(r["ok"] for r in results):
            raise typer.Exit(1)

    @tasks_app.command("import")
    def import_(
        file: Path = typer.Argument(..., help="SWE-bench instances, one JSON object per line"),
        force: bool = typer.Option(False, "--force", help="re-import instances already in the task store"),
        json_out: bool = typer.Option(False, "--json"),
    ) -> None:
        """Issue-fix tasks from SWE-bench JSONL; builds each image at base_commit. Bad lines are reported and skipped."""
        from forager.tasks.swebench import import_instances

        if not file.exists():
            _fail(f"no such file: {file}", json_out)
        settings = Settings.from_env()
        with progress(disable=json_out) as bar:
            t = bar.add_task("import", total=None, status="")
            rep = import_instances(file, settings, force=force,
                                   on_progress=lambda d, n, s: bar.update(t, completed=d, total=n, status=s))
        if json_out:
            print_json({"ok": not rep.errors, "imported": [t.id for t in rep.tasks], "skipped": rep.skipped,
                        "errors": rep.errors})
        else:
            for err in rep.errors:
                console.print(f"[yellow]skipped[/] {err}")
            console.print(f"{len(rep.tasks)} imported, {rep.skipped} already present, {len(rep.errors)} errors")
        if rep.errors and not rep.tasks and not rep.skipped:
            raise typer.Exit(1)

    @tasks_app.command("list")
    def list_(
        repo: str | None = typer.Option(None, "--repo"),
        kind: str | None = typer.Option(None, "--kind", help="mutate-fix | issue-fix"),
        json_out: bool = typer.Option(False, "--json"),
    ) -> None:
        """Tasks in $FORAGER_HOME/tasks."""
        from forager.tasks.store import load_tasks

        settings = Settings.from_env()
        tasks = load_tasks(settings.tasks_dir) if settings.tasks_dir.exists() else []
        tasks = [t for t in tasks if (not repo or t.repo == repo) and (not kind or t.kind == kind)]
        rows = [{"id": t.id, "kind": t.kind, "repo": t.repo, "image": t.image, "f2p": len(t.fail_to_pass),
                 "p2p": len(t.pass_to_pass), "mutation": t.mutation.operator if t.mutation else None} for t in tasks]
        if json_out:
            print_json({"ok": True, "count": len(rows), "tasks": rows})
            return
        for r in rows:
            console.print(f"{r['id']}  {r['kind']}  {r['mutation'] or ''}  F2P={r['f2p']} P2P={r['p2p']}")
        console.print(f"{len(rows)} tasks")

    @app.command()
    def episode(
        task_id: str = typer.Argument(..., help="a task id (see `forager tasks list`)"),
        policy: str = typer.Option("oracle", "--policy", "-p", help="oracle | openai"),
        model: str | None = typer.Option(None, "--model", help="model for the openai policy (default FORAGER_MODEL)"),
        protocol: str | None = typer.Option(None, "--protocol", help="openai: tools (function calling) | text (CWM tags)"),
        attempt: int = typer.Option(0, "--attempt", min=0),
        max_turns: int = typer.Option(30, "--max-turns", min=1),
        max_tokens: int | None = typer.Option(None, "--max-tokens", min=1, help="context budget in tokens"),
        wall_clock: float = typer.Option(1800, "--wall-clock", min=1, help="seconds"),
        tasks_path: Path | None = typer.Option(None, "--tasks", help="task file or dir (default $FORAGER_HOME/tasks)"),
        json_out: bool = typer.Option(False, "--json"),
    ) -> None:
        """Run one task with a policy against the env server; the trajectory goes to the store."""
        from envserver.client import EnvClient
        from forager.agent_loop import run_episode
        from forager.policies import make_policy
        from forager.tasks.store import find_task
        from forager.trajectories import TrajectoryStore

        settings = Settings.from_env()
        try:
            task = find_task(tasks_path or settings.tasks_dir, task_id)
        except KeyError as exc:
            _fail(str(exc.args[0]), json_out)
        params = {"protocol": protocol} if protocol and policy == "openai" else {}
        try:
            pol = make_policy(policy, model=model, settings=settings, **params)
        except ValueError as exc:
            _fail(str(exc), json_out)
        with EnvClient(settings.envserver_url, token=settings.envserver_token) as client:
            with progress(disable=json_out) as bar:
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
        fmt: str = typer.Option(..., "--format", "-f", help="cwm | chat | cwm-trace"),
        out: Path = typer.Option(..., "--out", "-o", help="output JSONL file"),
        min_reward: float | None = typer.Option(None, "--min-reward", help="only trajectories with reward ≥ this"),
        repo: str | None = typer.Option(None, "--repo"),
        source: Path | None = typer.Option(None, "--from", help="input dir (default: the trajectory or trace store)"),
        json_out: bool = typer.Option(False, "--json"),
    ) -> None:
        """Export trajectories as CWM text or chat messages (SFT), or traces in CWM's trace format."""
        from forager.export import FORMATS, export_traces, export_trajectories
        from forager.trajectories import TrajectoryStore

        if fmt not in FORMATS:
            _fail(f"unknown format {fmt!r}: use {', '.join(FORMATS)}", json_out)
        settings = Settings.from_env()
        with progress(disable=json_out) as bar:
            t = bar.add_task(f"export {fmt}", total=None, status=str(out))
            if fmt == "cwm-trace":
                src = source or settings.traces_dir
                if not src.exists():
                    _fail(f"no traces at {src}", json_out)
                res = export_traces(src, out)
            else:
                store = TrajectoryStore(source or settings.trajectories_dir)
                res = export_trajectories(store.iter(repo), fmt, out, min_reward=min_reward)
            bar.update(t, total=1, completed=1, status=f"{res['written']} written")
        if json_out:
            print_json({"ok": True, **res})
        else:
            console.print(f"{res['written']} records → {out}")

    @app.command()
    def dedupe(
        threshold: float = typer.Option(0.9, "--threshold", min=0.01, max=1.0, help="Jaccard similarity of action sets"),
        dry_run: bool = typer.Option(False, "--dry-run", help="report, move nothing"),
        json_out: bool = typer.Option(False, "--json"),
    ) -> None:
        """Drop near-duplicate trajectories within each repo (moved to $FORAGER_HOME/trajectories_dropped)."""
        from forager.dedupe import dedupe_store
        from forager.trajectories import TrajectoryStore

        settings = Settings.from_env()
        store = TrajectoryStore(settings.trajectories_dir)
        with progress(disable=json_out) as bar:
            t = bar.add_task("dedupe", total=None, status=f"threshold {threshold}")
            res = dedupe_store(store, settings.home / "trajectories_dropped", threshold, dry_run=dry_run)
            bar.update(t, total=1, completed=1, status=f"{res['dropped']} dropped")
        if json_out:
            print_json({"ok": True, **res})
        else:
            console.print(f"{res['dropped']} of {res['total']} dropped (threshold {threshold})"
                          + (" [dry run]" if dry_run else ""))
