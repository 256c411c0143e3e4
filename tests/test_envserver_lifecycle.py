"""Warm pool, reaper, kill -9 and restart, clean shutdown, auth and request limits: real server processes."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time

import httpx
import pytest

from envserver.client import BadRequest, EnvGone, EnvServerError, Unauthorized, UnknownEnv
from tests.fixtures_envserver import containers_of, start_envserver, stop_envserver


def wait_for(predicate, what: str, limit: float = 60):
    deadline = time.monotonic() + limit
    while not (value := predicate()):
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.2)
    return value


def env_ids(docker_client, server_id: str) -> set[str]:
    return {c["Labels"].get("forager.env") for c in containers_of(docker_client, server_id)}


def test_pool_kill9_restart_reaper_and_clean_shutdown(docker_client, envtest_image, tmp_path):
    server_id = f"test-restart-{time.time_ns()}"
    args = ("--pool", f"{envtest_image}=2", "--reaper-interval", "1")
    first = start_envserver(*args, home=tmp_path, server_id=server_id)
    try:
        with first.client() as c:
            wait_for(lambda: c.health()["pool"][envtest_image]["ready"] == 2, "a warm pool of 2")
            warm = {ct["Id"] for ct in containers_of(docker_client, server_id)}
            env = c.create_env(envtest_image, ttl=600)
            assert env.container_id in warm  # taken from the pool, not started for this request
            assert c.shell(env.id, "pwd").output == "/repo\n"
            wait_for(lambda: c.health()["pool"][envtest_image]["ready"] == 2, "the pool to refill")
            metrics = httpx.get(first.url + "/metrics", headers={"Authorization": f"Bearer {first.token}"}).text
            assert 'forager_envs_created_total{source="pool"} 1.0' in metrics
            old = env_ids(docker_client, server_id)
            assert env.id in old and len(old) == 3
    finally:
        stop_envserver(first, kill=True)
    assert env_ids(docker_client, server_id) == old  # kill -9 left everything behind

    second = start_envserver(*args, home=tmp_path, server_id=server_id)
    try:
        # Startup reaping finishes before the server answers: none of the old run's containers remain.
        assert not (env_ids(docker_client, server_id) & old)
        with second.client() as c:
            assert c.health()["removed_at_start"] == 3
            with pytest.raises(UnknownEnv):
                c.get_env(env.id)

            # the reaper: an expired env, an orphan of ours, another server's expired container
            short = c.create_env(envtest_image, ttl=10)
            orphan = docker_client.containers.run(
                envtest_image, "sleep infinity", detach=True, network_mode="none",
                labels={"forager.server": server_id, "forager.env": "orphan", "forager.expires": str(int(time.time()) + 999)},
            )
            foreign = docker_client.containers.run(
                envtest_image, "sleep infinity", detach=True, network_mode="none",
                labels={"forager.server": f"{server_id}-dead", "forager.env": "x", "forager.expires": str(int(time.time()) - 1)},
            )
            sandbox_marker = f"sandbox-{server_id}"
            sandbox = docker_client.containers.run(  # any tool's container that says when it expires
                envtest_image, "sleep infinity", detach=True, network_mode="none",
                labels={"forager.kind": sandbox_marker, "forager.expires": str(int(time.time()) - 1)},
            )
            wait_for(lambda: "orphan" not in env_ids(docker_client, server_id), "the orphan to be reaped", 30)
            wait_for(lambda: not docker_client.api.containers(all=True, filters={"label": f"forager.kind={sandbox_marker}"}),
                     "the expired sandbox", 30)
            wait_for(lambda: not containers_of(docker_client, f"{server_id}-dead"), "the foreign expired container", 30)
            with pytest.raises(EnvGone, match="expired"):
                wait_for(lambda: c.get_env(short.id) and False, "the env to expire", 40)
            assert short.id not in env_ids(docker_client, server_id)
            for ct in (orphan, foreign, sandbox):
                with pytest.raises(Exception):
                    ct.reload()
            c.create_env(envtest_image, ttl=600)
            assert containers_of(docker_client, server_id)
    finally:
        stop_envserver(second)  # SIGTERM: a clean shutdown removes envs and warm containers
    assert second.proc.returncode in (0, -15)  # uvicorn re-raises SIGTERM after its graceful shutdown
    assert containers_of(docker_client, server_id) == []


def test_token_auth_and_request_limits(envtest_image, tmp_path):
    server = start_envserver(token="s3cret", home=tmp_path)
    try:
        assert httpx.get(server.url + "/healthz").status_code == 200  # liveness stays open
        r = httpx.get(server.url + "/envs")
        assert r.status_code == 401 and r.json()["error"] == "unauthorized"
        with server.client() as c:
            assert c.list_envs() == []
            big = httpx.post(server.url + "/envs", content=b"x" * (11 * 1024 * 1024),
                             headers={"Authorization": "Bearer s3cret", "Content-Type": "application/json"})
            assert big.status_code == 413
            chunked = httpx.post(server.url + "/envs", content=(b"x" * 1024 * 1024 for _ in range(12)),
                                 headers={"Authorization": "Bearer s3cret", "Content-Type": "application/json"})
            assert chunked.status_code == 413 and chunked.json()["error"] == "bad_request"
            with pytest.raises(BadRequest):
                c._call("POST", "/envs", {"image": envtest_image, "ttl": "soon"})
        from envserver.client import EnvClient

        with EnvClient(server.url, token="wrong") as bad, pytest.raises(Unauthorized):
            bad.list_envs()
    finally:
        stop_envserver(server)


def test_refuses_to_serve_without_a_token_even_on_loopback(tmp_path):
    env = {k: v for k, v in os.environ.items() if k != "FORAGER_ENVSERVER_TOKEN"}
    for host in ("127.0.0.1", "0.0.0.0"):
        r = subprocess.run([sys.executable, "-m", "envserver", "--host", host, "--port", "1", "--json"],
                           capture_output=True, text=True, timeout=60, env=env)
        assert r.returncode == 2 and "a token is required" in json.loads(r.stdout)["error"]
    short = subprocess.run([sys.executable, "-m", "envserver", "--host", "0.0.0.0", "--port", "1", "--token", "abc"],
                           capture_output=True, text=True, timeout=60, env=env)
    assert short.returncode == 2 and "under 16 characters" in short.stderr
    token_file = tmp_path / "token"
    token_file.write_text("x" * 40 + "\n")
    missing = subprocess.run([sys.executable, "-m", "envserver", "--token-file", str(tmp_path / "nope"), "--json"],
                             capture_output=True, text=True, timeout=60, env=env)
    assert missing.returncode == 2 and "nope" in json.loads(missing.stdout)["error"]


def test_unreachable_server_is_a_typed_error():
    from envserver.client import EnvClient, ServerUnreachable
    from tests.fixtures_envserver import free_port

    with EnvClient(f"http://127.0.0.1:{free_port()}") as c, pytest.raises(ServerUnreachable):
        c.health()
    assert issubclass(ServerUnreachable, EnvServerError)


def test_forager_serve_cli_prints_one_json_document_when_ready(docker_client, envtest_image, tmp_path):
    import json
    import os
    import signal

    from tests.fixtures_envserver import free_port

    port, server_id = free_port(), f"test-cli-{time.time_ns()}"
    proc = subprocess.Popen(
        [sys.executable, "-m", "forager.cli", "serve", "--port", str(port), "--server-id", server_id,
         "--allow", "forager/*", "--pool", f"{envtest_image}=1", "--json"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env={**os.environ, "FORAGER_HOME": str(tmp_path)},
    )
    try:
        doc = json.loads(proc.stdout.readline())
        assert doc["ok"] and doc["url"] == f"http://127.0.0.1:{port}" and doc["server_id"] == server_id
        assert doc["pool"][envtest_image]["ready"] == 1
        assert httpx.get(doc["url"] + "/healthz").json()["server_id"] == server_id
    finally:
        proc.send_signal(signal.SIGTERM)
        _out, err = proc.communicate(timeout=60)
    assert "warming pool" in err
    assert containers_of(docker_client, server_id) == []


def test_pool_size_warms_every_image_once_it_is_requested(docker_client, envtest_image, tmp_path):
    server = start_envserver("--pool-size", "1", home=tmp_path)
    try:
        with server.client() as c:
            assert c.health()["pool"] == {}  # nothing warmed before anyone asked
            first = c.create_env(envtest_image, ttl=60)
            wait_for(lambda: c.health()["pool"].get(envtest_image, {}).get("ready") == 1, "a warm container")
            warm = {ct["Id"] for ct in containers_of(docker_client, server.server_id)} - {first.container_id}
            second = c.create_env(envtest_image, ttl=60)
            assert second.container_id in warm
            metrics = httpx.get(server.url + "/metrics", headers={"Authorization": f"Bearer {server.token}"}).text
            assert 'source="cold"} 1.0' in metrics and 'source="pool"} 1.0' in metrics
    finally:
        stop_envserver(server)
