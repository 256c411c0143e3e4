"""The HTTP and WebSocket routes of the OpenEnv server (sessions and episodes: openenv.py).

    GET  /health /metadata /schema        the server; the action/observation/state JSON schemas
    WS   /ws                              one session, one env at a time: {"type": "reset"|"step"|"state"|"close"|"mcp"}
    POST /reset {task_id | seed, episode_id?, model?}    an HTTP episode, kept under its episode_id
    POST /step {action, episode_id}       GET /state?episode_id=...
    POST /mcp                             MCP JSON-RPC: tools/list; openenv/session/create|close and tools/call
                                          with its session_id (the WebSocket joins it with /ws?session_id=...)

OpenEnv's own HTTP /reset and /step make a throwaway env per request; a Forager env is a container worth
keeping, so an HTTP episode lives under its episode_id until it ends or idles past the session timeout.
With a token every route (and the WebSocket handshake) needs `Authorization: Bearer <token>`.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
import uuid
from contextlib import asynccontextmanager
from typing import Any

from fastapi import APIRouter, Body, Depends, FastAPI, Request, WebSocket, WebSocketDisconnect
from fastapi.responses import JSONResponse

from envserver.errors import EnvServerError
from forager import __version__
from forager.interfaces import openenv_models as wire
from forager.interfaces.openenv import OpenEnvError, OpenEnvServer, Session, rpc_error

log = logging.getLogger("forager.openenv")


def _frame(exc: OpenEnvError) -> str:
    return json.dumps({"type": "error", "data": {"message": str(exc), "code": exc.code}})


def create_app(server: OpenEnvServer) -> FastAPI:
    @asynccontextmanager
    async def lifespan(app: FastAPI):
        server.tool_schemas = await asyncio.to_thread(server.client.tools)
        reaper = asyncio.create_task(server.reap())
        try:
            yield
        finally:
            reaper.cancel()
            await server.shutdown()

    app = FastAPI(title="Forager (OpenEnv)", version=__version__, lifespan=lifespan)

    @app.exception_handler(OpenEnvError)
    async def openenv_error(request: Request, exc: OpenEnvError) -> JSONResponse:
        return JSONResponse({"detail": str(exc), "code": exc.code}, status_code=exc.status)

    async def require_token(request: Request) -> None:
        if not server.authorized(request.headers):
            raise OpenEnvError("missing or wrong bearer token", "UNAUTHORIZED", 401)

    api = APIRouter(dependencies=[Depends(require_token)])

    @api.get("/health")
    async def health() -> Any:
        try:
            await asyncio.to_thread(server.client.health)
        except EnvServerError as exc:
            return JSONResponse({"status": "unhealthy", "detail": str(exc)}, status_code=503)
        return {"status": "healthy"}

    @api.get("/metadata")
    async def metadata() -> dict[str, Any]:
        return {"name": "forager", "version": __version__, "author": "Forager", "documentation_url": None,
                "readme_content": None, "description": (
                    f"Repair tasks in executable repository images ({len(server.tasks)} tasks): shell, edit, create "
                    "and submit; submit is graded by hidden tests in a fresh container (reward 1 or 0).")}

    @api.get("/schema")
    async def schema() -> dict[str, Any]:
        return wire.schemas()

    def http_session(episode_id: Any) -> Session:
        session = server.http.get(str(episode_id)) if episode_id else None
        if session is None:
            raise OpenEnvError("no such HTTP episode: POST /reset first and pass its `episode_id`",
                               "UNKNOWN_EPISODE", 404)
        return session

    @api.post("/reset")
    async def reset(body: dict[str, Any] = Body(default_factory=dict)) -> dict[str, Any]:
        episode_id = str(body.get("episode_id") or uuid.uuid4().hex)
        old = server.http.get(episode_id)
        if old is not None:  # the HTTP episode is reset: the old one ends, a new one starts under the same id
            await server.end(old, "the client reset before submitting")
        session = server.open(http_key=episode_id)
        try:
            return await server.reset(session, {**body, "episode_id": episode_id})
        except OpenEnvError:
            await server.end(session)
            raise

    @api.post("/step")
    async def step(body: dict[str, Any] = Body(...)) -> dict[str, Any]:
        session = http_session(body.get("episode_id"))
        if not isinstance(body.get("action"), dict):
            raise OpenEnvError("the body needs an `action` object", "VALIDATION_ERROR", 422)
        return await server.step(session, body["action"])

    @api.get("/state")
    async def state(episode_id: str | None = None) -> dict[str, Any]:
        return server.state(http_session(episode_id))

    @api.post("/mcp")
    async def mcp(request: Request) -> dict[str, Any]:
        try:
            body = json.loads(await request.body())
        except ValueError:
            return rpc_error(None, -32700, "Parse error")
        return await server.mcp(None, body if isinstance(body, dict) else {})

    app.include_router(api)

    @app.websocket("/ws")
    async def ws(websocket: WebSocket) -> None:
        await websocket.accept()
        try:
            if not server.authorized(websocket.headers):
                raise OpenEnvError("missing or wrong bearer token", "UNAUTHORIZED")
            attach = websocket.query_params.get("session_id")  # a session made over /mcp (production mode)
            session = server.sessions.get(attach) if attach else server.open()
            if session is None or session.http_key is not None:
                raise OpenEnvError(f"Unknown session_id: {attach}", "SESSION_ERROR")
        except OpenEnvError as exc:
            await websocket.send_text(_frame(exc))
            await websocket.close(code=1008 if exc.code == "UNAUTHORIZED" else 1013)
            return
        reader = asyncio.create_task(_serve(server, session, websocket))
        reaped = asyncio.create_task(session.closed.wait())  # the reaper (or shutdown) ended the session
        try:
            await asyncio.wait({reader, reaped}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            reader.cancel()
            reaped.cancel()
            await server.end(session)  # a client gone mid-episode: its env is deleted here
            try:
                await websocket.close()
            except RuntimeError:
                pass

    return app


async def _serve(server: OpenEnvServer, session: Session, websocket: WebSocket) -> None:
    """One WebSocket session: messages in order, one reply each, until close or disconnect."""
    try:
        while True:
            raw = await websocket.receive_text()
            session.last_active = time.monotonic()
            try:
                message = json.loads(raw)
            except ValueError as exc:
                await websocket.send_text(_frame(OpenEnvError(f"Invalid JSON: {exc}", "INVALID_JSON")))
                continue
            kind = message.get("type") if isinstance(message, dict) else None
            if kind == "close":
                return
            try:
                data = message.get("data") or {}
                if not isinstance(data, dict):
                    raise OpenEnvError("`data` must be an object", "VALIDATION_ERROR")
                if kind == "reset":
                    reply = {"type": "observation", "data": await server.reset(session, data)}
                elif kind == "step":
                    reply = {"type": "observation", "data": await server.step(session, data)}
                elif kind == "state":
                    reply = {"type": "state", "data": server.state(session)}
                elif kind == "mcp":
                    reply = {"type": "mcp", "data": await server.mcp(session, data)}
                else:
                    raise OpenEnvError(f"Unknown message type: {kind}", "UNKNOWN_TYPE")
            except OpenEnvError as exc:
                await websocket.send_text(_frame(exc))
                continue
            except Exception as exc:  # noqa: BLE001 - a bug must not end the session silently: say it, log it
                log.exception("openenv session %s: %s failed", session.id, kind)
                await websocket.send_text(_frame(OpenEnvError(f"{type(exc).__name__}: {exc}")))
                continue
            await websocket.send_text(json.dumps(reply))
    except WebSocketDisconnect:
        return
