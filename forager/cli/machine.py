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
from forager.cli import quota
from forager.config import (
    DEFAULT_PYTHON, ENVSERVER_TOKEN_FILE, REDIS_PASSWORD_FILE, Settings, base_image_tag, ensure_secret,
    legacy_redis_port, local_redis_url, masked, redis_socket,
)
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
        cmd = ["dockerd"]
        try:  # envs get disk quotas only where the storage driver has them (quota.py)
            cmd += ["--data-root", str(quota.btrfs_data_root(lambda pkgs: apt_install(pkgs, log), log)),
                    "--storage-driver", quota.STORAGE_DRIVER]
        except SetupError as exc:
            log(f"no disk quotas for envs on this machine ({exc}); starting Docker on its default data root")
        log(f"starting {' '.join(cmd)} (log: {logfile})")
        with open(logfile, "ab") as fh:
            # Its own session so it outlives this process (and the CI step that ran setup).
            subprocess.Popen(cmd, stdout=fh, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, start_new_session=True)
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
    """This home's own Redis: append-only, on a Unix socket in the home, with the password in $FORAGER_HOME (made
    here) that every client uses. Each FORAGER_HOME on a host has its own, so a second home just works."""
    url, explicit = settings.redis_url, bool(os.environ.get("FORAGER_REDIS_URL"))
    if explicit and redis_reachable(url):  # the operator's Redis: its persistence and auth are theirs
        return PartState(name="redis", ok=True, detail=redis_detail(settings))
    if explicit:
        raise SetupError(f"Redis at {masked(url)} (FORAGER_REDIS_URL) does not answer: start it there")
    password = ensure_secret(settings.home / REDIS_PASSWORD_FILE)
    url = local_redis_url(settings.home)
    settings.redis_url = url
    if redis_reachable(url):
        return PartState(name="redis", ok=True, detail=redis_detail(settings))
    port = legacy_redis_port(settings.home)
    plain = f"redis://127.0.0.1:{port}/0"
    if port and redis_reachable(plain):  # this home's TCP Redis from before passwords: lock it now
        import redis

        redis.Redis.from_url(plain).config_set("requirepass", password)
        redis.Redis.from_url(url).config_set("appendonly", "yes")
        log(f"Redis at {plain} had no password: set the one in {settings.home / REDIS_PASSWORD_FILE}")
        return PartState(name="redis", ok=True, detail=redis_detail(settings) + " (password set now)", changed=True)
    # not running: start it on its socket (a TCP Redis this home had before moves there, keeping its data)
    url = settings.redis_url = local_redis_url(settings.home, legacy=False)
    if not shutil.which("redis-server"):
        apt_install(["redis-server"], log)
    data = settings.home / "redis"
    data.mkdir(parents=True, exist_ok=True)
    data.chmod(0o700)  # the socket, the data and the config are this user's alone
    log(f"starting this home's redis-server on {redis_socket(settings.home)} (data: {data})")
    subprocess.run(redis_command(0, data, password, daemonize=True, socket=redis_socket(settings.home)), check=True)
    if not _wait(lambda: redis_reachable(url), 20):
        raise SetupError(f"redis-server did not answer; see {data / 'redis.log'}")
    return PartState(name="redis", ok=True, detail=redis_detail(settings) + " (started now)", changed=True)


def redis_detail(settings: Settings) -> str:
    """Which Redis this home uses, said plainly (`forager setup --check`)."""
    url = settings.redis_url
    if os.environ.get("FORAGER_REDIS_URL"):
        return f"{masked(url)} (FORAGER_REDIS_URL)"
    if url.startswith("unix://"):
        return (f"this home's own Redis on unix socket {redis_socket(settings.home)} (password, append-only; every "
                "FORAGER_HOME on this host has its own)")
    return (f"{masked(url)}: this home's Redis from before per-home sockets (moves to {redis_socket(settings.home)} "
            "when it is next started)")


def ensure_envserver_token(settings: Settings) -> PartState:
    path = settings.home / ENVSERVER_TOKEN_FILE
    existed = path.exists()
    ensure_secret(path)
    return PartState(name="envserver_token", ok=True, detail=f"{path} (clients and `forager serve` use it)",
                     changed=not existed)


def disk_quota_state() -> PartState:
    """Whether envs get a disk quota here (informational: envs run without one where Docker cannot)."""
    from envserver.sandbox import default_backend

    info = docker_client().info()
    root, driver = info.get("DockerRootDir"), info.get("Driver")
    where = f"{root} ({driver})"
    if not default_backend().quota_support():
        return PartState(name="disk_quota", ok=True, detail=(
            f"unavailable: Docker's data root {where} cannot limit a container's disk, so an env can fill the host's "
            "disk (stop Docker, then `forager setup` starts it on a btrfs data root)"))
    counted = quota.accounting(Path(root)) if driver == "btrfs" and os.geteuid() == 0 and root else None
    return PartState(name="disk_quota", ok=True, detail=(
        f"envs get disk quotas: Docker's data root {where} limits each container"
        + ("; btrfs accounting is inconsistent, so buffered writes can pass a quota (forager/cli/quota.py)"
           if counted == "inconsistent" else "")))


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
        PartState(name="redis", ok=redis_reachable(settings.redis_url), detail=redis_detail(settings)),
    ]
    if parts[2].ok:
        parts += [base_image_state(docker_client(), python) for python in pythons]
        parts.append(disk_quota_state())
    else:
        parts.append(PartState(name="base_image", ok=False, detail="unknown: Docker engine not running"))
    return parts


def setup(settings: Settings, log: Log = print, pythons: list[str] = (DEFAULT_PYTHON,)) -> list[PartState]:
    """Install and start what is missing; make the base image of each Python asked for; idempotent."""
    settings.home.mkdir(parents=True, exist_ok=True)
    states = [ensure_docker(settings, log), ensure_redis(settings, log), ensure_envserver_token(settings)]
    client = docker_client()
    for python in pythons:
        existed = image_exists(client, base_image_tag(python))
        tag = ensure_base_image(client, python, log=log, install=lambda packages: apt_install(packages, log))
        state = base_image_state(client, python)
        state.changed = not existed
        states.append(state)
        log(f"base image ready: {tag}")
    states.append(disk_quota_state())
    return states
