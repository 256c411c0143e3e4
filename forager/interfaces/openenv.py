"""Forager's tasks behind OpenEnv's environment API (the protocol of PyPI's openenv-core client): the sessions.

A reset picks a task (by id, or drawn by seed from the served task set) and makes its env on the Forager
env server; each step is one tool call; submit grades in a fresh container and ends the episode with its
reward. Every episode runs through forager.interfaces.driver, so it is recorded as a Forager trajectory
(state records included) whatever ends it: a submit, the turn budget, a client that resets, closes or
disappears, or a session idle past the timeout (its env is deleted then). Sessions that hold a slot
(WebSocket connections, HTTP episodes still running) are capped at `max_sessions`; one over the cap is
refused with CAPACITY_REACHED. The routes that serve these sessions are in openenv_app.py.
"""

from __future__ import annotations

import asyncio
import hmac
import time
import uuid
from dataclasses import dataclass, field
from typing import Any

from pydantic import ValidationError

from forager.errors import UsageError
from forager.episodes.loop import EnvServer
from forager.episodes.prompts import SYSTEM_PROMPT
from forager.interfaces import openenv_models as wire
from forager.interfaces.driver import EpisodeDriver
from forager.interfaces.taskset import TaskSet
from forager.models import Observation
from forager.trajectories import render
from forager.trajectories.store import TrajectoryStore

GONE = "the client disconnected before submitting"


class OpenEnvError(Exception):
    """An error a client gets as OpenEnv's error frame ({"type": "error", "data": {"message", "code"}})."""

    def __init__(self, message: str, code: str = "EXECUTION_ERROR", status: int = 400):
        super().__init__(message)
        self.code, self.status = code, status


@dataclass
class Session:
    id: str
    http_key: str | None = None  # an HTTP episode's id (None: a WebSocket session)
    driver: EpisodeDriver | None = None
    last_active: float = field(default_factory=time.monotonic)
    busy: int = 0
    closed: asyncio.Event = field(default_factory=asyncio.Event)

    @property
    def live(self) -> bool:
        """Holds a capacity slot: a WebSocket connection, or an HTTP episode still running."""
        return self.http_key is None or (self.driver is not None and not self.driver.done)


class OpenEnvServer:
    """Sessions over one Forager env server. `client` is a thread-safe env server client (EnvClient)."""

    def __init__(self, tasks: TaskSet, client: EnvServer, store: TrajectoryStore | None, *, max_sessions: int = 32,
                 session_timeout: float = 600.0, max_turns: int = 100, token: str | None = None):
        self.tasks, self.client, self.store, self.token = tasks, client, store, token
        self.max_sessions, self.session_timeout, self.max_turns = max_sessions, session_timeout, max_turns
        self.sessions: dict[str, Session] = {}  # WebSocket sessions and HTTP episodes
        self.http: dict[str, Session] = {}  # HTTP episodes by episode id
        self.tool_schemas: list[dict[str, Any]] = []

    # ------------------------------------------------------------ sessions

    def open(self, http_key: str | None = None) -> Session:
        live = sum(s.live for s in self.sessions.values())
        if live >= self.max_sessions:
            raise OpenEnvError(f"server at capacity: {live} of {self.max_sessions} sessions in use",
                               "CAPACITY_REACHED", 503)
        session = Session(id=uuid.uuid4().hex, http_key=http_key)
        self.sessions[session.id] = session
        if http_key is not None:
            self.http[http_key] = session
        return session

    async def end(self, session: Session, reason: str = GONE) -> None:
        """Close the session: a running episode ends (env deleted, trajectory written)."""
        self.sessions.pop(session.id, None)
        if session.http_key is not None and self.http.get(session.http_key) is session:
            del self.http[session.http_key]
        if session.driver is not None:
            await asyncio.wrap_future(session.driver.close(reason))
        session.closed.set()

    async def reap(self) -> None:
        """Close sessions idle for longer than the session timeout (no step running, no message)."""
        while True:
            await asyncio.sleep(max(1.0, min(30.0, self.session_timeout / 4)))
            now = time.monotonic()
            for session in list(self.sessions.values()):
                if not session.busy and now - session.last_active > self.session_timeout:
                    await self.end(session, f"no action within the session timeout ({self.session_timeout:g} s)")

    async def shutdown(self) -> None:
        await asyncio.gather(*(self.end(s, "the server shut down") for s in list(self.sessions.values())))

    def authorized(self, headers) -> bool:
        if not self.token:
            return True
        return hmac.compare_digest(headers.get("authorization", "").encode(), f"Bearer {self.token}".encode())

    # ------------------------------------------------------------ the environment API

    async def reset(self, session: Session, data: dict[str, Any]) -> dict[str, Any]:
        if session.driver is not None and not session.driver.done:
            await asyncio.wrap_future(session.driver.close("the client reset before submitting"))
        try:
            seed = data.get("seed")
            task = self.tasks.choose(task_id=data.get("task_id"), seed=int(seed) if seed is not None else None)
        except (UsageError, TypeError, ValueError) as exc:
            raise OpenEnvError(str(exc), "VALIDATION_ERROR") from None
        model = data.get("model")
        driver = EpisodeDriver(
            task, self.client, self.store, interface="openenv", model=str(model) if model else None,
            episode_id=str(data["episode_id"]) if data.get("episode_id") else None, max_turns=self.max_turns,
            idle_timeout=self.session_timeout, labels={"openenv_session": session.id},
            env_ttl=int(self.session_timeout * 2 + 3600))
        session.driver = driver
        event = await self._wait(session, driver.start())
        if event.done:  # the env could not be made (unknown image, Docker down): recorded, and an error here
            raise OpenEnvError(f"could not make the env of task {task.id}: {event.trajectory.error}")
        first = {"problem_statement": task.problem_statement, "tool_schemas": self.tool_schemas,
                 "system_prompt": render.system_message(SYSTEM_PROMPT, "tools")}
        return wire.wire(wire.observation(event, driver.episode_id, task.id, first=first))

    async def step(self, session: Session, data: dict[str, Any]) -> dict[str, Any]:
        try:
            action = wire.ACTION.validate_python(data)
        except ValidationError as exc:
            raise OpenEnvError(f"invalid action: {_errors(exc)}", "VALIDATION_ERROR") from None
        if isinstance(action, wire.ListToolsAction):
            return {"observation": {"tools": wire.mcp_tools(self.tool_schemas)}, "reward": None, "done": False}
        if isinstance(action, wire.CallToolAction):
            return await self._call_tool(session, action)
        return wire.wire(await self._run(session, action))

    def state(self, session: Session) -> dict[str, Any]:
        driver = session.driver
        if driver is None:
            return wire.ForagerState().model_dump()
        traj = driver.finished.result().trajectory if driver.done else None
        return wire.ForagerState(
            episode_id=driver.episode_id, task_id=driver.task.id, done=driver.done,
            step_count=len(traj.steps) if traj else driver.steps_taken,
            reward=traj.result.reward if traj else None, exit_reason=traj.exit_reason if traj else None,
            trajectory_id=driver.trajectory_id).model_dump()

    async def mcp(self, session: Session | None, request: dict[str, Any]) -> dict[str, Any]:
        """MCP JSON-RPC: tools/list anywhere; tools/call inside a session (one tool call of its episode)."""
        rid, method, params = request.get("id"), request.get("method"), request.get("params") or {}
        if not isinstance(params, dict):
            return rpc_error(rid, -32602, "params must be an object")
        if session is None and method == "openenv/session/create":  # OpenEnv's production-mode MCP client
            try:
                return {"jsonrpc": "2.0", "id": rid, "result": {"session_id": self.open().id}}
            except OpenEnvError as exc:
                return rpc_error(rid, -32000, str(exc))
        if session is None and params.get("session_id"):
            session = self.sessions.get(str(params["session_id"]))
            if session is None:
                return rpc_error(rid, -32602, f"Unknown session_id: {params['session_id']}")
            session.last_active = time.monotonic()
            if method == "openenv/session/close":
                await self.end(session, "the client closed the session")
                return {"jsonrpc": "2.0", "id": rid, "result": {"session_id": session.id, "closed": True}}
        if method == "tools/list":
            return {"jsonrpc": "2.0", "id": rid, "result": {"tools": wire.mcp_tools(self.tool_schemas)}}
        if method != "tools/call":
            return rpc_error(rid, -32601, f"Method not found: {method}")
        if session is None:
            return rpc_error(rid, -32600, "tools/call needs a session: use the WebSocket at /ws")
        if not isinstance(params.get("arguments") or {}, dict):
            return rpc_error(rid, -32602, "params must be {name, arguments}")
        call = wire.CallToolAction(tool_name=str(params.get("name", "")), arguments=params.get("arguments") or {})
        try:
            result = await self._call_tool(session, call)
        except OpenEnvError as exc:
            return rpc_error(rid, -32000, str(exc))
        obs = result["observation"]
        if obs.get("error"):  # no such tool, bad arguments: nothing ran
            return rpc_error(rid, -32602, f"{obs['error']['error_type']}: {obs['error']['message']}")
        data = {**obs["result"], "reward": result["reward"], "done": result["done"]}  # the tool's observation
        return {"jsonrpc": "2.0", "id": rid, "result": {
            "content": [{"type": "text", "text": _text(obs["result"])}], "structuredContent": data,
            "isError": False, "data": data}}

    # ------------------------------------------------------------ helpers

    async def _run(self, session: Session, action: wire.ToolAction) -> wire.ForagerObservation:
        driver = session.driver
        if driver is None:
            raise OpenEnvError("no episode in this session: reset first", "EXECUTION_ERROR", 409)
        act, tokens = wire.to_forager(action)
        try:
            pending = driver.step(act, **tokens)
        except UsageError as exc:
            raise OpenEnvError(str(exc), "EXECUTION_ERROR", 409) from None
        event = await self._wait(session, pending)
        traj = event.trajectory
        if traj is not None and traj.exit_reason == "infra_error":  # never disguised as an observation
            raise OpenEnvError(f"infrastructure error, the episode is void (reset to start another): {traj.error}")
        return wire.observation(event, driver.episode_id, driver.task.id)

    async def _call_tool(self, session: Session, call: wire.CallToolAction) -> dict[str, Any]:
        names = {t["name"] for t in wire.mcp_tools(self.tool_schemas)}
        if call.tool_name not in names:
            return _tool_result(call.tool_name, None, "tool_not_found", f"no tool {call.tool_name!r}: {sorted(names)}")
        try:
            action = wire.TOOL_ACTION.validate_python({**call.arguments, "type": call.tool_name,
                                                       "metadata": call.metadata})
        except ValidationError as exc:
            return _tool_result(call.tool_name, None, "invalid_args", _errors(exc))
        obs = await self._run(session, action)
        result = _tool_result(call.tool_name, wire.wire(obs)["observation"])
        return {**result, "reward": obs.reward, "done": obs.done}

    async def _wait(self, session: Session, pending) -> Any:
        session.busy += 1
        try:
            return await asyncio.wrap_future(pending)
        finally:
            session.busy -= 1
            session.last_active = time.monotonic()


def rpc_error(rid: Any, code: int, message: str) -> dict[str, Any]:
    return {"jsonrpc": "2.0", "id": rid, "error": {"code": code, "message": message}}


def _errors(exc: ValidationError) -> str:
    return "; ".join(f"{'.'.join(map(str, e['loc'])) or 'action'}: {e['msg']}" for e in exc.errors())


def _tool_result(name: str, result: Any, error_type: str | None = None, message: str = "") -> dict[str, Any]:
    error = {"error_type": error_type, "message": message} if error_type else None
    return {"observation": {"tool_name": name, "result": result, "error": error}, "reward": None, "done": False}


def _text(obs: dict[str, Any]) -> str:
    return render.observation_text(Observation(output=obs.get("output", ""), exit_code=obs.get("exit_code"),
                                               error=obs.get("error"), flags=obs.get("flags") or {}))
