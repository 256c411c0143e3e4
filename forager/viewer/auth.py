"""The env server's token rules for the viewer: loopback needs none; any other bind address needs one.

A client proves it knows the token by `Authorization: Bearer <token>`, a `?token=` query parameter
or the cookie that the query parameter sets. The parameter is answered with a redirect to the same
URL without it, so the token leaves the address bar and every link on the page keeps working.
"""

from __future__ import annotations

import hashlib
import hmac
import ipaddress
from http.cookies import SimpleCookie
from urllib.parse import parse_qsl, urlencode

COOKIE = "forager_view_token"
OPEN_PATHS = {"/healthz"}


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def check_bind(host: str, token: str | None) -> None:
    if not token and not is_loopback(host):
        raise ValueError(f"refusing to bind {host} without --token: only loopback may run without auth")


class TokenGate:
    """Plain ASGI in front of the app: every path but /healthz needs the token when one is set."""

    def __init__(self, app, token: str | None):
        self.app = app
        self.token = token.encode() if token else None
        # the cookie carries a digest, not the token: cookie-safe characters whatever the token holds
        self.cookie_value = hashlib.sha256(b"forager-view:" + self.token).hexdigest().encode() if token else None

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http" or self.token is None or scope["path"] in OPEN_PATHS:
            return await self.app(scope, receive, send)
        headers = dict(scope["headers"])
        if self._matches(headers.get(b"authorization", b""), prefix=b"Bearer "):
            return await self.app(scope, receive, send)
        if hmac.compare_digest(_cookie(headers.get(b"cookie", b"")), self.cookie_value):
            return await self.app(scope, receive, send)
        query = parse_qsl(scope.get("query_string", b"").decode("latin-1"), keep_blank_values=True)
        given = [v for k, v in query if k == "token"]
        if given and self._matches(given[-1].encode(), prefix=b""):
            rest = urlencode([(k, v) for k, v in query if k != "token"])
            location = scope.get("root_path", "") + scope["path"] + (f"?{rest}" if rest else "")
            cookie = f"{COOKIE}={self.cookie_value.decode()}; Path=/; HttpOnly; SameSite=Strict"
            return await _respond(send, 303, b"", [(b"location", location.encode()), (b"set-cookie", cookie.encode())])
        body = (b"<!doctype html><title>401 token required</title><h1>401: token required</h1>"
                b"<p>This viewer is bound beyond loopback. Open it with <code>?token=...</code> once "
                b"(a cookie keeps you signed in) or send <code>Authorization: Bearer ...</code>.</p>")
        return await _respond(send, 401, body, [(b"content-type", b"text/html; charset=utf-8")])

    def _matches(self, given: bytes, prefix: bytes) -> bool:
        return hmac.compare_digest(given, prefix + self.token)


def _cookie(header: bytes) -> bytes:
    jar = SimpleCookie()
    try:
        jar.load(header.decode("latin-1"))
    except Exception:  # a malformed Cookie header is the client's problem: treat it as absent
        return b""
    morsel = jar.get(COOKIE)
    return morsel.value.encode() if morsel else b""


async def _respond(send, status: int, body: bytes, headers: list[tuple[bytes, bytes]]) -> None:
    await send({"type": "http.response.start", "status": status,
                "headers": [*headers, (b"content-length", str(len(body)).encode())]})
    await send({"type": "http.response.body", "body": body})
