"""Enqueue jobs on the fleet's RQ queue, once per id.

Generic on purpose: any importable top-level function taking plain JSON keyword arguments can be a
job (episodes here, execution traces elsewhere), so a plain `rq worker <queue>` can run it too.
A job id is chosen by the caller from what makes the work unique; enqueueing an id that is already
queued, running, scheduled for a retry or finished is a no-op, so re-running a collection never
doubles work. A failed or stopped job is replaced by a fresh one with the same id.
"""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

from redis import Redis
from rq import Queue, Retry
from rq.exceptions import DuplicateJobError
from rq.job import Job, validate_job_id
from rq.serializers import JSONSerializer

from forager.config import Settings

# Finished and failed jobs stay visible long enough for status and dedup to see them.
RESULT_TTL = 30 * 24 * 3600
FAILURE_TTL = 30 * 24 * 3600
# Infra failures (env server down, Docker error) are retried with growing waits (seconds), one retry per
# interval: Settings.retry_intervals (FORAGER_RETRY_INTERVALS) is what enqueuers pass.
DEFAULT_INTERVALS = Settings.model_fields["retry_intervals"].default
DEFAULT_RETRIES = len(DEFAULT_INTERVALS)

# Jobs carry plain JSON, never pickles: a job read from Redis cannot run code by being read, and a stock
# `rq worker --serializer rq.serializers.JSONSerializer` can run them.
SERIALIZER = JSONSerializer

# States in which a job id counts as taken: enqueueing it again would double the work.
TAKEN = {"queued", "started", "scheduled", "deferred", "finished"}
KEY_PREFIX = "forager"


def connect(url: str) -> Redis:
    return Redis.from_url(url)


def get_queue(conn: Redis, name: str) -> Queue:
    return Queue(name, connection=conn, serializer=SERIALIZER)


def slug(text: str, limit: int = 60) -> str:
    """Job ids allow letters, digits, '_' and '-' only."""
    return re.sub(r"[^A-Za-z0-9_-]+", "_", text).strip("_")[:limit]


def make_job_id(prefix: str, *parts: Any) -> str:
    """A readable, RQ-valid id determined by `parts` (same parts -> same id)."""
    digest = hashlib.sha1(json.dumps(parts, sort_keys=True, default=str).encode()).hexdigest()[:12]
    readable = "-".join(slug(str(p), 40) for p in parts[:1])
    return f"{prefix}-{readable}-{digest}" if readable else f"{prefix}-{digest}"


def episode_job_id(task_id: str, attempt: int, policy: str, model: str | None) -> str:
    return make_job_id("ep", task_id, attempt, policy, model or "")


@dataclass
class JobSpec:
    func_path: str
    kwargs: dict[str, Any]
    job_id: str
    timeout: int = 3600
    retries: int = DEFAULT_RETRIES
    intervals: tuple[int, ...] = DEFAULT_INTERVALS
    description: str | None = None
    meta: dict[str, Any] = field(default_factory=dict)


def collection_key(name: str, part: str) -> str:
    return f"{KEY_PREFIX}:collection:{name}:{part}"


def job_state(conn: Redis, job_id: str) -> str | None:
    raw = conn.hget(Job.key_for(job_id), "status")
    return raw.decode() if raw else None


def enqueue(
    func_path: str,
    kwargs: dict[str, Any],
    job_id: str,
    *,
    conn: Redis,
    queue_name: str,
    timeout: int = 3600,
    retries: int = DEFAULT_RETRIES,
    intervals: Iterable[int] = DEFAULT_INTERVALS,
    description: str | None = None,
    meta: dict[str, Any] | None = None,
    collection: str | None = None,
) -> str:
    """Enqueue one job unless its id is taken. Returns "enqueued", or the state that made it a no-op."""
    spec = JobSpec(func_path, kwargs, job_id, timeout, retries, tuple(intervals), description, meta or {})
    outcome = enqueue_many([spec], conn=conn, queue_name=queue_name, collection=collection)
    return next(iter(outcome.values()))


def enqueue_many(
    specs: Iterable[JobSpec],
    *,
    conn: Redis,
    queue_name: str,
    collection: str | None = None,
    done: Callable[[JobSpec], bool] | None = None,
) -> dict[str, str]:
    """Enqueue each spec whose id is free; `done(spec)` lets the caller skip work already stored
    (e.g. a trajectory on disk). Returns {job id: "enqueued" | the taken state | "exists"}."""
    queue = get_queue(conn, queue_name)
    outcome: dict[str, str] = {}
    for spec in specs:
        validate_job_id(spec.job_id)  # a bad id is a clear error before anything is recorded
        if collection:
            conn.sadd(collection_key(collection, "jobs"), spec.job_id)
            conn.sadd(f"{KEY_PREFIX}:collections", collection)
        state = job_state(conn, spec.job_id)
        stored = done(spec) if done is not None and state not in TAKEN - {"finished"} else None
        # A finished job whose output is not in the caller's store (another FORAGER_HOME on the same
        # Redis) is work still to do here; queued or running ids are never doubled.
        if state in TAKEN and not (state == "finished" and stored is False):
            outcome[spec.job_id] = state
            continue
        if stored:
            outcome[spec.job_id] = "exists"
            continue
        if state is not None:  # failed / stopped / canceled: start over with fresh retries
            Job.fetch(spec.job_id, connection=conn, serializer=SERIALIZER).delete()
        meta = dict(spec.meta)
        if collection:
            meta["collection"] = collection
        try:
            queue.enqueue_call(
                spec.func_path,
                kwargs=spec.kwargs,
                job_id=spec.job_id,
                timeout=spec.timeout,
                result_ttl=RESULT_TTL,
                failure_ttl=FAILURE_TTL,
                description=spec.description or spec.job_id,
                meta=meta,
                retry=Retry(max=spec.retries, interval=list(spec.intervals)) if spec.retries else None,
                unique=True,  # atomic: a concurrent enqueuer of the same id loses cleanly
            )
            outcome[spec.job_id] = "enqueued"
        except DuplicateJobError:
            outcome[spec.job_id] = job_state(conn, spec.job_id) or "queued"
    return outcome
