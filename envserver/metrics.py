"""Prometheus metrics of one server: live envs, warm pool, step latency per tool, errors."""

from __future__ import annotations

import time
from contextlib import contextmanager

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest

BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300, 900)


class Metrics:
    def __init__(self):
        self.registry = CollectorRegistry()
        r = self.registry
        self.envs_live = Gauge("forager_envs_live", "environments currently held by clients", registry=r)
        self.pool_ready = Gauge("forager_pool_ready", "warm containers ready per image", ["image"], registry=r)
        self.step_seconds = Histogram(
            "forager_step_seconds", "server-side latency of one tool call", ["tool"], buckets=BUCKETS, registry=r
        )
        self.tool_errors = Counter("forager_tool_errors_total", "tool calls answered ok=false", ["tool"], registry=r)
        self.errors = Counter("forager_errors_total", "requests answered with a typed error", ["error"], registry=r)
        self.envs_created = Counter("forager_envs_created_total", "environments created", ["source"], registry=r)

    @contextmanager
    def step(self, tool: str):
        t0 = time.perf_counter()
        try:
            yield
        finally:
            self.step_seconds.labels(tool).observe(time.perf_counter() - t0)

    def render(self, envs_live: int, pool: dict[str, dict[str, int]]) -> bytes:
        self.envs_live.set(envs_live)
        for image, stats in pool.items():
            self.pool_ready.labels(image).set(stats["ready"])
        return generate_latest(self.registry)
