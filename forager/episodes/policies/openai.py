"""A chat model behind any OpenAI-compatible endpoint (vLLM, SGLang, llama.cpp, a hosted API), via `openai`.

Two protocols (forager.trajectories.render says how each turn looks): "tools", native function calling
with the env server's tool schemas, and "text", CWM's `<tool: NAME>…</tool>` blocks. The conversation is
rebuilt from the episode's steps every turn by the same renderer the exports use, so the trajectory alone
reproduces exactly what the model saw. Failed requests are retried one by one (policies/endpoint.py).
"""

from __future__ import annotations

import json
import time
from typing import Any

from forager.errors import ModelError
from forager.models import Action, PolicyInfo
from forager.episodes.policies import TOOL_NAMES, Decision, Episode, endpoint
from forager.trajectories import render


class OpenAIPolicy:
    """Blocking: one request at a time (a work horse, a replay, `forager trajectories`)."""

    def __init__(self, base_url: str | None, model: str, api_key: str | None = None, protocol: str = "tools",
                 temperature: float = 0.0, max_completion_tokens: int | None = 4096, timeout: float = 600,
                 max_retries: int = 5, extra_body: dict[str, Any] | None = None, max_concurrency: int = 64):
        if not model:
            raise ValueError("the openai policy needs a model name (FORAGER_MODEL or --model)")
        self.protocol, self.model = render.check_protocol(protocol), model
        self.params = {"temperature": temperature, "max_tokens": max_completion_tokens}
        self.extra_body = extra_body or {}
        self.max_retries = max_retries
        # Retries are ours, per request (forager.episodes.policies.endpoint), not the SDK's: counted and shown.
        self.client = self._make_client(base_url, api_key or "unused", timeout)
        self.gate = endpoint.gate(str(self.client.base_url), max_concurrency)
        self.info = PolicyInfo(name="openai", model=model, parameters={"protocol": protocol, "base_url": base_url, **self.params})

    def _make_client(self, base_url: str | None, api_key: str, timeout: float):
        from openai import OpenAI

        return OpenAI(base_url=base_url, api_key=api_key, timeout=timeout, max_retries=0)

    def messages(self, episode: Episode) -> list[dict[str, Any]]:
        return render.messages(episode.system_prompt, episode.problem_statement, episode.steps, self.protocol)

    def request(self, episode: Episode) -> dict[str, Any]:
        kwargs: dict[str, Any] = {"model": self.model, "messages": self.messages(episode), **self.params}
        if self.protocol == "tools":
            kwargs["tools"] = episode.tools
            kwargs["tool_choice"] = "auto"
        if self.extra_body:
            kwargs["extra_body"] = self.extra_body
        return kwargs

    def next_action(self, episode: Episode) -> Decision:
        kwargs = self.request(episode)
        started = time.monotonic()
        try:
            resp = endpoint.call_with_retries(self.gate, lambda: self.send(kwargs), self.max_retries)
        except Exception as exc:  # noqa: BLE001 - any SDK/HTTP failure is the model's, typed for the loop
            raise ModelError(f"{type(exc).__name__}: {exc}") from exc
        return self.decision(resp, time.monotonic() - started)

    def send(self, kwargs: dict[str, Any]):
        """POST /chat/completions (a coroutine with the async client). The request is plain JSON already, so it
        goes through the client's `post` rather than `chat.completions.create`, whose walk of the body against
        the SDK's typed-dict declarations cost most of a worker's CPU (measured: ~2/3 of it at 40 episodes)."""
        from openai.types.chat import ChatCompletion

        body = {k: v for k, v in kwargs.items() if k != "extra_body" and v is not None} | kwargs.get("extra_body", {})
        return self.client.post("/chat/completions", cast_to=ChatCompletion, body=body)

    def decision(self, resp: Any, seconds: float) -> Decision:
        usage = getattr(resp, "usage", None)
        cost = {"model_seconds": seconds,
                "prompt_tokens": getattr(usage, "prompt_tokens", 0) or 0,
                "completion_tokens": getattr(usage, "completion_tokens", 0) or 0}
        if not resp.choices:
            raise ModelError("the model returned no choices")
        message = resp.choices[0].message
        text = message.content or ""
        if self.protocol == "text":
            action, error = render.parse_text_action(text)
        else:
            action, error = _parse_tool_calls(message, text)
        return Decision(action, format_error=error, **cost)


_ASYNC_CLIENTS: dict[tuple, Any] = {}


class AsyncOpenAIPolicy(OpenAIPolicy):
    """The same policy as a coroutine (AsyncOpenAI), for a worker running many episodes in one event loop:
    requests to one endpoint wait for one of its `max_concurrency` places, and each is retried on its own."""

    def _make_client(self, base_url: str | None, api_key: str, timeout: float):
        # One client (its connection pool, its TLS context: ~50 ms to make) per endpoint per event loop,
        # shared by the episodes of a worker.
        import asyncio

        from openai import AsyncOpenAI

        key = (id(asyncio.get_running_loop()), base_url, api_key, timeout)
        if key not in _ASYNC_CLIENTS:
            _ASYNC_CLIENTS[key] = AsyncOpenAI(base_url=base_url, api_key=api_key, timeout=timeout, max_retries=0)
        return _ASYNC_CLIENTS[key]

    async def next_action(self, episode: Episode) -> Decision:  # type: ignore[override]
        kwargs = self.request(episode)
        started = time.monotonic()
        try:
            resp = await endpoint.acall_with_retries(self.gate, lambda: self.send(kwargs), self.max_retries)
        except Exception as exc:  # noqa: BLE001
            raise ModelError(f"{type(exc).__name__}: {exc}") from exc
        return self.decision(resp, time.monotonic() - started)


def _parse_tool_calls(message, text: str) -> tuple[Action, str | None]:
    calls = message.tool_calls or []
    if not calls:
        return Action(tool=None, text=text), "No tool call in your reply: call exactly one of the tools."
    call = calls[0]
    name = call.function.name
    extra = f" (only the first of {len(calls)} tool calls was considered)" if len(calls) > 1 else ""
    if name not in TOOL_NAMES:
        return Action(tool=None, text=text, tool_call_id=call.id), f"Unknown tool {name!r}{extra}."
    try:
        args = json.loads(call.function.arguments or "{}")
        if not isinstance(args, dict):
            raise ValueError("arguments must be a JSON object")
    except ValueError as exc:
        return Action(tool=None, text=text, tool_call_id=call.id), f"Invalid JSON arguments for {name}: {exc}"
    if len(calls) > 1:
        return Action(tool=None, text=text, tool_call_id=call.id), f"Call exactly one tool per reply{extra}."
    return Action(tool=name, arguments=args, text=text, tool_call_id=call.id), None
