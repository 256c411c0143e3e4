"""`forager run`: the whole job on one machine, resumable stage by stage.

  build    images.build.build_list      (cached: an ok image in the catalog is not rebuilt)
  synth    forager.tasks.synth          (resumes: decided candidates and tasks are on disk)
  services Redis, env server, workers   (used if reachable, else started and stopped at the end)
  collect  one job per (task, attempt)  (deterministic ids: done episodes are never redone)
  summary  a table and one JSON document

Interrupted anywhere, the next run picks up where this one stopped.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from forager.config import Settings

DEFAULT_LIST = Path(__file__).resolve().parent.parent / "examples" / "repos.txt"


@dataclass
class RunOptions:
    repos: Path = DEFAULT_LIST
    max_repos: int | None = None
    tasks_per_repo: int = 3
    max_candidates: int = 30
    attempts: int = 1
    workers: int = 2
    jobs: int = 2  # concurrent image builds
    synth_workers: int | None = None  # sandboxes per repo validating candidates (default: CPUs, at most 4)
    max_turns: int = 30
    episode_timeout: int = 1800
    policy: str | None = None  # default: openai if a model endpoint is configured, else oracle
    model: str | None = None


@dataclass
class RunReport:
    policy: str = ""
    model: str | None = None
    collection: str = ""
    repos_total: int = 0
    repos_ok: int = 0
    build_failures: dict[str, str] = field(default_factory=dict)
    synth_failures: dict[str, str] = field(default_factory=dict)
    tasks: int = 0
    tasks_by_repo: dict[str, int] = field(default_factory=dict)
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
            "jobs": self.jobs,
            "trajectories": s.get("trajectories", 0), "failed_jobs": s.get("failed", 0),
            "solve_rate": s.get("solve_rate", 0.0), "mean_steps": s.get("mean_steps", 0.0),
            "seconds": self.seconds, "started_services": self.started_services, "data": self.data,
        }


def choose_policy(opts: RunOptions, settings: Settings) -> tuple[str, str | None]:
    policy = opts.policy or ("openai" if settings.model_base_url else "oracle")
    model = opts.model or (settings.model_name if policy == "openai" else None)
    if policy == "openai" and not model:
        raise ValueError("FORAGER_MODEL_BASE_URL is set but no model is named: set FORAGER_MODEL or pass --model")
    return policy, model


def run(opts: RunOptions, settings: Settings, bar, log=print, stop_event=None) -> RunReport:
    """Every stage in order; `bar` is a rich Progress (forager.ui.progress())."""
    from images.build import build_list
    from images.sources import parse_list

    report = RunReport()
    report.policy, report.model = choose_policy(opts, settings)
    report.data = {"home": str(settings.home), "catalog": str(settings.catalog_path),
                   "tasks": str(settings.tasks_dir), "trajectories": str(settings.trajectories_dir),
                   "logs": str(settings.logs_dir)}

    # -- build
    t0 = time.monotonic()
    specs, errors = parse_list(opts.repos)
    for e in errors:
        log(f"skipped malformed entry: {e}")
    specs = specs[: opts.max_repos] if opts.max_repos else specs
    if not specs:
        raise ValueError(f"no repositories in {opts.repos}")
    records = build_list(specs, settings, jobs=opts.jobs, progress=bar)
    report.repos_total = len(records)
    ok = [r for r in records if r.status == "ok"]
    report.repos_ok = len(ok)
    report.build_failures = {r.repo: f"{r.status}: {r.reason}"[:200] for r in records if r.status != "ok"}
    report.seconds["build"] = round(time.monotonic() - t0, 1)

    # -- synthesize
    t0 = time.monotonic()
    tasks = synthesize_all(ok, settings, opts, bar, report)
    report.tasks = len(tasks)
    report.seconds["synth"] = round(time.monotonic() - t0, 1)
    if not tasks:
        log("no tasks: nothing to collect")
        return report

    # -- services + collect
    from agent.jobs import EpisodeSpec, collection_name, enqueue_episodes
    from agent.queue import connect
    from agent.services import LocalServices, workers_on

    t0 = time.monotonic()
    with LocalServices(settings, opts.workers, log=log) as services:
        conn = connect(settings.redis_url)
        report.collection = f"run-{collection_name(report.policy, report.model)}"
        spec = EpisodeSpec(policy=report.policy, model=report.model, max_turns=opts.max_turns,
                           episode_timeout=opts.episode_timeout)
        t = bar.add_task("enqueue", total=len(tasks) * opts.attempts, status="")
        outcome = enqueue_episodes(conn, tasks, opts.attempts, spec, collection=report.collection, settings=settings,
                                   on_progress=lambda n, s: bar.update(t, completed=n, status=s))
        for state in outcome.values():
            report.jobs[state] = report.jobs.get(state, 0) + 1
        job_ids = set(outcome)
        if any(state not in ("finished", "exists") for state in outcome.values()):
            services.ensure_workers()
            if not workers_on(settings.redis_url, settings.queue):
                raise RuntimeError(f"no worker listens on queue {settings.queue}: start some (`forager worker`) "
                                   "or pass --workers N")
        report.started_services = list(services.started)
        report.status = watch_jobs(conn, report.collection, job_ids, bar,
                                   stop_when=lambda: not services.pool_alive() or (stop_event and stop_event.is_set()))
        report.seconds["collect"] = round(time.monotonic() - t0, 1)  # services started on the way included
    return report


def synthesize_all(records, settings: Settings, opts: RunOptions, bar, report: RunReport) -> list:
    from forager.tasks.synth import SynthesisError, run_synthesis

    overall = bar.add_task("synthesize", total=len(records), status="")
    tasks = []
    for rec in records:
        bar.update(overall, status=rec.repo)
        t = bar.add_task(f"  {rec.repo}", total=opts.max_candidates, status="probing tests")
        try:
            rep = run_synthesis(rec, settings, max_tasks=opts.tasks_per_repo, max_candidates=opts.max_candidates,
                                workers=opts.synth_workers,
                                on_progress=lambda d, n, s, t=t: bar.update(t, completed=d, total=n, status=s))
            mine = rep.tasks[: opts.tasks_per_repo]
            tasks.extend(mine)
            report.tasks_by_repo[rec.repo] = len(mine)
            bar.update(t, completed=opts.max_candidates, total=opts.max_candidates, status=f"{len(mine)} tasks")
        except SynthesisError as exc:
            report.synth_failures[rec.repo] = str(exc)[:200]
            bar.update(t, status="failed")
        except Exception as exc:  # one repo's trouble (Docker hiccup, odd suite) must not end the run
            report.synth_failures[rec.repo] = f"{type(exc).__name__}: {exc}"[:200]
            bar.update(t, status="failed")
        bar.update(overall, advance=1)
    return tasks


def watch_jobs(conn, collection: str, job_ids: set[str], bar, stop_when=None, poll: float = 1.0) -> dict:
    """Progress of this run's jobs (a collection may hold more, from earlier runs)."""
    from agent.status import collection_status

    t = bar.add_task("episodes", total=len(job_ids), status="")
    while True:
        s = collection_status(conn, collection, only=job_ids)
        bar.update(t, completed=s["done"] + s["failed"],
                   status=f"running {s['running']}  retrying {s['retrying']}  failed {s['failed']}  "
                          f"solved {s['solved']}/{s['trajectories']}")
        if s["complete"] or (stop_when and stop_when()):
            return s
        time.sleep(poll)
