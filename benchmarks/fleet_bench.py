"""Fleet benchmark: model-bound collection at scale, the async worker against today's process-per-episode fleet.

One run, one env server, one private Redis, one scripted model: an OpenAI-compatible server on loopback (the one
stand-in allowed for a model) that answers every request after --latency ± --jitter seconds, as a loaded model
server would. Each episode is --steps model turns in a real env of a task from the main job's catalog (its
images: the default list's), every turn a shell call; it ends at its turn budget (with --grade, the last turn is
a submit instead, graded in a fresh container as always).

  async  `forager worker --concurrency C`: one worker process, C episodes in flight as coroutines, for each C of
         --levels (64, 256, 512);
  fork   `forager worker --fork --concurrency C`: RQ's fork-per-job worker, one process (and work horse) per
         episode in flight, at --fork-level (the largest it reaches here).

Per level, --waves x C episodes are enqueued at once on idle workers, and timed until the last one ends:
  - episodes per minute against the bound C x 60 / (steps x latency) (what C episodes that only waited for the
    model would do): target >= 80% until the env server or the CPU is the limit (the run says which);
  - collection-side memory per in-flight episode: the worker processes' RSS (and PSS, which counts pages shared
    by forked horses once) at the moment the most episodes were in flight, over that number: target <= 8 MB;
    the env server's RSS and the env containers' memory (cgroup, plus their containerd shims) separately.

    flock /tmp/forager-heavy.lock python benchmarks/fleet_bench.py [--home ~/.forager] [--levels 64,256,512]
        [--fork-level 64] [--steps 10] [--latency 2 --jitter 0.5] [--waves 2] [--grade]

The last line printed is one JSON object holding every figure.
"""

from __future__ import annotations

import argparse
import json
import os
import secrets
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from benchmarks import memory  # noqa: E402
from forager.config import Settings  # noqa: E402

TOKEN = secrets.token_hex(16)  # the env server always requires one


def log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_until(check, what: str, deadline: float = 180):
    end = time.monotonic() + deadline
    while not (value := check()):
        if time.monotonic() > end:
            raise RuntimeError(f"timed out waiting for {what}")
        time.sleep(0.2)
    return value


def _quiet(fn):
    try:
        return fn()
    except Exception:
        return False


def start_services(work: Path, max_envs: int):
    """A private redis-server and env server on free loopback ports."""
    import httpx
    import redis

    rport, eport = free_port(), free_port()
    (work / "redis").mkdir()
    procs = [subprocess.Popen([shutil.which("redis-server"), "--port", str(rport), "--bind", "127.0.0.1", "--dir",
                               str(work / "redis"), "--appendonly", "yes", "--save", "", "--maxclients", "20000"],
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)]
    redis_url = f"redis://127.0.0.1:{rport}/0"
    wait_until(lambda: _quiet(lambda: redis.Redis.from_url(redis_url).ping()), "redis")
    out = open(work / "envserver.log", "ab")
    server_id = f"fleet-bench-{eport}"
    procs.append(subprocess.Popen([sys.executable, "-m", "envserver", "--token", TOKEN, "--host", "127.0.0.1", "--port",
                                   str(eport), "--allow", "forager/*", "--server-id", server_id, "--max-envs",
                                   str(max_envs)], stdout=out, stderr=out,
                                  env={**os.environ, "FORAGER_HOME": str(work / "server")}))
    env_url = f"http://127.0.0.1:{eport}"
    wait_until(lambda: _quiet(lambda: httpx.get(env_url + "/healthz", timeout=2).status_code == 200), "env server")
    return procs, redis_url, env_url, server_id


def load_bench_tasks(home: Path, limit_per_repo: int = 3):
    """The main job's tasks (read only): a few per repository, so every image of the list is used."""
    from forager.tasks.store import load_tasks

    tasks = load_tasks(home / "tasks")
    by_repo: dict[str, list] = {}
    for t in tasks:
        by_repo.setdefault(t.repo, []).append(t)
    picked = [t for repo in sorted(by_repo) for t in by_repo[repo][:limit_per_repo]]
    if not picked:
        raise SystemExit(f"no tasks in {home / 'tasks'}: run `forager run` first (or pass --home)")
    return picked


class Sampler(threading.Thread):
    """Once a second: episodes in flight (RQ's StartedJobRegistry) and the memory of the worker processes, the
    env server and (every few seconds) the env containers; keeps the sample with the most episodes in flight."""

    def __init__(self, conn, queue: str, pool_pid: int, server_pid: int, server_id: str, docker_client):
        super().__init__(daemon=True)
        self.conn, self.queue, self.pool_pid, self.server_pid = conn, queue, pool_pid, server_pid
        self.server_id, self.docker = server_id, docker_client
        self.best: dict = {}
        self.halt = threading.Event()
        self.cpu_start = (memory_cpu(server_pid), time.monotonic())

    def run(self) -> None:
        from agent.status import queue_counts

        tick = 0
        while not self.halt.wait(1.0):
            tick += 1
            try:
                in_flight = queue_counts(self.conn, self.queue)["started"]
            except Exception:
                continue
            if in_flight < self.best.get("in_flight", 1) or (tick % 3 and in_flight == self.best.get("in_flight")):
                continue
            workers = worker_processes(self.pool_pid)
            sample = {"in_flight": in_flight, "worker_rss": sum(memory.rss(p) for p in workers),
                      "worker_pss": sum(memory.pss(p) for p in workers), "worker_processes": len(workers),
                      "server_rss": memory.rss(self.server_pid)}
            ids = {c.id for c in self.docker.containers.list(filters={"label": f"forager.server={self.server_id}"})}
            sample["containers"] = len(ids)
            sample["container_memory"] = sum(memory.container_memory(c) for c in ids)
            sample["shims"] = memory.shims(ids)
            self.best = sample


def memory_cpu(pid: int) -> float:
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    except OSError:
        return 0.0


def worker_processes(pool_pid: int) -> list[int]:
    """The pool's worker processes and their work horses (not the pool's supervisor, nor the retry scheduler)."""
    out = []
    for pid in memory.children(pool_pid):
        try:
            cmd = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        if b"agent.worker" in cmd and b"--scheduler" not in cmd:
            out.append(pid)
    return out


def run_level(tasks, concurrency: int, fork: bool, args, redis_url: str, env_url: str, model_url: str,
              server_pid: int, server_id: str, work: Path, first_attempt: int) -> dict:
    import docker

    from agent.jobs import JOB_FUNC, JOB_TIMEOUT_MARGIN
    from agent.queue import JobSpec, connect, enqueue_many, episode_job_id
    from agent.services import workers_on
    from agent.status import RESULTS_KEY, collection_status
    from forager.episodes.policies import OpenAIConfig

    mode = "fork" if fork else "async"
    queue = f"bench-{mode}-{concurrency}"
    home = work / queue
    home.mkdir()
    env = {**os.environ, "FORAGER_REDIS_URL": redis_url, "FORAGER_ENVSERVER_URL": env_url,
           "FORAGER_ENVSERVER_TOKEN": TOKEN, "FORAGER_QUEUE": queue, "FORAGER_HOME": str(home),
           "FORAGER_MODEL_BASE_URL": model_url, "FORAGER_MODEL_MAX_CONCURRENCY": str(concurrency),
           "PYTHONPATH": str(ROOT)}
    conn = connect(redis_url)
    out = open(work / f"pool-{queue}.log", "ab")
    cmd = [sys.executable, "-m", "forager.cli", "worker", "--concurrency", str(concurrency)] + (["--fork"] if fork else [])
    pool = subprocess.Popen(cmd, env=env, cwd=ROOT, stdout=out, stderr=out)
    try:
        # Workers up and idle first: their start-up is not the collection's time.
        wait_until(lambda: workers_on(redis_url, queue) >= (concurrency if fork else 1), f"{mode} workers", 600)
        policy = OpenAIConfig(model="scripted", max_retries=5)
        n = concurrency * args.waves
        specs = []
        for i in range(n):
            task = tasks[i % len(tasks)]
            attempt = first_attempt + i // len(tasks)  # fresh ids per level: nothing is deduplicated away
            kwargs = {"task": task.model_dump(mode="json"), "attempt": attempt, "collection": queue,
                      "policy": policy.model_dump(mode="json"), "max_turns": args.steps, "episode_timeout": 3600}
            specs.append(JobSpec(JOB_FUNC, kwargs, episode_job_id(task.id, attempt, "openai", "scripted"),
                                 timeout=3600 + JOB_TIMEOUT_MARGIN, retries=0))
        sampler = Sampler(conn, queue, pool.pid, server_pid, server_id, docker.from_env())
        started = time.monotonic()
        cpu0 = {"server": memory_cpu(server_pid), "workers": sum(memory_cpu(p) for p in worker_processes(pool.pid))}
        enqueue_many(specs, conn=conn, queue_name=queue, collection=queue)
        sampler.start()
        last = [0]

        def complete():
            s = collection_status(conn, queue)
            if s["done"] + s["failed"] != last[0]:
                last[0] = s["done"] + s["failed"]
                log(f"  {mode} x{concurrency}: {last[0]}/{n} done, {s['running']} running, "
                    f"{round(time.monotonic() - started)} s, load {os.getloadavg()[0]:.1f}")
            return s["complete"] and s

        status = wait_until(complete, "the episodes", args.level_timeout)
        wall = time.monotonic() - started
        cpu = {"server": memory_cpu(server_pid) - cpu0["server"],
               "workers": sum(memory_cpu(p) for p in worker_processes(pool.pid)) - cpu0["workers"]}
        sampler.halt.set()
        sampler.join(10)
    finally:
        pool.terminate()
        try:
            pool.wait(300)
        except subprocess.TimeoutExpired:
            pool.kill()
    results = [json.loads(r) for r in conn.hmget(RESULTS_KEY, [s.job_id for s in specs]) if r]
    episodes_ok = [r for r in results if r.get("exit_reason") in ("max_turns", "submitted")]
    mean_episode = sum(r["episode_seconds"] for r in results) / len(results) if results else None
    model_s = sum(r["model_seconds"] for r in results) / len(results) if results else None
    env_s = sum(r["env_seconds"] for r in results) / len(results) if results else None
    per_min = len(episodes_ok) / wall * 60
    bound = concurrency * 60 / (args.steps * args.latency)
    best = sampler.best
    in_flight = best.get("in_flight") or 0
    return {
        "mode": mode, "concurrency": concurrency, "episodes": n, "ok": len(episodes_ok), "failed": status["failed"],
        "wall_s": round(wall, 1), "per_min": round(per_min, 1), "bound_per_min": round(bound, 1),
        "efficiency": round(per_min / bound, 3),
        "episode_s_mean": round(mean_episode, 2) if mean_episode else None,
        "episode_model_s_mean": round(model_s, 2) if model_s else None,
        "episode_env_s_mean": round(env_s, 2) if env_s else None,
        "episode_other_s_mean": round(mean_episode - model_s - env_s, 2) if results else None,
        "max_in_flight": in_flight,
        "worker_processes": best.get("worker_processes"),
        "worker_rss_mb": memory.mb(best.get("worker_rss", 0)), "worker_pss_mb": memory.mb(best.get("worker_pss", 0)),
        "worker_rss_mb_per_episode": memory.mb(best.get("worker_rss", 0) / in_flight) if in_flight else None,
        "worker_pss_mb_per_episode": memory.mb(best.get("worker_pss", 0) / in_flight) if in_flight else None,
        "envserver_rss_mb": memory.mb(best.get("server_rss", 0)),
        "env_containers": best.get("containers"),
        "env_container_mb_per_env": memory.mb(best.get("container_memory", 0) / max(1, best.get("containers") or 1)),
        "env_shim_mb_per_env": memory.mb(best.get("shims", {}).get("rss", 0) / max(1, best.get("containers") or 1)),
        "cpu_s": {"envserver": round(cpu["server"], 1), "workers": round(cpu["workers"], 1)},
        "envserver_cpu_share": round(cpu["server"] / wall, 3),
        "loadavg_1m_end": round(os.getloadavg()[0], 2),
    }


def limit_of(r: dict, cpus: int) -> str:
    """What held a level below its bound: the env server (its one event loop busy most of the time), the host's
    CPU (load above the cores), or none of those (then it is this code's, and the run says so)."""
    if r["efficiency"] >= 0.8:
        return "none"
    if r["envserver_cpu_share"] >= 0.85:
        return "env server (its event loop is busy {:.0%} of the time)".format(r["envserver_cpu_share"])
    if r["loadavg_1m_end"] >= cpus:
        return f"host CPU (load {r['loadavg_1m_end']} on {cpus} cores)"
    return "unexplained"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--home", type=Path, default=Path(os.environ.get("FORAGER_HOME", Path.home() / ".forager")),
                    help="where the main job's tasks are (read only)")
    ap.add_argument("--levels", default="64,256,512", help="episodes in flight for the async worker")
    ap.add_argument("--fork-level", type=int, default=64, help="episodes in flight for the process-per-episode fleet")
    ap.add_argument("--steps", type=int, default=10)
    ap.add_argument("--latency", type=float, default=2.0)
    ap.add_argument("--jitter", type=float, default=0.5)
    ap.add_argument("--waves", type=int, default=2, help="episodes per level = waves x concurrency")
    ap.add_argument("--grade", action="store_true", help="end each episode with a graded submit")
    ap.add_argument("--level-timeout", type=float, default=2400, help="s a level may take (then it is reported failed)")
    ap.add_argument("--keep", action="store_true", help="keep the work directory")
    args = ap.parse_args()
    from tests.test_fleet_support import start_model_server

    levels = [int(x) for x in args.levels.split(",") if x]
    tasks = load_bench_tasks(args.home)
    work = Path(tempfile.mkdtemp(prefix="forager-fleet-bench-"))
    procs, redis_url, env_url, server_id = start_services(work, max(levels + [args.fork_level]) + 16)
    model_port = free_port()
    # Without --grade the model never submits: the episode ends at its turn budget.
    procs.append(start_model_server(model_port, args.steps if args.grade else args.steps + 10_000, args.latency,
                                    args.jitter, work / "model.log"))
    figures: dict = {"cpus": os.cpu_count(), "steps": args.steps, "latency_s": args.latency, "jitter_s": args.jitter,
                     "waves": args.waves, "graded": args.grade, "tasks": len(tasks),
                     "images": len({t.image for t in tasks}), "loadavg_1m_start": round(os.getloadavg()[0], 2)}
    runs = []
    try:
        plan = [(c, False) for c in levels] + ([(args.fork_level, True)] if args.fork_level else [])
        for concurrency, fork in plan:
            log(f"{'fork' if fork else 'async'} fleet, {concurrency} episodes in flight ...")
            try:
                r = run_level(tasks, concurrency, fork, args, redis_url, env_url, f"http://127.0.0.1:{model_port}/v1",
                              procs[1].pid, server_id, work, first_attempt=100_000 * (len(runs) + 1))
            except Exception as exc:  # a level that cannot run is a figure too (say why), not a crash
                r = {"mode": "fork" if fork else "async", "concurrency": concurrency, "error": f"{type(exc).__name__}: {exc}"}
                log(f"  failed: {r['error']}")
                runs.append(r)
                continue
            r["limit"] = limit_of(r, os.cpu_count() or 1)
            runs.append(r)
            log(f"  {r['per_min']} episodes/min = {r['efficiency']:.0%} of the bound {r['bound_per_min']}/min "
                f"(limit: {r['limit']}); worker {r['worker_rss_mb_per_episode']} MB RSS / "
                f"{r['worker_pss_mb_per_episode']} MB PSS per episode in flight ({r['max_in_flight']} in flight, "
                f"{r['worker_processes']} processes); env server {r['envserver_rss_mb']} MB; per env "
                f"{r['env_container_mb_per_env']} MB container + {r['env_shim_mb_per_env']} MB shim; "
                f"failed {r['failed']}; load {r['loadavg_1m_end']}")
    finally:
        for p in reversed(procs):
            p.terminate()
            try:
                p.wait(180)
            except subprocess.TimeoutExpired:
                p.kill()
        if not args.keep:
            shutil.rmtree(work, ignore_errors=True)
    figures["runs"] = runs
    ok = [r for r in runs if "error" not in r]
    asyncs = [r for r in ok if r["mode"] == "async"]
    fork = next((r for r in ok if r["mode"] == "fork"), None)
    figures["async_worker_mb_per_episode_max"] = max((r["worker_rss_mb_per_episode"] or 0 for r in asyncs), default=None)
    figures["targets_met"] = {
        "memory_le_8mb_per_episode": bool(asyncs) and all((r["worker_rss_mb_per_episode"] or 1e9) <= 8 for r in asyncs),
        "efficiency_ge_80pct_or_limit_named": bool(asyncs) and all(r["efficiency"] >= 0.8 or r["limit"] != "unexplained"
                                                                    for r in asyncs),
        "every_level_ran": len(ok) == len(runs),
    }
    if fork:
        same = next((r for r in asyncs if r["concurrency"] == fork["concurrency"]), None)
        if same:
            figures["async_vs_fork_same_concurrency"] = {
                "memory_ratio": round((fork["worker_rss_mb_per_episode"] or 0) / (same["worker_rss_mb_per_episode"] or 1), 1),
                "per_min_ratio": round(same["per_min"] / fork["per_min"], 3) if fork["per_min"] else None}
    figures["loadavg_1m_end"] = round(os.getloadavg()[0], 2)
    print(json.dumps(figures))


if __name__ == "__main__":
    main()
