"""The queue machinery with real Redis and real worker processes, on small jobs (no Docker needed)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import urllib.request
import uuid
from collections import Counter

import pytest
import redis


from agent.queue import SERIALIZER, JobSpec, connect, enqueue, enqueue_many, get_queue, job_state
from agent.status import collection_status, queue_counts
from tests.conftest import free_port
from tests.test_fleet_support import busy_workers, fleet_env, run_cli, start_pool, stop_pool, wait_for

MARK = "tests.test_fleet_support.marker_job"


@pytest.fixture
def queue_name():
    return f"t-{uuid.uuid4().hex[:8]}"


@pytest.fixture
def conn(redis_url):
    return connect(redis_url)


def lines(path) -> Counter:
    return Counter(line.split()[0] for line in open(path)) if os.path.exists(path) else Counter()


def test_enqueue_same_ids_twice_adds_no_jobs(conn, queue_name, tmp_path):
    specs = [JobSpec(MARK, {"log": str(tmp_path / "log"), "token": f"j{i}"}, f"job-{queue_name}-{i}") for i in range(5)]
    first = enqueue_many(specs, conn=conn, queue_name=queue_name, collection=queue_name)
    second = enqueue_many(specs, conn=conn, queue_name=queue_name, collection=queue_name)
    assert set(first.values()) == {"enqueued"}
    assert set(second.values()) == {"queued"}
    assert get_queue(conn, queue_name).count == 5
    assert collection_status(conn, queue_name)["total"] == 5


def test_done_callback_skips_stored_work(conn, queue_name, tmp_path):
    specs = [JobSpec(MARK, {"log": "x", "token": f"j{i}"}, f"job-{queue_name}-{i}") for i in range(4)]
    out = enqueue_many(specs, conn=conn, queue_name=queue_name, done=lambda s: s.job_id.endswith(("-0", "-2")))
    assert Counter(out.values()) == {"enqueued": 2, "exists": 2}
    assert get_queue(conn, queue_name).count == 2


def test_finished_job_missing_from_this_store_runs_again(conn, queue_name, tmp_path):
    """Two FORAGER_HOMEs on one Redis: a job finished for the other home is still work for this one."""
    from rq import SimpleWorker

    spec = JobSpec(MARK, {"log": str(tmp_path / "log"), "token": "only"}, f"job-{queue_name}-home")
    assert enqueue_many([spec], conn=conn, queue_name=queue_name) == {spec.job_id: "enqueued"}
    SimpleWorker([get_queue(conn, queue_name)], connection=conn, serializer=SERIALIZER).work(burst=True)
    assert job_state(conn, spec.job_id) == "finished"
    # stored here: nothing to do; not stored here: enqueued again, once
    assert enqueue_many([spec], conn=conn, queue_name=queue_name, done=lambda s: True) == {spec.job_id: "finished"}
    assert enqueue_many([spec], conn=conn, queue_name=queue_name, done=lambda s: False) == {spec.job_id: "enqueued"}
    assert enqueue_many([spec], conn=conn, queue_name=queue_name, done=lambda s: False) == {spec.job_id: "queued"}
    assert get_queue(conn, queue_name).count == 1


def test_bad_job_id_is_a_clear_error_and_records_nothing(conn, queue_name):
    with pytest.raises(ValueError, match="letters, numbers"):
        enqueue(MARK, {}, "bad id: spaces", conn=conn, queue_name=queue_name, collection=queue_name)
    assert get_queue(conn, queue_name).count == 0
    assert collection_status(conn, queue_name)["total"] == 0


def test_pool_runs_jobs_retries_failures_and_requeues_failed_ids(redis_url, conn, queue_name, tmp_path, forager_home):
    log = tmp_path / "log"
    for i in range(6):
        enqueue(MARK, {"log": str(log), "token": f"j{i}"}, f"ok-{i}", conn=conn, queue_name=queue_name)
    # retried once after 1 s, then failed for good
    enqueue("tests.test_fleet_support.failing_job", {}, "bad-0", conn=conn, queue_name=queue_name,
            retries=1, intervals=[1])
    # retries allowed, but the job itself says retrying cannot help
    enqueue("tests.test_fleet_support.refusing_job", {"log": str(log)}, "refuse-0", conn=conn, queue_name=queue_name,
            retries=3, intervals=[1])
    env = fleet_env(redis_url, forager_home, queue_name)
    pool = start_pool(env, 2, tmp_path / "pool.log")
    try:
        wait_for(lambda: queue_counts(conn, queue_name)["finished"] == 6 and job_state(conn, "bad-0") == "failed"
                 and job_state(conn, "refuse-0") == "failed", "6 finished jobs and two failed jobs")
        assert lines(log) == {**{f"j{i}": 1 for i in range(6)}, "refused": 1}
        # the failed job ran twice (one retry) before failing
        from rq.job import Job

        assert Job.fetch("bad-0", connection=conn).retries_left == 0
        # enqueueing again: finished ids are no-ops, the failed id starts over
        assert enqueue(MARK, {"log": str(log), "token": "j0"}, "ok-0", conn=conn, queue_name=queue_name) == "finished"
        assert enqueue(MARK, {"log": str(log), "token": "again"}, "bad-0", conn=conn, queue_name=queue_name) == "enqueued"
        wait_for(lambda: job_state(conn, "bad-0") == "finished", "the re-enqueued id to run")
        assert lines(log)["again"] == 1 and lines(log)["refused"] == 1
    finally:
        stop_pool(pool)
    assert pool.returncode == 0


def test_sigkilled_worker_job_runs_again_exactly_once(redis_url, conn, queue_name, tmp_path, forager_home):
    log = tmp_path / "log"
    n = 12
    for i in range(n):
        enqueue(MARK, {"log": str(log), "token": f"j{i}", "seconds": 1.5}, f"k-{i}", conn=conn, queue_name=queue_name)
    env = fleet_env(redis_url, forager_home, queue_name)
    pool = start_pool(env, 3, tmp_path / "pool.log", "--fork")  # RQ's fork-per-job worker (the async one: test_fleet_async)
    try:
        # Mid-job: its work horse has marked the job started. (A kill in the instant between
        # dequeue and that mark is recovered too, by RQ's intermediate-queue sweep, after a minute.)
        def mid_job():
            return [w for w in busy_workers(conn, queue_name) if job_state(conn, w.get_current_job_id()) == "started"]

        victim = wait_for(mid_job, "a worker mid-job")[0]
        killed_job = victim.get_current_job_id()
        os.kill(victim.pid, signal.SIGKILL)  # the worker and (via PDEATHSIG) its work horse die mid-job
        wait_for(lambda: queue_counts(conn, queue_name)["finished"] == n, f"{n} finished jobs")
        counts = lines(log)
        assert counts == {f"j{i}": 1 for i in range(n)}, counts  # the killed run never wrote; the re-run did
        assert job_state(conn, killed_job) == "finished"
        # the pool replaced the dead worker: still 3 alive
        from rq import Worker

        wait_for(lambda: len(Worker.all(queue=get_queue(conn, queue_name))) >= 3, "a respawned worker")
    finally:
        stop_pool(pool)
    leftovers = subprocess.run(["pgrep", "-f", f"agent.worker --queue {queue_name}"], capture_output=True, text=True)
    assert leftovers.stdout.strip() == ""  # no orphaned worker, horse or scheduler


def test_redis_restart_with_append_only_loses_no_queued_job(tmp_path, forager_home):
    from agent.services import redis_command

    port = free_port()
    url = f"redis://:pw-{port}@127.0.0.1:{port}/0"
    cmd = redis_command(port, tmp_path, f"pw-{port}")  # Forager's own way to run it: password, append-only

    def start():
        proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        wait_for(lambda: _pings(url), "redis to answer", deadline=30)
        return proc

    def restart(proc):
        proc.terminate()
        proc.wait(30)
        return start()

    log = tmp_path / "log"
    proc = start()
    pool = None
    try:
        c = connect(url)
        for i in range(10):
            enqueue(MARK, {"log": str(log), "token": f"j{i}"}, f"r-{i}", conn=c, queue_name="persist",
                    collection="persist")
        proc = restart(proc)
        assert get_queue(c, "persist").count == 10
        assert collection_status(c, "persist")["queued"] == 10
        pool = start_pool(fleet_env(url, forager_home, "persist"), 2, tmp_path / "pool.log")
        wait_for(lambda: queue_counts(c, "persist")["finished"] == 10, "the 10 queued jobs to run")
        # Redis restarts under running workers: they reconnect and take new work
        proc = restart(proc)
        for i in range(10, 15):
            enqueue(MARK, {"log": str(log), "token": f"j{i}"}, f"r-{i}", conn=c, queue_name="persist")
        wait_for(lambda: queue_counts(c, "persist")["finished"] == 15, "jobs enqueued after the restart to run")
        assert lines(log) == {f"j{i}": 1 for i in range(15)}
    finally:
        if pool is not None:
            stop_pool(pool)
        proc.terminate()
        proc.wait(30)


def _pings(url: str) -> bool:
    try:
        return bool(redis.Redis.from_url(url).ping())
    except redis.ConnectionError:
        return False


def test_metrics_and_status_json(redis_url, conn, queue_name, tmp_path, forager_home):
    log = tmp_path / "log"
    for i in range(3):
        enqueue(MARK, {"log": str(log), "token": f"j{i}"}, f"m-{queue_name}-{i}", conn=conn, queue_name=queue_name,
                collection=queue_name)
    env = fleet_env(redis_url, forager_home, queue_name)
    port = free_port()
    pool = start_pool(env, 2, tmp_path / "pool.log", "--metrics-port", str(port))
    try:
        wait_for(lambda: queue_counts(conn, queue_name)["finished"] == 3, "3 finished jobs")

        def scrape() -> str:
            try:
                return urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5).read().decode()
            except OSError:
                return ""

        text = wait_for(lambda: (t := scrape()) and 'forager_jobs_total{state="finished"} 3.0' in t and t,
                        "metrics with 3 finished jobs", deadline=60)
        assert f'forager_queue_jobs{{queue="{queue_name}",state="finished"}} 3.0' in text
        assert "forager_episode_seconds_count 3.0" in text
        out = run_cli(env, "status", "--json")
        assert out.returncode == 0, out.stderr
        st = json.loads(out.stdout)
        assert st["queue"] == queue_name and st["jobs"]["finished"] == 3
        mine = [c for c in st["collections"] if c["collection"] == queue_name]
        assert mine and mine[0]["done"] == 3 and mine[0]["complete"]
        # one async worker process with two places (`--concurrency 2`): RQ's record of it, with our fields
        assert [(w["concurrency"], w["in_flight"]) for w in st["workers"]] == [(2, 0)]
    finally:
        stop_pool(pool)


def test_status_with_redis_down_is_a_clear_error(tmp_path, forager_home):
    env = fleet_env(f"redis://127.0.0.1:{free_port()}/0", forager_home, "nowhere")
    out = run_cli(env, "status", "--json")
    assert out.returncode == 1
    assert "cannot reach Redis" in json.loads(out.stdout)["error"]


def test_job_timeout_kills_the_job(redis_url, conn, queue_name, tmp_path, forager_home):
    log = tmp_path / "log"
    enqueue(MARK, {"log": str(log), "token": "slow", "seconds": 60}, f"slow-{queue_name}", conn=conn,
            queue_name=queue_name, timeout=2, retries=0)
    pool = start_pool(fleet_env(redis_url, forager_home, queue_name), 1, tmp_path / "pool.log")
    try:
        wait_for(lambda: job_state(conn, f"slow-{queue_name}") == "failed", "the slow job to be killed", deadline=60)
    finally:
        stop_pool(pool)
    from rq.job import Job

    result = Job.fetch(f"slow-{queue_name}", connection=conn).latest_result()
    assert "JobTimeoutException" in (result.exc_string or "")
    assert lines(log) == {}


def test_cli_bad_input_is_a_clear_error(redis_url, forager_home, tmp_path):
    env = fleet_env(redis_url, forager_home, "bad-input")
    missing = run_cli(env, "collect", str(tmp_path / "nope.jsonl"), "--json")
    assert missing.returncode == 1 and "no such tasks file" in json.loads(missing.stdout)["error"]
    (tmp_path / "junk.jsonl").write_text("not json\n{\"id\": 1}\n")
    junk = run_cli(env, "collect", str(tmp_path / "junk.jsonl"), "--json")
    assert junk.returncode == 1 and "no valid tasks" in json.loads(junk.stdout)["error"]
    policy = run_cli(env, "collect", str(tmp_path / "junk.jsonl"), "--policy", "nope", "--json")
    assert policy.returncode == 1 and "unknown policy" in json.loads(policy.stdout)["error"]
    with __import__("socket").socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        busy = run_cli(env, "worker", "--metrics-port", str(port), "--json")
    assert busy.returncode == 1 and "cannot serve metrics" in json.loads(busy.stdout)["error"]
    assert get_queue(connect(redis_url), "bad-input").count == 0
