"""Python client of the environment server: `EnvClient` (sync) and `AsyncEnvClient`, over httpx.

    with EnvClient("http://127.0.0.1:8765") as c:
        env = c.create_env("forager/six:abc123", ttl=600)
        out = c.shell(env.id, "python -m pytest -q")
        c.delete_env(env.id)

HTTP errors come back as the typed exceptions of envserver.errors (UnknownEnv, EnvGone,
DockerUnavailable, BadRequest, ImageNotAllowed, Unauthorized; ServerUnreachable when nothing
answers), all subclasses of EnvServerError. A non-zero exit code or an ok=False edit is a result,
not an exception.
"""

from __future__ import annotations

from typing import Any

import socket

import httpx
from pydantic import ValidationError

from envserver.errors import (  # noqa: F401  (re-exported: callers import the errors from the client)
    BY_CODE,
    BadRequest,
    DockerUnavailable,
    EnvGone,
    EnvServerError,
    ImageNotAllowed,
    ServerUnreachable,
    Unauthorized,
    UnknownEnv,
)
from envserver.models import (
    CreateEnvRequest,
    EnvInfo,
    FileToolResponse,
    GradingSpec,
    Limits,
    ShellResponse,
    SubmitResponse,
    ToolSchema,
)

# Reads wait for the command: the server caps a shell call at its max timeout; grading may take longer.
DEFAULT_TIMEOUT = httpx.Timeout(connect=10.0, read=None, write=60.0, pool=60.0)
# httpcore writes headers and body separately; without NODELAY, Nagle holds the body back for an ACK.
NODELAY = [(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)]


def _create_body(image: str, **fields: Any) -> dict:
    try:  # the same checks the server makes, raised as the same error
        request = CreateEnvRequest(image=image, **fields)
    except ValidationError as exc:
        raise BadRequest(f"invalid create_env request: {exc}") from exc
    return request.model_dump(mode="json", exclude_defaults=True) | {"image": image}


__all__ = [
    "EnvClient", "AsyncEnvClient", "EnvServerError", "UnknownEnv", "EnvGone", "DockerUnavailable", "BadRequest",
    "ImageNotAllowed", "Unauthorized", "ServerUnreachable",
]


def _raise_for(response: httpx.Response) -> None:
    if response.status_code < 400:
        return
    try:
        body = response.json()
        code, message = body.get("error"), body.get("message") or response.text
    except ValueError:
        code, message = None, response.text
    exc_type = BY_CODE.get(code, EnvServerError)
    exc = exc_type(f"HTTP {response.status_code}: {message}")
    exc.status = response.status_code
    raise exc


def _headers(token: str | None) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"} if token else {}


class EnvClient:
    def __init__(self, url: str, token: str | None = None, timeout: httpx.Timeout | float | None = DEFAULT_TIMEOUT):
        self.url = url.rstrip("/")
        self._http = httpx.Client(
            base_url=self.url, headers=_headers(token), timeout=timeout, transport=httpx.HTTPTransport(socket_options=NODELAY)
        )

    def _call(self, method: str, path: str, json: Any = None) -> Any:
        try:
            response = self._http.request(method, path, json=json)
        except httpx.TransportError as exc:
            raise ServerUnreachable(f"{self.url}: {exc!r}") from exc
        _raise_for(response)
        return response.json() if response.content else None

    def health(self) -> dict:
        return self._call("GET", "/healthz")

    def tools(self) -> list[dict]:
        return [ToolSchema.model_validate(t).model_dump() for t in self._call("GET", "/tools")]

    def create_env(
        self, image: str, *, limits: Limits | None = None, ttl: int | None = None, workdir: str | None = None,
        setup_patch: str = "", grading: GradingSpec | None = None, labels: dict[str, str] | None = None,
        record_state: bool | None = None,
    ) -> EnvInfo:
        body = _create_body(image, **_given(limits=limits, ttl=ttl, workdir=workdir, setup_patch=setup_patch,
                                            grading=grading, labels=labels, record_state=record_state))
        return EnvInfo.model_validate(self._call("POST", "/envs", body))

    def list_envs(self) -> list[EnvInfo]:
        return [EnvInfo.model_validate(e) for e in self._call("GET", "/envs")]

    def get_env(self, env_id: str) -> EnvInfo:
        return EnvInfo.model_validate(self._call("GET", f"/envs/{env_id}"))

    def delete_env(self, env_id: str) -> None:
        self._call("DELETE", f"/envs/{env_id}")

    def fork(self, env_id: str, count: int = 1, *, ttl: int | None = None,
             labels: dict[str, str] | None = None) -> list[EnvInfo]:
        """`count` new envs with this env's files, cwd and exported variables (the source keeps running)."""
        body = _given(count=count, ttl=ttl, labels=labels)
        return [EnvInfo.model_validate(e) for e in self._call("POST", f"/envs/{env_id}/fork", body)]

    def shell(self, env_id: str, command: str, timeout: float | None = None) -> ShellResponse:
        body = {"command": command} if timeout is None else {"command": command, "timeout": timeout}
        return ShellResponse.model_validate(self._call("POST", f"/envs/{env_id}/shell", body))

    def edit(self, env_id: str, path: str, old: str, new: str) -> FileToolResponse:
        body = {"path": path, "old": old, "new": new}
        return FileToolResponse.model_validate(self._call("POST", f"/envs/{env_id}/edit", body))

    def create(self, env_id: str, path: str, content: str) -> FileToolResponse:
        return FileToolResponse.model_validate(self._call("POST", f"/envs/{env_id}/create", {"path": path, "content": content}))

    def submit(self, env_id: str) -> SubmitResponse:
        return SubmitResponse.model_validate(self._call("POST", f"/envs/{env_id}/submit"))

    def close(self) -> None:
        self._http.close()

    def __enter__(self) -> "EnvClient":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


class AsyncEnvClient:
    """The same calls as coroutines. One client serves many episodes at once: `max_connections` bounds its
    connections (a call waits for a free one up to `pool_timeout` s; None waits as long as it takes, for a
    caller that bounds its own concurrency, such as the async worker)."""

    def __init__(self, url: str, token: str | None = None, timeout: httpx.Timeout | float | None = DEFAULT_TIMEOUT,
                 max_connections: int = 100, pool_timeout: float | None = 60.0):
        self.url = url.rstrip("/")
        if isinstance(timeout, httpx.Timeout):
            timeout = httpx.Timeout(connect=timeout.connect, read=timeout.read, write=timeout.write, pool=pool_timeout)
        # An idle connection is dropped by this side first (the server keeps one 75 s): never reused as it closes.
        limits = httpx.Limits(max_connections=max_connections, max_keepalive_connections=max_connections,
                              keepalive_expiry=30.0)
        transport = httpx.AsyncHTTPTransport(socket_options=NODELAY, limits=limits)
        self._http = httpx.AsyncClient(base_url=self.url, headers=_headers(token), timeout=timeout, transport=transport)

    async def _call(self, method: str, path: str, json: Any = None) -> Any:
        try:
            response = await self._http.request(method, path, json=json)
        except httpx.TransportError as exc:
            raise ServerUnreachable(f"{self.url}: {exc!r}") from exc
        _raise_for(response)
        return response.json() if response.content else None

    async def health(self) -> dict:
        return await self._call("GET", "/healthz")

    async def tools(self) -> list[dict]:
        return [ToolSchema.model_validate(t).model_dump() for t in await self._call("GET", "/tools")]

    async def create_env(
        self, image: str, *, limits: Limits | None = None, ttl: int | None = None, workdir: str | None = None,
        setup_patch: str = "", grading: GradingSpec | None = None, labels: dict[str, str] | None = None,
        record_state: bool | None = None,
    ) -> EnvInfo:
        body = _create_body(image, **_given(limits=limits, ttl=ttl, workdir=workdir, setup_patch=setup_patch,
                                            grading=grading, labels=labels, record_state=record_state))
        return EnvInfo.model_validate(await self._call("POST", "/envs", body))

    async def list_envs(self) -> list[EnvInfo]:
        return [EnvInfo.model_validate(e) for e in await self._call("GET", "/envs")]

    async def get_env(self, env_id: str) -> EnvInfo:
        return EnvInfo.model_validate(await self._call("GET", f"/envs/{env_id}"))

    async def delete_env(self, env_id: str) -> None:
        await self._call("DELETE", f"/envs/{env_id}")

    async def fork(self, env_id: str, count: int = 1, *, ttl: int | None = None,
                   labels: dict[str, str] | None = None) -> list[EnvInfo]:
        body = _given(count=count, ttl=ttl, labels=labels)
        return [EnvInfo.model_validate(e) for e in await self._call("POST", f"/envs/{env_id}/fork", body)]

    async def shell(self, env_id: str, command: str, timeout: float | None = None) -> ShellResponse:
        body = {"command": command} if timeout is None else {"command": command, "timeout": timeout}
        return ShellResponse.model_validate(await self._call("POST", f"/envs/{env_id}/shell", body))

    async def edit(self, env_id: str, path: str, old: str, new: str) -> FileToolResponse:
        body = {"path": path, "old": old, "new": new}
        return FileToolResponse.model_validate(await self._call("POST", f"/envs/{env_id}/edit", body))

    async def create(self, env_id: str, path: str, content: str) -> FileToolResponse:
        body = {"path": path, "content": content}
        return FileToolResponse.model_validate(await self._call("POST", f"/envs/{env_id}/create", body))

    async def submit(self, env_id: str) -> SubmitResponse:
        return SubmitResponse.model_validate(await self._call("POST", f"/envs/{env_id}/submit"))

    async def close(self) -> None:
        await self._http.aclose()

    async def __aenter__(self) -> "AsyncEnvClient":
        return self

    async def __aexit__(self, *exc) -> None:
        await self.close()


def _given(**fields: Any) -> dict:
    return {k: v for k, v in fields.items() if v is not None and v != ""}
