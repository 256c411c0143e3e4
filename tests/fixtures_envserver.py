"""Fixtures for the envserver tests (and any test that needs an environment server).

`envserver` (session): the REAL server, started as a separate process (`python -m envserver`) on a
free loopback port, with a token (the server always requires one; `.client()` sends it), allowing images
`forager/*`, with its own FORAGER_HOME and server id.
It returns an `EnvServer`:

    envserver.url                 "http://127.0.0.1:<port>"
    envserver.client()            a new envserver.client.EnvClient for it (close it, or use `with`)
    envserver.async_client()      a new envserver.client.AsyncEnvClient
    envserver.server_id           the label value `forager.server` of its containers

Delete the envs you create (or give them a short ttl); the server removes whatever is left when the
session ends. `envtest_image` (session) is a tiny git repository image FROM the base image with
pytest installed: `/repo` holds `calc.py`, `tests/test_calc.py` (test_add, test_sub) and a few files
with tabs / CRLF / no final newline. `start_envserver(*extra_args, home=, server_id=, port=, token=,
allow=)` / `stop_envserver(server, kill=False)` start and stop extra servers (other flags, kill -9 and
restart with the same id); `containers_of(docker_client, server_id)` lists a server's containers
(Engine API dicts: Id, Labels, State).
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import pytest

ENVTEST_IMAGE = "forager/envtest:latest"

CALC = "def add(a, b):\n    return a + b\n\n\ndef sub(a, b):\n    return a - b\n"
TEST_CALC = (
    "from calc import add, sub\n\n\ndef test_add():\n    assert add(2, 3) == 5\n\n\n"
    "def test_sub():\n    assert sub(5, 3) == 2\n"
)
# Bytes an edit must leave alone: tabs, CRLF line endings, no newline at the end.
ODD_FILES = {
    "tabs.py": b"def f():\n\treturn 1\n\n\ndef g():\n\treturn 2",
    "crlf.txt": b"alpha\r\nbeta\r\ngamma\r\n",
}


@dataclass
class EnvServer:
    url: str
    port: int
    server_id: str
    home: Path
    proc: subprocess.Popen
    token: str | None = None
    args: list[str] = field(default_factory=list)

    def client(self):
        from envserver.client import EnvClient

        return EnvClient(self.url, token=self.token)

    def async_client(self):
        from envserver.client import AsyncEnvClient

        return AsyncEnvClient(self.url, token=self.token)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_envserver(
    *args: str, home: Path | None = None, server_id: str | None = None, port: int | None = None,
    token: str | None = None, allow: tuple[str, ...] = ("forager/*",), wait: float = 120,
) -> EnvServer:
    """Start `python -m envserver` and wait until /healthz answers (its startup reaping included)."""
    import httpx

    port = port or free_port()
    token = token or f"test-token-{port}-{os.getpid()}"  # the server always requires one
    home = home or Path(tempfile.mkdtemp(prefix="envserver-home-"))
    server_id = server_id or f"test-{os.getpid()}-{port}"
    cmd = [sys.executable, "-m", "envserver", "--host", "127.0.0.1", "--port", str(port), "--server-id", server_id]
    for pattern in allow:
        cmd += ["--allow", pattern]
    cmd += ["--token", token]
    cmd += list(args)
    log = open(home / f"envserver-{port}.log", "ab")
    proc = subprocess.Popen(cmd, env={**os.environ, "FORAGER_HOME": str(home)}, stdout=log, stderr=log)
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + wait
    while True:
        if proc.poll() is not None:
            raise RuntimeError(f"envserver exited with {proc.returncode}: {(home / f'envserver-{port}.log').read_text()[-3000:]}")
        try:
            if httpx.get(url + "/healthz", timeout=2).status_code == 200:
                break
        except httpx.TransportError:
            pass
        if time.monotonic() > deadline:
            proc.kill()
            raise RuntimeError(f"envserver did not answer on {url} within {wait}s")
        time.sleep(0.1)
    return EnvServer(url, port, server_id, home, proc, token, list(args))


def stop_envserver(server: EnvServer, kill: bool = False) -> None:
    """SIGTERM (clean shutdown: the server removes its containers) or SIGKILL (leaves them behind)."""
    if server.proc.poll() is None:
        server.proc.send_signal(signal.SIGKILL if kill else signal.SIGTERM)
        try:
            server.proc.wait(60)
        except subprocess.TimeoutExpired:
            server.proc.kill()
            server.proc.wait(10)


def labelled_container(backend, image: str) -> str:
    """A container of `image` started through the Backend, labelled so the reaper removes it if a test dies."""
    cid, _ = backend.start_container(image, labels={"forager.kind": "test", "forager.expires": str(int(time.time()) + 300)},
                                     cpus=1, memory_mb=512, pids=128)
    return cid


def containers_of(docker_client, server_id: str) -> list[dict]:
    """Containers labelled with this server id, as the Engine API lists them (dicts with Id, Labels, State)."""
    # The low-level list: docker-py's high-level one inspects each container and races with removals.
    return docker_client.api.containers(all=True, filters={"label": f"forager.server={server_id}"})


@pytest.fixture(scope="session")
def envserver(docker_client, tmp_path_factory):
    server = start_envserver(home=tmp_path_factory.mktemp("envserver-home"))
    yield server
    stop_envserver(server)


@pytest.fixture(scope="session")
def envtest_image(docker_client, base_image, tmp_path_factory) -> str:
    """A tiny git repo image FROM the base image, with pytest; built once per session (layer-cached after)."""
    ctx = tmp_path_factory.mktemp("envtest-image")
    files = {"calc.py": CALC.encode(), "tests/test_calc.py": TEST_CALC.encode(), **ODD_FILES}
    for rel, data in files.items():
        (ctx / "repo" / rel).parent.mkdir(parents=True, exist_ok=True)
        (ctx / "repo" / rel).write_bytes(data)
    (ctx / "Dockerfile").write_text(
        f"FROM {base_image}\n"
        "RUN python -m pip install --no-cache-dir -q 'pytest>=7'\n"
        "COPY repo/ /repo/\n"
        "WORKDIR /repo\n"
        "RUN git init -q -b main && git add -A && git commit -qm 'tiny repo'\n"
        'LABEL forager.kind="envtest"\n'
    )
    # --network host only for pip at build time; the envs themselves run with no network.
    _image, logs = docker_client.images.build(path=str(ctx), tag=ENVTEST_IMAGE, network_mode="host", rm=True)
    return ENVTEST_IMAGE

