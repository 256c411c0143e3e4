"""Two homes on one host: with FORAGER_HOME pointing at a new directory where `forager setup` already ran for
another home, every verb that needs Redis works. Each home gets its own Redis on a Unix socket inside it
(`forager setup --check` says so), so the two homes' queues, collections and passwords never meet."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import redis

from forager.config import local_redis_url, redis_socket


def forager(home: Path, envserver, *args: str, timeout: float = 900) -> dict:
    env = {k: v for k, v in os.environ.items() if k != "FORAGER_REDIS_URL"}  # the home's own Redis, nothing else
    env.update(FORAGER_HOME=str(home), FORAGER_ENVSERVER_URL=envserver.url, FORAGER_ENVSERVER_TOKEN=envserver.token)
    done = subprocess.run([sys.executable, "-m", "forager.cli", *args, "--json"], env=env, capture_output=True,
                          text=True, timeout=timeout)
    assert done.returncode == 0, (args, done.stdout[-2000:], done.stderr[-3000:])
    return json.loads(done.stdout.strip().splitlines()[-1])


def run_home(name: str, home: Path, envserver, calc_tasks: Path) -> None:
    """The main job's verbs that need Redis, in one home: set up, enqueue, work, look."""
    shutil.copytree(calc_tasks, home / "tasks")
    parts = {p["name"]: p for p in forager(home, envserver, "setup")["parts"]}
    assert parts["redis"]["ok"] and parts["redis"]["changed"], parts["redis"]  # its own, started now
    assert f"unix socket {redis_socket(home)}" in parts["redis"]["detail"]
    queued = forager(home, envserver, "collect", str(home / "tasks"), "--policy", "oracle", "--limit", "1",
                     "--policy-param", "run_tests=false", "--name", f"coll-{name}")
    assert queued["jobs"] == 1 and queued["collection"] == f"coll-{name}", queued
    forager(home, envserver, "worker", "--burst", "--concurrency", "1")
    status = forager(home, envserver, "status")
    assert [c["collection"] for c in status["collections"]] == [f"coll-{name}"], status  # its own queue only
    assert status["collections"][0]["done"] == 1 and status["collections"][0]["reward_sum"] == 1.0
    assert len(list((home / "trajectories").glob("calc/*.jsonl"))) == 1


def test_two_homes_on_one_host_both_run_the_main_jobs_verbs(envserver, calc_tasks, tmp_path):
    homes = {"a": tmp_path / "a", "b": tmp_path / "b"}
    try:
        with ThreadPoolExecutor(2) as pool:  # at the same time, on the same host
            for done in [pool.submit(run_home, name, home, envserver, calc_tasks) for name, home in homes.items()]:
                done.result()
        assert len({(home / "redis.password").read_text() for home in homes.values()}) == 2  # no shared secret
        check = {p["name"]: p for p in forager(homes["a"], envserver, "setup", "--check")["parts"]}
        assert check["redis"]["ok"] and "every FORAGER_HOME on this host has its own" in check["redis"]["detail"]
    finally:
        for home in homes.values():
            if redis_socket(home).exists():
                try:
                    redis.Redis.from_url(local_redis_url(home)).shutdown(nosave=True)
                except redis.ConnectionError:
                    pass  # shutting down closes the connection under the call
