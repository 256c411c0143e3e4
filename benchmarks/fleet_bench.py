"""Fleet benchmark: trajectories per minute with the oracle policy for 1, 2 and 4 workers, and the
fleet's own overhead.

Measured in one run, on the same tasks:
  baseline  the episodes run one after another in this process (run_episode + store write, no queue);
  fleet     the same number of episodes as RQ jobs on a private Redis, run by `forager worker -c W`
            for W in 1, 2, 4 (fresh attempt numbers each time, so nothing is deduplicated away).

Overhead of the fleet = per job, everything that is not the episode itself (fork of the work horse,
job bookkeeping, leftover check, store write, result record) plus the worker's dispatch gap between
two jobs while the queue is not empty; reported as a share of the episodes' env time (the time the
env server spent on tool calls) and of their whole episode time. Target: under 5% of env time;
throughput rising with workers until the 2 cores are busy.

Usage: python benchmarks/fleet_bench.py [--episodes N] [--tasks FILE] [--workers 1,2,4]
The last line printed is one JSON object holding every figure.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import secrets
import subprocess
import sys
import tempfile
import time
from datetime import timezone
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from forager.config import Settings  # noqa: E402
from forager.cli.ui import console  # noqa: E402

TOKEN = secrets.token_hex(16)  # the env server always requires one


def free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_until(check, what: str, deadline: float = 120):
    end = time.monotonic() + deadline
    while not check():
        if time.monotonic() > end:
            raise RuntimeError(f"timed out waiting for {what}")
        time.sleep(0.1)


def start_services(work: Path):
    """A private redis-server and env server on free loopback ports."""
    import httpx
    import redis

    rport, eport = free_port(), free_port()
    (work / "redis").mkdir()
    procs = [subprocess.Popen([shutil.which("redis-server"), "--port", str(rport), "--bind", "127.0.0.1", "--dir",
                               str(work / "redis"), "--appendonly", "yes", "--save", ""],
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)]
    redis_url = f"redis://127.0.0.1:{rport}/0"
    wait_until(lambda: _quiet(lambda: redis.Redis.from_url(redis_url).ping()), "redis")
    log = open(work / "envserver.log", "ab")
    procs.append(subprocess.Popen([sys.executable, "-m", "envserver", "--token", TOKEN, "--host", "127.0.0.1", "--port", str(eport),
                                   "--allow", "forager/*", "--server-id", f"fleet-bench-{eport}"],
                                  stdout=log, stderr=log, env={**os.environ, "FORAGER_HOME": str(work / "server")}))
    env_url = f"http://127.0.0.1:{eport}"
    wait_until(lambda: _quiet(lambda: httpx.get(env_url + "/healthz", timeout=2).status_code == 200), "env server")
    return procs, redis_url, env_url


def _quiet(fn):
    try:
        return fn()
    except Exception:
        return False


def bench_tasks(args, work: Path):
    """Tasks from --tasks, else mutate-fix tasks synthesized from the tests' tiny repo (built here)."""
    from forager.tasks.store import load_tasks

    if args.tasks:
        return load_tasks(args.tasks)
    from forager.tasks.synth import run_synthesis
    from images.build import build_repo
    from images.sources import parse_entry
    from tests.fixtures_images import make_tiny_repo

    settings = Settings(home=work / "images")
    record = build_repo(parse_entry(str(make_tiny_repo(work / "src" / "tinycalc"))), settings)
    if record.status != "ok":
        raise RuntimeError(f"tiny repo did not build: {record.status} {record.reason}")
    return run_synthesis(record, settings, max_tasks=6, max_candidates=40, seed=1).tasks


def episode_list(tasks, n: int, first_attempt: int):
    return [(tasks[i % len(tasks)], first_attempt + i // len(tasks)) for i in range(n)]


def run_baseline(tasks, n: int, env_url: str, store_dir: Path) -> dict:
    from envserver.client import EnvClient
    from forager.episodes.loop import run_episode
    from forager.episodes.policies import make_policy
    from forager.trajectories import TrajectoryStore

    store = TrajectoryStore(store_dir)
    env_s = ep_s = 0.0
    started = time.monotonic()
    with EnvClient(env_url, token=TOKEN) as client:
        for task, attempt in episode_list(tasks, n, 0):
            traj = run_episode(task, make_policy("oracle", run_tests=False), client, attempt=attempt)
            assert traj.result.reward == 1.0, (task.id, traj.exit_reason, traj.error)
            store.write(traj)
            env_s += sum(s.env_seconds for s in traj.steps)
            ep_s += traj.finished_at - traj.started_at
    wall = time.monotonic() - started
    return {"wall_s": round(wall, 2), "per_min": round(n / wall * 60, 2), "env_s": round(env_s, 2),
            "episode_s": round(ep_s, 2)}


def run_fleet(tasks, n: int, workers: int, redis_url: str, env_url: str, home: Path) -> dict:
    from rq.job import Job

    from agent.jobs import EpisodeSpec
    from forager.episodes.policies import OracleConfig
    from agent.queue import SERIALIZER, connect
    from agent.status import RESULTS_KEY, collection_status

    queue = f"bench-w{workers}"
    env = {**os.environ, "FORAGER_REDIS_URL": redis_url, "FORAGER_ENVSERVER_URL": env_url, "FORAGER_ENVSERVER_TOKEN": TOKEN, "FORAGER_QUEUE": queue,
           "FORAGER_HOME": str(home), "PYTHONPATH": str(ROOT)}
    settings = Settings(home=home, redis_url=redis_url, envserver_url=env_url, envserver_token=TOKEN, queue=queue)
    conn = connect(redis_url)
    home.mkdir(parents=True, exist_ok=True)
    # Workers up and idle first, so their start-up is not counted as fleet overhead.
    log = open(home.parent / f"pool-w{workers}.log", "ab")
    pool = subprocess.Popen([sys.executable, "-m", "forager.cli", "worker", "-c", str(workers)], env=env, cwd=ROOT,
                            stdout=log, stderr=log)
    try:
        from agent.services import workers_on

        wait_until(lambda: workers_on(redis_url, queue) >= workers, f"{workers} workers")
        pairs = episode_list(tasks, n, 1000 * workers)
        spec = EpisodeSpec(policy=OracleConfig(run_tests=False))
        started = time.monotonic()
        outcome = {}
        for task, attempt in pairs:  # one attempt number each: enqueue_episodes makes attempts 0..k-1
            outcome.update(_enqueue_one(conn, task, attempt, spec, queue, settings))
        wait_until(lambda: collection_status(conn, queue, only=set(outcome))["complete"], "the episodes", 1800)
        wall = time.monotonic() - started
    finally:
        pool.terminate()
        pool.wait(120)
    jobs = [Job.fetch(j, connection=conn, serializer=SERIALIZER) for j in outcome]
    results = [json.loads(r) for r in conn.hmget(RESULTS_KEY, list(outcome))]
    status = collection_status(conn, queue, only=set(outcome))
    assert status["solved"] == n, status
    env_s = sum(r["env_seconds"] for r in results)
    ep_s = sum(r["episode_seconds"] for r in results)
    in_job = sum((j.ended_at - j.started_at).total_seconds() for j in jobs) - ep_s
    gaps = dispatch_gaps(jobs)
    overhead = in_job + gaps
    return {"workers": workers, "wall_s": round(wall, 2), "per_min": round(n / wall * 60, 2),
            "env_s": round(env_s, 2), "episode_s": round(ep_s, 2), "in_job_overhead_s": round(in_job, 2),
            "dispatch_gaps_s": round(gaps, 2), "overhead_vs_env": round(overhead / env_s, 4),
            "overhead_vs_episode": round(overhead / ep_s, 4)}


def _enqueue_one(conn, task, attempt, spec, queue, settings):
    from agent.jobs import JOB_FUNC, JOB_TIMEOUT_MARGIN
    from agent.queue import JobSpec, enqueue_many, episode_job_id

    job_id = episode_job_id(task.id, attempt, spec.policy.name, spec.policy.model)
    kwargs = {"task": task.model_dump(mode="json"), "attempt": attempt, "policy": spec.policy.model_dump(mode="json"),
              "collection": queue, "max_turns": spec.max_turns, "episode_timeout": spec.episode_timeout}
    return enqueue_many([JobSpec(JOB_FUNC, kwargs, job_id, timeout=spec.episode_timeout + JOB_TIMEOUT_MARGIN)],
                        conn=conn, queue_name=queue, collection=queue)


def dispatch_gaps(jobs) -> float:
    """Per worker, idle time between the end of one job and the start of its next one."""
    by_worker: dict[str, list] = {}
    for j in jobs:
        by_worker.setdefault(j.worker_name or "?", []).append(j)
    total = 0.0
    for js in by_worker.values():
        js.sort(key=lambda j: j.started_at)
        for a, b in zip(js, js[1:]):
            total += max(0.0, (b.started_at.replace(tzinfo=timezone.utc) - a.ended_at.replace(tzinfo=timezone.utc))
                         .total_seconds())
    return total


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--episodes", type=int, default=12, help="episodes per configuration")
    parser.add_argument("--tasks", help="tasks JSONL (default: synthesize from the tiny test repo)")
    parser.add_argument("--workers", default="1,2,4")
    parser.add_argument("--keep", action="store_true", help="keep the work directory (default: removed)")
    args = parser.parse_args()

    work = Path(tempfile.mkdtemp(prefix="forager-fleet-bench-"))
    procs, redis_url, env_url = start_services(work)
    try:
        tasks = bench_tasks(args, work)
        console.print(f"{len(tasks)} tasks; {args.episodes} episodes per configuration")
        base = run_baseline(tasks, args.episodes, env_url, work / "baseline-trajs")
        console.print(f"baseline (in-process, sequential): {base['per_min']} trajectories/min")
        fleets = []
        for w in [int(x) for x in args.workers.split(",")]:
            r = run_fleet(tasks, args.episodes, w, redis_url, env_url, work / f"fleet-w{w}" / "home")
            r["vs_baseline"] = round(r["per_min"] / base["per_min"], 3)
            fleets.append(r)
            console.print(f"{w} worker(s): {r['per_min']} trajectories/min ({r['vs_baseline']}x baseline); "
                          f"overhead {r['overhead_vs_env']:.1%} of env time, {r['overhead_vs_episode']:.1%} of "
                          f"episode time (in-job {r['in_job_overhead_s']}s, dispatch gaps {r['dispatch_gaps_s']}s)")
    finally:
        for p in reversed(procs):
            p.terminate()
            p.wait(120)
        if not args.keep:
            shutil.rmtree(work, ignore_errors=True)
    one = fleets[0]
    figures = {
        "episodes_per_config": args.episodes, "tasks": len(tasks), "cpus": os.cpu_count(),
        "baseline": base, "fleet": fleets,
        "overhead_vs_env_w1": one["overhead_vs_env"],
        "speedup_by_workers": {str(f["workers"]): round(f["per_min"] / one["per_min"], 3) for f in fleets},
    }
    print(json.dumps(figures))


if __name__ == "__main__":
    main()
