"""Fixtures for the tasks/agent tests (and any test that needs them).

`scripted_model`: a real OpenAI-compatible HTTP server on a free loopback port that answers
POST /v1/chat/completions with scripted replies, in order, and records every request. It is the
only stand-in the test suite allows (a model is not infrastructure we can run here).

A scripted reply is a dict:
  {"tool": "shell", "arguments": {...}}         a native function call
  {"tool": "shell", "raw_arguments": "{oops"}   a function call whose arguments are not JSON
  {"text": "..."}                               plain content (CWM text protocol, or a malformed reply)
"""

from __future__ import annotations

import json
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest


class ScriptedModel:
    def __init__(self):
        self.replies: list[dict] = []
        self.requests: list[dict] = []
        self.lock = threading.Lock()
        self.base_url = ""

    def script(self, replies: list[dict]) -> "ScriptedModel":
        with self.lock:
            self.replies = list(replies)
            self.requests = []
        return self

    def next_reply(self, request: dict) -> dict | None:
        with self.lock:
            self.requests.append(request)
            return self.replies.pop(0) if self.replies else None


def _completion(reply: dict, request: dict, n: int) -> dict:
    message: dict = {"role": "assistant", "content": reply.get("text")}
    finish = "stop"
    if "tool" in reply:
        args = reply.get("raw_arguments", json.dumps(reply.get("arguments", {})))
        message["tool_calls"] = [{"id": f"call_{n}", "type": "function",
                                  "function": {"name": reply["tool"], "arguments": args}}]
        finish = "tool_calls"
    prompt_tokens = len(json.dumps(request.get("messages", []))) // 4
    completion_tokens = max(1, len(json.dumps(message)) // 4)
    return {
        "id": f"chatcmpl-{n}", "object": "chat.completion", "created": int(time.time()),
        "model": request.get("model", "scripted"),
        "choices": [{"index": 0, "message": message, "finish_reason": finish}],
        "usage": {"prompt_tokens": prompt_tokens, "completion_tokens": completion_tokens,
                  "total_tokens": prompt_tokens + completion_tokens},
    }


@pytest.fixture
def scripted_model():
    model = ScriptedModel()
    counter = {"n": 0}

    class Handler(BaseHTTPRequestHandler):
        def log_message(self, *args):  # keep test output clean
            pass

        def do_POST(self):
            body = json.loads(self.rfile.read(int(self.headers.get("Content-Length", 0))) or b"{}")
            if not self.path.rstrip("/").endswith("/chat/completions"):
                return self._send(404, {"error": {"message": f"no route {self.path}"}})
            reply = model.next_reply(body)
            if reply is None:
                return self._send(400, {"error": {"message": "script exhausted", "type": "invalid_request_error"}})
            counter["n"] += 1
            self._send(200, _completion(reply, body, counter["n"]))

        def _send(self, status: int, payload: dict):
            data = json.dumps(payload).encode()
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    model.base_url = f"http://127.0.0.1:{server.server_address[1]}/v1"
    yield model
    server.shutdown()
    server.server_close()


# ---------------------------------------------------------------- synthesized tasks (built once per session)


class Synthesized:
    def __init__(self, record, settings, report):
        self.record, self.settings, self.report = record, settings, report
        self.tasks = report.tasks


@pytest.fixture(scope="session")
def synthesized(tiny_repo_image, tmp_path_factory):
    """Mutate-fix tasks synthesized from the builder's tiny repo image, in a session FORAGER_HOME (two sandboxes)."""
    from forager.config import Settings
    from forager.tasks.synth import run_synthesis

    home = tmp_path_factory.mktemp("tasks-home")
    settings = Settings.from_env().model_copy(update={"home": home})
    report = run_synthesis(tiny_repo_image, settings, max_tasks=6, max_candidates=40, seed=1, workers=2)
    return Synthesized(tiny_repo_image, settings, report)
