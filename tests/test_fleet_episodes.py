"""The fleet on real episodes: real Redis, real worker processes, real env server and Docker.

Tasks come from the mutate-fix synthesis on the builder's tiny repo image (`synthesized`), the
policy is the scripted oracle, so every episode should earn reward 1.
"""

from __future__ import annotations

import json
import os
import signal
import uuid
from collections import Counter
from pathlib import Path

import pytest

from agent.joblog import read_job_log
from agent.queue import connect, episode_job_id, job_state
from agent.status import collection_status
from forager.config import Settings
from forager.tasks.store import append_tasks
from forager.trajectories.store import TrajectoryStore
from tests.fixtures_envserver import containers_of, start_envserver, stop_envserver
from tests.test_fleet_support import busy_workers, fleet_env, private_db, run_cli, start_pool, stop_pool, wait_for

ORACLE_FAST = ["--policy", "oracle", "--policy-param", "run_tests=false"]


@pytest.fixture
def fleet(redis_url, forager_home, tmp_path):
    queue = f"ep-{uuid.uuid4().hex[:8]}"
    url = private_db(redis_url)
    return {"queue": queue, "home": forager_home, "conn": connect(url), "redis_url": url}


def write_tasks(tasks, path: Path) -> Path:
    append_tasks(path, tasks)
    return path


def envs_of_jobs(client, job_ids: set[str]) -> list:
    return [e for e in client.list_envs() if e.labels.get("forager.job") in job_ids]


def env_containers(docker_client, server_id: str) -> set[str]:
    """The server's env containers (its warm grading containers are a pool, kept on purpose)."""
    return {c["Id"] for c in containers_of(docker_client, server_id) if c["Labels"].get("forager.kind") != "grader"}


def test_thirty_episodes_three_workers_one_sigkilled(synthesized, envserver, docker_client, fleet, tmp_path):
    tasks = synthesized.tasks[:6]
    attempts = 30 // len(tasks)
    assert len(tasks) * attempts == 30, f"synthesis gave {len(synthesized.tasks)} tasks"
    tasks_file = write_tasks(tasks, tmp_path / "tasks.jsonl")
    env = fleet_env(fleet["redis_url"], fleet["home"], fleet["queue"], FORAGER_ENVSERVER_URL=envserver.url,
                   FORAGER_ENVSERVER_TOKEN=envserver.token)
    containers_before = env_containers(docker_client, envserver.server_id)

    first = run_cli(env, "collect", str(tasks_file), *ORACLE_FAST, "--attempts", str(attempts), "--json")
    assert first.returncode == 0, first.stderr
    first = json.loads(first.stdout)
    assert first["outcome"] == {"enqueued": 30}
    again = json.loads(run_cli(env, "collect", str(tasks_file), *ORACLE_FAST, "--attempts", str(attempts),
                               "--json").stdout)
    assert again["outcome"] == {"queued": 30}  # the same collection twice: no new jobs
    collection = first["collection"]
    job_ids = {episode_job_id(t.id, a, "oracle", None) for t in tasks for a in range(attempts)}

    conn = fleet["conn"]
    pool = start_pool(env, 3, tmp_path / "pool.log")
    try:
        with envserver.client() as client:
            # mid-episode: the victim's job holds an env on the server
            def victim():
                for w in busy_workers(conn, fleet["queue"]):
                    jid = w.get_current_job_id()
                    if job_state(conn, jid) == "started" and envs_of_jobs(client, {jid}):
                        return w
                return None

            w = wait_for(victim, "a worker mid-episode")
            killed_job = w.get_current_job_id()
            os.kill(w.pid, signal.SIGKILL)
            status = wait_for(lambda: (s := collection_status(conn, collection))["complete"] and s,
                              "the collection to complete", deadline=400)
            assert status["done"] == 30 and status["failed"] == 0
            assert envs_of_jobs(client, job_ids) == []
    finally:
        stop_pool(pool)

    store = TrajectoryStore(Settings(home=fleet["home"]).trajectories_dir)
    trajs = list(store.iter())
    assert len(trajs) == 30 and store.count() == 30 and store.problems() == []
    assert Counter((t.task_id, t.attempt) for t in trajs) == {(t.id, a): 1 for t in tasks for a in range(attempts)}
    assert all(t.result.reward == 1.0 and t.exit_reason == "submitted" for t in trajs)
    assert status["trajectories"] == 30 and status["solved"] == 30
    # the killed try left an env behind; the re-run removed it before starting its own
    events = [e["event"] for e in read_job_log(killed_job, Settings(home=fleet["home"]))]
    assert events.count("start") == 2 and events[-1] == "done"
    assert "leftovers_removed" in events
    assert env_containers(docker_client, envserver.server_id) <= containers_before  # no env leaked

    # collecting again once everything is stored adds nothing
    third = json.loads(run_cli(env, "collect", str(tasks_file), *ORACLE_FAST, "--attempts", str(attempts),
                               "--json").stdout)
    assert third["outcome"] == {"finished": 30}


def test_env_server_down_mid_run_jobs_retry_and_complete(synthesized, docker_client, fleet, tmp_path):
    tasks = synthesized.tasks[:6]
    server_home = tmp_path / "server-home"
    server_home.mkdir()
    server = start_envserver(home=server_home)
    env = fleet_env(fleet["redis_url"], fleet["home"], fleet["queue"], FORAGER_ENVSERVER_URL=server.url,
                    FORAGER_ENVSERVER_TOKEN=server.token,
                    FORAGER_RETRY_INTERVALS="2,3,3,3,3,3,3,3")
    out = run_cli(env, "collect", str(write_tasks(tasks, tmp_path / "tasks.jsonl")), *ORACLE_FAST, "--json")
    assert out.returncode == 0, out.stderr
    out = json.loads(out.stdout)
    assert out["outcome"] == {"enqueued": 6}
    collection = out["collection"]
    conn = fleet["conn"]
    pool = start_pool(env, 2, tmp_path / "pool.log")
    try:
        wait_for(lambda: collection_status(conn, collection)["running"] >= 1, "episodes in flight")
        stop_envserver(server)  # clean shutdown: its containers go away under the running episodes
        wait_for(lambda: collection_status(conn, collection)["retrying"] >= 1, "a job waiting to retry")
        server = start_envserver(home=server_home, port=server.port, server_id=server.server_id)
        status = wait_for(lambda: (s := collection_status(conn, collection))["complete"] and s,
                          "the collection to complete", deadline=400)
    finally:
        stop_pool(pool)
        stop_envserver(server)
    assert status["done"] == 6 and status["failed"] == 0 and status["solved"] == 6
    store = TrajectoryStore(Settings(home=fleet["home"]).trajectories_dir)
    assert store.count() == 6
    assert {t.task_id for t in store.iter()} == {t.id for t in tasks}
    logs = {t.id: read_job_log(episode_job_id(t.id, 0, "oracle", None), Settings(home=fleet["home"])) for t in tasks}
    retried = [tid for tid, evs in logs.items() if any(e["event"] == "infra_error" for e in evs)]
    assert retried, "no job saw the server go down"
    for tid in retried:
        assert logs[tid][-1]["event"] == "done"
    assert containers_of(docker_client, server.server_id) == []


def test_a_plain_rq_worker_runs_episode_jobs(synthesized, envserver, fleet, tmp_path):
    """Job functions are importable top-level functions with JSON arguments: a stock `rq worker` with the JSON
    serializer runs them (jobs are JSON, never pickles)."""
    import subprocess
    import sys

    task = synthesized.tasks[0]
    env = fleet_env(fleet["redis_url"], fleet["home"], fleet["queue"], FORAGER_ENVSERVER_URL=envserver.url,
                   FORAGER_ENVSERVER_TOKEN=envserver.token)
    out = run_cli(env, "collect", str(write_tasks([task], tmp_path / "tasks.jsonl")), *ORACLE_FAST, "--json")
    assert json.loads(out.stdout)["outcome"] == {"enqueued": 1}
    rq = [sys.executable, "-c", "from rq.cli import main; main()"]
    done = subprocess.run([*rq, "worker", "--burst", "--serializer", "rq.serializers.JSONSerializer",
                           "--url", fleet["redis_url"], fleet["queue"]], env=env, capture_output=True, text=True,
                          timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    job_id = episode_job_id(task.id, 0, "oracle", None)
    assert job_state(fleet["conn"], job_id) == "finished"
    store = TrajectoryStore(Settings(home=fleet["home"]).trajectories_dir)
    assert [t.result.reward for t in store.iter()] == [1.0]
