"""The base image layer: `forager/base:pyX.Y`, an OS with Python, git, a venv at /opt/venv and the host's CA
bundle and pip index settings (never its credentials).

Made from `python:X.Y-slim` where a registry answers, else bootstrapped from the Debian release that ships
that Python as its python3 (RELEASES: bullseye 3.9, bookworm 3.11, trixie 3.13; debootstrap into a folder,
then `docker import` as forager/rootfs:<release>). The recipe's hash is a label: a changed recipe (or a new
host CA bundle) rebuilds the base on the next set-up. The two layers above it are in layers.py.

Builds run on Docker's default bridge network, never the host's: a repository's build step must not reach
services on the host's loopback (Redis, the env server). The bridge reaches the package index.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
import tempfile
from collections.abc import Callable
from pathlib import Path

from urllib.parse import urlsplit, urlunsplit

from pydantic import BaseModel

from forager.config import DEFAULT_PYTHON, base_image_tag
from forager.errors import SetupError

# The Debian release whose python3 is each Python we can make a base for, with the release's rustc (the
# toolchain layer installs Debian's cargo only where it is new enough for the crate: images/toolchain.py).
RELEASES = {"3.9": "bullseye", "3.11": "bookworm", "3.13": "trixie"}
DEBIAN_RUSTC = {"bullseye": "1.48", "bookworm": "1.63", "trixie": "1.85"}
BUILD_NETWORK = "bridge"  # never "host": see the module docstring
HOST_CA_BUNDLES = ("/etc/ssl/certs/ca-certificates.crt", "/etc/pki/tls/certs/ca-bundle.crt")
DEBOOTSTRAP_PACKAGES = "python3,python3-venv,python3-pip,git,ca-certificates"

Log = Callable[[str], None]
Install = Callable[[list[str]], None]  # installs host packages (the CLI's apt-get), for debootstrap


class PartState(BaseModel):
    name: str
    ok: bool
    detail: str
    changed: bool = False


def docker_client(timeout: int = 600):
    import docker

    return docker.from_env(timeout=timeout)


# ---------------------------------------------------------------- base image


def host_ca_bundle() -> Path | None:
    for candidate in (os.environ.get("PIP_CERT"), os.environ.get("SSL_CERT_FILE"), *HOST_CA_BUNDLES):
        if candidate and Path(candidate).is_file():
            return Path(candidate)
    return None


def rootfs_tag(release: str) -> str:
    return f"forager/rootfs:{release}"


def strip_userinfo(url: str) -> str:
    """`https://user:pw@host/simple` -> `https://host/simple`: credentials never go into an image."""
    parts = urlsplit(url)
    if "@" not in parts.netloc:
        return url
    return urlunsplit(parts._replace(netloc=parts.netloc.rsplit("@", 1)[1]))


def host_pip_conf() -> str:
    """The host's pip settings that make sense inside an image: network indexes and timeouts.

    Local `file://` indexes and find-links do not exist in the image and are left out; the CA
    bundle is replaced by the copy the image carries. Credentials in index URLs (user:password@) are
    stripped: docker-py drives the classic builder, which has no build secrets, and anything passed as a
    build argument or file stays in the image's history. An index that needs them must be given to the
    image another way (a proxy on the bridge network that adds them, for instance).
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
            urls = [strip_userinfo(v) if "://" in v else v for v in value.split() if not v.startswith("file:")]
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


def ensure_base_image(client=None, python: str = DEFAULT_PYTHON, log: Log = lambda _m: None,
                      install: Install | None = None) -> str:
    """Return the base image tag, building it first if it is not there (`install` gets host packages
    such as debootstrap; without it a missing tool is a SetupError that names the package)."""
    client = client or docker_client()
    tag = base_image_tag(python)
    if image_exists(client, tag) and _labels(client, tag).get("forager.base.recipe") == base_recipe():
        return tag
    root = _root_image(client, python, log, install)
    _build_base(client, root, tag, log)
    return tag


def base_recipe() -> str:
    """A hash of what goes into the base image; a changed recipe rebuilds it on the next set-up."""
    ca = host_ca_bundle()
    parts = [BASE_DOCKERFILE, host_pip_conf(), ca.read_text() if ca else ""]
    return hashlib.sha256("\0".join(parts).encode()).hexdigest()[:16]


def _labels(client, tag: str) -> dict[str, str]:
    return client.images.get(tag).attrs.get("Config", {}).get("Labels") or {}


def image_exists(client, tag: str) -> bool:
    import docker

    try:
        client.images.get(tag)
        return True
    except docker.errors.ImageNotFound:
        return False


def _root_image(client, python: str, log: Log, install: Install | None) -> str:
    import docker

    slim = f"python:{python}-slim"
    if image_exists(client, slim):
        return slim
    release = RELEASES.get(python)
    if release and image_exists(client, rootfs_tag(release)):
        return rootfs_tag(release)  # made before: no registry round trip
    try:
        log(f"pulling {slim}")
        client.images.pull(slim)
        return slim
    except docker.errors.APIError as exc:
        log(f"no registry answers ({str(exc).splitlines()[0][:120]}); bootstrapping from Debian packages")
    if not release:
        shipped = ", ".join(f"{v} ({r})" for v, r in RELEASES.items())
        raise SetupError(f"no registry answers and no Debian release we bootstrap ships Python {python} (these do: {shipped})")
    _debootstrap_import(release, log, install)
    return rootfs_tag(release)


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


def _debootstrap_import(release: str, log: Log, install: Install | None) -> None:
    if not shutil.which("debootstrap"):
        if install is None:
            raise SetupError("debootstrap is needed to make the base image here (no registry answers): install it")
        install(["debootstrap"])
    with tempfile.TemporaryDirectory(prefix="forager-rootfs-") as tmp:
        rootfs = Path(tmp) / "rootfs"
        mirror = _debian_mirror()
        log(f"debootstrap {release} from {mirror} (a minute or two)")
        proc = subprocess.run(
            ["debootstrap", "--variant=minbase", f"--include={DEBOOTSTRAP_PACKAGES}", release, str(rootfs), mirror],
            capture_output=True,
            text=True,
        )
        if proc.returncode != 0:
            raise SetupError(f"debootstrap of {release} failed:\n{(proc.stdout + proc.stderr)[-3000:]}")
        # Keep the image small: package caches and docs are not needed to run tests.
        for junk in ("var/cache/apt/archives", "var/lib/apt/lists", "usr/share/doc", "usr/share/man"):
            shutil.rmtree(rootfs / junk, ignore_errors=True)
        log(f"docker import -> {rootfs_tag(release)}")
        tar = subprocess.Popen(["tar", "-C", str(rootfs), "-c", "."], stdout=subprocess.PIPE)
        imp = subprocess.run(["docker", "import", "-", rootfs_tag(release)], stdin=tar.stdout, capture_output=True, text=True)
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
            client.images.build(path=str(ctx), tag=tag, network_mode=BUILD_NETWORK, rm=True, forcerm=True)
        except Exception as exc:  # BuildError carries the log
            build_log = "".join(c.get("stream", "") for c in getattr(exc, "build_log", []) or [])
            raise SetupError(f"building the base image failed: {exc}\n{build_log[-3000:]}") from exc


def tools_image_tag(python: str, uv_version: str) -> str:
    return f"forager/tools:py{python}-uv{uv_version}"


TOOLS_DOCKERFILE = """\
FROM {base}
COPY uv /usr/local/bin/uv
RUN uv --version
LABEL forager.kind=tools forager.build=1
"""


def ensure_tools_image(client, python: str, uv_version: str, uv_binary: Path, log: Log = lambda _m: None) -> str:
    """The base plus the host's uv binary: what dependency layers build FROM.

    One image per (Python, uv version), made once: uv is not downloaded by every dependency layer (a 20 MB
    wheel, and one more thing a flaky network can break), and the base image's recipe stays as it was.
    """
    tag = tools_image_tag(python, uv_version)
    if image_exists(client, tag):
        return tag
    with tempfile.TemporaryDirectory(prefix="forager-tools-") as tmp:
        ctx = Path(tmp)
        shutil.copyfile(uv_binary, ctx / "uv")
        (ctx / "uv").chmod(0o755)
        (ctx / "Dockerfile").write_text(TOOLS_DOCKERFILE.format(base=base_image_tag(python)))
        log(f"building {tag} (uv {uv_version} over {base_image_tag(python)})")
        try:
            client.images.build(path=str(ctx), tag=tag, network_mode="none", rm=True, forcerm=True)
        except Exception as exc:
            raise SetupError(f"building {tag} failed: {exc}") from exc
    return tag


def base_image_state(client, python: str = DEFAULT_PYTHON) -> PartState:
    tag = base_image_tag(python)
    name = "base_image" if python == DEFAULT_PYTHON else f"base_image_py{python}"
    if image_exists(client, tag) and _labels(client, tag).get("forager.base.recipe") != base_recipe():
        return PartState(name=name, ok=False, detail=f"{tag} is out of date (set-up rebuilds it)")
    if image_exists(client, tag):
        size = client.images.get(tag).attrs.get("Size", 0)
        return PartState(name=name, ok=True, detail=f"{tag} ({size / 1e6:.0f} MB)")
    return PartState(name=name, ok=False, detail=f"{tag} missing")


def python_release(python: str) -> str | None:
    """The Debian release whose python3 is `python` (None: we cannot bootstrap it)."""
    return RELEASES.get(python)
