"""Where Forager keeps its data, which services it talks to, and the fleet's timings: one `Settings`.

`Settings.from_env()` reads the FORAGER_* environment variables; only entry points call it (the CLI, a
worker process, a job function RQ runs). Library code takes a Settings, so a test or a second home needs
no environment variables.
"""

from __future__ import annotations

import os
import re
from pathlib import Path

from pydantic import BaseModel, Field

BASE_IMAGE_REPO = "forager/base"
DEFAULT_PYTHON = "3.11"


def _env(name: str, default: str) -> str:
    return os.environ.get(name, default)


class Settings(BaseModel):
    """Runtime settings, read from FORAGER_* environment variables."""

    home: Path = Field(description="root of all Forager data (catalog, tasks, trajectories, logs)")
    redis_url: str = "redis://127.0.0.1:6379/0"
    envserver_url: str = "http://127.0.0.1:8765"
    envserver_token: str | None = None
    queue: str = "forager"
    model_base_url: str | None = None
    model_name: str | None = None
    model_api_key: str | None = None
    model_protocol: str = "tools"  # openai policy: "tools" (native function calling) or "text" (CWM's tags)
    model_max_concurrency: int = 64  # requests in flight to one model endpoint from one worker process
    # The fleet. Infra failures are retried after these waits (s), one retry per wait.
    retry_intervals: tuple[int, ...] = (5, 15, 45, 120)
    job_monitor_interval: int = 10  # s between a worker's heartbeats (and checks on its work horse)
    heartbeat_grace: int = 30  # s a job's lease outlives the next expected heartbeat
    maintenance_interval: int = 30  # s between sweeps that requeue jobs of dead workers

    @classmethod
    def from_env(cls) -> "Settings":
        home = Path(_env("FORAGER_HOME", str(Path.home() / ".forager"))).expanduser()
        return cls(
            home=home,
            redis_url=os.environ.get("FORAGER_REDIS_URL") or local_redis_url(home),
            envserver_url=_env("FORAGER_ENVSERVER_URL", "http://127.0.0.1:8765"),
            envserver_token=os.environ.get("FORAGER_ENVSERVER_TOKEN") or _read_secret(home / ENVSERVER_TOKEN_FILE),
            queue=_env("FORAGER_QUEUE", "forager"),
            model_base_url=os.environ.get("FORAGER_MODEL_BASE_URL") or os.environ.get("OPENAI_BASE_URL") or None,
            model_name=os.environ.get("FORAGER_MODEL") or None,
            model_api_key=os.environ.get("FORAGER_MODEL_API_KEY") or os.environ.get("OPENAI_API_KEY") or None,
            model_protocol=_env("FORAGER_MODEL_PROTOCOL", "tools"),
            model_max_concurrency=int(_env("FORAGER_MODEL_MAX_CONCURRENCY", "64")),
            retry_intervals=tuple(int(x) for x in _env("FORAGER_RETRY_INTERVALS", "5,15,45,120").split(",") if x),
            job_monitor_interval=int(_env("FORAGER_JOB_MONITOR_INTERVAL", "10")),
            heartbeat_grace=int(_env("FORAGER_HEARTBEAT_GRACE", "30")),
            maintenance_interval=int(_env("FORAGER_MAINTENANCE_INTERVAL", "30")),
        )

    # Layout of the data directory: one place to change it.
    @property
    def catalog_path(self) -> Path:
        return self.home / "catalog.jsonl"

    @property
    def build_dir(self) -> Path:
        return self.home / "build"

    @property
    def mirror_dir(self) -> Path:
        return self.home / "mirrors"

    @property
    def logs_dir(self) -> Path:
        return self.home / "logs"

    @property
    def tasks_dir(self) -> Path:
        return self.home / "tasks"

    @property
    def trajectories_dir(self) -> Path:
        return self.home / "trajectories"

    @property
    def traces_dir(self) -> Path:
        return self.home / "traces"


# Secrets `forager setup` generates in $FORAGER_HOME (mode 0600), so every client on this host finds them.
REDIS_PASSWORD_FILE = "redis.password"
ENVSERVER_TOKEN_FILE = "envserver.token"


def _read_secret(path: Path) -> str | None:
    try:
        return path.read_text().strip() or None
    except OSError:
        return None


def ensure_secret(path: Path) -> str:
    """The secret in `path`, made (random, readable by this user only) when missing."""
    existing = _read_secret(path)
    if existing:
        return existing
    import secrets

    path.parent.mkdir(parents=True, exist_ok=True)
    value = secrets.token_urlsafe(32)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w") as fh:
        fh.write(value + "\n")
    return value


REDIS_DIR = "redis"  # $FORAGER_HOME/redis: the home's own Redis (config, data, log, socket)
REDIS_SOCKET = "redis.sock"


def redis_socket(home: Path) -> Path:
    return home / REDIS_DIR / REDIS_SOCKET


def legacy_redis_port(home: Path) -> int | None:
    """The TCP port of the Redis this home ran before each home had its own socket (its redis.conf says
    `port N`), else None."""
    try:
        text = (home / REDIS_DIR / "redis.conf").read_text()
    except OSError:
        return None
    m = re.search(r"^port (\d+)\s*$", text, re.M)
    return int(m.group(1)) if m and int(m.group(1)) > 0 else None


def local_redis_url(home: Path, *, legacy: bool = True) -> str:
    """The URL of this home's own Redis, with the password `forager setup` generated in the home.

    Each FORAGER_HOME on a host has its own Redis on a Unix socket inside the home ($FORAGER_HOME/redis/
    redis.sock), so a second home (a benchmark, a second project) never meets the first one's password,
    queues or data. A home whose Redis listened on TCP before keeps that URL while its redis.conf says so
    (`legacy=False`: the socket URL it moves to)."""
    password = _read_secret(home / REDIS_PASSWORD_FILE)
    auth = f":{password}@" if password else ""
    port = legacy_redis_port(home) if legacy else None
    if port:
        return f"redis://{auth}127.0.0.1:{port}/0"
    return f"unix://{auth}{redis_socket(home)}?db=0"


def masked(url: str) -> str:
    """A URL fit to print: its password replaced by ***."""
    return re.sub(r"(://[^:/@]*:)[^@/]+@", r"\1***@", url)


def base_image_tag(python: str = DEFAULT_PYTHON) -> str:
    return f"{BASE_IMAGE_REPO}:py{python}"


def safe_name(text: str, limit: int | None = None) -> str:
    """A file-name and job-id safe form of `text`: letters, digits, '.', '_' and '-'; never empty."""
    return re.sub(r"[^A-Za-z0-9._-]+", "-", text)[: limit or None] or "_"
