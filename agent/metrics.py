"""Prometheus metrics of the fleet.

Workers are separate processes, so counters use prometheus_client's multiprocess mode: the pool
sets PROMETHEUS_MULTIPROC_DIR for its workers and serves the merged view on one port, together with
the queue's own counts (jobs by state) read from Redis at scrape time.
"""

from __future__ import annotations

from prometheus_client import Counter, Histogram

JOBS = Counter("forager_jobs_total", "jobs this fleet finished executing, by final state", ["state"])
EPISODE_SECONDS = Histogram(
    "forager_episode_seconds",
    "wall time of one job (env acquire + episode + trajectory write)",
    buckets=(1, 2, 5, 10, 30, 60, 120, 300, 600, 1200, 1800, 3600, float("inf")),
)


def job_done(job, seconds: float) -> None:
    try:
        state = job.get_status(refresh=True) or "unknown"
    except Exception:  # the job hash may be gone (deleted meanwhile); still count the execution
        state = "unknown"
    state = getattr(state, "value", state)
    JOBS.labels(state=str(state)).inc()
    EPISODE_SECONDS.observe(seconds)


class QueueCollector:
    """forager_queue_jobs{state=...}: the queue's registries, read when Prometheus scrapes."""

    def __init__(self, redis_url: str, queue_name: str):
        self.redis_url, self.queue_name = redis_url, queue_name

    def collect(self):
        from prometheus_client.core import GaugeMetricFamily

        from agent.status import queue_counts

        family = GaugeMetricFamily("forager_queue_jobs", "jobs in the queue by state", labels=["queue", "state"])
        try:
            counts = queue_counts(self.redis_url, self.queue_name)
        except Exception:  # Redis down: export nothing rather than fail the scrape
            counts = {}
        for state, n in counts.items():
            family.add_metric([self.queue_name, state], n)
        yield family


def serve_pool(port: int, host: str, multiproc_dir: str | None, redis_url: str, queue_name: str) -> None:
    from prometheus_client import CollectorRegistry, start_http_server
    from prometheus_client.multiprocess import MultiProcessCollector

    registry = CollectorRegistry()
    if multiproc_dir:
        MultiProcessCollector(registry, path=multiproc_dir)
    registry.register(QueueCollector(redis_url, queue_name))
    start_http_server(port, addr=host, registry=registry)
