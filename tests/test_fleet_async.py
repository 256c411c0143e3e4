"""The async worker on real episodes: many episodes in flight in one process, RQ's guarantees intact.

Real Redis, real worker processes, the real env server and Docker; the model is the one stand-in allowed,
an OpenAI-compatible server on loopback that answers after a set latency (tests.test_fleet_support).
"""

from __future__ import annotations

import json
import os
import signal
from collections import Counter

from agent.joblog import read_job_log
from agent.queue import episode_job_id, job_state
from agent.status import collection_status, queue_counts
from forager.config import Settings
from forager.trajectories.store import TrajectoryStore
from tests.conftest import free_port
from tests.test_fleet_episodes import env_containers, envs_of_jobs, fleet, write_tasks  # noqa: F401  (fixture)
from tests.test_fleet_support import (busy_workers, fleet_env, run_cli, start_model_server, start_pool, stop_pool,
                                      wait_for)

IN_FLIGHT = 40  # episodes one worker process runs at once
KILL_AT = 32  # in flight, each holding an env, when the worker is SIGKILLed
STEPS = 6  # model turns per episode (5 shell calls, then submit)


def test_sigkilled_async_worker_reruns_each_episode_once(synthesized, envserver, docker_client, fleet, tmp_path):
    tasks = synthesized.tasks[:4]
    attempts = IN_FLIGHT // len(tasks)
    n = len(tasks) * attempts
    port = free_port()
    model = start_model_server(port, STEPS, latency=1.0, jitter=0.3, log=tmp_path / "model.log")
    env = fleet_env(fleet["redis_url"], fleet["home"], fleet["queue"], FORAGER_ENVSERVER_URL=envserver.url,
                    FORAGER_ENVSERVER_TOKEN=envserver.token, FORAGER_MODEL_BASE_URL=f"http://127.0.0.1:{port}/v1",
                    FORAGER_RETRY_INTERVALS="1,1,1", FORAGER_HEARTBEAT_GRACE="5")
    containers_before = env_containers(docker_client, envserver.server_id)
    out = run_cli(env, "collect", str(write_tasks(tasks, tmp_path / "tasks.jsonl")), "--policy", "openai",
                  "--model", "scripted", "--attempts", str(attempts), "--json")
    assert out.returncode == 0, out.stderr
    collection = json.loads(out.stdout)["collection"]
    job_ids = {episode_job_id(t.id, a, "openai", "scripted") for t in tasks for a in range(attempts)}
    conn = fleet["conn"]
    pool = start_pool(env, IN_FLIGHT, tmp_path / "pool.log")  # one async worker process, 40 places
    try:
        with envserver.client() as client:
            most_envs = [0]

            def loaded():
                most_envs[0] = max(most_envs[0], len(envs_of_jobs(client, job_ids)))
                workers = busy_workers(conn, fleet["queue"])
                if len(workers) != 1:
                    return None
                w = workers[0]
                running = {e.job_id for e in w.get_current_executions(refresh=True)}
                holding = {e.labels["forager.job"] for e in envs_of_jobs(client, running)}
                return (w, running, holding) if len(holding) >= KILL_AT else None

            victim, running, holding = wait_for(loaded, f"{KILL_AT} episodes in flight, each with an env", deadline=300)
            assert most_envs[0] <= IN_FLIGHT  # never more envs than places
            status = wait_for(lambda: fleet_status_json(env), "forager status")
            mine = [w for w in status["workers"] if w["name"] == victim.name][0]
            assert mine["in_flight"] >= KILL_AT and mine["concurrency"] == IN_FLIGHT
            assert status["model"]["requests"] > 0
            os.kill(victim.pid, signal.SIGKILL)  # every coroutine dies with it; the pool starts another worker
            done = wait_for(lambda: (s := collection_status(conn, collection))["complete"] and s,
                            "the collection to complete", deadline=400)
            assert envs_of_jobs(client, job_ids) == []
    finally:
        stop_pool(pool)
        model.terminate()
        model.wait(30)

    assert done["done"] == n and done["failed"] == 0, done
    assert queue_counts(conn, fleet["queue"])["finished"] == n  # RQ's own registry
    trajs = list(TrajectoryStore(Settings(home=fleet["home"]).trajectories_dir).iter())
    assert Counter((t.task_id, t.attempt) for t in trajs) == {(t.id, a): 1 for t in tasks for a in range(attempts)}
    assert all(t.exit_reason == "submitted" and len(t.steps) == STEPS for t in trajs)
    settings = Settings(home=fleet["home"])
    for job_id in running:  # each episode killed in flight ran again (once, plus a retry per infra error), and finished
        events = [e["event"] for e in read_job_log(job_id, settings)]
        assert events.count("start") == 2 + events.count("infra_error"), (job_id, events)
        assert events.count("done") == 1 and events[-1] == "done", (job_id, events)
        assert job_state(conn, job_id) == "finished"
    for job_id in holding:  # the killed try's env was removed by the next try
        assert "leftovers_removed" in [e["event"] for e in read_job_log(job_id, settings)]
    assert env_containers(docker_client, envserver.server_id) <= containers_before  # no env leaked


def fleet_status_json(env) -> dict | None:
    out = run_cli(env, "status", "--json")
    return json.loads(out.stdout) if out.returncode == 0 else None
