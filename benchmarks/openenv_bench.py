"""OpenEnv interface overhead per step: one shell step through Forager's own API (envserver.client.EnvClient)
and through the OpenEnv server (`forager openenv`, driven by openenv-core's GenericEnvClient over /ws), same
env server, same task, same run.

A private env server (its own token, the task's image allowed) and a `forager openenv` server over it are
started; an env of the task is made for each path (the direct one from `env_request(task)`, exactly what a reset
makes), then rounds of three steps, in a new random order each round: one direct, one through the client's sync wrapper (its own event-loop thread), one through
the async client driven from the benchmark's thread, --steps times, the same command each (default `true`;
every path records the step's state, as every step does). Reported: p50/p90 per path, the added p50 (OpenEnv
p50 - direct p50) and the p50 of the paired differences (each OpenEnv step minus the direct step of the same
round: drift of a loaded machine cancels). The target is judged on the async client. Target: <= 1 ms added per step (p50). The last line is one JSON
object with every figure, the load average beside them.

    python benchmarks/openenv_bench.py [--home ~/.forager] [--task ID] [--steps 300] [--command true]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import secrets
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from openenv.core import GenericEnvClient  # noqa: E402

from envserver.client import EnvClient  # noqa: E402
from forager.config import Settings  # noqa: E402
from forager.tasks import env_request  # noqa: E402
from forager.tasks.store import load_tasks  # noqa: E402

TOKEN = secrets.token_hex(16)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start(cmd: list[str], env: dict[str, str], log: Path, ready) -> subprocess.Popen:
    proc = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=open(log, "ab"), stderr=subprocess.STDOUT)
    for _ in range(1200):
        if proc.poll() is not None:
            raise RuntimeError(f"{cmd[:4]} exited: {log.read_text()[-2000:]}")
        try:
            if ready():
                return proc
        except Exception:
            pass
        time.sleep(0.1)
    raise RuntimeError(f"{cmd[:4]} did not start; log {log}")


def pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--home", type=Path, default=Settings.from_env().home)
    ap.add_argument("--task", help="task id (default: the first of the task set)")
    ap.add_argument("--steps", type=int, default=300)
    ap.add_argument("--command", default="true")
    args = ap.parse_args()
    tasks = sorted(load_tasks(args.home / "tasks"), key=lambda t: t.id)
    task = next((t for t in tasks if t.id == args.task), None) if args.task else (tasks[0] if tasks else None)
    if task is None:
        sys.exit(f"no task {args.task or ''} in {args.home / 'tasks'} (run `forager run` first, or pass --home)")
    work = Path(tempfile.mkdtemp(prefix="openenv-bench-"))
    (work / "tasks").mkdir()
    (work / "tasks" / "bench.jsonl").write_text(task.model_dump_json() + "\n")
    env = {**os.environ, "FORAGER_HOME": str(work)}
    es_port, oe_port = free_port(), free_port()
    es_url, oe_url = f"http://127.0.0.1:{es_port}", f"http://127.0.0.1:{oe_port}"
    direct = EnvClient(es_url, token=TOKEN)
    procs = []
    try:
        procs.append(start([sys.executable, "-m", "envserver", "--token", TOKEN, "--port", str(es_port),
                            "--allow", task.image], env, work / "envserver.log", lambda: direct.health()))
        oe_env = {**env, "FORAGER_ENVSERVER_URL": es_url, "FORAGER_ENVSERVER_TOKEN": TOKEN}
        import httpx

        procs.append(start([sys.executable, "-m", "forager.cli", "openenv", "--port", str(oe_port), "--tasks",
                            str(work / "tasks"), "--out", str(work / "trajectories"), "--max-turns",
                            str(args.steps + 10)], oe_env, work / "openenv.log",
                           lambda: httpx.get(oe_url + "/health", timeout=5).status_code == 200))
        print(f"task {task.id} ({task.image}); {args.steps} steps of {args.command!r} each way", file=sys.stderr)
        req = env_request(task)
        info = direct.create_env(req.image, ttl=req.ttl, workdir=req.workdir, setup_patch=req.setup_patch,
                                 grading=req.grading, labels=req.labels)
        d_times, o_times, paired, a_times, a_paired = [], [], [], [], []
        loop = asyncio.new_event_loop()  # the async client, driven from this thread: no hand-off to a client thread
        aclient = GenericEnvClient(base_url=oe_url, message_timeout_s=300)
        loop.run_until_complete(aclient.connect())
        loop.run_until_complete(aclient.reset(task_id=task.id))
        step = {"type": "shell", "command": args.command}
        with GenericEnvClient(base_url=oe_url, message_timeout_s=300).sync() as oe:
            oe.reset(task_id=task.id)
            for _ in range(5):  # warm every path (connections, caches)
                direct.shell(info.id, args.command)
                oe.step(step)
                loop.run_until_complete(aclient.step(step))
            paths = {"direct": lambda: direct.shell(info.id, args.command).exit_code,
                     "sync": lambda: oe.step(step).observation["exit_code"],
                     "async": lambda: loop.run_until_complete(aclient.step(step)).observation["exit_code"]}
            order = random.Random(0)
            for i in range(args.steps):
                took = {}
                for name in order.sample(list(paths), 3):  # a fresh order each round: no path always goes first
                    t0 = time.perf_counter()
                    assert paths[name]() == 0, name
                    took[name] = (time.perf_counter() - t0) * 1000
                d_times.append(took["direct"])
                o_times.append(took["sync"])
                a_times.append(took["async"])
                paired.append(took["sync"] - took["direct"])
                a_paired.append(took["async"] - took["direct"])
                if (i + 1) % 50 == 0:
                    print(f"  {i + 1}/{args.steps} steps", file=sys.stderr)
        loop.run_until_complete(aclient.close())
        loop.close()
        direct.delete_env(info.id)
    finally:
        for proc in reversed(procs):
            proc.terminate()
            try:
                proc.wait(120)
            except subprocess.TimeoutExpired:
                proc.kill()
        direct.close()
    d50, o50, a50 = statistics.median(d_times), statistics.median(o_times), statistics.median(a_times)
    figures = {
        "task": task.id, "steps": args.steps, "command": args.command,
        "direct_p50_ms": round(d50, 3), "direct_p90_ms": round(pct(d_times, 0.9), 3),
        "openenv_sync_p50_ms": round(o50, 3), "openenv_sync_p90_ms": round(pct(o_times, 0.9), 3),
        "openenv_async_p50_ms": round(a50, 3), "openenv_async_p90_ms": round(pct(a_times, 0.9), 3),
        "added_sync_p50_ms": round(o50 - d50, 3), "added_sync_paired_p50_ms": round(statistics.median(paired), 3),
        "added_async_p50_ms": round(a50 - d50, 3), "added_async_paired_p50_ms": round(statistics.median(a_paired), 3),
        "openenv_async_over_direct_p50": round(a50 / d50, 3), "target_added_ms": 1.0,
        "meets_target": statistics.median(a_paired) <= 1.0 and a50 - d50 <= 1.0,
        "load_average": [round(x, 2) for x in os.getloadavg()], "cpus": os.cpu_count(),
    }
    print(f"direct p50 {d50:.2f} ms; OpenEnv async client p50 {a50:.2f} ms (added {a50 - d50:.2f} ms, paired "
          f"{statistics.median(a_paired):.2f} ms), sync wrapper p50 {o50:.2f} ms (added {o50 - d50:.2f} ms, paired "
          f"{statistics.median(paired):.2f} ms); target <= 1 ms", file=sys.stderr)
    print(json.dumps(figures))


if __name__ == "__main__":
    main()
