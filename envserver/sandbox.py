"""A sandbox: a network-less container of an image where scripts run with a deadline and files are read
and written through the Engine API's archive calls. Synthesis, validation, tracing and grading all run in
one; the env server's agent envs are the same containers with a persistent bash session on top.

    with DockerSandbox.start("forager/repo-six:abc", kind="synth") as box:
        box.write("six.py", mutated)
        result = box.run("python -m pytest -q", timeout=60)   # RunResult(exit_code, output, timed_out, ...)
        report = box.read("/tmp/junit.xml")

`Sandbox` is the seam where another placement (a Kubernetes pod, a remote Docker host) would plug in:
see docs/architecture.md for what such a backend must implement. Every sandbox is labelled
`forager.kind=<kind>` and `forager.expires=<unix time>` (the env server's reaper removes it after that),
and holds a lifeline: if the process that started it dies, even by SIGKILL, the container goes with it.
Scripts run with `bash -c` (not a login shell: Debian's /etc/profile would reset PATH and drop the venv).
"""

from __future__ import annotations

import os
import socket
import tarfile
import time
from collections.abc import Iterator
from typing import Protocol

from envserver.archive import tar_bytes
from envserver.docker_backend import Backend
from envserver.output import OUTPUT_CAP, RunResult

__all__ = ["Backend", "DockerSandbox", "RunResult", "Sandbox", "TestRun", "default_backend", "run_pytest"]

DEFAULT_ENV = {"PYTHONDONTWRITEBYTECODE": "1"}  # a stale .pyc must never mask a file written later


class Sandbox(Protocol):
    workdir: str

    def run(self, script: str, timeout: float, *, env: dict[str, str] | None = None, workdir: str | None = None,
            user: str | None = None, cap: int = OUTPUT_CAP) -> RunResult: ...
    def read(self, path: str) -> bytes: ...
    def write(self, path: str, data: bytes | str, *, mode: int = 0o644) -> None: ...
    def write_files(self, directory: str, files: dict[str, bytes]) -> None: ...
    def iter_tree(self, path: str) -> Iterator[tuple[tarfile.TarInfo, tarfile.TarFile]]: ...
    def close(self) -> None: ...


_default: Backend | None = None


def default_backend() -> Backend:
    """One Backend (one Docker connection pool) per process for the sandboxes that are not given one."""
    global _default
    if _default is None:
        _default = Backend(pool_size=16)
    return _default


class DockerSandbox:
    def __init__(self, backend: Backend, container_id: str, workdir: str, lifeline: socket.socket | None = None):
        self.backend, self.id, self.workdir = backend, container_id, workdir
        self._lifeline = lifeline
        self._clock = int(time.time())

    @classmethod
    def start(
        cls, image: str, *, kind: str, backend: Backend | None = None, workdir: str | None = None,
        env: dict[str, str] | None = None, cpus: float | None = None, memory_mb: int = 4096, pids: int = 2048,
        disk_mb: int | None = None, ttl: float = 6 * 3600, labels: dict[str, str] | None = None,
        network_mode: str = "none",
    ) -> "DockerSandbox":
        backend = backend or default_backend()
        workdir = workdir or backend.image_config(image)[0]
        all_labels = {"forager.kind": kind, "forager.expires": str(int(time.time() + ttl)),
                      "forager.owner_pid": str(os.getpid()), **(labels or {})}
        if os.environ.get("FORAGER_TEST_RUN"):
            all_labels["forager.test_run"] = os.environ["FORAGER_TEST_RUN"]
        cid, lifeline = backend.start_container(
            image, labels=all_labels, cpus=cpus, memory_mb=memory_mb, pids=pids, network_mode=network_mode,
            env={**DEFAULT_ENV, **(env or {})}, workdir=workdir, disk_mb=disk_mb, lifeline=True,
        )
        return cls(backend, cid, workdir, lifeline)

    def __enter__(self) -> "DockerSandbox":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def run(self, script: str, timeout: float, *, env: dict[str, str] | None = None, workdir: str | None = None,
            user: str | None = None, cap: int = OUTPUT_CAP) -> RunResult:
        return self.backend.run_script(self.id, script, timeout, user=user, workdir=workdir or self.workdir,
                                       env=env, cap=cap)

    def read(self, path: str) -> bytes:
        """A file's bytes (FileNotFoundError when it does not exist)."""
        return self.backend.read_file(self.id, self._abs(path))[0]

    def read_text(self, path: str) -> str | None:
        try:
            return self.read(path).decode(errors="replace")
        except FileNotFoundError:
            return None

    def write(self, path: str, data: bytes | str, *, mode: int = 0o644) -> None:
        """Replace a file's content; each write gets a newer mtime, so Python never trusts an old .pyc."""
        raw = data.encode() if isinstance(data, str) else data
        self._clock = max(self._clock + 1, int(time.time()))
        full = self._abs(path)
        directory, _, name = full.rpartition("/")
        info = tarfile.TarInfo(name)
        info.size, info.mtime, info.mode = len(raw), self._clock, mode
        self.backend.put_tar(self.id, directory or "/", tar_bytes([(info, raw)]))

    def write_files(self, directory: str, files: dict[str, bytes]) -> None:
        self.backend.write_files(self.id, self._abs(directory), files)

    def iter_tree(self, path: str) -> Iterator[tuple[tarfile.TarInfo, tarfile.TarFile]]:
        return self.backend.iter_tree(self.id, self._abs(path))

    def cpu_seconds(self) -> float:
        return self.backend.cpu_seconds(self.id)

    def close(self) -> None:
        if self._lifeline is not None:
            try:
                self._lifeline.close()
            except OSError:
                pass
            self._lifeline = None
        self.backend.remove(self.id)

    def _abs(self, path: str) -> str:
        return path if path.startswith("/") else f"{self.workdir.rstrip('/')}/{path}"


class TestRun:
    """One pytest run in a sandbox: exit code, output, the JUnit report's text ("" when none was written)."""

    __test__ = False  # not a pytest class

    def __init__(self, result: RunResult, junit: str):
        self.exit_code, self.output, self.junit = result.exit_code, result.text, junit
        self.seconds, self.timed_out = result.seconds, result.timed_out


def run_pytest(box: Sandbox, test_command: str, timeout: float, *, env: dict[str, str] | None = None,
               extra_args: str = "", report: str = "/tmp/forager-junit.xml", per_test_timeout: int | None = None) -> TestRun:
    """Run a pytest-compatible command with JUnit output and read the report back.

    The report is removed first, so a run that writes none never returns an older one, and it is read
    through the archive API, not over an exec stream (Docker can lose a short exec's output:
    docker/docker-py#2042, moby/moby#27289). `per_test_timeout` (seconds) has pytest-timeout, which the
    image must have, fail a test that runs longer (envserver.junit.timed_out lists them).
    """
    from envserver.junit import pytest_args

    result = box.run(f"rm -f {report}; {test_command} {extra_args} {pytest_args(report, per_test_timeout)}", timeout, env=env)
    try:
        junit = box.read(report).decode(errors="replace")
    except FileNotFoundError:
        junit = ""
    return TestRun(result, junit)
