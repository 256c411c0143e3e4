"""Machine set-up for `forager setup`: install and start what is missing (the Docker engine, Redis) from
the distribution's packages, then make the base image (images.base). Every step checks first, so a second
run only confirms (seconds).
"""

from __future__ import annotations

import os
import shutil
import subprocess
import time
from pathlib import Path
from typing import Callable
from urllib.parse import urlparse

from agent.services import redis_command, redis_reachable
from forager.config import DEFAULT_PYTHON, Settings, base_image_tag
from forager.errors import SetupError
from images.base import RELEASES, PartState, base_image_state, docker_client, ensure_base_image, image_exists

Log = Callable[[str], None]


# ---------------------------------------------------------------- platform


def _os_release() -> dict[str, str]:
    try:
        text = Path("/etc/os-release").read_text()
    except OSError:
        return {}
    out = {}
    for line in text.splitlines():
        if "=" in line:
            k, v = line.split("=", 1)
            out[k] = v.strip().strip('"')
    return out


def is_debian_like() -> bool:
    rel = _os_release()
    ids = {rel.get("ID", "")} | set(rel.get("ID_LIKE", "").split())
    return bool(ids & {"debian", "ubuntu"})


def _can_install() -> str | None:
    """None when apt-get may be used, otherwise why not."""
    if os.geteuid() != 0:
        return "not running as root"
    if not is_debian_like() or not shutil.which("apt-get"):
        return "not a Debian/Ubuntu system with apt-get"
    return None


_apt_updated = False


def apt_install(packages: list[str], log: Log) -> None:
    why_not = _can_install()
    if why_not:
        raise SetupError(
            f"cannot install {' '.join(packages)} automatically ({why_not}). "
            f"Install them with your system's package manager (Debian/Ubuntu: `sudo apt-get install {' '.join(packages)}`), "
            "then run `forager setup` again."
        )
    global _apt_updated
    env = dict(os.environ, DEBIAN_FRONTEND="noninteractive")
    if not _apt_updated:
        log("apt-get update")
        subprocess.run(["apt-get", "update", "-qq"], check=True, env=env)
        _apt_updated = True
    log(f"apt-get install {' '.join(packages)}")
    # With recommends: this is the install verified on a fresh Debian 12 machine (docker.io + its helpers).
    subprocess.run(["apt-get", "install", "-y", "-qq", *packages], check=True, env=env)


# ---------------------------------------------------------------- docker


def docker_ping() -> bool:
    try:
        docker_client(timeout=5).ping()
        return True
    except Exception:
        return False


def ensure_docker(settings: Settings, log: Log) -> PartState:
    if docker_ping():
        return PartState(name="docker", ok=True, detail="engine running")
    if not shutil.which("dockerd"):
        apt_install(["docker.io"], log)
    if docker_ping():  # the package's service may have started it
        return PartState(name="docker", ok=True, detail="engine installed and running", changed=True)
    _start_dockerd(settings, log)
    return PartState(name="docker", ok=True, detail="engine started", changed=True)


def _start_dockerd(settings: Settings, log: Log) -> None:
    if os.geteuid() != 0:
        raise SetupError("the Docker engine is not running and only root can start it: `sudo dockerd` or `sudo systemctl start docker`")
    if _systemd_running() and shutil.which("systemctl"):
        log("systemctl start docker")
        subprocess.run(["systemctl", "start", "docker"], check=False)
    if not _wait(docker_ping, 5):
        logfile = settings.logs_dir / "dockerd.log"
        logfile.parent.mkdir(parents=True, exist_ok=True)
        log(f"starting dockerd (log: {logfile})")
        with open(logfile, "ab") as fh:
            # Its own session so it outlives this process (and the CI step that ran setup).
            subprocess.Popen(["dockerd"], stdout=fh, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, start_new_session=True)
    if not _wait(docker_ping, 60):
        raise SetupError(f"dockerd did not answer within 60 s; see {settings.logs_dir / 'dockerd.log'}")


def _systemd_running() -> bool:
    return Path("/run/systemd/system").is_dir()


def _wait(check: Callable[[], bool], seconds: float) -> bool:
    deadline = time.time() + seconds
    while True:
        if check():
            return True
        if time.time() > deadline:
            return False
        time.sleep(0.25)


# ---------------------------------------------------------------- redis


def ensure_redis(settings: Settings, log: Log) -> PartState:
    import redis

    url = settings.redis_url
    parsed = urlparse(url)
    if redis_reachable(url):
        client = redis.Redis.from_url(url)
        changed = False
        try:
            if client.config_get("appendonly").get("appendonly") != "yes":
                client.config_set("appendonly", "yes")  # queued jobs must survive a restart
                changed = True
        except redis.ResponseError:
            pass  # managed Redis without CONFIG: its persistence is the operator's business
        return PartState(name="redis", ok=True, detail=f"running at {url} (append-only)", changed=changed)
    if parsed.hostname not in ("127.0.0.1", "localhost", "::1"):
        raise SetupError(f"Redis at {url} does not answer; it is not on this machine, so start it there")
    if not shutil.which("redis-server"):
        apt_install(["redis-server"], log)
    if redis_reachable(url):
        return PartState(name="redis", ok=True, detail=f"installed, running at {url}", changed=True)
    data = settings.home / "redis"
    data.mkdir(parents=True, exist_ok=True)
    log(f"starting redis-server on port {parsed.port or 6379} (data: {data})")
    subprocess.run(redis_command(parsed.port or 6379, data, daemonize=True), check=True)
    if not _wait(lambda: redis_reachable(url), 20):
        raise SetupError(f"redis-server did not answer; see {data / 'redis.log'}")
    return PartState(name="redis", ok=True, detail=f"started at {url} (append-only, data in {data})", changed=True)


# ---------------------------------------------------------------- entry points


def parse_pythons(text: str) -> list[str]:
    """`--pythons all|3.9,3.13` -> the Pythons to make a base for, the default always among them."""
    text = text.strip()
    wanted = list(RELEASES) if text == "all" else [v.strip() for v in text.split(",") if v.strip()]
    unknown = [v for v in wanted if v not in RELEASES]
    if unknown:
        raise SetupError(f"no base can be made for Python {', '.join(unknown)}: choose among {', '.join(RELEASES)} or 'all'")
    return [DEFAULT_PYTHON, *[v for v in wanted if v != DEFAULT_PYTHON]]


def check(settings: Settings, pythons: list[str] = (DEFAULT_PYTHON,)) -> list[PartState]:
    """Report each part's state without changing anything."""
    parts = [
        PartState(name="platform", ok=_can_install() is None, detail=_can_install() or "Debian-like, root: can install what is missing"),
        PartState(name="docker_installed", ok=bool(shutil.which("dockerd")), detail=shutil.which("dockerd") or "dockerd not found (package docker.io)"),
        PartState(name="docker", ok=docker_ping(), detail="engine running" if docker_ping() else "engine not answering"),
        PartState(name="redis_installed", ok=bool(shutil.which("redis-server")), detail=shutil.which("redis-server") or "redis-server not found (package redis-server)"),
        PartState(name="redis", ok=redis_reachable(settings.redis_url), detail=settings.redis_url),
    ]
    if parts[2].ok:
        parts += [base_image_state(docker_client(), python) for python in pythons]
    else:
        parts.append(PartState(name="base_image", ok=False, detail="unknown: Docker engine not running"))
    return parts


def setup(settings: Settings, log: Log = print, pythons: list[str] = (DEFAULT_PYTHON,)) -> list[PartState]:
    """Install and start what is missing; make the base image of each Python asked for; idempotent."""
    settings.home.mkdir(parents=True, exist_ok=True)
    states = [ensure_docker(settings, log), ensure_redis(settings, log)]
    client = docker_client()
    for python in pythons:
        existed = image_exists(client, base_image_tag(python))
        tag = ensure_base_image(client, python, log=log, install=lambda packages: apt_install(packages, log))
        state = base_image_state(client, python)
        state.changed = not existed
        states.append(state)
        log(f"base image ready: {tag}")
    return states
