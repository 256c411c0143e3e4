"""Every Docker Engine API call the server makes, blocking, in one place.

Callers on the event loop run these with `asyncio.to_thread`; only the bash session's socket is
read on the loop itself (see session.py). Docker errors become the server's typed errors here.
"""

from __future__ import annotations

import base64
import functools
import io
import json
import socket
import tarfile
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass

import docker
import docker.errors
import requests

from envserver.errors import BadRequest, DockerUnavailable, EnvGone
from envserver.models import Limits

ENV_COMMAND = ["sleep", "infinity"]  # pid 2 under docker's init; the work happens in execs


def _docker_errors(fn):
    """Connection failures and daemon errors become DockerUnavailable; NotFound is left to the caller."""

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        try:
            return fn(*args, **kwargs)
        except (docker.errors.NotFound, BadRequest, EnvGone):
            raise
        except docker.errors.APIError as exc:
            if exc.status_code is not None and exc.status_code < 500:
                raise BadRequest(f"Docker refused: {exc.explanation or exc}") from exc
            raise DockerUnavailable(f"Docker error: {exc}") from exc
        except (requests.exceptions.ConnectionError, docker.errors.DockerException, OSError) as exc:
            raise DockerUnavailable(f"Docker is unavailable: {exc}") from exc

    return wrapper


@dataclass
class FileStat:
    name: str
    size: int
    mode: int  # Go os.FileMode bits
    link_target: str

    @property
    def is_dir(self) -> bool:
        return bool(self.mode & (1 << 31))

    @property
    def is_symlink(self) -> bool:
        return bool(self.mode & (1 << 27))


class Backend:
    def __init__(self, client: docker.DockerClient | None = None, pool_size: int = 64):
        self.client = client or docker.from_env(timeout=600, max_pool_size=pool_size)
        self.api = self.client.api
        self._image_cache: dict[str, tuple[str, str | None]] = {}

    # ------------------------------------------------------------------ containers

    @_docker_errors
    def ping(self) -> None:
        self.api.ping()

    @_docker_errors
    def image_config(self, image: str) -> tuple[str, str | None]:
        """(working dir, user) of a local image; BadRequest when this host does not have it."""
        if image not in self._image_cache:
            try:
                cfg = self.api.inspect_image(image)["Config"] or {}
            except docker.errors.ImageNotFound:
                raise BadRequest(f"image {image!r} is not present on this Docker host (nothing is pulled)") from None
            self._image_cache[image] = (cfg.get("WorkingDir") or "/", cfg.get("User") or None)
        return self._image_cache[image]

    @_docker_errors
    def start_container(self, image: str, name: str, labels: dict[str, str], limits: Limits, network_mode: str) -> str:
        host_config = self.api.create_host_config(
            init=True,
            network_mode=network_mode,
            nano_cpus=int(limits.cpus * 1e9),
            mem_limit=f"{limits.memory_mb}m",
            memswap_limit=f"{limits.memory_mb}m",  # no swap: a memory limit that holds
            pids_limit=limits.pids,
            security_opt=["no-new-privileges"],
        )
        try:
            cid = self.api.create_container(
                image, entrypoint=ENV_COMMAND, command=[], name=name, labels=labels, host_config=host_config,
                network_disabled=network_mode == "none",
            )["Id"]
        except docker.errors.ImageNotFound:  # removed from the host since we looked
            self._image_cache.pop(image, None)
            raise BadRequest(f"image {image!r} is not present on this Docker host (nothing is pulled)") from None
        try:
            self.api.start(cid)
        except Exception:
            self.remove(cid)
            raise
        return cid

    @_docker_errors
    def remove(self, container_id: str) -> None:
        try:
            self.api.remove_container(container_id, force=True, v=True)
        except docker.errors.NotFound:
            pass
        except docker.errors.APIError as exc:
            if "already in progress" not in str(exc):
                raise

    @_docker_errors
    def list_labelled(self, label: str) -> list[dict]:
        """Containers (running or not) carrying `label` (key or key=value), with their labels."""
        return [
            {"id": c["Id"], "labels": c.get("Labels") or {}, "state": c.get("State")}
            for c in self.api.containers(all=True, filters={"label": label})
        ]

    @_docker_errors
    def is_running(self, container_id: str) -> bool:
        try:
            return bool(self.api.inspect_container(container_id)["State"]["Running"])
        except docker.errors.NotFound:
            return False

    def watch_deaths(self, label: str, on_death: Callable[[str], None]) -> Callable[[], None]:
        """Call on_death(container_id) from a thread whenever a labelled container dies; returns a stopper."""
        stop = threading.Event()
        holder: dict = {}

        def loop() -> None:
            while not stop.is_set():
                try:
                    stream = self.api.events(
                        decode=True, filters={"type": "container", "event": ["die", "destroy"], "label": label}
                    )
                    holder["stream"] = stream
                    for event in stream:
                        on_death(event.get("id") or event.get("Actor", {}).get("ID", ""))
                except Exception:
                    if not stop.is_set():
                        time.sleep(1)  # daemon restarting: retry; the reaper also catches the dead

        threading.Thread(target=loop, name="docker-events", daemon=True).start()

        def stopper() -> None:
            stop.set()
            stream = holder.get("stream")
            if stream is not None:
                try:
                    stream.close()
                except Exception:
                    pass

        return stopper

    # ------------------------------------------------------------------ execs

    @_docker_errors
    def attach_bash(self, container_id: str, user: str | None, env: list[str]):
        """Start bash in its own session with stdin attached; returns (exec id, socket)."""
        try:
            exec_id = self.api.exec_create(
                container_id, ["setsid", "-w", "bash", "--noprofile", "--norc"],
                stdin=True, stdout=True, stderr=True, tty=False, user=user or "", environment=env,
            )["Id"]
            sio = self.api.exec_start(exec_id, socket=True)
        except docker.errors.NotFound as exc:
            raise EnvGone(f"container {container_id[:12]} is gone") from exc
        except docker.errors.APIError as exc:
            if exc.status_code == 409:  # not running
                raise EnvGone(f"container {container_id[:12]} is not running") from exc
            raise
        # A private duplicate of the fd for asyncio; docker-py's wrapper and response are closed.
        raw: socket.socket = sio._sock
        sock = raw.dup()
        for closer in (getattr(sio, "_response", None), sio, raw):  # closes the connection, never pools it
            try:
                closer.close()
            except Exception:
                pass
        return exec_id, sock

    @_docker_errors
    def exec_exit_code(self, exec_id: str) -> int | None:
        for _ in range(40):  # the stream can close a moment before the daemon records the exit
            try:
                info = self.api.exec_inspect(exec_id)
            except docker.errors.NotFound:
                return None
            if not info.get("Running"):
                return info.get("ExitCode")
            time.sleep(0.05)
        return None

    @_docker_errors
    def run_script(
        self, container_id: str, script: str, timeout: float, user: str | None = None,
        workdir: str | None = None, env: dict[str, str] | None = None,
    ) -> tuple[int | None, bytes]:
        """Run a bash script in a separate exec (not the agent's session), killed in the container after timeout."""
        cmd = ["timeout", "-s", "KILL", str(max(1, int(timeout))), "bash", "-c", script]
        try:
            exec_id = self.api.exec_create(
                container_id, cmd, stdout=True, stderr=True, user=user or "", workdir=workdir, environment=env
            )["Id"]
            output = self.api.exec_start(exec_id)
        except docker.errors.NotFound as exc:
            raise EnvGone(f"container {container_id[:12]} is gone") from exc
        except docker.errors.APIError as exc:
            if exc.status_code == 409:
                raise EnvGone(f"container {container_id[:12]} is not running") from exc
            raise
        return self.api.exec_inspect(exec_id).get("ExitCode"), output or b""

    # ------------------------------------------------------------------ files

    @_docker_errors
    def stat(self, container_id: str, path: str) -> FileStat | None:
        res = self.api.head(self.api._url("/containers/{0}/archive", container_id), params={"path": path})
        if res.status_code == 404:
            return None
        self.api._raise_for_status(res)
        raw = json.loads(base64.b64decode(res.headers["X-Docker-Container-Path-Stat"]))
        return FileStat(raw.get("name", ""), raw.get("size", 0), raw.get("mode", 0), raw.get("linkTarget", ""))

    @_docker_errors
    def read_file(self, container_id: str, path: str) -> tuple[bytes, tarfile.TarInfo]:
        stream, _stat = self.api.get_archive(container_id, path)
        tar = tarfile.open(fileobj=io.BytesIO(b"".join(stream)))
        member = tar.next()
        data = tar.extractfile(member).read() if member is not None and member.isfile() else b""
        return data, member

    @_docker_errors
    def write_file(self, container_id: str, path: str, data: bytes, template: tarfile.TarInfo | None = None) -> None:
        """Write one file (mode/owner copied from `template` when given); its directory must exist."""
        directory, _, name = path.rpartition("/")
        info = tarfile.TarInfo(name)
        if template is not None:
            info.mode, info.uid, info.gid, info.uname, info.gname = (
                template.mode, template.uid, template.gid, template.uname, template.gname,
            )
        else:
            info.mode = 0o644
        info.size, info.mtime = len(data), time.time()
        buf = io.BytesIO()
        with tarfile.open(fileobj=buf, mode="w") as tar:
            tar.addfile(info, io.BytesIO(data))
        self.api.put_archive(container_id, directory or "/", buf.getvalue())

    @_docker_errors
    def write_files(self, container_id: str, directory: str, files: dict[str, bytes]) -> None:
        """Write several files under `directory` (which must exist), creating subdirectories they name."""
        buf = io.BytesIO()
        now = time.time()
        with tarfile.open(fileobj=buf, mode="w") as tar:
            made: set[str] = set()
            for rel, data in files.items():
                parts = rel.split("/")[:-1]
                for i in range(1, len(parts) + 1):
                    d = "/".join(parts[:i])
                    if d not in made:
                        dinfo = tarfile.TarInfo(d)
                        dinfo.type, dinfo.mode, dinfo.mtime = tarfile.DIRTYPE, 0o755, now
                        tar.addfile(dinfo)
                        made.add(d)
                info = tarfile.TarInfo(rel)
                info.size, info.mode, info.mtime = len(data), 0o644, now
                tar.addfile(info, io.BytesIO(data))
        self.api.put_archive(container_id, directory, buf.getvalue())
