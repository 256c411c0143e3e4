"""Start what the fleet needs when nothing is running: Redis, an env server, a worker pool.

Used by `forager run` on one machine: anything already configured and reachable is used as is;
anything missing is started here as a subprocess (loopback only) and stopped at the end.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from contextlib import ExitStack
from pathlib import Path
from urllib.parse import urlparse

from forager.config import ENVSERVER_TOKEN_FILE, Settings, ensure_secret, local_redis_url, masked, redis_socket
from forager.errors import ServiceError

LOOPBACK = {"127.0.0.1", "localhost", "::1"}

__all__ = ["LocalServices", "ServiceError", "redis_command", "redis_reachable", "workers_on"]


def redis_command(port: int, data_dir: Path, password: str | None, *, daemonize: bool = False,
                  socket: Path | None = None) -> list[str]:
    """How Forager runs redis-server: append-only persistence, data in `data_dir`, a password (in a config file
    only this user can read, never on a command line `ps` shows), and either a Unix socket only this user can
    open (`socket`: a home's own Redis, no TCP at all) or a TCP port on loopback."""
    lines = [f'dir "{data_dir}"', "appendonly yes", 'save ""', f'pidfile "{data_dir / "redis.pid"}"']
    if socket is not None:
        if len(str(socket)) > 100:  # sun_path holds 108 bytes
            raise ServiceError(f"the Redis socket path {socket} is too long for a Unix socket: use a shorter "
                               "FORAGER_HOME, or set FORAGER_REDIS_URL")
        lines += ["port 0", f'unixsocket "{socket}"', "unixsocketperm 700"]
    else:
        lines += [f"port {port}", "bind 127.0.0.1"]
    if password:
        lines.append(f"requirepass {password}")
    if daemonize:
        lines += ["daemonize yes", f'logfile "{data_dir / "redis.log"}"']
    conf = data_dir / "redis.conf"
    fd = os.open(conf, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as fh:
        fh.write("\n".join(lines) + "\n")
    return ["redis-server", str(conf)]


def redis_password(url: str) -> str | None:
    return urlparse(url).password


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def port_free(port: int) -> bool:
    with socket.socket() as s:
        try:
            s.bind(("127.0.0.1", port))
            return True
        except OSError:
            return False


def redis_reachable(url: str) -> bool:
    import redis

    try:
        return bool(redis.Redis.from_url(url, socket_connect_timeout=2).ping())
    except redis.RedisError:
        return False


def envserver_reachable(url: str, token: str | None = None) -> bool:
    """An env server answers at `url` and takes `token` (an authenticated call, not just /healthz)."""
    import httpx

    try:
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        return httpx.get(url.rstrip("/") + "/tools", timeout=3, headers=headers).status_code == 200
    except httpx.HTTPError:
        return False


def workers_on(redis_url: str, queue: str, fresh: float = 90.0) -> int:
    """Workers listening on `queue` that sent a heartbeat in the last `fresh` seconds (a killed
    worker's registration lingers in Redis for minutes)."""
    from datetime import datetime, timezone

    from rq import Worker

    from agent.queue import connect, get_queue

    now = datetime.now(timezone.utc)
    alive = 0
    for w in Worker.all(queue=get_queue(connect(redis_url), queue)):
        beat = w.last_heartbeat
        if beat is not None and beat.tzinfo is None:
            beat = beat.replace(tzinfo=timezone.utc)
        if beat is not None and (now - beat).total_seconds() <= fresh:
            alive += 1
    return alive


def _wait(check, proc: subprocess.Popen, what: str, log: Path, deadline: float = 120) -> None:
    end = time.monotonic() + deadline
    while not check():
        if proc.poll() is not None:
            tail = log.read_text(errors="replace")[-2000:] if log.exists() else ""
            raise ServiceError(f"{what} exited with {proc.returncode}; log {log}:\n{tail}")
        if time.monotonic() > end:
            proc.kill()
            raise ServiceError(f"{what} did not come up within {deadline:.0f}s; log {log}")
        time.sleep(0.1)


def _stop(proc: subprocess.Popen, grace: float) -> None:
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(grace)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(10)


class LocalServices:
    """Context manager: make Redis, the env server and workers available; stop what it started.

    `settings` is updated in place with the URLs actually used, and `env` is the environment to
    give any subprocess that must use them.
    """

    def __init__(self, settings: Settings, workers: int, log=print):
        self.settings, self.workers, self.log = settings, workers, log
        self.started: list[str] = []
        self.env = dict(os.environ)
        self._stack = ExitStack()
        self.pool: subprocess.Popen | None = None

    def _spawn(self, name: str, cmd: list[str], grace: float) -> tuple[subprocess.Popen, Path]:
        log_path = self.settings.logs_dir / "services" / f"{name}.log"
        log_path.parent.mkdir(parents=True, exist_ok=True)
        out = open(log_path, "ab")
        proc = subprocess.Popen(cmd, env=self.env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
        out.close()
        self._stack.callback(_stop, proc, grace)
        self.started.append(name)
        return proc, log_path

    def __enter__(self) -> "LocalServices":
        try:
            self._redis()  # the rest on demand: ensure_workers()
        except BaseException:
            self._stack.close()
            raise
        return self

    def ensure_workers(self) -> None:
        """An env server and workers, started only when there is work for them."""
        try:
            self._envserver()
            self._workers()
        except BaseException:
            self._stack.close()
            raise

    def ensure_envserver(self) -> None:
        """An env server only (no workers): what certifying mined tasks needs."""
        try:
            self._envserver()
        except BaseException:
            self._stack.close()
            raise

    def __exit__(self, *exc) -> None:
        self._stack.close()

    def _redis(self) -> None:
        url = self.settings.redis_url
        if redis_reachable(url):
            return
        parsed = urlparse(url)
        exe = shutil.which("redis-server")
        home_url = local_redis_url(self.settings.home, legacy=False)
        if parsed.scheme == "unix" or url == local_redis_url(self.settings.home):
            url = home_url  # this home's own Redis (one that ran on TCP before moves to its socket)
        elif parsed.hostname not in LOOPBACK or not exe:
            raise ServiceError(f"Redis at {masked(url)} is unreachable (start it with `forager setup`, or set FORAGER_REDIS_URL)")
        if not exe:
            raise ServiceError("redis-server is not installed: run `forager setup`")
        data = self.settings.home / "redis"
        data.mkdir(parents=True, exist_ok=True)
        if url == home_url:
            cmd = redis_command(0, data, redis_password(url), socket=redis_socket(self.settings.home))
        else:
            port = parsed.port or 6379
            if not port_free(port):
                raise ServiceError(f"Redis at {masked(url)} does not answer, and its port is taken by something else")
            cmd = redis_command(port, data, redis_password(url))
        proc, log = self._spawn("redis", cmd, grace=30)
        _wait(lambda: redis_reachable(url), proc, "redis-server", log)
        self.settings.redis_url = self.env["FORAGER_REDIS_URL"] = url
        self.log(f"started redis-server at {masked(url)} (append-only, data in {data})")

    def _envserver(self) -> None:
        url = self.settings.envserver_url
        if envserver_reachable(url, self.settings.envserver_token):
            return
        parsed = urlparse(url)
        if parsed.hostname not in LOOPBACK:
            raise ServiceError(f"the env server at {url} is unreachable (FORAGER_ENVSERVER_URL)")
        port = parsed.port or 8765
        if not port_free(port):
            port = _free_port()
        url = f"http://127.0.0.1:{port}"
        if not self.settings.envserver_token:  # the server always requires one: make this host's
            self.settings.envserver_token = ensure_secret(self.settings.home / ENVSERVER_TOKEN_FILE)
        self.env["FORAGER_ENVSERVER_TOKEN"] = self.settings.envserver_token  # passed by env, not on the command line
        cmd = [sys.executable, "-m", "envserver", "--host", "127.0.0.1", "--port", str(port)]
        # Allowed images: the catalog's ok images (the server's default) and nothing else.
        proc, log = self._spawn("envserver", cmd, grace=120)  # it removes its containers on SIGTERM
        _wait(lambda: envserver_reachable(url, self.settings.envserver_token), proc, "the env server", log)
        self.settings.envserver_url = self.env["FORAGER_ENVSERVER_URL"] = url
        self.log(f"started the env server on {url}")

    def _workers(self) -> None:
        if self.workers == 0 or workers_on(self.settings.redis_url, self.settings.queue):
            return
        self.env["FORAGER_REDIS_URL"] = self.settings.redis_url
        self.env["FORAGER_QUEUE"] = self.settings.queue
        # One async worker process with `workers` episodes in flight (agent/async_worker.py).
        cmd = [sys.executable, "-m", "forager.cli", "worker", "--concurrency", str(self.workers)]
        # Warm shutdown: workers finish the episode they are in (the collection is done by then).
        self.pool, log = self._spawn("workers", cmd, grace=120)
        _wait(lambda: workers_on(self.settings.redis_url, self.settings.queue) >= 1, self.pool, "the worker pool", log)
        self.log(f"started a worker with {self.workers} episodes in flight on queue {self.settings.queue}")

    def pool_alive(self) -> bool:
        return self.pool is None or self.pool.poll() is None
