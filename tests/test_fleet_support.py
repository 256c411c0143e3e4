"""Helpers shared by the fleet tests (this module holds no tests of its own).

Workers run as real separate processes (`forager worker`), against a real Redis; job functions
they run must be importable top-level functions, so the small ones used to test the queue
machinery itself live here.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
FORAGER = [sys.executable, "-m", "forager.cli"]


def marker_job(log: str, token: str, seconds: float = 0.0) -> dict:
    """Sleeps, then appends one line: the number of lines per token is the number of completed runs."""
    time.sleep(seconds)
    with open(log, "a") as f:
        f.write(f"{token} {os.getpid()}\n")
    return {"token": token}


def failing_job(message: str = "boom") -> None:
    raise RuntimeError(message)


def refusing_job(log: str) -> None:
    """Fails for good on its first run: retrying cannot help (as an episode job does on a refused request)."""
    from rq import get_current_job

    with open(log, "a") as f:
        f.write("refused 1\n")
    get_current_job().retries_left = 0
    raise ValueError("bad request")


_next_db = iter(range(1, 16))


def private_db(redis_url: str) -> str:
    """The session Redis, another database (emptied): job ids derive from (task, attempt, policy,
    model), so two tests running the same tasks on one database would see each other's jobs as done."""
    import redis

    url = f"{redis_url.rsplit('/', 1)[0]}/{next(_next_db)}"
    redis.Redis.from_url(url).flushdb()
    return url


def fleet_env(redis_url: str, home: Path, queue: str, **extra: str) -> dict[str, str]:
    """Environment for CLI/worker subprocesses: private Redis/queue/home, fast crash recovery."""
    env = dict(os.environ)
    env.update({
        "FORAGER_REDIS_URL": redis_url,
        "FORAGER_QUEUE": queue,
        "FORAGER_HOME": str(home),
        "PYTHONPATH": str(REPO) + os.pathsep + env.get("PYTHONPATH", ""),
        # A dead worker's job is re-run within seconds: heartbeat every 1 s, lease 2 s past it,
        # abandoned-job sweep every 2 s.
        "FORAGER_JOB_MONITOR_INTERVAL": "1",
        "FORAGER_HEARTBEAT_GRACE": "2",
        "FORAGER_MAINTENANCE_INTERVAL": "2",
    })
    env.update(extra)
    return env


def start_pool(env: dict[str, str], concurrency: int, log: Path, *extra: str) -> subprocess.Popen:
    out = open(log, "ab")
    proc = subprocess.Popen([*FORAGER, "worker", "--concurrency", str(concurrency), *extra], env=env, cwd=REPO,
                            stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
    out.close()
    return proc


def stop_pool(proc: subprocess.Popen) -> None:
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(60)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(10)


def wait_for(predicate, what: str, deadline: float = 180.0, poll: float = 0.25):
    """Poll until predicate() is truthy; the deadline only guards against a hang (not a speed check)."""
    end = time.monotonic() + deadline
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > end:
            raise AssertionError(f"gave up waiting for {what}")
        time.sleep(poll)


def busy_workers(conn, queue: str) -> list:
    from rq import Worker

    from agent.queue import get_queue

    return [w for w in Worker.all(queue=get_queue(conn, queue)) if w.get_current_job_id()]


def run_cli(env: dict[str, str], *args: str, timeout: float = 300) -> subprocess.CompletedProcess:
    return subprocess.run([*FORAGER, *args], env=env, cwd=REPO, capture_output=True, text=True, timeout=timeout)


# ---------------------------------------------------------------- a model that takes its time


def episode_model_app(steps: int, latency: float, jitter: float, seed: int = 0, command: str = "echo step {n}"):
    """An OpenAI-compatible chat endpoint (the one stand-in allowed) for fleet runs: every reply comes after
    `latency` ± `jitter` s, as a model server's would; it runs `steps - 1` shell calls (`command`, one per turn,
    counted from the conversation), then submits. Stateless, so any number of episodes share it."""
    import asyncio
    import json
    import random

    from starlette.applications import Starlette
    from starlette.responses import JSONResponse
    from starlette.routing import Route

    rng = random.Random(seed)
    served = {"n": 0}

    async def completions(request):
        body = await request.json()
        done = sum(1 for m in body.get("messages", []) if m.get("role") in ("tool",))
        await asyncio.sleep(max(0.0, latency + rng.uniform(-jitter, jitter)))
        served["n"] += 1
        if done < steps - 1:
            call = {"name": "shell", "arguments": json.dumps({"command": command.format(n=done)})}
        else:
            call = {"name": "submit", "arguments": "{}"}
        message = {"role": "assistant", "content": None,
                   "tool_calls": [{"id": f"call_{served['n']}", "type": "function", "function": call}]}
        return JSONResponse({"id": f"c{served['n']}", "object": "chat.completion", "created": 0,
                             "model": body.get("model", "m"),
                             "choices": [{"index": 0, "message": message, "finish_reason": "tool_calls"}],
                             "usage": {"prompt_tokens": 10, "completion_tokens": 5, "total_tokens": 15}})

    async def stats(request):
        return JSONResponse(served)

    return Starlette(routes=[Route("/v1/chat/completions", completions, methods=["POST"]), Route("/stats", stats)])


def start_model_server(port: int, steps: int, latency: float, jitter: float, log: Path) -> subprocess.Popen:
    """The model above in its own process on loopback (so a benchmark does not count it as the worker's)."""
    out = open(log, "ab")
    proc = subprocess.Popen([sys.executable, "-m", "tests.test_fleet_support", "model", str(port), str(steps),
                             str(latency), str(jitter)], cwd=REPO, stdout=out, stderr=subprocess.STDOUT,
                            env={**os.environ, "PYTHONPATH": str(REPO)})
    out.close()
    import httpx

    def up() -> bool:
        try:
            return httpx.get(f"http://127.0.0.1:{port}/stats", timeout=2).status_code == 200
        except httpx.HTTPError:
            return proc.poll() is not None

    wait_for(up, "the model server", deadline=60)
    if proc.poll() is not None:
        raise RuntimeError(f"the model server exited: {log.read_text()[-2000:]}")
    return proc


if __name__ == "__main__" and sys.argv[1:2] == ["model"]:
    import uvicorn

    port, steps, latency, jitter = int(sys.argv[2]), int(sys.argv[3]), float(sys.argv[4]), float(sys.argv[5])
    uvicorn.run(episode_model_app(steps, latency, jitter), host="127.0.0.1", port=port, log_level="warning",
                backlog=4096, timeout_keep_alive=600)
