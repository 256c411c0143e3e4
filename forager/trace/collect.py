"""Run the tracer inside a repository image and bring its traces home as validated JSONL.

One throw-away sandbox per run (envserver.sandbox: network none, resource limits, a lifeline), the tracer
copied in through the Engine API's archive calls, the command killed (whole process group) at its
timeout. The tracer flushes each trace as it finishes, so a run cut short still yields every trace
completed before.
"""

from __future__ import annotations

import json
import shlex
import time
from collections.abc import Iterator
from pathlib import Path


from envserver.sandbox import Backend, DockerSandbox
from forager import jsonl
from forager.config import safe_name
from forager.models import ImageRecord
from forager.trace import tracer as tracer_module
from forager.trace.models import Trace, TraceRunSummary, trace_id

TRACER_DIR = "/tmp/forager_trace"
OUT_DIR = f"{TRACER_DIR}/out"
SNIPPET_DIR = "/tmp/forager_snippet"
DEFAULT_TEST_COMMAND = "python -m pytest -q"
LOG_TAIL = 20_000


def traces_path(traces_dir: str | Path, image: str) -> Path:
    """Where an image's test traces live; its existence is what makes a collection resumable."""
    return Path(traces_dir) / (safe_name(image).strip("-_") + ".jsonl")


def default_timeout(record: ImageRecord) -> float:
    """Seconds a traced suite may run: tracing slows it down many times over."""
    return max(600.0, 30 * (record.test_seconds or 20))


def _env_args(limits: dict) -> dict[str, str]:
    return {f"FORAGER_TRACE_{k.upper()}": str(v) for k, v in limits.items() if v is not None}


def _box(image: str, workdir: str, backend: Backend | None) -> DockerSandbox:
    return DockerSandbox.start(image, kind="trace", backend=backend, workdir=workdir)


def _run(box: DockerSandbox, command: str, timeout: float, env: dict[str, str]) -> tuple[int | None, bool, str]:
    """(exit code, timed out, the output's tail) of a run that may last longer than any HTTP read."""
    result = box.run(command, timeout, env=env, cap=2 * LOG_TAIL)
    return result.exit_code, result.timed_out, result.text[-LOG_TAIL:]


def _jsonl_lines(box: DockerSandbox, directory: str) -> Iterator[str]:
    try:
        for member, tar in box.iter_tree(directory):
            if member.isfile() and member.name.endswith(".jsonl"):
                data = tar.extractfile(member)
                if data is not None:
                    yield from data.read().decode("utf-8", errors="replace").splitlines()
    except FileNotFoundError:
        return


def _prepare(box: DockerSandbox) -> None:
    box.write_files(TRACER_DIR, {"forager_tracer.py": Path(tracer_module.__file__).read_bytes(), "out/.keep": b""})


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


def collect_test_traces(
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
    backend: Backend | None = None,
) -> TraceRunSummary:
    """Run the image's test suite with the tracer plugin; write the traces to `out` (atomically)."""
    if record.status != "ok" or not record.tag:
        raise ValueError(f"{record.repo}: image is not usable for tracing (status {record.status}, tag {record.tag})")
    out = Path(out)
    started = time.monotonic()
    timeout = timeout or default_timeout(record)
    env = _env_args({"out": OUT_DIR, "root": record.workdir, "max_calls": max_calls, "max_events": max_events,
                     "max_bytes": max_bytes, "max_repr": max_repr, "follow_libraries": "1" if follow_libraries else None,
                     "safe_repr": "1" if safe_repr else None})
    command = f"{record.test_command or DEFAULT_TEST_COMMAND} -p forager_tracer -p no:cacheprovider"
    with _box(record.tag, record.workdir, backend) as box:
        _prepare(box)
        code, timed_out, output = _run(box, _with_tracer_path(command), timeout, env)
        origin = {"target": "test", "repo": record.repo, "commit": record.commit, "image": record.tag}
        traces, bad = _parse(_jsonl_lines(box, OUT_DIR), origin)
    error = f"{bad} unreadable trace lines" if bad else None
    if traces:
        jsonl.replace(out, traces)
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
        timed_out=timed_out,
        seconds=round(time.monotonic() - started, 2),
        error=error,
        log_tail=output[-2000:],
    )


def trace_call_in_image(
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
    backend: Backend | None = None,
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
    with _box(image, workdir, backend) as box:
        _prepare(box)
        if snippet is not None:
            box.write_files(SNIPPET_DIR, {"snippet.py": snippet.encode()})
        code, timed_out, output = _run(box, _with_tracer_path(command), timeout, {})
        origin = {"target": "snippet" if snippet is not None else "call", "repo": repo, "commit": commit,
                  "image": image}
        traces, _ = _parse(_jsonl_lines(box, OUT_DIR), origin)
    if timed_out:
        raise TimeoutError(f"tracing {call!r} in {image} took longer than {timeout:.0f}s")
    if not traces:
        raise RuntimeError(f"tracing {call!r} in {image} failed (exit {code}): {output.strip()[-1500:]}")
    trace = traces[0]
    if snippet is not None:  # the whole snippet is the context, its entry def marked inside it
        trace.source = snippet
        trace.entry_line = trace.line or 1
        trace.file = None
    return trace
