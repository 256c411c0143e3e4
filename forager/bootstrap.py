"""`forager setup`: make this machine able to run Forager.

Installs and starts what is missing (Docker engine, Redis) from the distribution's packages,
and makes the base image available: pulled where a registry answers, bootstrapped from Debian
packages with debootstrap + `docker import` where none does. Every step checks first, so a
second run only confirms (seconds).
"""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
import tempfile
import time
from pathlib import Path
from typing import Callable
from urllib.parse import urlparse

from pydantic import BaseModel

from forager.config import DEFAULT_PYTHON, Settings, base_image_tag

ROOTFS_TAG = "forager/rootfs:bookworm"
HOST_CA_BUNDLES = ("/etc/ssl/certs/ca-certificates.crt", "/etc/pki/tls/certs/ca-bundle.crt")
DEBOOTSTRAP_PACKAGES = "python3,python3-venv,python3-pip,git,ca-certificates"


class SetupError(RuntimeError):
    """A step that cannot be done here; the message says what to do instead."""


class PartState(BaseModel):
    name: str
    ok: bool
    detail: str
    changed: bool = False


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


def docker_client(timeout: int = 600):
    import docker

    return docker.from_env(timeout=timeout)


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


def _redis_ping(url: str) -> bool:
    import redis

    try:
        return bool(redis.Redis.from_url(url, socket_connect_timeout=2).ping())
    except Exception:
        return False


def ensure_redis(settings: Settings, log: Log) -> PartState:
    import redis

    url = settings.redis_url
    parsed = urlparse(url)
    if _redis_ping(url):
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
    if _redis_ping(url):
        return PartState(name="redis", ok=True, detail=f"installed, running at {url}", changed=True)
    data = settings.home / "redis"
    data.mkdir(parents=True, exist_ok=True)
    log(f"starting redis-server on port {parsed.port or 6379} (data: {data})")
    subprocess.run(
        [
            "redis-server", "--daemonize", "yes", "--port", str(parsed.port or 6379), "--bind", "127.0.0.1",
            "--dir", str(data), "--appendonly", "yes", "--logfile", str(data / "redis.log"),
        ],
        check=True,
    )
    if not _wait(lambda: _redis_ping(url), 20):
        raise SetupError(f"redis-server did not answer; see {data / 'redis.log'}")
    return PartState(name="redis", ok=True, detail=f"started at {url} (append-only, data in {data})", changed=True)


# ---------------------------------------------------------------- base image


def host_ca_bundle() -> Path | None:
    for candidate in (os.environ.get("PIP_CERT"), os.environ.get("SSL_CERT_FILE"), *HOST_CA_BUNDLES):
        if candidate and Path(candidate).is_file():
            return Path(candidate)
    return None


def host_pip_conf() -> str:
    """The host's pip settings that make sense inside an image: network indexes and timeouts.

    Local `file://` indexes and find-links do not exist in the image and are left out; the CA
    bundle is replaced by the copy the image carries.
    """
    try:
        out = subprocess.run(["python3", "-m", "pip", "config", "list"], capture_output=True, text=True, timeout=30).stdout
    except (OSError, subprocess.TimeoutExpired):
        out = ""
    keep: dict[str, str] = {}
    for line in out.splitlines():
        key, _, value = line.partition("=")
        value = value.strip().strip("'\"")
        name = key.split(".")[-1]
        if name in ("index-url", "extra-index-url", "trusted-host", "timeout", "default-timeout", "retries"):
            urls = [v for v in value.split() if not v.startswith("file:")]
            if urls:
                keep["timeout" if name == "default-timeout" else name] = " ".join(urls)
    keep["cert"] = "/usr/local/share/ca-certificates/forager-host-ca.crt"
    keep.setdefault("timeout", "120")
    keep["disable-pip-version-check"] = "true"
    return "[global]\n" + "".join(f"{k} = {v}\n" for k, v in sorted(keep.items()))


BASE_DOCKERFILE = """\
FROM {root}
ENV DEBIAN_FRONTEND=noninteractive LANG=C.UTF-8 LC_ALL=C.UTF-8 PYTHONDONTWRITEBYTECODE=1
COPY host-ca.crt /usr/local/share/ca-certificates/forager-host-ca.crt
COPY pip.conf /etc/pip.conf
ENV PIP_CERT=/usr/local/share/ca-certificates/forager-host-ca.crt \\
    SSL_CERT_FILE=/usr/local/share/ca-certificates/forager-host-ca.crt \\
    REQUESTS_CA_BUNDLE=/usr/local/share/ca-certificates/forager-host-ca.crt \\
    GIT_SSL_CAINFO=/usr/local/share/ca-certificates/forager-host-ca.crt
# python:*-slim lacks git; the debootstrapped root has it already.
RUN command -v git >/dev/null || (apt-get update -qq && apt-get install -y -qq --no-install-recommends git && rm -rf /var/lib/apt/lists/*)
RUN python3 -m venv /opt/venv && /opt/venv/bin/python -m pip --version
ENV PATH=/opt/venv/bin:$PATH VIRTUAL_ENV=/opt/venv
# Debian's /etc/profile resets PATH, so login shells (bash -l) would lose the venv without this.
RUN echo 'case ":$PATH:" in *:/opt/venv/bin:*) ;; *) export PATH=/opt/venv/bin:$PATH ;; esac' > /etc/profile.d/forager-venv.sh
RUN git config --system user.email forager@localhost && git config --system user.name forager \\
 && git config --system init.defaultBranch main && git config --system advice.detachedHead false \\
 && git config --system --add safe.directory '*'
LABEL forager.kind=base forager.base.recipe={recipe}
WORKDIR /repo
"""


def ensure_base_image(client=None, python: str = DEFAULT_PYTHON, log: Log = lambda _m: None) -> str:
    """Return the base image tag, building it first if it is not there."""
    client = client or docker_client()
    tag = base_image_tag(python)
    if _image_exists(client, tag) and _labels(client, tag).get("forager.base.recipe") == base_recipe():
        return tag
    root = _root_image(client, python, log)
    _build_base(client, root, tag, log)
    return tag


def base_recipe() -> str:
    """A hash of what goes into the base image; a changed recipe rebuilds it on the next set-up."""
    ca = host_ca_bundle()
    parts = [BASE_DOCKERFILE, host_pip_conf(), ca.read_text() if ca else ""]
    return hashlib.sha256("\0".join(parts).encode()).hexdigest()[:16]


def _labels(client, tag: str) -> dict[str, str]:
    return client.images.get(tag).attrs.get("Config", {}).get("Labels") or {}


def _image_exists(client, tag: str) -> bool:
    import docker

    try:
        client.images.get(tag)
        return True
    except docker.errors.ImageNotFound:
        return False


def _root_image(client, python: str, log: Log) -> str:
    import docker

    slim = f"python:{python}-slim"
    if _image_exists(client, slim):
        return slim
    try:
        log(f"pulling {slim}")
        client.images.pull(slim)
        return slim
    except docker.errors.APIError as exc:
        log(f"no registry answers ({str(exc).splitlines()[0][:120]}); bootstrapping from Debian packages")
    if python != DEFAULT_PYTHON:
        raise SetupError(f"no registry answers and Debian bookworm ships only Python {DEFAULT_PYTHON}, not {python}")
    if _image_exists(client, ROOTFS_TAG):
        return ROOTFS_TAG
    _debootstrap_import(log)
    return ROOTFS_TAG


def _debian_mirror() -> str:
    """The host's own Debian mirror (it is the one known to answer), else the default."""
    sources = [Path("/etc/apt/sources.list"), *sorted(Path("/etc/apt/sources.list.d").glob("*"))]
    for path in sources:
        try:
            text = path.read_text()
        except OSError:
            continue
        for line in text.splitlines():
            for word in line.replace("URIs:", " ").split():
                if word.startswith("http") and word.rstrip("/").endswith("/debian"):
                    return word
    return "http://deb.debian.org/debian"


def _debootstrap_import(log: Log) -> None:
    if not shutil.which("debootstrap"):
        apt_install(["debootstrap"], log)
    with tempfile.TemporaryDirectory(prefix="forager-rootfs-") as tmp:
        rootfs = Path(tmp) / "rootfs"
        mirror = _debian_mirror()
        log(f"debootstrap bookworm from {mirror} (about a minute)")
        proc = subprocess.run(
            ["debootstrap", "--variant=minbase", f"--include={DEBOOTSTRAP_PACKAGES}", "bookworm", str(rootfs), mirror],
            capture_output=True,
            text=True,
        )
        if proc.returncode != 0:
            raise SetupError(f"debootstrap failed:\n{(proc.stdout + proc.stderr)[-3000:]}")
        # Keep the image small: package caches and docs are not needed to run tests.
        for junk in ("var/cache/apt/archives", "var/lib/apt/lists", "usr/share/doc", "usr/share/man"):
            shutil.rmtree(rootfs / junk, ignore_errors=True)
        log(f"docker import -> {ROOTFS_TAG}")
        tar = subprocess.Popen(["tar", "-C", str(rootfs), "-c", "."], stdout=subprocess.PIPE)
        imp = subprocess.run(["docker", "import", "-", ROOTFS_TAG], stdin=tar.stdout, capture_output=True, text=True)
        tar.wait()
        if imp.returncode != 0:
            raise SetupError(f"docker import failed: {imp.stderr.strip()}")


def _build_base(client, root: str, tag: str, log: Log) -> None:
    ca = host_ca_bundle()
    with tempfile.TemporaryDirectory(prefix="forager-base-") as tmp:
        ctx = Path(tmp)
        if ca:
            shutil.copyfile(ca, ctx / "host-ca.crt")
        else:  # no custom CA: the system bundle of the root image is the right one
            (ctx / "host-ca.crt").write_text("")
        (ctx / "pip.conf").write_text(host_pip_conf())
        dockerfile = BASE_DOCKERFILE.format(root=root, recipe=base_recipe())
        if not ca:
            dockerfile = dockerfile.replace("/usr/local/share/ca-certificates/forager-host-ca.crt", "/etc/ssl/certs/ca-certificates.crt")
        (ctx / "Dockerfile").write_text(dockerfile)
        log(f"building {tag} from {root}")
        try:
            client.images.build(path=str(ctx), tag=tag, network_mode="host", rm=True, forcerm=True)
        except Exception as exc:  # BuildError carries the log
            build_log = "".join(c.get("stream", "") for c in getattr(exc, "build_log", []) or [])
            raise SetupError(f"building the base image failed: {exc}\n{build_log[-3000:]}") from exc


def base_image_state(client) -> PartState:
    tag = base_image_tag()
    if _image_exists(client, tag) and _labels(client, tag).get("forager.base.recipe") != base_recipe():
        return PartState(name="base_image", ok=False, detail=f"{tag} is out of date (set-up rebuilds it)")
    if _image_exists(client, tag):
        size = client.images.get(tag).attrs.get("Size", 0)
        return PartState(name="base_image", ok=True, detail=f"{tag} ({size / 1e6:.0f} MB)")
    return PartState(name="base_image", ok=False, detail=f"{tag} missing")


# ---------------------------------------------------------------- entry points


def check(settings: Settings) -> list[PartState]:
    """Report each part's state without changing anything."""
    parts = [
        PartState(name="platform", ok=_can_install() is None, detail=_can_install() or "Debian-like, root: can install what is missing"),
        PartState(name="docker_installed", ok=bool(shutil.which("dockerd")), detail=shutil.which("dockerd") or "dockerd not found (package docker.io)"),
        PartState(name="docker", ok=docker_ping(), detail="engine running" if docker_ping() else "engine not answering"),
        PartState(name="redis_installed", ok=bool(shutil.which("redis-server")), detail=shutil.which("redis-server") or "redis-server not found (package redis-server)"),
        PartState(name="redis", ok=_redis_ping(settings.redis_url), detail=settings.redis_url),
    ]
    if parts[2].ok:
        parts.append(base_image_state(docker_client()))
    else:
        parts.append(PartState(name="base_image", ok=False, detail="unknown: Docker engine not running"))
    return parts


def setup(settings: Settings, log: Log = print) -> list[PartState]:
    """Install and start what is missing; idempotent."""
    settings.home.mkdir(parents=True, exist_ok=True)
    states = [ensure_docker(settings, log), ensure_redis(settings, log)]
    client = docker_client()
    existed = _image_exists(client, base_image_tag())
    tag = ensure_base_image(client, log=log)
    state = base_image_state(client)
    state.changed = not existed
    states.append(state)
    log(f"base image ready: {tag}")
    return states
