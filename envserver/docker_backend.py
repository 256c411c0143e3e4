"""Every Docker Engine API call of Forager, blocking, in one place: the only code that starts a container.

The env server runs these in threads (`asyncio.to_thread`); sandboxes (sandbox.py) call them directly.
Docker errors become the server's typed errors here.

Containers: pid 1 is a bash loop, not docker-init. A process is immune in its own PID namespace to
signals it does not handle, so an agent's `kill -9 -1` kills its own processes but never the container;
bash as pid 1 reaps the orphans it inherits. A container started with a *lifeline* has its stdin attached
to the process that started it: when that process exits, however it dies (SIGKILL included), the kernel
closes the socket, pid 1 reads end-of-file and exits, and Docker removes the container (auto-remove).
Every container drops the Linux capabilities an env does not need, may not gain privileges, runs under
Forager's seccomp profile (seccomp.py), and gets a disk quota where the storage driver supports one (btrfs,
overlay2 on XFS with project quotas; see quota_support).
"""

from __future__ import annotations

import functools
import os
import select
import socket
import tarfile
import threading
import time
from collections.abc import Callable, Iterator

import docker
import docker.errors
import requests

from envserver import archive, docker_images, layers, seccomp
from envserver.archive import FileStat  # noqa: F401  (the stat() return type, named here for callers)
from envserver.errors import BadRequest, DockerUnavailable, EnvGone
from envserver.output import KILLED, OUTPUT_CAP, CappedOutput, RunResult

# pid 1 of an env: ignores every catchable signal, reaps orphans, outlives `kill -9 -1`.
ENV_INIT = 'trap "" TERM INT HUP QUIT USR1 USR2; while :; do sleep 86400 & wait $!; done'
# pid 1 of a sandbox with a lifeline: the same, and exits when its owner's stdin stream ends.
LIFELINE_INIT = 'trap "" TERM INT HUP QUIT USR1 USR2; while read -r _; do :; done; exit 0'
# Docker's default set minus what an env never needs (mknod, raw sockets, file capabilities, chroot,
# audit): root in an env can still install packages, chown files and kill its own processes.
KEEP_CAPS = ["CHOWN", "DAC_OVERRIDE", "FOWNER", "FSETID", "KILL", "SETGID", "SETUID", "SETPCAP", "NET_BIND_SERVICE"]
# Network "none" is a namespace with loopback only. Docker turns IPv6 off in it, yet its /etc/hosts names ::1
# localhost, so a test suite that binds "localhost" fails (every websockets test did); loopback gets IPv6 back
# where the kernel has it.
LOOPBACK_IPV6 = {"net.ipv6.conf.all.disable_ipv6": "0"} if os.path.exists("/proc/sys/net/ipv6") else None


def _docker_errors(fn):
    """Connection failures and daemon errors become DockerUnavailable; NotFound is left to the caller."""

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        try:
            return fn(*args, **kwargs)
        except (docker.errors.NotFound, BadRequest, EnvGone, FileNotFoundError):
            raise
        except docker.errors.APIError as exc:
            if exc.status_code is not None and exc.status_code < 500:
                raise BadRequest(f"Docker refused: {exc.explanation or exc}") from exc
            raise DockerUnavailable(f"Docker error: {exc}") from exc
        except (requests.exceptions.ConnectionError, docker.errors.DockerException, OSError) as exc:
            raise DockerUnavailable(f"Docker is unavailable: {exc}") from exc

    return wrapper


class Backend:
    def __init__(self, client: docker.DockerClient | None = None, pool_size: int = 64):
        self.client = client or docker.from_env(timeout=600, max_pool_size=pool_size)
        self.api = self.client.api
        self._image_cache: dict[str, tuple[str, str | None]] = {}
        self._quota: bool | None = None
        self._driver: str | None = None
        self._lock = threading.Lock()

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
    def image_id(self, image: str) -> str:
        return self.api.inspect_image(image)["Id"]

    def quota_support(self) -> bool:
        """Whether containers can get a disk quota here (btrfs, overlay2 on XFS with project quotas, zfs):
        probed once, by creating (not starting) a container with one."""
        with self._lock:
            if self._quota is None:
                self._driver = self.api.info().get("Driver")
                self._quota = self._probe_quota()
            return self._quota

    def _probe_quota(self) -> bool:
        images = [t for i in self.api.images() for t in (i.get("RepoTags") or []) if t != "<none>:<none>"]
        if not images:
            return False
        try:
            cid = self.api.create_container(images[0], command=["true"], entrypoint=[], host_config=
                                            self.api.create_host_config(storage_opt={"size": "4G"}))["Id"]
        except docker.errors.APIError:
            return False
        self.api.remove_container(cid, force=True)
        return True

    def _storage(self, image: str, disk_mb: int | None) -> dict | None:
        """The storage option that gives a container `disk_mb` to write. btrfs counts the image's own data
        in a container's quota (a qgroup limits what the subvolume references), so it gets the image's size
        on top."""
        if not disk_mb or not self.quota_support():
            return None
        if self._driver == "btrfs":
            disk_mb += int(self.api.inspect_image(image).get("Size", 0) / 2**20) + 1
        return {"size": f"{disk_mb}M"}

    @_docker_errors
    def start_container(
        self, image: str, *, name: str | None = None, labels: dict[str, str], cpus: float | None, memory_mb: int,
        pids: int, network_mode: str = "none", env: dict[str, str] | None = None, workdir: str | None = None,
        disk_mb: int | None = None, lifeline: bool = False, prepare: Callable[[str], None] | None = None,
    ) -> tuple[str, socket.socket | None]:
        """Create and start a container; returns (id, the lifeline socket or None). The one place that does.
        `prepare(id)` runs between the two (a fork's layer is put in place there)."""
        storage = self._storage(image, disk_mb)
        host_config = self.api.create_host_config(
            network_mode=network_mode,
            nano_cpus=int(cpus * 1e9) if cpus else None,
            mem_limit=f"{memory_mb}m",
            memswap_limit=f"{memory_mb}m",  # no swap: a memory limit that holds
            pids_limit=pids,
            security_opt=["no-new-privileges", seccomp.SECURITY_OPT],  # seccomp.py: why our own profile
            cap_drop=["ALL"],
            cap_add=KEEP_CAPS,
            storage_opt=storage,
            auto_remove=lifeline,
            sysctls=LOOPBACK_IPV6 if network_mode == "none" else None,
        )
        try:
            cid = self.api.create_container(
                image, entrypoint=["/bin/bash", "-c", LIFELINE_INIT if lifeline else ENV_INIT], command=[],
                name=name, labels=labels, host_config=host_config, environment=env, working_dir=workdir,
                # not network_disabled: that also leaves /etc/hosts empty, and "localhost" would not resolve
                stdin_open=lifeline, detach=not lifeline,
            )["Id"]
        except docker.errors.ImageNotFound:  # removed from the host since we looked
            self._image_cache.pop(image, None)
            raise BadRequest(f"image {image!r} is not present on this Docker host (nothing is pulled)") from None
        sock = None
        try:
            if prepare is not None:
                prepare(cid)
            if lifeline:
                sock = self.api.attach_socket(cid, params={"stdin": 1, "stream": 1})
            self.api.start(cid)
        except Exception:
            if sock is not None:
                sock.close()
            self.remove(cid)
            raise
        return cid, sock

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
    def state(self, container_id: str) -> dict | None:
        """The container's State (Running, OOMKilled, ExitCode, ...), or None when it no longer exists."""
        try:
            return self.api.inspect_container(container_id)["State"]
        except docker.errors.NotFound:
            return None

    def is_running(self, container_id: str) -> bool:
        return bool((state := self.state(container_id)) and state.get("Running"))

    commit = _docker_errors(docker_images.commit)  # forks (envserver/world.py)
    snapshot_layer = _docker_errors(layers.snapshot_layer)  # forks, where layer_snapshots is not None

    @functools.cached_property
    def layer_snapshots(self) -> layers.LayerSnapshots | None:
        """Forks by snapshot of a container's layer where this daemon allows (envserver/layers.py)."""
        return layers.LayerSnapshots.find(_docker_errors(self.api.info)())
    list_images = _docker_errors(docker_images.list_images)
    remove_image = _docker_errors(docker_images.remove_image)

    @_docker_errors
    def cpu_seconds(self, container_id: str) -> float:
        """CPU time the container has used so far (its cgroup's counter)."""
        try:
            stats = self.api.stats(container_id, stream=False)
            return stats["cpu_stats"]["cpu_usage"]["total_usage"] / 1e9
        except (docker.errors.APIError, KeyError, TypeError):
            return 0.0

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
        """Start bash with stdin attached; returns (exec id, socket).

        Docker makes an exec's process the leader of its own session and process group, so bash is one
        already: a timeout kills its group and session, and an agent's `kill -9 -1` spares it (a process is
        never sent its own kill -1). A `setsid` wrapper would be the exec's process instead, killable, and
        Docker would close the session's stream once it died."""
        try:
            exec_id = self.api.exec_create(
                container_id, ["bash", "--noprofile", "--norc"],
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
        pause, waited = 0.002, 0.0
        while waited < 2.0:  # the stream can close a moment before the daemon records the exit
            try:
                info = self.api.exec_inspect(exec_id)
            except docker.errors.NotFound:
                return None
            if not info.get("Running"):
                return info.get("ExitCode")
            time.sleep(pause)
            waited += pause
            pause = min(pause * 2, 0.05)
        return None

    @_docker_errors
    def run_script(
        self, container_id: str, script: str, timeout: float, user: str | None = None,
        workdir: str | None = None, env: dict[str, str] | None = None, cap: int = OUTPUT_CAP,
    ) -> RunResult:
        """Run a bash script in its own exec with a hard deadline and capped output.

        The output is read from the exec's stream with our own deadline, never by waiting for the stream
        to end: a process the script leaves running (a `setsid` daemon holding stdout) keeps the stream
        open, so whenever it goes quiet we ask Docker whether the exec itself has ended, and stop reading
        once it has. `timeout` kills the script's process group at the deadline; if the exec is somehow
        still alive a moment later, everything but pid 1 is killed. Output past `cap` bytes keeps its
        head and tail around a marker.
        """
        seconds = max(1, int(timeout + 0.999))
        started = time.monotonic()
        try:
            exec_id = self.api.exec_create(
                container_id, ["timeout", "-s", "KILL", str(seconds), "bash", "-c", script], stdin=False,
                stdout=True, stderr=True, user=user or "", workdir=workdir, environment=env)["Id"]
            sock = self.api.exec_start(exec_id, socket=True)
        except docker.errors.NotFound as exc:
            raise EnvGone(f"container {container_id[:12]} is gone") from exc
        except docker.errors.APIError as exc:
            if exc.status_code == 409:
                raise EnvGone(f"container {container_id[:12]} is not running") from exc
            raise
        out = CappedOutput(cap)
        killed = False
        try:
            killed = self._read_stream(container_id, exec_id, getattr(sock, "_sock", sock), out, seconds + 2.0)
        finally:
            for closer in (getattr(sock, "_response", None), sock, getattr(sock, "_sock", None)):
                try:  # the whole connection: a half-read stream must never go back to the pool
                    closer.close()
                except Exception:
                    pass
        code = self.exec_exit_code(exec_id)
        elapsed = time.monotonic() - started
        timed_out = killed or (code == KILLED and elapsed >= seconds - 0.05)
        return RunResult(None if timed_out else code, out.bytes(), timed_out, out.dropped > 0, elapsed)

    def _read_stream(self, container_id: str, exec_id: str, raw: socket.socket, out: "CappedOutput",
                     deadline: float) -> bool:
        """Read Docker's multiplexed frames until the stream ends or the exec has ended; True if we had to
        kill everything because `timeout` did not end it in time."""
        started, pending = time.monotonic(), b""
        while True:
            left = deadline - (time.monotonic() - started)
            if left <= 0:
                if not self.api.exec_inspect(exec_id).get("Running"):
                    return False
                kill = self.api.exec_create(container_id, ["kill", "-9", "-1"], user="root")["Id"]
                self.api.exec_start(kill)  # `timeout` itself was stopped or killed: all but pid 1 go
                return True
            ready, _, _ = select.select([raw], [], [], min(0.25, left))
            if ready:
                data = raw.recv(1 << 16)
                if not data:
                    return False
                pending += data
                while len(pending) >= 8 and len(pending) >= 8 + int.from_bytes(pending[4:8], "big"):
                    size = int.from_bytes(pending[4:8], "big")
                    out.add(pending[8:8 + size])
                    pending = pending[8 + size:]
            elif not self.api.exec_inspect(exec_id).get("Running"):
                return False  # the script ended; something it started still holds the stream


    # ------------------------------------------------------------------ files (archive.py does the tar work)

    @_docker_errors
    def stat(self, container_id: str, path: str) -> FileStat | None:
        return archive.stat(self, container_id, path)

    @_docker_errors
    def read_file(self, container_id: str, path: str) -> tuple[bytes, tarfile.TarInfo]:
        """A file's bytes and tar header through the archive API (FileNotFoundError when it does not exist)."""
        return archive.read_file(self, container_id, path)

    @_docker_errors
    def iter_tree(self, container_id: str, path: str) -> Iterator[tuple[tarfile.TarInfo, tarfile.TarFile]]:
        """Stream the tar of a directory (member, tar to extract it from), never holding it whole in memory."""
        yield from archive.iter_tree(self, container_id, path)

    @_docker_errors
    def put_tar(self, container_id: str, directory: str, data: bytes) -> None:
        """Extract a tar into `directory` (created first if missing)."""
        archive.put_tar(self, container_id, directory, data)

    def write_file(self, container_id: str, path: str, data: bytes, template: tarfile.TarInfo | None = None,
                   mtime: float | None = None) -> None:
        """Write one file (mode/owner copied from `template` when given); its directory is made if missing."""
        self.put_tar(container_id, path.rpartition("/")[0] or "/", archive.file_tar(path, data, template, mtime))

    def write_files(self, container_id: str, directory: str, files: dict[str, bytes], mode: int = 0o644) -> None:
        """Write several files under `directory`, creating it and the subdirectories they name."""
        self.put_tar(container_id, directory, archive.files_tar(files, mode))
