"""Shared fixtures: real Docker, a private real Redis, an isolated FORAGER_HOME.

Area-specific fixtures live in tests/fixtures_<area>.py and are registered below, so every
test module can use any of them (e.g. the fleet tests use the env server fixture).
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import time
from pathlib import Path

import pytest

pytest_plugins = [
    "tests.fixtures_envserver",
    "tests.fixtures_images",
    "tests.fixtures_tasks",
    "tests.fixtures_loop",
    "tests.fixtures_grading",
    "tests.fixtures_viewer",
    "tests.fixtures_mining",
    "tests.fixtures_interfaces",
]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="session")
def docker_client():
    import docker

    client = docker.from_env(timeout=300)
    client.ping()  # a test run without a daemon is a set-up failure, not a skip
    return client


@pytest.fixture(scope="session")
def base_image(docker_client) -> str:
    from images.base import ensure_base_image

    return ensure_base_image(docker_client)


@pytest.fixture(scope="session")
def redis_url(tmp_path_factory):
    """A private redis-server with a password and append-only persistence on a free loopback port."""
    assert shutil.which("redis-server"), "redis-server is not installed: run `forager setup`"
    port = free_port()
    workdir = tmp_path_factory.mktemp("redis")
    from agent.services import redis_command

    password = "test-redis-password"  # as every Forager Redis has one (`forager setup` generates it)
    proc = subprocess.Popen(redis_command(port, workdir, password), stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    url = f"redis://:{password}@127.0.0.1:{port}/0"
    import redis

    deadline = time.time() + 20
    while True:
        try:
            redis.Redis.from_url(url).ping()
            break
        except redis.ConnectionError:
            if time.time() > deadline:
                proc.kill()
                raise
            time.sleep(0.05)
    yield url
    proc.terminate()
    proc.wait(10)


@pytest.fixture
def forager_home(tmp_path, monkeypatch) -> Path:
    home = tmp_path / "forager-home"
    home.mkdir()
    monkeypatch.setenv("FORAGER_HOME", str(home))
    return home


@pytest.fixture(scope="session")
def repo_root() -> Path:
    return Path(__file__).resolve().parent.parent


def pytest_configure(config):
    # Containers made by tests carry this label so a crashed run's leftovers are findable.
    os.environ.setdefault("FORAGER_TEST_RUN", str(os.getpid()))
