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
