"""The fleet's verbs: `forager collect`, `forager worker`, `forager status`, `forager run`."""

from __future__ import annotations

import signal
import time
from pathlib import Path

import typer

from forager.config import Settings
from forager.ui import console, print_json, progress


def _fail(message: str, json_out: bool) -> None:
    if json_out:
        print_json({"ok": False, "error": message})
    console.print(f"[red]error:[/] {message}")
    raise typer.Exit(1)


def _redis(settings: Settings, json_out: bool):
    import redis

    from agent.queue import connect

    conn = connect(settings.redis_url)
    try:
        conn.ping()
    except redis.RedisError as exc:
        _fail(f"cannot reach Redis at {settings.redis_url} ({exc}); start it (`forager setup`) or set FORAGER_REDIS_URL", json_out)
    return conn


def parse_params(items: list[str]) -> dict:
    """["temperature=0.2", "run_tests=false", "protocol=text"] -> {"temperature": 0.2, ...}."""
    import json

    params = {}
    for item in items:
        key, sep, raw = item.partition("=")
        if not sep or not key:
            raise ValueError(f"--policy-param wants KEY=VALUE, got {item!r}")
        try:
            params[key] = json.loads(raw)
        except json.JSONDecodeError:
            params[key] = raw
    return params


def status_line(s: dict) -> str:
    return (f"queued {s['queued']}  running {s['running']}  retrying {s['retrying']}  done {s['done']}  "
            f"failed {s['failed']}  trajectories {s['trajectories']}  reward {s['reward_sum']:g}")


def watch_collection(conn, collection: str, *, quiet: bool = False, poll: float = 1.0, timeout: float | None = None,
                     stop_when=None) -> dict:
    """Live bar until every job of the collection is done or failed (or `timeout` seconds pass)."""
    from agent.status import collection_status

    started = time.monotonic()
    with progress(disable=quiet) as bar:
        s = collection_status(conn, collection)
        task = bar.add_task(f"collect {collection}", total=max(s["total"], 1), status=status_line(s))
        while True:
            s = collection_status(conn, collection)
            bar.update(task, total=max(s["total"], 1), completed=s["done"] + s["failed"], status=status_line(s))
            if s["complete"] or (timeout is not None and time.monotonic() - started > timeout):
                return s
            if stop_when is not None and stop_when():
                return s
            time.sleep(poll)


def register(app: typer.Typer) -> None:
    @app.command()
    def collect(
        tasks: Path = typer.Argument(..., help="a tasks JSONL file or a directory of them ($FORAGER_HOME/tasks)"),
        policy: str = typer.Option("oracle", "--policy", "-p", help="oracle | openai"),
        attempts: int = typer.Option(1, "--attempts", "-k", min=1, help="episodes per task"),
        model: str | None = typer.Option(None, "--model", help="model name for the openai policy (default FORAGER_MODEL)"),
        policy_param: list[str] = typer.Option([], "--policy-param", help="KEY=VALUE passed to the policy (JSON values)"),
        name: str | None = typer.Option(None, "--name", help="collection name (default: policy and model)"),
        max_turns: int = typer.Option(30, "--max-turns", min=1),
        episode_timeout: int = typer.Option(1800, "--episode-timeout", min=10, help="seconds; the job is killed past this"),
        limit: int | None = typer.Option(None, "--limit", min=1, help="only the first N tasks"),
        wait: bool = typer.Option(False, "--wait", help="stay and show progress until every job is done or failed"),
        json_out: bool = typer.Option(False, "--json", help="print one JSON document on stdout"),
    ) -> None:
        """Enqueue one episode job per (task, attempt); ids already queued, running or done are skipped."""
        from agent.jobs import EpisodeSpec, collection_name, enqueue_episodes
        from forager.tasks.store import load_tasks

        settings = Settings.from_env()
        if not tasks.exists():
            _fail(f"no such tasks file or directory: {tasks}", json_out)
        if policy not in ("oracle", "openai"):
            _fail(f"unknown policy {policy!r}: use oracle or openai", json_out)
        model = model or (settings.model_name if policy == "openai" else None)
        if policy == "openai" and not model:
            _fail("the openai policy needs a model: --model or FORAGER_MODEL", json_out)
        try:
            params = parse_params(policy_param)
        except ValueError as exc:
            _fail(str(exc), json_out)
        loaded = load_tasks(tasks)[: limit or None]
        if not loaded:
            _fail(f"no valid tasks in {tasks}", json_out)
        conn = _redis(settings, json_out)
        spec = EpisodeSpec(policy=policy, model=model, max_turns=max_turns, episode_timeout=episode_timeout,
                           parameters=params)
        collection = name or collection_name(policy, model)
        with progress(disable=json_out) as bar:
            t = bar.add_task("enqueue", total=len(loaded) * attempts, status="")
            outcome = enqueue_episodes(conn, loaded, attempts, spec, collection=collection, settings=settings,
                                       on_progress=lambda n, last: bar.update(t, completed=n, status=last))
        counts: dict[str, int] = {}
        for state in outcome.values():
            counts[state] = counts.get(state, 0) + 1
        result = {"ok": True, "collection": collection, "queue": settings.queue, "jobs": len(outcome), "outcome": counts}
        if wait:
            result["status"] = watch_collection(conn, collection, quiet=json_out)
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

    @app.command()
    def worker(
        concurrency: int = typer.Option(1, "--concurrency", "-c", min=1, help="worker processes"),
        burst: bool = typer.Option(False, "--burst", help="exit when the queue is empty"),
        metrics_port: int | None = typer.Option(None, "--metrics-port", help="serve Prometheus metrics on this port"),
        metrics_host: str = typer.Option("127.0.0.1", "--metrics-host"),
        json_out: bool = typer.Option(False, "--json", help="print one JSON document on stdout when the pool stops"),
    ) -> None:
        """Run N RQ workers on the fleet's queue (FORAGER_REDIS_URL, FORAGER_QUEUE) until stopped."""
        import threading

        from agent.status import queue_counts
        from agent.worker import Pool, PoolError

        settings = Settings.from_env()
        conn = _redis(settings, json_out)
        pool = Pool(concurrency, settings.queue, settings.redis_url, burst=burst, metrics_port=metrics_port,
                    metrics_host=metrics_host, log_dir=settings.logs_dir / "workers")
        before = queue_counts(conn, settings.queue)
        done = threading.Event()

        def show():
            # The bar counts jobs the queue finished while this pool ran (all pools' work, queue-wide).
            with progress(disable=json_out) as bar:
                t = bar.add_task(f"workers x{concurrency}", total=None, status="")
                while not done.wait(1.0):
                    try:
                        c = queue_counts(conn, settings.queue)
                    except Exception as exc:  # Redis restarting: keep the pool, say so
                        bar.update(t, status=f"redis unreachable: {exc}")
                        continue
                    finished = c["finished"] - before["finished"] + c["failed"] - before["failed"]
                    bar.update(t, completed=max(finished, 0), status=f"queued {c['queued']}  running {c['started']}  "
                               f"retrying {c['scheduled']}  finished {c['finished']}  failed {c['failed']}")

        shower = threading.Thread(target=show, daemon=True)
        shower.start()
        started = time.time()
        try:
            code = pool.run()
        except PoolError as exc:
            done.set()
            _fail(str(exc), json_out)
        finally:
            done.set()
            shower.join(3)
        after = queue_counts(conn, settings.queue)
        if json_out:
            print_json({"ok": code == 0, "concurrency": concurrency, "seconds": round(time.time() - started, 2),
                        "queue": settings.queue, "jobs": after})
        raise typer.Exit(code)

    @app.command()
    def status(
        collection: str | None = typer.Option(None, "--collection", help="only this collection"),
        watch: bool = typer.Option(False, "--watch", help="live progress until the collection completes"),
        json_out: bool = typer.Option(False, "--json", help="print one JSON document on stdout"),
    ) -> None:
        """Queue counts, workers, and per-collection progress (queued, running, done, failed, reward)."""
        from agent.status import fleet_status, list_collections

        settings = Settings.from_env()
        conn = _redis(settings, json_out)
        if watch:
            names = [collection] if collection else list_collections(conn)
            for name in names:
                watch_collection(conn, name, quiet=json_out)
        st = fleet_status(conn, settings.queue, [collection] if collection else None)
        st["trajectories_dir"] = str(settings.trajectories_dir)
        if json_out:
            print_json(st)
            return
        from rich.table import Table

        j = st["jobs"]
        console.print(f"queue [bold]{st['queue']}[/] at {settings.redis_url}: " + "  ".join(f"{k} {v}" for k, v in j.items()))
        console.print(f"workers: {len(st['workers'])} ("
                      + ", ".join(f"{w['name']}={w['state']}" for w in st["workers"][:8])
                      + (" ..." if len(st["workers"]) > 8 else "") + ")")
        table = Table("collection", "jobs", "queued", "run", "retry", "done", "failed", "trajs", "solved", "reward")
        for c in st["collections"]:
            table.add_row(c["collection"], *(str(c[k]) for k in ("total", "queued", "running", "retrying", "done",
                                                                  "failed", "trajectories")),
                          f"{c['solve_rate']:.0%}", f"{c['reward_sum']:g}")
        console.print(table)

    @app.command("run")
    def run_cmd(
        repos: Path = typer.Argument(None, help="repository list [default: the bundled examples/repos.txt]"),
        max_repos: int | None = typer.Option(None, "--max-repos", min=1, help="only the first N entries of the list (default: all)"),
        tasks_per_repo: int = typer.Option(3, "--tasks-per-repo", min=1, help="mutate-fix tasks per repository"),
        max_candidates: int = typer.Option(30, "--max-candidates", min=1, help="mutations tried per repository"),
        attempts: int = typer.Option(1, "--attempts", "-k", min=1, help="episodes per task"),
        workers: int = typer.Option(2, "--workers", "-w", min=0,
                                    help="worker processes to start if none listen on the queue (0: use existing)"),
        jobs: int = typer.Option(2, "-j", "--jobs", min=1, help="concurrent image builds"),
        synth_workers: int | None = typer.Option(None, "--synth-workers", min=1,
                                                 help="sandboxes per repo validating mutations in parallel (default: CPUs, at most 4)"),
        policy: str | None = typer.Option(None, "--policy", "-p",
                                          help="oracle | openai [default: openai if FORAGER_MODEL_BASE_URL is set]"),
        model: str | None = typer.Option(None, "--model", help="model for the openai policy (default FORAGER_MODEL)"),
        max_turns: int = typer.Option(30, "--max-turns", min=1),
        episode_timeout: int = typer.Option(1800, "--episode-timeout", min=10),
        json_out: bool = typer.Option(False, "--json", help="print the summary as one JSON document on stdout"),
    ) -> None:
        """The whole job on this machine: build images, synthesize tasks, collect trajectories, summarize.

        Resumable: interrupted, the next run skips every image, task and episode already done.
        """
        from agent.pipeline import DEFAULT_LIST, RunOptions, run
        from agent.services import ServiceError

        settings = Settings.from_env()
        repos = repos or DEFAULT_LIST
        if not repos.is_file():
            _fail(f"no such repository list: {repos}", json_out)
        if policy not in (None, "oracle", "openai"):
            _fail(f"unknown policy {policy!r}: use oracle or openai", json_out)
        opts = RunOptions(repos=repos, max_repos=max_repos, tasks_per_repo=tasks_per_repo, max_candidates=max_candidates,
                          attempts=attempts, workers=workers, jobs=jobs, synth_workers=synth_workers, max_turns=max_turns,
                          episode_timeout=episode_timeout, policy=policy, model=model)
        started = time.monotonic()

        def interrupted(signum, frame):
            raise KeyboardInterrupt  # SIGTERM too: unwind, so the services this run started are stopped

        signal.signal(signal.SIGTERM, interrupted)
        try:
            with progress() as bar:
                report = run(opts, settings, bar, log=lambda m: bar.console.print(f"[cyan]run[/] {m}"))
        except (ValueError, RuntimeError, ServiceError) as exc:
            _fail(str(exc), json_out)
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
    from rich.table import Table

    table = Table(title=f"forager run: {s['policy']}{' / ' + s['model'] if s['model'] else ''}", show_header=False)
    table.add_column(style="bold")
    table.add_column()
    r = s["repos"]
    table.add_row("repos ok", f"{r['ok']}/{r['total']}")
    for repo, why in {**r["build_failures"], **r["synth_failures"]}.items():
        table.add_row("", f"[yellow]{repo}[/]: {why[:90]}")
    table.add_row("tasks", f"{s['tasks']} (" + ", ".join(f"{k} {v}" for k, v in s["tasks_by_repo"].items()) + ")")
    table.add_row("trajectories", f"{s['trajectories']} (failed jobs: {s['failed_jobs']})")
    table.add_row("solve rate", f"{s['solve_rate']:.0%}")
    table.add_row("mean steps", f"{s['mean_steps']:g}")
    table.add_row("time", "  ".join(f"{k} {v:g}s" for k, v in s["seconds"].items()))
    for k, v in s["data"].items():
        table.add_row(k, v)
    console.print(table)
