"""One long-lived, network-less container of a repo image, for running its tests many times cheaply.

Synthesis validates hundreds of mutations per repo; starting a container per candidate would cost
more than the tests. Files go in and out through the Engine API's archive calls (no docker CLI).
"""

from __future__ import annotations

import io
import os
import tarfile
import time
from dataclasses import dataclass

import docker

from envserver.junit import pytest_args

JUNIT_PATH = "/tmp/forager-junit.xml"
TIMEOUT_EXIT = 137  # `timeout -s KILL` kills the whole process group; the exit status is 128 + 9


@dataclass
class TestRun:
    exit_code: int
    output: str
    junit: str  # the JUnit XML text ("" when pytest never wrote it, e.g. killed by the timeout)
    seconds: float

    @property
    def timed_out(self) -> bool:
        return self.exit_code == TIMEOUT_EXIT


class RepoContainer:
    """`with RepoContainer(client, image) as box:` runs tests and swaps files inside one container."""

    def __init__(self, client: docker.DockerClient, image: str, workdir: str = "/repo", label: str = "synth"):
        self.client, self.image, self.workdir = client, image, workdir
        self.container = client.containers.run(
            image,
            command=["sleep", "infinity"],
            detach=True,
            network_mode="none",
            init=True,
            mem_limit="4g",
            pids_limit=2048,
            working_dir=workdir,
            labels={"forager.kind": label, "forager.expires": str(int(time.time()) + 6 * 3600),
                    "forager.test_run": os.environ.get("FORAGER_TEST_RUN", "")},
            environment={"PYTHONDONTWRITEBYTECODE": "1"},  # a stale .pyc must never mask a restored file
        )
        self._clock = int(time.time())

    def __enter__(self) -> "RepoContainer":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def cpu_seconds(self) -> float:
        """CPU time the container has used so far (its cgroup's counter), for per-CPU-minute figures."""
        try:
            stats = self.container.stats(stream=False)
            return stats["cpu_stats"]["cpu_usage"]["total_usage"] / 1e9
        except (docker.errors.APIError, KeyError, TypeError):
            return 0.0

    def close(self) -> None:
        try:
            self.container.remove(force=True)
        except docker.errors.NotFound:
            pass

    def sh(self, command: str, timeout: float | None = None, env: dict[str, str] | None = None) -> tuple[int, str]:
        """Run `bash -c command` in the workdir; with a timeout, the process group is killed when it expires."""
        cmd = ["bash", "-c", command]  # non-login: /etc/profile would reset the image PATH (venv)
        if timeout:
            cmd = ["timeout", "-s", "KILL", str(max(1, int(timeout))), *cmd]
        res = self.container.exec_run(cmd, workdir=self.workdir, environment=env or {}, demux=False)
        return res.exit_code, (res.output or b"").decode(errors="replace")

    def output(self, command: str) -> tuple[int, str]:
        """(exit code, stdout) of a command whose output must arrive whole: it goes through a file and the
        archive API, because Docker can drop a short-lived exec's stream (see run_tests)."""
        out = "/tmp/forager-output.txt"
        code, _ = self.sh(f"({command}) > {out}")
        return code, self.read_text(out) or ""

    def read_text(self, path: str) -> str | None:
        """A file's text through the archive API, or None when it does not exist."""
        try:
            return self.read_bytes(path).decode(errors="replace")
        except docker.errors.NotFound:
            return None

    def read_bytes(self, path: str) -> bytes:
        stream, _ = self.container.get_archive(self._abs(path))
        with tarfile.open(fileobj=io.BytesIO(b"".join(stream))) as tar:
            member = tar.next()
            assert member is not None
            data = tar.extractfile(member)
            return data.read() if data else b""

    def write(self, path: str, data: str | bytes) -> None:
        """Replace a file's content; each write gets a new mtime so Python never trusts an old .pyc."""
        raw = data.encode() if isinstance(data, str) else data
        full = self._abs(path)
        self._clock += 1
        info = tarfile.TarInfo(os.path.basename(full))
        info.size, info.mtime, info.mode = len(raw), self._clock, 0o644
        buf = io.BytesIO()
        with tarfile.open(fileobj=buf, mode="w") as tar:
            tar.addfile(info, io.BytesIO(raw))
        self.container.put_archive(os.path.dirname(full), buf.getvalue())

    def run_tests(self, test_command: str, timeout: float, env: dict[str, str] | None = None,
                  extra_args: str = "") -> TestRun:
        xml = JUNIT_PATH  # one run at a time per container; removed first so a stale report is never read
        started = time.monotonic()
        code, out = self.sh(f"rm -f {xml}; {test_command} {extra_args} {pytest_args(xml)}", timeout=timeout, env=env)
        seconds = time.monotonic() - started
        # through the archive API, not `cat` over an exec stream: Docker sometimes loses the output of a
        # short-lived exec (docker/docker-py#2042, moby/moby#27289), the likely cause of 3 reports in
        # about 800 parallel validation runs that came back empty or garbled and never reproduced
        return TestRun(code, out, self.read_text(xml) or "", seconds)

    def _abs(self, path: str) -> str:
        return path if path.startswith("/") else f"{self.workdir.rstrip('/')}/{path}"
