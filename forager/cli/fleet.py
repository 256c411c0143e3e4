"""The fleet's verbs: `forager collect`, `forager worker`, `forager status`."""

from __future__ import annotations

import json
import threading
import time
from pathlib import Path

import redis
import typer
from pydantic import ValidationError
from rich.table import Table

from agent.jobs import EpisodeSpec, collection_name, enqueue_episodes
from agent.queue import connect
from agent.status import collection_status, fleet_status, list_collections, queue_counts
from agent.worker import Pool
from forager.config import Settings, masked
from forager.episodes.branching import BranchPlan
from forager.episodes.policies import POLICY_NAMES, OpenAIConfig, OracleConfig, policy_config
from forager.errors import PoolError, UsageError
from forager.cli.ui import console, fail, print_json, progress, watch
from forager.tasks.store import load_tasks

app = typer.Typer()


def redis_conn(settings: Settings, json_out: bool):
    conn = connect(settings.redis_url)
    try:
        conn.ping()
    except redis.RedisError as exc:
        fail(f"cannot reach Redis at {masked(settings.redis_url)} ({exc}); start it (`forager setup`) or set "
             "FORAGER_REDIS_URL", json_out)
    return conn


def parse_params(items: list[str]) -> dict:
    """["temperature=0.2", "run_tests=false", "protocol=text"] -> {"temperature": 0.2, ...}."""
    params = {}
    for item in items:
        key, sep, raw = item.partition("=")
        if not sep or not key:
            raise UsageError(f"--policy-param wants KEY=VALUE, got {item!r}")
        try:
            params[key] = json.loads(raw)
        except json.JSONDecodeError:
            params[key] = raw
    return params


def make_policy_config(policy: str, model: str | None, params: list[str], settings: Settings,
                       json_out: bool) -> OracleConfig | OpenAIConfig:
    try:
        return policy_config(policy, model=model, settings=settings, **parse_params(params))
    except UsageError as exc:
        fail(str(exc), json_out)


def status_line(s: dict) -> str:
    return (f"queued {s['queued']}  running {s['running']}  retrying {s['retrying']}  done {s['done']}  "
            f"failed {s['failed']}  trajectories {s['trajectories']}  reward {s['reward_sum']:g}")


def watch_collection(conn, collection: str, bar, *, only: set[str] | None = None, timeout: float | None = None,
                     stop_when=None, description: str | None = None) -> dict:
    """A bar until every job of the collection (or of `only`) is done or failed; returns the last status."""
    last: dict = {}

    def poll():
        last.update(collection_status(conn, collection, only=only))
        return last["done"] + last["failed"], last["total"], status_line(last), last["complete"]

    watch(bar, description or f"collect {collection}", poll, timeout=timeout, stop_when=stop_when)
    return last


@app.command()
def collect(
    tasks: Path = typer.Argument(..., help="a tasks JSONL file or a directory of them ($FORAGER_HOME/tasks)"),
    policy: str = typer.Option("oracle", "--policy", "-p", help=" | ".join(POLICY_NAMES)),
    attempts: int = typer.Option(1, "--attempts", "-k", min=1, help="episodes per task"),
    model: str | None = typer.Option(None, "--model", help="model name for the openai policy (default FORAGER_MODEL)"),
    policy_param: list[str] = typer.Option([], "--policy-param", help="KEY=VALUE passed to the policy (JSON values)"),
    name: str | None = typer.Option(None, "--name", help="collection name (default: policy and model)"),
    max_turns: int = typer.Option(30, "--max-turns", min=1),
    episode_timeout: int = typer.Option(1800, "--episode-timeout", min=10, help="seconds; the job is killed past this"),
    limit: int | None = typer.Option(None, "--limit", min=1, help="only the first N tasks"),
    wait: bool = typer.Option(False, "--wait", help="stay and show progress until every job is done or failed"),
    branch_at: list[int] = typer.Option([], "--branch-at", help="branching: fork the env before this step (repeatable)"),
    branches: int = typer.Option(0, "--branches", min=0, help="branching: forks per branch point"),
    alternatives: Path | None = typer.Option(None, "--alternatives",
                                             help="branching: JSONL of actions ({tool, arguments}), one per branch"),
    json_out: bool = typer.Option(False, "--json", help="print one JSON document on stdout"),
) -> None:
    """Enqueue one episode job per (task, attempt); ids already queued, running or done are skipped.

    With --branch-at N (and --branches K or --alternatives), each job forks its env K ways before step N and
    continues every fork as a branch: a tree of trajectories with parent links (docs/world.md)."""
    settings = Settings.from_env()
    if not tasks.exists():
        fail(f"no such tasks file or directory: {tasks}", json_out)
    config = make_policy_config(policy, model, policy_param, settings, json_out)
    plan = branch_plan(branch_at, branches, alternatives, json_out)
    loaded = load_tasks(tasks)[: limit or None]
    if not loaded:
        fail(f"no valid tasks in {tasks}", json_out)
    conn = redis_conn(settings, json_out)
    spec = EpisodeSpec(policy=config, max_turns=max_turns, episode_timeout=episode_timeout, branching=plan)
    collection = name or collection_name(config.name, config.model) + ("-tree" if plan else "")
    with progress() as bar:
        t = bar.add_task("enqueue", total=len(loaded) * attempts, status="")
        outcome = enqueue_episodes(conn, loaded, attempts, spec, collection=collection, settings=settings,
                                   on_progress=lambda n, last: bar.update(t, completed=n, status=last))
        counts: dict[str, int] = {}
        for state in outcome.values():
            counts[state] = counts.get(state, 0) + 1
        result = {"ok": True, "collection": collection, "queue": settings.queue, "jobs": len(outcome), "outcome": counts}
        if wait:
            result["status"] = watch_collection(conn, collection, bar)
            result["ok"] = result["status"]["failed"] == 0
    if json_out:
        print_json(result)
    else:
        console.print(f"collection [bold]{collection}[/]: {len(outcome)} jobs; "
                      + ", ".join(f"{v} {k}" for k, v in sorted(counts.items())))
        if not wait:
            console.print("run workers with `forager worker`; follow with `forager status`")
        else:
            console.print(status_line(result["status"]) + f"; trajectories in {settings.trajectories_dir}")
    if not result["ok"]:
        raise typer.Exit(1)


def branch_plan(at: list[int], branches: int, alternatives: Path | None, json_out: bool) -> BranchPlan | None:
    if not at and not branches and alternatives is None:
        return None
    actions = []
    if alternatives is not None:
        if not alternatives.is_file():
            fail(f"no such alternatives file: {alternatives}", json_out)
        try:
            actions = [json.loads(line) for line in alternatives.read_text().splitlines() if line.strip()]
        except json.JSONDecodeError as exc:
            fail(f"{alternatives}: not JSONL ({exc})", json_out)
    try:
        return BranchPlan(at=at, branches=branches, alternatives=actions)
    except ValidationError as exc:
        fail("bad branching options: " + "; ".join(e["msg"].removeprefix("Value error, ") for e in exc.errors()), json_out)


@app.command()
def worker(
    concurrency: int = typer.Option(1, "--concurrency", "-c", min=1, help="episodes in flight"),
    processes: int = typer.Option(1, "--processes", "-P", min=1,
                                  help="async worker processes sharing the concurrency (N/P episodes each)"),
    fork: bool = typer.Option(False, "--fork", help="RQ's fork-per-job worker: one process per episode in flight"),
    burst: bool = typer.Option(False, "--burst", help="exit when the queue is empty"),
    metrics_port: int | None = typer.Option(None, "--metrics-port", help="serve Prometheus metrics on this port"),
    metrics_host: str = typer.Option("127.0.0.1", "--metrics-host"),
    json_out: bool = typer.Option(False, "--json", help="print one JSON document on stdout when the pool stops"),
) -> None:
    """Run workers on the fleet's queue (FORAGER_REDIS_URL, FORAGER_QUEUE) until stopped: N episodes in flight
    as coroutines in P async worker processes (or, with --fork, N processes of one episode each)."""
    settings = Settings.from_env()
    conn = redis_conn(settings, json_out)
    pool = Pool(concurrency, settings.queue, settings.redis_url, burst=burst, metrics_port=metrics_port,
                metrics_host=metrics_host, log_dir=settings.logs_dir / "workers", processes=processes,
                per_job_process=fork)
    before = queue_counts(conn, settings.queue)
    done = threading.Event()

    def show():
        # The bar counts jobs the queue finished while this pool ran (all pools' work, queue-wide).
        with progress() as bar:
            t = bar.add_task(f"workers x{concurrency}", total=None, status="")
            while not done.wait(1.0):
                try:
                    c = queue_counts(conn, settings.queue)
                except redis.RedisError as exc:  # Redis restarting: keep the pool, say so
                    bar.update(t, status=f"redis unreachable: {exc}")
                    continue
                finished = c["finished"] - before["finished"] + c["failed"] - before["failed"]
                bar.update(t, completed=max(finished, 0), status=f"queued {c['queued']}  in flight {c['started']}  "
                           f"retrying {c['scheduled']}  finished {c['finished']}  failed {c['failed']}")

    shower = threading.Thread(target=show, daemon=True)
    shower.start()
    started = time.time()
    try:
        code = pool.run()
    except PoolError as exc:
        done.set()
        fail(str(exc), json_out)
    finally:
        done.set()
        shower.join(3)
    after = queue_counts(conn, settings.queue)
    if json_out:
        print_json({"ok": code == 0, "concurrency": concurrency, "processes": pool.processes, "fork": fork,
                    "seconds": round(time.time() - started, 2),
                    "queue": settings.queue, "jobs": after})
    raise typer.Exit(code)


@app.command()
def status(
    collection: str | None = typer.Option(None, "--collection", help="only this collection"),
    follow: bool = typer.Option(False, "--watch", help="live progress until the collection completes"),
    json_out: bool = typer.Option(False, "--json", help="print one JSON document on stdout"),
) -> None:
    """Queue counts, workers, and per-collection progress (queued, running, done, failed, reward)."""
    settings = Settings.from_env()
    conn = redis_conn(settings, json_out)
    if follow:
        with progress() as bar:
            for name in [collection] if collection else list_collections(conn):
                watch_collection(conn, name, bar)
    st = fleet_status(conn, settings.queue, [collection] if collection else None)
    st["trajectories_dir"] = str(settings.trajectories_dir)
    if json_out:
        print_json(st)
        return
    j = st["jobs"]
    console.print(f"queue [bold]{st['queue']}[/] at {masked(settings.redis_url)}: " + "  ".join(f"{k} {v}" for k, v in j.items()))
    console.print(f"workers: {len(st['workers'])}, episodes in flight: {st['in_flight']}")
    for w in st["workers"][:16]:
        console.print(f"  {w['name']}  {w['state']}  in flight {w['in_flight']}/{w['concurrency']}")
    if len(st["workers"]) > 16:
        console.print(f"  ... and {len(st['workers']) - 16} more")
    m = st["model"]
    if m["requests"]:
        console.print(f"model endpoints: requests {m['requests']}  in flight {m['in_flight']}  waiting {m['waiting']}  "
                      f"retried {m['retries']}  failed {m['failures']}")
        for w in st["workers"]:
            for e in w["model_endpoints"]:
                if e.get("last_error"):
                    console.print(f"  {w['name']} -> {e['url']}: errors {e['errors']}; last: {e['last_error'][:120]}")
    table = Table("collection", "jobs", "queued", "run", "retry", "done", "failed", "trajs", "solved", "reward")
    for c in st["collections"]:
        table.add_row(c["collection"], *(str(c[k]) for k in ("total", "queued", "running", "retrying", "done",
                                                              "failed", "trajectories")),
                      f"{c['solve_rate']:.0%}", f"{c['reward_sum']:g}")
    console.print(table)
