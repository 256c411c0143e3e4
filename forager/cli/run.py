"""`forager run`: the whole job on one machine, resumable stage by stage.

  build    images.build.build_list        (cached: an ok image in the catalog is not rebuilt)
  synth    forager.tasks.synth            (resumes: decided candidates and tasks are on disk)
  mine     forager.tasks.mine             (--issue-fix only: the list's git entries; resumes from its verdict log)
  services Redis, env server, a worker    (used if reachable, else started and stopped at the end; the worker
                                          is the async one: --workers episodes in flight in one process)
  collect  one job per (task, attempt)    (deterministic ids: done episodes are never redone)
  summary  a table and one JSON document

Interrupted anywhere (Ctrl-C, SIGTERM), the next run picks up where this one stopped.
"""

from __future__ import annotations

import time
from contextlib import ExitStack
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import typer
from rich.table import Table

from agent.jobs import EpisodeSpec, collection_name, enqueue_episodes
from agent.queue import connect
from agent.services import LocalServices, workers_on
from envserver.client import EnvClient
from forager.cli.fleet import make_policy_config, watch_collection
from forager.cli.mining import mining_target, parent_builder
from forager.cli.ui import console, fail, interruptible, print_json, progress
from forager.config import Settings
from forager.errors import ForagerError, ServiceError
from forager.models import ImageRecord, RepoSpec, Task
from forager.tasks.mine import MineOptions, mine
from forager.tasks.synth import synthesize_many
from images.build import build_list
from images.sources import parse_list

DEFAULT_LIST = Path(__file__).resolve().parents[2] / "examples" / "repos.txt"

app = typer.Typer()


@dataclass
class RunOptions:
    repos: Path = DEFAULT_LIST
    max_repos: int | None = None
    tasks_per_repo: int = 3
    max_candidates: int = 30
    attempts: int = 1
    workers: int = 4  # episodes in flight (one async worker process, agent/async_worker.py)
    jobs: int = 2  # concurrent image builds
    synth_workers: int | None = None  # sandboxes per repo validating candidates (default: CPUs, at most 4)
    max_turns: int = 30
    episode_timeout: int = 1800
    policy: str | None = None  # default: openai if a model endpoint is configured, else oracle
    model: str | None = None
    issue_fix: bool = False  # also mine the list's git entries for issue-fix tasks
    mine_max_commits: int = 30  # commits walked per entry (newest first): small, so the main job stays fast


@dataclass
class RunReport:
    policy: str = ""
    model: str | None = None
    collection: str = ""
    repos_total: int = 0
    repos_ok: int = 0
    build_failures: dict[str, str] = field(default_factory=dict)
    synth_failures: dict[str, str] = field(default_factory=dict)
    mine_failures: dict[str, str] = field(default_factory=dict)
    tasks: int = 0
    tasks_by_repo: dict[str, int] = field(default_factory=dict)
    mined_by_repo: dict[str, int] = field(default_factory=dict)
    jobs: dict[str, int] = field(default_factory=dict)
    status: dict[str, Any] = field(default_factory=dict)
    seconds: dict[str, float] = field(default_factory=dict)
    started_services: list[str] = field(default_factory=list)
    data: dict[str, str] = field(default_factory=dict)

    def as_dict(self) -> dict[str, Any]:
        s = self.status
        return {
            "ok": bool(s.get("complete")) and not s.get("failed"),
            "policy": self.policy, "model": self.model, "collection": self.collection,
            "repos": {"total": self.repos_total, "ok": self.repos_ok, "build_failures": self.build_failures,
                      "synth_failures": self.synth_failures},
            "tasks": self.tasks, "tasks_by_repo": self.tasks_by_repo,
            **({"mined_by_repo": self.mined_by_repo, "mine_failures": self.mine_failures} if self.mined_by_repo
               or self.mine_failures else {}),
            "jobs": self.jobs,
            "trajectories": s.get("trajectories", 0), "failed_jobs": s.get("failed", 0),
            "solve_rate": s.get("solve_rate", 0.0), "mean_steps": s.get("mean_steps", 0.0),
            "seconds": self.seconds, "started_services": self.started_services, "data": self.data,
        }


def run(opts: RunOptions, settings: Settings, bar, policy, log=print, stop_event=None) -> RunReport:
    """Every stage in order; `bar` is a rich Progress (forager.cli.ui.progress()), `policy` a policy config."""
    report = RunReport(policy=policy.name, model=policy.model)
    report.data = {"home": str(settings.home), "catalog": str(settings.catalog_path),
                   "tasks": str(settings.tasks_dir), "trajectories": str(settings.trajectories_dir),
                   "logs": str(settings.logs_dir)}

    t0 = time.monotonic()
    specs, errors = parse_list(opts.repos)
    for e in errors:
        log(f"skipped malformed entry: {e}")
    specs = specs[: opts.max_repos] if opts.max_repos else specs
    if not specs:
        raise ForagerError(f"no repositories in {opts.repos}")
    records = build_list(specs, settings, jobs=opts.jobs, progress=bar)
    report.repos_total = len(records)
    ok = [r for r in records if r.status == "ok"]
    report.repos_ok = len(ok)
    report.build_failures = {r.repo: f"{r.status}: {r.reason}"[:200] for r in records if r.status != "ok"}
    report.seconds["build"] = round(time.monotonic() - t0, 1)

    t0 = time.monotonic()
    tasks = _synthesize(ok, settings, opts, bar, report)
    report.seconds["synth"] = round(time.monotonic() - t0, 1)
    with ExitStack() as stack:
        services = None
        if opts.issue_fix:  # certificates need an env server now, not only for the collection
            services = stack.enter_context(LocalServices(settings, opts.workers, log=log))
            services.ensure_envserver()
            t0 = time.monotonic()
            fetched = [spec for spec, r in zip(specs, records) if r.status != "clone" and spec.kind != "pypi"]
            tasks += _mine(fetched, settings, opts, bar, report, log)
            report.seconds["mine"] = round(time.monotonic() - t0, 1)
        report.tasks = len(tasks)
        if not tasks:
            log("no tasks: nothing to collect")
            return report
        t0 = time.monotonic()
        services = services or stack.enter_context(LocalServices(settings, opts.workers, log=log))
        conn = connect(settings.redis_url)
        report.collection = f"run-{collection_name(report.policy, report.model)}"
        spec = EpisodeSpec(policy=policy, max_turns=opts.max_turns, episode_timeout=opts.episode_timeout)
        t = bar.add_task("enqueue", total=len(tasks) * opts.attempts, status="")
        outcome = enqueue_episodes(conn, tasks, opts.attempts, spec, collection=report.collection, settings=settings,
                                   on_progress=lambda n, s: bar.update(t, completed=n, status=s))
        for state in outcome.values():
            report.jobs[state] = report.jobs.get(state, 0) + 1
        if any(state not in ("finished", "exists") for state in outcome.values()):
            services.ensure_workers()
            if not workers_on(settings.redis_url, settings.queue):
                raise ServiceError(f"no worker listens on queue {settings.queue}: start some (`forager worker`) "
                                   "or pass --workers N")
        report.started_services = list(services.started)
        report.status = watch_collection(
            conn, report.collection, bar, only=set(outcome), description="episodes",
            stop_when=lambda: not services.pool_alive() or (stop_event is not None and stop_event.is_set()))
        report.seconds["collect"] = round(time.monotonic() - t0, 1)  # services started on the way included
    return report


def _mine(gits: list[RepoSpec], settings: Settings, opts: RunOptions, bar, report: RunReport, log) -> list[Task]:
    """Issue-fix tasks from the history of each git entry (at most tasks_per_repo kept per entry)."""
    overall = bar.add_task("mine", total=len(gits), status="")
    options = MineOptions(max_commits=opts.mine_max_commits, max_tasks=opts.tasks_per_repo)
    found: list[Task] = []
    with EnvClient(settings.envserver_url, token=settings.envserver_token) as grader:
        for spec in gits:
            t = bar.add_task(f"  {spec.name}", total=None, status="scanning history")
            try:
                where = mining_target(spec, settings, log=log)
                options.revisions = where.revisions
                rep = mine(where.history, spec.name, settings, build=parent_builder(spec, settings), grader=grader,
                           options=options, source=where.source,
                           on_progress=lambda d, n, st, t=t: bar.update(t, completed=d, total=n, status=st))
            except ForagerError as exc:  # e.g. a local directory that is not a git repository: no history
                report.mine_failures[spec.name] = str(exc)[:200]
                bar.update(t, status="no history")
            else:
                mine_tasks = rep.tasks[: opts.tasks_per_repo]
                report.mined_by_repo[spec.name] = len(mine_tasks)
                found += mine_tasks
                bar.update(t, status=f"{len(mine_tasks)} tasks")
            bar.update(overall, advance=1)
    return found


def _synthesize(records: list[ImageRecord], settings: Settings, opts: RunOptions, bar, report: RunReport) -> list[Task]:
    overall = bar.add_task("synthesize", total=len(records), status="")
    bars: dict[str, Any] = {}

    def on_start(rec: ImageRecord):
        bar.update(overall, status=rec.repo)
        bars[rec.repo] = t = bar.add_task(f"  {rec.repo}", total=opts.max_candidates, status="probing tests")
        return lambda d, n, s: bar.update(t, completed=d, total=n, status=s)

    def on_done(outcome) -> None:
        t = bars[outcome.repo]
        if outcome.error:
            report.synth_failures[outcome.repo] = outcome.error[:200]
            bar.update(t, status="failed")
        else:
            mine = outcome.report.tasks[: opts.tasks_per_repo]
            report.tasks_by_repo[outcome.repo] = len(mine)
            bar.update(t, completed=opts.max_candidates, total=opts.max_candidates, status=f"{len(mine)} tasks")
        bar.update(overall, advance=1)

    outcomes = synthesize_many(records, settings, on_start=on_start, on_done=on_done, max_tasks=opts.tasks_per_repo,
                               max_candidates=opts.max_candidates, workers=opts.synth_workers)
    return [t for o in outcomes if o.report for t in o.report.tasks[: opts.tasks_per_repo]]


@app.command("run")
def run_cmd(
    repos: Path = typer.Argument(None, help="repository list [default: the bundled examples/repos.txt]"),
    max_repos: int | None = typer.Option(None, "--max-repos", min=1, help="only the first N entries of the list (default: all)"),
    tasks_per_repo: int = typer.Option(3, "--tasks-per-repo", min=1, help="mutate-fix tasks per repository"),
    max_candidates: int = typer.Option(30, "--max-candidates", min=1, help="mutations tried per repository"),
    attempts: int = typer.Option(1, "--attempts", "-k", min=1, help="episodes per task"),
    workers: int = typer.Option(4, "--workers", "-w", min=0,
                                help="episodes in flight in the worker started if none listens on the queue "
                                     "(one async worker process; 0: use existing workers)"),
    jobs: int = typer.Option(2, "-j", "--jobs", min=1, help="concurrent image builds"),
    synth_workers: int | None = typer.Option(None, "--synth-workers", min=1,
                                             help="sandboxes per repo validating mutations in parallel (default: CPUs, at most 4)"),
    policy: str | None = typer.Option(None, "--policy", "-p",
                                      help="oracle | openai [default: openai if FORAGER_MODEL_BASE_URL is set]"),
    model: str | None = typer.Option(None, "--model", help="model for the openai policy (default FORAGER_MODEL)"),
    policy_param: list[str] = typer.Option([], "--policy-param", help="KEY=VALUE passed to the policy (JSON values)"),
    max_turns: int = typer.Option(30, "--max-turns", min=1),
    episode_timeout: int = typer.Option(1800, "--episode-timeout", min=10),
    issue_fix: bool = typer.Option(False, "--issue-fix", help="also mine issue-fix tasks from the list's git entries"),
    mine_max_commits: int = typer.Option(30, "--mine-max-commits", min=1, help="with --issue-fix: commits walked per entry"),
    json_out: bool = typer.Option(False, "--json", help="print the summary as one JSON document on stdout"),
) -> None:
    """The whole job on this machine: build images, synthesize tasks, collect trajectories, summarize.

    Resumable: interrupted, the next run skips every image, task and episode already done.
    """
    settings = Settings.from_env()
    repos = repos or DEFAULT_LIST
    if not repos.is_file():
        fail(f"no such repository list: {repos}", json_out)
    config = make_policy_config(policy or ("openai" if settings.model_base_url else "oracle"), model, policy_param,
                                settings, json_out)
    opts = RunOptions(repos=repos, max_repos=max_repos, tasks_per_repo=tasks_per_repo, max_candidates=max_candidates,
                      attempts=attempts, workers=workers, jobs=jobs, synth_workers=synth_workers, max_turns=max_turns,
                      episode_timeout=episode_timeout, issue_fix=issue_fix, mine_max_commits=mine_max_commits)
    started = time.monotonic()
    interruptible()  # SIGTERM unwinds, so the services this run started are stopped
    try:
        with progress() as bar:
            report = run(opts, settings, bar, config, log=lambda m: bar.console.print(f"[cyan]run[/] {m}"))
    except ForagerError as exc:
        fail(str(exc), json_out)
    except KeyboardInterrupt:
        if json_out:
            print_json({"ok": False, "error": "interrupted", "resume": "run the same command again"})
        console.print("[yellow]interrupted[/]: run the same command again to resume (done work is kept)")
        raise typer.Exit(130)
    summary = report.as_dict()
    summary["seconds"]["total"] = round(time.monotonic() - started, 1)
    if json_out:
        print_json(summary)
    else:
        print_run_summary(summary)
    if not summary["ok"]:
        raise typer.Exit(1)


def print_run_summary(s: dict) -> None:
    table = Table(title=f"forager run: {s['policy']}{' / ' + s['model'] if s['model'] else ''}", show_header=False)
    table.add_column(style="bold")
    table.add_column()
    r = s["repos"]
    table.add_row("repos ok", f"{r['ok']}/{r['total']}")
    for repo, why in {**r["build_failures"], **r["synth_failures"]}.items():
        table.add_row("", f"[yellow]{repo}[/]: {why[:90]}")
    table.add_row("tasks", f"{s['tasks']} (" + ", ".join(f"{k} {v}" for k, v in s["tasks_by_repo"].items()) + ")")
    if "mined_by_repo" in s:
        table.add_row("issue-fix", ", ".join(f"{k} {v}" for k, v in s["mined_by_repo"].items()) or "none")
        for repo, why in s["mine_failures"].items():
            table.add_row("", f"[yellow]{repo}[/]: {why[:90]}")
    table.add_row("trajectories", f"{s['trajectories']} (failed jobs: {s['failed_jobs']})")
    table.add_row("solve rate", f"{s['solve_rate']:.0%}")
    table.add_row("mean steps", f"{s['mean_steps']:g}")
    table.add_row("time", "  ".join(f"{k} {v:g}s" for k, v in s["seconds"].items()))
    for k, v in s["data"].items():
        table.add_row(k, v)
    console.print(table)
