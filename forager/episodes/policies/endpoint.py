"""Calls to a model endpoint: retried per request with backoff, and limited per endpoint.

A model server that is slow or overloaded (429, 5xx, timeouts, dropped connections) costs one request a
wait and another try, never the episode: `retry_delay` says whether a failure is worth retrying and how long
to wait (the server's Retry-After when it sends one, else exponential backoff with jitter, so hundreds of
episodes do not retry in lockstep). A client error (400, 401, 404) is not retried: trying again cannot help.

`Gate` is one endpoint's state in this process: a limit on requests in flight (the async policy waits for a
place, so a worker with 512 episodes sends at most `limit` requests at once) and counts that `forager
status` shows per worker (requests, retries, failures by kind, in flight, waiting, the last error).
"""

from __future__ import annotations

import asyncio
import random
import threading
import time
from collections import Counter
from typing import Any

BACKOFF_BASE = 1.0  # s before the first retry
BACKOFF_CAP = 30.0  # s: no single wait is longer (a Retry-After too)
RETRY_STATUS = {408, 409, 425, 429, 500, 502, 503, 504}


def failure_kind(exc: BaseException) -> str | None:
    """'429', '5xx', 'timeout', 'connection' for a failure worth retrying; None for one that is not."""
    import openai

    if isinstance(exc, openai.APITimeoutError):
        return "timeout"
    if isinstance(exc, openai.APIConnectionError):
        return "connection"
    if isinstance(exc, openai.APIStatusError):
        status = exc.status_code
        if status == 429:
            return "429"
        if status in RETRY_STATUS:
            return "5xx" if status >= 500 else str(status)
    return None


def retry_delay(exc: BaseException, tries: int, rng: random.Random | None = None) -> float:
    """Seconds to wait before try number `tries + 1` after `exc` (tries >= 1)."""
    response = getattr(exc, "response", None)
    header = response.headers.get("retry-after") if response is not None else None
    if header:
        try:
            return min(BACKOFF_CAP, max(0.0, float(header)))
        except ValueError:
            pass  # an HTTP date: fall back to our own backoff
    ceiling = min(BACKOFF_CAP, BACKOFF_BASE * 2 ** (tries - 1))
    return ceiling * (0.5 + 0.5 * (rng or random).random())  # "equal jitter": at least half the ceiling


class Gate:
    """One endpoint in this process: its limit on concurrent requests and its counts."""

    def __init__(self, url: str, limit: int):
        self.url, self.limit = url, max(1, limit)
        self.requests = self.retries = self.failures = self.in_flight = self.waiting = 0
        self.by_kind: Counter[str] = Counter()
        self.last_error: str | None = None
        self.last_error_at: float | None = None
        self._semaphores: dict[int, asyncio.Semaphore] = {}  # one per event loop
        self._lock = threading.Lock()

    def semaphore(self) -> asyncio.Semaphore:
        loop = id(asyncio.get_running_loop())
        if loop not in self._semaphores:
            self._semaphores[loop] = asyncio.Semaphore(self.limit)
        return self._semaphores[loop]

    def count(self, field: str, delta: int = 1) -> None:
        with self._lock:
            setattr(self, field, getattr(self, field) + delta)

    def failed(self, exc: BaseException, kind: str | None, retried: bool) -> None:
        with self._lock:
            self.by_kind[kind or "other"] += 1
            self.last_error, self.last_error_at = f"{type(exc).__name__}: {exc}"[:300], time.time()
            if retried:
                self.retries += 1
            else:
                self.failures += 1

    def stats(self) -> dict[str, Any]:
        with self._lock:
            return {"url": self.url, "limit": self.limit, "requests": self.requests, "in_flight": self.in_flight,
                    "waiting": self.waiting, "retries": self.retries, "failures": self.failures,
                    "errors": dict(self.by_kind), "last_error": self.last_error, "last_error_at": self.last_error_at}


_GATES: dict[str, Gate] = {}
_GATES_LOCK = threading.Lock()


def gate(url: str, limit: int) -> Gate:
    """The process's gate for an endpoint (made on first use; the first limit given is kept)."""
    with _GATES_LOCK:
        if url not in _GATES:
            _GATES[url] = Gate(url, limit)
        return _GATES[url]


def endpoint_stats() -> list[dict[str, Any]]:
    with _GATES_LOCK:
        gates = list(_GATES.values())
    return [g.stats() for g in gates]


def call_with_retries(g: Gate, fn, max_retries: int, rng: random.Random | None = None):
    """fn() with per-request retries (blocking)."""
    tries = 0
    while True:
        tries += 1
        g.count("requests")
        g.count("in_flight")
        try:
            return fn()
        except Exception as exc:
            kind = failure_kind(exc)
            retry = kind is not None and tries <= max_retries
            g.failed(exc, kind, retry)
            if not retry:
                raise
            time.sleep(retry_delay(exc, tries, rng))
        finally:
            g.count("in_flight", -1)


async def acall_with_retries(g: Gate, fn, max_retries: int, rng: random.Random | None = None):
    """await fn() with per-request retries, holding one of the endpoint's places only while a request is
    in flight (not while waiting to retry)."""
    tries = 0
    while True:
        tries += 1
        g.count("waiting")
        try:
            await g.semaphore().acquire()
        finally:
            g.count("waiting", -1)
        g.count("requests")
        g.count("in_flight")
        try:
            return await fn()
        except Exception as exc:
            kind = failure_kind(exc)
            retry = kind is not None and tries <= max_retries
            g.failed(exc, kind, retry)
            if not retry:
                raise
            delay = retry_delay(exc, tries, rng)
        finally:
            g.count("in_flight", -1)
            g.semaphore().release()
        await asyncio.sleep(delay)
