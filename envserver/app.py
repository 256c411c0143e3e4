"""The HTTP API: `create_app(config)` returns the FastAPI app; routes are thin, the work is in envs/tools/grading."""

from __future__ import annotations

import asyncio
import hmac
import json
import re
from concurrent.futures import ThreadPoolExecutor
from contextlib import asynccontextmanager

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from pydantic import ValidationError

from envserver import tools, world
from envserver.config import ServerConfig
from envserver.docker_backend import Backend
from envserver.envs import Env, Manager
from envserver.errors import BadRequest, EnvBroken, EnvGone, EnvServerError
from envserver.metrics import Metrics
from envserver.models import (
    CreateEnvRequest,
    CreateFileRequest,
    EditRequest,
    EnvInfo,
    ErrorResponse,
    FileToolResponse,
    ForkRequest,
    ShellRequest,
    ShellResponse,
    SubmitResponse,
    ToolSchema,
)
from envserver.session import SessionDied

OPEN_PATHS = {"/healthz", "/docs", "/openapi.json", "/docs/oauth2-redirect", "/redoc"}


def create_app(config: ServerConfig, backend: Backend | None = None) -> FastAPI:
    config.check()
    metrics = Metrics()

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        loop = asyncio.get_running_loop()
        # Docker calls are blocking; each waits in a thread, and 64 concurrent envs need more than the default 6.
        loop.set_default_executor(ThreadPoolExecutor(config.docker_threads, thread_name_prefix="docker"))
        manager = Manager(config, backend or Backend(pool_size=config.docker_threads))
        if config.require_disk_quota and not await asyncio.to_thread(manager.backend.quota_support):
            raise RuntimeError("require_disk_quota is set but this Docker cannot give containers a disk quota "
                               "(it needs overlay2 on XFS with pquota: `forager setup` makes one)")
        await manager.start()
        app.state.manager = manager
        try:
            yield
        finally:
            await manager.stop()

    app = FastAPI(
        title="Forager environment server",
        version="1",
        description="One sandboxed container per environment; shell, edit, create and submit over HTTP.",
        lifespan=lifespan,
        responses={code: {"model": ErrorResponse} for code in (401, 403, 404, 409, 422, 503)},
    )
    def mgr() -> Manager:
        return app.state.manager

    @app.exception_handler(EnvServerError)
    async def typed_error(_request: Request, exc: EnvServerError):
        metrics.errors.labels(exc.code).inc()
        return JSONResponse(ErrorResponse(error=exc.code, message=exc.message).model_dump(), status_code=exc.status)

    @app.exception_handler(RequestValidationError)
    async def invalid(_request: Request, exc: RequestValidationError):
        metrics.errors.labels("bad_request").inc()
        return JSONResponse(ErrorResponse(error="bad_request", message=_problems(exc.errors())).model_dump(), status_code=422)

    async def run_tool(env_id: str, tool: str, work):
        """Serialise tool calls per env, time them, and turn a dead container into env_gone, or env_broken
        when the agent's own commands did it (its memory ran out, its shell is gone)."""
        env = mgr().live(env_id)
        async with env.lock:
            env = mgr().live(env_id)  # it may have died while this call waited its turn
            with metrics.step(tool):
                try:
                    return await work(env)
                except (SessionDied, EnvGone) as exc:
                    if isinstance(exc, EnvBroken):
                        raise
                    reason, broken = await mgr().why_dead(env)
                    mgr().mark_gone(env, reason, broken)
                    raise (EnvBroken if broken else EnvGone)(f"env {env_id} is gone: {reason}") from exc

    @app.get("/healthz")
    async def healthz() -> dict:
        m = mgr()
        await asyncio.to_thread(m.backend.ping)  # 503 docker_unavailable when the daemon is down
        return {
            "ok": True, "server_id": m.server_id, "envs": len(m.envs), "pool": m.pool.stats(),
            "grading_pool": m.graders.stats(), "pool_failures": m.pool.failures,
            "removed_at_start": m.startup_removed, "disk_quota": await asyncio.to_thread(m.backend.quota_support),
        }

    @app.get("/tools", response_model=list[ToolSchema])
    async def list_tools():
        return tools.TOOLS

    @app.get("/metrics")
    async def prometheus():
        m = mgr()
        return Response(metrics.render(len(m.envs), m.pool.stats()), media_type="text/plain; version=0.0.4")

    @app.post("/envs", response_model=EnvInfo, status_code=201)
    async def create_env(req: CreateEnvRequest, request: Request):
        # Unknown fields are refused, not ignored: a client asking for mounts or privileges must hear no.
        unknown = set(await request.json()) - set(CreateEnvRequest.model_fields)
        if unknown:
            raise BadRequest(f"unknown fields: {', '.join(sorted(unknown))} (envs get no mounts, privileges or networks)")
        with metrics.step("create_env"):
            env = await mgr().create(req)
        metrics.envs_created.labels("pool" if env.from_pool else "cold").inc()
        return env.info()

    @app.get("/envs", response_model=list[EnvInfo])
    async def list_envs():
        return [e.info() for e in mgr().envs.values()]

    @app.get("/envs/{env_id}", response_model=EnvInfo)
    async def get_env(env_id: str):
        return mgr().get(env_id).info()

    @app.delete("/envs/{env_id}", status_code=204)
    async def delete_env(env_id: str):
        await mgr().delete(env_id)
        return Response(status_code=204)

    async def run_shell(env_id: str, req: ShellRequest) -> ShellResponse:
        timeout = min(req.timeout or config.default_timeout, config.max_timeout)

        async def work(env: Env):
            await world.before_step(mgr(), env)
            env.outputs += 1
            result = await tools.shell(mgr().backend, env.session, req, timeout, config.output_cap, env.outputs)
            result.state = await world.after_step(env)
            return result

        return await run_tool(env_id, "shell", work)

    @app.post("/envs/{env_id}/shell", response_model=ShellResponse)
    async def shell(env_id: str, req: ShellRequest):
        # Documents the route; requests are normally answered by Guard's fast path with the same run_shell.
        return Response((await run_shell(env_id, req)).model_dump_json(), media_type="application/json")

    @app.post("/envs/{env_id}/edit", response_model=FileToolResponse)
    async def edit(env_id: str, req: EditRequest):
        async def work(env: Env):
            await world.before_step(mgr(), env)
            result = await tools.edit(mgr().backend, env.container_id, env.workdir, req, config.max_file_bytes)
            result.state = await world.after_step(env)
            return result

        result = await run_tool(env_id, "edit", work)
        if not result.ok:
            metrics.tool_errors.labels("edit").inc()
        return result

    @app.post("/envs/{env_id}/create", response_model=FileToolResponse)
    async def create_file(env_id: str, req: CreateFileRequest):
        async def work(env: Env):
            await world.before_step(mgr(), env)
            result = await tools.create(mgr().backend, env.container_id, env.workdir, req, config.max_file_bytes)
            result.state = await world.after_step(env)
            return result

        result = await run_tool(env_id, "create", work)
        if not result.ok:
            metrics.tool_errors.labels("create").inc()
        return result

    @app.post("/envs/{env_id}/fork", response_model=list[EnvInfo], status_code=201)
    async def fork_env(env_id: str, req: ForkRequest):
        """New envs with this env's files, cwd and exported variables (and grading state); it keeps running."""
        source = mgr().live(env_id)
        async with source.lock:  # no step of the source runs while it is committed
            source = mgr().live(env_id)
            with metrics.step("fork"):
                forks = await world.fork(mgr(), source, req)
        metrics.envs_created.labels("fork").inc(len(forks))
        return [f.info() for f in forks]

    @app.post("/envs/{env_id}/submit", response_model=SubmitResponse)
    async def submit(env_id: str):
        async def work(env: Env):
            return await mgr().submit(env)

        return await run_tool(env_id, "submit", work)

    app.add_middleware(
        Guard, token=config.token, max_body=config.max_body, shell=run_shell,
        on_error=lambda code: metrics.errors.labels(code).inc(),
    )
    return app


class Guard:
    """Bearer token, request-size limit and the shell fast path, as plain ASGI in front of FastAPI.

    POST /envs/{id}/shell is every agent step, so it is answered here with the same run_shell the
    FastAPI route uses, skipping FastAPI's routing and dependency resolution: that machinery was about
    half of the server's CPU per shell call. Every other request goes on to FastAPI.
    """

    def __init__(self, app, token: str | None, max_body: int, shell=None, on_error=None):
        self.app, self.max_body, self.shell, self.on_error = app, max_body, shell, on_error
        self.expected = f"Bearer {token}".encode() if token else None

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        headers = dict(scope["headers"])
        if self.expected and scope["path"] not in OPEN_PATHS:
            if not hmac.compare_digest(headers.get(b"authorization", b""), self.expected):
                return await _error(send, 401, "unauthorized", "missing or wrong bearer token")
        length = headers.get(b"content-length")
        if length is not None and length.isdigit() and int(length) > self.max_body:
            return await _error(send, 413, "bad_request", f"request body over {self.max_body} bytes")
        method = scope["method"]
        shell_env = _SHELL_PATH.match(scope["path"]) if self.shell and method == "POST" else None
        if not shell_env and (length is not None or method in ("GET", "HEAD", "DELETE")):
            return await self.app(scope, receive, send)
        # Read the body here (a chunked one carries no length: count it), then answer or replay it.
        messages, seen = [], 0
        while True:
            message = await receive()
            messages.append(message)
            seen += len(message.get("body", b""))
            if seen > self.max_body:
                return await _error(send, 413, "bad_request", f"request body over {self.max_body} bytes")
            if message["type"] != "http.request" or not message.get("more_body"):
                break
        if shell_env:
            return await self._shell(shell_env.group(1), b"".join(m.get("body", b"") for m in messages), send)

        async def replay():
            return messages.pop(0) if messages else await receive()

        return await self.app(scope, replay, send)

    async def _shell(self, env_id: str, body: bytes, send) -> None:
        try:
            req = ShellRequest.model_validate_json(body)
        except ValidationError as exc:
            self.on_error("bad_request")
            return await _error(send, 422, "bad_request", _problems(exc.errors(), prefix="body"))
        try:
            result = await self.shell(env_id, req)
        except EnvServerError as exc:
            self.on_error(exc.code)
            return await _error(send, exc.status, exc.code, exc.message)
        await _send(send, 200, result.model_dump_json().encode())


_SHELL_PATH = re.compile(r"^/envs/([^/]+)/shell$")


def _problems(errors, prefix: str | None = None) -> str:
    return "; ".join(
        f"{'.'.join(str(p) for p in ([prefix] if prefix else []) + list(e['loc']))}: {e['msg']}" for e in errors
    )


async def _error(send, status: int, code: str, message: str) -> None:
    await _send(send, status, json.dumps({"error": code, "message": message}).encode())


async def _send(send, status: int, body: bytes) -> None:
    await send({"type": "http.response.start", "status": status,
                "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]})
    await send({"type": "http.response.body", "body": body})
