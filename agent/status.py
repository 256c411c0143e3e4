"""What the fleet is doing: queue counts and per-collection progress, read from Redis only.

A collection is a named set of job ids (`forager collect` names it after the policy and model).
Each finished episode job records a small summary (trajectory id, reward, steps, exit reason) in
one results hash keyed by job id, so a re-run overwrites rather than adds, and a job shared by two
collections (same task, attempt, policy, model) is counted in both.
"""

from __future__ import annotations

import json
from typing import Any

from redis import Redis

from rq.registry import (
    CanceledJobRegistry,
    DeferredJobRegistry,
    FailedJobRegistry,
    FinishedJobRegistry,
    ScheduledJobRegistry,
    StartedJobRegistry,
)

from agent.queue import KEY_PREFIX, collection_key, connect, get_queue


def queue_counts(redis: str | Redis, queue_name: str) -> dict[str, int]:
    conn = connect(redis) if isinstance(redis, str) else redis
    q = get_queue(conn, queue_name)
    # Read-only (cleanup=False): requeueing abandoned jobs is the workers' maintenance, done under
    # RQ's maintenance lock; two cleanups racing could requeue the same job twice.
    registries = {"started": StartedJobRegistry, "scheduled": ScheduledJobRegistry, "deferred": DeferredJobRegistry,
                  "finished": FinishedJobRegistry, "failed": FailedJobRegistry, "canceled": CanceledJobRegistry}
    counts = {"queued": q.count}
    counts.update({name: cls(queue=q).get_job_count(cleanup=False) for name, cls in registries.items()})
    return counts


RESULTS_KEY = f"{KEY_PREFIX}:results"


def record_result(conn: Redis, job_id: str, summary: dict[str, Any]) -> None:
    conn.hset(RESULTS_KEY, job_id, json.dumps(summary))


def list_collections(conn: Redis) -> list[str]:
    return sorted(c.decode() for c in conn.smembers(f"{KEY_PREFIX}:collections"))


def collection_status(conn: Redis, collection: str, only: set[str] | None = None) -> dict[str, Any]:
    """Counts for one collection (or the subset `only` of its jobs): queued, running, retrying, done,
    failed, trajectories, reward."""
    job_ids = sorted(only) if only is not None else sorted(
        j.decode() for j in conn.smembers(collection_key(collection, "jobs")))
    pipe = conn.pipeline(transaction=False)
    for job_id in job_ids:
        pipe.hget(f"rq:job:{job_id}", "status")
    states = [s.decode() if s else None for s in pipe.execute()] if job_ids else []
    raw = conn.hmget(RESULTS_KEY, job_ids) if job_ids else []
    results = {j: json.loads(r) for j, r in zip(job_ids, raw) if r}
    counts = dict.fromkeys(("queued", "running", "retrying", "done", "failed"), 0)
    for job_id, state in zip(job_ids, states):
        if state == "finished" or (state is None and job_id in results):
            counts["done"] += 1
        elif state == "started":
            counts["running"] += 1
        elif state == "scheduled":
            counts["retrying"] += 1
        elif state in ("failed", "stopped", "canceled"):
            counts["failed"] += 1
        else:  # queued, deferred, or a job hash not written yet
            counts["queued"] += 1
    rewards = [r.get("reward") or 0.0 for r in results.values() if r.get("trajectory")]
    steps = [r.get("steps") or 0 for r in results.values() if r.get("trajectory")]
    return {
        "collection": collection,
        "total": len(job_ids),
        **counts,
        "trajectories": len(rewards),
        "reward_sum": round(sum(rewards), 4),
        "solved": sum(1 for r in rewards if r >= 1.0),
        "solve_rate": round(sum(1 for r in rewards if r >= 1.0) / len(rewards), 4) if rewards else 0.0,
        "mean_steps": round(sum(steps) / len(steps), 2) if steps else 0.0,
        "complete": bool(job_ids) and counts["done"] + counts["failed"] == len(job_ids),
    }


def fleet_status(conn: Redis, queue_name: str, collections: list[str] | None = None) -> dict[str, Any]:
    from rq import Worker

    from agent.async_worker import worker_details

    workers = []
    for w in Worker.all(connection=conn, queue=get_queue(conn, queue_name)):
        executions = w.get_current_executions(refresh=True)  # RQ's own record of what the worker runs
        workers.append({"name": w.name, "state": str(getattr(w.get_state(), "value", w.get_state())), "pid": w.pid,
                        "hostname": w.hostname, "in_flight": len(executions),
                        "jobs": sorted(e.job_id for e in executions), **worker_details(conn, w)})
    endpoints = [e for w in workers for e in w["model_endpoints"]]
    return {
        "queue": queue_name,
        "jobs": queue_counts(conn, queue_name),
        "in_flight": sum(w["in_flight"] for w in workers),
        "workers": workers,
        "model": {"requests": sum(e["requests"] for e in endpoints), "retries": sum(e["retries"] for e in endpoints),
                  "failures": sum(e["failures"] for e in endpoints), "in_flight": sum(e["in_flight"] for e in endpoints),
                  "waiting": sum(e["waiting"] for e in endpoints)},
        "collections": [collection_status(conn, c) for c in (collections or list_collections(conn))],
    }
