"""Run the tracer inside a repository image and bring its traces home as validated JSONL.

One throw-away container per run: network none, resource limits, the tracer copied in through the
Engine API's archive calls, the command killed (whole process group) at its timeout. The tracer
flushes each trace as it finishes, so a run cut short still yields every trace completed before.
"""

from __future__ import annotations

import io
import json
import os
import re
import shlex
import tarfile
import time
from collections.abc import Iterator
from pathlib import Path

import docker

from forager.models import ImageRecord
from forager.tasks.sandbox import RepoContainer
from forager.trace import tracer as tracer_module
from forager.trace.models import Trace, TraceRunSummary, trace_id

TRACER_DIR = "/tmp/forager_trace"
OUT_DIR = f"{TRACER_DIR}/out"
SNIPPET_DIR = "/tmp/forager_snippet"
LOG_FILE = f"{TRACER_DIR}/run.log"
TIMEOUT_EXIT = 137  # timeout -s KILL: 128 + 9
DEFAULT_TEST_COMMAND = "python -m pytest -q"


def traces_path(traces_dir: str | Path, image: str) -> Path:
    """Where an image's test traces live; its existence is what makes a collection resumable."""
    return Path(traces_dir) / (re.sub(r"[^A-Za-z0-9_.-]+", "_", image).strip("_") + ".jsonl")


def _tar(files: dict[str, bytes]) -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as tar:
        for name, data in files.items():
            info = tarfile.TarInfo(name)
            info.size, info.mode, info.mtime = len(data), 0o644, int(time.time())
            tar.addfile(info, io.BytesIO(data))
    return buf.getvalue()


def _env_args(limits: dict) -> dict[str, str]:
    return {f"FORAGER_TRACE_{k.upper()}": str(v) for k, v in limits.items() if v is not None}


class _Box:
    """A network-less container of `image`, removed on exit (the synthesis sandbox, labelled as a trace)."""

    def __init__(self, client: docker.DockerClient, image: str, workdir: str):
        self.workdir = workdir
        self._sandbox = RepoContainer(client, image, workdir, label="trace")
        self.container = self._sandbox.container

    def __enter__(self) -> "_Box":
        return self

    def __exit__(self, *exc) -> None:
        self._sandbox.close()

    def put(self, directory: str, files: dict[str, bytes]) -> None:
        self.container.exec_run(["mkdir", "-p", directory])
        self.container.put_archive(directory, _tar(files))

    def sh(self, command: str, timeout: float, env: dict[str, str]) -> tuple[int, str]:
        """Run `command` detached and poll for its end: a traced suite can run for longer than any
        HTTP read timeout the Docker client has. Returns (exit code, the output's last 20 kB)."""
        # non-login bash: a login shell's /etc/profile would reset the image's PATH (the venv);
        # timeout kills its whole process group (pytest and its children) when time is up
        script = f"( {command} ) > {LOG_FILE} 2>&1"
        cmd = ["timeout", "-s", "KILL", str(max(1, int(timeout))), "bash", "-c", script]
        api = self.container.client.api
        exec_id = api.exec_create(self.container.id, cmd, workdir=self.workdir, environment=env)["Id"]
        api.exec_start(exec_id, detach=True)
        while (info := api.exec_inspect(exec_id))["Running"]:
            time.sleep(0.5)
        tail = self.container.exec_run(["tail", "-c", "20000", LOG_FILE]).output or b""
        return info["ExitCode"], tail.decode(errors="replace")

    def jsonl_lines(self, directory: str) -> Iterator[str]:
        try:
            stream, _ = self.container.get_archive(directory)
        except docker.errors.NotFound:
            return
        with tarfile.open(fileobj=io.BytesIO(b"".join(stream))) as tar:
            for member in tar:
                if member.isfile() and member.name.endswith(".jsonl"):
                    data = tar.extractfile(member)
                    if data is not None:
                        yield from data.read().decode("utf-8", errors="replace").splitlines()


def _prepare(box: _Box) -> None:
    box.container.exec_run(["mkdir", "-p", OUT_DIR])
    box.put(TRACER_DIR, {"forager_tracer.py": Path(tracer_module.__file__).read_bytes()})


def _with_tracer_path(command: str) -> str:
    return f'export PYTHONPATH={TRACER_DIR}${{PYTHONPATH:+:$PYTHONPATH}}; {command}'


def _parse(lines: Iterator[str], origin: dict) -> tuple[list[Trace], int]:
    """Raw tracer lines -> Trace records; a line cut by a kill mid-write is counted, not fatal."""
    traces: list[Trace] = []
    bad = 0
    for line in lines:
        if not line.strip():
            continue
        try:
            raw = json.loads(line)
            key = (origin["image"], raw.get("function"), raw.get("test"), raw.get("call"), raw.get("call_index"))
            traces.append(Trace.model_validate({**raw, **origin, "id": trace_id(*key)}))
        except ValueError:
            bad += 1
    return traces, bad


def write_jsonl_atomic(path: Path, traces: list[Trace]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        with open(tmp, "w", encoding="utf-8") as fh:
            for trace in traces:
                fh.write(trace.model_dump_json() + "\n")
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def collect_test_traces(
    client: docker.DockerClient,
    record: ImageRecord,
    out: str | Path,
    *,
    max_calls: int = 3,
    max_events: int | None = None,
    max_bytes: int | None = None,
    max_repr: int | None = None,
    timeout: float | None = None,
    follow_libraries: bool = False,
    safe_repr: bool = True,
) -> TraceRunSummary:
    """Run the image's test suite with the tracer plugin; write the traces to `out` (atomically)."""
    if record.status != "ok" or not record.tag:
        raise ValueError(f"{record.repo}: image is not usable for tracing (status {record.status}, tag {record.tag})")
    out = Path(out)
    started = time.monotonic()
    timeout = timeout or max(600.0, 30 * (record.test_seconds or 20))
    env = _env_args({"out": OUT_DIR, "root": record.workdir, "max_calls": max_calls, "max_events": max_events,
                     "max_bytes": max_bytes, "max_repr": max_repr, "follow_libraries": "1" if follow_libraries else None,
                     "safe_repr": "1" if safe_repr else None})
    command = f"{record.test_command or DEFAULT_TEST_COMMAND} -p forager_tracer -p no:cacheprovider"
    with _Box(client, record.tag, record.workdir) as box:
        _prepare(box)
        code, output = box.sh(_with_tracer_path(command), timeout, env)
        origin = {"target": "test", "repo": record.repo, "commit": record.commit, "image": record.tag}
        traces, bad = _parse(box.jsonl_lines(OUT_DIR), origin)
    error = f"{bad} unreadable trace lines" if bad else None
    if traces:
        write_jsonl_atomic(out, traces)
    else:  # nothing to keep: no file, so a later run tries again instead of skipping this image
        error = f"the test run (exit {code}) produced no traces; see log_tail"
    return TraceRunSummary(
        image=record.tag,
        repo=record.repo,
        out=str(out) if traces else None,
        traces=len(traces),
        functions=len({t.function for t in traces}),
        frames=sum(len(t.frames) for t in traces),
        truncated=sum(t.truncated for t in traces),
        exit_code=code,
        timed_out=code == TIMEOUT_EXIT,
        seconds=round(time.monotonic() - started, 2),
        error=error,
        log_tail=output[-2000:],
    )


def trace_call_in_image(
    client: docker.DockerClient,
    image: str,
    call: str,
    *,
    snippet: str | None = None,
    workdir: str = "/repo",
    repo: str | None = None,
    commit: str | None = None,
    timeout: float = 300,
    follow_libraries: bool = False,
    safe_repr: bool = True,
    **limits,
) -> Trace:
    """Trace one call, 'pkg.mod:func(args)' (or 'func(args)' defined by a snippet's source text)."""
    args = [f"{TRACER_DIR}/forager_tracer.py", "call", "--root", workdir, "--out", f"{OUT_DIR}/call.jsonl"]
    if snippet is not None:
        args += ["--snippet", f"{SNIPPET_DIR}/snippet.py"]
    if follow_libraries:
        args.append("--follow-libraries")
    if safe_repr:
        args.append("--safe-repr")
    for key, value in limits.items():
        if value is not None:
            args += [f"--{key.replace('_', '-')}", str(value)]
    command = "python " + " ".join(shlex.quote(a) for a in [*args, call])
    with _Box(client, image, workdir) as box:
        _prepare(box)
        if snippet is not None:
            box.put(SNIPPET_DIR, {"snippet.py": snippet.encode()})
        code, output = box.sh(_with_tracer_path(command), timeout, {})
        origin = {"target": "snippet" if snippet is not None else "call", "repo": repo, "commit": commit,
                  "image": image}
        traces, _ = _parse(box.jsonl_lines(OUT_DIR), origin)
    if code == TIMEOUT_EXIT:
        raise TimeoutError(f"tracing {call!r} in {image} took longer than {timeout:.0f}s")
    if not traces:
        raise RuntimeError(f"tracing {call!r} in {image} failed (exit {code}): {output.strip()[-1500:]}")
    trace = traces[0]
    if snippet is not None:  # the whole snippet is the context, its entry def marked inside it
        trace.source = snippet
        trace.entry_line = trace.line or 1
        trace.file = None
    return trace
