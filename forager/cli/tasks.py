"""`forager tasks synth|mine|import|export|list`: repair tasks in $FORAGER_HOME/tasks."""

from __future__ import annotations

import sys
from pathlib import Path

import typer

from forager.cli.mining import PARENT_BUILD, env_grader, mining_target, parent_builder
from forager.cli.ui import console, fail, interruptible, print_json, progress
from forager.config import Settings
from forager.errors import ForagerError
from forager.tasks.history import Caps
from forager.tasks.mine import MineOptions, mine
from forager.tasks.store import load_tasks
from forager.tasks.swebench import SWEInstance, export_instances, import_instances, repo_entry
from forager.tasks.synth import synthesize_many
from images.build import build_repo
from images.catalog import load_catalog, ok_records
from images.sources import parse_entry, parse_list

app = typer.Typer(no_args_is_help=True,
                  help="Repair tasks: synthesize (mutate-fix), mine (issue-fix), import/export (SWE-bench), list.")


@app.command("synth")
def synth(
    repos: list[str] = typer.Argument(None, help="repo names from the catalog (default: every ok image but the bases "
                                                 "of issue-fix tasks)"),
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
    settings = Settings.from_env()
    if not settings.catalog_path.exists():
        fail(f"no catalog at {settings.catalog_path}: build images first (`forager build`)", json_out)
    records = ok_records(settings.catalog_path)
    # Images built at the base commit of issue-fix tasks (a mined fix's parent, a SWE-bench base) exist for
    # those tasks: a mined repository has one per fix, and synthesizing over each would multiply the work.
    known = load_tasks(settings.tasks_dir) if settings.tasks_dir.exists() else []
    bases = {t.image for t in known if t.kind == "issue-fix"}
    records = [r for r in records if r.tag not in bases]
    if repos:
        unknown = set(repos) - {r.repo for r in records}
        if unknown:
            fail(f"no ok image for: {', '.join(sorted(unknown))}", json_out)
        records = [r for r in records if r.repo in repos]
    if not records:
        fail("no ok images in the catalog", json_out)
    interruptible()
    with progress() as bar:
        overall = bar.add_task("repos", total=len(records), status="")

        def on_start(rec):
            t = bar.add_task(rec.repo, total=max_candidates, status="probing tests")
            return lambda d, n, s: bar.update(t, completed=d, total=n, status=s)

        outcomes = synthesize_many(records, settings, on_start=on_start,
                                   on_done=lambda o: bar.update(overall, advance=1, status=o.repo),
                                   max_tasks=max_tasks, max_candidates=max_candidates, timeout=timeout, seed=seed,
                                   hide_tests=not show_tests, time_budget=time_budget, workers=workers)
    results = []
    for o in outcomes:
        if o.error:
            results.append({"repo": o.repo, "image": o.image, "ok": False, "error": o.error})
            continue
        rep = o.report
        results.append({"repo": o.repo, "image": o.image, "ok": True, "tasks": len(rep.tasks), "new_tasks": rep.new_tasks,
                        "tried": rep.tried, "skipped": rep.skipped, "verdicts": rep.verdicts,
                        "functions": rep.functions, "out_of_time": rep.out_of_time, "seconds": round(rep.seconds, 2)})
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


@app.command("mine")
def mine_cmd(
    target: str = typer.Argument(..., help="a repository list, or one entry: a git repo path[@ref], a git URL, owner/name"),
    revisions: str | None = typer.Option(None, "--range", help="what to walk: a ref or A..B (default: the entry's ref, else HEAD)"),
    since: str | None = typer.Option(None, "--since", help="only commits after this date (git's --since)"),
    max_commits: int = typer.Option(500, "--max-commits", min=1, help="commits walked per repository, newest first"),
    max_files: int = typer.Option(4, "--max-files", min=1, help="library files one fix may change"),
    max_lines: int = typer.Option(150, "--max-lines", min=1, help="library lines (added + deleted) one fix may change"),
    max_test_files: int = typer.Option(5, "--max-test-files", min=1),
    max_test_lines: int = typer.Option(500, "--max-test-lines", min=1),
    runs: int = typer.Option(3, "--runs", min=1, help="test runs before and after the fix; varying tests are flaky"),
    timeout: float | None = typer.Option(None, "--timeout", min=1, help="seconds per test run (default: 5x the suite, at least 60)"),
    certify_runs: int = typer.Option(3, "--certify-runs", "-k", min=1, help="gold and empty gradings per certificate"),
    jobs: int = typer.Option(1, "-j", "--jobs", min=1, help="candidates validated at once"),
    max_tasks: int | None = typer.Option(None, "--max-tasks", min=1, help="stop a repository once it has this many tasks"),
    max_candidates: int | None = typer.Option(None, "--max-candidates", min=1, help="validate only the newest N candidates"),
    retry: list[str] = typer.Option([], "--retry", help="decide again candidates with this verdict (e.g. build_failed)"),
    show_tests: bool = typer.Option(False, "--show-tests", help="name the failing tests in problem statements"),
    json_out: bool = typer.Option(False, "--json", help="print one JSON document on stdout"),
) -> None:
    """Issue-fix tasks from git history: fix commits with tests, validated fail-to-pass and certified (resumable)."""
    settings = Settings.from_env()
    path = Path(target)
    try:
        if path.is_file():
            specs, errors = parse_list(path)
            if errors:
                fail("; ".join(errors), json_out)
        else:
            specs = [parse_entry(target)]
    except ValueError as exc:
        fail(str(exc), json_out)
    opts = MineOptions(revisions=revisions or "HEAD", since=since, max_commits=max_commits,
                       caps=Caps(max_files, max_lines, max_test_files, max_test_lines), runs=runs, timeout=timeout,
                       hide_tests=not show_tests, certify_k=certify_runs, jobs=jobs, max_tasks=max_tasks,
                       max_candidates=max_candidates, retry=frozenset(retry))
    interruptible()
    results = []
    try:
        with progress() as bar, env_grader(settings, log=lambda m: bar.console.print(f"[cyan]mine[/] {m}")) as grader:
            for spec in specs:
                t = bar.add_task(spec.name, total=None, status="scanning history")
                try:
                    where = mining_target(spec, settings, revisions)
                    opts.revisions = where.revisions
                    rep = mine(where.history, spec.name, settings, build=parent_builder(spec, settings), grader=grader,
                               options=opts, source=where.source,
                               on_progress=lambda d, n, s, t=t: bar.update(t, completed=d, total=n, status=s))
                except ForagerError as exc:
                    results.append({"repo": spec.name, "source": spec.source, "ok": False, "error": str(exc)})
                    bar.update(t, status="failed")
                    continue
                results.append({"repo": spec.name, "source": spec.source, "ok": True, "history": rep.history,
                                "scanned": rep.scanned, "candidates": rep.candidates, "scan_verdicts": rep.scan_verdicts,
                                "verdicts": rep.verdicts, "tasks": len(rep.tasks), "new_tasks": rep.new_tasks,
                                "tried": rep.tried, "skipped": rep.skipped, "errors": rep.errors,
                                "scan_seconds": rep.scan_seconds, "seconds": rep.seconds})
    except ForagerError as exc:  # the grader could not be reached or started
        fail(str(exc), json_out)
    except KeyboardInterrupt:
        fail("interrupted: run the same command again to resume (every decided commit is kept)", json_out, code=130)
    total = sum(r.get("tasks", 0) for r in results)
    ok = all(r["ok"] for r in results)
    if json_out:
        print_json({"ok": ok, "tasks": total, "repos": results, "tasks_dir": str(settings.tasks_dir)})
    else:
        for r in results:
            line = (f"{r['tasks']} tasks ({r['new_tasks']} new); {r['scanned']} commits, {r['candidates']} candidates, "
                    f"{r['tried']} validated, {r['skipped']} decided before" if r["ok"] else f"[red]{r['error']}")
            console.print(f"{r['repo']}: {line}")
        console.print(f"{total} issue-fix tasks in {settings.tasks_dir}")
    if not ok:
        raise typer.Exit(1)


@app.command("export")
def export_cmd(
    tasks: Path | None = typer.Argument(None, help="a tasks file or directory (default: $FORAGER_HOME/tasks)"),
    fmt: str = typer.Option("swebench", "--format", help="swebench (the only format)"),
    out: Path | None = typer.Option(None, "--output", "-o", help="write here (default: stdout)"),
    repo: str | None = typer.Option(None, "--repo"),
    kind: str | None = typer.Option(None, "--kind", help="mutate-fix | issue-fix"),
    origin: str | None = typer.Option(None, "--origin", help="synthesized | mined | imported"),
    json_out: bool = typer.Option(False, "--json", help="a JSON summary on stdout (needs --output)"),
) -> None:
    """Write a task set as SWE-bench JSONL, for other harnesses; `forager tasks import` reads it back."""
    if fmt != "swebench":
        fail(f"unknown format {fmt!r}: expected swebench", json_out)
    if json_out and out is None:
        fail("--json prints a summary on stdout, so the records need --output FILE", json_out)
    settings = Settings.from_env()
    source = tasks or settings.tasks_dir
    if not source.exists():
        fail(f"no such tasks file or directory: {source}", json_out)
    selected = [t for t in load_tasks(source) if (not repo or t.repo == repo) and (not kind or t.kind == kind)
                and (not origin or t.origin == origin)]
    records = load_catalog(settings.catalog_path) if settings.catalog_path.exists() else {}
    if out is None:
        n = export_instances(selected, sys.stdout, records)
    else:
        out.parent.mkdir(parents=True, exist_ok=True)
        with open(out, "w", encoding="utf-8") as fh:
            n = export_instances(selected, fh, records)
    if json_out:
        print_json({"ok": True, "format": fmt, "exported": n, "path": str(out)})
    else:
        console.print(f"{n} tasks exported" + (f" to {out}" if out else ""))


@app.command("import")
def import_(
    file: Path = typer.Argument(..., help="SWE-bench instances, one JSON object per line"),
    force: bool = typer.Option(False, "--force", help="re-import instances already in the task store"),
    json_out: bool = typer.Option(False, "--json"),
) -> None:
    """Issue-fix tasks from SWE-bench JSONL; builds each image at base_commit. Bad lines are reported and skipped."""
    if not file.exists():
        fail(f"no such file: {file}", json_out)
    settings = Settings.from_env()

    def build(inst: SWEInstance):  # a base commit of real history: built like a mined parent (see PARENT_BUILD)
        entry, overrides = repo_entry(inst)
        return build_repo(parse_entry(entry, **overrides), settings, PARENT_BUILD)

    interruptible()
    with progress() as bar:
        t = bar.add_task("import", total=None, status="")
        try:
            rep = import_instances(file, settings, build=build, force=force,
                                   on_progress=lambda d, n, s: bar.update(t, completed=d, total=n, status=s))
        except ForagerError as exc:
            fail(str(exc), json_out)
    if json_out:
        print_json({"ok": not rep.errors, "imported": [t.id for t in rep.tasks], "skipped": rep.skipped,
                    "errors": rep.errors})
    else:
        for err in rep.errors:
            console.print(f"[yellow]skipped[/] {err}")
        console.print(f"{len(rep.tasks)} imported, {rep.skipped} already present, {len(rep.errors)} errors")
    if rep.errors and not rep.tasks and not rep.skipped:
        raise typer.Exit(1)


@app.command("list")
def list_(
    repo: str | None = typer.Option(None, "--repo"),
    kind: str | None = typer.Option(None, "--kind", help="mutate-fix | issue-fix"),
    json_out: bool = typer.Option(False, "--json"),
) -> None:
    """Tasks in $FORAGER_HOME/tasks."""
    settings = Settings.from_env()
    tasks = load_tasks(settings.tasks_dir) if settings.tasks_dir.exists() else []
    tasks = [t for t in tasks if (not repo or t.repo == repo) and (not kind or t.kind == kind)]
    rows = [{"id": t.id, "kind": t.kind, "repo": t.repo, "image": t.image, "f2p": len(t.fail_to_pass),
             "p2p": len(t.pass_to_pass), "mutation": t.mutation.operator if t.mutation else None,
             "origin": t.origin, "certified": t.certificate.passed if t.certificate else None} for t in tasks]
    if json_out:
        print_json({"ok": True, "count": len(rows), "tasks": rows})
        return
    for r in rows:
        cert = "" if r["certified"] is None else ("  certified" if r["certified"] else "  certificate failed")
        console.print(f"{r['id']}  {r['kind']}  {r['origin'] or ''}  {r['mutation'] or ''}  F2P={r['f2p']} P2P={r['p2p']}"
                      f"{cert}")
    console.print(f"{len(rows)} tasks")
