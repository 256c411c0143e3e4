"""Typed infrastructure errors, shared by the server (raises them) and the client (re-raises them).

A tool error (the agent did something wrong) is never one of these: it is a normal 200 answer.
These are for what the agent cannot fix: an unknown or dead env, Docker down, a refused request.
"""

from __future__ import annotations


class EnvServerError(Exception):
    status: int = 500
    code: str = "internal"

    def __init__(self, message: str):
        super().__init__(message)
        self.message = message


class UnknownEnv(EnvServerError):
    status, code = 404, "unknown_env"


class EnvGone(EnvServerError):
    status, code = 409, "env_gone"


class EnvBroken(EnvGone):
    """The env stopped working because of what the agent did in it (exhausted its memory, removed its
    shell): a result of the episode, not an infrastructure failure to retry."""

    code = "env_broken"


class DockerUnavailable(EnvServerError):
    status, code = 503, "docker_unavailable"


class BadRequest(EnvServerError):
    status, code = 422, "bad_request"


class ImageNotAllowed(EnvServerError):
    status, code = 403, "image_not_allowed"


class Unauthorized(EnvServerError):
    status, code = 401, "unauthorized"


class ServerUnreachable(EnvServerError):
    """Client side only: the server did not answer (connection refused, reset, timed out)."""

    status, code = 0, "server_unreachable"


BY_CODE: dict[str, type[EnvServerError]] = {
    cls.code: cls for cls in (UnknownEnv, EnvGone, EnvBroken, DockerUnavailable, BadRequest, ImageNotAllowed, Unauthorized)
}
