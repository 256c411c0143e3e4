"""A slow or failing model endpoint: each request retried with backoff (not the episode), a limit on requests in
flight per endpoint, and the counts `forager status` shows. Against a real HTTP server on loopback that plays
an OpenAI-compatible endpoint (the one stand-in allowed), with the scripted env server in memory."""

from __future__ import annotations

import asyncio
import json
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from forager.episodes.loop import arun_episode, run_episode
from forager.episodes.policies import endpoint
from forager.episodes.policies.openai import AsyncOpenAIPolicy, OpenAIPolicy
from tests.test_episode_loop import TASK


class FlakyModel:
    """Answers each request after `delay` s; the first requests get the statuses in `failures` (429 with
    Retry-After: 0, 503, or "hang": no answer within the client's timeout); counts requests in flight."""

    def __init__(self, failures: list, delay: float = 0.0, steps: int = 3):
        self.failures, self.delay, self.steps = list(failures), delay, steps
        self.lock = threading.Lock()
        self.requests = self.in_flight = self.max_in_flight = 0

    def handle(self, handler) -> None:
        body = json.loads(handler.rfile.read(int(handler.headers.get("Content-Length", 0))) or b"{}")
        with self.lock:
            self.requests += 1
            self.in_flight += 1
            self.max_in_flight = max(self.max_in_flight, self.in_flight)
            failure = self.failures.pop(0) if self.failures else None
        if failure == "hang":
            time.sleep(3)
        else:
            time.sleep(self.delay)
        with self.lock:  # before the answer is written: the client cannot start its next request earlier
            self.in_flight -= 1
        if failure == "hang":
            return
        if failure:
            return send(handler, failure, {"error": {"message": f"status {failure}"}},
                        {"Retry-After": "0"} if failure == 429 else {})
        done = sum(1 for m in body.get("messages", []) if m.get("role") == "tool")
        call = {"name": "shell", "arguments": json.dumps({"command": f"echo {done}"})} if done < self.steps - 1 \
            else {"name": "submit", "arguments": "{}"}
        send(handler, 200, {"id": "c", "object": "chat.completion", "created": 0, "model": "m",
                            "choices": [{"index": 0, "finish_reason": "tool_calls", "message": {
                                "role": "assistant", "content": None,
                                "tool_calls": [{"id": f"call_{done}", "type": "function", "function": call}]}}],
                            "usage": {"prompt_tokens": 1, "completion_tokens": 1, "total_tokens": 2}})


def send(handler, status: int, payload: dict, headers: dict | None = None) -> None:
    data = json.dumps(payload).encode()
    handler.send_response(status)
    for k, v in {"Content-Type": "application/json", "Content-Length": str(len(data)), **(headers or {})}.items():
        handler.send_header(k, v)
    handler.end_headers()
    handler.wfile.write(data)


@pytest.fixture
def flaky():
    servers = []

    def serve(failures: list, delay: float = 0.0, steps: int = 3) -> tuple[FlakyModel, str]:
        model = FlakyModel(failures, delay, steps)

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args):
                pass

            def do_POST(self):
                model.handle(self)

        server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        server.daemon_threads = True
        threading.Thread(target=server.serve_forever, daemon=True).start()
        servers.append(server)
        return model, f"http://127.0.0.1:{server.server_address[1]}/v1"

    yield serve
    for server in servers:
        server.shutdown()
        server.server_close()


@pytest.fixture(autouse=True)
def fast_backoff(monkeypatch):
    monkeypatch.setattr(endpoint, "BACKOFF_BASE", 0.05)
    monkeypatch.setattr(endpoint, "_GATES", {})  # each test its own endpoint counts


def test_429_5xx_and_timeouts_are_retried_per_request_and_counted(flaky, scripted_env):
    model, url = flaky([429, 503, "hang", 429])
    policy = OpenAIPolicy(url, "m", timeout=1, max_retries=5)
    traj = run_episode(TASK, policy, scripted_env, max_turns=10)
    assert traj.exit_reason == "submitted" and len(traj.steps) == 3  # the episode never saw the failures
    assert model.requests == 3 + 4
    stats = policy.gate.stats()
    assert stats["retries"] == 4 and stats["failures"] == 0 and stats["requests"] == 7
    assert stats["errors"] == {"429": 2, "5xx": 1, "timeout": 1}
    assert "APITimeoutError" in stats["last_error"] or "429" in stats["last_error"]


def test_a_client_error_is_not_retried(flaky, scripted_env):
    model, url = flaky([400])
    traj = run_episode(TASK, OpenAIPolicy(url, "m", max_retries=5), scripted_env)
    assert traj.exit_reason == "model_error" and model.requests == 1


def test_retries_run_out_and_end_the_episode_as_a_model_error(flaky, scripted_env):
    model, url = flaky([503] * 3)
    policy = OpenAIPolicy(url, "m", max_retries=2)
    traj = run_episode(TASK, policy, scripted_env)
    assert traj.exit_reason == "model_error" and model.requests == 3
    assert policy.gate.stats()["failures"] == 1 and policy.gate.stats()["retries"] == 2


def test_async_episodes_share_a_per_endpoint_limit(flaky):
    from tests.fixtures_loop import ScriptedEnvServer

    class AsyncEnv:  # the scripted env server, as coroutines
        def __init__(self):
            self.inner = ScriptedEnvServer()

        def __getattr__(self, name):
            method = getattr(self.inner, name)

            async def call(*args, **kwargs):
                await asyncio.sleep(0)
                return method(*args, **kwargs)
            return call

    model, url = flaky([429] * 4, delay=0.05, steps=3)

    async def many():
        policies = [AsyncOpenAIPolicy(url, "m", max_concurrency=3, max_retries=5) for _ in range(12)]
        return await asyncio.gather(*(arun_episode(TASK, p, AsyncEnv(), attempt=i) for i, p in enumerate(policies)))

    trajs = asyncio.run(many())
    assert [t.exit_reason for t in trajs] == ["submitted"] * 12
    assert model.max_in_flight == 3  # 12 episodes, one endpoint, never more than its limit at once
    stats = endpoint.endpoint_stats()
    assert len(stats) == 1 and stats[0]["limit"] == 3 and stats[0]["retries"] == 4
    assert stats[0]["in_flight"] == 0 and stats[0]["waiting"] == 0


def test_the_backoff_grows_with_jitter_and_honours_retry_after():
    import random

    import httpx
    import openai

    rng = random.Random(1)
    request = httpx.Request("POST", "http://127.0.0.1/v1/chat/completions")
    plain = openai.InternalServerError("x", response=httpx.Response(503, request=request), body=None)
    waits = [endpoint.retry_delay(plain, tries, rng) for tries in (1, 2, 3, 4, 10)]
    ceilings = [min(endpoint.BACKOFF_CAP, endpoint.BACKOFF_BASE * 2 ** (t - 1)) for t in (1, 2, 3, 4, 10)]
    assert all(c / 2 <= w <= c for w, c in zip(waits, ceilings)), waits
    told = openai.RateLimitError("x", response=httpx.Response(429, request=request, headers={"retry-after": "7"}),
                                 body=None)
    assert endpoint.retry_delay(told, 1, rng) == 7.0
